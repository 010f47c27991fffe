"""Multi-agent finetuning end to end: `tripost iterate` with a tiny config for one round (three
generators, three critics, the single-agent arm and the rationale-SFT baseline), then SIGKILL inside
the debate (round_1/collect, with episodes half-way through their debate) and inside a per-agent
train stage (after its first checkpoint), a rerun after each, and the same records and weights as
the uninterrupted run.

The tiny model is warmed up long enough on 10 questions to write parseable (mostly wrong) answers,
and ties are broken by the largest string, so that the agents get training data.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tripost import runner as mf
from tripost.records import read_examples, read_trajectories

NAME = "ma"
CONFIG = """
method: multiagent
task: {max_train: 10, max_test: 6}
init_model: {vocab_size: 320, hidden_size: 64, intermediate_size: 128, num_hidden_layers: 2,
             num_attention_heads: 2, num_key_value_heads: 2, max_position_embeddings: 1024}
collect: {max_new_tokens: 230, batch_size: 2, do_sample: true, temperature: 0.3}  # 8 debates at a time: some finish first
evaluate: {max_new_tokens: 230, batch_size: 8}
train: {epochs: 4, micro_batch_size: 2, learning_rate: 0.003, max_length: 768}
process: {max_tokens: 768}
iterate:
  warmup_epochs: 40
  rounds: 1
  base_cache: runs/base_cache
  arms: {single_agent: {agents: 1, samples: 3, debate_rounds: 1}}
multiagent: {tie_break: largest_string, max_others: 1}
"""
AGENTS = ["gen0", "gen1", "gen2", "critic0", "critic1", "critic2"]


def env() -> dict:
    return dict(os.environ, OMP_NUM_THREADS="1", NO_COLOR="1")


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "tripost", "iterate", "--config", "tiny.yaml", "--name", NAME, *args]


# The kill-and-resume runs redo round 1 of the method only (not its arm and baseline), to save time,
# and save a checkpoint every 2 steps (an operational key: finished stages stay valid).
ROUND_ONLY = ("iterate.baseline=false", "iterate.arms={}", "train.save_every_steps=2")


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("ma_reference")
    (cwd / "tiny.yaml").write_text(CONFIG)
    proc = subprocess.run(cli(), cwd=cwd, env=env(), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return cwd, proc.stdout


def artifact_hashes(run_dir: Path) -> dict[str, str]:
    """Every JSONL record file, order-insensitive (a resumed append writes in another order)."""
    out = {}
    for path in sorted(run_dir.rglob("*.jsonl")):
        rel = str(path.relative_to(run_dir))
        if ".old-" in rel or path.name == "train_log.jsonl":
            continue
        out[rel] = hashlib.sha256("\n".join(sorted(path.read_text().splitlines())).encode()).hexdigest()
    return out


def weights(model_dir: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(model_dir / "model.safetensors"))


def test_one_round_trains_every_agent_on_its_own_data(reference):
    cwd, stdout = reference
    run = cwd / "runs" / NAME
    for agent in AGENTS:
        assert (run / f"round_1/process/{agent}.jsonl").is_file()
        assert mf.read_manifest(run / f"round_1/train/{agent}")["status"] == "done"
        for e in read_examples(run / f"round_1/process/{agent}.jsonl"):
            assert e.model == agent and e.method == "multiagent"
            assert e.kind in (("generator",) if agent.startswith("gen") else ("dminus", "dplus"))
    stats = json.loads((run / "round_1/process/stats.json").read_text())
    assert set(stats["models"]) == set(AGENTS)
    critics = [stats["models"][c]["final"]["total"] for c in AGENTS[3:]]
    assert sum(critics) > 0, stats  # the warmed-up agents reached consensus on something
    # Counted, not lost: the questions without a consensus are in dropped.jsonl.
    collect = mf.read_manifest(run / "round_1/collect")["counts"]
    kept = read_trajectories(run / "round_1/collect/attempts.jsonl")
    dropped = read_trajectories(run / "round_1/collect/dropped.jsonl")
    assert collect["kept"] == len(kept) and collect["dropped"] == len(dropped) and len(kept) + len(dropped) == 10
    assert all(t.status == "dropped" and t.drop_reason == "no_parseable_answer" for t in dropped)
    # Each agent has its own train stage, starting from the shared base; an agent without
    # examples continues unchanged (0 tokens).
    for agent in AGENTS:
        m = mf.read_manifest(run / f"round_1/train/{agent}")
        assert any("warmup_train" in k for k in m["inputs"]), m["inputs"]
        if m["counts"]["tokens_seen"] == 0:
            assert m["counts"]["skipped"].startswith("no training examples")
    summary = json.loads((run / "summary.json").read_text())
    rows = {(r["round"], r["arm"]): r for r in summary["rows"]}
    assert set(rows) == {(0, "warm-up"), (1, "multiagent"), (1, "single_agent"), (1, "baseline")}
    ma = rows[(1, "multiagent")]
    assert {"consensus", "gen0_accuracy", "fixed_wrong_majority", "disagreement0"} <= set(ma["method_metrics"])
    assert ma["kept"] == len(kept) and ma["vs_baseline"] is not None and rows[(1, "single_agent")]["vs_baseline"]
    # Equal compute: the arm and the baseline trained on as many tokens as the six agents.
    total = ma["tokens_seen"]
    assert total > 0
    for arm in ("single_agent", "baseline"):
        assert abs(rows[(1, arm)]["tokens_seen"] - total) < 0.1 * total + 800, (arm, rows[(1, arm)]["tokens_seen"], total)
    assert "gen0 acc" in stdout and "consensus" in stdout and "single_agent" in stdout


def _kill_when(cwd: Path, ready, timeout: float = 600) -> bool:
    """Start iterate, SIGKILL its process group once ready() is true; True if it was killed."""
    proc = subprocess.Popen(cli(*ROUND_ONLY), cwd=cwd, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.time() + timeout
    while proc.poll() is None and time.time() < deadline:
        if ready():
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return True
        time.sleep(0.02)
    proc.wait()
    return False


def _lines(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.is_file() else 0


def test_sigkill_inside_the_debate_and_a_per_agent_train_stage(reference, tmp_path):
    ref_cwd, _ = reference
    cwd = tmp_path
    shutil.copytree(ref_cwd / "runs", cwd / "runs")  # the base cache and round 0 as they are
    (cwd / "tiny.yaml").write_text(CONFIG)
    run = cwd / "runs" / NAME
    for sid in ("round_1", "arms", "baseline"):
        shutil.rmtree(run / sid)
    (run / "summary.json").unlink()

    # 1. Inside the debate: some questions finished, the others half-way (round-0 answers given,
    #    the critics' not yet): they are lost and redone from round 0 with the same seeds.
    collect = run / "round_1/collect"

    def mid_debate() -> bool:
        done = _lines(collect / "attempts.jsonl") + _lines(collect / "dropped.jsonl")
        return 0 < done < 10 and not mf.is_done(collect)

    assert _kill_when(cwd, mid_debate), "round_1/collect finished before it could be killed"
    assert not mf.is_done(collect)

    # 2. Inside a per-agent train stage, after its first checkpoint.
    stats = json.loads((ref_cwd / "runs" / NAME / "round_1/process/stats.json").read_text())
    # 3 examples, 2 a step, 4 epochs: 8 steps, a checkpoint every 2.
    agent = next((a for a in AGENTS if stats["models"][a]["final"]["total"] >= 3), None)
    assert agent is not None, f"no agent has 3 examples to train on: {stats['models']}"
    train = run / f"round_1/train/{agent}"

    def mid_train() -> bool:
        ckpts = list((train / "checkpoints").glob("step_*/COMPLETE")) if (train / "checkpoints").is_dir() else []
        return bool(ckpts) and not mf.is_done(train)

    assert _kill_when(cwd, mid_train), f"round_1/train/{agent} finished before it could be killed"
    assert mf.is_done(collect) and not mf.is_done(train)

    proc = subprocess.run(cli(*ROUND_ONLY), cwd=cwd, env=env(), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = artifact_hashes(run)
    want = {k: v for k, v in artifact_hashes(ref_cwd / "runs" / NAME).items() if k.startswith(("round_0/", "round_1/"))}
    assert got.keys() == want.keys()
    assert [k for k in want if got[k] != want[k]] == []
    for a in AGENTS:
        x, y = weights(run / f"round_1/train/{a}/model"), weights(ref_cwd / "runs" / NAME / f"round_1/train/{a}/model")
        assert x.keys() == y.keys()
        assert all((x[k] - y[k]).abs().max().item() < 1e-4 for k in x), a
