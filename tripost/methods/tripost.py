"""TriPosT (Yu et al., "Teaching Language Models to Self-Improve through Interactive
Demonstrations", NAACL 2024) as a tripost method: everything TriPosT-specific, in one module.

(It is longer than most modules because it is the whole method: the transcript, the test-time
loop, the edit walk, the training examples and the metrics. Each part is a few plain functions.)

The transcript the model reads and writes:

    Q: <question>
    A: <attempt>
    Feedback: <feedback>              "... In step (3) the part "..." is incorrect. This is because ..."
    Updated Answer: <improved attempt>
    Feedback: ... The final response is also correct.

The contract every method module implements (docs/methods.md), here for TriPosT:

    NAME, STAGES                        "tripost"; collect -> edit -> process -> train -> evaluate
    READS                               the keys of the tripost: section each stage reads
    models(mc)                          ["learner"]: the one model trained each round
    partners(mc, stage)                 at test time the judge of the model's own critiques
    rollout(example, task, mc, stage, fmt)   collect and evaluate: the self-improvement loop
    edit(traj, task, mc)                the edit walk with the feedback and improvement experts
    uses_gold(mc), examples(trajs, gold, mc, fmt), drop_reasons(trajs, mc),
    select(model, examples, mc, seed)   training examples, their weights, rebalancing to p
    group_metrics(trajs)                SI frequency / contribution / harm

`mc` is the `tripost:` config section (TripostConfig). Episodes are generators (tripost/engine.py):
they yield Requests and get Replies back.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from dataclasses import dataclass, field

from tripost import steps
from tripost.config import TripostConfig
from tripost.engine import Request
from tripost.formats import PromptFormat
from tripost.io import content_id
from tripost.records import Example, Message, Segment, TrainingExample, Trajectory, training_example

NAME = "tripost"
STAGES = ("collect", "edit", "process", "train", "evaluate")
# Which keys of the `tripost:` section each stage reads: a stage is given (and fingerprinted on)
# only these, so changing max_improvements redoes the edits, not the rollouts before them.
READS = {"collect": ("collect_max_calls",), "edit": ("max_improvements",),
         "process": ("p", "w", "attempt_weight", "include_gold"), "evaluate": ("evaluate_max_calls", "judge")}
LEARNER = "learner"
FEEDBACK_PREFIX = "\nFeedback: "
UPDATE_PREFIX = "\nUpdated Answer: "


def models(mc: TripostConfig) -> list[str]:
    return [LEARNER]


def partners(mc: TripostConfig, stage: str) -> dict[str, str]:
    """Answerers that take part in rollouts without being trained: at test time the judge of the
    model's critiques (mc.judge); TriPosT's editing experts work in the edit stage."""
    return {"judge": mc.judge} if stage == "evaluate" and mc.judge else {}


# ----------------------------------------------------------------------------------------------
# The transcript


def split_continuation(text: str) -> tuple[str, str | None, str | None]:
    """Split what the model wrote after its prompt into (attempt, feedback, update).

    Anything after a second "Feedback:" or "Updated Answer:" is ignored: one generate call yields
    at most one critique and one update.
    """
    fb_mark, up_mark = FEEDBACK_PREFIX.strip(), UPDATE_PREFIX.strip()
    attempt, feedback, update = text, None, None
    i = text.find(fb_mark)
    if i >= 0:
        attempt, rest = text[:i], text[i + len(fb_mark):]
        j = rest.find(up_mark)
        if j >= 0:
            feedback, update = rest[:j], rest[j + len(up_mark):]
            k = update.find(fb_mark)
            if k >= 0:
                update = update[:k]
            update = update.strip()
        else:
            feedback = rest
        feedback = feedback.strip()
    return attempt.strip(), feedback, update


def segments(fmt: PromptFormat, question: str, attempt: str, feedback: str | None, update: str | None,
             w: float, attempt_weight: float = 1.0) -> list[Segment]:
    """The training text of one turn: the question (context), the attempt (weight attempt_weight,
    1 in the paper), and the feedback and update (weight w). Each prefix belongs to the part it
    introduces, so the model learns to write it; a chat model also learns its end-of-turn text."""
    parts = [Segment(fmt.question(question), 0.0, "user"), Segment(attempt, attempt_weight, LEARNER)]
    if feedback is not None:
        parts.append(Segment(FEEDBACK_PREFIX + feedback, w, LEARNER))
    if update is not None:
        parts.append(Segment(UPDATE_PREFIX + update, w, LEARNER))
    if fmt.closing:
        parts.append(Segment(fmt.closing, parts[-1].weight, LEARNER))
    return parts


@dataclass
class Turn:
    """An attempt and the feedback on it, with who wrote each ("model:learner", "script:x.py", ...)."""

    attempt: str
    attempt_by: str
    feedback: str | None = None
    feedback_by: str | None = None


def turns_of(traj: Trajectory) -> list[Turn]:
    """The trajectory's messages as turns: each attempt or update with the feedback after it."""
    turns: list[Turn] = []
    for m in traj.messages:
        if m.speaker != LEARNER:  # e.g. the judge's verdict at test time
            continue
        if m.kind in ("attempt", "update"):
            turns.append(Turn(m.text, m.author))
        elif m.kind == "feedback" and turns:
            turns[-1].feedback, turns[-1].feedback_by = m.text, m.author
    return turns


def finish(example: Example, task, turns: list[Turn], stage: str, **fields) -> Trajectory:
    """The Trajectory record of turns: every attempt judged by the task, the last one final."""
    messages = []
    for i, t in enumerate(turns):
        answer = task.extract_answer(t.attempt)
        messages.append(Message(LEARNER, "attempt" if i == 0 else "update", t.attempt, t.attempt_by, round=i,
                                answer=answer or "", correct=task.is_correct(example, t.attempt)))
        if t.feedback is not None:
            messages.append(Message(LEARNER, "feedback", t.feedback, t.feedback_by or "", round=i))
    final = [m for m in messages if m.correct is not None]
    if fields.get("stop") == "truncated" and messages:
        messages[-1].truncated = True
    return Trajectory.of(example, NAME, messages=messages, correct=bool(final and final[-1].correct),
                         final_answer=final[-1].answer if final else "", stage=stage, **fields)


# ----------------------------------------------------------------------------------------------
# Test-time self-improvement (section 3.3), also what `collect` runs


@dataclass
class State:
    """One question's progress through the self-improvement loop."""

    turns: list[Turn] = field(default_factory=list)
    calls: int = 0
    stop: str | None = None

    def next_prompt(self, fmt: PromptFormat, question: str) -> str:
        """Call 1: the question. Later calls: the question, the latest (updated) answer and
        "Feedback:", so the model critiques it (and may update it again)."""
        if not self.turns:
            return fmt.question(question)
        return fmt.question(question) + self.turns[-1].attempt + FEEDBACK_PREFIX


def _clip(generated: str) -> tuple[str, bool]:
    """The text up to where an under-trained model runs on into a new "Q: ..." (that is not its
    answer), and whether it did."""
    cut = generated.find("\n" + steps.QUESTION_PREFIX.strip())
    return (generated[:cut], True) if cut >= 0 else (generated, False)


def advance(state: State, generated: str, max_calls: int, truncated: bool = False,
            author: str = "model:" + LEARNER) -> State:
    """Apply one generate call's output (the text after `state.next_prompt`) to `state`, in place,
    and decide whether the question stops (state.stop is then set). `truncated`: the call hit
    max_new_tokens before EOS, so the last part of the text is cut off.

    Stop reasons:
        feedback_correct  the feedback says the final response is correct
        no_feedback       the model wrote no feedback (e.g. a model not yet trained to self-improve)
        no_update         the feedback does not say "correct" but no update follows it
        no_progress       the update is identical to the attempt it updates
        repetition        the update repeats an earlier attempt (kept as the final answer)
        max_calls         max_calls calls were made
        truncated         the call ran out of tokens mid-text (a cut-off update is dropped, so the
                          answer it was improving stays final)
    """
    generated, ran_on = _clip(generated)
    truncated = truncated and not ran_on  # it finished its answer and then ran on
    state.calls += 1
    if not state.turns:  # call 1: the text is attempt [+ feedback [+ update]]
        attempt, feedback, update = split_continuation(generated)
        state.turns.append(Turn(attempt, author))
    else:  # later calls continue after "\nFeedback: ": the text is feedback [+ update]
        attempt = state.turns[-1].attempt
        _, feedback, update = split_continuation(attempt + FEEDBACK_PREFIX + generated)
    if feedback is not None:
        state.turns[-1].feedback, state.turns[-1].feedback_by = feedback, author
    if feedback is None:
        state.stop = "no_feedback"
    elif steps.says_correct(feedback):
        state.stop = "feedback_correct"
    elif update is None or not update.strip():
        state.stop = "no_update"
    elif update.strip() == attempt.strip():
        state.stop = "no_progress"
    elif any(update.strip() == t.attempt.strip() for t in state.turns):
        state.turns.append(Turn(update, author))
        state.stop = "repetition"
    else:
        state.turns.append(Turn(update, author))
        if state.calls >= max_calls:
            state.stop = "max_calls"
    if truncated and state.stop in (None, "max_calls", "no_feedback", "no_update"):
        # Out of tokens mid-text. A cut-off update is not an answer: the attempt it was meant to
        # improve stays final. (A cut-off first attempt or feedback is all there is; keep it.)
        if update is not None and len(state.turns) > 1 and state.turns[-1].attempt == update:
            state.turns.pop()
        state.stop = "truncated"
    return state


def request_seed(*parts) -> int:
    """A sampling seed derived from what a request is (its question, its call), not from when it
    runs, so a resumed run samples what an uninterrupted one does."""
    return int(content_id(*map(str, parts)), 16) % 2**31


def rollout(example: Example, task, mc: TripostConfig, stage: str, fmt: PromptFormat):
    """The self-improvement episode of one question: the learner answers, then critiques and
    updates its latest answer until a stop rule fires (`advance`)."""
    max_calls = mc.collect_max_calls if stage == "collect" else mc.evaluate_max_calls
    state = State()
    while state.stop is None:
        (reply,) = yield [Request(LEARNER, "generate", prompt=state.next_prompt(fmt, example.question),
                                  seed=request_seed(example.id, state.calls))]
        advance(state, reply.text, max_calls, reply.truncated)
    traj = finish(example, task, state.turns, stage, status="kept", stop=state.stop, calls=state.calls)
    first = state.turns[0]
    if "judge" in partners(mc, stage) and first.feedback is not None:
        # How good is the model's own critique? The judge's verdict on the same first attempt.
        (verdict,) = yield [Request("judge", "feedback", args=(example, first.attempt))]
        if verdict.text is not None:
            traj.messages.append(Message("judge", "feedback", verdict.text, verdict.author, round=0))
    return traj


# ----------------------------------------------------------------------------------------------
# The edit walk (section 3.1)
#
# 1. The feedback expert judges EVERY attempt the model wrote, including its own updates.
# 2. Walk the model's turns from the first. A turn is kept (its attempt as the model wrote it, its
#    feedback replaced by the expert's) while the expert says the attempt is wrong, the model's
#    own feedback agrees (also wrong, same first wrong step), and the model's next attempt makes
#    progress (4) without regressing (the expert's first wrong step moves earlier: we truncate to
#    (question, attempt, feedback) before it, as the paper does). The walk stops at the first
#    attempt the expert says is correct, at the first disagreement, or at a failed update; that
#    turn is kept with the expert's feedback. `stop` records why the walk stopped.
# 3. While the expert says the latest attempt is wrong, the improvement expert writes a new one
#    (at most mc.max_improvements calls), then the feedback expert judges it.
# 4. Progress: a new attempt keeps the verified prefix (the steps before the wrong one, whitespace
#    normalised) and changes the wrong step; its feedback must not name the same step and part
#    again (no_progress) nor an earlier step (regression).
# 5. Kept: trajectories that end with the expert saying "correct" and whose final attempt really
#    is right (task.is_correct; otherwise expert_wrong_final).
#
# Drop reasons: no_attempt, truncated (the first attempt was cut off), no_steps (it has no numbered
# step), text_too_long (over steps.MAX_CHARS), feedback_unparseable, no_progress, regression,
# not_fixed_within_limit, expert_wrong_final, and the experts' own errors (script_*, llm_*; the
# message is in `detail`).
# An expert error that is not a verdict (Reply.transient: the API was unreachable) leaves the
# trajectory pending: a rerun retries it.


def _position(label: str | None) -> float:
    """Order of a step label: 1, 2, ... and the final response after all of them."""
    if label is None or label == steps.FINAL:
        return math.inf
    return int(label) if label.isdigit() else 0


def _same(a: str, b: str) -> bool:
    return " ".join(a.split()) == " ".join(b.split())


def attempt_progress(previous: str, wrong_step: str, new: str) -> bool:
    """Does `new` keep the steps before `wrong_step` of `previous` (the verified prefix) and
    change the wrong step itself?"""
    old_steps, new_steps = steps.parse_steps(previous), steps.parse_steps(new)
    labels = [s.label for s in old_steps]
    if wrong_step not in labels:  # the feedback names a step the attempt lacks: any change counts
        return not _same(previous, new)
    w = labels.index(wrong_step)
    if len(new_steps) <= w:  # lost part of the prefix, or the wrong step without a replacement
        return False
    if any(not _same(a.render(), b.render()) for a, b in zip(old_steps[:w], new_steps[:w])):
        return False
    return not _same(old_steps[w].render(), new_steps[w].render())


def feedback_progress(previous: steps.Feedback, new: steps.Feedback) -> str | None:
    """None if the new feedback is progress over the previous one (both on consecutive attempts),
    else "regression" (first wrong step earlier) or "no_progress" (same step and part again)."""
    if new.correct:
        return None
    if _position(new.wrong_step) < _position(previous.wrong_step):
        return "regression"
    if new.wrong_step == previous.wrong_step and _same(new.part or "", previous.part or ""):
        return "no_progress"
    return None


def agrees(model_feedback: str | None, expert: steps.Feedback) -> bool:
    """The model's own feedback says what the expert says: both correct, or both wrong at the same
    first step. Missing or unparseable model feedback disagrees."""
    mine = steps.parse_feedback(model_feedback)
    if mine is None or mine.correct != expert.correct:
        return False
    return mine.correct or mine.wrong_step == expert.wrong_step


class _Drop(Exception):
    def __init__(self, reason: str, detail: str | None = None, transient: bool = False):
        self.reason, self.detail, self.transient = reason, detail, transient


def _parsed(reply) -> steps.Feedback:
    if reply.error:
        raise _Drop(reply.error, reply.detail, reply.transient)
    fb = steps.parse_feedback(reply.text)
    if fb is None:
        raise _Drop("feedback_unparseable", (reply.text or "")[:300])
    return fb


def _judge(turn: Turn, reply) -> steps.Feedback:
    """Put the expert's feedback on `turn` (also when it cannot be parsed, so a dropped record
    shows it) and return it parsed."""
    if reply.text is not None:
        turn.feedback, turn.feedback_by = reply.text, reply.author
    return _parsed(reply)


def edit(traj: Trajectory, task, mc: TripostConfig):
    """Edit one of the model's trajectories by the rules above; an episode whose requests go to
    the "feedback" and "improvement" experts."""
    example = traj.example()
    model_turns = turns_of(traj)
    turns: list[Turn] = []
    walk = {"stop": "", "improvements": 0}

    def result(status: str, reason: str = "", detail: str | None = None) -> Trajectory:
        return finish(example, task, turns, "edit", status=status, drop_reason=reason, detail=detail or "",
                      stop=walk["stop"], calls=walk["improvements"], round=traj.round)

    try:
        if not model_turns:
            raise _Drop("no_attempt")
        # Guards against training on garbage: nothing to edit in a cut-off, unreadable or huge attempt.
        first = next(m for m in traj.messages if m.speaker == LEARNER and m.kind == "attempt")
        if first.truncated:
            raise _Drop("truncated", "the first attempt was cut off at max_new_tokens")
        if not steps.parse_steps(first.text):
            raise _Drop("no_steps", f"no numbered step in: {first.text[:120]!r}")
        if any(len(m.text) > steps.MAX_CHARS for m in traj.messages):
            raise _Drop("text_too_long", f"a message is longer than {steps.MAX_CHARS} characters")
        # 1. Expert feedback on every attempt the model wrote.
        replies = yield [Request("feedback", "feedback", args=(example, t.attempt)) for t in model_turns]

        # 2. Keep the model's turns up to the first one the expert would not accept.
        for i, turn in enumerate(model_turns):
            turns.append(Turn(turn.attempt, turn.attempt_by))
            fb = _judge(turns[-1], replies[i])
            if fb.correct:
                walk["stop"] = "expert_says_correct"
                break
            if not agrees(turn.feedback, fb):
                walk["stop"] = "disagreement"
                break
            if i + 1 == len(model_turns):
                walk["stop"] = "model_stopped"
                break
            # The model's own update: regression first (the more telling name), then progress.
            check = feedback_progress(fb, _parsed(replies[i + 1]))
            if check is None and not attempt_progress(turn.attempt, fb.wrong_step, model_turns[i + 1].attempt):
                check = "no_progress"
            if check is not None:  # truncate to (question, attempt, feedback) before the update
                walk["stop"] = f"model_{check}"
                break

        # 3. The experts take over from the last kept turn.
        attempt, fb = turns[-1].attempt, steps.parse_feedback(turns[-1].feedback)
        while not fb.correct:
            if walk["improvements"] >= mc.max_improvements:
                raise _Drop("not_fixed_within_limit", f"{mc.max_improvements} improvement(s) did not fix it")
            (reply,) = yield [Request("improvement", "improve", args=(example, attempt, turns[-1].feedback))]
            walk["improvements"] += 1
            if reply.error:
                raise _Drop(reply.error, reply.detail, reply.transient)
            new = (reply.text or "").strip()
            turns.append(Turn(new, reply.author))
            if not attempt_progress(attempt, fb.wrong_step, new):
                raise _Drop("no_progress", f"the new attempt did not change step ({fb.wrong_step}) "
                                           "or changed the steps before it")
            (reply,) = yield [Request("feedback", "feedback", args=(example, new))]
            new_fb = _judge(turns[-1], reply)
            check = feedback_progress(fb, new_fb)
            if check is not None:
                raise _Drop(check, f"step ({fb.wrong_step}) -> step ({new_fb.wrong_step})")
            attempt, fb = new, new_fb

        # 5. Only trajectories that really end right.
        if not task.is_correct(example, attempt):
            raise _Drop("expert_wrong_final", f"expert accepted the answer {task.extract_answer(attempt)!r}, "
                                              f"gold is {traj.answer!r}")
    except _Drop as d:
        return result("pending" if d.transient else "dropped", d.reason, d.detail)
    return result("kept")


# ----------------------------------------------------------------------------------------------
# Training examples (section 3.2)
#
#   improvement  for every turn that has feedback and a next turn: Q, attempt, feedback, update
#   terminal     when the last feedback says "correct": Q, final attempt, that feedback
#   gold         (mc.include_gold) each train question's gold rationale with "correct" feedback
#
# Weights: question 0, attempt 1 (an improvement example's wrong attempt: mc.attempt_weight),
# feedback and update mc.w. Rebalancing (`select`): a share mc.p
# of the examples are improvement examples (paper 1.5 : 1 : 1 -> 0.43).

KINDS = ("improvement", "terminal", "gold")


def uses_gold(mc: TripostConfig) -> bool:
    return mc.include_gold


def _example(kind: str, source, fmt: PromptFormat, attempt: str, feedback: str | None, update: str | None,
             w: float, attempt_weight: float = 1.0) -> TrainingExample:
    return training_example(NAME, LEARNER, kind,
                            segments(fmt, source.question, attempt, feedback, update, w, attempt_weight),
                            source, chat_template=fmt.chat_template)


def examples(trajs: list[Trajectory], gold: list[tuple[Example, str]], mc: TripostConfig,
             fmt: PromptFormat) -> list[TrainingExample]:
    """Improvement and terminal examples of the kept trajectories, then the gold examples."""
    out = []
    for traj in trajs:
        turns = turns_of(traj)
        for cur, nxt in zip(turns, turns[1:]):
            if cur.feedback is None:  # an update with no critique to answer cannot be rendered
                continue
            out.append(_example("improvement", traj, fmt, cur.attempt, cur.feedback, nxt.attempt, mc.w,
                                mc.attempt_weight))
        if turns and steps.says_correct(turns[-1].feedback):
            out.append(_example("terminal", traj, fmt, turns[-1].attempt, turns[-1].feedback, None, mc.w))
    if mc.include_gold:
        for ex, rationale in gold:
            n_numbered = sum(1 for s in steps.parse_steps(rationale) if s.label.isdigit())
            out.append(_example("gold", ex, fmt, rationale, steps.feedback_correct(n_numbered), None, mc.w))
    return out


def drop_reasons(trajs: list[Trajectory], mc: TripostConfig) -> dict[str, dict[str, int]]:
    """Every kept (edited) trajectory gives the learner examples: nothing to count here."""
    return {}


def select(model: str, examples: list[TrainingExample], mc: TripostConfig,
           seed: int) -> tuple[list[TrainingExample], dict]:
    """Rebalance to a share mc.p of improvement examples: the side in excess is subsampled (seeded),
    nothing is duplicated. Returns (kept examples in their original order, report)."""
    p = mc.p
    imp = [i for i, e in enumerate(examples) if e.kind == "improvement"]
    other = [i for i, e in enumerate(examples) if e.kind != "improvement"]
    n_imp, n_other = len(imp), len(other)
    report = {"target_p": p, "before_p": n_imp / len(examples) if examples else None}
    rng = random.Random(seed)
    if not examples:
        report.update(reached=False, action="no examples; nothing to rebalance")
        keep = []
    elif p > 0 and n_imp == 0:
        report.update(reached=False, action=f"shortfall: no improvement examples, cannot reach p={p}; "
                                            f"kept all {n_other} other examples")
        keep = other
    elif n_other == 0:
        report.update(reached=False, action=f"shortfall: only improvement examples, cannot reach p={p}; "
                                            f"kept all {n_imp}")
        keep = imp
    elif n_imp / (n_imp + n_other) > p:
        target = round(p * n_other / (1 - p))  # improvement examples to keep beside all others
        keep = other + sorted(rng.sample(imp, target))
        report.update(reached=True, action=f"subsampled improvement examples {n_imp} -> {target}")
    else:
        target = round(n_imp * (1 - p) / p)  # other examples to keep beside all improvements
        keep = imp + sorted(rng.sample(other, target))
        report.update(reached=True, action=f"subsampled terminal+gold examples {n_other} -> {target}")
    kept = [examples[i] for i in sorted(keep)]
    report["after_p"] = (sum(e.kind == "improvement" for e in kept) / len(kept)) if kept else None
    report["kinds"] = dict(Counter(e.kind for e in kept))
    return kept, report


# ----------------------------------------------------------------------------------------------
# Metrics (section 4): how the model uses its self-improvement at test time


METRIC_LABELS = {"si_frequency": "SI freq", "si_contribution": "SI contrib", "si_harm": "SI harm",
                 "critique_accuracy": "critique acc", "critique_verdict_accuracy": "critique right/wrong"}


def group_metrics(trajs: list[Trajectory]) -> dict:
    """SI frequency (share of questions with at least one update), SI contribution (wrong first
    attempt, right in the end) and SI harm (right first attempt, wrong in the end), so that
    accuracy = first_accuracy + si_contribution - si_harm; and, where a judge read the model's own
    feedback on its first attempt, critique accuracy (the judge agrees: both say right, or both
    name the same first wrong step) and critique verdict accuracy (both say right, or both wrong),
    over the questions the model critiqued."""
    n = len(trajs)

    def share(k, of=n):
        return k / of if of else None

    updated = [t for t in trajs if any(m.kind == "update" for m in t.messages)]
    first_ok = {t.id: bool(t.messages) and bool(t.messages[0].correct) for t in trajs}
    judged = []  # (the model's own feedback on its first attempt, parsed; its text; the judge's, parsed)
    for t in trajs:
        own = next((m.text for m in t.messages if m.kind == "feedback" and m.speaker == LEARNER and m.round == 0), None)
        judge = steps.parse_feedback(next((m.text for m in t.messages if m.speaker == "judge"), None))
        if own is not None and judge is not None:
            judged.append((steps.parse_feedback(own), own, judge))
    return {"si_frequency": share(len(updated)),
            "si_contribution": share(sum(not first_ok[t.id] and t.correct for t in updated)),
            "si_harm": share(sum(first_ok[t.id] and not t.correct for t in updated)),
            "critique_accuracy": share(sum(agrees(text, judge) for _, text, judge in judged), len(judged)),
            "critique_verdict_accuracy": share(sum(mine is not None and mine.correct == judge.correct
                                                   for mine, _, judge in judged), len(judged))}
