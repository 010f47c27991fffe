"""Experts: who writes the feedback and the improved attempts that `tripost edit` trains on.

Two kinds, chosen by a spec string in the config (`edit.feedback`, `edit.improvement`):

    script:feedback_scripts/multistep_arithmetic.py   a plain Python file (ScriptExpert)
    llm                                              an LLM behind an API (tripost.experts.llm.LlmExpert)

Every expert has the same small interface, and works on batches so that many requests share one
round trip (a worker pipe, or a pool of concurrent API calls):

    expert = make_expert("script:my_feedback.py", cfg.edit, task, out_dir)
    replies = expert.feedback_many([(example, attempt), ...])          # -> [Reply]
    replies = expert.improve_many([(example, attempt, feedback), ...])  # -> [Reply] (full new attempts)
    replies = expert.remark_many([(example, attempt, stance), ...])     # -> [Reply] (a partner's remark, SAIE)
    expert.close()

A `Reply` holds either the text or an error: a short drop reason such as "script_timeout", which
`edit` writes into the dropped trajectory. An expert never raises because of one bad request.

Feedback scripts (see docs/feedback_scripts.md) are user code, so they run in separate worker
processes (`edit.script_workers` of them, long-lived, started with subprocess + pipes). Each
worker caps its address space (`edit.script_memory_mb`), and each call gets `edit.script_timeout_s`
seconds. What can go wrong, and the drop reason it becomes:

    the function raises                 script_error          (detail: exception and file:line)
    it needs more memory than allowed   script_out_of_memory
    it runs past the timeout            script_timeout        (worker killed and replaced)
    it exits or kills the process       script_crashed        (worker replaced)
    it returns something not a str      script_bad_return
    feedback() returns None             script_no_feedback
    remark() returns None               script_no_remark

Protocol between parent and worker (one JSON object per line, in both directions): the worker
first sends {"feedback": bool, "improve": bool, "remark": bool} (which functions the script
defines; or {"error": ...} if the file would not load); then for each request line
{"kind": "feedback"|"improve"|"remark", "requests": [[args...], ...]} it answers
one line per request, in order, as soon as each is done. Answers arriving one by one is what lets
the parent tell which request hung or crashed: the first one without an answer. The rest of that
chunk is resent to the replacement worker.

What a worker is, and is not, isolated from (docs/feedback_scripts.md says the same for users):
  * it dies with the run: on Linux the kernel SIGKILLs it when the parent goes (PR_SET_PDEATHSIG,
    set before the script is imported), whatever it is doing; elsewhere a watch thread notices
    within a second. It writes nothing (no BrokenPipeError traceback) when the parent is gone.
  * its own session and process group: Ctrl-C in the terminal reaches only the parent, which
    ends the workers; a timeout kills the worker's whole group (what the script started).
  * address space capped (RLIMIT_AS = edit.script_memory_mb), no core files (RLIMIT_CORE = 0),
    stdin is /dev/null, only stdin/stdout/stderr inherited (the protocol pipes and the run's
    stderr; close_fds), print() goes to stderr so it cannot corrupt the protocol.
  * NOT isolated: it runs as the same user as the run, so it can signal or kill the parent
    (os.kill(os.getppid(), ...)), read and write the user's files and use the network. Only a
    different uid (or a container) prevents that; tripost does not switch users. Processes the
    script starts itself are killed with the worker's group on a timeout or close, but not when
    the parent is killed outright (the kernel signals the worker only).

Run a worker by hand (it reads requests on stdin; the last argument, the parent's pid, may be
left out):
    python -c "from tripost.experts.script import worker_main; worker_main()" my_feedback.py 1024
"""

from __future__ import annotations

from tripost.config import resolve_path
from tripost.errors import TripostError
from tripost.experts.base import Expert, Reply, example_dict
from tripost.experts.script import ScriptExpert

__all__ = ["Expert", "Reply", "ScriptExpert", "example_dict", "make_expert"]


# The script functions each role needs ("partner": a SAIE partner's remarks).
ROLE_FUNCTIONS = {"feedback": ("feedback",), "improvement": ("improve",), "both": ("feedback", "improve"),
                  "judge": ("feedback",), "partner": ("remark",), "rationale": ("rationale",)}


def make_expert(spec: str, edit_cfg, task=None, out_dir=None, role: str = "feedback") -> Expert:
    """The expert a spec names. `role` ("feedback", "improvement", "both", "judge", "partner",
    "rationale") says which functions a script must define (ROLE_FUNCTIONS). `edit_cfg` is the
    `edit` config section."""
    key = {"improvement": "edit.improvement", "partner": "partner"}.get(role, "edit.feedback")
    if spec == "llm":
        from tripost.experts.llm import LlmExpert  # imported only when used: it pulls in the API client

        return LlmExpert(edit_cfg, task, out_dir)
    if spec.startswith("script:"):
        raw = spec[len("script:"):].strip()
        if not raw:
            raise TripostError(f"config: '{key}' names no script file (use script:PATH.py)")
        return ScriptExpert(resolve_path(raw), edit_cfg, ROLE_FUNCTIONS.get(role, (role,)))
    raise TripostError(f"config: '{key}' must be 'llm' or 'script:PATH.py', got {spec!r}")
