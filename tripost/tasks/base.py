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
        examples = self._load_all()
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
