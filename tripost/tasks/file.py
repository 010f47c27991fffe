"""A task from a plain Python file of yours: `task.name: path/to/my_task.py`.

The file defines plain functions (only `examples` is required):

    def examples(task_config) -> list[dict]:
        # every question: {"question": ..., "answer": ...} and optionally "subtask" (str),
        # "seen" (bool; false = a harder held-out question, test only), "split" ("train" / "test":
        # your own split; without it tripost splits by task.test_fraction), "rationale" (a worked
        # solution in the step format, or lines of text: each becomes a numbered step)
        # task_config is the `task` config section as a dict (your own settings can go in
        # task.options).
    def extract_answer(attempt) -> str | None     # default: the X of "(Final response) So the answer is X."
    def judge(example, answer) -> bool            # default: task.judge (exact, numeric, set, list)
    def rationale(example) -> str | None          # default: the "rationale" of the example, if any

`example` is a dict: id, task, question, answer, subtask, seen. The file runs like a feedback
script, in an isolated worker process with a time and memory limit (tripost/experts/script.py): a
function that raises, hangs or returns the wrong type is one clear error (while loading the
examples) or a wrong answer (when judging), never a crashed run. See docs/tasks.md for a complete
small example.
"""

from __future__ import annotations

import atexit
import dataclasses
from pathlib import Path

from tripost import steps
from tripost.config import EditConfig, TaskConfig, to_dict
from tripost.errors import TripostError
from tripost.experts.script import ScriptExpert
from tripost.experts.base import example_dict
from tripost.tasks.base import Example, Task, make_example, rationale_steps, same_answer

# The worker's limits: the edit section's defaults, with more time for generating the examples.
SETTINGS = dataclasses.replace(EditConfig(), script_workers=1, script_timeout_s=120.0)


class FileTask(Task):
    """A task whose functions live in the user's file, called in a worker process."""

    def __init__(self, cfg: TaskConfig):
        super().__init__(cfg)
        self.path = Path(cfg.name).expanduser()
        if not self.path.is_file():
            raise TripostError(f"{self.path}: task file not found (task.name)")
        self.name = self.path.stem
        self._worker: ScriptExpert | None = None
        self._examples: list[Example] | None = None
        self.has_gold_rationale = "rationale" in self.worker.functions or any(
            ex.meta.get("rationale") for ex in self._load_all())

    @property
    def worker(self) -> ScriptExpert:
        if self._worker is None:
            self._worker = ScriptExpert(self.path, SETTINGS, required=("examples",))
            atexit.register(self._worker.close)
        return self._worker

    def _one(self, kind: str, args: list):
        (reply,) = self.worker.call(kind, [args])
        if reply.error:
            raise TripostError(f"{self.path}: {kind}() failed: {reply.error}"
                               + (f" ({reply.detail})" if reply.detail else ""))
        return reply.value if reply.value is not None else reply.text

    def _load_all(self) -> list[Example]:
        if self._examples is None:
            rows = self._one("examples", [to_dict(self.cfg)])
            out = []
            for i, row in enumerate(rows):
                where = f"{self.path}: examples()[{i}]"
                for key in ("question", "answer"):
                    if not isinstance(row.get(key), str) or not row[key].strip():
                        raise TripostError(f"{where}: needs a non-empty string '{key}'")
                if row.get("split", "train") not in ("train", "test"):
                    raise TripostError(f"{where}: 'split' must be train or test, got {row['split']!r}")
                rationale = row.get("rationale")
                out.append(make_example(self.name, row["question"].strip(), row["answer"].strip(),
                                        str(row.get("subtask", "")), bool(row.get("seen", True)),
                                        split=row.get("split"),
                                        rationale=rationale_steps(rationale, row["answer"].strip())
                                        if isinstance(rationale, str) else None))
            if not out:
                raise TripostError(f"{self.path}: examples() returned no questions")
            self._examples = out
        return self._examples

    def split(self) -> tuple[list[Example], list[Example]]:
        examples = self._load_all()
        if all(ex.meta["split"] is None for ex in examples):
            return self.split_examples(examples)
        train = [ex for ex in examples if ex.meta["split"] == "train"]
        test = [ex for ex in examples if ex.meta["split"] != "train"]
        if any(not ex.seen for ex in train):
            raise TripostError(f"{self.path}: examples() put an unseen question in the train split")
        return train[: self.cfg.max_train], test[: self.cfg.max_test]

    def extract_answer(self, attempt: str) -> str | None:
        if "extract_answer" not in self.worker.functions:
            return steps.extract_final_answer(attempt)
        (reply,) = self.worker.call("extract_answer", [[attempt]])
        return reply.text

    def is_correct(self, example: Example, attempt: str) -> bool:
        predicted = self.extract_answer(attempt)
        if predicted is None:
            return False
        if "judge" not in self.worker.functions:
            return same_answer(predicted, example.answer, self.cfg)
        (reply,) = self.worker.call("judge", [[example_dict(example), predicted]])
        return reply.value is True  # an error or a hang is a wrong answer, not a crashed run

    def gold_rationale(self, example: Example) -> str | None:
        if example.meta.get("rationale"):
            return example.meta["rationale"]
        if "rationale" not in self.worker.functions:
            return None
        (reply,) = self.worker.call("rationale", [[example_dict(example)]])
        return rationale_steps(reply.text, example.answer) if reply.text else None
