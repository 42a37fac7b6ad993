"""Answer extraction the standard harnesses use, as pure functions over a model's text.

Numbers (GSM8K / MATH style), in the order Qwen2.5-Math's and Math-Verify's
graders try them: the last `\\boxed{...}` with balanced braces, then "The
(final) answer is X", then lm-evaluation-harness's strict "#### X", then
"Answer: X", then the last number in the text (the harness's "flexible" filter).
Letters (MMLU-Pro style): "answer is (X)", then "Answer: X", then the last lone
letter A-J. Every answer comes back normalised, so "1,000", "$1000." and
"1000.0" count as one answer in a vote and match the gold "1000".
"""

from __future__ import annotations

import re

NUMBER = r"-?\d[\d,]*(?:\.\d+)?"
NUMBER_RE = re.compile(NUMBER)
# Each phrase's answer is the first number after it on its line.
PHRASES = (re.compile(r"[Tt]he (?:final )?answer is[:\s]*([^\n]*)"), re.compile(r"####\s*([^\n]*)"),
           re.compile(r"[Aa]nswer:\s*([^\n]*)"))
CHOICE_RES = (re.compile(r"answer is:?\s*\(?([A-J])\)?"), re.compile(r"[Aa]nswer:\s*\(?([A-J])\)?"),
              re.compile(r"\b([A-J])\b"))


def last_boxed(text: str) -> str | None:
    """The content of the last \\boxed{...} (or \\fbox{...}), braces balanced; None if there is none."""
    start = max(text.rfind("\\boxed{"), text.rfind("\\fbox{"))
    if start < 0:
        return None
    i = text.index("{", start) + 1
    depth = 1
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i:j]
    return None  # unbalanced: the reply was cut off inside the box


def normalize(answer: str) -> str:
    """'1,000', '$1000.', '1000.0' and ' 1000 ' are all '1000'; other text is only stripped."""
    a = answer.strip().strip("$").strip().rstrip(".").replace(",", "")
    a = re.sub(r"^[a-zA-Z]\s*=\s*", "", a)  # "x = 5" -> "5"
    try:
        x = float(a)
    except ValueError:
        return a
    return str(int(x)) if x.is_integer() else repr(x)


def extract_number(text: str) -> str | None:
    """The answer of a math reply, in the harnesses' order (module docstring), normalised."""
    boxed = last_boxed(text)
    if boxed is not None and boxed.strip():
        return normalize(boxed)
    for phrase in PHRASES:
        for tail in reversed(phrase.findall(text)):
            found = NUMBER_RE.search(tail)
            if found:
                return normalize(found.group())
    numbers = NUMBER_RE.findall(text)
    return normalize(numbers[-1]) if numbers else None


def extract_choice(text: str) -> str | None:
    """The letter of a multiple-choice reply (MMLU-Pro's three patterns, in order)."""
    for pattern in CHOICE_RES:
        found = pattern.findall(text)
        if found:
            return found[-1]
    return None
