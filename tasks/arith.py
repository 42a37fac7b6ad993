"""Multi-step arithmetic word problems: ponder's built-in reasoning task.

A problem is a chain: a start value, then 2-5 steps `v_i = v_(i-1) op n_i` with
op in + - * / (division always exact). Each problem yields the four chat formats
that training and the strategies need:

  forward            question -> one equation per step -> "Answer: N"
  backward_question  question + "The correct answer is N." -> the same story with
                     one quantity replaced by x and the answer given (RevThink's Q_b)
  backward           Q_b -> equations that undo the steps -> "Answer: x"
  judge              question + two solutions -> every equation checked backwards
                     -> "Winner: Solution 1|2" (one correct, one with a slip)

The judge verifies instead of re-solving: each check undoes one equation from
numbers copied out of the solution, so a slip does not compound along the chain
the way it does when solving, and the inverse computation does not share the
forward one's slips. That is why a judge can beat greedy decoding (the premise
of the knockout tournament).

Grading is the task's (tasks/formats.py, ARITH): the answer after the last
"Answer:" (ANSWER_RE), the verdict after "Winner:" (WINNER_RE).

Two more formats pretrain a student "base model" that can read and compute but
has never seen a problem solved (RevThink's student, trainers/revthink.py):
`question` (write a word problem), `arithmetic` (drills of unrelated true
equations) and `numbers` (a question -> the numbers it states, in order).

Splits are decided by a hash of the arithmetic chain (not of its wording), so
train, validation and test never share a problem. The `hard` split holds
chains of 9 steps (HARD) from the test split's hash bucket: one step longer than
the longest chain training solves (8), and never trained on; the judge trains on
longer chains than the solver (`ponder train pretrain --judge-max-steps`).
"""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Iterator
from dataclasses import dataclass

OPS = ("+", "-", "*", "/")
SPLITS = ("train", "val", "test", "hard")
FORMATS = ("forward", "backward_question", "backward", "judge")
# the four formats plus the student base's three (module docstring)
PRETRAIN_FORMATS = (*FORMATS, "question", "arithmetic", "numbers")
QUESTION_PROMPT = "Write a word problem."
ARITHMETIC_PROMPT = "Practise arithmetic."
NUMBERS_TEMPLATE = "List the numbers in the text: {text}"
# ponder-small's training mix of the formats (format=weight,...): its trainers and Puzzle's data use it.
DEFAULT_MIX = "forward=0.35,judge=0.3,backward=0.25,backward_question=0.1"
ANSWER_RE = re.compile(r"Answer:\s*(-?\d+)")
WINNER_RE = re.compile(r"Winner:\s*(Solution 1|Solution 2|Tie)")
NUMBER_RE = re.compile(r"\d+")
# One step per line: "a op b = c", or done in parts "a op r = m op d = c" (Problem.path, b = r + d).
EQUATION_RE = re.compile(r"(\d+) ([-+*/]) (\d+) = (\d+)(?: ([-+*/]) (\d+) = (\d+))?")


@dataclass(frozen=True)
class ArithConfig:
    """Difficulty knob: chain length and number sizes."""

    min_steps: int = 2  # steps per problem, drawn uniformly
    max_steps: int = 5
    max_value: int = 999  # every intermediate value stays in [1, max_value]
    max_addend: int = 199  # + and - operands are 2-3 digits: [10, max_addend]
    max_factor: int = 9  # * and / operands are in [2, max_factor]

    def __post_init__(self) -> None:
        if not 1 <= self.min_steps <= self.max_steps:
            raise ValueError("need 1 <= min_steps <= max_steps")
        if self.max_addend < 10 or self.max_factor < 2 or self.max_value < 100:
            raise ValueError("max_addend >= 10, max_factor >= 2, max_value >= 100")


HARD = ArithConfig(min_steps=9, max_steps=9)  # the hard split's chains (issue 31)


@dataclass(frozen=True)
class Step:
    op: str
    operand: int
    before: int
    after: int
    mid: int | None = None  # done in parts: the value after the round part of the operand

    def line(self) -> str:
        if self.mid is None:
            return f"{self.before} {self.op} {self.operand} = {self.after}"
        last = self.operand % 10
        return f"{self.before} {self.op} {self.operand - last} = {self.mid} {self.op} {last} = {self.after}"


# Story pieces. {n} is the step's number; "x" replaces it in a backward question.
NAMES = [("Tom", "he", "his"), ("Mia", "she", "her"), ("Ravi", "he", "his"),
         ("Lena", "she", "her"), ("Omar", "he", "his"), ("Sofia", "she", "her"),
         ("Ken", "he", "his"), ("Ada", "she", "her")]
ITEMS = ["apples", "coins", "books", "stamps", "marbles", "cards", "shells", "pencils"]
START = ["{name} has {n} {items}.", "{name} starts with {n} {items}.",
         "At first {name} owns {n} {items}."]
PHRASES = {
    "+": ["{P} buys {n} more.", "{P} finds {n} more {items}.",
          "A friend gives {name} {n} more {items}.", "Then {p} gets {n} more."],
    "-": ["{P} gives away {n}.", "{P} loses {n} {items}.", "{P} sells {n} of them.",
          "Then {p} uses {n} {items}."],
    "*": ["Then the number of {items} becomes {n} times as large.",
          "{P} ends up with {n} times as many {items}.",
          "{P} multiplies {pos} {items} by {n}."],
    "/": ["{P} splits {pos} {items} into {n} equal groups and keeps one group.",
          "{P} shares them equally among {n} friends and keeps one share.",
          "Then {p} keeps only one of {n} equal parts."],
}
QUESTIONS = ["How many {items} does {name} have now?", "How many {items} are left?",
             "What is the final number of {items}?"]


@dataclass(frozen=True)
class Story:
    """The wording of one problem: names and the phrase chosen for each sentence."""

    name: int
    items: int
    start: int
    phrases: tuple[int, ...]
    question: int


@dataclass(frozen=True)
class Problem:
    start: int
    steps: tuple[Step, ...]
    story: Story

    @property
    def answer(self) -> int:
        return self.steps[-1].after

    @property
    def key(self) -> str:
        """Identity of the arithmetic, independent of wording."""
        chain = f"{self.start}" + "".join(f"{s.op}{s.operand}" for s in self.steps)
        return hashlib.sha256(chain.encode()).hexdigest()[:16]

    @property
    def quantities(self) -> tuple[int, ...]:
        """The numbers the question gives: start value, then each operand."""
        return (self.start, *(s.operand for s in self.steps))

    def _sentences(self, numbers: list[str]) -> list[str]:
        name, p, pos = NAMES[self.story.name]
        items = ITEMS[self.story.items]
        fmt = dict(name=name, p=p, P=p.capitalize(), pos=pos, items=items)
        out = [START[self.story.start].format(n=numbers[0], **fmt)]
        for step, phrase, n in zip(self.steps, self.story.phrases, numbers[1:]):
            out.append(PHRASES[step.op][phrase].format(n=n, **fmt))
        return out

    def question(self) -> str:
        name, _, _ = NAMES[self.story.name]
        q = QUESTIONS[self.story.question].format(name=name, items=ITEMS[self.story.items])
        return " ".join(self._sentences([str(n) for n in self.quantities]) + [q])

    def path(self, rng: random.Random) -> tuple[Step, ...]:
        """The steps as one of many paths to the answer: each + or - step whose operand has a last digit
        is, half the time, done in parts on its own line, the round part then the digit
        (346 + 150 = 496 + 8 = 504), so line i still reads sentence i. The path is chosen at the
        operand's last digit, before any sum is written: when both paths wrote "346 + 158 = " and
        then either 504 or 496 digit by digit, greedy mixed them (28 + 108 = 126: the round part's tens,
        the whole step's units; 0.732 on the test split, bench/RESULTS.md stage 8)."""
        return tuple(Step(s.op, s.operand, s.before, s.after, apply(s.op, s.before, s.operand - s.operand % 10))
                     if s.op in "+-" and s.operand > 10 and s.operand % 10 and rng.random() < 0.5 else s
                     for s in self.steps)

    def forward_solution(self, steps: tuple[Step, ...] | None = None) -> str:
        """One equation per step (in the story's order, or `steps`' own), then the answer."""
        return "\n".join([s.line() for s in steps or self.steps] + [f"Answer: {self.answer}"])

    def backward_question(self, masked: int) -> str:
        """The story with quantity `masked` (0 = start) replaced by x, answer given."""
        numbers = [str(n) for n in self.quantities]
        numbers[masked] = "x"
        name, _, _ = NAMES[self.story.name]
        items = ITEMS[self.story.items]
        end = f"In the end {name} has {self.answer} {items}. What is x?"
        return " ".join(self._sentences(numbers) + [end])

    def backward_solution(self, masked: int) -> str:
        """Forward up to the unknown step, undo the later steps, then solve for x."""
        lines = [s.line() for s in self.steps[: max(masked - 1, 0)]]
        value = self.answer
        for s in reversed(self.steps[masked:]):
            inv = {"+": "-", "-": "+", "*": "/", "/": "*"}[s.op]
            lines.append(f"{value} {inv} {s.operand} = {s.before}")
            value = s.before
        if masked > 0:
            s = self.steps[masked - 1]
            if s.op in "+*":
                inv = "-" if s.op == "+" else "/"
                lines.append(f"{s.after} {inv} {s.before} = {s.operand}")
            else:
                lines.append(f"{s.before} {s.op} {s.after} = {s.operand}")
        return "\n".join(lines + [f"Answer: {self.quantities[masked]}"])

    def wrong_solution(self, rng: random.Random, steps: tuple[Step, ...] | None = None) -> str:
        """A plausible slip at one step (of the story's order, or of `steps`), the rest computed
        consistently from it."""
        steps = steps or self.steps
        k = rng.randrange(len(steps))
        lines = [s.line() for s in steps[:k]]
        value = steps[k].before
        for i, s in enumerate(steps[k:]):
            right = apply(s.op, value, s.operand)
            mid = None if s.mid is None else apply(s.op, value, s.operand - s.operand % 10)
            if right is None:
                return self.wrong_solution(rng, steps)
            if i == 0 and mid is not None and rng.random() < 0.5:  # the slip in the round part
                mid = slip(mid, rng)
                out = None if mid is None else apply(s.op, mid, s.operand % 10)
            else:
                out = slip(right, rng) if i == 0 else right
            if out is None or out <= 0:
                return self.wrong_solution(rng, steps)
            lines.append(Step(s.op, s.operand, value, out, mid).line())
            value = out
        return "\n".join(lines + [f"Answer: {value}"])


def parse_mix(mix: str, formats: tuple[str, ...] = PRETRAIN_FORMATS) -> dict[str, float]:
    """'forward=0.3,judge=0.7' -> {format: weight}; a weight left out is 1, a zero weight turns a
    format off, and at least one must be positive."""
    out = {}
    for part in mix.split(","):
        name, _, weight = part.partition("=")
        if name not in formats:
            raise ValueError(f"unknown format {name!r} in mix; expected one of {formats}")
        out[name] = float(weight or 1)
    if any(w < 0 for w in out.values()) or not any(w > 0 for w in out.values()):
        raise ValueError(f"mix needs weights >= 0, at least one positive: {mix!r}")
    return out


def apply(op: str, a: int, b: int) -> int | None:
    """a op b, or None when division is not exact."""
    if op == "/":
        return a // b if a % b == 0 else None
    return {"+": a + b, "-": a - b, "*": a * b}[op]


def slip(value: int, rng: random.Random) -> int | None:
    """An arithmetic slip of the kind people and small models make."""
    kind = rng.randrange(4)
    if kind == 0:
        out = value + rng.choice([-1, 1])
    elif kind == 1:
        out = value + rng.choice([-10, 10])
    elif kind == 2:
        out = value + rng.choice([-100, 100, -2, 2, -20, 20])
    else:  # swap two adjacent digits
        d = list(str(value))
        if len(d) < 2:
            return slip(value, rng)
        i = rng.randrange(len(d) - 1)
        d[i], d[i + 1] = d[i + 1], d[i]
        out = int("".join(d))
    return out if out != value and out > 0 else None


def sample_problem(rng: random.Random, cfg: ArithConfig) -> Problem:
    n_steps = rng.randint(cfg.min_steps, cfg.max_steps)
    while True:
        start = rng.randint(10, cfg.max_addend)
        steps, value = [], start
        for _ in range(n_steps):
            step = _sample_step(rng, cfg, value)
            if step is None:
                break
            steps.append(step)
            value = step.after
        if len(steps) == n_steps:
            break
    story = Story(
        name=rng.randrange(len(NAMES)),
        items=rng.randrange(len(ITEMS)),
        start=rng.randrange(len(START)),
        phrases=tuple(rng.randrange(len(PHRASES[s.op])) for s in steps),
        question=rng.randrange(len(QUESTIONS)),
    )
    return Problem(start=start, steps=tuple(steps), story=story)


def _sample_step(rng: random.Random, cfg: ArithConfig, value: int) -> Step | None:
    ops = [op for op in OPS if _feasible(op, value, cfg)]
    if not ops:
        return None
    op = rng.choice(ops)
    if op == "+":
        n = rng.randint(10, min(cfg.max_addend, cfg.max_value - value))
    elif op == "-":
        n = rng.randint(10, min(cfg.max_addend, value - 1))
    elif op == "*":
        n = rng.randint(2, min(cfg.max_factor, cfg.max_value // value))
    else:
        n = rng.choice([d for d in range(2, cfg.max_factor + 1) if value % d == 0])
    after = apply(op, value, n)
    assert after is not None
    return Step(op=op, operand=n, before=value, after=after)


def _feasible(op: str, value: int, cfg: ArithConfig) -> bool:
    if op == "+":
        return value + 10 <= cfg.max_value
    if op == "-":
        return value > 10
    if op == "*":
        return value * 2 <= cfg.max_value
    return any(value % d == 0 and value // d >= 2 for d in range(2, cfg.max_factor + 1))


def arithmetic_drill(rng: random.Random, lines: int = 8, cfg: ArithConfig = ArithConfig()) -> str:
    """Independent equations, one per line, each a step the task could take from a random value."""
    out: list[str] = []
    while len(out) < lines:
        step = _sample_step(rng, cfg, rng.randint(1, cfg.max_value))
        if step is not None:
            out.append(step.line())
    return "\n".join(out)


def split_of(problem: Problem) -> str:
    bucket = int(problem.key, 16) % 20
    return "test" if bucket == 0 else "val" if bucket == 1 else "train"


def problems(split: str, seed: int = 0, cfg: ArithConfig | None = None) -> Iterator[Problem]:
    """An endless, reproducible stream of distinct problems of one split (`cfg`: HARD for the hard
    split, else the default difficulty)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}")
    cfg = cfg or (HARD if split == "hard" else ArithConfig())
    bucket = "test" if split == "hard" else split
    rng = random.Random(f"{seed}-{split}")
    seen: set[str] = set()
    while True:
        p = sample_problem(rng, cfg)
        if split_of(p) == bucket and p.key not in seen:
            seen.add(p.key)
            yield p


def dataset(split: str, n: int, seed: int = 0, cfg: ArithConfig | None = None) -> list[Problem]:
    stream = problems(split, seed, cfg)
    return [next(stream) for _ in range(n)]


# Prompts. These are the exact user messages the model is trained on; the
# strategies reuse them through the task's formats (tasks/formats.py). RevThink's
# templates (Chen et al. 2024, arXiv:2411.19865), except that the
# forward prompt is the bare question.

def forward_prompt(question: str) -> str:
    """The user's message is the bare question: what a person types, and what the
    strategies can wrap in their own templates (judge, backward question)."""
    return question


BACKWARD_QUESTION_TEMPLATE = ("Generate the inverse question based on the following seed question and "
                              "its answer: {question} The correct answer is {answer}.")
BACKWARD_TEMPLATE = "Answer the backward question: {backward_question}"
# A backward question made by masking a number rather than written by the model (FOBAR-style).
MASK_TEMPLATE = "{masked_question} The answer is {answer}. What is x?"
JUDGE_TEMPLATE = ("Compare two solutions to the question: {question}\n"
                  "Solution 1:\n{solution_1}\nSolution 2:\n{solution_2}\nWhich solution is correct?")


def backward_question_prompt(question: str, answer: int | str) -> str:
    return BACKWARD_QUESTION_TEMPLATE.format(question=question, answer=answer)


def backward_prompt(backward_question: str) -> str:
    return BACKWARD_TEMPLATE.format(backward_question=backward_question)


# Line labels of the judge prompt: one letter per line, a different alphabet per
# solution, so the judge's "B: ..." check finds the line it copies by its label
# (a one-token match that attention learns early) and never takes it from the
# other solution, whose lines often read the same up to the slip. Sixteen per
# solution: room for chains longer than training's, and for samples that run on.
LABELS = ("ABCDEFGHabcdefgh", "PQRSTUVWpqrstuvw")


def label_lines(solution: str, k: int) -> str:
    """Solution k's lines with their labels ("A: ..."); lines past the sixteenth stay bare."""
    labels = LABELS[k - 1]
    lines = solution.strip().splitlines()
    return "\n".join(f"{labels[i]}: {line}" if i < len(labels) else line for i, line in enumerate(lines))


def judge_prompt(question: str, solution_1: str, solution_2: str) -> str:
    return JUDGE_TEMPLATE.format(question=question, solution_1=label_lines(solution_1, 1),
                                 solution_2=label_lines(solution_2, 2))


def judge_verdict(solution_1: str, solution_2: str) -> str:
    """The judge's target: the lines where the two solutions part, checked backwards, then compared.

    The lines both solutions reach the same value on are listed first, as label pairs ("A = P"):
    whatever their arithmetic, they cannot tell the two apart. From the first line whose values
    differ, each solution's equations are checked backwards: "a op b = c" labelled L becomes
    "L: c inv b = r, says a, ok" (or "wrong" when the recovered input r differs from the line's
    a), where inv undoes op (c - b for +, c + b for -, c * b for /); checking a solution stops at
    its first wrong line (the rest follows from it). So the verdict grows with the part of the
    chain after the fork, not with the whole of both: a 9-step pair checked in full (stage 9)
    ran 354 tokens at the median, over the judge's 256 for 87% of pairs (bench/RESULTS.md).

    The check runs backwards on purpose: a forward redo "a op b = " repeats a prefix the prompt
    already holds, so the model copies the solution's own c instead of computing (it did: the
    forward judge picked the correct one of its own samples 0.505 of the time), and a slip the
    model makes forward is the one it would redo. The inverse is another computation, whose
    slips are not the same ones. A product keeps the forward redo "a * b = r, says c" (c / b
    need not be exact). The label says which prompt line is checked; each decision is a local
    comparison of two numbers written side by side. The winner is the solution with no wrong
    line; otherwise "Tie". It checks arithmetic, not whether the operands were read correctly
    from the question. A step done in parts (a op r = m op d = c) is two equations, each checked
    under the line's label; its value is c. An equation past the last label is a ValueError.
    """
    solutions = [[equations(line) for line in s.strip().splitlines()] for s in (solution_1, solution_2)]
    for k, lines in enumerate(solutions, 1):
        if any(lines[len(LABELS[k - 1]):]):  # an unlabelled line cannot be checked: say so, never skip it
            n = len(LABELS[k - 1])
            raise ValueError(f"solution {k} has an equation on line {n + 1} or later; the judge labels {n} lines")
    fork = 0
    while all(fork < len(s) and s[fork] for s in solutions) and solutions[0][fork][-1][3] == solutions[1][fork][-1][3]:
        fork += 1
    out = [f"{LABELS[0][i]} = {LABELS[1][i]}" for i in range(fork)]
    clean = []
    for k, lines in enumerate(solutions, 1):
        ok = True
        for i, (a, op, b, c) in ((i, e) for i, line in enumerate(lines) if i >= fork for e in line):
            if op == "*":
                check, r, says = f"{a} * {b}", a * b, c
            else:
                inv = {"+": "-", "-": "+", "/": "*"}[op]
                check, r, says = f"{c} {inv} {b}", apply(inv, c, b), a
            ok = r == says
            out.append(f"{LABELS[k - 1][i]}: {check} = {r}, says {says}, " + ("ok" if ok else "wrong"))
            if not ok:
                break
        clean.append(ok)
    winner = "Solution 1" if clean == [True, False] else "Solution 2" if clean == [False, True] else "Tie"
    return "\n".join(out + [f"Winner: {winner}"])


def example(problem: Problem, fmt: str, rng: random.Random, many_paths: bool = False) -> list[dict[str, str]]:
    """One chat example (user + assistant messages) of the given format; `many_paths`: the forward and
    judge solutions take a random one of the problem's paths (Problem.path)."""
    q = problem.question()
    steps = problem.path(rng) if many_paths and fmt in ("forward", "judge") else None
    if fmt == "forward":
        user, reply = forward_prompt(q), problem.forward_solution(steps)
    elif fmt == "backward_question":
        masked = rng.randrange(len(problem.quantities))
        user, reply = backward_question_prompt(q, problem.answer), problem.backward_question(masked)
    elif fmt == "backward":
        masked = rng.randrange(len(problem.quantities))
        user = backward_prompt(problem.backward_question(masked))
        reply = problem.backward_solution(masked)
    elif fmt == "question":
        user, reply = QUESTION_PROMPT, q
    elif fmt == "arithmetic":
        user, reply = ARITHMETIC_PROMPT, arithmetic_drill(rng)
    elif fmt == "numbers":
        user, reply = NUMBERS_TEMPLATE.format(text=q), ", ".join(map(str, problem.quantities))
    elif fmt == "judge":
        right, wrong = problem.forward_solution(steps), problem.wrong_solution(rng, steps)
        s1, s2 = (right, wrong) if rng.random() < 0.5 else (wrong, right)
        user, reply = judge_prompt(q, s1, s2), judge_verdict(s1, s2)
    else:
        raise ValueError(f"unknown format {fmt!r}; expected one of {PRETRAIN_FORMATS}")
    return [{"role": "user", "content": user}, {"role": "assistant", "content": reply}]


def equations(line: str) -> list[tuple[int, str, int, int]]:
    """The equations (a, op, b, c) of a step's line: one, or two for a step done in parts; [] for
    any other line."""
    m = EQUATION_RE.fullmatch(line.strip())
    if m is None:
        return []
    return [(int(m[1]), m[2], int(m[3]), int(m[4]))] + ([(int(m[4]), m[5], int(m[6]), int(m[7]))] if m[5] else [])


def equations_hold(text: str) -> bool:
    """Whether every equation of a reasoning is true arithmetic."""
    return all(apply(op, a, b) == c for line in text.splitlines() for a, op, b, c in equations(line))
