"""The expert for my_task.py: feedback, improvement and gold rationales, as plain functions.

A good attempt adds one number per step, left to right:

    (1) 4 + 7 = 11.
    (2) 11 + 2 = 13.
    (3) 13 + 5 = 18.
    (Final response) So the answer is 18.

tripost runs this file in worker processes (edit.script_workers) and calls
    feedback(example, attempt)            -> one sentence naming the first wrong step, or "correct"
    improve(example, attempt, feedback)   -> the whole corrected attempt
    rationale(example)                    -> a worked solution (warm-up and baseline data)
`example` is a dict: id, task, question, answer, subtask, seen. See docs/feedback_scripts.md.
"""

import re

from tripost import steps

STEP_RE = re.compile(r"^(\d+) \+ (\d+) = (\d+)\.$")


def numbers(question):
    return [int(x) for x in question.split(":", 1)[1].split()]


def solution(nums, kept=()):
    """The steps of a correct attempt, continuing after the (correct) steps in `kept`."""
    out = list(kept)
    total = sum(nums[: len(out) + 1])
    for i in range(len(out) + 1, len(nums)):
        out.append(steps.Step(str(i), f"{total} + {nums[i]} = {total + nums[i]}."))
        total += nums[i]
    out.append(steps.Step(steps.FINAL, f"So the answer is {total}."))
    return steps.render_steps(out)


def rationale(example):
    return solution(numbers(example["question"]))


def feedback(example, attempt):
    nums = numbers(example["question"])
    parsed = steps.parse_steps(attempt)
    if not parsed:
        return None  # nothing to judge: dropped as script_no_feedback
    numbered = [s for s in parsed if s.label != steps.FINAL]
    total = nums[0]
    for i, step in enumerate(numbered):  # i steps before this one, all correct
        m = STEP_RE.match(step.text.strip())
        if step.label != str(i + 1) or m is None:
            return steps.feedback_wrong(i, step.label, step.text, 'a step must read "(k) a + b = c."')
        if i + 1 >= len(nums):
            return steps.feedback_wrong(i, step.label, step.text, "every number has already been added")
        a, b, c = map(int, m.groups())
        if a != total:
            return steps.feedback_wrong(i, step.label, f"{a} +", f"the running total is {total}, not {a}")
        if b != nums[i + 1]:
            return steps.feedback_wrong(i, step.label, f"+ {b}", f"the next number is {nums[i + 1]}, not {b}")
        if c != a + b:
            return steps.feedback_wrong(i, step.label, f"{a} + {b} = {c}", f"{a} + {b} is {a + b}, not {c}")
        total = c
    n = len(numbered)
    final = parsed[-1]
    if final.label != steps.FINAL:
        return steps.feedback_wrong(n, steps.FINAL, final.text, "the attempt has no final response")
    if n < len(nums) - 1:
        return steps.feedback_wrong(n, steps.FINAL, final.text, f"{len(nums) - 1 - n} number(s) are not added yet")
    if steps.extract_final_answer(attempt) != str(total):
        return steps.feedback_wrong(n, steps.FINAL, final.text, f"the total is {total}")
    return steps.feedback_correct(n)


def improve(example, attempt, feedback):
    """Keep the steps before the wrong one (they were checked), redo the rest."""
    wrong = steps.parse_feedback(feedback).wrong_step
    kept = []
    for step in steps.parse_steps(attempt):
        if step.label in (wrong, steps.FINAL):
            break
        kept.append(step)
    return solution(numbers(example["question"]), kept)
