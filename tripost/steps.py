"""The answer format every method speaks: numbered steps, the final line, and feedback sentences.

An attempt is a list of numbered steps and a final line:

    (1) This equation can be written as "A * B", where A = (-7 + 6) and B = (3 - 5).
    (2) Let's calculate A = (-7 + 6) = -1.
    (3) Let's calculate B = (3 - 5) = -2.
    (4) Then, the final equation is A * B = -1 * -2 = 2.
    (Final response) So the answer is 2.

Feedback names the first wrong step, in one grammar used by scripts, LLM experts and the model:

    Step (1) to (2) are correct. In step (3) the part "(3 - 5) = -3" is incorrect. This is because (3 - 5) is not equal to -3.
    Step (1) to (4) are correct. The final response is also correct.

The model's first answer to a question always follows `prompt(question)` ("Q: ...\\nA: "); what a
method adds after it (TriPosT's "Feedback:", a partner's remark, another agent's answer) is the
method's own transcript (tripost/methods/).

Everything here parses model-written text, so it runs in linear time, and text longer than
MAX_CHARS is not parsed at all (no steps, no answer, no feedback): an answer hidden after a
megabyte of padding is no answer, and the edit stage drops such text with a counted reason.
"""

from __future__ import annotations

from dataclasses import dataclass

FINAL = "Final response"
QUESTION_PREFIX = "Q: "
ANSWER_PREFIX = "\nA: "
# The most characters of model text any parser here reads (a rationale is under 2,000).
MAX_CHARS = 20_000


def prompt(question: str) -> str:
    """What a model is given before its first answer."""
    return f"{QUESTION_PREFIX}{question}{ANSWER_PREFIX}"


@dataclass(frozen=True)
class Step:
    label: str  # "1", "2", ... or "Final response"
    text: str  # the text after "(label) "

    def render(self) -> str:
        return f"({self.label}) {self.text}"


def _step_start(line: str) -> tuple[str, str] | None:
    """(label, rest) when `line` (already stripped) starts a step "(3) ..." or "(Final response) ..."."""
    if not line.startswith("("):
        return None
    close = line.find(")", 1, 2 + max(len(FINAL), 12))
    if close < 0:
        return None
    label = line[1:close]
    if not (label == FINAL or (label.isascii() and label.isdigit())):
        return None
    rest = line[close + 1:]
    return label, rest[1:] if rest.startswith((" ", "\t")) else rest


def parse_steps(attempt: str) -> list[Step]:
    """Split an attempt into steps. A line that does not start a step continues the previous one;
    text before the first step becomes an unlabeled step "0" so nothing is lost. Text with no
    step at all ("(1) ..." or "(Final response) ...") is not an attempt in the step format: []."""
    if len(attempt) > MAX_CHARS:
        return []
    labels: list[str] = []
    parts: list[list[str]] = []
    for line in attempt.strip().splitlines():
        start = _step_start(line.strip())
        if start is not None:
            labels.append(start[0])
            parts.append([start[1]])
        elif parts:
            parts[-1].append(line)
        elif line.strip():
            labels.append("0")
            parts.append([line.strip()])
    if all(label == "0" for label in labels):
        return []
    return [Step(label, "\n".join(lines)) for label, lines in zip(labels, parts)]


def render_steps(steps: list[Step]) -> str:
    return "\n".join(s.render() for s in steps)


def final_line(answer: str) -> str:
    return f"({FINAL}) So the answer is {answer}."


def _answer_after(text: str) -> str | None:
    """The text after the last "the answer is", up to the end of its line, without a final "."."""
    i = text.lower().rfind("the answer is")
    if i < 0:
        return None
    rest = text[i + len("the answer is"):].split("\n", 1)[0].strip()
    return rest[:-1].rstrip() if rest.endswith(".") else rest


def extract_final_answer(attempt: str) -> str | None:
    """The X of `(Final response) So the answer is X.`; falls back to the last 'the answer is X'."""
    if len(attempt) > MAX_CHARS:
        return None
    for step in reversed(parse_steps(attempt)):
        if step.label == FINAL:
            return _answer_after(step.text)
    return _answer_after(attempt)


# ----------------------------------------------------------------------------------------------
# Feedback grammar


@dataclass(frozen=True)
class Feedback:
    """Parsed feedback. `wrong_step` is the label of the first wrong step, None when all correct."""

    correct: bool
    wrong_step: str | None = None
    part: str | None = None
    reason: str | None = None


def _correct_prefix(n_correct: int) -> str:
    if n_correct <= 0:
        return ""
    if n_correct == 1:
        return "Step (1) is correct. "
    return f"Step (1) to ({n_correct}) are correct. "


def feedback_correct(n_steps: int) -> str:
    """All `n_steps` numbered steps and the final response are right."""
    return _correct_prefix(n_steps) + "The final response is also correct."


def feedback_wrong(steps_before: int, label: str, part: str, reason: str) -> str:
    """Steps 1..steps_before are right; step `label` (a number or "Final response") is wrong."""
    reason = reason.strip().rstrip(".")
    part = part.replace('"', "'").replace("\n", " ")
    return f'{_correct_prefix(steps_before)}In step ({label}) the part "{part}" is incorrect. This is because {reason}.'


_WRONG_HEAD, _PART_HEAD, _PART_END, _BECAUSE = "In step (", ') the part "', '" is incorrect.', "This is because"
# A sentence gives up after this many candidate positions (bounded work on hostile text).
_MAX_TRIES = 16


def _wrong_at(text: str, start: int) -> Feedback | None:
    """The "In step (X) the part "..." is incorrect. [This is because ...]" sentence starting at
    `start`, running to the end of the text; the part is the shortest that makes the rest fit."""
    i = start + len(_WRONG_HEAD)
    close = text.find(")", i, i + len(FINAL) + 1)
    if close < 0:
        return None
    label = text[i:close]
    if not (label == FINAL or (label.isascii() and label.isdigit())) or not text.startswith(_PART_HEAD, close):
        return None
    part_start = close + len(_PART_HEAD)
    at = part_start
    for _ in range(_MAX_TRIES):
        end = text.find(_PART_END, at)
        if end < 0:
            return None
        rest = text[end + len(_PART_END):].strip()
        if not rest:
            return Feedback(False, label, text[part_start:end], None)
        if rest.startswith(_BECAUSE):
            reason = rest[len(_BECAUSE):].rstrip()
            reason = (reason[:-1] if reason.endswith(".") else reason).strip()
            return Feedback(False, label, text[part_start:end], reason or None)
        at = end + 1
    return None


def parse_feedback(text: str | None) -> Feedback | None:
    """Parse feedback in the grammar above; None when it follows neither form."""
    if text is None or len(text) > MAX_CHARS:
        return None
    text = text.strip()
    at = 0
    for _ in range(_MAX_TRIES):
        start = text.find(_WRONG_HEAD, at)
        if start < 0:
            break
        found = _wrong_at(text, start)
        if found is not None:
            return found
        at = start + 1
    if text.endswith("The final response is also correct."):
        return Feedback(True)
    return None


def says_correct(feedback: str | None) -> bool:
    fb = parse_feedback(feedback)
    return fb is not None and fb.correct
