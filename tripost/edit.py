"""Edit the model's attempts with expert feedback and improvements: attempts -> trajectories.

    tripost edit --attempts round_1/collect/attempts.jsonl --out round_1/edit/
    tripost edit --attempts attempts.jsonl --out edit/ edit.feedback=script:my_feedback.py tripost.max_improvements=3

Reads the attempts that `tripost collect` wrote and runs the method's edit episode on each (TriPosT:
the walk in tripost/methods/tripost.py, with the "feedback" and "improvement" experts of the `edit`
section: `script:PATH.py` or `llm`). Writes, under --out:

    trajectories.jsonl   kept trajectories
    dropped.jsonl        the others, with drop_reason and detail (the trajectory as edited so far)
    summary.json         counts by status, drop reason and where the walk stopped; expert calls
    config.yaml          the resolved config (written when the stage starts, never on a failed start)

Resumable: ids already in trajectories.jsonl or dropped.jsonl are skipped, and results are appended
as they finish. Within a batch of edit.batch_size trajectories all advance in lock-step, so each
round of expert requests is one many-at-once call (script workers, concurrent API requests). A
trajectory whose last expert call failed for a transient reason (the API unreachable) is written
nowhere: the stage reports it as pending and exits non-zero, and a rerun retries exactly those.
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from pathlib import Path

from tripost import io
from tripost.config import Config, EditConfig, method_config, save_config
from tripost.engine import ExpertAnswerer
from tripost.errors import TripostError
from tripost.experts import Expert, make_expert
from tripost.records import read_records, read_trajectories
from tripost.rollout import run_episodes, todo_examples

KEPT, DROPPED, SUMMARY = "trajectories.jsonl", "dropped.jsonl", "summary.json"


def make_experts(edit_cfg: EditConfig, task, out_dir: Path) -> dict[str, Expert]:
    """The feedback and improvement experts (one shared instance when both specs are the same:
    one worker pool, one API cache)."""
    if edit_cfg.feedback == edit_cfg.improvement:
        expert = make_expert(edit_cfg.feedback, edit_cfg, task, out_dir, role="both")
        return {"feedback": expert, "improvement": expert}
    fb = make_expert(edit_cfg.feedback, edit_cfg, task, out_dir, role="feedback")
    try:
        imp = make_expert(edit_cfg.improvement, edit_cfg, task, out_dir, role="improvement")
    except BaseException:
        fb.close()
        raise
    return {"feedback": fb, "improvement": imp}


def summarize(kept_path: Path, dropped_path: Path) -> dict:
    """Counts over everything written so far (this run and earlier, resumed ones)."""
    status, reasons, stops, messages = Counter(), Counter(), Counter(), Counter()
    examples: dict[str, list] = {}
    for path in (kept_path, dropped_path):
        if not path.exists():
            continue
        for t in read_trajectories(path):
            status[t.status] += 1
            stops[t.stop] += 1
            if t.status == "dropped":
                reasons[t.drop_reason] += 1
                if len(examples.setdefault(t.drop_reason, [])) < 3:
                    examples[t.drop_reason].append({"id": t.id, "detail": t.detail})
            else:
                messages[len(t.messages)] += 1
    return {"kept": status["kept"], "dropped": status["dropped"], "drop_reasons": dict(reasons.most_common()),
            "drop_examples": examples, "kept_messages": {str(k): v for k, v in sorted(messages.items())},
            "walk_stops": dict(stops.most_common())}


def edit(task, edit_cfg: EditConfig, method: str, method_cfg, attempts_path, out_dir, *,
         experts: dict[str, Expert] | None = None, progress: bool = True) -> dict:
    """Edit every trajectory of `attempts_path` not yet done in `out_dir`; return the summary
    (also written to summary.json). Experts come from `edit_cfg` unless given (tests)."""
    from tripost.methods import get_method

    m = get_method(method)
    out_dir = Path(out_dir)
    outputs = {"kept": out_dir / KEPT, "dropped": out_dir / DROPPED}
    attempts = read_records(attempts_path)
    todo = todo_examples(attempts, outputs)
    summary_path = out_dir / SUMMARY
    previous = io.read_json(summary_path) if summary_path.exists() else {}
    calls = Counter(previous.get("calls", {}))
    started = time.monotonic()
    counts: Counter = Counter()
    if todo:
        own = experts is None
        experts = make_experts(edit_cfg, task, out_dir) if own else experts
        try:
            answerers = {}
            for role, expert in experts.items():
                answerers[role] = _Counting(ExpertAnswerer(expert), calls)
            episodes = [(t.id, m.edit(t, task, method_cfg)) for t in todo]
            counts = run_episodes(episodes, answerers, outputs, window=edit_cfg.batch_size, desc="edit",
                                  progress=progress)
        finally:
            if own:
                for expert in {id(e): e for e in experts.values()}.values():
                    expert.close()

    summary = summarize(outputs["kept"], outputs["dropped"])
    wall = time.monotonic() - started
    summary.update(attempts=len(attempts), edited_this_run=len(todo), pending=counts["pending"],
                   skipped_already_done=len(attempts) - len(todo), calls=dict(calls),
                   wall_s_this_run=round(wall, 3), feedback=edit_cfg.feedback, improvement=edit_cfg.improvement,
                   experts={role: e.provenance | {"name": e.name} for role, e in experts.items()} if todo
                   else previous.get("experts", {}))
    io.write_json(summary_path, summary)
    return summary


class _Counting:
    """An answerer that counts the requests it answers, by kind (for summary.json)."""

    def __init__(self, answerer, calls: Counter):
        self.answerer, self.calls = answerer, calls

    def batches(self, requests):
        return self.answerer.batches(requests)

    def answer(self, requests):
        for r in requests:
            self.calls[r.kind] += 1
        return self.answerer.answer(requests)


def format_summary(summary: dict) -> str:
    """The table `tripost edit` prints."""
    lines = [f"{'result':<34} {'count':>7}", f"{'kept':<34} {summary['kept']:>7}"]
    for reason, n in summary["drop_reasons"].items():
        lines.append(f"{'dropped: ' + reason:<34} {n:>7}")
    if summary["pending"]:
        lines.append(f"{'pending (retried on rerun)':<34} {summary['pending']:>7}")
    lines.append(f"{'total':<34} {summary['kept'] + summary['dropped'] + summary['pending']:>7}")
    calls = summary["calls"]
    lines.append(f"expert calls: feedback {calls.get('feedback', 0)}, improve {calls.get('improve', 0)}; "
                 f"this run edited {summary['edited_this_run']} in {summary['wall_s_this_run']:.1f}s "
                 f"({summary['skipped_already_done']} already done)")
    for reason, examples in summary["drop_examples"].items():
        detail = next((e["detail"] for e in examples if e["detail"]), None)
        if detail and (reason.startswith("script_") or reason.startswith("llm_")):
            lines.append(f"  {reason}: e.g. {detail}")
    return "\n".join(lines)


def main(args, cfg: Config) -> int:
    from tripost.tasks import get_task

    task = get_task(cfg.task)
    out = Path(args.out)
    summary = edit(task, cfg.edit, cfg.method, method_config(cfg), args.attempts, out)
    save_config(cfg, out / "config.yaml")
    print(format_summary(summary))
    print(f"wrote {out / KEPT} and {out / DROPPED}")
    if summary["pending"]:
        print(f"{summary['pending']} trajectories not done: an expert was unreachable; rerun to retry them",
              file=sys.stderr)
        return 1
    return 0

