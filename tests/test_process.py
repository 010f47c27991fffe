"""Trajectories -> training examples: example kinds, segments and weights, dedupe, length limit,
rebalancing (TriPosT's `select`), stats; rationale SFT data."""

from __future__ import annotations

import json

import pytest

from tripost import io, records, steps
from tripost.config import TripostConfig, load_config, method_config
from tripost.methods.tripost import FEEDBACK_PREFIX, UPDATE_PREFIX, select
from tripost.process import process as process_stage
from tripost.process import rationale_sft
from tripost.records import Message, Segment, Trajectory, TrainingExample
from tripost.tasks import get_task

from conftest import BIGBENCH_DIR

WRONG = "(1) Let's calculate (2 + 3) = 6.\n(Final response) So the answer is 6."
RIGHT = "(1) Let's calculate (2 + 3) = 5.\n(Final response) So the answer is 5."
FB_WRONG = steps.feedback_wrong(0, "1", "(2 + 3) = 6", "(2 + 3) is not equal to 6")
FB_RIGHT = steps.feedback_correct(1)


def _traj(q, turns, status="kept"):
    """An edited trajectory: the model's attempts, the expert's feedback on each."""
    messages = []
    for i, (a, f) in enumerate(turns):
        messages.append(Message("learner", "attempt" if i == 0 else "update", a, "model:learner", round=i,
                                answer=a[-2], correct=a == RIGHT))
        if f is not None:
            messages.append(Message("learner", "feedback", f, "script:x.py", round=i))
    return Trajectory(id=io.content_id(q), method="tripost", task="multistep_arithmetic", question=q, answer="5",
                      messages=messages, status=status, correct=turns[-1][0] == RIGHT, stage="edit")


TRIPOST_KEYS = {"p", "include_gold", "w", "attempt_weight"}  # TriPosT's own settings, in the `tripost` section


def _cfg(**kw):
    return load_config(None, [("task.name", "multistep_arithmetic"), ("task.max_train", 20)]
                       + [(f"{'tripost' if k in TRIPOST_KEYS else 'process'}.{k}", v) for k, v in kw.items()])


def process(cfg, trajectories, tokenizer, out):
    return process_stage(get_task(cfg.task), cfg.process, cfg.method, method_config(cfg), cfg.chat_template,
                         trajectories, tokenizer, out, cfg.edit)


def rationales(cfg, tokenizer, out):
    """Rationale SFT data (what `tripost process --rationales` writes) for the model "base"."""
    return rationale_sft(get_task(cfg.task), cfg.process, cfg.chat_template, tokenizer, out, "base", cfg.edit)


def test_kinds_spans_dedupe_and_dropped(tmp_path):
    trajs = [
        _traj("(2 + 3) =", [(WRONG, FB_WRONG), (RIGHT, FB_RIGHT)]),          # 1 improvement + 1 terminal
        _traj("(2 + 3) =", [(WRONG, FB_WRONG), (RIGHT, FB_RIGHT)]),          # exact duplicates
        _traj("(1 + 4) =", [(WRONG, FB_WRONG), (RIGHT, None)]),  # 1 improvement, no terminal
        _traj("(0 + 5) =", [(WRONG, FB_WRONG)], "dropped"),
    ]
    io.write_jsonl(tmp_path / "t.jsonl", trajs)
    stats = process(_cfg(include_gold=False, p=0.5), [tmp_path / "t.jsonl"], None, tmp_path / "out")
    learner = stats["models"]["learner"]
    assert learner["built"] == {"improvement": 3, "terminal": 2, "total": 5}
    assert learner["drops"]["duplicate"] == 2 and stats["drops"]["not_kept_dropped"] == 1
    ex = records.read_examples(tmp_path / "out" / "learner.jsonl")
    assert all(e.model == "learner" and e.method == "tripost" for e in ex)
    imp = next(e for e in ex if e.kind == "improvement")
    question, attempt, feedback, update = imp.segments
    assert question.text in (steps.prompt("(2 + 3) ="), steps.prompt("(1 + 4) =")) and attempt.text == WRONG
    assert feedback.text == FEEDBACK_PREFIX + FB_WRONG
    assert update.text == UPDATE_PREFIX + RIGHT
    # The question is context; the attempt has weight 1, the feedback and update tripost.w.
    assert [(s.speaker, s.weight) for s in imp.segments] == [("user", 0.0), ("learner", 1.0), ("learner", 1.5),
                                                             ("learner", 1.5)]
    term = next(e for e in ex if e.kind == "terminal")
    assert [s.weight for s in term.segments] == [0.0, 1.0, 1.5]
    assert term.segments[2].text == FEEDBACK_PREFIX + FB_RIGHT
    saved = json.loads((tmp_path / "out" / "stats.json").read_text())
    assert saved["models"]["learner"]["final"]["total"] == len(ex)


def test_attempt_weight_applies_to_the_wrong_attempt_only(tmp_path):
    """tripost.attempt_weight weighs the attempt the feedback finds wrong (improvement examples);
    a terminal example's final, correct attempt keeps weight 1."""
    io.write_jsonl(tmp_path / "t.jsonl", [_traj("(2 + 3) =", [(WRONG, FB_WRONG), (RIGHT, FB_RIGHT)])])
    process(_cfg(include_gold=False, p=0.5, attempt_weight=0.0), [tmp_path / "t.jsonl"], None, tmp_path / "out")
    ex = {e.kind: e for e in records.read_examples(tmp_path / "out" / "learner.jsonl")}
    assert [s.weight for s in ex["improvement"].segments] == [0.0, 0.0, 1.5, 1.5]
    assert [s.weight for s in ex["terminal"].segments] == [0.0, 1.0, 1.5]


def test_gold_examples_and_rationale_sft(tmp_path):
    stats = process(_cfg(), [], None, tmp_path / "a")
    gold = [e for e in records.read_examples(tmp_path / "a" / "learner.jsonl") if e.kind == "gold"]
    assert stats["models"]["learner"]["built"]["gold"] == 20 and gold
    fb = gold[0].segments[2]
    assert fb.text.startswith(FEEDBACK_PREFIX) and steps.says_correct(fb.text[len(FEEDBACK_PREFIX):])
    rationales(_cfg(), None, tmp_path / "b")
    only = records.read_examples(tmp_path / "b" / "base.jsonl")
    assert len(only) == 20 and all(e.kind == "rationale" and e.model == "base" for e in only)
    assert all([(s.speaker, s.weight) for s in e.segments] == [("user", 0.0), ("base", 1.0)] for e in only)


def test_token_limit_drops_long_examples(tmp_path, tiny_model_dir):
    cfg = _cfg(max_tokens=60)
    stats = rationales(cfg, tiny_model_dir, tmp_path / "o")
    assert stats["drops"]["too_long"] > 0
    assert stats["final"]["total"] == 20 - stats["drops"]["too_long"]


def _examples(n_imp, n_other):
    out = []
    for i in range(n_imp + n_other):
        kind = "improvement" if i < n_imp else ("terminal" if i % 2 else "gold")
        out.append(TrainingExample(id=str(i), method="tripost", model="learner", kind=kind,
                                   segments=[Segment(str(i), 1.0, "learner")], source_id=str(i)))
    return out


def rebalance(examples, p, seed):
    return select("learner", examples, TripostConfig(p=p), seed)


@pytest.mark.parametrize("n_imp,n_other", [(30, 10), (5, 40), (43, 57), (7, 3), (100, 1)])
def test_rebalance_hits_p_within_one_example(n_imp, n_other):
    p = 0.43
    kept, report = rebalance(_examples(n_imp, n_other), p, seed=0)
    k_imp = sum(e.kind == "improvement" for e in kept)
    assert report["reached"] is True
    assert abs(k_imp - p * len(kept)) <= 1
    assert len({e.id for e in kept}) == len(kept)  # never duplicated
    assert kept == rebalance(_examples(n_imp, n_other), p, seed=0)[0]  # deterministic


@pytest.mark.parametrize("n_imp,n_other", [(0, 10), (10, 0)])
def test_rebalance_reports_shortfall(tmp_path, n_imp, n_other):
    kept, report = rebalance(_examples(n_imp, n_other), 0.43, seed=0)
    assert report["reached"] is False and "shortfall" in report["action"]
    assert len(kept) == n_imp + n_other


def test_shortfall_in_stats_and_summary(tmp_path, capsys):
    from tripost.process import summary

    io.write_jsonl(tmp_path / "t.jsonl", [_traj("(2 + 3) =", [(RIGHT, FB_RIGHT)])])
    stats = process(_cfg(include_gold=False), [tmp_path / "t.jsonl"], None, tmp_path / "o")
    assert stats["models"]["learner"]["select"]["reached"] is False
    assert "NOT reached" in summary(stats)


@pytest.mark.skipif(not (BIGBENCH_DIR / "date_understanding.json").is_file(), reason="no BIG-bench data in ../shared")
def test_llm_writes_gold_rationales_for_tasks_without_a_script(tmp_path, monkeypatch):
    """date_understanding has no scripted rationale: with an LLM expert, process asks it for one
    per train question, keeps only those that reach the gold answer, and a rerun pays nothing."""
    from fake_messages_server import FakeMessagesServer, tool_name, tool_use, user_text
    from tripost.tasks import get_task

    data_dir = BIGBENCH_DIR
    cfg = load_config(None, [("task.name", "date_understanding"), ("task.data_dir", str(data_dir)),
                             ("task.max_train", 6), ("edit.feedback", "llm"), ("edit.improvement", "llm"),
                             ("edit.api.api_key_env", "TRIPOST_TEST_KEY"), ("edit.api.max_retries", 0)])
    answers = {ex.question: ex.answer for ex in get_task(cfg.task).load("train")}
    wrong = sorted(answers)[0]  # this one gets a rationale that reaches the wrong letter

    def rule(body):
        assert tool_name(body) == "write_rationale"
        text = user_text(body)
        q = next(q for q in answers if q in text)
        letter = "(Z)" if q == wrong else answers[q]
        return tool_use("write_rationale", {"rationale": f"(1) Read the options.\n"
                                                          f"(Final response) So the answer is {letter}."})

    monkeypatch.setenv("TRIPOST_TEST_KEY", "sk-test")
    with FakeMessagesServer(rule=rule) as server:
        cfg.edit.api.base_url = server.url
        stats = rationales(cfg, None, tmp_path / "out")
        assert stats["final"]["rationale"] == 5
        assert stats["drops"]["gold_llm_wrong_rationale"] == 1
        n_requests = len(server.requests)
        assert n_requests == 6
        rationales(cfg, None, tmp_path / "out")  # rerun: all from the cache
        assert len(server.requests) == n_requests
    ex = records.read_examples(tmp_path / "out" / "base.jsonl")[0]
    assert ex.kind == "rationale" and ex.text.endswith(f"So the answer is {answers[ex.text[3:ex.text.index(chr(10) + 'A: ')]]}.")
