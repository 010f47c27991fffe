"""Parity and speed: vLLM greedy (tripost.vllm_engine) against Hugging Face greedy (`model.generate`).

Runs inside the vLLM venv (docs/vllm_notes.md), from the repository root:

    PYTHONPATH=. /work/venvs/vllm/bin/python bench/vllm_parity.py                     # random tiny model
    PYTHONPATH=. /work/venvs/vllm/bin/python bench/vllm_parity.py --model models/tiny64_train/model --lora
    PYTHONPATH=. /work/venvs/vllm/bin/python bench/vllm_parity.py --model models/smollm2 --chat \\
        --questions 4 --max-new-tokens 64

Prompts are multistep_arithmetic training questions (`--questions`, default 64) as tripost writes
them ("Q: ...\\nA: ", trailing space cut as engine.generate_batch cuts it), or with `--chat` wrapped
in the tokenizer's chat template (for an instruct model such as SmolLM2). Every prompt is tokenized
once by the model's Hugging Face tokenizer; both engines get the same ids (vLLM as TokensPrompt,
so it adds no BOS of its own).

  * Reference: `model.generate`, greedy, one prompt at a time (no padding), float32.
  * Hugging Face batched: tripost's own path, `engine.generate_batch` on all prompts in batches
    of --batch-size (left padding; LlamaDecoder for a small Llama), timed.
  * vLLM: all prompts in one `LLM.generate` call (its scheduler batches them), greedy, float32.

Prints the share of prompts whose new tokens are identical to the reference, the mean length of
the common prefix where they differ, and tokens/s of each path. It also checks that
`VllmEngine.generate` (texts and truncation flags) equals `engine.generate_batch`'s, and that
sampling with per-request seeds gives a request the same text in a different batch. `--lora` (needs
`pip install peft`) builds the engine with LoRA enabled, makes a random rank-8 adapter on every
projection and sends every other request with it: those must equal HF greedy with the adapter merged
(PEFT merge_and_unload), the others HF greedy of the base model.

Without --model it builds an untrained tiny Llama with head_dim 64 (hidden 128, 2 heads; vLLM's
CPU attention takes head_dim 32, 64, 80, ... but not 16) with `tripost.model_init`. A briefly
trained one writes realistic text; make it in the main env (README):

    tripost init-model --task multistep_arithmetic --out models/tiny64 task.max_train=400 \\
        init_model.hidden_size=128 init_model.num_attention_heads=2 init_model.num_key_value_heads=2 \\
        init_model.num_hidden_layers=2 init_model.vocab_size=384
    tripost process --rationales --tokenizer models/tiny64 --out models/tiny64_gold task.max_train=400
    tripost train --examples models/tiny64_gold/base.jsonl --model models/tiny64 --out models/tiny64_train \\
        train.epochs=3 train.learning_rate=0.003 train.micro_batch_size=8 train.max_length=768
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def hf_reference(model, prompt_ids, max_new_tokens, eos, pad):
    """Greedy new ids of `model.generate`, one prompt at a time; (ids per prompt, seconds)."""
    import torch

    start = time.perf_counter()
    outs = []
    for ids in prompt_ids:
        x = torch.tensor([ids])
        with torch.inference_mode():
            out = model.generate(input_ids=x, attention_mask=torch.ones_like(x), max_new_tokens=max_new_tokens,
                                 do_sample=False, temperature=None, top_p=None, top_k=None,
                                 eos_token_id=eos, pad_token_id=pad)
        outs.append(out[0, len(ids):].tolist())
    return outs, time.perf_counter() - start


def make_adapter(model_dir, out_dir, rank: int = 8, scale: float = 0.05, seed: int = 0) -> Path:
    """A PEFT LoRA adapter on every projection of `model_dir`, with random (not zero) B matrices so
    it changes the model's output; saved to `out_dir`."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    peft_model = get_peft_model(base, LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=targets))
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, scale)
    peft_model.save_pretrained(out_dir)
    return Path(out_dir)


def merged(model_dir, adapter_dir):
    """The base model with the adapter merged into its weights (Hugging Face + PEFT)."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    return PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload().eval()


def common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="Hugging Face model directory (default: build an untrained tiny Llama)")
    parser.add_argument("--questions", type=int, default=64)
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=32, help="batch of the Hugging Face batched path")
    parser.add_argument("--chat", action="store_true", help="wrap questions in the chat template")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the Hugging Face paths")
    parser.add_argument("--kv-cache-gb", type=float, default=1.0)
    parser.add_argument("--compile", action="store_true", help="let vLLM torch.compile the model (slow start)")
    parser.add_argument("--lora", action="store_true",
                        help="also serve a random LoRA adapter per request (needs peft) and compare with HF merged")
    args = parser.parse_args()

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tripost import steps
    from tripost.config import GenerationConfig, load_config
    from tripost.engine import generate_batch
    from tripost.tasks import get_task
    from tripost.vllm_engine import VllmEngine

    torch.set_num_threads(args.threads)
    cfg = load_config(None, [("task.max_train", args.questions)])
    if args.model:
        model_dir = Path(args.model)
    else:
        from tripost.model_init import init_model

        cfg_model = load_config(None, [("task.max_train", 200), ("init_model.hidden_size", 128),
                                       ("init_model.num_attention_heads", 2), ("init_model.num_key_value_heads", 2),
                                       ("init_model.num_hidden_layers", 2), ("init_model.vocab_size", 384)])
        model_dir = init_model(cfg_model, Path(tempfile.mkdtemp(prefix="vllm_parity_")) / "tiny64")
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    questions = [ex.question for ex in get_task(cfg.task).load("train")][:args.questions]
    if args.chat:
        prompts = [tokenizer.apply_chat_template(
            [{"role": "user", "content": f"{q}\nAnswer step by step, then write \"So the answer is X.\""}],
            tokenize=False, add_generation_prompt=True) for q in questions]
    else:
        prompts = [steps.prompt(q) for q in questions]
    prompt_ids = tokenizer([p.rstrip(" ") for p in prompts])["input_ids"]
    n_new = args.max_new_tokens
    print(f"model {model_dir}: {len(prompts)} prompts, {sum(map(len, prompt_ids)) / len(prompts):.0f} prompt "
          f"tokens on average, {n_new} new tokens at most, torch threads {args.threads}", flush=True)

    # vLLM first (its engine processes are started once and then wait idle).
    start = time.perf_counter()
    engine = VllmEngine(model_dir, seed=0, max_model_len=max(map(len, prompt_ids)) + n_new + 8,
                        kv_cache_gb=args.kv_cache_gb, enforce_eager=not args.compile, enable_lora=args.lora)
    vllm_start_s = time.perf_counter() - start
    engine.new_token_ids(prompt_ids[:2], 4)  # warm-up
    start = time.perf_counter()
    vllm_ids = engine.new_token_ids(prompt_ids, n_new)
    vllm_s = time.perf_counter() - start
    gen = GenerationConfig(max_new_tokens=n_new, batch_size=args.batch_size)
    vllm_texts = engine.generate(prompts, max_new_tokens=n_new)
    # Sampling with per-request seeds: the same request samples the same text in another batch.
    seeds = list(range(len(prompts)))
    sampled = engine.generate(prompts, max_new_tokens=32, do_sample=True, temperature=1.0, top_p=0.9, seeds=seeds)
    half = len(prompts) // 2
    resampled = engine.generate(prompts[half:][::-1], max_new_tokens=32, do_sample=True, temperature=1.0,
                                top_p=0.9, seeds=seeds[half:][::-1])[::-1]
    same_sampled = sum(a == b for a, b in zip(sampled[half:], resampled))
    if args.lora:
        adapter = make_adapter(model_dir, Path(tempfile.mkdtemp(prefix="vllm_lora_")) / "adapter")
        lora_dirs = [str(adapter) if i % 2 == 0 else None for i in range(len(prompts))]  # every other request
        start = time.perf_counter()
        lora_ids = engine.new_token_ids(prompt_ids, n_new, lora_dirs=lora_dirs)
        lora_s = time.perf_counter() - start

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    eos = model.generation_config.eos_token_id
    ref_ids, ref_s = hf_reference(model, prompt_ids, n_new, eos, tokenizer.pad_token_id)
    start = time.perf_counter()
    hf_texts = []
    for b in range(0, len(prompts), args.batch_size):
        hf_texts += generate_batch(model, tokenizer, prompts[b:b + args.batch_size], gen)
    hf_batch_s = time.perf_counter() - start

    if args.lora:
        lora_ref, _ = hf_reference(merged(model_dir, adapter), prompt_ids[::2], n_new, eos, tokenizer.pad_token_id)
        same_lora = sum(v == r for v, r in zip(lora_ids[::2], lora_ref))
        same_base = sum(v == r for v, r in zip(lora_ids[1::2], ref_ids[1::2]))
        changed = sum(r != b for r, b in zip(lora_ref, ref_ids[::2]))

    same = [v == r for v, r in zip(vllm_ids, ref_ids)]
    differ = [(common_prefix(v, r), len(r)) for v, r in zip(vllm_ids, ref_ids) if v != r]
    n_ref, n_vllm = sum(map(len, ref_ids)), sum(map(len, vllm_ids))
    same_text = sum(v == h for v, h in zip(vllm_texts, hf_texts))
    print(f"identical greedy outputs (vLLM vs HF model.generate): {sum(same)}/{len(same)} "
          f"({100 * sum(same) / len(same):.1f}%)")
    if differ:
        print(f"  where they differ: common prefix {sum(c for c, _ in differ) / len(differ):.1f} tokens on average "
              f"(of {sum(n for _, n in differ) / len(differ):.1f}); first {differ[:8]}")
    print(f"VllmEngine.generate == engine.generate_batch (text, truncated): {same_text}/{len(prompts)}")
    print(f"sampling (top_p 0.9, per-request seeds): {same_sampled}/{len(resampled)} requests sampled the same "
          f"text in a different batch")
    if args.lora:
        print(f"LoRA per request (every other request, rank 8): with adapter == HF merged {same_lora}/{len(lora_ref)}, "
              f"without == HF base {same_base}/{len(prompts) // 2}; the adapter changes {changed}/{len(lora_ref)} "
              f"outputs; {sum(map(len, lora_ids)) / lora_s:.1f} tokens/s")
    print(f"new tokens: HF {n_ref}, vLLM {n_vllm}")
    print(f"HF model.generate, one at a time: {ref_s:7.1f} s  {n_ref / ref_s:8.1f} tokens/s")
    print(f"HF generate_batch, batch {args.batch_size:3d}:    {hf_batch_s:7.1f} s  "
          f"{n_ref / hf_batch_s:8.1f} tokens/s (the reference's token count)")
    print(f"vLLM, one generate call:          {vllm_s:7.1f} s  {n_vllm / vllm_s:8.1f} tokens/s "
          f"(engine start {vllm_start_s:.1f} s)")
    for i in range(min(2, len(prompts))):
        print(f"--- prompt {i}: {prompts[i][-60:]!r}\nHF:   {tokenizer.decode(ref_ids[i])[:200]!r}\n"
              f"vLLM: {tokenizer.decode(vllm_ids[i])[:200]!r}")


if __name__ == "__main__":  # vLLM spawns its engine process, which re-imports this file
    main()
