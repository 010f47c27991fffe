"""What every expert is: the Reply to a request and the Expert interface (see tripost/experts/)."""

from __future__ import annotations

from dataclasses import dataclass

from tripost.errors import TripostError


@dataclass
class Reply:
    """One answer to a request (tripost/engine.py): `text`, or `error` (a drop reason). `detail`
    says more about an error (an exception message, file:line) and ends up in the dropped record.
    `truncated`: a model ran out of max_new_tokens. `author`: who wrote the text ("model:learner",
    "script:x.py", "llm:<model>"), set by whoever answered.

    `transient` is True when the error says nothing about the request, so the item is not done
    and a rerun should ask again: the API was unreachable, or answered 408/429/5xx/529, timed
    out or sent a body cut short or not a message, after all its retries (see
    tripost.experts.api.ApiResult), or a script request never reached a live worker. It is False for a
    verdict on the request: what the model or the script answered (no tool call, unparseable
    feedback, a wrong rationale, script_error, script_bad_return, ...), a 4xx other than
    408/429, and a script worker that crashed, ran out of memory or timed out *on* this request
    (the same input would do it again).

    `stance`: a remark's stance as the expert took it ("supportive" | "adversarial"), set by an
    expert that decides it itself (an LLM asked with stance "auto" at test time); "" = the stance
    it was asked for."""

    text: str | None = None
    error: str | None = None
    detail: str | None = None
    transient: bool = False
    truncated: bool = False
    author: str = ""
    value: object = None  # a script function's return value, when it is not text (task files)
    stance: str = ""


class Expert:
    """Base class: feedback, improvement and remarks for batches of requests.

    `name` is the author of what it writes ("script:<file>", "llm:<model>"); `provenance`
    (script hash, template hashes, model...) goes into the edit stage's summary.
    """

    name: str = "expert"
    provenance: dict = {}

    def feedback_many(self, requests: list[tuple]) -> list[Reply]:
        """requests: [(example, attempt)] -> one Reply per request, text = feedback sentence."""
        raise self.cannot("feedback")

    def remark_many(self, requests: list[tuple]) -> list[Reply]:
        """requests: [(example, attempt, stance)] -> one Reply per request, text = the remark."""
        raise self.cannot("remark")

    def rationale_many(self, examples: list) -> list[Reply]:
        """examples -> one Reply per example, text = a step-by-step gold rationale."""
        raise self.cannot("rationale")

    def improve_many(self, requests: list[tuple]) -> list[Reply]:
        """requests: [(example, attempt, feedback)] -> one Reply per request, text = full new attempt."""
        raise self.cannot("improve")

    def cannot(self, kind: str) -> TripostError:
        return TripostError(f"expert {self.name} cannot answer a {kind!r} request")

    def remark_many(self, requests: list[tuple]) -> list[Reply]:
        """requests: [(example, attempt, stance)] -> one Reply per request, text = a partner's remark
        on the attempt (SAIE). stance: "supportive" (point at the problem and help), "adversarial"
        (challenge it with a plausible but wrong counter-argument) or "auto" (the expert judges the
        attempt without the gold answer and picks the stance; it says which in Reply.stance)."""
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def example_dict(example) -> dict:
    """What a feedback script receives as `example`: a plain dict (from an Example, a Trajectory
    or a dict)."""
    keys = ("id", "task", "question", "answer", "subtask", "seen")
    if isinstance(example, dict):
        return {k: example.get(k) for k in keys}
    return {k: getattr(example, k, None) for k in keys}
