"""Multi-agent finetuning (Subramaniam et al., "Multiagent Finetuning: Self Improvement with Diverse
Reasoning Chains", ICLR 2025) as a tripost method: everything it needs, in one module.

    tripost iterate --config configs/multiagent_demo.yaml --rounds 2

N generator agents (gen0, gen1, ...) and N critic agents (critic0, ...), each its own model, all
starting from the same warmed-up base. On every train question they debate; the plurality of the
last round's answers is the consensus (no labels); every agent then trains on its own answers that
agree with the consensus, and the next round's debate uses the finetuned agents.

The debate (`rollout`, the same episode in collect and at test time):

    round 0        generator i answers alone:               Q: <question>\\nA: <answer>
    round r >= 1   critic i sees the other agents' answers of round r - 1 (shuffled, at most
                   mc.max_others, never one of round r) after its own previous answer, and writes
                   an updated answer. Its context grows round by round, so its own earlier answers
                   stay in it (at round 1 "its own answer" is generator i's round-0 answer):

        Q: <question>
        A: <agent i's round-0 answer (by gen i)>
        Other agents' answers:
        One agent: <agent j's round-0 answer>
        One agent: <agent k's round-0 answer>
        Updated Answer: <critic i's round-1 answer>
        Other agents' answers:
        ...
        Updated Answer: <critic i's round-2 answer>

    With mc.summarize the critic first summarises the other answers ("... Summary: <summary>", its
    own request) and sees "Summary of other agents' answers: <summary>" instead of them.

The consensus (`plurality`): the most frequent parseable answer among the last round's answers,
answers grouped by the task's own judgement (`same_answer`: would b be right if a were the gold
answer? - task.is_correct, never eval of model text). A tie gives no label (mc.tie_break
"no_label", the question is dropped and counted) or the lexicographically largest tied answer
("largest_string", the official code's rule). A question where no agent gives a parseable answer is
dropped and counted ("no_parseable_answer"). Within a question each answer is written as the first
equivalent answer was (Message.answer), so equal strings mean the same answer to the task.

The training data (`examples`, `select`), per agent (round_k/process/<agent>.jsonl):

    generator i   its round-0 answer when it agrees with the consensus: Q (weight 0), answer (1)
    critic i      its whole debate when its final answer agrees: D- ("dminus") when its round-0
                  answer did not (it changed its answer to reach the consensus), D+ ("dplus") when
                  it did. All D-, and D+ at mc.dplus_ratio per D- (seeded, never more than exist).
                  Weights: the question and the transcript's headers 0; the other agents' text
                  mc.w_others (0); its own answers that agree mc.w_first (round 0) / mc.w_revised
                  (rounds >= 1); any of its own answers that does not agree mc.w_wrong (0), so a
                  critic does not learn the mistake it corrected.

With mc.gold_filter (an ablation that uses labels) "agrees" means "matches the gold answer".

The contract (docs/methods.md): NAME, STAGES, models, partners, rollout, uses_gold, examples,
drop_reasons, select, group_metrics, METRIC_LABELS. `mc` is the `multiagent:` config section
(MultiagentConfig). The single-agent baseline of the paper is this method with one generator that
samples several answers and votes (`iterate.arms: {single_agent: {agents: 1, samples: 5,
debate_rounds: 1}}`), so it gets token-matched compute and paired statistics like any arm.
"""

from __future__ import annotations

import dataclasses
import random
from collections import Counter

from tripost import steps
from tripost.config import MultiagentConfig
from tripost.engine import Request
from tripost.formats import PromptFormat
from tripost.io import content_id
from tripost.records import Example, Message, Segment, TrainingExample, Trajectory, training_example

NAME = "multiagent"
STAGES = ("collect", "process", "train", "evaluate")
# Which keys of the `multiagent:` section each stage reads (it is given and fingerprinted on only
# these): the debate's shape and the consensus in the rollouts, everything in process.
_DEBATE = ("agents", "samples", "debate_rounds", "max_others", "summarize", "tie_break", "gold_filter")
READS = {"collect": _DEBATE, "evaluate": _DEBATE,
         "process": _DEBATE + ("dplus_ratio", "w_revised", "w_first", "w_wrong", "w_others")}

OTHERS_HEADER = "\nOther agents' answers:"
OTHER_PREFIX = "\nOne agent: "
SUMMARY_HEADER = "\nSummary of other agents' answers: "
SUMMARY_PROMPT = "\nSummary: "
UPDATE_PREFIX = "\nUpdated Answer: "
# Where an under-trained model runs on past its own answer (into a new question or a new turn).
RUN_ON = ("\n" + steps.QUESTION_PREFIX.strip(), OTHERS_HEADER, UPDATE_PREFIX.rstrip(), SUMMARY_HEADER.rstrip(),
          SUMMARY_PROMPT.rstrip(), OTHER_PREFIX.rstrip())

# Why a question gives no consensus (Trajectory.stop; at collect also the drop reason).
TIE, NO_ANSWER = "tie", "no_parseable_answer"


def generator(i: int) -> str:
    return f"gen{i}"


def critic(i: int) -> str:
    return f"critic{i}"


def models(mc: MultiagentConfig) -> list[str]:
    """The generators, then the critics (there are critics only when there is a debate)."""
    gens = [generator(i) for i in range(mc.agents)]
    return gens + ([critic(i) for i in range(mc.agents)] if mc.debate_rounds >= 2 else [])


def partners(mc: MultiagentConfig, stage: str) -> dict[str, str]:
    return {}


def uses_gold(mc: MultiagentConfig) -> bool:
    return False  # the gold filter reads the gold answer on each trajectory, not gold rationales


# ----------------------------------------------------------------------------------------------
# The consensus


def plurality(answers: list[str | None], same, tie_break: str = "no_label") -> tuple[str | None, str]:
    """(the winning answer or None, why): the most frequent answer, answers grouped by `same(a, b)`
    (each group is named by its first answer). None answers are unparseable and do not vote.

        "consensus"            one answer has the most votes
        "tie_broken"           several tie and tie_break "largest_string" picked the largest string
        "tie"                  several tie (tie_break "no_label"): no answer
        "no_parseable_answer"  nothing to vote for
    """
    groups: list[list] = []  # [first answer, votes]
    for a in answers:
        if a is None:
            continue
        for g in groups:
            if same(g[0], a):
                g[1] += 1
                break
        else:
            groups.append([a, 1])
    if not groups:
        return None, NO_ANSWER
    top = max(votes for _, votes in groups)
    tied = [a for a, votes in groups if votes == top]
    if len(tied) == 1:
        return tied[0], "consensus"
    if tie_break == "largest_string":
        return max(tied), "tie_broken"
    return None, TIE


def same_answer(task, example: Example):
    """The task's own equivalence of two answers: would b be judged right if a were the gold answer?"""

    def same(a: str, b: str) -> bool:
        return task.is_correct(dataclasses.replace(example, answer=a), steps.final_line(b))

    return same


# ----------------------------------------------------------------------------------------------
# The debate transcript


def _seed(*parts) -> int:
    """A sampling seed from what a request is (stage, question, agent, round, sample), not from
    when it runs, so a resumed run samples what an uninterrupted one does."""
    return int(content_id(*map(str, parts)), 16) % 2**31


def others_shown(example_id: str, i: int, r: int, n: int, max_others: int) -> list[int]:
    """The agents whose round r - 1 answers critic i sees at round r, in the order it sees them:
    the other agents, shuffled (seeded by question, agent and round), at most max_others."""
    others = [j for j in range(n) if j != i]
    random.Random(_seed("others", example_id, i, r)).shuffle(others)
    return others[:max_others]


def transcript(fmt: PromptFormat, question: str, own: list[Message], seen: list[list[Message]],
               weight=lambda m: 0.0, w_others: float = 0.0) -> list[Segment]:
    """Agent i's debate as segments. `own`: its answers, round 0 first (by its generator);
    `seen[r - 1]`: what it saw before writing its round-r answer (the other agents' round r - 1
    answers, or [its summary of them]). With as many `seen` as `own` the transcript ends with
    "Updated Answer: ", the prompt of its next answer. `weight(message)`: the loss weight of one
    of its own answers; the other agents' text gets `w_others`, everything else 0."""
    segs = [Segment(fmt.question(question), 0.0, "user"), Segment(own[0].text, weight(own[0]), own[0].speaker)]
    for r, shown in enumerate(seen, start=1):
        if shown and shown[0].kind == "summary":
            segs += [Segment(SUMMARY_HEADER, 0.0, "user"), Segment(shown[0].text, w_others, shown[0].speaker)]
        else:
            segs.append(Segment(OTHERS_HEADER, 0.0, "user"))
            for m in shown:
                segs += [Segment(OTHER_PREFIX, 0.0, "user"), Segment(m.text, w_others, m.speaker)]
        segs.append(Segment(UPDATE_PREFIX, 0.0, "user"))
        if r < len(own):
            segs.append(Segment(own[r].text, weight(own[r]), own[r].speaker))
    return segs


def summary_prompt(fmt: PromptFormat, question: str, shown: list[Message]) -> str:
    """What a critic summarises (mc.summarize): the question and the other agents' answers."""
    return fmt.question(question).rstrip() + OTHERS_HEADER + "".join(OTHER_PREFIX + m.text for m in shown) \
        + SUMMARY_PROMPT


def clip(generated: str) -> tuple[str, bool]:
    """The text up to where the model runs on into a new question or turn, and whether it did."""
    cuts = [i for i in (generated.find(mark) for mark in RUN_ON) if i >= 0]
    return (generated[:min(cuts)].strip(), True) if cuts else (generated.strip(), False)


# ----------------------------------------------------------------------------------------------
# The episode


def rollout(example: Example, task, mc: MultiagentConfig, stage: str, fmt: PromptFormat):
    """One question's debate; returns its Trajectory with the consensus as final_answer."""
    same = same_answer(task, example)
    names: list[str] = []  # the first answer of each group of equivalent answers (see `plurality`)
    calls = 0

    def canonical(answer: str | None) -> str:
        if not answer:
            return ""
        for name in names:
            if same(name, answer):
                return name
        names.append(answer)
        return answer

    def message(speaker: str, kind: str, r: int, reply) -> Message:
        text, ran_on = clip(reply.text or "")
        m = Message(speaker, kind, text, reply.author, round=r, truncated=reply.truncated and not ran_on)
        if kind != "summary":
            m.answer, m.correct = canonical(task.extract_answer(text)), task.is_correct(example, text)
        return m

    # Round 0: each generator answers alone (mc.samples times).
    asks = [(generator(i), s) for i in range(mc.agents) for s in range(mc.samples)]
    replies = yield [Request(g, "generate", prompt=fmt.question(example.question), seed=_seed(stage, example.id, g, 0, s))
                     for g, s in asks]
    calls += len(asks)
    messages = [message(g, "answer", 0, reply) for (g, _), reply in zip(asks, replies)]
    own = [[messages[i * mc.samples]] for i in range(mc.agents)]  # agent i's answers, by round
    seen: list[list[list[Message]]] = [[] for _ in range(mc.agents)]  # what it saw before each update

    for r in range(1, mc.debate_rounds):
        shown = {i: [own[j][r - 1] for j in others_shown(example.id, i, r, mc.agents, mc.max_others)]
                 for i in range(mc.agents)}
        if mc.summarize:
            replies = yield [Request(critic(i), "generate", prompt=summary_prompt(fmt, example.question, shown[i]),
                                     seed=_seed(stage, example.id, critic(i), r, "summary")) for i in range(mc.agents)]
            calls += mc.agents
            for i, reply in enumerate(replies):
                summary = message(critic(i), "summary", r, reply)
                messages.append(summary)
                shown[i] = [summary]
        for i in range(mc.agents):
            seen[i].append(shown[i])
        prompts = ["".join(s.text for s in transcript(fmt, example.question, own[i], seen[i]))
                   for i in range(mc.agents)]
        replies = yield [Request(critic(i), "generate", prompt=prompts[i], seed=_seed(stage, example.id, critic(i), r, 0))
                         for i in range(mc.agents)]
        calls += mc.agents
        for i, reply in enumerate(replies):
            update = message(critic(i), "update", r, reply)
            messages.append(update)
            own[i].append(update)

    last = [m for m in messages if m.round == mc.debate_rounds - 1 and m.kind != "summary"]
    winner, why = plurality([m.answer or None for m in last], same, mc.tie_break)
    correct = winner is not None and any(m.correct for m in last if m.answer == winner)
    status, reason = "kept", ""
    if winner is None and stage == "collect" and not mc.gold_filter:
        status, reason = "dropped", why  # no label for this question (the gold filter needs none)
    return Trajectory.of(example, NAME, messages=messages, status=status, correct=correct, final_answer=winner or "",
                         drop_reason=reason, stop=why, calls=calls, stage=stage)


# ----------------------------------------------------------------------------------------------
# Reading a debate back


def n_agents(traj: Trajectory) -> int:
    return len({m.speaker for m in traj.messages if m.round == 0})


def agent_answers(traj: Trajectory, i: int) -> list[Message]:
    """Agent i's answers by round: generator i's (first) round-0 answer, then critic i's updates."""
    first = next(m for m in traj.messages if m.round == 0 and m.speaker == generator(i))
    return [first] + [m for m in traj.messages if m.speaker == critic(i) and m.kind == "update"]


def agent_seen(traj: Trajectory, i: int, max_others: int) -> list[list[Message]]:
    """What critic i saw before each of its updates: its summary of that round, if it wrote one,
    else the other agents' previous-round answers in the order `rollout` showed them."""
    n = n_agents(traj)
    answers = [agent_answers(traj, j) for j in range(n)]
    out = []
    for r in range(1, len(answers[i])):
        summary = [m for m in traj.messages if m.speaker == critic(i) and m.kind == "summary" and m.round == r]
        out.append(summary or [answers[j][r - 1] for j in others_shown(traj.id, i, r, n, max_others)])
    return out


def _agrees(traj: Trajectory, m: Message, mc: MultiagentConfig) -> bool:
    """The answer is one an agent trains on: it matches the consensus (or, with the gold filter,
    the gold answer)."""
    if mc.gold_filter:
        return bool(m.correct)
    return bool(m.answer) and m.answer == traj.final_answer


def _why_not(m: Message, mc: MultiagentConfig) -> str:
    if not m.answer:
        return "unparseable"
    return "not_matching_gold" if mc.gold_filter else "not_matching_consensus"


# ----------------------------------------------------------------------------------------------
# Training examples


KINDS = ("generator", "dminus", "dplus")


def _closed(fmt: PromptFormat, segs: list[Segment]) -> list[Segment]:
    """A chat model also learns its end-of-turn text, with the weight of what it closes."""
    return segs + [Segment(fmt.closing, segs[-1].weight, segs[-1].speaker)] if fmt.closing else segs


def examples(trajs: list[Trajectory], gold: list, mc: MultiagentConfig, fmt: PromptFormat) -> list[TrainingExample]:
    """Generator examples (round-0 answers that agree) and critic examples (whole debates whose
    final answer agrees, D- or D+), each naming the agent that trains on it."""
    out = []
    for t in trajs:
        for m in t.messages:
            if m.round == 0 and m.kind == "answer" and _agrees(t, m, mc):
                segs = [Segment(fmt.question(t.question), 0.0, "user"), Segment(m.text, 1.0, m.speaker)]
                out.append(training_example(NAME, m.speaker, "generator", _closed(fmt, segs), t,
                                            chat_template=fmt.chat_template))
        for i in range(n_agents(t)):
            own = agent_answers(t, i)
            if len(own) < 2 or not _agrees(t, own[-1], mc):
                continue

            def weight(m: Message) -> float:
                if not _agrees(t, m, mc):
                    return mc.w_wrong
                return mc.w_first if m.round == 0 else mc.w_revised

            kind = "dplus" if _agrees(t, own[0], mc) else "dminus"
            segs = transcript(fmt, t.question, own, agent_seen(t, i, mc.max_others), weight, mc.w_others)
            out.append(training_example(NAME, critic(i), kind, _closed(fmt, segs), t, chat_template=fmt.chat_template))
    return out


def drop_reasons(trajs: list[Trajectory], mc: MultiagentConfig) -> dict[str, dict[str, int]]:
    """Per agent, why a kept debate gave it no example: its answer was unparseable or did not match
    the consensus (or the gold answer). Questions without a consensus never reach process: they
    are counted by collect (its dropped.jsonl and the table's drops column)."""
    out = {name: Counter() for name in models(mc)}
    for t in trajs:
        for m in t.messages:
            if m.round == 0 and m.kind == "answer" and not _agrees(t, m, mc) and m.speaker in out:
                out[m.speaker][_why_not(m, mc)] += 1
        for i in range(n_agents(t)):
            own = agent_answers(t, i)
            if len(own) >= 2 and not _agrees(t, own[-1], mc) and critic(i) in out:
                out[critic(i)][_why_not(own[-1], mc)] += 1
    return {name: dict(sorted(c.items())) for name, c in out.items()}


def select(model: str, examples: list[TrainingExample], mc: MultiagentConfig,
           seed: int) -> tuple[list[TrainingExample], dict]:
    """Generators keep everything. A critic keeps all its D- examples and mc.dplus_ratio D+ per D-
    (sampled with `seed` and the model's name; all of them when there are fewer)."""
    kinds = Counter(e.kind for e in examples)
    if not model.startswith("critic"):
        return examples, {"action": f"kept all {len(examples)}", "kinds": dict(kinds)}
    dminus = [i for i, e in enumerate(examples) if e.kind == "dminus"]
    dplus = [i for i, e in enumerate(examples) if e.kind == "dplus"]
    if mc.dplus_ratio is None:
        keep, target = dplus, len(dplus)
    else:
        target = round(mc.dplus_ratio * len(dminus))
        keep = sorted(random.Random(f"{seed}/{model}").sample(dplus, min(target, len(dplus))))
    kept = [examples[i] for i in sorted(dminus + keep)]
    short = f"; only {len(dplus)} D+ exist, kept all" if len(keep) < target else ""
    return kept, {"action": f"kept all {len(dminus)} D-, {len(keep)} of {len(dplus)} D+ (target {target}){short}",
                  "dminus": len(dminus), "dplus_available": len(dplus), "dplus_target": target,
                  "dplus_kept": len(keep), "kinds": dict(Counter(e.kind for e in kept))}


# ----------------------------------------------------------------------------------------------
# Metrics


METRIC_LABELS = {"consensus": "consensus", "majority0_accuracy": "maj@0 acc", "fixed_wrong_majority": "fixed",
                 "broke_right_majority": "broke", "disagreement0": "disagree@0", "generator_accuracy": "gen acc",
                 **{f"gen{i}_accuracy": f"gen{i} acc" for i in range(16)}}


def group_metrics(trajs: list[Trajectory]) -> dict:
    """The debate's own numbers over a group of test questions:

        consensus             share where the last round has one most frequent answer
        generator_accuracy    single-agent accuracy of the generators (round 0), mean over them;
                              gen<i>_accuracy each generator's (mean over its samples)
        majority0_accuracy    the plurality of the round-0 answers is right (a tie: not right)
        fixed_wrong_majority  round-0 plurality not right, debate's final answer right
        broke_right_majority  round-0 plurality right, final answer not right
                              (accuracy = majority0_accuracy + fixed - broke)
        disagreement0         share where the round-0 answers are not all the same (an unparseable
                              answer differs from every answer): the agents' diversity
    """
    n = len(trajs)

    def share(k, of=n):
        return k / of if of else None

    by_gen: dict[str, list[bool]] = {}
    maj0_right = fixed = broke = disagree = 0
    for t in trajs:
        first = [m for m in t.messages if m.round == 0 and m.kind == "answer"]
        for m in first:
            by_gen.setdefault(m.speaker, []).append(bool(m.correct))
        winner, _ = plurality([m.answer or None for m in first], str.__eq__)
        right0 = winner is not None and any(m.correct for m in first if m.answer == winner)
        maj0_right += right0
        fixed += not right0 and t.correct
        broke += right0 and not t.correct
        disagree += len({m.answer for m in first}) > 1
    gens = sorted(by_gen, key=lambda g: int(g[3:]) if g[3:].isdigit() else 0)
    per_gen = {f"{g}_accuracy": share(sum(v), len(v)) for g, v in ((g, by_gen[g]) for g in gens)}
    return {"consensus": share(sum(t.stop == "consensus" for t in trajs)),
            "generator_accuracy": (sum(per_gen.values()) / len(per_gen)) if per_gen else None,
            **per_gen,
            "majority0_accuracy": share(maj0_right), "fixed_wrong_majority": share(fixed),
            "broke_right_majority": share(broke), "disagreement0": share(disagree)}
