"""Stages are fingerprinted on what they read: with an LLM writing the gold rationales, the warm-up
data depends on the API settings and on prompts/<task>/rationale.j2, so changing either must flag the
finished warm-up stage instead of silently keeping stale data.

This test drives the CLI only, with config keys that exist in every tripost version, so it runs
unchanged against older commits: at 65ec9aa (before stages were fingerprinted on what they are
given) both reruns below exit 0 and keep the stale rationales.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from fake_messages_server import FakeMessagesServer, gold_rule  # noqa: E402


def _questions(n: int = 15) -> list[tuple[str, str, str]]:
    """(question, answer, gold rationale) of generated arithmetic questions."""
    from tripost.config import load_config
    from tripost.tasks import get_task

    task = get_task(load_config(None, [("task.max_train", n)]).task)
    return [(ex.question, ex.answer, task.gold_rationale(ex)) for ex in task.load("train")]


def _config(tmp: Path, url: str) -> dict:
    return {
        "name": "fp", "runs_dir": str(tmp / "runs"),
        "task": {"name": "jsonl", "path": str(tmp / "data.jsonl")},
        "init_model": {"vocab_size": 320, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                       "num_attention_heads": 2, "num_key_value_heads": 2, "max_position_embeddings": 512},
        "edit": {"feedback": "llm", "improvement": "llm", "prompts_dir": str(tmp / "prompts"),
                 "api": {"base_url": url, "max_retries": 1, "concurrency": 2}},
        "train": {"epochs": 1, "micro_batch_size": 4, "max_length": 512},
        "evaluate": {"batch_size": 8, "max_new_tokens": 16},
        "iterate": {"rounds": 0, "warmup": True, "warmup_epochs": 1, "baseline": False},
    }


def _iterate(tmp: Path, *overrides: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, ANTHROPIC_API_KEY="test-key", OMP_NUM_THREADS="1", NO_COLOR="1")
    return subprocess.run([sys.executable, "-m", "tripost", "iterate", "--config", str(tmp / "fp.yaml"), *overrides],
                          cwd=tmp, env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fingerprints")
    rows = _questions()
    (tmp / "data.jsonl").write_text("".join(json.dumps({"question": q, "answer": a}) + "\n" for q, a, _ in rows))
    shutil.copytree(ROOT / "prompts" / "jsonl", tmp / "prompts")
    with FakeMessagesServer(rule=gold_rule({q: r for q, _, r in rows})) as server:
        (tmp / "fp.yaml").write_text(yaml.safe_dump(_config(tmp, server.url)))
        first = _iterate(tmp)
        assert first.returncode == 0, first.stderr[-3000:]
        yield tmp, server


def test_changed_rationale_template_flags_the_warmup_data(finished_run):
    tmp, _ = finished_run
    template = tmp / "prompts" / "rationale.j2"
    original = template.read_text()
    try:
        template.write_text(original + "\n{# the instructions changed #}\n")
        rerun = _iterate(tmp)
    finally:
        template.write_text(original)
    assert rerun.returncode == 2, rerun.stdout[-2000:] + rerun.stderr[-2000:]
    assert ("round_0/warmup_process" in rerun.stderr or "round_0/init_model" in rerun.stderr) and "rationale.j2" in rerun.stderr


def test_changed_api_model_flags_the_warmup_data(finished_run):
    tmp, _ = finished_run
    rerun = _iterate(tmp, "edit.api.model=another-model")
    assert rerun.returncode == 2, rerun.stdout[-2000:] + rerun.stderr[-2000:]
    assert ("round_0/warmup_process" in rerun.stderr or "round_0/init_model" in rerun.stderr) and "another-model" in rerun.stderr


def test_unchanged_config_reruns_cleanly(finished_run):
    tmp, server = finished_run
    before = len(server.requests)
    rerun = _iterate(tmp)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert len(server.requests) == before  # nothing asked again
