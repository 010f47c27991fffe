"""Benchmark: tripost's generation engine against Hugging Face `generate` and vLLM, same prompts.

    python bench/rollout.py                                   # untrained tiny model built in a temp dir
    python bench/rollout.py --model /work/models/tiny64_train/model --prompts 64 --new-tokens 128 \\
        --batch 32 --repeats 5 --threads 1
    # with the vLLM rows: the same script inside the vLLM venv (docs/vllm_notes.md)
    VLLM_CPU_KVCACHE_SPACE=1 /work/venvs/vllm/bin/python bench/rollout.py --model ... \\
        --systems tripost,hf,vllm,tripost-vllm

What is timed (`--systems`, comma-separated; default all that can run here):

  tripost            tripost's own path: `engine.ModelAnswerer` (gen.backend=hf) answering the
                     requests in the batches it makes itself (length-sorted, `--batch` rows). For
                     a Llama of at most 100M parameters on the CPU that is tripost/llama_cpu.py's
                     LlamaDecoder, for a bigger model Hugging Face `generate` with a static cache.
  hf                 Hugging Face `model.generate` on left-padded batches, the default (dynamic)
                     KV cache, the model loaded as `from_pretrained` leaves it (SDPA attention).
  hf-static          the same with `cache_implementation="static"`.
  hf-static-compile  the same plus `torch.compile` of the decoding forward (transformers'
                     CompileConfig, mode "default", forced on for the CPU). Compilation happens in
                     the warm-up run, which is not timed; its time is printed. A failure is caught
                     and reported as the row's result.
  one-at-a-time      `model.generate` on one prompt at a time (no padding, dynamic cache).
  vllm               plain vLLM: `LLM.generate` on the prompt strings (vLLM tokenizes and
                     detokenizes), greedy, all prompts in one call.
  tripost-vllm       `engine.ModelAnswerer` with gen.backend=vllm on the SAME engine (what
                     collect/evaluate run with backend=vllm). vllm and tripost-vllm rows appear
                     only where `import vllm` works.

Fairness:
  * Same prompts: the first `--prompts` multistep_arithmetic training questions, as
    `tripost.steps.prompt` writes them, the trailing space cut as `generate_batch` cuts it, so
    every system sees the same token ids. Every batched system gets the SAME batches: the
    length-sorted batches tripost's ModelAnswerer makes (so the comparison is of engines, not of
    batching; unsorted batches would pad more and flatter tripost).
  * Same new tokens: every system writes exactly `--new-tokens` tokens per prompt (EOS is banned
    until then: `min_new_tokens` for Hugging Face and tripost, which honours the model's
    generation_config.min_new_tokens; `min_tokens` for vLLM - tripost's VllmEngine has no such
    knob, so this script adds min_tokens to every vLLM SamplingParams it builds). The count is
    checked after every run, so tokens/s is on what was actually generated.
  * Same threads: OMP_NUM_THREADS and torch.set_num_threads are `--threads` for everyone, gen.threads
    too; vLLM's worker is not pinned to a core (VLLM_CPU_OMP_THREADS_BIND=nobind, like the rest).
  * A machine shared with other jobs: every system runs once untimed (warm-up), then `--repeats`
    rounds each running every system once, in turn (A, B, C, A, B, C, ...). Reported: median
    tokens/s with the min and max over rounds, the median of the per-round ratios to `hf` (each
    ratio from runs seconds apart), and the share of prompts whose greedy text equals `hf`'s and
    one-at-a-time's (when that row ran).
  * Also tokens per CPU-second: the CPU time (user + system) of this process and of its live child
    processes (vLLM's engine and worker) during the run. With one thread, wall time on a busy
    machine is mostly waiting for a core; CPU time is the work done, and varies much less with the
    load. (vLLM's idle worker polls, about 0.07 CPU-s per second: that is counted in every row of a
    run in the vLLM venv.)
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

ALL_SYSTEMS = ["tripost", "hf", "hf-static", "hf-static-compile", "one-at-a-time", "vllm", "tripost-vllm"]


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="Hugging Face model directory (default: an untrained init-model tiny Llama)")
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--systems", default=",".join(ALL_SYSTEMS))
    ap.add_argument("--single-prompts", type=int, default=None,
                    help="one-at-a-time runs only the first this many prompts (it is slow); default all")
    return ap.parse_args()


def cpu_seconds() -> float:
    """User + system CPU time of this process and its live descendants (vLLM's engine processes)."""
    import psutil

    me = psutil.Process()
    total = sum(me.cpu_times()[:2])
    for child in me.children(recursive=True):
        try:
            total += sum(child.cpu_times()[:2])
        except psutil.NoSuchProcess:
            pass
    return total


def have_vllm() -> bool:
    try:
        import vllm  # noqa: F401
    except ImportError:
        return False
    return True


def main() -> None:
    args = parse_args()
    # Threads before torch is imported: the OpenMP pool reads OMP_NUM_THREADS once.
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tripost import engine, steps
    from tripost.config import GenerationConfig, load_config
    from tripost.llama_cpu import LlamaDecoder
    from tripost.tasks import get_task

    torch.set_num_threads(args.threads)
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    unknown = set(systems) - set(ALL_SYSTEMS)
    if unknown:
        raise SystemExit(f"unknown systems: {', '.join(sorted(unknown))} (have {', '.join(ALL_SYSTEMS)})")
    if not have_vllm():
        skipped = [s for s in systems if "vllm" in s]
        if skipped:
            print(f"vllm is not importable here: skipping {', '.join(skipped)}", file=sys.stderr)
        systems = [s for s in systems if "vllm" not in s]

    cfg = load_config(None, [("task.name", "multistep_arithmetic"), ("task.max_train", args.prompts)])
    questions = [ex.question for ex in get_task(cfg.task).load("train")][: args.prompts]
    prompts = [steps.prompt(q) for q in questions]
    trimmed = [p.rstrip(" ") for p in prompts]  # what generate_batch and VllmEngine tokenize
    T, B = args.new_tokens, args.batch

    tmp = tempfile.TemporaryDirectory()
    model_dir = Path(args.model) if args.model else build_tiny(cfg, Path(tmp.name) / "model")
    tok = AutoTokenizer.from_pretrained(model_dir)
    tok.padding_side = "left"
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    eos, pad = tok.eos_token_id, tok.pad_token_id

    gen = GenerationConfig(batch_size=B, max_new_tokens=T, threads=args.threads)
    tripost_hf = engine.ModelAnswerer("tripost", model_dir, gen)
    tripost_hf.model.generation_config.min_new_tokens = T  # honoured by LlamaDecoder and generate alike
    requests = [engine.Request("learner", "generate", prompt=p) for p in prompts]
    batches = tripost_hf.batches(requests)  # length-sorted index lists, shared by all batched systems
    decoder = "LlamaDecoder" if LlamaDecoder.supports(tripost_hf.model) else "HF generate, static cache"

    hf_model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    n_params = sum(p.numel() for p in hf_model.parameters())

    def decode(new_ids_rows, idx):
        """Texts as generate_batch makes them (skip special tokens, the trimmed space removed)."""
        texts = tok.batch_decode(new_ids_rows, skip_special_tokens=True)
        return [engine.drop_prefix(t, prompts[i][len(trimmed[i]):]) for t, i in zip(texts, idx)]

    def run_tripost(answerer):
        out = [None] * len(prompts)
        for batch in answerer.batches(requests):
            for i, reply in zip(batch, answerer.answer([requests[i] for i in batch])):
                out[i] = reply.text
                assert reply.truncated, "a reply stopped before --new-tokens"
        return out

    def hf_generate(model, idx, **extra):
        enc = tok([trimmed[i] for i in idx], return_tensors="pt", padding=True)
        with torch.inference_mode():
            out = model.generate(**enc, max_new_tokens=T, min_new_tokens=T, do_sample=False, temperature=None,
                                 top_p=None, top_k=None, use_cache=True, eos_token_id=eos, pad_token_id=pad, **extra)
        new = out[:, enc["input_ids"].shape[1]:]
        assert new.shape[1] == T and not (new == eos).any(), "a row stopped before --new-tokens"
        return decode(new, idx)

    def run_hf_batched(**extra):
        def run():
            out = [None] * len(prompts)
            for batch in batches:
                for i, text in zip(batch, hf_generate(hf_model, batch, **extra)):
                    out[i] = text
            return out
        return run

    n_single = min(args.single_prompts or len(prompts), len(prompts))

    def run_single():
        return [hf_generate(hf_model, [i])[0] for i in range(n_single)]

    runners, notes, to_text = {}, {}, {}  # to_text: untimed conversion of a run's result to texts
    for name in systems:
        if name == "tripost":
            runners[name] = lambda: run_tripost(tripost_hf)
            notes[name] = decoder
        elif name == "hf":
            runners[name] = run_hf_batched()
            notes[name] = f"dynamic cache, {hf_model.config._attn_implementation} attention"
        elif name == "hf-static":
            runners[name] = run_hf_batched(cache_implementation="static")
            notes[name] = "static cache"
        elif name == "hf-static-compile":
            from transformers import CompileConfig

            compile_config = CompileConfig(mode="default")
            compile_config._compile_all_devices = True  # transformers compiles on CUDA-like devices only otherwise
            runners[name] = run_hf_batched(cache_implementation="static", compile_config=compile_config)
            notes[name] = "static cache + torch.compile (inductor)"
        elif name == "one-at-a-time":
            runners[name] = run_single
            notes[name] = f"HF generate, batch 1, {n_single} prompts"
        elif name in ("vllm", "tripost-vllm"):
            runners[name], notes[name], to_text[name] = vllm_runner(name, model_dir, gen, trimmed, T, run_tripost, tok)

    print(f"model: {model_dir} ({n_params / 1e6:.1f}M params); {len(prompts)} prompts x {T} new tokens, batch {B}, "
          f"{args.threads} thread(s), {args.repeats} rounds; systems: {', '.join(runners)}", file=sys.stderr)
    print(f"load average at start: {os.getloadavg()}", file=sys.stderr)

    # Warm-up (untimed): first-call costs, torch.compile's compilation, vLLM's first step.
    failed, warm, outputs = {}, {}, {}
    for name, run in runners.items():
        start = time.perf_counter()
        try:
            result = run()
            outputs[name] = to_text[name](result) if to_text.get(name) else result
        except Exception as e:  # noqa: BLE001 - a system that fails is reported, not fatal
            failed[name] = f"{type(e).__name__}: {str(e).splitlines()[0][:150] if str(e) else ''}"
            print(f"{name} failed: {failed[name]}", file=sys.stderr)
        warm[name] = time.perf_counter() - start
        print(f"warm-up {name}: {warm[name]:.1f}s", file=sys.stderr)

    active = [n for n in runners if n not in failed]
    seconds = {n: [] for n in active}
    cpu = {n: [] for n in active}
    for r in range(args.repeats):
        for name in active:
            start, cpu_start = time.perf_counter(), cpu_seconds()
            result = runners[name]()
            seconds[name].append(time.perf_counter() - start)
            cpu[name].append(cpu_seconds() - cpu_start)
            texts = to_text[name](result) if to_text.get(name) else result
            assert texts == outputs[name], f"{name}: greedy output changed between runs"
        print(f"round {r + 1}: " + ", ".join(f"{n} {seconds[n][-1]:.1f}s" for n in active), file=sys.stderr)
    load_end = os.getloadavg()

    def tokens(name):
        return (n_single if name == "one-at-a-time" else len(prompts)) * T

    def same(name, ref):
        if ref not in outputs or name not in outputs:
            return "-"
        k = min(len(outputs[name]), len(outputs[ref]))
        return f"{sum(a == b for a, b in zip(outputs[name][:k], outputs[ref][:k]))}/{k}"

    print(f"\nbench/rollout.py: {model_dir} ({n_params / 1e6:.1f}M params), {len(prompts)} prompts x {T} new "
          f"tokens, batch {B}, {args.threads} thread(s), {args.repeats} interleaved rounds; load average at end "
          f"{load_end[0]:.1f} / {load_end[1]:.1f} / {load_end[2]:.1f}")
    print("| system | engine | tokens/s median (min-max) | vs hf (median of per-round ratios) | "
          "tokens per CPU-s median (min-max) | vs hf, CPU | same text as hf | same as one-at-a-time | warm-up s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name in runners:
        if name in failed:
            print(f"| {name} | {notes[name]} | failed: {failed[name]} | - | - | - | - | - | {warm[name]:.0f} |")
            continue
        tps = [tokens(name) / s for s in seconds[name]]
        if "hf" in seconds:
            ratios = [tokens(name) / a / (tokens("hf") / b) for a, b in zip(seconds[name], seconds["hf"])]
            ratio = f"{statistics.median(ratios):.2f}x ({min(ratios):.2f}-{max(ratios):.2f})"
        else:
            ratio = "-"
        ctps = [tokens(name) / c for c in cpu[name]]
        cratio = (f"{statistics.median(tokens(name) / a / (tokens('hf') / b) for a, b in zip(cpu[name], cpu['hf'])):.2f}x"
                  if "hf" in cpu else "-")
        print(f"| {name} | {notes[name]} | {statistics.median(tps):.0f} ({min(tps):.0f}-{max(tps):.0f}) | {ratio} | "
              f"{statistics.median(ctps):.0f} ({min(ctps):.0f}-{max(ctps):.0f}) | {cratio} | "
              f"{same(name, 'hf')} | {same(name, 'one-at-a-time')} | {warm[name]:.0f} |")
    if "vllm" in seconds and "tripost-vllm" in seconds:
        for what, d in (("wall", seconds), ("CPU", cpu)):
            ratios = [b / a for a, b in zip(d["tripost-vllm"], d["vllm"])]
            print(f"\ntripost-vllm / vllm tokens/s ({what} time): median {statistics.median(ratios):.3f} "
                  f"(rounds: {', '.join(f'{x:.3f}' for x in ratios)}); goal >= 0.90")
    tmp.cleanup()


def build_tiny(cfg, out: Path) -> Path:
    """An untrained tiny Llama of the init_model defaults for the task (as `tripost init-model`)."""
    from tripost.model_init import init_model
    from tripost.tasks import get_task

    return Path(init_model(cfg.init_model, get_task(cfg.task), out))


def vllm_runner(name, model_dir, gen, trimmed, new_tokens, run_tripost, tok):
    """(run, note) for the vllm rows. Both use ONE engine: the one tripost's ModelAnswerer builds
    (engine.vllm_engine: float32, eager, max_num_seqs = gen.batch_size)."""
    import dataclasses

    import vllm

    from tripost import engine

    answerer = engine.ModelAnswerer("tripost-vllm", model_dir, dataclasses.replace(gen, backend="vllm"))
    if not getattr(vllm, "_bench_min_tokens", False):
        # Exactly new_tokens per request in both rows: VllmEngine.generate builds its own
        # SamplingParams (no min_tokens) from `vllm.SamplingParams` at call time; from here on that
        # name gives min_tokens to every SamplingParams (patched after vLLM's own modules loaded).
        original = vllm.SamplingParams

        def forced(*a, **kw):
            kw.setdefault("min_tokens", new_tokens)
            return original(*a, **kw)

        vllm.SamplingParams, vllm._bench_min_tokens, vllm._bench_original = forced, True, original
    llm = answerer.engine.llm
    if name == "tripost-vllm":
        def run():
            return run_tripost(answerer)
        return run, "ModelAnswerer(backend=vllm): VllmEngine.generate", None

    params = vllm._bench_original(temperature=0.0, max_tokens=new_tokens, min_tokens=new_tokens)

    def run():
        return llm.generate(list(trimmed), params, use_tqdm=False)  # vLLM detokenizes, as a user gets it

    def texts(outs):  # untimed: the ids decoded as generate_batch decodes, for the comparison
        assert all(len(o.outputs[0].token_ids) == new_tokens for o in outs)
        rows = tok.batch_decode([list(o.outputs[0].token_ids) for o in outs], skip_special_tokens=True)
        return [engine.drop_prefix(t, " ") for t in rows]
    return run, "LLM.generate, prompt strings", texts


if __name__ == "__main__":  # vLLM spawns engine processes that re-import this module
    main()
