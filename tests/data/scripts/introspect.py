"""Fixture: feedback() reports, as JSON, what the worker process sees of its own isolation;
"kill parent" kills the process that runs tripost (what a worker can still do)."""
import ctypes
import json
import os
import resource
import signal

PR_GET_PDEATHSIG = 2


def feedback(example, attempt):
    if attempt == "kill parent":
        os.kill(os.getppid(), signal.SIGKILL)
        return "the parent is dead"
    if attempt == "sleep":
        import time

        time.sleep(120)
    sig = ctypes.c_int(0)
    ctypes.CDLL(None, use_errno=True).prctl(PR_GET_PDEATHSIG, ctypes.byref(sig), 0, 0, 0)
    fds = {}
    for fd in os.listdir("/proc/self/fd"):
        try:
            fds[int(fd)] = os.readlink(f"/proc/self/fd/{fd}")
        except FileNotFoundError:  # the descriptor listdir itself used, closed by now
            pass
    return json.dumps({"pid": os.getpid(), "sid": os.getsid(0), "pgid": os.getpgid(0), "pdeathsig": sig.value,
                       "core": resource.getrlimit(resource.RLIMIT_CORE)[0], "fds": fds})
