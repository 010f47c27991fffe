"""Feedback scripts (`script:PATH.py`): a user's plain Python file run in worker processes.

See tripost/experts/__init__.py for what the worker isolation covers and the drop reasons.
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import sys
import time
from collections import deque
from pathlib import Path

from tripost.errors import TripostError
from tripost.experts.base import Expert, Reply, example_dict
from tripost.io import sha256_file


# ----------------------------------------------------------------------------------------------
# ScriptExpert: the parent side


class _Worker:
    """One worker process running the user's script, and the parent's end of its pipes."""

    def __init__(self, path: Path, memory_mb: int):
        env = dict(os.environ)
        # The worker imports tripost from the same tree as this process, installed or not.
        package_root = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = os.pathsep.join([package_root] + [p for p in [env.get("PYTHONPATH")] if p])
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "from tripost.experts.script import worker_main; worker_main()",
             str(path), str(memory_mb), str(os.getpid())],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=None, env=env,
            # Its own session: Ctrl-C in the terminal reaches only the parent (which then closes the
            # workers), and killing the group also ends anything the script started. That it still
            # dies with the parent is the worker's job (_die_with_parent).
            start_new_session=True,
            close_fds=True,  # the default, stated: no descriptor of the run leaks into user code
        )
        self.fd = self.proc.stdout.fileno()
        os.set_blocking(self.fd, False)
        self._buf = b""

    def read_messages(self) -> tuple[list[dict], bool]:
        """Whatever whole lines are available now, and whether the pipe reached end of file."""
        eof = False
        while True:
            try:
                data = os.read(self.fd, 1 << 16)
            except BlockingIOError:
                break
            if not data:
                eof = True
                break
            self._buf += data
        *lines, self._buf = self._buf.split(b"\n")
        msgs = []
        for line in lines:
            try:
                msgs.append(json.loads(line))
            except json.JSONDecodeError:  # cannot happen with our worker; treat as a broken worker
                return msgs, True
        return msgs, eof

    def wait_hello(self, timeout: float) -> dict | None:
        """The worker's first message, or None if it died or said nothing in time."""
        deadline = time.monotonic() + timeout
        sel = selectors.DefaultSelector()
        sel.register(self.fd, selectors.EVENT_READ)
        try:
            while True:
                msgs, eof = self.read_messages()
                if msgs:
                    return msgs[0]
                if eof:
                    return None
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                sel.select(left)
        finally:
            sel.close()

    def send(self, kind: str, requests: list) -> None:
        line = json.dumps({"kind": kind, "requests": requests}) + "\n"
        # The worker reads the whole line before it writes anything back, so a blocking write
        # cannot deadlock against its replies.
        self.proc.stdin.write(line.encode())
        self.proc.stdin.flush()

    def exit_description(self) -> str:
        code = self.proc.poll()
        if code is None:
            return "worker stopped answering"
        if code < 0:
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = str(-code)
            return f"worker killed by signal {name}"
        return f"worker exited with code {code}"

    def kill(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                self.proc.kill()
        self.proc.wait()
        for f in (self.proc.stdin, self.proc.stdout):
            try:
                f.close()
            except OSError:
                pass

    def end_input(self) -> None:
        """Ask the worker to stop: it exits when it reads end of file."""
        try:
            self.proc.stdin.close()
        except OSError:
            pass


# What a user's script may define, and what each function returns: "text" (a str), "text?" (a
# str, or None for "none here"), "examples" (a list of JSON objects), "bool".
FUNCTIONS = {"feedback": "text", "improve": "text", "remark": "text", "rationale": "text?",
             "examples": "examples", "extract_answer": "text?", "judge": "bool"}
SIGNATURES = {"feedback": "feedback(example, attempt)", "improve": "improve(example, attempt, feedback)",
              "remark": "remark(example, attempt, stance)", "rationale": "rationale(example)",
              "examples": "examples(task_config)", "extract_answer": "extract_answer(attempt)",
              "judge": "judge(example, answer)"}


class ScriptExpert(Expert):
    """A user's Python file, run in worker processes: feedback, improvements, remarks and
    rationales as an expert, and the functions of a task file (tripost/tasks/file.py).

    `path` is used as given (make_expert resolves it); `settings` is the `edit` config section
    (script_workers, script_timeout_s, script_memory_mb); `required` the functions it must define.
    `functions` is the set it does define.
    """

    # At most this many requests per round trip: big enough to amortise the pipe overhead,
    # small enough that workers share a batch evenly.
    max_chunk = 256

    def __init__(self, path: str | Path, settings, required: tuple[str, ...] = ("feedback",)):
        self.path = Path(path)
        if not self.path.is_file():
            raise TripostError(f"{self.path}: script not found")
        self.name = f"script:{self.path.name}"
        self.sha256 = sha256_file(self.path)
        self.provenance = {"script": str(self.path), "script_sha256": self.sha256}
        self.timeout_s = float(settings.script_timeout_s)
        self.memory_mb = int(settings.script_memory_mb)
        self.n_workers = max(1, int(settings.script_workers))
        self.required = required
        # Python start-up plus importing the script (which may import big libraries).
        self.startup_timeout_s = max(30.0, self.timeout_s)
        self.workers: list[_Worker] = []
        self.functions: set[str] = set()
        try:
            self._start_workers(self.n_workers, first=True)
        except BaseException:
            self.close()
            raise

    # -- workers -------------------------------------------------------------------------------
    def _start_workers(self, n: int, first: bool = False) -> None:
        """Start n workers at once (in parallel), then wait for each one's hello."""
        new = [_Worker(self.path, self.memory_mb) for _ in range(n)]
        for w in new:
            hello = w.wait_hello(self.startup_timeout_s)
            problem = None
            if hello is None or "error" in hello:
                why = hello["error"] if hello else w.exit_description() + " while loading it"
                if why.startswith("MemoryError"):
                    why += f" (edit.script_memory_mb={self.memory_mb} is too small for what it imports)"
                problem = f"{self.path}: could not load the script: {why}"
            elif any(not hello.get(name) for name in self.required):
                missing = next(name for name in self.required if not hello.get(name))
                problem = f"{self.path}: the script defines no `{SIGNATURES[missing]}` function"
            if problem is not None:
                if first:  # at start-up: a user error, before any work is done
                    for other in new:
                        other.kill()
                    raise TripostError(problem)
                w.kill()  # a restart that fails mid-run: go on with fewer workers (see _run)
                continue
            self.functions = {name for name in FUNCTIONS if hello.get(name)}
            self.workers.append(w)

    def _replace(self, worker: _Worker) -> _Worker | None:
        """Kill a worker and start a fresh one in its place (None if that fails)."""
        worker.kill()
        self.workers.remove(worker)
        before = len(self.workers)
        self._start_workers(1)
        return self.workers[-1] if len(self.workers) > before else None

    def close(self) -> None:
        """End all workers: end of input first, then a kill for any still busy after 2 s."""
        for w in self.workers:
            w.end_input()
        deadline = time.monotonic() + 2.0
        for w in self.workers:
            try:
                w.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            w.kill()
        self.workers = []

    # -- requests -------------------------------------------------------------------------------
    def feedback_many(self, requests: list[tuple]) -> list[Reply]:
        return self.call("feedback", [[example_dict(ex), attempt] for ex, attempt in requests])

    def improve_many(self, requests: list[tuple]) -> list[Reply]:
        return self.call("improve", [[example_dict(ex), attempt, fb] for ex, attempt, fb in requests])

    def remark_many(self, requests: list[tuple]) -> list[Reply]:
        return self.call("remark", [[example_dict(ex), attempt, stance] for ex, attempt, stance in requests])

    def rationale_many(self, examples: list) -> list[Reply]:
        return self.call("rationale", [[example_dict(ex)] for ex in examples])

    def call(self, kind: str, items: list[list]) -> list[Reply]:
        """`kind`(*args) for each args list of `items`, in the workers: one Reply per item (the
        returned value in `value`, and in `text` when it is text)."""
        if kind not in self.functions:
            raise TripostError(f"{self.path}: the script has no `{SIGNATURES[kind]}` function")
        return self._run(kind, items)

    def _run(self, kind: str, items: list[list]) -> list[Reply]:
        """Send `items` to the workers in chunks, collect one Reply per item, in order.

        Each busy worker has a deadline: `timeout_s` after its last answer. Past it, the request
        it is on is the one that hangs: it gets script_timeout, the worker is replaced and the
        rest of its chunk goes back in the queue. End of file on a worker's pipe works the same
        way with script_crashed.
        """
        n = len(items)
        replies: list[Reply | None] = [None] * n
        if n == 0:
            return []
        if len(self.workers) < self.n_workers:  # restarts failed earlier: try again now
            self._start_workers(self.n_workers - len(self.workers))
        size = max(1, min(self.max_chunk, -(-n // (max(1, len(self.workers)) * 4))))
        queue = deque(list(range(i, min(i + size, n))) for i in range(0, n, size))
        jobs: dict[_Worker, list] = {}  # worker -> [indices, answered so far, deadline]
        sel = selectors.DefaultSelector()

        def assign(w: _Worker | None) -> None:
            while w is not None and queue:
                chunk = queue.popleft()
                try:
                    w.send(kind, [items[i] for i in chunk])
                except OSError:
                    # The worker died while idle, before this request reached it: the request
                    # is not to blame (transient), but something must stop a worker that dies
                    # at once every time from looping: it is counted against the first request.
                    replies[chunk[0]] = Reply(None, "script_crashed", w.exit_description() + " before the request",
                                              transient=True)
                    if chunk[1:]:
                        queue.appendleft(chunk[1:])
                    w = self._replace(w)
                    continue
                jobs[w] = [chunk, 0, time.monotonic() + self.timeout_s]
                sel.register(w.fd, selectors.EVENT_READ, w)
                return

        def fail(w: _Worker, reason: str, detail: str) -> None:
            chunk, done, _ = jobs.pop(w)
            sel.unregister(w.fd)
            replies[chunk[done]] = Reply(None, reason, detail)
            if chunk[done + 1:]:
                queue.appendleft(chunk[done + 1:])
            assign(self._replace(w))

        for w in list(self.workers):
            assign(w)
        try:
            while jobs:
                wait = min(job[2] for job in jobs.values()) - time.monotonic()
                ready = {key.data for key, _ in sel.select(max(0.0, wait))}
                for w in ready:
                    msgs, eof = w.read_messages()
                    job = jobs[w]
                    for m in msgs:
                        if job[1] < len(job[0]):
                            value = m.get("value")
                            text = value if isinstance(value, str) else None
                            replies[job[0][job[1]]] = Reply(text, m.get("error"), m.get("detail"),
                                                            value=None if text is not None else value)
                            job[1] += 1
                    job[2] = time.monotonic() + self.timeout_s
                    if job[1] == len(job[0]):
                        jobs.pop(w)
                        sel.unregister(w.fd)
                        if eof:  # finished its chunk, then died: replace it quietly
                            w = self._replace(w)
                        assign(w)
                    elif eof:
                        try:
                            w.proc.wait(timeout=1.0)  # for its exit code
                        except subprocess.TimeoutExpired:
                            pass
                        fail(w, "script_crashed", w.exit_description())
                now = time.monotonic()
                for w, job in list(jobs.items()):
                    if w not in ready and now >= job[2]:
                        fail(w, "script_timeout", f"no answer within edit.script_timeout_s={self.timeout_s:g}s")
        finally:
            sel.close()
            # Interrupted (Ctrl-C, an exception): busy workers would answer a request nobody waits
            # for any more; end them, and the next call starts fresh ones.
            for w in jobs:
                w.kill()
                self.workers.remove(w)
        # Left over only if every worker failed to restart.
        return [r if r is not None else Reply(None, "script_crashed", "no worker could be started", transient=True)
                for r in replies]


# ----------------------------------------------------------------------------------------------
# ScriptExpert: the worker side (runs in the child process)


def _describe(exc: BaseException, path: str) -> str:
    """`ValueError: bad step (my_feedback.py:12)`: the exception and the script line it came from."""
    import traceback

    where = ""
    for frame in reversed(traceback.extract_tb(exc.__traceback__)):
        if os.path.abspath(frame.filename) == os.path.abspath(path):
            where = f" ({os.path.basename(path)}:{frame.lineno})"
            break
    message = str(exc)
    return (f"{type(exc).__name__}: {message}" if message else type(exc).__name__)[:500] + where


def _call(fn, kind: str, args: list, path: str) -> dict:
    try:
        out = fn(*args)
    except MemoryError as e:
        return {"error": "script_out_of_memory", "detail": _describe(e, path)}
    except Exception as e:  # noqa: BLE001 - any failure of user code is a drop reason, not a crash
        return {"error": "script_error", "detail": _describe(e, path)}
    returns = FUNCTIONS[kind]
    if out is None and kind in ("feedback", "remark"):
        return {"error": f"script_no_{kind}"}
    if out is None and returns == "text?":
        return {"value": None}
    wanted = {"text": str, "text?": str, "bool": bool, "examples": list}[returns]
    if not isinstance(out, wanted) or (returns == "examples" and not all(isinstance(x, dict) for x in out)):
        what = "a list of dicts" if returns == "examples" else wanted.__name__
        return {"error": "script_bad_return", "detail": f"{kind}() returned {type(out).__name__}, expected {what}"}
    try:
        json.dumps(out).encode("utf-8")
    except (TypeError, ValueError, UnicodeEncodeError) as e:
        return {"error": "script_bad_return", "detail": f"{kind}() returned something not JSON text: {e}"}
    return {"value": out}


PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def _watch_parent(parent_pid: int) -> None:
    """Exit when the parent is gone, even if the script hangs (where PR_SET_PDEATHSIG is not
    available)."""
    while True:
        time.sleep(1.0)
        if os.getppid() != parent_pid:
            os._exit(0)


def _die_with_parent(parent_pid: int) -> None:
    """Make sure this worker does not outlive `parent_pid`, whatever it is doing when the parent
    goes (importing the script, hanging in it, blocked in C code).

    On Linux the kernel sends SIGKILL when the parent thread that started the worker ends. (So a
    ScriptExpert must be used from a thread that lives as long as it does: the main thread, as
    `tripost edit` does.) The check after prctl catches a parent that died before it took
    effect. Elsewhere a watch thread polls once a second."""
    linux = sys.platform.startswith("linux")
    if linux:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent_pid:
        os._exit(0)
    if not linux:
        import threading

        threading.Thread(target=_watch_parent, args=(parent_pid,), daemon=True).start()


def worker_main() -> None:
    import importlib.util
    import resource

    path, memory_mb = sys.argv[1], int(sys.argv[2])
    _die_with_parent(int(sys.argv[3]) if len(sys.argv) > 3 else os.getppid())
    # Keep private copies of the protocol pipes; the script's print() goes to stderr and its
    # stdin is empty, so nothing it does can corrupt the protocol.
    proto_in = os.fdopen(os.dup(0), "rb")
    proto_out = os.fdopen(os.dup(1), "wb")
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    os.dup2(2, 1)
    sys.stdout = sys.stderr

    def send(msg: dict) -> None:
        try:
            proto_out.write((json.dumps(msg) + "\n").encode())
            proto_out.flush()
        except BrokenPipeError:
            # The parent is gone (or closed us): nobody is left to answer, and a traceback here
            # would land in the output of a run that has already ended.
            os._exit(0)

    # A crashing script leaves no core file behind per crash.
    resource.setrlimit(resource.RLIMIT_CORE, (0, resource.getrlimit(resource.RLIMIT_CORE)[1]))
    if memory_mb > 0:
        limit = memory_mb * 1024 * 1024
        _, hard = resource.getrlimit(resource.RLIMIT_AS)
        if hard != resource.RLIM_INFINITY:
            limit = min(limit, hard)
        resource.setrlimit(resource.RLIMIT_AS, (limit, hard))

    try:
        # The script's own folder is importable, so it can import its helper modules.
        sys.path.insert(0, os.path.dirname(os.path.abspath(path)))
        spec = importlib.util.spec_from_file_location("tripost_feedback_script", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    except BaseException as e:  # noqa: BLE001 - reported to the parent, which names the file
        send({"error": _describe(e, path)})
        return
    fns = {name: fn for name in FUNCTIONS if callable(fn := vars(module).get(name))}
    send({name: name in fns for name in FUNCTIONS})
    for line in proto_in:
        msg = json.loads(line)
        fn, kind = fns[msg["kind"]], msg["kind"]
        for args in msg["requests"]:
            send(_call(fn, kind, args, path))
