"""SAIE (tripost/methods/saie.py) on hand-written replies: the stance follows the task's judge (and
the ablations), the training targets follow saie.target, partner text is never trained, the
scripted partner's adversarial remark is wrong on purpose (its own feedback rejects the claim),
the test-time metrics (accuracy per round, hold and fix rates, oracle labels), inspect shows a
discussion, and a collect killed with SIGKILL inside the discussion resumes to the same records.

Episodes are generators: the tests drive them with `send` and hand-written `Reply`s, no model.
Run:  PYTHONPATH=$PWD python -m pytest -q tests/test_saie.py
"""

from __future__ import annotations

import importlib.util
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tripost import io, steps
from tripost.config import PROJECT_ROOT, load_config
from tripost.errors import TripostError
from tripost.experts import Reply, make_expert
from tripost.formats import PromptFormat
from tripost.methods import get_method
from tripost.methods import saie
from tripost.records import Trajectory, read_trajectories
from tripost.tasks import get_task
from tripost.tasks import multistep_arithmetic as ma
from tripost.tasks.word_sorting import render as render_words, solve as solve_words

FMT = PromptFormat(False)
SCRIPTS = PROJECT_ROOT / "feedback_scripts"


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(f"saie_test_{name}", SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


ARITH = load_script("multistep_arithmetic")
WORDS = load_script("word_sorting")


@pytest.fixture(scope="module")
def task():
    return get_task(load_config(None, ["task.max_train=40", "task.max_test=40"]).task)


def saie_cfg(*overrides: str):
    return load_config(None, ["method=saie", *overrides]).saie


def wrong_version(rationale: str) -> str:
    """The gold rationale with a wrong final answer (and a wrong last link)."""
    lines = rationale.splitlines()
    value = int(steps.extract_final_answer(rationale))
    lines[-1] = steps.final_line(str(value + 1))
    return "\n".join(lines)


def drive(episode, answer):
    """Run an episode to its end; `answer(request)` -> Reply. Returns (trajectory, requests by level)."""
    levels = []
    replies = None
    while True:
        try:
            requests = episode.send(replies)
        except StopIteration as stop:
            return stop.value, levels
        levels.append(requests)
        replies = [answer(r) for r in requests]


class Scripted:
    """Hand-written learner answers, in order, and a partner that echoes the stance it was asked for."""

    def __init__(self, answers: list[str], partner_stance: str = ""):
        self.answers = list(answers)
        self.partner_stance = partner_stance
        self.remarks: list[str] = []  # the stances asked for

    def __call__(self, r):
        if r.to == "learner":
            return Reply(self.answers.pop(0), author="model:learner")
        stance = r.args[2]
        self.remarks.append(stance)
        return Reply(f"remark ({stance})", author="script:x.py", stance=self.partner_stance)


# ----------------------------------------------------------------------------------------------
# The stance


def test_stance_follows_the_judge_during_training(task):
    ex = task.load("train")[0]
    gold = task.gold_rationale(ex)
    wrong = wrong_version(gold)
    mc = saie_cfg("saie.discussion_rounds=3")
    # wrong -> supportive; then right -> adversarial; swayed to wrong -> supportive again
    learner = Scripted([wrong, gold, wrong, gold])
    traj, levels = drive(saie.rollout(ex, task, mc, "collect", FMT), learner)
    assert learner.remarks == ["supportive", "adversarial", "supportive"]
    assert [m.kind for m in traj.messages] == ["attempt", "remark", "update"] * 1 + ["remark", "update"] * 2
    assert [m.correct for m in traj.messages if m.speaker == "learner"] == [False, True, False, True]
    assert [m.stance for m in traj.messages if m.kind == "remark"] == ["supportive", "adversarial", "supportive"]
    # the partner is asked about the learner's latest answer; the learner reads the whole discussion
    remark_requests = [r for level in levels for r in level if r.to == "partner"]
    assert [r.args[1] for r in remark_requests] == [wrong, gold, wrong]
    last_prompt = levels[-1][0].prompt
    assert last_prompt == (FMT.question(ex.question) + wrong + "\nPartner: remark (supportive)\nLearner: " + gold
                           + "\nPartner: remark (adversarial)\nLearner: " + wrong
                           + "\nPartner: remark (supportive)\nLearner: ")
    # the single-pass answer is the trajectory's result
    assert traj.status == "kept" and traj.correct is False and traj.final_answer == steps.extract_final_answer(wrong)
    assert traj.calls == 4 and traj.stop == "rounds"


@pytest.mark.parametrize("stances", ["supportive", "adversarial"])
def test_one_stance_ablations(task, stances):
    ex = task.load("train")[1]
    gold = task.gold_rationale(ex)
    learner = Scripted([wrong_version(gold), gold, wrong_version(gold)])
    drive(saie.rollout(ex, task, saie_cfg("saie.discussion_rounds=2", f"saie.stances={stances}"), "collect", FMT),
          learner)
    assert learner.remarks == [stances, stances]


def test_test_time_stance_oracle_for_scripts_judged_by_an_llm(task):
    ex = task.load("test")[0]
    gold = task.gold_rationale(ex)
    mc = saie_cfg("saie.discussion_rounds=1", "saie.test_rounds=2", "saie.test_modes=[partner]")
    learner = Scripted([gold, wrong_version(gold), wrong_version(gold)])
    traj, _ = drive(saie.rollout(ex, task, mc, "evaluate", FMT), learner)
    assert learner.remarks == ["adversarial", "supportive"]  # the oracle: from the gold answer
    assert traj.correct and [m.round for m in traj.messages] == [0, 1, 1, 2, 2]
    # An LLM partner never gets the gold-based stance: it is asked to judge ("auto") and says
    # which stance it took; a stance that is not the oracle's is kept as the LLM gave it.
    mc = saie_cfg("saie.discussion_rounds=2", "saie.test_modes=[partner]", "saie.partner=llm")
    learner = Scripted([gold, gold, gold], partner_stance="supportive")
    traj, _ = drive(saie.rollout(ex, task, mc, "evaluate", FMT), learner)
    assert learner.remarks == ["auto", "auto"]
    assert [m.stance for m in traj.messages if m.kind == "remark"] == ["supportive", "supportive"]


def test_a_local_model_partner_continues_the_transcript(task):
    ex = task.load("train")[4]
    wrong = wrong_version(task.gold_rationale(ex))
    mc = saie_cfg("saie.discussion_rounds=1", "saie.partner=model:models/other")
    assert saie.partners(mc, "collect") == {"partner": "model:models/other"}

    def answer(r):
        if r.to == "partner":
            assert r.kind == "generate"
            assert r.prompt == FMT.question(ex.question) + wrong + "\nPartner (supportive): "
            return Reply(" Check   step (2).\nLearner: (1) ...", author="model:partner")
        return Reply(wrong, author="model:learner")

    traj, _ = drive(saie.rollout(ex, task, mc, "collect", FMT), answer)
    remark = traj.messages[1]
    assert (remark.text, remark.author, remark.stance) == ("Check step (2).", "model:partner", "supportive")


def test_partner_errors_end_the_discussion_or_leave_it_pending(task):
    ex = task.load("train")[2]
    gold = task.gold_rationale(ex)
    mc = saie_cfg("saie.discussion_rounds=3")

    def answer(error, transient):
        def reply(r):
            if r.to == "learner":
                return Reply(gold, author="model:learner")
            return Reply(None, error, "boom (x.py:3)", transient=transient)
        return reply

    traj, _ = drive(saie.rollout(ex, task, mc, "collect", FMT), answer("script_error", False))
    assert traj.status == "kept" and traj.stop == "script_error" and traj.detail == "boom (x.py:3)"
    assert [m.kind for m in traj.messages] == ["attempt"]
    traj, _ = drive(saie.rollout(ex, task, mc, "collect", FMT), answer("llm_api_error_529", True))
    assert traj.status == "pending"  # not written: a rerun asks again
    # at test time the self-discussion goes on without the partner; without it the episode ends
    traj, _ = drive(saie.rollout(ex, task, mc, "evaluate", FMT), answer("script_timeout", False))
    assert traj.stop == "script_timeout" and [m.kind for m in traj.messages].count("self_update") == 3
    only_partner = saie_cfg("saie.discussion_rounds=3", "saie.test_modes=[partner]")
    traj, _ = drive(saie.rollout(ex, task, only_partner, "evaluate", FMT), answer("script_timeout", False))
    assert traj.stop == "script_timeout" and traj.calls == 1


# ----------------------------------------------------------------------------------------------
# Training examples


@pytest.fixture(scope="module")
def discussion(task):
    """A training discussion: wrong first answer, fixed after support, swayed after a challenge."""
    ex = task.load("train")[3]
    gold = task.gold_rationale(ex)
    own_fix = "(1) Done by hand.\n" + steps.final_line(ex.answer)  # its own right answer, not gold
    traj, _ = drive(saie.rollout(ex, task, saie_cfg("saie.discussion_rounds=2"), "collect", FMT),
                    Scripted([wrong_version(gold), own_fix, wrong_version(gold)]))
    return traj, ex, gold


def targets(examples):
    return [(e.kind, e.segments[-1].text, e.segments[-1].weight) for e in examples]


def test_targets_own_or_gold(discussion):
    traj, ex, gold = discussion
    mc = saie_cfg("saie.discussion_rounds=2", "saie.w_first=1.0", "saie.w_discussion=2.0")
    out = saie.examples([traj], [(ex, gold)], mc, FMT)
    own = traj.messages[2].text
    assert targets(out) == [("first_gold", gold, 1.0), ("supportive_own", own, 2.0), ("adversarial_gold", gold, 2.0)]
    # round r's context: the question, the learner's answers as it wrote them, the remarks up to r
    last = out[-1]
    assert last.text == (FMT.question(ex.question) + traj.messages[0].text + "\nPartner: remark (supportive)"
                         + "\nLearner: " + own + "\nPartner: remark (adversarial)\nLearner: " + gold)
    assert all(e.model == "learner" and e.source_id == traj.id for e in out)


def test_targets_gold_and_final_round(discussion):
    traj, ex, gold = discussion
    out = saie.examples([traj], [(ex, gold)], saie_cfg("saie.target=gold"), FMT)
    assert [(k, t) for k, t, _ in targets(out)] == [("first_gold", gold), ("supportive_gold", gold),
                                                      ("adversarial_gold", gold)]
    out = saie.examples([traj], [(ex, gold)], saie_cfg("saie.target=final_round"), FMT)
    assert [(k, t) for k, t, _ in targets(out)] == [("adversarial_gold", gold)]
    # no gold rationale: only the rounds the learner got right itself
    out = saie.examples([traj], [], saie_cfg(), FMT)
    assert [k for k, _, _ in targets(out)] == ["supportive_own"]
    kept, report = saie.select("learner", out, saie_cfg(), 0)
    assert kept == out and report["kinds"] == {"supportive_own": 1}


def test_partner_text_has_weight_zero(discussion, tiny_model_dir):
    from transformers import AutoTokenizer

    from tripost.train import encode_example

    traj, ex, gold = discussion
    out = saie.examples([traj], [(ex, gold)], saie_cfg(), FMT)
    for e in out:
        assert [s.weight for s in e.segments[:-1]] == [0.0] * (len(e.segments) - 1)  # all context
        assert all(s.weight == 0 for s in e.segments if s.speaker in ("partner", "user"))
        assert e.segments[-1].weight > 0 and e.segments[-1].speaker == "learner"
    # token by token, as the trainer sees it: nothing of the partner's remark is trained
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    e = out[-1]
    ids, weights = encode_example(e, tok)
    offsets = tok(e.text, return_offsets_mapping=True)["offset_mapping"]
    remark_spans = []
    at = 0
    for s in e.segments:
        if s.speaker == "partner":
            remark_spans.append((at, at + len(s.text)))
        at += len(s.text)
    target_start = len(e.text) - len(e.segments[-1].text)
    for (a, b), w in zip(offsets, weights):
        if b > a and any(lo <= b - 1 < hi for lo, hi in remark_spans):
            assert w == 0.0
        if b > a and b - 1 >= target_start:
            assert w == 1.0
    assert sum(w > 0 for w in weights) >= len(tok(gold, add_special_tokens=False)["input_ids"]) - 1


# ----------------------------------------------------------------------------------------------
# The scripted partner


CLAIM_RE = re.compile(r"the part \"(.*)\" is incorrect\. This is because .* is equal to (-?\d+), not (-?\d+)\.$")


def test_arithmetic_adversarial_remark_is_wrong_on_purpose(task):
    examples = task.load("train")[:25] + task.load("test")[:25]
    for ex in examples:
        exd = {"question": ex.question}
        gold = task.gold_rationale(ex)
        remark = ARITH.remark(exd, gold, "adversarial")
        fb = steps.parse_feedback(remark)
        assert fb is not None and not fb.correct, remark  # it says a step is wrong ...
        assert steps.says_correct(ARITH.feedback(exd, gold))  # ... of an attempt that is right
        part, claim, written = CLAIM_RE.search(remark).groups()
        assert int(claim) != int(written)
        # Put the claimed value into the step: the script's own feedback rejects it, at that step.
        lines = gold.splitlines()
        k = [s.label for s in steps.parse_steps(gold)].index(fb.wrong_step)
        left = part.rsplit(" = ", 1)[0]
        assert part in lines[k]
        lines[k] = lines[k].replace(part, f"{left} = {claim}")
        claimed = "\n".join(lines)
        verdict = steps.parse_feedback(ARITH.feedback(exd, claimed))
        assert not verdict.correct and verdict.wrong_step == fb.wrong_step, (remark, ARITH.feedback(exd, claimed))
        # deterministic
        assert ARITH.remark(exd, gold, "adversarial") == remark
    # on a wrong attempt it disputes a step before the real mistake (one the script verified)
    ex = examples[0]
    gold = task.gold_rationale(ex)
    broken = gold.splitlines()
    broken[2] = broken[2][:-2] + "99."  # step (3)'s value is wrong
    broken = "\n".join(broken)
    real = steps.parse_feedback(ARITH.feedback({"question": ex.question}, broken))
    fake = steps.parse_feedback(ARITH.remark({"question": ex.question}, broken, "adversarial"))
    assert int(fake.wrong_step) < int(real.wrong_step) or fake.wrong_step == steps.FINAL
    # nothing verified: it claims another wrong final answer, never the gold one
    remark = ARITH.remark({"question": ex.question}, "I do not know.", "adversarial")
    claimed_answer = re.search(r"the answer is (-?\d+)\.$", remark).group(1)
    assert claimed_answer != ex.answer


def test_arithmetic_supportive_remark_names_the_first_wrong_step(task):
    ex = task.load("train")[5]
    exd = {"question": ex.question}
    gold = task.gold_rationale(ex)
    wrong = wrong_version(gold)
    assert ARITH.remark(exd, wrong, "supportive") == ARITH.feedback(exd, wrong)
    assert steps.parse_feedback(ARITH.remark(exd, wrong, "supportive")).wrong_step == steps.FINAL
    assert steps.says_correct(ARITH.remark(exd, gold, "supportive"))  # supportive-only on a right answer
    assert steps.parse_feedback(ARITH.remark(exd, "", "supportive")).wrong_step == "1"
    with pytest.raises(ValueError, match="unknown stance"):
        ARITH.remark(exd, gold, "auto")


def test_word_sorting_adversarial_remark_is_wrong_on_purpose():
    rng = random.Random(0)
    letters = "abcdefghijklmnopqrstuvwxyz"
    for _ in range(40):
        words = sorted({"".join(rng.choice(letters[:6]) for _ in range(rng.randint(1, 5)))
                        for _ in range(rng.randint(2, 7))}, key=lambda w: rng.random())
        exd = {"question": "Sort the following words alphabetically:\nList: " + " ".join(words)}
        gold = render_words(solve_words(words))
        assert steps.says_correct(WORDS.feedback(exd, gold))
        remark = WORDS.remark(exd, gold, "adversarial")
        fb = steps.parse_feedback(remark)
        assert fb is not None and not fb.correct, remark
        m = re.search(r'"(\w)" is letter number (\d+) of the alphabet, not (\d+)\.$', remark)
        letter, claim, written = m.group(1), int(m.group(2)), int(m.group(3))
        assert claim != written
        k = [s.label for s in steps.parse_steps(gold)].index(fb.wrong_step)
        lines = gold.splitlines()
        entry = re.search(rf'"[^"]*"="{letter}" \({written}\)', lines[k]).group(0)
        lines[k] = lines[k].replace(entry, entry.replace(f"({written})", f"({claim})"), 1)
        verdict = steps.parse_feedback(WORDS.feedback(exd, "\n".join(lines)))
        assert not verdict.correct and verdict.wrong_step == fb.wrong_step, remark
    # nothing verified: two neighbours of the sorted list said to come the other way round
    exd = {"question": "Sort the following words alphabetically:\nList: oven costume"}
    remark = WORDS.remark(exd, "(Final response) So the answer is costume oven.", "adversarial")
    assert '"oven" comes before "costume"' in remark


def test_partner_script_through_the_worker(tmp_path, task):
    cfg = load_config(None, ["edit.script_workers=1"])
    with pytest.raises(TripostError, match=r"feedback_only\.py.*no `remark"):
        make_expert(f"script:{PROJECT_ROOT}/tests/data/scripts/feedback_only.py", cfg.edit, role="partner")
    # a script with only `remark` is a partner, not a feedback expert
    only = tmp_path / "remark_only.py"
    only.write_text("def remark(example, attempt, stance):\n"
                    "    return None if stance == 'x' else stance + ': ' + attempt\n")
    with pytest.raises(TripostError, match=r"remark_only\.py.*no `feedback"):
        make_expert(f"script:{only}", cfg.edit, role="feedback")
    expert = make_expert(f"script:{only}", cfg.edit, role="partner")
    try:
        ex = task.load("train")[0]
        replies = expert.remark_many([(ex, "A", "supportive"), (ex, "B", "x")])
        assert replies[0].text == "supportive: A" and replies[1].error == "script_no_remark"
    finally:
        expert.close()
    expert = make_expert("script:feedback_scripts/multistep_arithmetic.py", cfg.edit, role="partner")
    try:
        gold = task.gold_rationale(ex)
        (reply,) = expert.remark_many([(ex, gold, "adversarial")])
        assert reply.text == ARITH.remark({"question": ex.question}, gold, "adversarial")
    finally:
        expert.close()


# ----------------------------------------------------------------------------------------------
# Test-time metrics


def eval_traj(task, ex, partner: list[bool], self_: list[bool], llm_stances: list[str] | None = None) -> Trajectory:
    """An evaluate trajectory from hand-written learner answers: partner = [first answer right?,
    right after partner round 1?, ...], self_ = [right after self round 1?, ...]. A scripted
    partner gets the oracle's stance; with llm_stances, an LLM partner takes these."""
    gold = task.gold_rationale(ex)
    text = {True: gold, False: wrong_version(gold)}
    modes = "[partner, self]" if self_ else "[partner]"
    mc = saie_cfg(f"saie.discussion_rounds={max(len(partner) - 1, len(self_))}", f"saie.test_modes={modes}",
                  *(["saie.partner=llm"] if llm_stances else []))
    after_remark, after_self, stances = list(partner[1:]), list(self_), iter(llm_stances or [])

    def answer(r):
        if r.to == "partner":
            if llm_stances:
                return Reply("remark", author="llm:claude-test", stance=next(stances))
            return Reply(f"remark ({r.args[2]})", author="script:x.py")
        if r.prompt == FMT.question(ex.question):
            return Reply(text[partner[0]], author="model:learner")
        if r.prompt.endswith(saie.SELF_CHECK + saie.LEARNER_PREFIX):
            return Reply(text[after_self.pop(0)], author="model:learner")
        return Reply(text[after_remark.pop(0)], author="model:learner")

    traj, _ = drive(saie.rollout(ex, task, mc, "evaluate", FMT), answer)
    return traj


def test_group_metrics_hold_fix_and_rounds(task):
    exs = task.load("test")
    trajs = [
        eval_traj(task, exs[0], [True, True, True], [True, False]),    # held twice
        eval_traj(task, exs[1], [True, False, False], [True, True]),   # swayed, then not fixed
        eval_traj(task, exs[2], [False, True, True], [False, False]),  # fixed, then held
        eval_traj(task, exs[3], [False, False, True], [True, True]),   # fixed in round 2
    ]
    stances = [[m.stance for m in t.messages if m.kind == "remark"] for t in trajs]
    assert stances == [["adversarial", "adversarial"], ["adversarial", "supportive"],
                       ["supportive", "adversarial"], ["supportive", "supportive"]]
    m = saie.group_metrics(trajs)
    assert m["oracle_acc_r1"] == 2 / 4 and m["oracle_acc_r2"] == 3 / 4
    # adversarial on right answers: t0 r1 held, t0 r2 held, t1 r1 swayed, t2 r2 held -> 3/4
    assert m["oracle_hold_rate"] == 3 / 4
    # supportive on wrong answers: t1 r2 not fixed, t2 r1 fixed, t3 r1 not, t3 r2 fixed -> 2/4
    assert m["oracle_fix_rate"] == 2 / 4
    assert m["self_acc_r1"] == 3 / 4 and m["self_acc_r2"] == 2 / 4
    assert "stance_accuracy" not in m and not any(k.startswith("partner_") for k in m)
    assert [t.correct for t in trajs] == [True, True, False, False]  # single pass
    # every metric has a short label in the results table
    assert set(m) <= set(saie.METRIC_LABELS)


def test_group_metrics_with_an_llm_partner(task):
    exs = task.load("test")
    trajs = [eval_traj(task, exs[0], [True, True], [], llm_stances=["supportive"]),
             eval_traj(task, exs[1], [False, True], [], llm_stances=["supportive"])]
    m = saie.group_metrics(trajs)
    assert m["stance_accuracy"] == 1 / 2  # supportive on a right answer is not the oracle's stance
    assert m["partner_fix_rate"] == 1.0 and m["partner_hold_rate"] is None
    assert m["partner_acc_r1"] == 1.0 and not any(k.startswith("oracle_") for k in m)


def test_config_errors_name_the_key():
    with pytest.raises(TripostError, match=r"'saie\.stances' must be one of"):
        load_config(None, ["method=saie", "saie.stances=some"])
    with pytest.raises(TripostError, match=r"'saie\.partner' must be"):
        load_config(None, ["method=saie", "saie.partner=gpt"])
    with pytest.raises(TripostError, match=r"'iterate\.arms\.x\.target' must be one of"):
        load_config(None, ["method=saie", "iterate.arms={x: {target: best}}"])
    with pytest.raises(TripostError, match=r"iterate\.arms\.y: .*stance"):
        load_config(None, ["method=saie", "iterate.arms={y: {stance: supportive}}"])
    with pytest.raises(TripostError, match=r"'saie\.test_modes'"):
        load_config(None, ["method=saie", "saie.test_modes=[partner, debate]"])
    assert get_method("saie") is saie
    cfg = load_config(PROJECT_ROOT / "configs/saie_demo.yaml")
    assert cfg.method == "saie" and cfg.iterate.arms == {"supportive_only": {"stances": "supportive"}}


# ----------------------------------------------------------------------------------------------
# inspect, and resuming after SIGKILL


def test_inspect_shows_a_discussion(discussion, tmp_path, tiny_model_dir, capsys):
    from tripost.cli import main

    traj, ex, gold = discussion
    io.write_jsonl(tmp_path / "attempts.jsonl", [traj])
    assert main(["inspect", str(tmp_path / "attempts.jsonl")]) == 0
    out = capsys.readouterr().out
    for line in ("-- round 0", "learner attempt by model:learner  wrong", "-- round 1",
                 "partner remark [supportive] by script:x.py", "learner update by model:learner  right",
                 "-- round 2", "partner remark [adversarial] by script:x.py"):
        assert line in out, out
    io.write_jsonl(tmp_path / "learner.jsonl", saie.examples([traj], [(ex, gold)], saie_cfg(), FMT))
    assert main(["inspect", str(tmp_path / "learner.jsonl"), "--kind", "adversarial_gold", "--tokens",
                 "--tokenizer", str(tiny_model_dir)]) == 0
    out = capsys.readouterr().out
    assert "[partner w=0] \nPartner: remark (adversarial)" in out
    assert "[learner w=1] (1)" in out
    pairs = re.findall(r"\[(.*?)\|([\d.]+)\]", out.split("tokens by weight")[1], re.DOTALL)
    untrained = "".join(t for t, w in pairs if float(w) == 0)
    trained = "".join(t for t, w in pairs if float(w) > 0)
    assert "Partner: remark (adversarial)" in untrained and "Partner" not in trained
    assert trained.strip().startswith("(1)") and gold.splitlines()[-1] in trained


def env() -> dict:
    return dict(os.environ, OMP_NUM_THREADS="1", NO_COLOR="1",
                PYTHONPATH=os.pathsep.join([str(PROJECT_ROOT)] + [p for p in [os.environ.get("PYTHONPATH")] if p]))


def test_sigkill_inside_the_discussion_then_resume(tmp_path, tiny_model_dir):
    """`tripost collect` with the SAIE episode, killed once records are being written (the questions
    in flight are mid-discussion), then rerun: the same records as an uninterrupted run."""
    args = ["method=saie", "task.max_train=12", "collect.batch_size=2", "collect.max_new_tokens=12",
            "saie.discussion_rounds=2", "edit.script_workers=1"]

    def collect(out: Path):
        return [sys.executable, "-m", "tripost", "collect", "--model", str(tiny_model_dir), "--out", str(out), *args]

    from tripost.collect import collect as run_collect, partner_specs

    ref = tmp_path / "ref.jsonl"  # the uninterrupted run, in this process
    cfg = load_config(None, args)
    run_collect(get_task(cfg.task), cfg.collect, "saie", cfg.saie, False, {"learner": tiny_model_dir}, ref,
                partners=partner_specs(saie, cfg.saie, "collect", cfg.edit), edit_cfg=cfg.edit, progress=False)
    want = sorted(ref.read_text().splitlines())
    assert len(want) == 12  # two windows of 8 episodes (4 batches of 2) and 4
    assert all(len(t.messages) == 5 and t.messages[1].stance for t in read_trajectories(ref))

    out = tmp_path / "killed.jsonl"
    proc = subprocess.Popen(collect(out), env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None and not (out.exists() and out.read_text().count("\n")):
        time.sleep(0.02)
    assert proc.poll() is None, "collect finished before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    written = out.read_text().count("\n")
    assert 0 < written < 12
    again = subprocess.run(collect(out), env=env(), capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    assert f"({written} already there)" in again.stdout
    assert sorted(out.read_text().splitlines()) == want
