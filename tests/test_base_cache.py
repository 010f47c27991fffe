"""The base cache (iterate.base_cache): the warmed-up base model is keyed by everything that makes
it, reused by every run and arm that asks for the same, and rebuilt when any input changes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tripost.config import PROJECT_ROOT, load_config
from tripost.iterate import plan

from conftest import TINY_RUN_OVERRIDES

DEMO = PROJECT_ROOT / "configs/demo.yaml"


def base_dirs(tmp_path: Path, *overrides: str) -> dict[str, Path]:
    cfg = load_config(DEMO, TINY_RUN_OVERRIDES + [f"iterate.base_cache={tmp_path / 'cache'}", *overrides])
    return {s.id: s.dir for s in plan(cfg, tmp_path / "run") if s.id.startswith("base/")}


def test_the_key_covers_what_makes_the_base_and_nothing_else(tmp_path):
    ref = base_dirs(tmp_path)
    assert set(ref) == {"base/init_model", "base/warmup_process", "base/warmup_train"}
    assert len({d.parent for d in ref.values()}) == 1 and ref["base/init_model"].parent.parent == tmp_path / "cache"
    # The same base: what happens after the warm-up, and how the trainer runs (operational keys).
    for same in (["tripost.p=0.2"], ["iterate.rounds=3"], ["train.threads=1"], ["evaluate.max_new_tokens=99"],
                 ["name=other"]):
        assert base_dirs(tmp_path, *same) == ref, same
    # A warm-up pool larger than the rounds' holds out the whole test split: how many test
    # questions a run evaluates does not change its base.
    pooled = base_dirs(tmp_path, "iterate.warmup_questions=40")
    assert base_dirs(tmp_path, "iterate.warmup_questions=40", "task.max_test=3") == pooled
    # Another base: the task, the tokenizer and model, the warm-up data and its training.
    for other in (["task.seed=1"], ["init_model.hidden_size=48"], ["init_model.tokenizer=digits"],
                  ["iterate.warmup_questions=40"], ["iterate.warmup_epochs=2"], ["train.learning_rate=0.001"],
                  ["process.max_tokens=500"]):
        dirs = base_dirs(tmp_path, *other)
        assert dirs["base/init_model"].parent != ref["base/init_model"].parent, other


def iterate(cwd: Path, name: str, *overrides: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "tripost", "iterate", "--config", str(DEMO), "--name", name,
           *TINY_RUN_OVERRIDES, "iterate.rounds=0", "iterate.baseline=false", "iterate.warmup_questions=12",
           f"iterate.base_cache={cwd / 'cache'}", *overrides]
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, OMP_NUM_THREADS="1", NO_COLOR="1"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def built(cache: Path) -> dict[str, str]:
    """key -> when its warm-up training finished."""
    return {d.name: json.loads((d / "warmup_train/manifest.json").read_text())["timings"]["end"]
            for d in sorted(cache.iterdir()) if (d / "warmup_train/manifest.json").is_file()}


def test_a_second_run_reuses_the_base_and_a_changed_input_builds_another(tmp_path):
    iterate(tmp_path, "first")
    first = built(tmp_path / "cache")
    assert len(first) == 1
    second = iterate(tmp_path, "second")
    assert built(tmp_path / "cache") == first  # not retrained
    assert "base/warmup_train" in second.stderr and not (tmp_path / "runs/second/round_0/warmup_train").exists()
    # Both runs evaluated the same base model.
    m1, m2 = (json.loads((tmp_path / f"runs/{n}/round_0/evaluate/metrics.json").read_text()) for n in ("first", "second"))
    assert m1 == m2
    # The printed footer says how much of the stage time was the base's (spent by the first run only).
    summary = json.loads((tmp_path / "runs/second/summary.json").read_text())
    assert 0 < summary["base_wall_s"] < summary["total_wall_s"]
    assert f"of which {summary['base_wall_s']} s built the base model" in second.stdout
    iterate(tmp_path, "third", "init_model.seed=1")
    now = built(tmp_path / "cache")
    assert len(now) == 2 and all(now[k] == v for k, v in first.items())
