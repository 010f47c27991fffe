"""Your own question/answer data as a task: one JSON object per line.

    task.name: jsonl
    task.path: data/gsm8k_train.jsonl
    task.question_field: question     # defaults shown
    task.answer_field: answer
    task.subtask_field: null          # optional: a field whose value names the subtask

Every example is "seen" (the train/test split is the usual one, see docs/tasks.md). Answers are
compared as numbers when the gold answer is one, GSM8K style:

  * a gold answer containing "####" counts only for the text after it ("... so 72 clips\\n#### 72"
    -> "72"); the full text stays in Example.meta["solution"];
  * numbers compare exactly, as fractions: "1,000" == "1000", "3.0" == "3", "$18" == "18", "1/2" ==
    "0.5"; a predicted answer with words around exactly one number ("18 dollars") counts as it;
  * anything else compares as text, ignoring case, spacing and a final period.

Nothing is ever evaluated as code. A missing file, a malformed line or a missing field raises
TripostError naming the file (and line and field).
"""

from __future__ import annotations

import re
from fractions import Fraction
from pathlib import Path

from tripost.errors import TripostError, where
from tripost.io import jsonl_objects
from tripost.tasks.base import Example, Task, make_example

_NUMBER_RE = re.compile(r"-?\$?\d[\d,]*(?:\.\d+)?(?:/\d+)?|-?\$?\.\d+")


def as_number(text: str) -> Fraction | None:
    """The exact value of a number written as text, or None. Commas, a leading $ and a final
    period are ignored; fractions "a/b" and decimals are exact."""
    t = text.strip().rstrip(".").replace(",", "").replace("$", "").strip()
    if not t or not re.fullmatch(r"[-+]?(\d+(\.\d*)?|\.\d+)(/\d+)?", t):
        return None
    try:
        return Fraction(t)
    except (ValueError, ZeroDivisionError):
        return None


def gold_final(answer: str) -> str:
    """GSM8K: the text after the last "####", else the whole answer."""
    return answer.rsplit("####", 1)[1].strip() if "####" in answer else answer.strip()


class JsonlTask(Task):
    name = "jsonl"
    has_gold_rationale = False

    def _field(self, record: dict, key: str, path: Path, line: int) -> str:
        if key not in record:
            raise TripostError(f"{where(path, line)}: missing field '{key}' "
                               f"(fields here: {', '.join(sorted(record)) or 'none'})")
        value = record[key]
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise TripostError(f"{where(path, line)}: field '{key}' must be a string or a number, "
                               f"got {type(value).__name__}")
        return str(value)

    def _load_all(self) -> list[Example]:
        if not self.cfg.path:
            raise TripostError("task 'jsonl' needs task.path (a JSONL file of question/answer records)")
        path = Path(self.cfg.path).expanduser()
        if not path.is_file():
            raise TripostError(f"{path}: data file not found (task.path)")
        out = []
        for line, record in jsonl_objects(path, allow_torn_tail=False):
            question = self._field(record, self.cfg.question_field, path, line)
            solution = self._field(record, self.cfg.answer_field, path, line)
            subtask = self._field(record, self.cfg.subtask_field, path, line) if self.cfg.subtask_field else ""
            out.append(make_example(self.name, question.strip(), gold_final(solution), subtask=subtask,
                                    seen=True, solution=solution, line=line))
        if not out:
            raise TripostError(f"{path}: no records")
        return out

    def is_correct(self, example: Example, attempt: str) -> bool:
        predicted = self.extract_answer(attempt)
        if predicted is None:
            return False
        gold = as_number(example.answer)
        predicted = predicted.lstrip(":")  # "So the answer is: 72"
        if gold is None:
            return self.normalize(predicted) == self.normalize(example.answer)
        value = as_number(predicted)
        if value is None:
            # "18 dollars", "$18.00 in total": fine when the answer holds exactly one number.
            found = _NUMBER_RE.findall(predicted)
            value = as_number(found[0]) if len(found) == 1 else None
        return value is not None and value == gold
