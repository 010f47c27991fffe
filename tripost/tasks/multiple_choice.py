"""BIG-bench multiple-choice tasks as lettered questions: date understanding and logical deduction.

    task.name: date_understanding     # data_dir holds date_understanding.json (369 questions, all seen)
    task.name: logical_deduction      # data_dir holds logical_deduction_{three,five,seven}_objects.json;
                                      # three and five objects are seen, seven objects unseen (test only)

Each BIG-bench example has an "input" and "target_scores" {option text: 0 or 1}. The options are
appended to the question as lettered lines, in an order shuffled deterministically from the
example's own content (so it never depends on file order or on task.seed):

    Yesterday was April 30, 2021. What is the date today in MM/DD/YYYY?
    Options:
    (A) 05/09/2021
    (B) 05/01/2021
    ...

The gold answer is the letter, "(B)". A final response is judged by its letter: "(B)", "B",
"(B) 05/01/2021" and the option text itself ("05/01/2021") all count as (B). These tasks have no
scripted rationale; their rationales and feedback come from the LLM templates (prompts/<task>/).
"""

from __future__ import annotations

import json
import random
import re
import string

from tripost import steps
from tripost.errors import TripostError
from tripost.io import content_id
from tripost.tasks.base import Example, Task, make_example

OPTIONS_HEADER = "Options:"
_OPTION_LINE_RE = re.compile(r"^\(([A-Z])\)\s?(.*)$")
_PAREN_LETTER_RE = re.compile(r"^\(([A-Za-z])\)")
_BARE_LETTER_RE = re.compile(r"^([A-Z])(?:[).:]|\s|$)")


def _norm(text: str) -> str:
    return " ".join(text.strip().rstrip(".").split()).lower()


def parse_options(question: str) -> dict[str, str]:
    """{letter: option text} from the "Options:" block of a question."""
    _, sep, block = question.rpartition(OPTIONS_HEADER)
    if not sep:
        return {}
    out = {}
    for line in block.splitlines():
        m = _OPTION_LINE_RE.match(line.strip())
        if m:
            out[m.group(1)] = m.group(2).strip()
    return out


def choice_letter(answer: str | None, options: dict[str, str]) -> str | None:
    """"(B)", "B", "(B) text", "B) text" or an option's own text -> "B"; None if none fits."""
    if answer is None:
        return None
    answer = answer.strip().lstrip(":").strip()  # "So the answer is: (B)"
    m = _PAREN_LETTER_RE.match(answer)
    if m:
        return m.group(1).upper()
    by_text = {_norm(text): letter for letter, text in options.items()}
    if _norm(answer) in by_text:
        return by_text[_norm(answer)]
    m = _BARE_LETTER_RE.match(answer)
    return m.group(1) if m else None


class MultipleChoiceTask(Task):
    """A BIG-bench multiple-choice file (or several) turned into lettered questions."""

    # (file name, subtask, seen) for each data file
    files: tuple[tuple[str, str, bool], ...] = ()

    def _load_all(self) -> list[Example]:
        out = []
        for filename, subtask, seen in self.files:
            path = self.data_file(filename)
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
                raw = data["examples"]
                prefix = data.get("task_prefix", "")
            except (json.JSONDecodeError, AttributeError, KeyError, TypeError) as e:
                raise TripostError(f"{path}: not a BIG-bench task file ({e})") from None
            for i, item in enumerate(raw):
                out.append(self._example(item, prefix, subtask, seen, f"{path}: examples[{i}]"))
        return out

    def _example(self, item, prefix: str, subtask: str, seen: bool, where: str) -> Example:
        scores = item.get("target_scores") if isinstance(item, dict) else None
        if not isinstance(item, dict) or not isinstance(item.get("input"), str) or not isinstance(scores, dict):
            raise TripostError(f"{where}: needs a string 'input' and a 'target_scores' mapping")
        correct = [text for text, score in scores.items() if score == 1]
        if len(correct) != 1:
            raise TripostError(f"{where}: 'target_scores' must mark exactly one option with 1")
        if len(scores) > len(string.ascii_uppercase):
            raise TripostError(f"{where}: more than 26 options")
        options = sorted(scores)
        # Shuffle seeded by the example itself: stable across runs, machines and file orderings.
        random.Random(content_id(item["input"], *options)).shuffle(options)
        letters = string.ascii_uppercase[: len(options)]
        lines = [f"({letter}) {text}" for letter, text in zip(letters, options)]
        # BIG-bench's prefix ends in blank lines; BBH-style prompts join it with a space.
        body = item["input"].strip()
        question = f"{' '.join(prefix.split())} {body}" if prefix.strip() else body
        question += f"\n{OPTIONS_HEADER}\n" + "\n".join(lines)
        answer = f"({letters[options.index(correct[0])]})"
        return make_example(self.name, question, answer, subtask=subtask, seen=seen, answer_text=correct[0])

    # -- judging ---------------------------------------------------------------------------
    def extract_answer(self, attempt: str) -> str | None:
        """The final response as "(X)" when it names a letter, else its text as written."""
        answer = steps.extract_final_answer(attempt)
        if answer is None:
            return None
        letter = choice_letter(answer, {})
        return f"({letter})" if letter else answer

    def choice(self, example: Example, attempt: str) -> str | None:
        """The letter an attempt chose for this example ("B"), or None."""
        return choice_letter(steps.extract_final_answer(attempt), parse_options(example.question))

    def is_correct(self, example: Example, attempt: str) -> bool:
        letter = self.choice(example, attempt)
        return letter is not None and f"({letter})" == example.answer.strip()


class DateUnderstanding(MultipleChoiceTask):
    name = "date_understanding"
    files = (("date_understanding.json", "", True),)


class LogicalDeduction(MultipleChoiceTask):
    name = "logical_deduction"
    files = (
        ("logical_deduction_three_objects.json", "three_objects", True),
        ("logical_deduction_five_objects.json", "five_objects", True),
        ("logical_deduction_seven_objects.json", "seven_objects", False),
    )
