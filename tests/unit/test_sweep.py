"""`ponder eval sweep` keeps finished points: a rerun evaluates only what is missing."""

import json
from dataclasses import asdict

import pytest

from ponder.strategies.tournament import failure_bound
from ponder.tasks import sweep


def test_sweep_resumes(tmp_path, monkeypatch):
    calls = []

    async def fake_evaluate(cfg):
        calls.append((cfg.strategy, cfg.params.get("n")))
        return {"config": asdict(cfg), "model": "m", "problems": 4, "accuracy": 0.5, "ci95": [0.1, 0.9],
                "completion_tokens_per_problem": 10.0 * cfg.params.get("n", 1), "wall_s": 0.1}

    monkeypatch.setattr(sweep, "evaluate", fake_evaluate)
    monkeypatch.setattr(sweep, "summary", lambda rec: rec["label"])
    args = ["--base-url", "http://x/v1", "--limit", "4", "--strategies", "self_consistency",
            "--out", str(tmp_path)]
    sweep.main([*args, "--ns", "1,2"])
    assert calls == [("direct", None), ("self_consistency", 1), ("self_consistency", 2)]
    calls.clear()
    sweep.main([*args, "--ns", "1,2,4"])
    assert calls == [("self_consistency", 4)]
    records = json.loads((tmp_path / "sweep.json").read_text())
    assert [(r["label"], r["n"]) for r in records] == [("greedy", 1), ("self_consistency", 1),
                                                       ("self_consistency", 2), ("self_consistency", 4)]
    assert (tmp_path / "accuracy_vs_n.png").stat().st_size > 0
    calls.clear()
    sweep.main([*args, "--ns", "8"])  # another point: the earlier ones stay in the file
    assert calls == [("self_consistency", 8)]
    records = json.loads((tmp_path / "sweep.json").read_text())
    assert sorted(r["n"] for r in records if r["label"] == "self_consistency") == [1, 2, 4, 8]



def test_sweep_puts_the_failure_bound_beside_each_tournament(tmp_path, monkeypatch):
    async def fake_evaluate(cfg):
        rec = {"config": asdict(cfg), "model": "m", "problems": 4, "accuracy": 0.75, "ci95": [0.3, 0.95],
               "completion_tokens_per_problem": 10.0, "wall_s": 0.1}
        return rec | ({"p_gen": 0.6, "p_comp_text": 0.9, "p_comp_logprob": 0.8} if cfg.format == "pairs" else {})

    monkeypatch.setattr(sweep, "evaluate", fake_evaluate)
    monkeypatch.setattr(sweep, "summary", lambda rec: rec["label"])
    sweep.main(["--base-url", "http://x/v1", "--limit", "4", "--strategies", "tournament", "--ns", "4",
                "--ks", "1,4", "--param", "tournament.judge=logprob", "--pairs", "--out", str(tmp_path)])
    rows = {r["label"]: r for r in json.loads((tmp_path / "sweep.json").read_text())}
    # K=1 plays as one call per order; the logprob judge's p_comp is the one used
    assert rows["tournament K=1"]["failure_bound"] == pytest.approx(failure_bound(0.6, 0.8, 8, 2))
    assert rows["tournament K=4"]["failure_bound"] == pytest.approx(failure_bound(0.6, 0.8, 8, 4))
    assert rows["tournament"]["failure"] == pytest.approx(0.25)


@pytest.mark.parametrize("param", ["judge_max_tokens=512", "tournment.k=2"])
def test_a_param_of_no_strategy_is_a_usage_error(param, capsys):
    with pytest.raises(SystemExit) as e:  # it was dropped in silence, and the sweep measured the default
        sweep.main(["--base-url", "http://x/v1", "--param", param])
    assert e.value.code == 2 and "STRATEGY.KEY" in capsys.readouterr().err
