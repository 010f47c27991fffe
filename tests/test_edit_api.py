"""`tripost edit` with LLM feedback and improvement, against the local fake Messages server.

The server (in this process) judges attempts against the scripted gold rationales; `tripost edit`
runs as a subprocess so it can be SIGKILLed mid-run while the server lives on. Checked: a killed
and rerun edit writes the same trajectories as an uninterrupted one, and the server never answers
the same request twice (a rerun pays for nothing twice); batch mode gives the same trajectories;
the key never reaches an output file.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fake_messages_server import FakeMessagesServer, gold_rule
from tripost import io, records, steps
from tripost.config import load_config
from tripost.methods.tripost import turns_of
from tripost.records import Message, Trajectory

ROOT = Path(__file__).resolve().parents[1]
KEY_ENV = "TRIPOST_TEST_API_KEY"
SECRET = "sk-test-edit-secret-42"
OVERRIDES = ["task.name=multistep_arithmetic", "task.max_train=12", "edit.feedback=llm", "edit.improvement=llm",
             f"edit.api.api_key_env={KEY_ENV}", "edit.api.model=claude-test", "edit.api.concurrency=2",
             "edit.api.retry_base_s=0.01", "edit.batch_size=4"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """12 attempts: a third right, the rest with one wrong number in some step."""
    from tripost.tasks import get_task

    cfg = load_config(None, [("task.name", "multistep_arithmetic"), ("task.max_train", 12)])
    task = get_task(cfg.task)
    examples = task.load("train")
    golds = {ex.question: task.gold_rationale(ex) for ex in examples}
    trajs = []
    for i, ex in enumerate(examples):
        attempt = golds[ex.question]
        if i % 3:
            st = steps.parse_steps(attempt)
            k = 1 + i % (len(st) - 2)
            st[k] = steps.Step(st[k].label, st[k].text[:-1] + "1.")
            attempt = steps.render_steps(st)
        trajs.append(Trajectory.of(ex, "tripost", status="kept", stage="collect",
                                   messages=[Message("learner", "attempt", attempt, "model:learner")]))
    path = tmp_path_factory.mktemp("attempts") / "attempts.jsonl"
    io.write_jsonl(path, trajs)
    return path, golds


def edit_cmd(attempts: Path, out: Path, url: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "tripost", "edit", "--attempts", str(attempts), "--out", str(out),
            *OVERRIDES, f"edit.api.base_url={url}", *extra]


def env() -> dict:
    return dict(os.environ, **{KEY_ENV: SECRET}, PYTHONPATH=str(ROOT))


def run_edit(attempts, out, url, *extra):
    proc = subprocess.run(edit_cmd(attempts, out, url, *extra), env=env(), capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def outcome(t: Trajectory) -> str:
    """dropped, correct (kept, right on the first attempt) or improved (kept, with updates)."""
    if t.status != "kept":
        return t.status
    return "correct" if len(turns_of(t)) == 1 else "improved"


def trajectories(out: Path) -> dict:
    kept = records.read_trajectories(out / "trajectories.jsonl")
    dropped = records.read_trajectories(out / "dropped.jsonl") if (out / "dropped.jsonl").exists() else []
    return {t.id: (outcome(t), t.drop_reason,
                   [(u.attempt, u.attempt_by, u.feedback, u.feedback_by) for u in turns_of(t)])
            for t in kept + dropped}


def cache_files(out: Path) -> int:
    return len(list((out / "api_cache").rglob("*.json"))) if (out / "api_cache").exists() else 0


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory):
    """An uninterrupted run: its trajectories and the requests the server answered."""
    attempts, golds = data
    out = tmp_path_factory.mktemp("reference")
    with FakeMessagesServer(rule=gold_rule(golds)) as server:
        proc = run_edit(attempts, out, server.url)
        answered = [r.hash for r in server.answered]
    return out, trajectories(out), answered, proc


def test_uninterrupted_run_edits_and_keeps_the_key_out_of_files(reference):
    out, trajs, answered, proc = reference
    outcomes = sorted(o for o, _, _ in trajs.values())
    assert outcomes == ["correct"] * 4 + ["improved"] * 8
    for outcome, _, turns in trajs.values():
        assert all(t[3] == "llm:claude-test" for t in turns)
        assert steps.says_correct(turns[-1][2])
        if outcome == "improved":
            assert turns[1][1] == "llm:claude-test"
    assert len(answered) == len(set(answered)) == cache_files(out)
    assert "api claude-test:" in proc.stderr and "estimated cost $" in proc.stderr
    for path in out.rglob("*"):
        if path.is_file():
            assert SECRET not in path.read_text(errors="replace"), path


def test_sigkill_mid_run_then_rerun_matches_and_pays_nothing_twice(data, reference, tmp_path):
    attempts, golds = data
    _, want, ref_answered, _ = reference
    out = tmp_path / "edit"
    with FakeMessagesServer(rule=gold_rule(golds)) as server:
        n_before_kill = len(ref_answered) // 2
        server.hold_after(n_before_kill)
        proc = subprocess.Popen(edit_cmd(attempts, out, server.url), env=env(),
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.time() + 90
        # wait until the client has cached every answered response and is waiting on a held one
        while time.time() < deadline and proc.poll() is None:
            if len(server.answered) == n_before_kill and cache_files(out) == n_before_kill \
                    and len(server.message_requests) > n_before_kill:
                break
            time.sleep(0.05)
        assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        server.release()
        first_run = [r.hash for r in server.answered]
        assert len(first_run) == n_before_kill
        run_edit(attempts, out, server.url)
        answered = [r.hash for r in server.answered]
    assert len(answered) == len(set(answered)), "a request was answered twice"
    assert sorted(answered) == sorted(ref_answered)
    assert trajectories(out) == want


def test_batch_mode_gives_the_same_trajectories(data, reference, tmp_path):
    from tripost.config import method_config
    from tripost.edit import edit
    from tripost.tasks import get_task

    attempts, golds = data
    _, want, ref_answered, _ = reference
    os.environ[KEY_ENV] = SECRET
    try:
        with FakeMessagesServer(rule=gold_rule(golds)) as server:
            cfg = load_config(None, OVERRIDES + [f"edit.api.base_url={server.url}", "edit.api.batch=true",
                                                 "edit.api.batch_poll_s=0.01"])
            edit(get_task(cfg.task), cfg.edit, cfg.method, method_config(cfg), attempts, tmp_path, progress=False)
            assert not server.message_requests
            assert sorted(r.hash for r in server.answered) == sorted(ref_answered)
            assert len(server.batches) >= 2  # one per round of feedback / improvement requests
    finally:
        del os.environ[KEY_ENV]
    assert trajectories(tmp_path) == want
