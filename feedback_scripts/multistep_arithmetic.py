"""Scripted feedback and improvement for multistep arithmetic (the TriPosT paper's scripted expert),
and the remarks of SAIE's scripted partner.

Loaded by path (`edit.feedback: script:feedback_scripts/multistep_arithmetic.py`, or
`saie.partner: script:...`) and run in a worker process. Three plain functions:

    feedback(example, attempt) -> str | None
    improve(example, attempt, feedback) -> str
    remark(example, attempt, stance) -> str      stance "supportive" | "adversarial"

`example` is a dict with at least "question" ("((-7 + 6 * 2) * (3 - 5)) ="). The attempt should
follow the rationale format documented in tripost/tasks/multistep_arithmetic.py. `feedback` walks
its steps in order and names the first wrong one, in the grammar of tripost.steps:

    Step (1) to (2) are correct. In step (3) the part "(3 - 5) = -3" is incorrect. This is because (3 - 5) is not equal to -3.
    Step (1) to (4) are correct. The final response is also correct.

What is checked, in order, as in the paper:
  * step numbering: (1), (2), ... then (Final response);
  * the partition (step 1): the quoted equation with each named part put back must be the question;
  * each "Let's calculate X = ..." chain: starts with X as defined in step 1, and every "=" link
    keeps the value (exact integers);
  * the final equation: the equation of step 1, then the parts' calculated values put in place of
    their names, then value-preserving links down to a number;
  * the final response: the number the final equation ended with.
A step that cannot be read (unknown wording, an expression outside the allow-list parser in
tripost.arith: code, names, powers, floats, deep nesting) is reported as wrong with the reason.
Nothing the model wrote is ever evaluated as code. `feedback` returns None only when there is no
attempt at all or the question itself cannot be read.

`improve` keeps every step before the first wrong one and writes the rest the way the gold
rationale would, continuing from the verified steps (their partition and calculated values).

`remark` (SAIE's partner, in the same feedback grammar so the two stances look alike):
  * supportive: the feedback above: the first wrong step and why (or that every step is correct);
  * adversarial: a step that IS correct (a calculation or the final equation among the verified
    steps, picked by a hash of question and attempt) said to be wrong, with a plausible wrong
    value for its last "=" link (off by one or two, or the sign flipped), e.g.
    'Step (1) is correct. In step (2) the part "(-7 + 12) = 5" is incorrect. This is because
    (-7 + 12) is equal to 6, not 5.' With no such step verified, the final response is said to be
    wrong, with an answer that is neither the gold one nor the attempt's. Wrong on purpose: the
    claimed value, put into the step, is one this script's feedback rejects (tests check it).

Try it (prints the feedback, and the improvement when a step is wrong):
    python feedback_scripts/multistep_arithmetic.py "((1 + 2) * (3 - 5)) =" \
        '(1) This equation can be written as "A * B", where A = (1 + 2) and B = (3 - 5).'

Every call reads at most MAX_ATTEMPT_CHARS of the attempt and collapses whitespace runs first, so
the work per call is bounded (a typical attempt takes ~0.2 ms; 1,000 hostile strings run in the
tests, each well under a second).
"""

from __future__ import annotations

import hashlib
import re
import sys

from tripost import arith, steps
from tripost.tasks import multistep_arithmetic as ma

MAX_PART_CHARS = 160  # parts quoted in feedback are cut to this length
# Only this much of an attempt is read, which bounds the work per call (a rationale is < 1,000).
MAX_ATTEMPT_CHARS = 20_000

_PARTITION_RE = re.compile(r'This equation can be written as "([^"\n]*)",?\s*where\s+(.*)', re.DOTALL)
_DEF_RE = re.compile(r"(?:^|,\s*|\s+and\s+)([A-Z])\s*=\s*")
_CALC_RE = re.compile(r"Let's calculate\s+([A-Z])\s*=\s*(.*)", re.DOTALL)
_FINAL_EQ_RE = re.compile(r"Then, the final equation is\s+(.*)", re.DOTALL)
_ANSWER_RE = re.compile(r"So the answer is\s*(.*)", re.DOTALL)


class _Wrong(Exception):
    """The current step is wrong: `part` of it, because `reason`."""

    def __init__(self, part: str, reason: str):
        self.part, self.reason = part, reason


class _State:
    """What the verified steps so far have established. (Plain classes, not dataclasses: this file
    is loaded by path and may not be registered in sys.modules.)"""

    def __init__(self):
        self.template = None  # AST of the equation in step (1), with Name nodes
        self.parts: dict = {}  # name -> AST of its definition
        self.values: dict = {}  # name -> int, parts calculated so far
        self.calc_step: dict = {}  # name -> label of the step that calculated it
        self.final_value: int | None = None
        self.final_label: str | None = None


class _Verdict:
    def __init__(self, n_correct: int, wrong_label: str | None, part: str = "", reason: str = "",
                 state: _State | None = None, kept: list | None = None):
        self.n_correct = n_correct  # numbered steps verified before the wrong one (or all of them)
        self.wrong_label = wrong_label  # None = everything correct
        self.part, self.reason = part, reason
        self.state = state if state is not None else _State()
        self.kept = kept if kept is not None else []  # the verified steps (tripost.steps.Step)


def _short(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= MAX_PART_CHARS else text[: MAX_PART_CHARS - 3] + "..."


def _strip_period(text: str) -> str:
    text = text.strip()
    return text[:-1].rstrip() if text.endswith(".") else text


def _read(text: str, names: bool = False):
    """Parse one expression of the attempt, or report the step wrong."""
    try:
        return arith.parse(text, names=names)
    except arith.ArithError as e:
        raise _Wrong(text, f"the expression could not be read ({e})") from None


def _same(a, b) -> bool:
    return arith.render(arith.strip_parens(a)) == arith.render(arith.strip_parens(b))


def _check_links(pieces: list[str], nodes: list, start: int = 1) -> int:
    """Every "=" link from `start` on keeps the value; the chain ends with a plain number.
    Returns that number."""
    previous = arith.evaluate(nodes[start - 1])
    for i in range(start, len(pieces)):
        node = _read(pieces[i].strip()) if nodes[i] is None else nodes[i]
        nodes[i] = node
        try:
            value = arith.evaluate(node)
        except arith.ArithError as e:
            raise _Wrong(pieces[i], f"the expression could not be calculated ({e})") from None
        if value != previous:
            left, right = pieces[i - 1].strip(), pieces[i].strip()
            raise _Wrong(f"{left} = {right}", f"{left} is not equal to {right}")
    if type(arith.strip_parens(nodes[-1])) is not arith.Num:
        raise _Wrong(pieces[-1], "the calculation does not end with a number")
    return arith.strip_parens(nodes[-1]).value


# ----------------------------------------------------------------------------------------------
# One check per kind of step


def _check_partition(text: str, question_expr, state: _State) -> None:
    m = _PARTITION_RE.match(text)
    template_text, defs_text = m.group(1).strip(), _strip_period(m.group(2))
    template = _read(template_text, names=True)
    pieces = _DEF_RE.split(defs_text)
    # split -> ["", "A", "(..)", "B", "(..)"]; anything before the first definition is junk
    if pieces[0].strip() or len(pieces) < 3:
        raise _Wrong(defs_text, "the parts could not be read (write them as A = (...) and B = (...))")
    parts: dict = {}
    for name, def_text in zip(pieces[1::2], pieces[2::2]):
        if name in parts:
            raise _Wrong(f"{name} = {def_text.strip()}", f"{name} is defined twice")
        parts[name] = _read(def_text.strip())
    used = arith.names_in(template)
    for name in used:
        if name not in parts:
            raise _Wrong(template_text, f"{name} is used but not defined")
    for name in parts:
        if name not in used:
            raise _Wrong(f"{name} = {arith.render(parts[name])}", f"{name} does not appear in {template_text}")
    rebuilt = arith.substitute(template, parts)
    if not _same(rebuilt, question_expr):
        gold_template, gold_parts = ma.partition(question_expr)
        gold_form = arith.render(gold_template)
        if arith.render(template) == gold_form and list(parts) == list(gold_parts):
            for name in parts:
                mine, gold = arith.render(parts[name]), arith.render(gold_parts[name])
                if mine != gold:
                    raise _Wrong(f"{name} = {mine}", f"the question has {gold} in place of {name}, not {mine}")
        raise _Wrong(template_text, f"putting the parts back into {template_text} does not give the "
                                    f"question; the question can be written as {gold_form}")
    state.template, state.parts = template, parts


def _check_calculation(text: str, label: str, state: _State) -> None:
    m = _CALC_RE.match(text)
    name, chain_text = m.group(1), _strip_period(m.group(2))
    if state.template is None:
        raise _Wrong(f"{name} = {_short(chain_text)}", "the parts have not been defined in step (1)")
    if name not in state.parts:
        raise _Wrong(f"{name} = {_short(chain_text)}", f"{name} is not one of the parts defined in step (1)")
    if name in state.values:
        raise _Wrong(f"{name} = {_short(chain_text)}", f"{name} was already calculated in step ({state.calc_step[name]})")
    pieces = chain_text.split("=")
    first = _read(pieces[0].strip())
    defined = arith.render(state.parts[name])
    if not _same(first, state.parts[name]):
        raise _Wrong(f"{name} = {pieces[0].strip()}", f"{name} = {defined} in step (1)")
    if len(pieces) < 2:
        raise _Wrong(f"{name} = {pieces[0].strip()}", f"the value of {name} is not calculated")
    nodes = [first] + [None] * (len(pieces) - 1)
    state.values[name] = _check_links(pieces, nodes)
    state.calc_step[name] = label


def _check_final_equation(text: str, label: str, question_expr, state: _State) -> None:
    chain_text = _strip_period(_FINAL_EQ_RE.match(text).group(1))
    pieces = chain_text.split("=")
    first = _read(pieces[0].strip(), names=True)
    if state.template is None:
        # No partition step: the equation must be the question itself.
        if not _same(first, question_expr):
            raise _Wrong(pieces[0].strip(), "it is not the equation in the question")
        nodes, start = [first] + [None] * (len(pieces) - 1), 1
    else:
        form = arith.render(state.template)
        if not _same(first, state.template):
            raise _Wrong(pieces[0].strip(), f"the equation in step (1) is {form}")
        for name in arith.names_in(state.template):
            if name not in state.values:
                raise _Wrong(pieces[0].strip(), f"{name} has not been calculated yet")
        if len(pieces) < 2:
            raise _Wrong(pieces[0].strip(), "the final equation is not calculated")
        second = _read(pieces[1].strip())
        expected = arith.substitute(state.template, {n: arith.Num(v) for n, v in state.values.items()})
        if not _same(second, expected):
            part = f"{pieces[0].strip()} = {pieces[1].strip()}"
            raise _Wrong(part, _substitution_reason(state, second, expected))
        nodes, start = [first, second] + [None] * (len(pieces) - 2), 2
    if len(pieces) < 2:
        raise _Wrong(pieces[0].strip(), "the final equation is not calculated")
    if start == 2 and len(pieces) == 2:
        # "A * B = 5 * -3" with no result: the chain must end with a number
        if type(arith.strip_parens(nodes[1])) is not arith.Num:
            raise _Wrong(pieces[1].strip(), "the calculation does not end with a number")
        state.final_value = arith.strip_parens(nodes[1]).value
    else:
        state.final_value = _check_links(pieces, nodes, start)
    state.final_label = label


def _substitution_reason(state: _State, written, expected) -> str:
    """Name the part whose value was put in wrongly, when the shapes match; else show the whole
    substituted equation."""

    def first_mismatch(template, node):
        template, node = arith.strip_parens(template), arith.strip_parens(node)
        if type(template) is arith.Name:
            if type(node) is arith.Num and node.value != state.values[template.name]:
                return template.name, node.value
            return None
        if type(template) is arith.Chain and type(node) is arith.Chain and len(template.rest) == len(node.rest):
            for a, b in zip(template.items(), node.items()):
                found = first_mismatch(a, b)
                if found:
                    return found
        return None

    found = first_mismatch(state.template, written)
    if found:
        name, got = found
        return f"{name} = {state.values[name]} from step ({state.calc_step[name]}), not {got}"
    values = ", ".join(f"{n} = {state.values[n]}" for n in arith.names_in(state.template))
    return f"putting in {values} gives {arith.render(arith.strip_parens(expected))}"


def _check_final_response(text: str, question_value, state: _State) -> None:
    line = text.strip().splitlines()[0] if text.strip() else ""
    if state.final_value is None:
        missing = [n for n in state.parts if n not in state.values]
        why = f"{missing[0]} has not been calculated yet" if missing else "the final equation has not been calculated yet"
        raise _Wrong(_short(line), why)
    m = _ANSWER_RE.search(line)
    answer = arith.parse_int(m.group(1)) if m else None
    if answer is None:
        raise _Wrong(_short(line), "the answer could not be read (write: So the answer is <number>.)")
    if answer != state.final_value:
        raise _Wrong(_short(line), f"the final equation in step ({state.final_label}) gives {state.final_value}")
    if answer != question_value:  # cannot happen when every step above is right; kept as a guard
        raise _Wrong(_short(line), f"the answer to the question is not {answer}")


# ----------------------------------------------------------------------------------------------
# Walking an attempt


def _judge(question: str, attempt: str) -> _Verdict | None:
    """The first wrong step of `attempt` and what the steps before it established."""
    try:
        question_expr = ma.question_expression(question)
        question_value = arith.evaluate(question_expr)
    except arith.ArithError:
        return None
    all_steps = steps.parse_steps(attempt[:MAX_ATTEMPT_CHARS])
    if not all_steps:
        return None
    state = _State()
    kept: list = []
    n_numbered = 0
    for step in all_steps:
        if step.label == steps.FINAL:
            try:
                _check_final_response(step.text, question_value, state)
            except _Wrong as w:
                return _Verdict(n_numbered, steps.FINAL, _short(w.part), w.reason, state, kept)
            return _Verdict(n_numbered, None, state=state, kept=kept)
        expected = str(n_numbered + 1)
        # One space for every whitespace run: keeps the regexes below linear on hostile text.
        text = " ".join(step.text.split())
        try:
            if step.label != expected:
                if step.label == "0":
                    raise _Wrong(text, "this text could not be read as a numbered step")
                raise _Wrong(f"({step.label})", f"this step should be numbered ({expected})")
            if _PARTITION_RE.match(text):
                if n_numbered != 0:
                    raise _Wrong(_short(text), "the equation is split into parts only in step (1)")
                _check_partition(text, question_expr, state)
            elif _CALC_RE.match(text):
                _check_calculation(text, expected, state)
            elif _FINAL_EQ_RE.match(text):
                if state.final_value is not None:
                    raise _Wrong(_short(text), f"the final equation was already calculated in step ({state.final_label})")
                _check_final_equation(text, expected, question_expr, state)
            else:
                raise _Wrong(text, "the step could not be read")
        except _Wrong as w:
            return _Verdict(n_numbered, expected, _short(w.part), w.reason, state, kept)
        except (arith.ArithError, RecursionError, ValueError) as e:  # a guard: report, never crash
            return _Verdict(n_numbered, expected, _short(text), f"the step could not be checked ({e})", state, kept)
        kept.append(step)
        n_numbered += 1
    missing = [n for n in state.parts if n not in state.values]
    if missing:
        why = f"the attempt stops before {missing[0]} is calculated"
    elif state.final_value is None:
        why = "the attempt stops before the final equation is calculated"
    else:
        why = "the attempt ends without a final response"
    return _Verdict(n_numbered, steps.FINAL, "(no final response)", why, state, kept)


def feedback(example: dict, attempt: str) -> str | None:
    if not isinstance(example, dict) or not isinstance(attempt, str) or not attempt.strip():
        return None
    question = example.get("question")
    if not isinstance(question, str):
        return None
    verdict = _judge(question, attempt)
    if verdict is None:
        return None
    if verdict.wrong_label is None:
        return steps.feedback_correct(verdict.n_correct)
    return steps.feedback_wrong(verdict.n_correct, verdict.wrong_label, verdict.part, verdict.reason)


def improve(example: dict, attempt: str, feedback: str | None = None) -> str:
    """The attempt with its verified steps kept and the rest rewritten correctly.

    The first wrong step is the one this script finds, or the one `feedback` names if that comes
    earlier (feedback from an LLM may be stricter); steps before it are kept as parsed."""
    question = example["question"]
    verdict = _judge(question, attempt if isinstance(attempt, str) else "")
    if verdict is None or not verdict.kept:
        return ma.rationale(question)
    kept = verdict.kept
    parsed = steps.parse_feedback(feedback)
    if parsed is not None and not parsed.correct and parsed.wrong_step and parsed.wrong_step.isdigit():
        earlier = int(parsed.wrong_step) - 1
        if earlier < len(kept):
            # Re-judge the shorter prefix so the state matches the kept steps.
            verdict = _judge(question, steps.render_steps(kept[:earlier]) + "\n") if earlier > 0 else None
            if verdict is None or not verdict.kept:
                return ma.rationale(question)
            kept = verdict.kept
    state = verdict.state
    expr = ma.question_expression(question)
    template, parts = state.template, state.parts
    if template is None:  # the final equation was given without a partition
        template, parts = ma.partition(expr)
        if state.final_value is None:
            return ma.rationale(question)
    lines = ma.continue_rationale(template, parts, state.values, state.final_value, len(kept) + 1)
    return steps.render_steps(kept) + "\n" + "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# SAIE's scripted partner


def _hash(*parts: str) -> int:
    """A number fixed by the texts (so a remark does not depend on the run, the worker or the order)."""
    return int(hashlib.sha256("\x00".join(parts).encode()).hexdigest()[:15], 16)


def _wrong_values(value: int, avoid=()) -> list[int]:
    """Plausible wrong values for `value`: off by one or two, the sign flipped, off by ten."""
    out = []
    for v in (value + 1, value - 1, -value, value + 2, value - 2, value + 10):
        if v != value and v not in avoid and v not in out:
            out.append(v)
    return out


def _value_links(kept: list) -> list[tuple[int, str, str, str, int]]:
    """(index, label, left, right, value) of the last "=" link of every verified calculation and
    final-equation step: a correct claim "left = value" an adversary can dispute."""
    out = []
    for i, step in enumerate(kept):
        text = " ".join(step.text.split())
        m = _CALC_RE.match(text) or _FINAL_EQ_RE.match(text)
        if m is None:
            continue
        pieces = _strip_period(m.group(m.lastindex)).split("=")
        value = arith.parse_int(pieces[-1].strip()) if len(pieces) >= 2 else None
        if value is not None:
            out.append((i, step.label, pieces[-2].strip(), pieces[-1].strip(), value))
    return out


def _adversarial(question: str, attempt: str) -> str:
    verdict = _judge(question, attempt)
    h = _hash(question, attempt)
    links = _value_links(verdict.kept) if verdict is not None else []
    if links:
        i, label, left, right, value = links[h % len(links)]
        claims = _wrong_values(value)
        claim = claims[(h // len(links)) % len(claims)]
        return steps.feedback_wrong(i, label, f"{left} = {right}", f"{left} is equal to {claim}, not {right}")
    # Nothing verified to dispute: say the final answer is another wrong one.
    gold = arith.evaluate(ma.question_expression(question))
    final = [s for s in steps.parse_steps(attempt[:MAX_ATTEMPT_CHARS]) if s.label == steps.FINAL]
    given = steps.extract_final_answer(attempt[:MAX_ATTEMPT_CHARS]) or ""
    claims = _wrong_values(gold, avoid=(arith.parse_int(given),))
    part = _short(final[0].text) if final else "(no final response)"
    return steps.feedback_wrong(0, steps.FINAL, part, f"the answer is {claims[h % len(claims)]}")


def remark(example: dict, attempt: str, stance: str) -> str:
    """SAIE's partner: supportive = the feedback (the first wrong step and why); adversarial = a
    correct step disputed with a plausible wrong value (see the module docstring)."""
    question = example["question"]
    attempt = attempt if isinstance(attempt, str) else ""
    ma.question_expression(question)  # an unreadable question is an error (script_error), not a remark
    if stance == "supportive":
        fb = feedback(example, attempt)
        if fb is None:  # no attempt at all
            return steps.feedback_wrong(0, "1", "(no answer)", "there are no steps; start with step (1)")
        return fb
    if stance == "adversarial":
        return _adversarial(question, attempt)
    raise ValueError(f"unknown stance {stance!r} (supportive or adversarial)")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python feedback_scripts/multistep_arithmetic.py QUESTION ATTEMPT")
    ex = {"question": sys.argv[1]}
    fb = feedback(ex, sys.argv[2])
    print("Feedback:", fb)
    if fb is not None and not steps.says_correct(fb):
        print("Improved:\n" + improve(ex, sys.argv[2], fb))
    print("Adversarial remark:", remark(ex, sys.argv[2], "adversarial"))
