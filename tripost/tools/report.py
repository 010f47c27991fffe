"""`tripost report RUN_DIR`: one self-contained HTML page for a run directory.

    tripost report runs/demo                   # writes runs/demo/report.html
    tripost report runs/demo --out demo.html

The page needs no network and no other file: plots are PNGs (matplotlib, Agg backend) embedded as
base64. It shows, per round, accuracy on seen and unseen test questions beside the equal-compute
baseline (and the method's arms), the method's own test-time metrics (TriPosT: self-improvement
frequency, contribution, ...; multi-agent: consensus, each generator's accuracy, ...), the training
data by kind, the drop reasons (edit stage, or collect for methods without one), training loss
curves (each train directory's train_log.jsonl), and a sample of trajectories (a debate round by
round, with its tally of answers). Every piece of text from the run (questions, attempts, feedback)
is HTML-escaped.

It reads only files: the stage manifests, summary.json, stats/metrics files and JSONL records, so
it works on a run that is still going (unfinished stages are simply missing).
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

from tripost.errors import TripostError
from tripost.io import jsonl_objects, read_json
from tripost.records import Trajectory, read_trajectories
from tripost.results import format_ci, format_vs
from tripost.runner import read_manifest

KIND_COLOURS = {"improvement": "#4c72b0", "terminal": "#55a868", "gold": "#c44e52"}


# ----------------------------------------------------------------------------------------------
# Reading the run


def load_summary(run_dir: Path) -> dict:
    """The run's results, rebuilt from its stage manifests (so a run still going is shown as it
    is now), for run directories of this and older tripost versions."""
    from tripost.config import load_config
    from tripost.iterate import plan
    from tripost.results import summarize

    config = run_dir / "config.yaml"
    if not config.is_file():
        raise TripostError(f"{run_dir}: not a run directory (no config.yaml; make one with `tripost iterate`)")
    cfg = load_config(config, older=True)
    summary = summarize(cfg, plan(cfg, run_dir), run_dir)
    # The page shows the method's own metrics (TriPosT: SI frequency, ...) beside the shared ones.
    summary["rows"] = [{**r, **(r.get("method_metrics") or {})} for r in summary["rows"]]
    return summary


def read_train_log(path: Path) -> list[dict]:
    """Loss records of a train_log.jsonl: lines with a numeric "loss" and "step"."""
    if not path.is_file():
        return []
    return [rec for _, rec in jsonl_objects(path, allow_torn_tail=True) if "loss" in rec and "step" in rec]


def train_dirs(run_dir: Path) -> list[tuple[str, Path]]:
    """(label, directory) of every train stage that logged, in order."""
    found = []
    for prefix in ("", "baseline/"):
        for sub in sorted(run_dir.glob(prefix + "round_*"), key=_round_key):
            for log in sorted(sub.glob("*train*/**/train_log.jsonl")):
                if "checkpoints" not in log.parts:
                    found.append((str(log.parent.relative_to(run_dir)), log.parent))
    return found


def _round_key(p: Path) -> int:
    try:
        return int(p.name.split("_")[1])
    except (IndexError, ValueError):
        return 10**9


# ----------------------------------------------------------------------------------------------
# Plots


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def _img(b64: str, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{b64}">'


def plot_metric_lines(rows: list[dict], metrics: list[tuple[str, str]], title: str) -> str | None:
    """Lines per round: TriPosT (round 0 = warm-up) solid, baseline dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.4))
    drew = False
    for (key, label), colour in zip(metrics, ("#4c72b0", "#dd8452", "#55a868", "#c44e52")):
        arms = list(dict.fromkeys(r["arm"] for r in rows if r["round"] > 0))
        for arm, style in zip(arms, ("-o", "--s", ":^", "-.v")):
            pts = sorted((r["round"], r[key], r.get(f"{key}_ci")) for r in rows
                         if r.get(key) is not None and (r["arm"] == arm or r["round"] == 0))
            if pts:
                xs, ys, cis = zip(*pts)
                ax.plot(xs, [100 * y for y in ys], style, color=colour, label=f"{label} ({arm})")
                if all(ci is not None for ci in cis):  # 95% Wilson intervals as error bars
                    ax.errorbar(xs, [100 * y for y in ys], fmt="none", ecolor=colour, alpha=0.6, capsize=3,
                                yerr=[[100 * (y - lo) for y, (lo, _) in zip(ys, cis)],
                                      [100 * (hi - y) for y, (_, hi) in zip(ys, cis)]])
                drew = True
    if not drew:
        plt.close(fig)
        return None
    top = max((100 * r[k] for r in rows for k, _ in metrics if r.get(k) is not None), default=0)
    ax.set_ylim(-2, max(10.0, top * 1.15))  # all-zero curves sit on the axis, not mid-plot
    ax.set_xlabel("round (0 = warm-up model)")
    ax.set_ylabel("%")
    ax.set_title(title)
    ax.set_xticks(sorted({r["round"] for r in rows}))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    return _png(fig)


def plot_method_metrics(rows: list[dict], method: str, labels: dict) -> str | None:
    """One line per method metric over the method's own rows (round 0 = the warm-up model)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mine = sorted((r for r in rows if r["arm"] in ("warm-up", method)), key=lambda r: r["round"])
    keys = list(dict.fromkeys(k for r in mine for k, v in (r.get("method_metrics") or {}).items() if v is not None))
    if not keys:
        return None
    fig, ax = plt.subplots(figsize=(6, 3.4))
    colours = plt.get_cmap("tab10").colors
    for i, key in enumerate(keys):
        pts = [(r["round"], r["method_metrics"][key]) for r in mine if (r.get("method_metrics") or {}).get(key) is not None]
        xs, ys = zip(*pts)
        ax.plot(xs, [100 * y for y in ys], "-o" if i < 10 else "--s", color=colours[i % 10], label=labels.get(key, key))
    ax.set_ylim(-2, 105)
    ax.set_xlabel("round (0 = warm-up model)")
    ax.set_ylabel("%")
    ax.set_title(f"Test-time metrics of {method}")
    ax.set_xticks(sorted({r["round"] for r in mine}))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best", ncol=2)
    return _png(fig)


def plot_stacked(per_round: dict[str, dict[str, int]], title: str, colours: dict | None = None) -> str | None:
    """Stacked bars: one bar per label (round), one segment per category."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(per_round)
    cats = sorted({c for d in per_round.values() for c, v in d.items() if v})
    if not labels or not cats:
        return None
    fig, ax = plt.subplots(figsize=(6, 3.2))
    bottom = [0] * len(labels)
    for cat in cats:
        vals = [per_round[lab].get(cat, 0) for lab in labels]
        ax.bar(labels, vals, bottom=bottom, label=cat, color=(colours or {}).get(cat))
        bottom = [b + v for b, v in zip(bottom, vals)]
    ax.set_title(title)
    ax.set_ylabel("count")
    ax.legend(fontsize=7)
    ax.tick_params(axis="x", labelsize=7, rotation=20)
    return _png(fig)


def plot_losses(logs: list[tuple[str, list[dict]]]) -> str | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    logs = [(label, recs) for label, recs in logs if recs]
    if not logs:
        return None
    fig, ax = plt.subplots(figsize=(6, 3.4))
    for label, recs in logs:
        ax.plot([r["step"] for r in recs], [r["loss"] for r in recs], "--" if label.startswith("baseline") else "-",
                label=label)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.set_title("Training loss per train stage")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _png(fig)


# ----------------------------------------------------------------------------------------------
# HTML pieces


def _pct(v) -> str:
    return "–" if v is None else f"{100 * v:.1f}"


def final_kinds(manifest: dict) -> dict:
    """Training examples by kind after the process stage (layout-1 manifests kept them elsewhere)."""
    c = manifest["counts"]
    if "matched" in c and "models" not in c:  # a baseline: its token-matched passes over the rationale examples
        return {"rationale (token-matched)": c["matched"]["examples"]}
    if "models" in c:  # the method's (an arm's: before its token-matched passes), all models together
        kinds: dict = {}
        for stats in c["models"].values():
            for k, v in stats["final"].items():
                if k != "total":
                    kinds[k] = kinds.get(k, 0) + v
        return kinds
    final = c.get("final") or c["counts"]["final"]  # rationale SFT, or a layout-1 process stage
    return {k: v for k, v in final.items() if k != "total" and v}


def summary_table(summary: dict, labels: dict | None = None) -> str:
    """The results table: accuracies, the method's own metrics (`labels`: their short names), data
    and cost."""
    labels = labels or {}
    method_keys = list(dict.fromkeys(k for r in summary["rows"] for k in (r.get("method_metrics") or {})))
    head = ["round", "arm", "n", "acc (all) [95% CI]", "acc seen", "acc unseen", "vs baseline (paired)",
            "first acc", "truncated"] + \
        [html.escape(labels.get(k, k)) for k in method_keys] + ["kept", "dropped", "drops by reason", "tokens seen",
                                                                "wall s"]
    rows = []
    for r in summary["rows"]:
        reasons = ", ".join(f"{k}={v}" for k, v in sorted((r.get("drop_reasons") or {}).items())) or "–"
        cells = [r["round"], r["arm"], r.get("n", "–"), format_ci(r.get("accuracy"), r.get("accuracy_ci")),
                 format_ci(r.get("accuracy_seen"), r.get("accuracy_seen_ci")),
                 format_ci(r.get("accuracy_unseen"), r.get("accuracy_unseen_ci")), format_vs(r.get("vs_baseline")),
                 _pct(r.get("first_accuracy")), _pct(r.get("truncated"))] + \
            [_pct((r.get("method_metrics") or {}).get(k)) for k in method_keys] + [
                 r.get("kept", "–") if r.get("kept") is not None else "–",
                 r.get("dropped", "–") if r.get("dropped") is not None else "–",
                 reasons, r.get("tokens_seen") if r.get("tokens_seen") is not None else "–",
                 r.get("wall_s") if r.get("wall_s") is not None else "–"]
        cls = ' class="baseline"' if r["arm"] == "baseline" else ""
        rows.append(f"<tr{cls}>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in cells) + "</tr>")
    return ("<table><thead><tr>" + "".join(f"<th>{h}</th>" for h in head) + "</tr></thead><tbody>"
            + "".join(rows) + "</tbody></table>")


MAX_SHOWN_CHARS = 1200


def _clip(text: str) -> str:
    """Long (often degenerate, repetitive) model output is cut for the page."""
    if len(text) <= MAX_SHOWN_CHARS:
        return text
    return text[:MAX_SHOWN_CHARS] + f" … [{len(text) - MAX_SHOWN_CHARS} more characters]"


def render_trajectory(t: Trajectory) -> str:
    """One trajectory as HTML; all run text escaped."""
    def e(text) -> str:
        return html.escape(_clip(str(text)))
    head = f"{e(t.id)} · {e(t.task)}" + (f"/{e(t.subtask)}" if t.subtask else "") + ("" if t.seen else " · unseen")
    from tripost.tools.inspect import tally

    verdict = "correct" if t.correct else "incorrect"
    css = "dropped" if t.status == "dropped" else verdict
    parts = [f'<div class="traj {css}"><div class="head">{head} · {e(t.status)}, final answer '
             f'{e(t.final_answer or "–")} <b>{verdict}</b>'
             + (f" · drop reason <b>{e(t.drop_reason)}</b>" if t.drop_reason else "") + "</div>",
             f'<div class="q"><b>Q:</b> {e(t.question)} <span class="gold">(gold: {e(t.answer)})</span></div>']
    for k, m in enumerate(t.messages):
        stance = f" [{e(m.stance)}]" if m.stance else ""
        answer = f" · answer {e(m.answer or 'none')} ({'right' if m.correct else 'wrong'})" if m.correct is not None else ""
        parts.append(f'<div class="who">round {m.round} · {e(m.speaker)} {e(m.kind)}{stance} by {e(m.author)}{answer}</div>'
                     f'<pre class="{e(m.kind)}">{e(m.text)}</pre>')
        if k + 1 == len(t.messages) or t.messages[k + 1].round != m.round:
            votes = tally([x for x in t.messages if x.round == m.round])
            if votes:
                parts.append(f'<div class="who">round {m.round} answers: {e(votes)}</div>')
    parts.append("</div>")
    return "".join(parts)


def sample_trajectories(run_dir: Path, per_file: int = 2) -> list[tuple[str, list[Trajectory]]]:
    """A few records from each round's edit outputs (collect's, for methods without an edit stage)
    and the last evaluation."""
    picks = []
    rounds = sorted(run_dir.glob("round_*"), key=_round_key)
    for sub in rounds:
        stage = "edit" if (sub / "edit").is_dir() else "collect"
        for rel in (("edit/trajectories.jsonl", "edit/dropped.jsonl") if stage == "edit"
                    else ("collect/attempts.jsonl", "collect/dropped.jsonl")):
            path = sub / rel
            if path.is_file():
                trajs = read_trajectories(path)
                # Prefer ones with more than one turn: they show an improvement.
                trajs.sort(key=lambda t: (-min(len(t.messages), 6), t.id))
                if trajs:
                    picks.append((f"{sub.name}/{rel}", trajs[:per_file]))
    evals = [sub / "evaluate/predictions.jsonl" for sub in rounds if (sub / "evaluate/predictions.jsonl").is_file()]
    if evals:
        trajs = read_trajectories(evals[-1])
        trajs.sort(key=lambda t: (-min(len(t.messages), 6), t.id))
        picks.append((str(evals[-1].relative_to(run_dir)), trajs[:per_file]))
    return picks


CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px auto;max-width:1100px;
     color:#222;line-height:1.4;padding:0 16px}
h1{font-size:1.6em;margin-bottom:0} .sub{color:#666;margin-top:4px}
h2{border-bottom:1px solid #ddd;padding-bottom:4px;margin-top:32px}
table{border-collapse:collapse;font-size:13px;margin:8px 0} th,td{border:1px solid #ddd;padding:4px 8px;text-align:right}
th{background:#f4f4f4} td:nth-child(2),td:nth-child(10){text-align:left} tr.baseline{color:#555;background:#fafafa}
.plots{display:flex;flex-wrap:wrap;gap:12px} .plots img{border:1px solid #eee;max-width:100%}
.traj{border:1px solid #ddd;border-left:5px solid #999;border-radius:4px;padding:8px 12px;margin:10px 0;background:#fcfcfc}
.traj.correct{border-left-color:#55a868} .traj.incorrect{border-left-color:#c44e52} .traj.dropped{border-left-color:#dd8452}
.head{font-size:12px;color:#555} .q{margin:6px 0} .gold{color:#777;font-size:12px}
.who{font-size:12px;color:#4c72b0;margin-top:6px}
pre{white-space:pre-wrap;word-break:break-word;margin:2px 0 2px 12px;font-size:12px;background:#f6f6f6;padding:6px;border-radius:3px}
pre.feedback{background:#f3eef8}
.note{color:#666;font-size:13px}
"""


def build_html(run_dir: Path) -> str:
    run_dir = Path(run_dir)
    summary = load_summary(run_dir)
    rows = summary["rows"]
    e = html.escape

    from tripost.config import load_config
    from tripost.methods import get_method

    cfg = load_config(run_dir / "config.yaml", older=True)
    task, feedback = cfg.task.name, cfg.edit.feedback
    model = cfg.model or "tiny model built by init-model"
    labels = get_method(cfg.method).METRIC_LABELS

    plots = []
    acc = plot_metric_lines(rows, [("accuracy_seen", "seen"), ("accuracy_unseen", "unseen")],
                            f"Test accuracy: {cfg.method} vs rationale-SFT baseline")
    si = plot_method_metrics(rows, cfg.method, labels)
    composition = {}
    for r in rows:
        sid = "round_0/warmup_process" if r["round"] == 0 else \
            (f"baseline/round_{r['round']}/process" if r["arm"] == "baseline" else
             f"round_{r['round']}/process" if r["arm"] == cfg.method else f"arms/{r['arm']}/round_{r['round']}/process")
        m = read_manifest(run_dir / sid)
        if m and m.get("status") == "done":
            composition[f"{r['arm']} {r['round']}"] = final_kinds(m)
    comp = plot_stacked(composition, "Training examples by kind", KIND_COLOURS)
    drops = {f"{r['arm']} {r['round']}": r.get("drop_reasons") or {} for r in rows if r.get("drop_reasons")}
    dr = plot_stacked(drops, ("Edit" if "edit" in get_method(cfg.method).STAGES else "Collect")
                      + ": dropped by reason")
    loss = plot_losses([(label, read_train_log(d / "train_log.jsonl")) for label, d in train_dirs(run_dir)])
    for b64, alt in ((acc, "accuracy per round"), (si, "method metrics per round"),
                     (comp, "training data composition"), (dr, "drop reasons"), (loss, "training loss")):
        if b64:
            plots.append(_img(b64, alt))

    samples = sample_trajectories(run_dir)
    sample_html = "".join(f"<h3>{e(label)}</h3>" + "".join(render_trajectory(t) for t in trajs)
                          for label, trajs in samples) or '<p class="note">no trajectories yet</p>'

    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>tripost report: {e(summary.get('name', run_dir.name))}</title>
<style>{CSS}</style></head><body>
<h1>{e(summary.get('method', 'tripost'))} run <code>{e(summary.get('name', run_dir.name))}</code></h1>
<p class="sub">task <b>{e(str(task))}</b> · model {e(str(model))} · feedback {e(str(feedback))} ·
{summary.get('stages_done', '?')}/{summary.get('stages', '?')} stages done · total stage time
{e(str(summary.get('total_wall_s', '–')))} s (the base model's {e(str(summary.get('base_wall_s') or 0))} s
included, spent by the run that built it) · directory <code>{e(str(run_dir))}</code></p>
<h2>Results per round</h2>
{summary_table(summary, labels)}
<p class="note">Round 0 is the warm-up ("ft rationale") model. Baseline rows: the previous baseline model
trained on gold rationales for the same number of tokens as that round's training of the method (compare the
tokens column); arm rows: variants of the method, trained on as many tokens. Accuracies and rates in %.
{"<b>iterate.train_on_test: the rounds trained on the test questions; not a held-out evaluation.</b>"
 if summary.get("train_on_test") else ""}</p>
<h2>Plots</h2>
<div class="plots">{''.join(plots) or '<p class="note">nothing to plot yet</p>'}</div>
<h2>Sample trajectories</h2>
{sample_html}
</body></html>
"""


def main(args, cfg=None) -> int:
    run_dir = Path(args.run_dir)
    if not run_dir.is_dir():
        raise TripostError(f"{run_dir}: run directory not found")
    out = Path(args.out) if args.out else run_dir / "report.html"
    page = build_html(run_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page, encoding="utf-8")
    print(f"wrote {out}")
    return 0
