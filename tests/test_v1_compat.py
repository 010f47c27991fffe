"""Run directories written before the method seam (records v1, layout 1: tests/data/v1_run, made
by 65ec9aa) keep working: inspect reads their files, report renders them, and iterate resumes
them, keeping the finished round and adding the next one in the new layout."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from tripost.config import read_yaml, upgrade
from tripost.records import Trajectory, read_examples, read_trajectories

V1_RUN = Path(__file__).resolve().parent / "data" / "v1_run"


def _tripost(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", NO_COLOR="1")
    return subprocess.run([sys.executable, "-m", "tripost", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)


def test_v1_records_read_as_v2():
    attempts = read_trajectories(V1_RUN / "round_1/collect/attempts.jsonl")
    kept = read_trajectories(V1_RUN / "round_1/edit/trajectories.jsonl")
    assert all(isinstance(t, Trajectory) and t.method == "tripost" and t.status == "kept" for t in attempts + kept)
    edited = kept[0]
    assert [m.kind for m in edited.messages] == ["attempt", "feedback", "update", "feedback"]
    assert edited.messages[0].author == "model:learner" and edited.messages[2].author.startswith("script:")
    assert edited.correct and edited.stage == "edit" and edited.round == 1
    examples = read_examples(V1_RUN / "round_1/process/examples.jsonl")
    improvement = next(e for e in examples if e.kind == "improvement")
    assert [s.weight for s in improvement.segments] == [0.0, 1.0, 1.5, 1.5]
    assert improvement.text.startswith("Q: ") and improvement.segments[0].speaker == "user"


def test_inspect_and_report_on_a_v1_run(tmp_path):
    shown = _tripost(tmp_path, "inspect", str(V1_RUN / "round_1/edit/trajectories.jsonl"), "--limit", "1")
    assert shown.returncode == 0, shown.stderr
    assert "learner update by script:multistep_arithmetic.py" in shown.stdout and "status: kept" in shown.stdout
    tokens = _tripost(tmp_path, "inspect", str(V1_RUN / "round_1/process/examples.jsonl"), "--kind", "improvement",
                      "--limit", "1", "--tokens")
    assert tokens.returncode == 0, tokens.stderr
    assert "|1.5]" in tokens.stdout and "|0]" in tokens.stdout  # the run's own w, the question masked
    report = _tripost(tmp_path, "report", str(V1_RUN), "--out", str(tmp_path / "report.html"))
    assert report.returncode == 0, report.stderr
    page = (tmp_path / "report.html").read_text()
    assert "baseline" in page and "round 1" in page.lower()


def test_iterate_resumes_a_v1_run(tmp_path):
    run = tmp_path / "runs" / "v1"
    shutil.copytree(V1_RUN, run)
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    cfg = upgrade(read_yaml(run / "config.yaml"))  # the run's own settings, in today's key names
    cfg["edit"]["api"].pop("cache_dir")
    cfg["iterate"]["rounds"] = 2
    (tmp_path / "resume.yaml").write_text(yaml.safe_dump(cfg))
    proc = _tripost(tmp_path, "iterate", "--config", "resume.yaml")
    assert proc.returncode == 0, proc.stderr[-3000:]
    # Round 1 is kept as it was; round 2 continues from its model, in the new layout.
    for path, data in before.items():
        if path.name not in ("summary.json", "config.yaml"):
            assert path.read_bytes() == data, f"{path} changed"
    manifest = json.loads((run / "round_2/train/learner/manifest.json").read_text())
    assert manifest["status"] == "done" and "round_1/train/model" in manifest["inputs"]
    summary = json.loads((run / "summary.json").read_text())
    assert [(r["round"], r["arm"]) for r in summary["rows"]] == [(0, "warm-up"), (1, "tripost"), (1, "baseline"),
                                                                 (2, "tripost"), (2, "baseline")]
