"""Your own question/answer data as a task: one JSON object per line.

    task:
      name: jsonl
      path: data/my_task.jsonl        # one file, split into train and test (test_fraction) ...
      train_path: null                # ... or separate train and test files
      test_path: null
      question_field: question        # the defaults
      answer_field: answer
      subtask_field: null             # a field naming the subtask
      seen_field: null                # a field: true / "seen" (training distribution) or false / "unseen" (test only)
      rationale_field: null           # a field with a worked solution to train on (see below)
      judge: exact                    # exact | numeric | set | list (see tripost/tasks/base.py same_answer)

A gold answer with "####" (GSM8K) counts only for the text after it ("... 72 clips\\n#### 72" ->
"72"); the whole field stays in Example.meta["solution"], so `rationale_field: answer` trains on
the solution before "####", one numbered step per line. A rationale field already in the step
format ("(1) ...") is used as it is. Nothing is ever evaluated as code. A missing file, a malformed
or torn line, a missing field or a field of the wrong type is one TripostError naming file:line.
"""

from __future__ import annotations

from pathlib import Path

from tripost.errors import TripostError, where
from tripost.io import jsonl_objects
from tripost.tasks.base import Example, Task, make_example, rationale_steps, same_answer


def gold_final(answer: str) -> str:
    """GSM8K: the text after the last "####", else the whole answer."""
    return answer.rsplit("####", 1)[1].strip() if "####" in answer else answer.strip()


def _seen(value, path: Path, line: int, key: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("seen", "unseen", "true", "false"):
        return value.strip().lower() in ("seen", "true")
    raise TripostError(f"{where(path, line)}: field '{key}' must be true/false or \"seen\"/\"unseen\", got {value!r}")


class JsonlTask(Task):
    name = "jsonl"

    def __init__(self, cfg):
        super().__init__(cfg)
        self.has_gold_rationale = cfg.rationale_field is not None

    def _field(self, record: dict, key: str, path: Path, line: int) -> str:
        if key not in record:
            raise TripostError(f"{where(path, line)}: missing field '{key}' "
                               f"(fields here: {', '.join(sorted(record)) or 'none'})")
        value = record[key]
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise TripostError(f"{where(path, line)}: field '{key}' must be a string or a number, "
                               f"got {type(value).__name__}")
        return str(value)

    def _read(self, key: str) -> list[Example]:
        raw = {"path": self.cfg.path, "train_path": self.cfg.train_path, "test_path": self.cfg.test_path}[key]
        path = Path(raw).expanduser()
        if not path.is_file():
            raise TripostError(f"{path}: data file not found (task.{key})")
        out = []
        for line, record in jsonl_objects(path):
            question = self._field(record, self.cfg.question_field, path, line)
            solution = self._field(record, self.cfg.answer_field, path, line)
            subtask = self._field(record, self.cfg.subtask_field, path, line) if self.cfg.subtask_field else ""
            seen = _seen(record.get(self.cfg.seen_field, True), path, line, self.cfg.seen_field) \
                if self.cfg.seen_field else True
            rationale = None
            if self.cfg.rationale_field:
                text = self._field(record, self.cfg.rationale_field, path, line)
                rationale = rationale_steps(text, gold_final(solution))
            out.append(make_example(self.name, question.strip(), gold_final(solution), subtask=subtask, seen=seen,
                                    solution=solution, rationale=rationale, source=f"{path}:{line}"))
        if not out:
            raise TripostError(f"{path}: no records")
        return out

    def _load_all(self) -> list[Example]:
        if not self.cfg.path:
            raise TripostError("task 'jsonl' needs task.path (a JSONL file of question/answer records), or "
                               "task.train_path and task.test_path")
        return self._read("path")

    def split(self) -> tuple[list[Example], list[Example]]:
        if self.cfg.train_path is None:
            return super().split()
        train, test = self._read("train_path"), self._read("test_path")
        unseen = next((ex for ex in train if not ex.seen), None)
        if unseen is not None:
            raise TripostError(f"{unseen.meta['source']}: an unseen question in the train file "
                               f"(task.seen_field={self.cfg.seen_field}); unseen questions are for testing only")
        if self.cfg.max_train is not None:
            train = train[: self.cfg.max_train]
        if self.cfg.max_test is not None:
            test = test[: self.cfg.max_test]
        return train, test

    def is_correct(self, example: Example, attempt: str) -> bool:
        predicted = self.extract_answer(attempt)
        return predicted is not None and same_answer(predicted.lstrip(":"), example.answer, self.cfg)

    def gold_rationale(self, example: Example) -> str | None:
        return example.meta.get("rationale")
