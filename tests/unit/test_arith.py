import random
import re

import pytest

from ponder.tasks import ARITH, arith
from ponder.tasks.formats import masked_quantity


@pytest.fixture(scope="module")
def train():
    return arith.dataset("train", 300)


def test_forward_solution_checks_out(train):
    for p in train:
        assert ARITH.correct(p.forward_solution(), p.answer)
        assert 2 <= len(p.steps) <= 5
        for s in p.steps:
            assert arith.apply(s.op, s.before, s.operand) == s.after
            assert 1 <= s.after <= 999
        assert str(p.start) in p.question()


def test_splits_never_share_a_problem():
    keys = {split: {p.key for p in arith.dataset(split, 400)} for split in arith.SPLITS}
    assert not keys["train"] & keys["test"]
    assert not keys["train"] & keys["val"]
    assert not keys["val"] & keys["test"]
    # hard: longer chains from the test bucket, so no training problem of any length is one of them
    assert not keys["hard"] & (keys["train"] | keys["val"] | keys["test"])
    hard = arith.dataset("hard", 50)
    assert {len(p.steps) for p in hard} == {9} and all(arith.split_of(p) == "test" for p in hard)


def test_splits_are_reproducible():
    assert [p.question() for p in arith.dataset("test", 20)] == [p.question() for p in arith.dataset("test", 20)]
    assert arith.dataset("test", 5, seed=1)[0].key != arith.dataset("test", 5, seed=2)[0].key


def test_backward_question_recovers_the_masked_quantity(train):
    for p in train:
        for masked in range(len(p.quantities)):
            q = p.backward_question(masked)
            assert re.search(r"\bx\b", q) and str(p.answer) in q
            # reverse_verify finds the masked number as the one the backward question lost
            assert masked_quantity(p.question(), q, str(p.answer)) == str(p.quantities[masked])
            assert ARITH.correct(p.backward_solution(masked), p.quantities[masked])


def test_backward_solution_equations_are_right(train):
    for p in train:
        for masked in range(len(p.quantities)):
            for m in arith.EQUATION_RE.finditer(p.backward_solution(masked)):
                a, op, b, c = int(m[1]), m[2], int(m[3]), int(m[4])
                assert arith.apply(op, a, b) == c, p.backward_solution(masked)


def test_paths_take_other_computations_to_the_same_answer():
    rng = random.Random(2)
    paths = []
    for p in arith.dataset("hard", 100):
        solutions = {p.forward_solution(p.path(rng)) for _ in range(10)}
        for s in solutions:  # a true equation per step, in the story's order, whole or in parts, the answer
            assert ARITH.correct(s, p.answer) and arith.equations_hold(s), s
            lines = [arith.equations(line) for line in s.splitlines()[:-1]]
            assert [(eqs[0][1], sum(e[2] for e in eqs)) for eqs in lines] == [(t.op, t.operand) for t in p.steps], s
            eqs = [e for line in lines for e in line]
            assert eqs[0][0] == p.start and all(a[3] == b[0] for a, b in zip(eqs, eqs[1:]))
        paths.append(len(solutions))
    assert sum(n > 1 for n in paths) >= 90, paths


@pytest.mark.parametrize("split,many_paths", [("train", False), ("train", True), ("hard", True)])
def test_judge_pairs_have_exactly_one_correct_side(split, many_paths):
    rng = random.Random(0)  # hard with many paths: 9 steps, each + or - in parts half the time
    for p in arith.dataset(split, 300):
        msgs = arith.example(p, "judge", rng, many_paths)
        prompt, verdict = msgs[0]["content"], msgs[1]["content"]
        s1 = prompt.split("Solution 1:\n")[1].split("\nSolution 2:")[0]
        s2 = prompt.split("Solution 2:\n")[1].split("\nWhich solution")[0]
        assert s1.splitlines()[0].startswith("A: ") and s2.splitlines()[0].startswith("P: ")
        assert all(line[1] == ":" for line in (s1 + "\n" + s2).splitlines() if arith.EQUATION_RE.search(line))
        right = [ARITH.correct(s, p.answer) for s in (s1, s2)]
        assert sum(right) == 1
        assert ARITH.read_verdict(verdict) == right.index(True) + 1


def test_wrong_solution_has_one_slip_then_stays_consistent(train):
    rng = random.Random(1)
    for p in train[:100]:
        wrong = p.wrong_solution(rng)
        assert not ARITH.correct(wrong, p.answer)
        lines = wrong.splitlines()
        bad = [e for line in lines for e in arith.equations(line) if arith.apply(e[1], e[0], e[2]) != e[3]]
        assert len(bad) == 1 and len(lines) == len(p.steps) + 1


def test_a_step_in_parts_is_two_equations_on_one_line():
    assert arith.equations("346 + 150 = 496 + 8 = 504") == [(346, "+", 150, 496), (496, "+", 8, 504)]
    assert arith.equations_hold("346 + 150 = 496 + 8 = 504\nAnswer: 504")
    assert not arith.equations_hold("346 + 150 = 486 + 8 = 494")  # the round part slipped
    assert arith.judge_verdict("346 + 150 = 496 + 8 = 514\nAnswer: 514", "346 + 158 = 504\nAnswer: 504") == (
        "A: 496 - 150 = 346, says 346, ok\nA: 514 - 8 = 506, says 496, wrong\n"
        "P: 504 - 158 = 346, says 346, ok\nWinner: Solution 2")
    # the same value on a line, by either path, is no fork: the checks start where the values part
    assert arith.judge_verdict("1 + 9 = 10\n346 + 150 = 496 + 8 = 504\n504 - 4 = 500",
                               "1 + 9 = 10\n346 + 158 = 504\n504 - 4 = 499").splitlines() == [
        "A = P", "B = Q", "C: 500 + 4 = 504, says 504, ok", "R: 499 + 4 = 503, says 504, wrong", "Winner: Solution 1"]
    rng = random.Random(3)
    for p in arith.dataset("hard", 100):  # a slip on a path: one false equation, the rest consistent with it
        wrong = p.wrong_solution(rng, p.path(rng))
        lines = [arith.equations(line) for line in wrong.splitlines()[:-1]]
        assert not ARITH.correct(wrong, p.answer) and len(lines) == len(p.steps) and all(lines)
        assert sum(arith.apply(op, a, b) != c for line in lines for a, op, b, c in line) == 1, wrong


def test_judge_verdict_checks_each_equation_backwards():
    v = arith.judge_verdict("2 + 3 = 5\n5 * 2 = 10\n10 - 4 = 6\n6 / 3 = 2\nAnswer: 2",
                            "2 + 3 = 6\n6 * 2 = 12\nAnswer: 12")
    assert v.splitlines() == ["A: 5 - 3 = 2, says 2, ok", "B: 5 * 2 = 10, says 10, ok",
                              "C: 6 + 4 = 10, says 10, ok", "D: 2 * 3 = 6, says 6, ok",
                              "P: 6 - 3 = 3, says 2, wrong", "Winner: Solution 1"]
    assert arith.judge_verdict("7 / 2 = 3", "8 / 2 = 4").endswith("Winner: Solution 2")
    assert arith.judge_verdict("7 / 2 = 3", "6 / 2 = 3") == "A = P\nWinner: Tie"  # no fork: nothing tells them apart
    assert arith.judge_verdict("1 + 1 = 2", "1 + 1 = 2").endswith("Tie")
    with pytest.raises(ValueError, match="line 17"):
        arith.judge_verdict("1 + 1 = 2\n" * 17, "1 + 1 = 2")


def test_judge_prompt_labels_each_line_once():
    prompt = arith.judge_prompt("Q?", "1 + 1 = 2\nAnswer: 2", "1 + 1 = 3\nAnswer: 3")
    assert "Solution 1:\nA: 1 + 1 = 2\nB: Answer: 2\nSolution 2:\nP: 1 + 1 = 3\nQ: Answer: 3\n" in prompt


def test_extraction():
    assert ARITH.extract("1 + 1 = 2\nAnswer: 2\nAnswer: 3") == "3"
    assert ARITH.extract("no answer") is None
    assert ARITH.correct("Answer: 12", 12) and not ARITH.correct("Answer: 13", 12)
    assert ARITH.read_verdict("Check 1: ...\nWinner: Solution 2") == 2


def test_difficulty_knob():
    easy = arith.ArithConfig(min_steps=2, max_steps=2, max_value=200)
    for p in arith.dataset("train", 50, cfg=easy):
        assert len(p.steps) == 2 and all(s.after <= 200 for s in p.steps)
    with pytest.raises(ValueError):
        arith.ArithConfig(min_steps=3, max_steps=2)


def test_question_format_is_the_problem_alone():
    p = arith.dataset("train", 1)[0]
    msgs = arith.example(p, "question", random.Random(0))
    assert msgs[1]["content"] == p.question() and "Answer" not in msgs[1]["content"]


def test_arithmetic_format_is_a_drill_of_true_unrelated_equations():
    p = arith.dataset("train", 1)[0]
    msgs = arith.example(p, "arithmetic", random.Random(0))
    lines = msgs[1]["content"].splitlines()
    assert len(lines) == 8 and arith.equations_hold(msgs[1]["content"])
    assert all(arith.EQUATION_RE.fullmatch(line) for line in lines)
    assert "Answer" not in msgs[1]["content"]
    assert not arith.equations_hold("379 + 29 = 308")


def test_numbers_format_lists_what_the_question_states_and_solves_nothing():
    p = arith.dataset("train", 1)[0]
    msgs = arith.example(p, "numbers", random.Random(0))
    assert p.question() in msgs[0]["content"]
    assert msgs[1]["content"] == ", ".join(str(n) for n in p.quantities)
