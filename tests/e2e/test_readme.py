"""Every question the README asks a model is answered correctly by the model it names, under every
strategy the README shows (ponder-small here; SmolLM2's example runs in test_third_party_model.py)."""

import re

import pytest

from ponder.tasks import ARITH
from tests.conftest import NAME, ROOT

# The README's questions and their answers; a question the README asks that is missing here fails.
ANSWERS = {
    "Tom has 23 apples. He buys 45 more. Then the number of apples becomes 3 times as large. "
    "How many apples does Tom have now?": 204,
    "Mia has 120 coins. She loses 35 coins. She ends up with 3 times as many coins. "
    "How many coins does Mia have now?": 255,
    "Tom has 12 apples. He buys 30 more. Then he gives away 17. How many apples does Tom have now?": 25,
    "What is 7 + 8?": 15,
}
STRATEGIES = ["direct", {"name": "self_consistency", "n": 8}, {"name": "tournament", "n": 8, "k": 2},
              {"name": "reverse_verify", "n": 8}]


def readme_questions() -> dict[str, str]:
    """question -> the model its code block names."""
    out = {}
    for block in re.findall(r"```(?:bash|python)\n(.*?)```", (ROOT / "README.md").read_text(), re.S):
        models = re.findall(r'model"?\s*[=:]\s*"([\w.-]+)"', block) or [NAME]
        for q in re.findall(r'"([A-Z][^"]*\?)"', block):
            out[q] = models[0]
    return out


def test_the_readme_asks_only_checked_questions():
    asked = readme_questions()
    assert set(asked) == set(ANSWERS), set(asked) ^ set(ANSWERS)
    assert {m for m in asked.values()} == {NAME, "SmolLM2-135M-Instruct"}


@pytest.mark.parametrize("strategy", STRATEGIES, ids=lambda s: s if isinstance(s, str) else s["name"])
def test_ponder_small_answers_the_readme_correctly(client, strategy):
    for q, model in readme_questions().items():
        if model != NAME:
            continue
        r = client.chat.completions.create(model=NAME, messages=[{"role": "user", "content": q}],
                                           temperature=0 if strategy == "direct" else 0.7, seed=1, max_tokens=256,
                                           extra_body={"strategy": strategy})
        assert ARITH.correct(r.choices[0].message.content, ANSWERS[q]), (q, strategy, r.choices[0].message.content)
