"""Task formats: everything a strategy needs to know about how a model writes.

A task declares the instruction a question gets (for evaluation), how an answer
is read out of a reply and compared, the judge's prompt and how its verdict is
read, and how a backward question is made and its answer read. The strategies
ask the request's task for each of these and name no task themselves
(lm-evaluation-harness: a task's YAML owns its prompt, filters and metric).

Built-ins:
  arith   ponder's own models (tasks/arith.py): "Answer: N", the line-labelled
          judge they were trained on, RevThink backward questions
  math    any chat model (the default): the harnesses' extraction order
          (tasks/answers.py), the knockout paper's judge (Chen, Pan et al. 2024,
          arXiv:2411.19477: an impartial-judge system message, both solutions,
          a step-by-step <compare>, then <winner>Solution 1|Solution 2|Tie</winner>),
          FOBAR's backward question (Jiang et al. 2023, arXiv:2308.07758)
  choice  multiple choice A-J (MMLU-Pro's answer patterns), the same judge
  free    no extractable answer: the tournament judges whole replies; a
          strategy that needs answers is refused with a 400
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from ponder.tasks import arith
from ponder.tasks.answers import NUMBER_RE, extract_choice, extract_number, normalize

Messages = list[dict[str, str]]
VERDICTS = {"solution 1": 1, "solution 2": 2, "tie": 0}


@dataclass(frozen=True)
class Task:
    """A task's formats. The defaults are the model-agnostic ones (`math`)."""

    name: str
    description: str
    instruction: str = ""  # appended to a question when evaluating; "" for none
    extractor: Callable[[str], str | None] | None = None  # None: the task has no answers
    judge_system: str | None = None
    judge_template: str = ""  # {question}, {solution_1}, {solution_2}
    verdict_re: re.Pattern = re.compile(r"<winner>\s*(Solution 1|Solution 2|Tie)\s*</winner>", re.I)
    verdict_lead: str = "<winner>Solution "  # what a written verdict puts before its label "1" / "2"
    backward_template: str | None = None  # FOBAR: {masked_question} (a number replaced by x), {answer}
    backward_question_template: str | None = None  # RevThink: the model writes it from {question}, {answer}
    backward_solve_template: str = "{backward_question}"

    @property
    def has_answers(self) -> bool:
        return self.extractor is not None

    def extract(self, text: str) -> str | None:
        """The reply's answer, normalised; None when it has none (or the task has no answers)."""
        found = self.extractor(text) if self.extractor is not None else None
        return normalize(found) if found is not None else None

    def correct(self, text: str, gold: object) -> bool:
        got = self.extract(text)
        return got is not None and got == normalize(str(gold))

    def judge_messages(self, question: str, solution_1: str, solution_2: str) -> Messages:
        user = self.judge_template.format(question=question, solution_1=solution_1.strip(),
                                          solution_2=solution_2.strip())
        system = [{"role": "system", "content": self.judge_system}] if self.judge_system else []
        return [*system, {"role": "user", "content": user}]

    def read_verdict(self, reply: str) -> int | None:
        """1 or 2 (the winning solution), 0 (a tie), None: no verdict written in the task's format, or
        verdicts that disagree (a weak judge may copy the prompt's list of the three possible ones)."""
        found = {VERDICTS[v.lower()] for v in self.verdict_re.findall(reply)}
        return found.pop() if len(found) == 1 else None

    def verdict_slots(self, reply: str) -> tuple[str, str, str]:
        """For reading a verdict under constraint: the reply's reasoning (cut before a written
        verdict, if any) and the two verdicts that can follow it; the log-probabilities of the
        tokens where the two differ are the judge's verdict."""
        cut = reply.rfind(self.verdict_lead)
        head = reply[:cut] if cut >= 0 else reply.rstrip() + "\n"
        return head, self.verdict_lead + "1", self.verdict_lead + "2"

    @property
    def has_backward(self) -> bool:
        return self.has_answers and (self.backward_template or self.backward_question_template) is not None

    @property
    def backward_mode(self) -> str:
        """How reverse_verify makes backward questions by default: 'model' where the task has a format
        for the model to write them (RevThink), else 'mask' (FOBAR)."""
        return "model" if self.backward_question_template is not None else "mask"

    def backward_question(self, question: str, answer: str) -> tuple[str, str] | None:
        """FOBAR: the question with its last number masked as x and the answer given; returns
        (backward question, the masked number), or None when the question states no number."""
        found = list(NUMBER_RE.finditer(question))
        if self.backward_template is None or not found:
            return None
        m = found[-1]
        masked = question[: m.start()] + "x" + question[m.end():]
        return self.backward_template.format(masked_question=masked, answer=answer), normalize(m.group())

    def backward_question_prompt(self, question: str, answer: str) -> str | None:
        """The user message asking the model to write a backward question (RevThink), if the task has one."""
        if self.backward_question_template is None:
            return None
        return self.backward_question_template.format(question=question, answer=answer)

    def backward_prompt(self, backward_question: str) -> str:
        """The user message that asks for a backward question's solution."""
        return self.backward_solve_template.format(backward_question=backward_question)

    def masked_quantity(self, question: str, backward_question: str, answer: str) -> str | None:
        """What solving a model-written backward question must give: see `masked_quantity`."""
        return masked_quantity(question, backward_question, answer)


def masked_quantity(question: str, backward_question: str, answer: str) -> str | None:
    """The number of the question missing from a written backward question (which gains the answer)."""
    before = Counter(normalize(x) for x in NUMBER_RE.findall(question))
    after = Counter(normalize(x) for x in NUMBER_RE.findall(backward_question))
    after[normalize(answer)] -= 1
    missing = [k for k, v in (before - after).items() for _ in range(v)]
    return missing[0] if len(missing) == 1 else None


@dataclass(frozen=True)
class ArithTask(Task):
    """ponder's own models: the judge they were trained on labels each solution line (tasks/arith.py)."""

    def judge_messages(self, question: str, solution_1: str, solution_2: str) -> Messages:
        return [{"role": "user", "content": arith.judge_prompt(question, solution_1, solution_2)}]


JUDGE_SYSTEM = ("You are a fair and impartial judge. You compare two solutions to the same question and decide "
                "which one is correct. Do not let the order in which the solutions are presented, their length, "
                "or their style influence your decision.")
JUDGE_TEMPLATE = ("## Question\n{question}\n\n## Solution 1\n{solution_1}\n\n## Solution 2\n{solution_2}\n\n"
                  "## Output format\nFirst compare the two solutions step by step inside <compare></compare>. "
                  "Then give your verdict inside <winner></winner>: <winner>Solution 1</winner>, "
                  "<winner>Solution 2</winner> or <winner>Tie</winner>.")
FOBAR_TEMPLATE = ("{masked_question} If we know the answer to the above question is {answer}, "
                  "what is the value of unknown variable x?")

ARITH = ArithTask(
    name="arith", description="ponder's built-in arithmetic task: 'Answer: N', its trained judge and backward "
    "formats (the task ponder's own models declare in their ponder.json)",
    extractor=lambda text: (arith.ANSWER_RE.findall(text) or [None])[-1], verdict_re=arith.WINNER_RE,
    verdict_lead="Winner: Solution ", backward_template=arith.MASK_TEMPLATE,
    backward_question_template=arith.BACKWARD_QUESTION_TEMPLATE, backward_solve_template=arith.BACKWARD_TEMPLATE)
MATH = Task(
    name="math", description="any chat model, numeric answers: \\boxed{}, 'The answer is', '####', 'Answer:', the "
    "last number; the knockout paper's judge; FOBAR backward questions (the default)",
    instruction="Please reason step by step, and put your final answer within \\boxed{}.",
    extractor=extract_number, judge_system=JUDGE_SYSTEM, judge_template=JUDGE_TEMPLATE,
    backward_template=FOBAR_TEMPLATE)
CHOICE = Task(
    name="choice", description="multiple choice A-J: 'the answer is (X)', 'Answer: X', the last lone letter; "
    "the knockout paper's judge; no backward questions",
    instruction='Think step by step, then finish with "The answer is (X)" where X is the letter of your choice.',
    extractor=extract_choice, judge_system=JUDGE_SYSTEM, judge_template=JUDGE_TEMPLATE)
FREE = Task(
    name="free", description="free-form replies with no extractable answer: the tournament judges whole replies; "
    "strategies that vote on answers are refused",
    judge_system=JUDGE_SYSTEM, judge_template=JUDGE_TEMPLATE)
