"""ScriptExpert: user feedback scripts run in worker processes; every kind of misbehaviour is
contained, becomes a drop reason, and later requests still work. Fixture scripts: tests/data/scripts/.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from tripost.config import load_config
from tripost.errors import TripostError
from tripost.experts import Reply, ScriptExpert, example_dict, make_expert
from tripost.tasks.base import make_example

SCRIPTS = Path(__file__).parent / "data/scripts"
EX = make_example("toy", "(1 + 2) =", "3")


def _cfg(**edit):
    overrides = [("edit.script_timeout_s", 1.0), ("edit.script_memory_mb", 300), ("edit.script_workers", 2)]
    return load_config(None, overrides + [(f"edit.{k}", v) for k, v in edit.items()])


@pytest.fixture(scope="module")
def misbehaving():
    expert = make_expert(f"script:{SCRIPTS}/misbehaving.py", _cfg().edit)
    yield expert
    expert.close()


def test_every_failure_is_contained_and_later_requests_work(misbehaving):
    kinds = ["a", "raise", "b", "hang", "c", "exit", "d", "sysexit", "e", "oom", "int", "none", "print", "f"]
    replies = misbehaving.feedback_many([(EX, k) for k in kinds])
    got = dict(zip(kinds, replies))
    for ok in "abcdef":
        assert got[ok] == Reply(f"ok: {ok} (3)"), ok
    assert got["raise"].error == "script_error"
    assert got["raise"].detail.startswith("ValueError: bad step (misbehaving.py:")
    assert got["hang"].error == "script_timeout"
    assert got["exit"].error == "script_crashed" and "code 1" in got["exit"].detail
    assert got["sysexit"].error == "script_crashed" and "code 3" in got["sysexit"].detail
    assert got["oom"].error == "script_out_of_memory"
    assert got["int"].error == "script_bad_return" and "int" in got["int"].detail
    assert got["none"].error == "script_no_feedback"
    assert got["print"] == Reply("ok: print (3)")  # print() in a script cannot corrupt the protocol
    # A crash, timeout or bad answer on a request is a verdict on that input, not a transient failure.
    assert not any(r.transient for r in replies)
    # Killed workers were replaced: the pool is whole and answers again.
    assert len(misbehaving.workers) == 2 and all(w.proc.poll() is None for w in misbehaving.workers)
    assert misbehaving.feedback_many([(EX, "again")]) == [Reply("ok: again (3)")]


def test_many_requests_come_back_in_order(misbehaving):
    attempts = [f"attempt {i}" for i in range(3000)]
    replies = misbehaving.feedback_many([(EX, a) for a in attempts])
    assert [r.text for r in replies] == [f"ok: {a} (3)" for a in attempts]
    assert misbehaving.feedback_many([]) == []


def test_failures_inside_a_big_batch_blame_only_their_request(misbehaving):
    attempts = [f"x{i}" for i in range(600)]
    attempts[17], attempts[300], attempts[599] = "exit", "raise", "exit"
    replies = misbehaving.feedback_many([(EX, a) for a in attempts])
    errors = {i: r.error for i, r in enumerate(replies) if r.error}
    assert errors == {17: "script_crashed", 300: "script_error", 599: "script_crashed"}


def test_memory_limit_applies_to_the_worker():
    expert = ScriptExpert(SCRIPTS / "misbehaving.py", _cfg(script_workers=1).edit)
    try:
        assert expert.feedback_many([(EX, "oom")])[0].error == "script_out_of_memory"
        assert expert.feedback_many([(EX, "fine")]) == [Reply("ok: fine (3)")]
    finally:
        expert.close()


def test_improve_and_provenance():
    cfg = _cfg(script_workers=1)
    path = SCRIPTS / "good.py"
    expert = make_expert(f"script:{path}", cfg.edit, role="both")
    try:
        assert expert.name == "script:good.py"
        assert expert.provenance["script_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
        (reply,) = expert.improve_many([(EX, "(1) x\n(Final response) So the answer is 4.", "wrong")])
        assert reply.text.endswith("So the answer is 3.")
        (fb,) = expert.feedback_many([(EX, reply.text)])
        assert fb.text.endswith("The final response is also correct.")
    finally:
        expert.close()
    assert expert.workers == []


def test_example_reaches_the_script_as_a_plain_dict():
    d = example_dict(EX)
    assert d == {"id": EX.id, "task": "toy", "question": "(1 + 2) =", "answer": "3", "subtask": "", "seen": True}
    assert example_dict(d) == d


def test_bad_scripts_are_user_errors_naming_the_path(tmp_path):
    cfg = _cfg(script_workers=1)
    missing = tmp_path / "no_such_script.py"
    with pytest.raises(TripostError, match=str(missing)):
        make_expert(f"script:{missing}", cfg.edit)
    with pytest.raises(TripostError, match=r"no_feedback\.py.*no `feedback"):
        make_expert(f"script:{SCRIPTS}/no_feedback.py", cfg.edit)
    with pytest.raises(TripostError, match=r"broken_import\.py.*this_module_does_not_exist"):
        make_expert(f"script:{SCRIPTS}/broken_import.py", cfg.edit)
    with pytest.raises(TripostError, match=r"feedback_only\.py.*no `improve"):
        make_expert(f"script:{SCRIPTS}/feedback_only.py", cfg.edit, role="improvement")
    with pytest.raises(TripostError, match="edit.feedback"):
        make_expert("script:", cfg.edit)
    # A script without `improve` is fine for feedback alone.
    expert = make_expert(f"script:{SCRIPTS}/feedback_only.py", cfg.edit)
    expert.close()


def test_builtin_scripts_resolve_from_the_project_root(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # relative to the project root, not the working directory
    if not (Path(__file__).resolve().parents[1] / "feedback_scripts/word_sorting.py").exists():
        pytest.skip("feedback_scripts/word_sorting.py not written yet")
    expert = make_expert("script:feedback_scripts/word_sorting.py", _cfg(script_workers=1).edit, role="both")
    try:
        assert expert.name == "script:word_sorting.py" and "improve" in expert.functions
    finally:
        expert.close()


def test_workers_end_when_closed():
    expert = ScriptExpert(SCRIPTS / "good.py", _cfg().edit)
    pids = [w.proc.pid for w in expert.workers]
    expert.close()
    for pid in pids:
        with pytest.raises(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)  # already reaped: no zombie left behind


def test_an_interrupted_call_leaves_the_expert_usable(monkeypatch):
    expert = ScriptExpert(SCRIPTS / "misbehaving.py", _cfg(script_workers=1, script_timeout_s=30).edit)
    try:
        import selectors

        calls = {"n": 0}
        real_select = selectors.DefaultSelector.select

        def interrupt_once(self, timeout=None):
            calls["n"] += 1
            if calls["n"] == 1:
                raise KeyboardInterrupt
            return real_select(self, timeout)

        monkeypatch.setattr(selectors.DefaultSelector, "select", interrupt_once)
        with pytest.raises(KeyboardInterrupt):
            expert.feedback_many([(EX, "hang")])
        assert expert.workers == []  # the busy worker was ended
        assert expert.feedback_many([(EX, "after")]) == [Reply("ok: after (3)")]
    finally:
        expert.close()
