"""Benchmark the warm-up ("ft rationale"): how good a base model does it give, for how much CPU time?

    python bench/warmup.py                                   # the default settings below
    python bench/warmup.py --settings numbers-h64,digits-h64 --questions 2000,8000
    python bench/warmup.py --list

Each run is the real thing: `tripost iterate --config configs/demo.yaml iterate.rounds=0` with the
setting's overrides (train.* overrides are the warm-up's: iterate.warmup_train is emptied), in a fresh run directory (no base cache): init_model (tokenizer and tiny
Llama), warmup_process (gold rationales of `iterate.warmup_questions` generated questions, the
run's test questions held out), warmup_train, and round_0/evaluate on the demo's test set (400
seen + 400 unseen questions). One table row per run, appended to <out>/results.jsonl: the
setting, parameters, warm-up questions x epochs, tokens trained through (all positions) and
tokens/s, the warm-up's training seconds, the whole base build's seconds (init + data + train,
start-up included), first-attempt accuracy seen / unseen with 95% Wilson intervals, the truncated
share, and the load average when the run started (the machine is shared: compare within a run).
A run already in results.jsonl (same setting and size) is printed, not rerun; --force reruns it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def shape(hidden: int, layers: int, heads: int, ffn: int | None = None) -> list[str]:
    return [f"init_model.hidden_size={hidden}", f"init_model.intermediate_size={ffn or 3 * hidden}",
            f"init_model.num_hidden_layers={layers}", f"init_model.num_attention_heads={heads}",
            f"init_model.num_key_value_heads={heads}"]


NUMBERS = ["init_model.tokenizer=numbers", "init_model.vocab_size=640"]
DIGITS = ["init_model.tokenizer=digits", "init_model.vocab_size=384"]
SETTINGS = {
    # Names: tokenizer, hidden size, then what differs from configs/demo.yaml.
    "demo": [],
    "digits-h64": [*DIGITS, *shape(64, 2, 2)],
    "numbers-h64": [*NUMBERS, *shape(64, 2, 2)],
    "numbers-h96": [*NUMBERS, *shape(96, 2, 3)],
    "numbers-h128": [*NUMBERS, *shape(128, 2, 4)],
    "numbers-h128-l4": [*NUMBERS, *shape(128, 4, 4)],
    "numbers-h64-l4": [*NUMBERS, *shape(64, 4, 2)],
    "numbers-h96-l3": [*NUMBERS, *shape(96, 3, 3)],
    "numbers-h64-lr1e-2": [*NUMBERS, *shape(64, 2, 2), "train.learning_rate=0.01"],
    "numbers-h64-mb16": [*NUMBERS, *shape(64, 2, 2), "train.micro_batch_size=16"],
}
DEFAULT = "numbers-h64,numbers-h128,digits-h64"


def run(name: str, overrides: list[str], questions: int, epochs: float, work: Path, threads: int) -> dict:
    d = work / f"{name}_{questions}x{epochs:g}"
    shutil.rmtree(d, ignore_errors=True)
    cmd = [sys.executable, "-m", "tripost", "iterate", "--config", str(ROOT / "configs/demo.yaml"),
           "--name", "run", f"runs_dir={d}", "iterate.rounds=0", "iterate.baseline=false",
           "iterate.base_cache=null", f"iterate.warmup_questions={questions}", f"iterate.warmup_epochs={epochs}",
           "iterate.warmup_train={}",  # the train.* overrides below are the warm-up's
           f"train.threads={threads}", *overrides]
    load, t0 = os.getloadavg()[0], time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, NO_COLOR="1"))
    wall = time.time() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{name}: iterate failed:\n{proc.stderr[-3000:]}")
    r0 = d / "run/round_0"
    stats = json.loads((r0 / "warmup_train/train_stats.json").read_text())
    metrics = json.loads((r0 / "evaluate/metrics.json").read_text())
    manifests = {s: json.loads((r0 / s / "manifest.json").read_text()) for s in ("init_model", "warmup_process",
                                                                                 "warmup_train", "evaluate")}
    seconds = {s: m["timings"]["seconds"] for s, m in manifests.items()}
    from transformers import AutoConfig

    mc = AutoConfig.from_pretrained(str(r0 / "init_model"))
    params = mc.vocab_size * mc.hidden_size * (1 if mc.tie_word_embeddings else 2) + mc.num_hidden_layers * (
        4 * mc.hidden_size ** 2 + 3 * mc.hidden_size * mc.intermediate_size)
    n = metrics["n"]
    step1 = partition_ok(r0 / "evaluate/predictions.jsonl")
    return {"partition_ok": step1, "setting": name, "overrides": overrides, "questions": questions, "epochs": epochs,
            "params_approx": params, "vocab": mc.vocab_size, "tokens_seen": stats["tokens_seen"],
            "tokens_per_s": stats["tokens_per_s"], "train_s": stats["wall_s"],
            "build_s": seconds["init_model"] + seconds["warmup_process"] + seconds["warmup_train"],
            "eval_s": seconds["evaluate"], "wall_s": wall, "final_loss": stats["final_loss"],
            "seen": metrics["seen"]["accuracy"], "seen_ci": metrics["seen"]["accuracy_ci"],
            "seen_n": metrics["seen"]["n"], "unseen": metrics["unseen"]["accuracy"],
            "unseen_n": metrics["unseen"]["n"],
            "subtasks": {k: v["accuracy"] for k, v in metrics["subtasks"].items()},
            "truncated": metrics["stops"].get("truncated", 0) / n if n else None, "load_avg_1m": round(load, 2)}


def partition_ok(predictions: Path) -> float:
    """Share of seen test answers whose first step (the partition: the question copied into named
    parts) is the gold rationale's, word for word. A model learns to copy before it learns to
    calculate, so this moves long before accuracy does."""
    from tripost.records import read_trajectories
    from tripost.tasks.multistep_arithmetic import rationale

    trajs = [t for t in read_trajectories(predictions) if t.seen]
    ok = sum(t.messages[0].text.split("\n")[0] == rationale(t.question).split("\n")[0] for t in trajs)
    return ok / len(trajs)


COLUMNS = [("setting", "{setting}"), ("questions x ep", "{questions:,} x {epochs:g}"), ("params", "{params_approx:,}"),
           ("tokens", "{tokens_seen:,}"), ("tok/s", "{tokens_per_s:.0f}"), ("train s", "{train_s:.0f}"),
           ("build s", "{build_s:.0f}"), ("step 1 ok", "{partition_ok:.0%}"), ("seen", "{seen:.1%}"), ("seen 95% CI", "[{seen_ci[0]:.1%}, {seen_ci[1]:.1%}]"),
           ("unseen", "{unseen:.1%}"), ("trunc", "{truncated:.1%}"), ("eval s", "{eval_s:.0f}"),
           ("load", "{load_avg_1m:.1f}")]


def table(rows: list[dict]) -> str:
    cells = [[c for c, _ in COLUMNS]] + [[fmt.format(**r) for _, fmt in COLUMNS] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(COLUMNS))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
             for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--settings", default=DEFAULT, help=f"comma-separated names (--list); default {DEFAULT}")
    p.add_argument("--questions", default="4000", help="warm-up questions, comma-separated for a curve")
    p.add_argument("--epochs", type=float, default=1.0, help="warm-up epochs over them")
    p.add_argument("--threads", type=int, default=2, help="torch threads for training")
    p.add_argument("--out", default="/tmp/tripost_bench_warmup", help="work directory and results.jsonl")
    p.add_argument("--force", action="store_true", help="rerun runs already in results.jsonl")
    p.add_argument("--list", action="store_true", help="print the named settings and exit")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides added to every setting")
    args = p.parse_args()
    if args.list:
        for name, overrides in SETTINGS.items():
            print(f"{name:22} {' '.join(overrides) or '(configs/demo.yaml as it is)'}")
        return
    work = Path(args.out)
    work.mkdir(parents=True, exist_ok=True)
    results = work / "results.jsonl"
    done = {(r["setting"], r["questions"], r["epochs"], tuple(r["overrides"])): r
            for r in map(json.loads, results.read_text().splitlines())} if results.exists() else {}
    rows = []
    for q in (int(x) for x in args.questions.split(",")):
        for name in args.settings.split(","):
            if name not in SETTINGS:
                raise SystemExit(f"unknown setting {name!r}; --list shows them")
            overrides = SETTINGS[name] + args.overrides
            key = (name, q, args.epochs, tuple(overrides))
            if key in done and not args.force:
                rows.append(done[key])
                continue
            row = run(name, overrides, q, args.epochs, work, args.threads)
            with results.open("a") as f:
                f.write(json.dumps(row) + "\n")
            rows.append(row)
            print(table([row]).splitlines()[-1], flush=True)
    print(table(rows))


if __name__ == "__main__":
    main()
