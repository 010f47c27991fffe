"""The results of a run: one row per round and arm (the method, the baseline), read from the stage
manifests; `summary.json`, the table `tripost iterate` prints and the report's data.

    summary = summarize(cfg, stages, run_dir)     # {"name", "method", "rows": [...], ...}
    print(format_table(summary))

A row: round, arm ("warm-up" for round 0, the method's name, "baseline"), the evaluation metrics of
its models on the test split (accuracy total / seen / unseen, first_accuracy, the method's own
metrics), and what the round cost: kept and dropped trajectories with drop reasons, training
examples, tokens_seen (every position trained through) and wall time.
"""

from __future__ import annotations

from pathlib import Path

from tripost import io
from tripost.runner import Stage, read_manifest

METRIC_COLUMNS = ("accuracy", "first_accuracy", "si_frequency", "si_contribution", "si_harm")


def _done(run_dir: Path, stage: Stage) -> dict | None:
    m = read_manifest(stage.dir)
    return m if m is not None and m.get("status") == "done" else None


def _metrics(counts: dict) -> dict:
    row = {k: counts.get(k) for k in METRIC_COLUMNS}
    row["accuracy_seen"] = counts["seen"]["accuracy"]
    row["accuracy_unseen"] = counts["unseen"]["accuracy"]
    row["n"] = counts["n"]
    return row


def _tokens_seen(counts: dict) -> int | None:
    """A train stage's tokens_seen (layout-1 manifests called it tokens_trained)."""
    if "tokens_seen" in counts:
        return counts["tokens_seen"]
    return counts.get("tokens_trained")


def summarize(cfg, stages: list[Stage], run_dir: Path) -> dict:
    """summary.json: one row per round and arm, from the manifests of finished stages."""
    done = {s.id: _done(run_dir, s) for s in stages}
    rows = []

    def seconds(ids):
        vals = [done[i]["timings"]["seconds"] for i in ids if done.get(i)]
        return round(sum(vals), 1) if vals else None

    def group(prefix):
        return [s.id for s in stages if s.id.startswith(prefix + "/")]

    rounds = sorted({int(s.id.split("/")[0].split("_")[1]) for s in stages if s.id.startswith("round_")})
    for k in rounds:
        for arm, prefix in (("warm-up" if k == 0 else cfg.method, f"round_{k}"), ("baseline", f"baseline/round_{k}")):
            ids = group(prefix)
            if not ids:
                continue
            ev = done.get(f"{prefix}/evaluate")
            row = {"round": k, "arm": arm, **(_metrics(ev["counts"]) if ev else {})}
            trains = [done[i] for i in ids if {"train", "warmup_train"} & set(i.split("/")) and done.get(i)]
            row["tokens_seen"] = sum(_tokens_seen(t["counts"]) or 0 for t in trains) if trains else None
            edit = done.get(f"{prefix}/edit")
            if edit:
                row.update(kept=edit["counts"]["kept"], dropped=edit["counts"]["dropped"],
                           drop_reasons=edit["counts"]["drop_reasons"])
            row["wall_s"] = seconds(ids)
            rows.append(row)
    return {"name": cfg.name, "method": cfg.method, "rows": rows,
            "total_wall_s": seconds([s.id for s in stages]),
            "stages_done": sum(1 for v in done.values() if v), "stages": len(stages)}


def write_summary(cfg, stages: list[Stage], run_dir: Path) -> dict:
    summary = summarize(cfg, stages, run_dir)
    io.write_json(run_dir / "summary.json", summary)
    return summary


def format_table(summary: dict) -> str:
    def pct(v):
        return "-" if v is None else f"{100 * v:.1f}"

    def val(v):
        return "-" if v is None else str(v)

    head = ["round", "arm", "acc seen", "acc unseen", "SI freq", "SI contrib", "kept", "drops by reason",
            "tokens", "wall s"]
    lines = [head]
    for r in summary["rows"]:
        reasons = ", ".join(f"{k}={v}" for k, v in sorted((r.get("drop_reasons") or {}).items())) or "-"
        lines.append([str(r["round"]), r["arm"], pct(r.get("accuracy_seen")), pct(r.get("accuracy_unseen")),
                      pct(r.get("si_frequency")), pct(r.get("si_contribution")), val(r.get("kept")), reasons,
                      val(r.get("tokens_seen")), val(r.get("wall_s"))])
    widths = [max(len(row[i]) for row in lines) for i in range(len(head))]
    out = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in lines]
    out.insert(1, "  ".join("-" * w for w in widths))
    out.append(f"total wall time: {val(summary.get('total_wall_s'))} s "
               f"({summary['stages_done']}/{summary['stages']} stages done)")
    return "\n".join(out)
