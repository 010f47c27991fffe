"""LLM feedback, improvement and rationales through the Messages API (`edit.feedback: llm`).

    expert = LlmExpert(cfg.edit, task, out_dir)       # name "llm:<model>"
    expert.feedback_many([(example, attempt), ...])   # -> [Reply(text=canonical feedback | None, error)]
    expert.improve_many([(example, attempt, feedback), ...])   # -> [Reply(text=full improved attempt)]
    expert.rationale_many([example, ...])             # -> [Reply(text=step-by-step rationale)]
    expert.remark_many([(example, attempt, stance), ...])   # -> [Reply(text=a partner's remark, SAIE)]
    expert.close()                                    # prints the token/cost summary

The model never writes the final text directly; it fills in a tool call, and this module checks
it and writes the text in the project's own grammar:

  * Feedback: tool `report_feedback` {all_correct, first_wrong_step, wrong_part, reason}. The step
    label must exist in the attempt; the sentence is then rendered by `steps.feedback_wrong` /
    `steps.feedback_correct`, exactly as scripted feedback is. Anything else ->
    Reply(error="llm_unparsable_feedback").
  * Improvement: tool `write_continuation` {continuation}: the steps from the first wrong one to
    the final line. The steps before it (already judged correct) are re-attached here, verbatim,
    so the model cannot silently change them; no assistant prefill is used. The result must be
    numbered 1..n with a final line, else "llm_unparsable_improvement".
  * Rationale (tasks without a scripted gold rationale): tool `write_rationale` {rationale}; it
    must be well-formed and reach the gold answer, else "llm_unparsable_rationale" /
    "llm_wrong_rationale".
  * Remark (SAIE's partner): tool `write_remark` {stance, remark}, templates
    `remark_supportive.j2` / `remark_adversarial.j2` (the stance is given; the gold answer is in the
    prompt) and `remark_auto.j2` (test time: no gold answer; the model judges the attempt and says
    which stance it took, returned in Reply.stance). The remark is one line of at most
    MAX_REMARK_CHARS characters (whitespace collapsed), else "llm_unparsable_remark".

Prompts are Jinja templates in prompts/<task>/ (see tripost/templates.py); API calls, retries,
caching and costs are tripost/api.py's job.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from tripost import steps
from tripost.experts.api import ApiClient, ApiRequest
from tripost.config import EditConfig
from tripost.experts.base import Expert, Reply
from tripost.tasks.base import Example, Task
from tripost.experts.templates import PromptTemplates, prompts_dir_for

FEEDBACK_TOOL = {
    "name": "report_feedback",
    "description": "Report your judgement of the attempt: whether every step is correct, and if not, "
                   "the first wrong step, the wrong part of it and why it is wrong.",
    "input_schema": {
        "type": "object",
        "properties": {
            "all_correct": {"type": "boolean",
                            "description": "true if every step and the final response are correct"},
            "first_wrong_step": {"type": "string",
                                 "description": 'label of the first wrong step: a number such as "3", or '
                                                '"Final response"; empty if all_correct'},
            "wrong_part": {"type": "string",
                           "description": "the wrong part of that step, copied from it; empty if all_correct"},
            "reason": {"type": "string",
                       "description": "one short sentence saying why that part is wrong; empty if all_correct"},
        },
        "required": ["all_correct", "first_wrong_step", "wrong_part", "reason"],
    },
}

CONTINUATION_TOOL = {
    "name": "write_continuation",
    "description": "Write the corrected steps, starting at the first wrong step (with its label) and "
                   "ending with the final response line.",
    "input_schema": {
        "type": "object",
        "properties": {
            "continuation": {"type": "string",
                             "description": 'the steps from the first wrong step on, one per line, e.g. '
                                            '"(3) ...\\n(4) ...\\n(Final response) So the answer is X."'},
        },
        "required": ["continuation"],
    },
}

RATIONALE_TOOL = {
    "name": "write_rationale",
    "description": "Write a step-by-step solution in the numbered-step format.",
    "input_schema": {
        "type": "object",
        "properties": {
            "rationale": {"type": "string",
                          "description": 'numbered steps "(1) ...", one per line, then '
                                         '"(Final response) So the answer is X."'},
        },
        "required": ["rationale"],
    },
}


REMARK_STANCES = ("supportive", "adversarial")
MAX_REMARK_CHARS = 1000


def remark_tool(auto: bool) -> dict:
    """`write_remark`: the remark, and (with `auto`, when the model picks the stance) the stance."""
    props = {"stance": {"type": "string", "enum": list(REMARK_STANCES),
                        "description": "supportive if the attempt is wrong (you point at the problem and help), "
                                       "adversarial if it is right (you challenge it)"},
             "remark": {"type": "string", "description": "your remark to the student, one or two sentences"}}
    return {"name": "write_remark",
            "description": "Write your remark on the student's attempt" + (" and your stance." if auto else "."),
            "input_schema": {"type": "object", "properties": props if auto else {"remark": props["remark"]},
                             "required": ["stance", "remark"] if auto else ["remark"]}}


def remark_from_tool(data: dict | None, auto: bool) -> tuple[str, str] | None:
    """(remark as one line, stance or "") from a `write_remark` call, or None when it is malformed."""
    if not isinstance(data, dict) or not isinstance(data.get("remark"), str):
        return None
    text = _one_line(data["remark"])
    if not text or len(text) > MAX_REMARK_CHARS:
        return None
    if not auto:
        return text, ""
    stance = data.get("stance")
    return (text, stance) if stance in REMARK_STANCES else None


def _show(data) -> str:
    """A short description of what the model sent, for Reply.detail."""
    return "no tool call in the reply" if data is None else f"tool input: {json.dumps(data)[:300]}"


def _force(tool: dict) -> dict:
    return {"type": "tool", "name": tool["name"]}


def tool_input(response: dict | None, name: str) -> dict | None:
    """The input of the first `name` tool call in a response, or None."""
    for block in (response or {}).get("content") or []:
        if block.get("type") == "tool_use" and block.get("name") == name and isinstance(block.get("input"), dict):
            return block["input"]
    return None


# ----------------------------------------------------------------------------------------------
# Checking what the model wrote (pure functions: easy to test)


def _one_line(text: str) -> str:
    return " ".join(text.split())


def normalize_label(label: str) -> str:
    """"3", "(3)", "Step 3" -> "3"; "final response" -> "Final response"."""
    label = label.strip().strip("()").strip()
    label = re.sub(r"^step\s*", "", label, flags=re.IGNORECASE).strip("() ")
    return steps.FINAL if label.lower() == steps.FINAL.lower() else label


def feedback_from_tool(data: dict | None, attempt: str) -> str | None:
    """The canonical feedback sentence for a `report_feedback` call on `attempt`, or None when the
    call is malformed or names a step the attempt does not have."""
    if not isinstance(data, dict) or not isinstance(data.get("all_correct"), bool):
        return None
    attempt_steps = steps.parse_steps(attempt)
    if data["all_correct"]:
        return steps.feedback_correct(sum(s.label.isdigit() for s in attempt_steps))
    fields = [data.get(k) for k in ("first_wrong_step", "wrong_part", "reason")]
    if not all(isinstance(f, str) and f.strip() for f in fields):
        return None
    label, part, reason = normalize_label(fields[0]), _one_line(fields[1]), _one_line(fields[2])
    labels = [s.label for s in attempt_steps]
    if label not in labels:
        return None
    before = sum(s.label.isdigit() for s in attempt_steps[: labels.index(label)])
    text = steps.feedback_wrong(before, label, part, reason)
    parsed = steps.parse_feedback(text)
    return text if parsed is not None and parsed.wrong_step == label else None


def well_formed(attempt_steps: list[steps.Step]) -> bool:
    """Numbered 1..n in order, then exactly one final line, nothing unlabeled."""
    if not attempt_steps or attempt_steps[-1].label != steps.FINAL:
        return False
    numbered = attempt_steps[:-1]
    return all(s.label == str(i) for i, s in enumerate(numbered, start=1)) and \
        all(s.text.strip() for s in attempt_steps)


def improvement_from_tool(data: dict | None, attempt: str, wrong_label: str) -> str | None:
    """The verified prefix of `attempt` (the steps before `wrong_label`) + the model's
    continuation, or None if the continuation does not fit."""
    if not isinstance(data, dict) or not isinstance(data.get("continuation"), str):
        return None
    attempt_steps = steps.parse_steps(attempt)
    labels = [s.label for s in attempt_steps]
    if wrong_label not in labels:
        return None
    prefix = attempt_steps[: labels.index(wrong_label)]
    cont = steps.parse_steps(data["continuation"])
    # A model that repeats the verified steps before continuing: drop the verbatim repeat.
    if prefix and cont[: len(prefix)] == prefix:
        cont = cont[len(prefix):]
    if not cont:
        return None
    next_number = str(sum(s.label.isdigit() for s in prefix) + 1)
    if cont[0].label not in (wrong_label, next_number):
        return None
    full = prefix + cont
    return steps.render_steps(full) if well_formed(full) else None


# ----------------------------------------------------------------------------------------------
# The expert


class LlmExpert(Expert):
    """Feedback and improvement by an LLM behind the Messages API (the Expert interface)."""

    def __init__(self, edit_cfg: EditConfig, task: Task, out_dir: str | Path):
        self.api_cfg = edit_cfg.api
        self.task = task
        self.name = f"llm:{edit_cfg.api.model}"
        self.templates = PromptTemplates(prompts_dir_for(edit_cfg, task.name), task.name)
        # Load what exists now, so provenance names every template and a syntax error shows at once.
        # (The remark templates load when first used: only SAIE's partner needs them.)
        for name in ("feedback", "improvement", "rationale"):
            if self.templates.path(name).is_file():
                self.templates.load(name)
        self.client = ApiClient(edit_cfg.api, Path(out_dir) if out_dir is not None else Path("."))

    @property
    def provenance(self) -> dict:
        return {"prompts_dir": str(self.templates.directory),
                "templates": dict(sorted(self.templates.hashes.items())),
                "temperature": self.api_cfg.temperature, "max_tokens": self.api_cfg.max_tokens}

    def _ask(self, template: str, tool: dict, items: list[dict], desc: str) -> list[dict | None | Reply]:
        """One API request per item; returns the tool input dict (None if the reply has no such
        call), or a Reply carrying the API error (and whether it is transient: see Reply)."""
        requests = []
        for item in items:
            system, user = self.templates.render(template, **item)
            requests.append(ApiRequest(system=system, user=user, tools=[tool], tool_choice=_force(tool)))
        results = self.client.run_requests(requests, desc=desc)
        return [Reply(None, r.error, r.detail, transient=r.transient) if r.error
                else tool_input(r.response, tool["name"]) for r in results]

    def feedback_many(self, requests: list[tuple[Example, str]]) -> list[Reply]:
        items = [{"question": ex.question, "answer": ex.answer, "attempt": attempt.strip()}
                 for ex, attempt in requests]
        out = []
        for (ex, attempt), got in zip(requests, self._ask("feedback", FEEDBACK_TOOL, items, "llm feedback")):
            if isinstance(got, Reply):
                out.append(got)
                continue
            text = feedback_from_tool(got, attempt)
            out.append(Reply(text, None) if text else Reply(None, "llm_unparsable_feedback", _show(got)))
        return out

    def improve_many(self, requests: list[tuple[Example, str, str]]) -> list[Reply]:
        out: list[Reply | None] = []
        items, where = [], []
        for i, (ex, attempt, feedback) in enumerate(requests):
            fb = steps.parse_feedback(feedback)
            labels = [s.label for s in steps.parse_steps(attempt)]
            if fb is None or fb.correct or fb.wrong_step not in labels:
                out.append(Reply(None, "llm_unparsable_improvement", "the feedback names no wrong step of this attempt"))
                continue
            prefix = steps.render_steps(steps.parse_steps(attempt)[: labels.index(fb.wrong_step)])
            items.append({"question": ex.question, "answer": ex.answer, "attempt": attempt.strip(),
                          "feedback": feedback.strip(), "first_wrong_step": fb.wrong_step, "prefix": prefix})
            where.append((i, attempt, fb.wrong_step))
            out.append(None)
        for (i, attempt, label), got in zip(where, self._ask("improvement", CONTINUATION_TOOL, items,
                                                             "llm improvement")):
            if isinstance(got, Reply):
                out[i] = got
                continue
            text = improvement_from_tool(got, attempt, label)
            out[i] = Reply(text, None) if text else Reply(None, "llm_unparsable_improvement", _show(got))
        return out

    def rationale_many(self, examples: list[Example]) -> list[Reply]:
        items = [{"question": ex.question, "answer": ex.answer} for ex in examples]
        out = []
        for ex, got in zip(examples, self._ask("rationale", RATIONALE_TOOL, items, "llm rationale")):
            if isinstance(got, Reply):
                out.append(got)
                continue
            text = got.get("rationale") if isinstance(got, dict) else None
            parsed = steps.parse_steps(text) if isinstance(text, str) else []
            if not well_formed(parsed):
                out.append(Reply(None, "llm_unparsable_rationale", _show(got)))
            elif not self.task.is_correct(ex, text):
                out.append(Reply(None, "llm_wrong_rationale"))
            else:
                out.append(Reply(steps.render_steps(parsed), None))
        return out

    def remark_many(self, requests: list[tuple[Example, str, str]]) -> list[Reply]:
        """One remark per (example, attempt, stance): stance "supportive" / "adversarial" renders
        remark_<stance>.j2 with the gold answer; "auto" renders remark_auto.j2 without it."""
        bad = [r[2] for r in requests if r[2] not in ("supportive", "adversarial", "auto")]
        if bad:
            raise ValueError(f"unknown remark stance {bad[0]!r}")
        api_requests = []
        for ex, attempt, stance in requests:  # one pool of concurrent calls for all stances
            auto = stance == "auto"
            item = {"question": ex.question, "attempt": attempt.strip()} | ({} if auto else {"answer": ex.answer})
            system, user = self.templates.render(f"remark_{stance}", **item)
            tool = remark_tool(auto)
            api_requests.append(ApiRequest(system=system, user=user, tools=[tool], tool_choice=_force(tool)))
        out = []
        for (_, _, stance), r in zip(requests, self.client.run_requests(api_requests, desc="llm remark")):
            if r.error:
                out.append(Reply(None, r.error, r.detail, transient=r.transient))
                continue
            got = tool_input(r.response, "write_remark")
            parsed = remark_from_tool(got, stance == "auto")
            out.append(Reply(parsed[0], None, stance=parsed[1]) if parsed else
                       Reply(None, "llm_unparsable_remark", _show(got)))
        return out

    def close(self) -> None:
        self.client.close()
