"""Built-in tasks. `get_task(cfg.task)` returns the task a config names.

    multistep_arithmetic  generated as BIG-bench does; gold rationales and feedback by script
    word_sorting          BIG-bench data; gold rationales and feedback by script
    date_understanding    BIG-bench data, lettered multiple choice
    logical_deduction     BIG-bench data (3/5 objects seen, 7 unseen), lettered multiple choice
    jsonl                 your own file of question/answer records
    path/to/my_task.py    your own task file: plain functions (tripost/tasks/file.py)
"""

from tripost.config import TaskConfig
from tripost.errors import TripostError
from tripost.tasks.base import Example, Task, make_example

TASK_NAMES = ("multistep_arithmetic", "word_sorting", "date_understanding", "logical_deduction", "jsonl")


def get_task(cfg: TaskConfig) -> Task:
    # Plain imports, no registry: a new task is a new module and one line here.
    if cfg.name == "multistep_arithmetic":
        from tripost.tasks.multistep_arithmetic import MultistepArithmetic as cls
    elif cfg.name == "word_sorting":
        from tripost.tasks.word_sorting import WordSorting as cls
    elif cfg.name == "date_understanding":
        from tripost.tasks.multiple_choice import DateUnderstanding as cls
    elif cfg.name == "logical_deduction":
        from tripost.tasks.multiple_choice import LogicalDeduction as cls
    elif cfg.name == "jsonl":
        from tripost.tasks.jsonl import JsonlTask as cls
    elif cfg.name.endswith(".py"):
        from tripost.tasks.file import FileTask as cls
    else:
        raise TripostError(f"config: unknown task.name '{cfg.name}' (choose from {', '.join(TASK_NAMES)}, "
                           "or give the path of your own task file, my_task.py)")
    return cls(cfg)


__all__ = ["Example", "Task", "get_task", "make_example", "TASK_NAMES"]
