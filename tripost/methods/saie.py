"""SAIE (Loem, Kaneko and Okazaki, "SAIE Framework: Support Alone Isn't Enough -- Advancing LLM
Training with Adversarial Remarks", 2023) as a tripost method: a learner trained through
discussions with a fixed partner.

For each training question the learner answers; the partner then remarks on the answer:
supportive when it is wrong (points at the problem and helps), adversarial when it is right
(challenges it with a plausible but wrong counter-argument); the learner answers again (revising or
defending) and the discussion goes on for R rounds. The learner is trained toward the gold
reference given the discussion. The transcript the learner reads and writes:

    Q: <question>
    A: <first answer>                     round 0
    Partner: <remark>                     round 1 (context, never trained)
    Learner: <answer again>               round 1
    Partner: <remark> ...                 up to round R

The contract every method module implements (docs/methods.md), here for SAIE:

    NAME, STAGES                        "saie"; collect -> process -> train -> evaluate (no edit stage)
    models(mc)                          ["learner"]
    partners(mc, stage)                 {"partner": mc.partner}: a script, "llm" or "model:DIR"
    rollout(example, task, mc, stage, fmt)   the discussion (collect: stance from the task's judge
                                        against the gold answer; evaluate: single-pass answer, then
                                        a discussion with the partner and a self-discussion)
    uses_gold(mc), examples(trajs, gold, mc, fmt), select(model, examples, mc, seed)
                                        one example per round: the discussion so far (weight 0),
                                        the target (own right answer or the gold rationale)
    group_metrics(trajs)                accuracy after each round, hold rate, fix rate

`mc` is the `saie:` config section (SaieConfig). Every choice tripost made where the paper is
silent is in docs/methods.md, "SAIE". Try it:  tripost iterate --config configs/saie_demo.yaml
"""

from __future__ import annotations

from collections import Counter

from tripost import steps
from tripost.config import SaieConfig
from tripost.engine import Request
from tripost.errors import TripostError
from tripost.formats import PromptFormat
from tripost.io import content_id
from tripost.records import Example, Message, Segment, TrainingExample, Trajectory, training_example

NAME = "saie"
STAGES = ("collect", "process", "train", "evaluate")
# Which keys of the `saie:` section each stage reads (it is given and fingerprinted on only these).
READS = {"collect": ("partner", "discussion_rounds", "stances"),
         "process": ("target", "w_first", "w_discussion"),
         "evaluate": ("partner", "discussion_rounds", "test_rounds", "test_modes")}
LEARNER, PARTNER = "learner", "partner"
PARTNER_PREFIX = "\nPartner: "
LEARNER_PREFIX = "\nLearner: "
STANCES = ("supportive", "adversarial")
# Self-discussion at test time: this stands where the partner's remark would.
SELF_CHECK = "Check your answer step by step, then answer again."
# Where a learner's answer ends: before the next speaker or question it may run on into.
_RUN_ON = (PARTNER_PREFIX.rstrip(" "), LEARNER_PREFIX.rstrip(" "), "\n" + steps.QUESTION_PREFIX.strip())


def models(mc: SaieConfig) -> list[str]:
    return [LEARNER]


def partners(mc: SaieConfig, stage: str) -> dict[str, str]:
    """The fixed partner, never trained: in every collect, and at test time for the partner mode."""
    if stage == "evaluate" and "partner" not in mc.test_modes:
        return {}
    return {PARTNER: mc.partner}


# ----------------------------------------------------------------------------------------------
# Stances


def stance_for(correct: bool, stances: str) -> str:
    """The stance of a remark on an answer the task judged `correct` (training, and the oracle at
    test time): "both" -> supportive on a wrong answer, adversarial on a right one; "supportive" /
    "adversarial" -> always that one."""
    if stances == "both":
        return "adversarial" if correct else "supportive"
    if stances in STANCES:
        return stances
    raise TripostError(f"config: 'saie.stances' must be both, supportive or adversarial, got {stances!r}")


def oracle_stance(msg: Message) -> str:
    """The stance the gold answer calls for, on the answer in `msg`."""
    return stance_for(bool(msg.correct), "both")


# ----------------------------------------------------------------------------------------------
# The transcript


def clip_answer(text: str) -> tuple[str, bool]:
    """A learner turn as the learner's answer: the text up to where it runs on into another
    speaker's turn or a new question, and no further than its final-response line. Returns (answer,
    whether anything was cut)."""
    ends = [i for i in (text.find(m) for m in _RUN_ON) if i >= 0]
    answer = text[:min(ends)] if ends else text
    lines = answer.split("\n")
    final = next((i for i, line in enumerate(lines) if line.strip().startswith(f"({steps.FINAL})")), None)
    after_final = final is not None and "\n".join(lines[final + 1:]).strip() != ""
    if after_final:
        answer = "\n".join(lines[:final + 1])
    return answer.strip(), bool(ends) or after_final


def transcript(fmt: PromptFormat, question: str, turns: list[tuple[str | None, str]]) -> str:
    """The discussion as the learner reads it: the question, then per round (remark, answer); the
    first round's remark is None."""
    parts = [fmt.question(question)]
    for remark, answer in turns:
        if remark is not None:
            parts.append(PARTNER_PREFIX + remark + LEARNER_PREFIX)
        parts.append(answer)
    return "".join(parts)


def learner_prompt(fmt: PromptFormat, question: str, turns: list[tuple[str | None, str]], remark: str) -> str:
    """What the learner continues after a remark: the discussion so far, the remark, "Learner: "."""
    return transcript(fmt, question, turns) + PARTNER_PREFIX + remark + LEARNER_PREFIX


def partner_prompt(fmt: PromptFormat, question: str, turns: list[tuple[str | None, str]], stance: str) -> str:
    """What a local-model partner continues: the discussion so far and "Partner (<stance>): "."""
    return transcript(fmt, question, turns) + f"\nPartner ({stance}): "


def request_seed(*parts) -> int:
    """A sampling seed fixed by what a request is, not by when it runs (resumed = uninterrupted)."""
    return int(content_id(*map(str, parts)), 16) % 2**31


def _answer_message(task, example: Example, kind: str, reply, r: int) -> Message:
    text, ran_on = clip_answer(reply.text or "")
    return Message(LEARNER, kind, text, reply.author, round=r, answer=task.extract_answer(text) or "",
                   correct=task.is_correct(example, text), truncated=bool(reply.truncated) and not ran_on)


def _remark_request(example: Example, fmt: PromptFormat, mc: SaieConfig, turns, stance: str) -> Request:
    if mc.partner.startswith("model:"):
        return Request(PARTNER, "generate", prompt=partner_prompt(fmt, example.question, turns, stance),
                       seed=request_seed(example.id, "partner_model", len(turns)))
    return Request(PARTNER, "remark", args=(example, turns[-1][1], stance))


def _remark_text(reply) -> str:
    """A remark as one line (a local model's: its first line)."""
    text = (reply.text or "").strip()
    return " ".join(text.split("\n", 1)[0].split()) if reply.author.startswith("model:") else " ".join(text.split())


# ----------------------------------------------------------------------------------------------
# The episode


def rollout(example: Example, task, mc: SaieConfig, stage: str, fmt: PromptFormat):
    """One question's discussion.

    collect   the learner answers; R rounds of a partner remark (stance from the task's judge of
              the learner's latest answer against the gold one, by mc.stances) and the learner's
              answer again.
    evaluate  the learner answers (its single-pass answer: the trajectory's final answer); then,
              from that answer, per mc.test_modes: R rounds (mc.test_rounds, if set) with the
              partner (stance: the oracle's for a script or local model, the LLM's own judgement
              for "llm", which never sees the gold answer) and R rounds of self-discussion
              (SELF_CHECK in the remark's place). The
              two run side by side, each on its own transcript; the record has the partner
              discussion's messages first, then the self-discussion's.

    A partner error ends the partner discussion (stop: the error, detail: its detail); a transient
    one (the API unreachable) leaves the trajectory pending, so a rerun asks again.
    """
    training = stage == "collect"
    (reply,) = yield [Request(LEARNER, "generate", prompt=fmt.question(example.question),
                              seed=request_seed(example.id, 0))]
    first = _answer_message(task, example, "attempt", reply, 0)
    messages = [first]
    partner_turns = [(None, first.text)] if training or "partner" in mc.test_modes else None
    self_turns = [(None, first.text)] if not training and "self" in mc.test_modes else None
    last = first  # the learner's latest answer in the partner discussion
    selfs: list[Message] = []  # the self-discussion, recorded after the partner discussion
    stop, detail, calls = "rounds", "", 1
    rounds = mc.discussion_rounds if training or mc.test_rounds is None else mc.test_rounds
    for r in range(1, rounds + 1):
        asks = []  # this round's requests: the partner's remark, the self-discussion's answer
        if partner_turns is not None:
            if training:
                stance = stance_for(bool(last.correct), mc.stances)
            else:
                stance = "auto" if mc.partner == "llm" else oracle_stance(last)
            asks.append(_remark_request(example, fmt, mc, partner_turns, stance))
        if self_turns is not None:
            asks.append(Request(LEARNER, "generate", seed=request_seed(example.id, "self", r),
                                prompt=learner_prompt(fmt, example.question, self_turns, SELF_CHECK)))
        if not asks:  # the partner discussion ended early and there is no self-discussion
            break
        replies = yield asks
        if self_turns is not None:
            answer = _answer_message(task, example, "self_update", replies[-1], r)
            selfs += [Message(LEARNER, "self_check", SELF_CHECK, "prompt", round=r), answer]
            self_turns.append((SELF_CHECK, answer.text))
            calls += 1
        if partner_turns is None:
            continue
        reply = replies[0]
        remark = _remark_text(reply) if reply.error is None else ""
        taken = reply.stance or stance
        if reply.error is not None or not remark or taken not in STANCES:
            if reply.transient:
                return Trajectory.of(example, NAME, messages=messages + selfs, status="pending", stage=stage,
                                     stop=reply.error or "", detail=reply.detail or "", calls=calls)
            stop = reply.error or ("partner_bad_stance" if remark else "partner_empty_remark")
            detail = reply.detail or (f"stance {taken!r}" if remark else "")
            partner_turns = None
            continue
        messages.append(Message(PARTNER, "remark", remark, reply.author, round=r, stance=taken))
        (reply,) = yield [Request(LEARNER, "generate", seed=request_seed(example.id, PARTNER, r),
                                  prompt=learner_prompt(fmt, example.question, partner_turns, remark))]
        last = _answer_message(task, example, "update", reply, r)
        messages.append(last)
        partner_turns.append((remark, last.text))
        calls += 1
    return Trajectory.of(example, NAME, messages=messages + selfs, status="kept", correct=bool(first.correct),
                         final_answer=first.answer, stop=stop, detail=detail, calls=calls, stage=stage)


# ----------------------------------------------------------------------------------------------
# The discussion as rounds


def discussion(traj: Trajectory) -> list[tuple[Message | None, Message]]:
    """The partner discussion of a trajectory: [(remark, the learner's answer after it)], the first
    answer with remark None. Self-discussion messages are left out."""
    rounds: list[tuple[Message | None, Message]] = []
    remark = None
    for m in traj.messages:
        if m.speaker == LEARNER and m.kind == "attempt":
            rounds.append((None, m))
        elif m.speaker == PARTNER and m.kind == "remark":
            remark = m
        elif m.speaker == LEARNER and m.kind == "update" and remark is not None:
            rounds.append((remark, m))
            remark = None
    return rounds


def self_discussion(traj: Trajectory) -> list[Message]:
    """The learner's answers of the self-discussion, round 1 on."""
    return [m for m in traj.messages if m.speaker == LEARNER and m.kind == "self_update"]


# ----------------------------------------------------------------------------------------------
# Training examples
#
# One example per round r of a kept discussion (mc.target "final_round": the last round only):
#   context (weight 0): the question, the learner's answers of rounds < r as it wrote them, the
#                       partner's remarks up to round r, "Learner: "
#   target  (weight mc.w_first at round 0, mc.w_discussion later): the learner's own answer of
#                       round r when the task judges it right, else the gold rationale
#                       (mc.target "gold": always the gold rationale)
# Kinds: first_own / first_gold (round 0), <stance>_own / <stance>_gold (after a remark): e.g.
# adversarial_own = it kept its right answer under challenge, supportive_own = it fixed a wrong one.


def uses_gold(mc: SaieConfig) -> bool:
    return True


def _round_example(traj: Trajectory, rounds, r: int, target: str, own: bool, mc: SaieConfig,
                   fmt: PromptFormat) -> TrainingExample:
    segs = [Segment(fmt.question(traj.question), 0.0, "user")]
    for j in range(r):
        if j > 0:
            segs.append(Segment(LEARNER_PREFIX, 0.0, LEARNER))
        segs.append(Segment(rounds[j][1].text, 0.0, LEARNER))
        segs.append(Segment(PARTNER_PREFIX + rounds[j + 1][0].text, 0.0, PARTNER))
    w = mc.w_first if r == 0 else mc.w_discussion
    if r > 0:
        segs.append(Segment(LEARNER_PREFIX, 0.0, LEARNER))
    segs.append(Segment(target, w, LEARNER))
    if fmt.closing:
        segs.append(Segment(fmt.closing, w, LEARNER))
    kind = ("first" if r == 0 else rounds[r][0].stance) + ("_own" if own else "_gold")
    return training_example(NAME, LEARNER, kind, segs, traj, chat_template=fmt.chat_template)


def examples(trajs: list[Trajectory], gold: list[tuple[Example, str]], mc: SaieConfig,
             fmt: PromptFormat) -> list[TrainingExample]:
    """The learner's targets of every round of every kept discussion (see above). A round whose
    target would be a gold rationale the question does not have is left out."""
    rationales = {ex.id: r for ex, r in gold}
    out = []
    for traj in trajs:
        rounds = discussion(traj)
        if not rounds:
            continue
        which = [len(rounds) - 1] if mc.target == "final_round" else range(len(rounds))
        for r in which:
            answer = rounds[r][1]
            own = bool(answer.correct) and mc.target != "gold"
            target = answer.text if own else rationales.get(traj.id)
            if target is not None:
                out.append(_round_example(traj, rounds, r, target, own, mc, fmt))
    return out


def drop_reasons(trajs: list[Trajectory], mc: SaieConfig) -> dict[str, dict[str, int]]:
    """Every kept discussion gives the learner examples (its own answer or the gold one): nothing to count."""
    return {}


def select(model: str, examples: list[TrainingExample], mc: SaieConfig,
           seed: int) -> tuple[list[TrainingExample], dict]:
    """SAIE trains on every round's example; nothing is rebalanced."""
    return examples, {"action": "kept all (SAIE does not rebalance)", "kinds": dict(Counter(e.kind for e in examples))}


# ----------------------------------------------------------------------------------------------
# Metrics
#
# The single-pass accuracy is the table's accuracy (the trajectory's final answer is the first
# one). Beside it, over the test questions:
#   <p>acc_r<k>       accuracy after k rounds of discussion with the partner (the answer of round k;
#                     a discussion that ended early keeps its last answer)
#   <p>hold_rate      of the adversarial remarks on a right answer (any round): the share after
#                     which the learner's answer is still right
#   <p>fix_rate       of the supportive remarks on a wrong answer: the share after which it is right
#   stance_accuracy   (LLM partner) the share of its remarks whose stance is the oracle's
#   self_acc_r<k>     accuracy after k rounds of self-discussion
# <p> is "oracle_" when the stance came from the gold answer (scripted and local-model partners),
# "partner_" when the partner judged (an LLM, which never sees the gold answer at test time).

MAX_LABELLED_ROUNDS = 9
METRIC_LABELS = {
    "oracle_hold_rate": "hold (oracle)", "oracle_fix_rate": "fix (oracle)",
    "partner_hold_rate": "hold", "partner_fix_rate": "fix", "stance_accuracy": "stance acc",
    **{f"oracle_acc_r{k}": f"oracle r{k}" for k in range(1, MAX_LABELLED_ROUNDS + 1)},
    **{f"partner_acc_r{k}": f"partner r{k}" for k in range(1, MAX_LABELLED_ROUNDS + 1)},
    **{f"self_acc_r{k}": f"self r{k}" for k in range(1, MAX_LABELLED_ROUNDS + 1)},
}


def _share(k: int, n: int) -> float | None:
    return k / n if n else None


def _judged_by_partner(trajs: list[Trajectory]) -> bool:
    """Whether the partner chose its own stances: at test time only an LLM partner does (its
    remarks are written by "llm:<model>"); scripts and local models get the oracle's."""
    return any(m.author.startswith("llm:") for t in trajs for m in t.messages if m.kind == "remark")


def group_metrics(trajs: list[Trajectory]) -> dict:
    """Accuracy after each discussion round, hold rate and fix rate (see above); None where a
    figure has no questions (e.g. no adversarial remark on a right answer)."""
    n = len(trajs)
    out: dict = {}
    by_partner = _judged_by_partner(trajs)
    prefix = "partner_" if by_partner else "oracle_"
    talks = [d for d in map(discussion, trajs) if d]
    for k in range(1, max((len(d) for d in talks), default=1)):
        out[f"{prefix}acc_r{k}"] = _share(sum(bool(d[min(k, len(d) - 1)][1].correct) for d in talks), n)
    if any(len(d) > 1 for d in talks):
        held = fixed = challenged = supported = agreed = remarks = 0
        for d in talks:
            for (_, before), (remark, after) in zip(d, d[1:]):
                remarks += 1
                agreed += remark.stance == oracle_stance(before)
                if remark.stance == "adversarial" and before.correct:
                    challenged += 1
                    held += bool(after.correct)
                elif remark.stance == "supportive" and not before.correct:
                    supported += 1
                    fixed += bool(after.correct)
        out[f"{prefix}hold_rate"] = _share(held, challenged)
        out[f"{prefix}fix_rate"] = _share(fixed, supported)
        if by_partner:
            out["stance_accuracy"] = _share(agreed, remarks)
    answers = [[d[0][1]] + self_discussion(t) for t, d in zip(trajs, map(discussion, trajs)) if d]
    for k in range(1, max((len(a) for a in answers), default=1)):
        out[f"self_acc_r{k}"] = _share(sum(bool(a[min(k, len(a) - 1)].correct) for a in answers), n)
    return out
