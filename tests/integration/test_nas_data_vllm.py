"""`ponder nas data` through real vLLM on the committed model: the parent's own replies, stored as rows.

Runs the command as a user does (its own process: it starts vLLM in-process, one thread), then
again after losing a part, which must come back token for token (per-prompt seeds).
"""

from __future__ import annotations

import subprocess
import sys

import pytest
from transformers import AutoTokenizer

from ponder.nas import data, generate
from tests.conftest import MODEL

MAX_TOKENS = 24


def ponder_nas_data(run, prompts) -> None:
    cmd = [sys.executable, "-m", "ponder", "nas", "data", "--run", str(run), "--parent", str(MODEL),
           "--prompts", str(prompts), "--arith-train", "2", "--arith-heldout", "1", "--ops-train", "2",
           "--ops-heldout", "1", "--heldout-every", "2", "--max-tokens", str(MAX_TOKENS), "--chunk", "4",
           "--threads", "1"]
    subprocess.run(cmd, check=True, timeout=600)


@pytest.mark.slow  # spawns vLLM (twice)
def test_parent_replies_are_stored_and_resume_token_for_token(tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("What is 3 + 4?\nTom has 5 apples and eats 2. How many are left?\n"
                       "Write a word problem.\nWhat is 9 - 6?\n")
    run = tmp_path / "run"
    ponder_nas_data(run, prompts)
    stored = data.Stored.read(run)
    cfg = generate.DataConfig(run=str(run), parent=str(MODEL), prompts=str(prompts), arith_train=2, arith_heldout=1,
                              ops_train=2, ops_heldout=1, heldout_every=2)
    plan = generate.plan(cfg)
    assert len(stored.train) == sum(p.split == "train" for p in plan) == 2 * 2 + 2 + 2  # open prompts 0 and 2
    assert len(stored.heldout) == 2 + 1 + 1
    tok = AutoTokenizer.from_pretrained(MODEL)
    rows = data.read_rows(run / "data" / "train.jsonl")
    assert rows[0]["ids"][: rows[0]["prompt_len"]] == generate.render(tok, "What is 3 + 4?")
    for r in rows:
        reply = r["ids"][r["prompt_len"] :]
        assert 0 < len(reply) <= MAX_TOKENS
        assert (reply[-1] == tok.eos_token_id) == (r["finish"] == "stop")
    assert any(r["finish"] == "stop" for r in rows)  # the task's model answers short questions in full

    (run / "data" / "record.json").unlink()
    (run / "data" / "parts" / "0000.jsonl").unlink()
    ponder_nas_data(run, prompts)
    assert data.Stored.read(run) == stored
