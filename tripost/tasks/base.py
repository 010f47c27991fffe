"""What a task is: a small plain class that loads a split and judges answers.

    task = get_task(cfg.task)
    for ex in task.load("train"):
        ex.question, ex.answer, ex.subtask, ex.seen
        task.is_correct(ex, attempt_text)

Subclasses implement `_load_all()` (every example, in a fixed order) and may override
`extract_answer`, `normalize` and `gold_rationale`. The train/test split is made here, once, the
same way for every task (see `split`).
"""

from __future__ import annotations

import random
import re
from fractions import Fraction
from pathlib import Path

from tripost import steps
from tripost.config import TaskConfig
from tripost.errors import TripostError
from tripost.records import Example, make_example  # noqa: F401  (tasks build examples with make_example)


class Task:
    name = "task"
    # Tasks with a scripted gold rationale (and feedback scripts) set this.
    has_gold_rationale = False

    def __init__(self, cfg: TaskConfig):
        self.cfg = cfg

    # -- data ------------------------------------------------------------------------------
    def _load_all(self) -> list[Example]:
        raise NotImplementedError

    def load(self, split: str) -> list[Example]:
        """`train` or `test`. Deterministic: a seeded shuffle of all examples by id, the first
        `test_fraction` of each subtask is test, the rest train; `max_train`/`max_test` cap them.
        Unseen examples (harder, held out) only ever appear in test."""
        if split not in ("train", "test"):
            raise TripostError(f"unknown split '{split}' (use train or test)")
        train, test = self.split()
        return train if split == "train" else test

    def split(self) -> tuple[list[Example], list[Example]]:
        return self.split_examples(self._load_all())

    def split_examples(self, examples: list[Example]) -> tuple[list[Example], list[Example]]:
        """The deterministic split of `examples` (see `load`)."""
        rng = random.Random(self.cfg.seed)
        by_subtask: dict[tuple[str, bool], list[Example]] = {}
        for ex in sorted(examples, key=lambda e: e.id):
            by_subtask.setdefault((ex.subtask, ex.seen), []).append(ex)
        train, test = [], []
        for key in sorted(by_subtask):
            group = by_subtask[key]
            rng.shuffle(group)
            if not key[1]:  # unseen: evaluation only
                test.extend(group)
                continue
            n_test = max(1, round(len(group) * self.cfg.test_fraction)) if len(group) > 1 else 0
            test.extend(group[:n_test])
            train.extend(group[n_test:])
        rng.shuffle(train)
        rng.shuffle(test)
        if self.cfg.max_train is not None:
            train = train[: self.cfg.max_train]
        if self.cfg.max_test is not None:
            test = test[: self.cfg.max_test]
        return train, test

    def data_file(self, filename: str) -> Path:
        if not self.cfg.data_dir:
            raise TripostError(f"task '{self.name}' needs task.data_dir (a directory holding {filename})")
        path = Path(self.cfg.data_dir).expanduser() / filename
        if not path.is_file():
            raise TripostError(f"{path}: data file not found (task.data_dir={self.cfg.data_dir})")
        return path

    # -- judging ---------------------------------------------------------------------------
    def extract_answer(self, attempt: str) -> str | None:
        return steps.extract_final_answer(attempt)

    def normalize(self, answer: str) -> str:
        return " ".join(answer.strip().rstrip(".").split()).lower()

    def is_correct(self, example: Example, attempt: str) -> bool:
        predicted = self.extract_answer(attempt)
        return predicted is not None and self.normalize(predicted) == self.normalize(example.answer)

    def gold_rationale(self, example: Example) -> str | None:
        """A correct step-by-step attempt written by script, or None if the task has none."""
        return None


# ----------------------------------------------------------------------------------------------
# Judging options (task.judge) for tasks whose answers are the user's: jsonl and task files


def as_number(text: str) -> Fraction | None:
    """The exact value of a number written as text, or None: "1,000", "$18", "3.0", "-2", "1/2"
    (a final period is ignored). Leading zeros are fine ("007" is 7): that is what numeric means."""
    t = text.strip().rstrip(".").replace(",", "").replace("$", "").strip()
    if not t or len(t) > 100 or not re.fullmatch(r"[-+]?(\d+(\.\d*)?|\.\d+)(/\d+)?", t):
        return None
    try:
        return Fraction(t)
    except (ValueError, ZeroDivisionError):
        return None


def _text(answer: str, case_sensitive: bool) -> str:
    t = " ".join(answer.strip().split())
    t = t[:-1].rstrip() if t.endswith(".") else t
    return t if case_sensitive else t.lower()


def _items(answer: str, separator: str | None, case_sensitive: bool) -> list[str]:
    parts = answer.split(separator) if separator else re.split(r"[\s,]+", answer.strip().rstrip("."))
    return [_text(p, case_sensitive) for p in parts if p.strip()]


def same_answer(predicted: str, gold: str, cfg: TaskConfig) -> bool:
    """`predicted` equals `gold` under task.judge: exact (text, ignoring case unless
    judge_case_sensitive, runs of whitespace and a final period), numeric (both are numbers and
    equal exactly; "not 1101" is not a number), set or list (items split by judge_separator,
    compared as sets or in order)."""
    if cfg.judge == "numeric":
        a, b = as_number(predicted), as_number(gold)
        return a is not None and a == b
    if cfg.judge == "set":
        return sorted(set(_items(predicted, cfg.judge_separator, cfg.judge_case_sensitive))) == \
            sorted(set(_items(gold, cfg.judge_separator, cfg.judge_case_sensitive)))
    if cfg.judge == "list":
        return _items(predicted, cfg.judge_separator, cfg.judge_case_sensitive) == \
            _items(gold, cfg.judge_separator, cfg.judge_case_sensitive)
    return _text(predicted, cfg.judge_case_sensitive) == _text(gold, cfg.judge_case_sensitive)


def rationale_steps(text: str, answer: str) -> str | None:
    """A worked solution in tripost's step format: steps "(1) ..." as they are (a final line is
    added when missing), or lines of text numbered one step per line (GSM8K: the text before
    "#### X"), ending in the final line with `answer`. None for an empty solution."""
    text = text.split("####", 1)[0].strip()
    if not text:
        return None
    parsed = [s for s in steps.parse_steps(text) if s.label != "0"]
    if not parsed:
        parsed = [steps.Step(str(i), line.strip()) for i, line in enumerate(
            (ln for ln in text.splitlines() if ln.strip()), start=1)]
    parsed = [s for s in parsed if s.label != steps.FINAL]
    return steps.render_steps(parsed + [steps.Step(steps.FINAL, f"So the answer is {answer}.")])
