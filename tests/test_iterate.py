"""`tripost iterate`: a tiny demo run finishes; SIGKILL at a random point of every stage + rerun
gives the same artifacts and repeats no API request; a changed config on a finished stage is
refused, and redone with --force-from.

One tiny 1-round run (LLM feedback through the local fake Messages API server) is the reference,
shared by every test in this module. The learner's answers are scripted (conftest.scripted_iterate):
an untrained model's cut-off text is dropped by the edit stage, so it would give the experts nothing
to edit.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tripost import runner as mf
from tripost.config import PROJECT_ROOT, load_config

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import TINY_RUN_OVERRIDES, scripted_iterate  # noqa: E402
from fake_messages_server import FakeMessagesServer, gold_rule  # noqa: E402

NAME = "t"
TINY = TINY_RUN_OVERRIDES


def llm_overrides(url: str) -> list[str]:
    return ["edit.feedback=llm", "edit.improvement=llm", f"edit.api.base_url={url}", "edit.api.max_retries=1",
            "edit.api.concurrency=2", "edit.batch_size=4"]


def env() -> dict:
    # The fake server accepts any key; single-threaded torch keeps the 2-core machine usable.
    return dict(os.environ, ANTHROPIC_API_KEY="test-key", OMP_NUM_THREADS="1", NO_COLOR="1")


def cli(cwd: Path, *args: str) -> list[str]:
    return scripted_iterate("--name", NAME, *args)


@pytest.fixture(scope="module")
def server():
    from tripost.tasks import get_task

    task = get_task(load_config(PROJECT_ROOT / "configs/demo.yaml", TINY).task)
    golds = {ex.question: task.gold_rationale(ex) for ex in task.load("train")}
    with FakeMessagesServer(rule=gold_rule(golds)) as srv:
        yield srv


@pytest.fixture(scope="module")
def reference(tmp_path_factory, server):
    """An uninterrupted tiny run: (cwd, run_dir, answered request hashes)."""
    cwd = tmp_path_factory.mktemp("reference")
    before = len(server.answered)
    args = cli(cwd, *TINY, *llm_overrides(server.url))
    proc = subprocess.run(args, cwd=cwd, env=env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    hashes = [r.hash for r in server.answered[before:]]
    return cwd, cwd / "runs" / NAME, hashes, proc.stdout


def stage_ids(run_dir: Path, overrides: list[str]) -> list[str]:
    from tripost.iterate import plan, prepare

    cfg = prepare(load_config(PROJECT_ROOT / "configs/demo.yaml", overrides))
    return [s.id for s in plan(cfg, run_dir)]


def artifact_hashes(run_dir: Path) -> dict[str, str]:
    """Hash of every JSONL artifact, order-insensitive (a resumed append may order lines
    differently; the records themselves must be identical)."""
    out = {}
    for path in sorted(run_dir.rglob("*.jsonl")):
        rel = str(path.relative_to(run_dir))
        if ".old-" in rel or path.name == "train_log.jsonl":
            continue
        lines = sorted(path.read_text().splitlines())
        out[rel] = hashlib.sha256("\n".join(lines).encode()).hexdigest()
    return out


def load_weights(model_dir: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(model_dir / "model.safetensors"))


# ----------------------------------------------------------------------------------------------


def test_tiny_run_finishes(reference):
    cwd, run_dir, hashes, stdout = reference
    ids = stage_ids(run_dir, TINY)
    assert ids[:4] == ["round_0/init_model", "round_0/warmup_process", "round_0/warmup_train", "round_0/evaluate"]
    assert "baseline/round_1/evaluate" in ids
    for sid in ids:
        m = mf.read_manifest(run_dir / sid)
        assert m is not None and m["status"] == "done", sid
        assert m["timings"]["seconds"] >= 0 and m["fingerprint"] and m["layout"] == 2
    # The edit stage hashes its templates and reads its input; the API cache is inside the run.
    edit = mf.read_manifest(run_dir / "round_1/edit")
    assert "round_1/collect/attempts.jsonl" in edit["inputs"]
    assert any("prompts/multistep_arithmetic" in k for k in edit["scripts"])
    assert edit["counts"]["kept"] + edit["counts"]["dropped"] == 10 and edit["counts"]["kept"] > 0
    assert hashes and any((run_dir / "api_cache").rglob("*.json"))
    summary = json.loads((run_dir / "summary.json").read_text())
    arms = [(r["round"], r["arm"]) for r in summary["rows"]]
    assert arms == [(0, "warm-up"), (1, "tripost"), (1, "baseline")]
    assert "round_1/train/learner" in ids and (run_dir / "round_1/train/learner/model").is_dir()
    assert (run_dir / "round_0/warmup_process/base.jsonl").is_file()
    assert (run_dir / "baseline/round_1/process/baseline.jsonl").is_file()
    tripost_row, baseline_row = summary["rows"][1], summary["rows"][2]
    # Equal compute: the baseline trained on as many tokens as TriPosT, to within one example.
    assert tripost_row["tokens_seen"] > 0
    matched = mf.read_manifest(run_dir / "baseline/round_1/process")["counts"]["matched"]
    assert matched["budget_tokens_seen"] == tripost_row["tokens_seen"]
    assert abs(baseline_row["tokens_seen"] - tripost_row["tokens_seen"]) < 600
    assert 0.0 <= tripost_row["accuracy"] <= 1.0
    assert "accuracy [95% CI]" in stdout and "baseline" in stdout


def test_rerun_is_a_no_op(reference, server):
    cwd, run_dir, _, _ = reference
    before_manifests = {p: p.read_bytes() for p in run_dir.rglob("manifest.json")}
    before_requests = len(server.requests)
    proc = subprocess.run(cli(cwd, *TINY, *llm_overrides(server.url)), cwd=cwd, env=env(),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "done in" not in proc.stderr  # no stage ran again
    assert {p: p.read_bytes() for p in run_dir.rglob("manifest.json")} == before_manifests
    assert len(server.requests) == before_requests


def test_changed_config_refused_then_forced(reference, server, tmp_path):
    cwd0, run_dir0, _, _ = reference
    cwd = tmp_path
    shutil.copytree(run_dir0, cwd / "runs" / NAME)
    run_dir = cwd / "runs" / NAME
    changed = [*TINY, *llm_overrides(server.url), "tripost.max_improvements=2"]
    proc = subprocess.run(cli(cwd, *changed), cwd=cwd, env=env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "error: stage round_1/edit" in proc.stderr
    assert "max_improvements: 5 -> 2" in proc.stderr
    assert "--force-from round_1/edit" in proc.stderr
    assert "Traceback" not in proc.stderr

    # An unknown stage name is a clear error too.
    proc = subprocess.run(cli(cwd, *changed, "--force-from", "round_9/edit"), cwd=cwd, env=env(),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "no stage 'round_9/edit'" in proc.stderr

    before = len(server.answered)
    proc = subprocess.run(cli(cwd, *changed, "--force-from", "round_1/edit"), cwd=cwd, env=env(),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # Moved aside, not deleted; earlier stages untouched; the redone edit records the new value.
    assert (run_dir / "round_1/edit.old-1/manifest.json").is_file()
    assert (run_dir / "baseline/round_1/evaluate.old-1").is_dir()
    assert not (run_dir / "round_1/collect.old-1").exists()
    assert mf.read_manifest(run_dir / "round_1/edit")["config"]["method_cfg"]["max_improvements"] == 2
    # Every request of the redone edit was answered before (the API cache is in the run dir, not
    # in the moved-aside stage directory): nothing is paid for again.
    assert server.answered[before:] == []


def test_sigkill_in_every_stage_then_rerun_gives_same_artifacts(reference, server, tmp_path):
    """Kill `iterate` (its whole process group, trainer included) once in each stage, at a random
    moment after the stage's manifest says running; rerun; compare with the uninterrupted run."""
    _, ref_dir, ref_hashes, _ = reference
    cwd = tmp_path
    run_dir = cwd / "runs" / NAME
    args = cli(cwd, *TINY, *llm_overrides(server.url))
    rng = random.Random(0)
    answered: list[str] = []  # request hashes the killed-and-resumed runs got answers for
    kills = []
    for sid in stage_ids(run_dir, TINY):
        m = mf.read_manifest(run_dir / sid)
        if m and m["status"] == "done":
            continue  # finished while we were aiming at an earlier stage
        held = sid.endswith("/edit")
        if held:
            # Deterministic for the API: answer 3 requests, hold the rest, kill once those 3 are
            # cached. A real service would bill the held ones only if it answered them.
            server.hold_after(3)
        start = len(server.requests)
        proc = subprocess.Popen(args, cwd=cwd, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                text=True, start_new_session=True)
        deadline = time.time() + 120
        while proc.poll() is None and time.time() < deadline:
            m = mf.read_manifest(run_dir / sid) if (run_dir / sid / "manifest.json").exists() else None
            if m is not None:
                if held:
                    cached = list((run_dir / "api_cache").rglob("*.json")) if (run_dir / "api_cache").exists() else []
                    if len(cached) < 3:
                        time.sleep(0.05)
                        continue
                else:
                    time.sleep(rng.uniform(0.0, 0.6))
                break
            time.sleep(0.05)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            kills.append(sid)
        proc.wait()
        answered += [r.hash for r in server.requests[start:] if r.answered and r.path == "/v1/messages"]
        if held:
            server.release()
    assert len(kills) >= 6, kills  # most stages were really interrupted

    before = len(server.requests)
    proc = subprocess.run(args, cwd=cwd, env=env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    answered += [r.hash for r in server.requests[before:] if r.answered and r.path == "/v1/messages"]

    # No paid request twice, and exactly the requests of the uninterrupted run.
    assert len(answered) == len(set(answered)), "an API request was answered twice"
    assert set(answered) == set(ref_hashes)
    for sid in stage_ids(run_dir, TINY):
        assert mf.read_manifest(run_dir / sid)["status"] == "done", sid

    # Same records (attempts, trajectories, dropped, examples, predictions) ...
    got, want = artifact_hashes(run_dir), artifact_hashes(ref_dir)
    assert got.keys() == want.keys()
    diffs = [k for k in want if got[k] != want[k]]
    assert not diffs, f"artifacts differ after kill+resume: {diffs} (kills in {kills})"
    # ... and the same weights, within float tolerance.
    for model in ("round_1/train/learner/model", "baseline/round_1/train/model"):
        a, b = load_weights(run_dir / model), load_weights(ref_dir / model)
        assert a.keys() == b.keys()
        for k in a:
            assert (a[k] - b[k]).abs().max().item() < 1e-4, (model, k)
