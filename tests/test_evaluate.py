"""evaluate: the self-improvement stop rules on hand-written model outputs, the multi-call loop,
metrics on hand-made trajectories, and an end-to-end run on the tiny model."""

from __future__ import annotations

import json

import torch

import tripost.tasks
from tripost import engine, steps
from tripost.cli import main as cli_main
from tripost.config import GenerationConfig, TripostConfig, load_config, method_config
from tripost.evaluate import compute_metrics, evaluate, format_table
from tripost.formats import prompt_format
from tripost.methods import tripost as tp
from tripost.methods.tripost import FEEDBACK_PREFIX, UPDATE_PREFIX, State, advance
from tripost.records import Message, Trajectory, read_trajectories

from conftest import TINY_OVERRIDES, ToyArithmetic

PLAIN = prompt_format(False)

WRONG = "(1) Let's calculate (2 + 3) = 6.\n(Final response) So the answer is 6."
RIGHT = "(1) Let's calculate (2 + 3) = 5.\n(Final response) So the answer is 5."
OTHER = "(1) Let's calculate (2 + 3) = 7.\n(Final response) So the answer is 7."
FB_WRONG = steps.feedback_wrong(0, "1", "(2 + 3) = 6", "(2 + 3) is not equal to 6")
FB_RIGHT = steps.feedback_correct(1)
Q = "(2 + 3) ="


def call1(attempt, feedback=None, update=None):
    """What a model writes after steps.prompt(question)."""
    text = attempt
    if feedback is not None:
        text += FEEDBACK_PREFIX + feedback
    if update is not None:
        text += UPDATE_PREFIX + update
    return text


def later(feedback, update=None):
    """What a model writes after `prompt + attempt + "\\nFeedback: "`."""
    return feedback + (UPDATE_PREFIX + update if update is not None else "")


def test_stop_when_feedback_says_correct():
    s = advance(State(), call1(RIGHT, FB_RIGHT), max_calls=3)
    assert s.stop == "feedback_correct" and s.calls == 1
    assert [(t.attempt, t.feedback) for t in s.turns] == [(RIGHT, FB_RIGHT)]


def test_stop_when_no_feedback_and_clip_runaway_question():
    s = advance(State(), RIGHT + "\nQ: (1 + 1) =\nA: (1) nonsense", max_calls=3)
    assert s.stop == "no_feedback" and s.turns[0].attempt == RIGHT and s.turns[0].feedback is None


def test_update_then_correct_over_two_calls():
    s = advance(State(), call1(WRONG, FB_WRONG, RIGHT), max_calls=3)
    assert s.stop is None and [t.attempt for t in s.turns] == [WRONG, RIGHT]
    assert s.next_prompt(PLAIN, Q) == steps.prompt(Q) + RIGHT + FEEDBACK_PREFIX
    advance(s, later(FB_RIGHT), max_calls=3)
    assert s.stop == "feedback_correct" and s.calls == 2
    assert [(t.attempt, t.feedback, t.feedback_by) for t in s.turns] == [
        (WRONG, FB_WRONG, "model:learner"), (RIGHT, FB_RIGHT, "model:learner")]


def test_no_progress_stop():
    s = advance(State(), call1(WRONG, FB_WRONG, WRONG + "\n"), max_calls=3)
    assert s.stop == "no_progress" and [t.attempt for t in s.turns] == [WRONG]


def test_repetition_stop():
    s = advance(State(), call1(WRONG, FB_WRONG, OTHER), max_calls=5)
    advance(s, later(FB_WRONG, WRONG), max_calls=5)  # back to the first attempt
    assert s.stop == "repetition" and s.calls == 2
    assert [t.attempt for t in s.turns] == [WRONG, OTHER, WRONG]


def test_max_calls_stop():
    s = advance(State(), call1(WRONG, FB_WRONG, OTHER), max_calls=2)
    assert s.stop is None
    advance(s, later(FB_WRONG, RIGHT), max_calls=2)
    assert s.stop == "max_calls" and s.calls == 2
    # The last update was never critiqued; it is the final answer.
    assert s.turns[-1].attempt == RIGHT and s.turns[-1].feedback is None
    assert advance(State(), call1(WRONG, FB_WRONG, OTHER), max_calls=1).stop == "max_calls"


def test_truncated_update_is_dropped():
    s = advance(State(), call1(WRONG, FB_WRONG, "(1) Let's calc"), max_calls=3, truncated=True)
    assert s.stop == "truncated" and [t.attempt for t in s.turns] == [WRONG]
    s = advance(State(), "(1) Let's calc", max_calls=3, truncated=True)
    assert s.stop == "truncated" and s.turns[0].attempt == "(1) Let's calc"
    # Ran on into a new question: the answer itself was complete.
    s = advance(State(), RIGHT + "\nQ: (1 + 1) =\nA: (1", max_calls=3, truncated=True)
    assert s.stop == "no_feedback"


def test_feedback_without_update_stops():
    s = advance(State(), call1(WRONG, FB_WRONG), max_calls=3)
    assert s.stop == "no_update" and s.turns[-1].feedback == FB_WRONG


def test_rollout_batches_calls_across_questions(monkeypatch):
    """Scripted model: question i needs i updates to reach the gold rationale; every call level is
    one batched generate call."""
    task = ToyArithmetic(load_config().task)
    examples = task.load("test")[:5]
    calls, seen_calls = [], {}

    def attempt(k):
        return f"(1) try {k}\n{steps.final_line('x')}"

    def fake_generate(model, tokenizer, prompts, gen, *args):
        calls.append(len(prompts))
        out = []
        for p in prompts:
            ex = next(e for e in examples if p.startswith(steps.prompt(e.question)))
            need, gold = examples.index(ex), task.gold_rationale(ex)
            c = seen_calls[ex.id] = seen_calls.get(ex.id, 0) + 1
            update = gold if c == need else attempt(c)
            if c == 1:
                out.append(call1(gold, FB_RIGHT) if need == 0 else call1(attempt(0), FB_WRONG, update))
            elif p.endswith(gold + FEEDBACK_PREFIX):
                out.append(later(FB_RIGHT))
            else:
                out.append(later(FB_WRONG, update))
        return [(text, False) for text in out]

    class Tok:  # only lengths are needed for sorting
        def __call__(self, texts, **kwargs):
            return {"input_ids": [list(t) for t in texts]}

    class Model(torch.nn.Linear):  # a small CPU module
        device = torch.device("cpu")

    # The real ModelAnswerer and driver, with a stand-in model and tokenizer.
    monkeypatch.setattr(engine, "load_model", lambda model_dir: (Model(1, 1), Tok()))
    monkeypatch.setattr(engine, "generate_batch", fake_generate)
    answerer = engine.ModelAnswerer("learner", "stand-in", GenerationConfig(batch_size=8))
    mc = TripostConfig(evaluate_max_calls=3, judge=None)  # no judge: only the learner answers
    episodes = [tp.rollout(ex, task, mc, "evaluate", answerer.format) for ex in examples]
    trajs = {t.id: t for batch in engine.drive(episodes, {"learner": answerer}, window=32) for t in batch}
    assert calls == [5, 4, 3]  # every level batched across the questions still active
    by_need = [trajs[ex.id] for ex in examples]
    assert [t.stop for t in by_need] == [
        "feedback_correct", "feedback_correct", "feedback_correct", "max_calls", "max_calls"]
    # Question 3 reached the gold answer on its last allowed call; question 4 never did.
    assert [t.correct for t in by_need] == [True, True, True, True, False]
    assert all(t.status == "kept" and t.stage == "evaluate" for t in by_need)
    assert [len(tp.turns_of(t)) for t in by_need] == [1, 2, 3, 4, 4]


def traj(i, turns_correct, subtask="a", seen=True, stop="feedback_correct"):
    """A hand-made trajectory whose turn k attempt is right iff turns_correct[k]."""
    messages = [Message("learner", "attempt" if k == 0 else "update", "right" if ok else "wrong", "model:learner",
                        round=k, correct=ok) for k, ok in enumerate(turns_correct)]
    return Trajectory(id=str(i), method="tripost", task="t", question=str(i), answer="", subtask=subtask,
                      seen=seen, messages=messages, status="kept", correct=turns_correct[-1], stop=stop)


def test_metrics_on_hand_made_trajectories():
    trajs = [
        traj(0, [True]),                        # right, no update
        traj(1, [False]),                       # wrong, no update
        traj(2, [False, True]),                 # fixed by an update
        traj(3, [True, False], stop="max_calls"),  # broken by an update
        traj(4, [False, False, True], subtask="b", seen=False),  # fixed after two updates
        traj(5, [False, False], subtask="b", seen=False, stop="repetition"),
    ]
    m = compute_metrics(trajs, tp.group_metrics)
    assert m["n"] == 6
    assert m["accuracy"] == 3 / 6 and m["first_accuracy"] == 2 / 6
    assert m["si_frequency"] == 4 / 6 and m["si_contribution"] == 2 / 6 and m["si_harm"] == 1 / 6
    assert abs(m["accuracy"] - (m["first_accuracy"] + m["si_contribution"] - m["si_harm"])) < 1e-12
    assert m["seen"]["n"] == 4 and m["seen"]["accuracy"] == 2 / 4
    assert m["unseen"]["n"] == 2 and m["unseen"]["si_contribution"] == 1 / 2
    assert set(m["subtasks"]) == {"a", "b"} and m["subtasks"]["b"]["accuracy"] == 1 / 2
    assert m["stops"] == {"feedback_correct": 4, "max_calls": 1, "repetition": 1}
    table = format_table(m)
    lines = table.splitlines()
    assert lines[0].split()[:3] == ["group", "n", "accuracy"] and "50.0%" in lines[2]
    assert len({len(line) for line in lines[:-1]}) == 1  # aligned columns
    assert compute_metrics([], tp.group_metrics)["accuracy"] is None


def test_evaluate_end_to_end_and_resume(tmp_path, tiny_model_dir, monkeypatch):
    overrides = TINY_OVERRIDES + [("task.max_test", 6)]
    cfg = load_config(None, overrides)
    task = ToyArithmetic(cfg.task)
    metrics = evaluate(task, cfg.evaluate, cfg.method, method_config(cfg), cfg.chat_template,
                       {"learner": tiny_model_dir}, tmp_path, split="test", progress=False)
    assert metrics["n"] == 6 and 0.0 <= metrics["accuracy"] <= 1.0
    assert json.loads((tmp_path / "metrics.json").read_text())["n"] == 6
    assert len(read_trajectories(tmp_path / "predictions.jsonl")) == 6
    # A rerun (the command, which also writes config.yaml) finds every id done and generates nothing.
    monkeypatch.setattr(engine, "generate_batch", lambda *a: (_ for _ in ()).throw(AssertionError))
    monkeypatch.setattr(engine, "load_model", lambda *a: (_ for _ in ()).throw(AssertionError))
    monkeypatch.setattr(tripost.tasks, "get_task", lambda task_cfg: task)
    args = ["evaluate", "--model", str(tiny_model_dir), "--out", str(tmp_path)] + [f"{k}={v}" for k, v in overrides]
    assert cli_main(args) == 0
    assert json.loads((tmp_path / "metrics.json").read_text())["n"] == 6
    assert len(read_trajectories(tmp_path / "predictions.jsonl")) == 6
    assert (tmp_path / "config.yaml").is_file()
