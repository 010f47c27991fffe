"""Multistep arithmetic, generated the way BIG-bench's `multistep_arithmetic` task generates it.

A question is a tree of parenthesised groups. At depth 1 a group holds `length` numbers from -9 to
9 joined by + - *; at depth d > 1 a group joins two groups of depth d - 1 with one operator:

    l3_d2:  ((-7 + 6 * 2) * (3 - 5 - 1)) =
    l3_d3:  (((1 - 2 * 3) + (4 * -5 - 6)) - ((7 + 8 - 9) * (-1 * 2 + 3))) =

Subtasks are named "l{length}_d{depth}". As in the TriPosT paper, the model trains on the "seen"
subtasks (length 3-4, depth 2) and is also tested on harder "unseen" ones (length 5-6 at depth 2,
length 3-4 at depth 3), which `Task.split` keeps out of training. Generation is deterministic in
`task.seed` (one random stream per subtask). Sizes: `SEEN_PER_SUBTASK` / `UNSEEN_PER_SUBTASK`
questions, more when `task.max_train` / `task.max_test` ask for more.

Gold rationale format (the feedback script, LLM prompts and the trained model rely on it):

    (1) This equation can be written as "A * B", where A = (-7 + 6 * 2) and B = (3 - 5 - 1).
    (2) Let's calculate A = (-7 + 6 * 2) = (-7 + 12) = 5.
    (3) Let's calculate B = (3 - 5 - 1) = (-2 - 1) = -3.
    (4) Then, the final equation is A * B = 5 * -3 = -15.
    (Final response) So the answer is -15.

* Step (1), the partition: the question without its outer parentheses, each parenthesised operand
  at the top level named A, B, C, ... in order. Definitions are joined by ", " and a last " and ".
* One "Let's calculate X = ... ." step per part, in order. The chain starts with the part exactly as
  in step (1) and goes down one `arith.reduce_once` step per "=": in every innermost group one
  multiplication in each product (`(6 * 5 * 8) = (30 * 8) = 240`), then + and - one at a time
  from the left; a group that becomes one number loses its parentheses. Deeper parts reduce their
  inner groups inside the same chain:
  `A = ((1 - 2 * 3) + (4 * -5 - 6)) = ((1 - 6) + (-20 - 6)) = (-5 + -26) = -31`.
  (Until 2026-12-02 a whole product was one step, `(6 * 5 * 8) = 240`; with one operation per
  step the same warm-up gets 9.6% of held-out rationales exactly right instead of 1.8%,
  docs/warmup.md.)
* "Then, the final equation is T = T[values] = ... = v." where T is the quoted equation of step
  (1) and T[values] puts each part's result in place of its name.
* The last line is `steps.final_line(v)`. Numbers are plain integers, negatives written "-4", so a
  subtraction of a negative reads "3 - -4".

A question with no parenthesised part would get only the final-equation step.
"""

from __future__ import annotations

import math
import random
import string

from tripost import arith, steps
from tripost.tasks.base import Example, Task, make_example

SEEN = ((3, 2), (4, 2))
UNSEEN = ((5, 2), (6, 2), (3, 3), (4, 3))
SEEN_PER_SUBTASK = 1000
UNSEEN_PER_SUBTASK = 100
OPERATORS = ("+", "-", "*")


def subtask_name(length: int, depth: int) -> str:
    return f"l{length}_d{depth}"


def generate_group(rng: random.Random, length: int, depth: int) -> str:
    """One parenthesised group: `length` numbers at depth 1, two subgroups above."""
    if depth <= 1:
        numbers = [str(rng.randint(-9, 9)) for _ in range(length)]
        text = numbers[0]
        for number in numbers[1:]:
            text += f" {rng.choice(OPERATORS)} {number}"
        return f"({text})"
    left = generate_group(rng, length, depth - 1)
    right = generate_group(rng, length, depth - 1)
    return f"({left} {rng.choice(OPERATORS)} {right})"


def question_expression(question: str):
    """The AST of a question "(...) =" (the trailing "=" is optional)."""
    text = question.strip()
    if text.endswith("="):
        text = text[:-1]
    return arith.parse(text)


# ----------------------------------------------------------------------------------------------
# Rationale pieces (shared with feedback_scripts/multistep_arithmetic.py)


def partition(expr):
    """(template, {name: part}) for a question's expression: the outer parentheses dropped and
    every parenthesised operand at the top level replaced by a name A, B, C, ..."""
    top = arith.strip_parens(expr)
    parts: dict = {}
    letters = iter(string.ascii_uppercase)

    def name_parts(node):
        t = type(node)
        if t is arith.Paren:
            letter = next(letters, None)
            if letter is None:  # more than 26 parts: leave the rest inline
                return node
            parts[letter] = node
            return arith.Name(letter)
        if t is arith.Chain:
            return arith.Chain(name_parts(node.first), tuple((op, name_parts(x)) for op, x in node.rest))
        if t is arith.Neg:
            return arith.Neg(name_parts(node.operand))
        return node

    return name_parts(top), parts


def partition_step(template, parts: dict) -> str:
    defs = [f"{name} = {arith.render(node)}" for name, node in parts.items()]
    joined = defs[0] if len(defs) == 1 else ", ".join(defs[:-1]) + " and " + defs[-1]
    return f'This equation can be written as "{arith.render(template)}", where {joined}.'


def calculation_step(name: str, node) -> tuple[str, int]:
    """("Let's calculate A = ... = v.", v)."""
    chain = arith.reduction_chain(node)
    return f"Let's calculate {name} = {' = '.join(chain)}.", int(chain[-1])


def final_equation_step(template, values: dict) -> tuple[str, int]:
    """("Then, the final equation is A * B = 5 * -3 = -15.", -15)."""
    pieces = [arith.render(template)]
    if arith.names_in(template):
        numbers = {name: arith.Num(value) for name, value in values.items()}
        substituted = arith.substitute(template, numbers)
    else:
        substituted = template
    chain = arith.reduction_chain(substituted)
    if pieces[0] != chain[0]:
        pieces.append(chain[0])
    pieces.extend(chain[1:])
    return f"Then, the final equation is {' = '.join(pieces)}.", int(chain[-1])


def continue_rationale(template, parts: dict, values: dict, final_value: int | None,
                       first_label: int) -> list[str]:
    """The steps that finish a rationale whose partition is (template, parts), with `values` of
    the parts already calculated and `final_value` if the final equation is done. Labels start at
    `first_label`. Used for gold rationales (nothing done yet) and for scripted improvements."""
    lines: list[str] = []
    label = first_label
    values = dict(values)
    if final_value is None:
        for name, node in parts.items():
            if name in values:
                continue
            text, values[name] = calculation_step(name, node)
            lines.append(f"({label}) {text}")
            label += 1
        text, final_value = final_equation_step(template, values)
        lines.append(f"({label}) {text}")
    lines.append(steps.final_line(str(final_value)))
    return lines


def rationale(question: str) -> str:
    expr = question_expression(question)
    template, parts = partition(expr)
    lines = []
    if parts:
        lines.append(f"(1) {partition_step(template, parts)}")
    lines += continue_rationale(template, parts, {}, None, len(lines) + 1)
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# The task

class MultistepArithmetic(Task):
    name = "multistep_arithmetic"
    has_gold_rationale = True

    def _sizes(self) -> tuple[int, int]:
        """Questions per seen and unseen subtask: the defaults, or enough for max_train/max_test."""
        seen_n, unseen_n = SEEN_PER_SUBTASK, UNSEEN_PER_SUBTASK
        train_share = 1.0 - self.cfg.test_fraction
        if self.cfg.max_train is not None:
            seen_n = max(seen_n, math.ceil(self.cfg.max_train / (train_share * len(SEEN))) + 1)
        if self.cfg.max_test is not None:
            seen_test = len(SEEN) * round(seen_n * self.cfg.test_fraction)
            missing = self.cfg.max_test - seen_test - len(UNSEEN) * unseen_n
            if missing > 0:
                unseen_n += math.ceil(missing / len(UNSEEN))
        return seen_n, unseen_n

    def _load_all(self) -> list[Example]:
        seen_n, unseen_n = self._sizes()
        examples = []
        for group, n, seen in ((SEEN, seen_n, True), (UNSEEN, unseen_n, False)):
            for length, depth in group:
                subtask = subtask_name(length, depth)
                # A string seed is hashed the same way in every process (unlike hash()).
                rng = random.Random(f"multistep_arithmetic:{self.cfg.seed}:{subtask}")
                questions: dict[str, None] = {}
                while len(questions) < n:
                    questions[generate_group(rng, length, depth) + " ="] = None
                for question in questions:
                    answer = str(arith.evaluate(question_expression(question)))
                    examples.append(make_example(self.name, question, answer, subtask, seen,
                                                 length=length, depth=depth))
        return examples

    def normalize(self, answer: str) -> str:
        """"-12", " -12 ", "-12." and "- 12" all become "-12"; anything else as the base task does."""
        value = arith.parse_int(answer)
        return str(value) if value is not None else super().normalize(answer)

    def gold_rationale(self, example: Example) -> str:
        return rationale(example.question)
