"""A custom tripost task in one file: add up a few one-digit numbers.

    Add: 4 7 2 5        gold answer: 18

Seen questions (the training distribution) have 3 or 4 numbers; unseen ones have 5 (test only),
so the results table shows whether what the model learnt carries over to longer sums.

tripost calls `examples(task_config)` once, in an isolated worker process, and reads the list it
returns. Every row needs "question" and "answer" (strings); "subtask", "seen" and "split" are
optional (without "split" tripost splits by task.test_fraction). `task_config` is the `task`
config section as a dict; settings of your own go in `task.options`.

Gold rationales are not written here but by `rationale(example)` in my_feedback.py; a task file
could also give each row a "rationale" or define `rationale(example)` itself.
"""

import random

DEFAULTS = {"train": 200, "test": 40, "unseen_test": 20, "seed": 0}


def question(numbers):
    return "Add: " + " ".join(str(n) for n in numbers)


def examples(task_config):
    opts = {**DEFAULTS, **task_config["options"]}
    rng = random.Random(opts["seed"])
    rows, asked = [], set()

    def add(n_terms, split, seen, count):
        made = 0
        while made < count:
            numbers = [rng.randint(1, 9) for _ in range(n_terms)]
            q = question(numbers)
            if q in asked:  # every question once, so train and test never share one
                continue  # (9**3 = 729 questions of 3 numbers exist: ask for fewer than that)
            asked.add(q)
            rows.append({"question": q, "answer": str(sum(numbers)), "subtask": f"terms_{n_terms}",
                         "seen": seen, "split": split})
            made += 1

    for n_terms in (3, 4):
        add(n_terms, "train", True, opts["train"] // 2)
        add(n_terms, "test", True, opts["test"] // 2)
    add(5, "test", False, opts["unseen_test"])
    return rows
