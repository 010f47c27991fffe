"""Evaluation: the method's test-time episode on the test split, accuracy and the method's metrics.

    tripost evaluate --model runs/demo/round_1/train/learner/model --out runs/demo/round_1/evaluate

For TriPosT the model answers each test question, critiques its answer and updates it until it says
the final response is correct, stops making progress, repeats itself, or has used
tripost.evaluate_max_calls calls (tripost/methods/tripost.py). Writes, in the output directory:

    predictions.jsonl   one Trajectory per question (resumable: a rerun skips finished ids)
    metrics.json        the metrics below

Metrics (`compute_metrics`, a plain function over trajectories), for all questions and per group
(seen, unseen, each subtask):

    n, accuracy         final answer correct; accuracy_ci its 95% Wilson interval
    first_accuracy      first answer correct
    truncated           share of questions where the model ran out of max_new_tokens (a warning
                        is printed above TRUNCATION_WARNING: the answers are cut off, not wrong)
    + the method's own  (TriPosT: si_frequency, si_contribution, si_harm, with
                        accuracy = first_accuracy + si_contribution - si_harm)
    stops               why the episodes ended, counted
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

from tripost import io
from tripost.config import Config, EditConfig, GenerationConfig, method_config
from tripost.records import Trajectory, read_trajectories

PREDICTIONS = "predictions.jsonl"
TRUNCATION_WARNING = 0.1


def _group(trajs: list[Trajectory], method_metrics) -> dict:
    from tripost.stats import wilson_interval

    n = len(trajs)

    def share(k):
        return k / n if n else None

    right = sum(t.correct for t in trajs)
    first_ok = sum(bool(t.messages) and bool(t.messages[0].correct) for t in trajs)
    return {"n": n, "accuracy": share(right), "accuracy_ci": list(wilson_interval(right, n)),
            "first_accuracy": share(first_ok),
            "truncated": share(sum(any(m.truncated for m in t.messages) for t in trajs)),
            **method_metrics(trajs)}


def compute_metrics(trajs: list[Trajectory], method_metrics) -> dict:
    """Metrics over finished trajectories; `method_metrics(trajs) -> dict` adds the method's own."""
    metrics = _group(trajs, method_metrics)
    metrics["seen"] = _group([t for t in trajs if t.seen], method_metrics)
    metrics["unseen"] = _group([t for t in trajs if not t.seen], method_metrics)
    metrics["subtasks"] = {s: _group([t for t in trajs if t.subtask == s], method_metrics)
                           for s in sorted({t.subtask for t in trajs})}
    metrics["stops"] = dict(sorted(Counter(t.stop for t in trajs).items()))
    return metrics


def format_table(metrics: dict) -> str:
    """Plain-text table: one row per group (total, seen, unseen, subtasks), aligned columns."""
    cols = [k for k, v in metrics.items() if k != "n" and isinstance(v, float)]
    cols = [c for c in cols if all(isinstance(m.get(c), float) for m in [metrics["seen"], metrics["unseen"]] if m["n"])]
    heads = ["group", "n"] + cols
    rows = [("total", metrics), ("seen", metrics["seen"]), ("unseen", metrics["unseen"])]
    rows += [(f"subtask {s or '-'}", m) for s, m in metrics["subtasks"].items()]
    cells = [heads]
    for name, m in rows:
        if m["n"]:
            cells.append([name, str(m["n"])] + [f"{m[c]:.1%}" for c in cols])
    widths = [max(len(r[i]) for r in cells) for i in range(len(heads))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
             for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines.append("stops: " + ", ".join(f"{k} {v}" for k, v in metrics["stops"].items()))
    return "\n".join(lines)


def evaluate(task, gen: GenerationConfig, method: str, method_cfg, chat_template: bool, models: dict, out_dir,
             split: str = "test", progress: bool = True, partners: dict | None = None,
             edit_cfg: EditConfig | None = None) -> dict:
    """Roll out on `split` (resuming predictions.jsonl), write metrics.json, return the metrics."""
    from tripost.collect import rollout_stage
    from tripost.methods import get_method

    out_dir = Path(out_dir)
    pred_path = out_dir / PREDICTIONS
    rollout_stage(task, gen, method, method_cfg, chat_template, models, split, pred_path, "evaluate",
                  progress=progress, partners=partners, edit_cfg=edit_cfg)
    ids = {ex.id for ex in task.load(split)}
    trajs = [t for t in read_trajectories(pred_path) if t.id in ids] if pred_path.exists() else []
    metrics = compute_metrics(trajs, get_method(method).group_metrics)
    metrics.update(split=split, task=task.name, models={k: str(v) for k, v in models.items()})
    io.write_json(out_dir / "metrics.json", metrics)
    if metrics["truncated"] and metrics["truncated"] > TRUNCATION_WARNING:
        print(f"WARNING: {metrics['truncated']:.0%} of the answers in {out_dir} were cut off at "
              f"max_new_tokens={gen.max_new_tokens}; raise it (evaluate.max_new_tokens), or the accuracy "
              "counts cut-off answers as wrong", file=sys.stderr)
    return metrics


def main(args, cfg: Config) -> int:
    from tripost.collect import partner_specs
    from tripost.config import save_config
    from tripost.engine import check_model_dir
    from tripost.methods import get_method
    from tripost.tasks import get_task

    mc = method_config(cfg)
    models = {name: check_model_dir(cfg.model) for name in get_method(cfg.method).models(mc)}
    save_config(cfg, Path(args.out) / "config.yaml")
    metrics = evaluate(get_task(cfg.task), cfg.evaluate, cfg.method, mc, cfg.chat_template, models, args.out,
                       split=args.split, partners=partner_specs(get_method(cfg.method), mc, "evaluate", cfg.edit),
                       edit_cfg=cfg.edit)
    print(format_table(metrics))
    print(f"wrote {Path(args.out) / 'metrics.json'}")
    return 0
