"""The results of a run: one row per round and arm (the method, its variants, the baseline), read
from the stage manifests and prediction files; `summary.json`, the tables `tripost iterate` prints
and the report's data.

    summary = summarize(cfg, stages, run_dir)     # {"name", "method", "rows": [...], ...}
    print(format_table(summary))

A row: round, arm ("warm-up" for round 0, the method's name, an arm's name, "baseline"), the test
metrics of its models (accuracy total / seen / unseen, each with a 95% Wilson interval;
first-answer accuracy; the share of answers cut off at max_new_tokens; the method's own metrics,
e.g. TriPosT's SI frequency / contribution / harm and critique accuracy), what the round cost (kept
and dropped trajectories with drop reasons, tokens_seen: every position trained through, wall time)
and, for every arm of a round with a baseline, the paired comparison with the baseline row of the
same round on the same questions: the accuracy difference with Newcombe's interval and the exact
McNemar p-value (tripost/stats.py).
"""

from __future__ import annotations

from pathlib import Path

from tripost import io
from tripost.records import read_trajectories
from tripost.runner import Stage, read_manifest
from tripost.stats import format_interval, format_p, mean_and_spread, paired_difference


def _done(stage: Stage) -> dict | None:
    m = read_manifest(stage.dir)
    return m if m is not None and m.get("status") == "done" else None


def _tokens_seen(counts: dict) -> int | None:
    """A train stage's tokens_seen (layout-1 manifests called it tokens_trained)."""
    return counts["tokens_seen"] if "tokens_seen" in counts else counts.get("tokens_trained")


def correctness(eval_dir: Path) -> dict[str, bool]:
    """id -> final answer right, from an evaluate stage's predictions."""
    path = Path(eval_dir) / "predictions.jsonl"
    return {t.id: t.correct for t in read_trajectories(path)} if path.is_file() else {}


def paired(first: dict[str, bool], second: dict[str, bool], ids=None) -> dict | None:
    """The paired comparison of two arms on the questions both answered (optionally only `ids`)."""
    common = sorted(set(first) & set(second) & (set(ids) if ids is not None else set(first)))
    if not common:
        return None
    return paired_difference([first[i] for i in common], [second[i] for i in common])


def summarize(cfg, stages: list[Stage], run_dir: Path) -> dict:
    """summary.json: one row per round and arm, from the finished stages."""
    done = {s.id: _done(s) for s in stages}
    dirs = {s.id: s.dir for s in stages}
    rows = []

    def seconds(ids):
        vals = [done[i]["timings"]["seconds"] for i in ids if done.get(i)]
        return round(sum(vals), 1) if vals else None

    prefixes: list[tuple[int, str, str]] = []  # (round, arm, stage prefix)
    for s in stages:
        parts = s.id.split("/")
        if parts[0] == "base":  # the base model's stages (in the base cache) belong to round 0
            key = (0, "warm-up", "round_0")
        elif parts[0] == "baseline":
            key = (int(parts[1].split("_")[1]), "baseline", "/".join(parts[:2]))
        elif parts[0] == "arms":
            key = (int(parts[2].split("_")[1]), parts[1], "/".join(parts[:3]))
        else:
            k = int(parts[0].split("_")[1])
            key = (k, "warm-up" if k == 0 else cfg.method, parts[0])
        if key not in prefixes:
            prefixes.append(key)
    by_prefix: dict[str, dict] = {}
    for k, arm, prefix in sorted(prefixes, key=lambda x: (x[0], x[1] == "baseline")):
        ids = [i for i in dirs if i.startswith(prefix + "/") or (prefix == "round_0" and i.startswith("base/"))]
        ev = done.get(f"{prefix}/evaluate")
        row: dict = {"round": k, "arm": arm}
        if ev:
            c = ev["counts"]
            row.update(n=c["n"], accuracy=c["accuracy"], accuracy_ci=c.get("accuracy_ci"),
                       accuracy_seen=c["seen"]["accuracy"], accuracy_seen_ci=c["seen"].get("accuracy_ci"),
                       accuracy_unseen=c["unseen"]["accuracy"], accuracy_unseen_ci=c["unseen"].get("accuracy_ci"),
                       first_accuracy=c["first_accuracy"], truncated=c.get("truncated"),
                       method_metrics={key: c[key] for key in c
                                       if key not in SHARED_METRICS and isinstance(c[key], (float, type(None)))})
        trains = [done[i] for i in ids if {"train", "warmup_train"} & set(i.split("/")) and done.get(i)]
        row["tokens_seen"] = sum(_tokens_seen(t["counts"]) or 0 for t in trains) if trains else None
        # The round's data filter: the edit stage, or (methods without one) what collect dropped.
        edit = done.get(f"{prefix}/edit" if f"{prefix}/edit" in dirs else f"{prefix}/collect")
        if edit and "drop_reasons" in edit["counts"]:
            row.update(kept=edit["counts"]["kept"], dropped=edit["counts"]["dropped"],
                       drop_reasons=edit["counts"]["drop_reasons"])
        row["wall_s"] = seconds(ids)
        rows.append(row)
        by_prefix[prefix] = row

    # Paired comparisons with the baseline of the same round, overall and on seen / unseen questions.
    for k, arm, prefix in prefixes:
        base = f"baseline/round_{k}"
        if arm == "baseline" or k == 0 or not done.get(f"{base}/evaluate") or not done.get(f"{prefix}/evaluate"):
            continue
        mine, theirs = correctness(dirs[f"{prefix}/evaluate"]), correctness(dirs[f"{base}/evaluate"])
        seen = {t.id for t in read_trajectories(dirs[f"{prefix}/evaluate"] / "predictions.jsonl") if t.seen}
        row = by_prefix[prefix]
        row["vs_baseline"] = paired(mine, theirs)
        row["vs_baseline_seen"] = paired(mine, theirs, seen)
        row["vs_baseline_unseen"] = paired(mine, theirs, set(mine) - seen)
    return {"name": cfg.name, "method": cfg.method, "rows": rows, "train_on_test": cfg.iterate.train_on_test,
            # every stage's time, the base's included: a run that found the base in the cache did
            # not spend base_wall_s itself (an earlier run did)
            "total_wall_s": seconds([s.id for s in stages]),
            "base_wall_s": seconds([s.id for s in stages if s.id.startswith("base/")]),
            "stages_done": sum(1 for v in done.values() if v), "stages": len(stages)}


SHARED_METRICS = {"n", "accuracy", "accuracy_ci", "first_accuracy", "truncated", "seen", "unseen", "subtasks",
                  "stops", "split", "task", "models"}


def write_summary(cfg, stages: list[Stage], run_dir: Path) -> dict:
    summary = summarize(cfg, stages, run_dir)
    io.write_json(run_dir / "summary.json", summary)
    return summary


# ----------------------------------------------------------------------------------------------
# Across seeds


def across_seeds(summaries: list[dict]) -> dict:
    """Mean and spread of each row's numbers over runs repeated with other seeds (same plan)."""
    rows = []
    for i, row in enumerate(summaries[0]["rows"]):
        same = [s["rows"][i] for s in summaries if i < len(s["rows"])]
        out = {"round": row["round"], "arm": row["arm"], "seeds": len(same)}
        for key in ("accuracy", "accuracy_seen", "accuracy_unseen", "first_accuracy"):
            values = [r[key] for r in same if r.get(key) is not None]
            if values:
                out[key] = mean_and_spread(values)
        diffs = [r["vs_baseline"]["difference"] for r in same if r.get("vs_baseline")]
        if diffs:
            out["vs_baseline_difference"] = mean_and_spread(diffs)
        rows.append(out)
    return {"name": summaries[0]["name"], "seeds": len(summaries), "rows": rows}


# ----------------------------------------------------------------------------------------------
# Tables


def _pct(v) -> str:
    return "-" if v is None else f"{100 * v:.1f}"


def format_ci(v, ci) -> str:
    return "-" if v is None or ci is None else format_interval(v, *ci)


def format_vs(p: dict | None) -> str:
    if not p:
        return "-"
    return f"{100 * p['difference']:+.1f} [{100 * p['ci_low']:+.1f}, {100 * p['ci_high']:+.1f}] {format_p(p['p_value'])}"


def _grid(head: list[str], body: list[list[str]]) -> list[str]:
    lines = [head] + body
    widths = [max(len(r[i]) for r in lines) for i in range(len(head))]
    out = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in lines]
    out.insert(1, "  ".join("-" * w for w in widths))
    return out


def format_table(summary: dict, labels: dict | None = None) -> str:
    """Two tables: accuracy with 95% intervals and the paired comparison with the baseline; then the
    columns that explain it (first-answer accuracy, the method's own metrics, truncation, data, cost).
    `labels`: short column names for the method's metrics."""
    rows = summary["rows"]
    acc = _grid(["round", "arm", "n", "accuracy [95% CI]", "seen", "unseen", "vs baseline (paired) all",
                 "seen", "unseen"],
                [[str(r["round"]), r["arm"], str(r.get("n", "-")), format_ci(r.get("accuracy"), r.get("accuracy_ci")),
                  format_ci(r.get("accuracy_seen"), r.get("accuracy_seen_ci")),
                  format_ci(r.get("accuracy_unseen"), r.get("accuracy_unseen_ci")),
                  format_vs(r.get("vs_baseline")), format_vs(r.get("vs_baseline_seen")), format_vs(r.get("vs_baseline_unseen"))]
                 for r in rows])
    method_keys = list(dict.fromkeys(k for r in rows for k in (r.get("method_metrics") or {})))
    labels = labels or {}
    explain = _grid(["round", "arm", "first acc"] + [labels.get(k, k) for k in method_keys]
                    + ["truncated", "kept", "drops by reason", "tokens seen", "wall s"],
                    [[str(r["round"]), r["arm"], _pct(r.get("first_accuracy"))]
                     + [_pct((r.get("method_metrics") or {}).get(k)) for k in method_keys]
                     + [_pct(r.get("truncated")), str(r.get("kept", "-")),
                        ", ".join(f"{k}={v}" for k, v in sorted((r.get("drop_reasons") or {}).items())) or "-",
                        str(r.get("tokens_seen") if r.get("tokens_seen") is not None else "-"),
                        str(r.get("wall_s") if r.get("wall_s") is not None else "-")]
                     for r in rows])
    foot = (f"accuracies in %, 95% Wilson intervals; vs baseline: accuracy difference in points on the same "
            f"questions, Newcombe interval, exact McNemar p. total stage time: {summary.get('total_wall_s', '-')} s "
            f"({summary['stages_done']}/{summary['stages']} stages done)")
    if summary.get("base_wall_s"):
        foot += (f", of which {summary['base_wall_s']} s built the base model (kept in the base cache: a run "
                 "that finds it there does not spend that time)")
    if summary.get("train_on_test"):
        foot += ("\nWARNING: iterate.train_on_test: the rounds collected and trained on the TEST questions (as the "
                 "official multi-agent finetuning code does); these accuracies are not on held-out questions")
    return "\n".join(acc + [""] + explain + [foot])


def format_seeds(agg: dict) -> str:
    """The across-seeds table: mean ± standard deviation [min, max]."""
    def ms(d):
        return "-" if not d else f"{100 * d['mean']:.1f} ± {100 * d['std']:.1f} [{100 * d['min']:.1f}, {100 * d['max']:.1f}]"

    return "\n".join(_grid(["round", "arm", "seeds", "accuracy", "seen", "unseen", "vs baseline"],
                           [[str(r["round"]), r["arm"], str(r["seeds"]), ms(r.get("accuracy")),
                             ms(r.get("accuracy_seen")), ms(r.get("accuracy_unseen")),
                             ms(r.get("vs_baseline_difference"))] for r in agg["rows"]]))
