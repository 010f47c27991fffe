"""Feedback-script workers: they die with the run whatever they are doing (even stuck importing
the script), print nothing when their pipe closes, and are isolated as docs/feedback_scripts.md
says, and no further (a script can still kill the run: same user)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tripost.config import load_config
from tripost.experts import ScriptExpert
from tripost.tasks.base import make_example

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = Path(__file__).parent / "data/scripts"
EX = make_example("toy", "(1 + 2) =", "3")

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc; PR_SET_PDEATHSIG is Linux")

PARENT = """
import sys
from tripost.config import load_config
from tripost.experts import ScriptExpert
from tripost.tasks.base import make_example
cfg = load_config(None, [("edit.script_workers", 2), ("edit.script_timeout_s", 120.0)])
expert = ScriptExpert(sys.argv[1], cfg.edit)
print(" ".join(str(w.proc.pid) for w in expert.workers), flush=True)
expert.feedback_many([(make_example("toy", "q", "3"), "sleep")] * 2)
"""


def alive(pid: int) -> bool:
    """Running (a zombie nobody has reaped yet counts as dead)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def wait_until_gone(pids, seconds: float = 30.0) -> list[int]:
    deadline = time.time() + seconds
    while time.time() < deadline and any(alive(p) for p in pids):
        time.sleep(0.05)
    return [p for p in pids if alive(p)]


def env(**extra) -> dict:
    return dict(os.environ, PYTHONPATH=str(ROOT), **extra)


def test_workers_stuck_importing_the_script_die_with_the_parent(tmp_path):
    pid_dir = tmp_path / "pids"
    pid_dir.mkdir()
    err = (tmp_path / "stderr").open("wb")
    # The run in a process group of its own, killed as a whole (workers have their own sessions,
    # so the group kill itself misses them: they must die because the parent did).
    parent = subprocess.Popen([sys.executable, "-c", PARENT, str(SCRIPTS / "hangs_at_import.py")],
                              env=env(TRIPOST_TEST_PID_DIR=str(pid_dir)), stdout=subprocess.PIPE, stderr=err,
                              start_new_session=True)
    deadline = time.time() + 60
    while len(list(pid_dir.iterdir())) < 2 and time.time() < deadline:
        time.sleep(0.05)
    workers = [int(p.name) for p in pid_dir.iterdir()]
    try:
        assert len(workers) == 2 and parent.poll() is None  # the parent waits for their hello
        os.killpg(parent.pid, signal.SIGKILL)
        parent.wait()
        assert wait_until_gone(workers) == []
    finally:
        for pid in filter(alive, workers):  # only if the test failed: do not leave them spinning
            os.kill(pid, signal.SIGKILL)
    err.close()
    assert b"Traceback" not in (tmp_path / "stderr").read_bytes()


def test_busy_workers_die_with_the_parent_without_a_traceback(tmp_path):
    err = (tmp_path / "stderr").open("wb")
    parent = subprocess.Popen([sys.executable, "-c", PARENT, str(SCRIPTS / "introspect.py")], env=env(),
                              stdout=subprocess.PIPE, stderr=err)
    workers = [int(p) for p in parent.stdout.readline().split()]
    assert len(workers) == 2
    time.sleep(0.5)  # let them start the (two-minute) call; not needed for the result
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    assert wait_until_gone(workers) == []
    err.close()
    text = (tmp_path / "stderr").read_bytes()
    assert b"Traceback" not in text and b"BrokenPipe" not in text


def test_a_worker_whose_answer_pipe_closed_exits_silently():
    proc = subprocess.Popen([sys.executable, "-c", "from tripost.experts.script import worker_main; worker_main()",
                             str(SCRIPTS / "good.py"), "0"], env=env(),
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert json.loads(proc.stdout.readline())["feedback"] is True
    proc.stdout.close()  # nobody reads the answers any more
    request = {"kind": "feedback", "requests": [[{"question": "q", "answer": "3"}, "(Final response) 3"]]}
    proc.stdin.write((json.dumps(request) + "\n").encode())
    proc.stdin.close()
    assert proc.wait(timeout=60) == 0
    assert proc.stderr.read() == b""


def test_what_a_worker_is_isolated_from(tmp_path):
    leak = open(tmp_path / "secret-file", "w")  # a descriptor of the run's, even made inheritable
    os.set_inheritable(leak.fileno(), True)
    expert = ScriptExpert(SCRIPTS / "introspect.py", load_config(None, [("edit.script_workers", 1)]).edit)
    try:
        [reply] = expert.feedback_many([(EX, "report")])
    finally:
        expert.close()
        leak.close()
    facts = json.loads(reply.text)
    assert facts["sid"] == facts["pid"] == facts["pgid"]  # own session: no terminal signals
    assert facts["pgid"] != os.getpgid(0)
    assert facts["pdeathsig"] == signal.SIGKILL
    assert facts["core"] == 0
    targets = set(facts["fds"].values())
    assert str(tmp_path / "secret-file") not in targets
    stderr_target = os.readlink("/proc/self/fd/2")
    assert all(t.startswith("pipe:") or t in ("/dev/null", stderr_target) for t in targets), targets


def test_what_is_not_isolated_a_script_can_still_kill_the_run(tmp_path):
    # Documented in docs/feedback_scripts.md: workers run as the same user, so they can signal
    # the run's process. (The run is a throwaway parent here, not this test process.)
    parent = subprocess.Popen([sys.executable, "-c", PARENT.replace('"sleep"', '"kill parent"'),
                               str(SCRIPTS / "introspect.py")], env=env(), stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL)
    workers = [int(p) for p in parent.stdout.readline().split()]
    assert parent.wait(timeout=60) == -signal.SIGKILL
    assert wait_until_gone(workers) == []  # and its workers go with it
