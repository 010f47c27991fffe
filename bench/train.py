"""Benchmark: tripost's weighted training loop against TRL's SFTTrainer, speed and peak memory.

    python bench/train.py                                   # untrained tiny Llama built under --work
    python bench/train.py --examples 160 --micro-batch 8 --repeats 3 --threads 1
    python bench/train.py --model /work/models/smollm2-135m-instruct --examples 4 --micro-batch 1 \\
        --turns 3 --repeats 2 --threads 1 --systems trl,tripost,tripost-full

Systems (`--systems`, comma-separated):

  trl             TRL SFTTrainer, plain cross-entropy on every token, TRL's defaults otherwise
                  (activation checkpointing ON, its fused LM head, AdamW fused), bf16 off on the CPU.
  trl-nockpt      the same with activation (gradient) checkpointing off.
  tripost         tripost.train.run_training: weighted loss, one example per row, length-bucketed
                  micro-batches, logits only at trained positions (train.loss_chunk, default 4096).
  tripost-full    the same with train.loss_chunk=null (the full vocabulary logits at once).
  tripost-packed  the same as tripost with train.packing=true: rows of --pack-length tokens,
                  --pack-micro-batch rows per micro-batch (default: about the tokens of an
                  unpacked micro-batch, so memory is comparable).

Same data for every system: `--examples` training examples built from multistep_arithmetic train
questions (gold rationale; one per question each of: an improvement example - `--turns` attempts,
each with one step corrupted, each followed by scripted feedback, then the gold rationale as the
last update -, a terminal example - the gold rationale and "correct" feedback - and a gold
example), written as tripost TrainingExamples; TRL trains on their texts. One epoch, the same
micro-batch size, learning rate 1e-4, no gradient accumulation, the same torch threads
(`--threads`: OMP_NUM_THREADS, torch.set_num_threads and train.threads; each child reports what
torch used).

Measurements. Every run is a fresh child process (`--repeats` rounds, each running every system
once, in turn: A, B, C, A, B, C, ...; medians and min-max over rounds):
  * tokens/s: real (non-padding) tokens of the micro-batches per second of training step, from the
    second step on (the first step pays one-off allocation costs). A step's time runs from the end
    of the previous step (for TRL: `on_step_end` callbacks; for tripost: the moment it collates
    the next micro-batch, and the end of the loop for the last step), so both include collating,
    forward, backward and the optimizer step.
    Also per CPU-second (time.process_time of the child over the same steps): with one thread on a
    busy machine, wall time is mostly waiting for a core, CPU time is the work done and varies
    much less with the load.
  * peak RSS: the child's VmHWM (/proc/self/status, the kernel's high-water mark of resident
    memory) read at the end of the last training step, before anything is saved; and the whole
    process's maximum, `ru_maxrss` of os.wait4() on that child (includes tripost's final save;
    TRL saves nothing). Before building anything every child imports the same libraries (torch,
    transformers, datasets, trl, deepspeed, peft) and reports its RSS then ("import baseline"),
    so the libraries a system happens to import are not counted against it.

tripost runs unchanged except for instrumentation (wrappers around train.collate and
train.save_checkpoint that only record times and memory).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

ALL_SYSTEMS = ["trl", "trl-nockpt", "tripost", "tripost-full", "tripost-packed"]


# ----------------------------------------------------------------------------------------------
# Data


def corrupt(rationale: str, k: int):
    """The rationale with the last number of its k-th numbered step from the end raised by one,
    and scripted feedback saying so."""
    from tripost import steps

    parsed = steps.parse_steps(rationale)
    numbered = [s for s in parsed if s.label.isdigit()]
    bad = numbered[max(0, len(numbered) - 1 - k)]
    m = list(re.finditer(r"-?\d+", bad.text))[-1]
    wrong_value = str(int(m.group()) + 1)
    bad_text = bad.text[: m.start()] + wrong_value + bad.text[m.end():]
    wrong = steps.render_steps([steps.Step(s.label, bad_text if s is bad else s.text) for s in parsed])
    before = numbered.index(bad)
    return wrong, steps.feedback_wrong(before, bad.label, bad_text[-40:], f"{m.group()} is not {wrong_value}")


def build_examples(n_examples: int, turns: int, w: float = 1.5) -> list:
    """`n_examples` TrainingExamples: per question an improvement, a terminal and a gold example."""
    from tripost import steps
    from tripost.config import load_config
    from tripost.formats import prompt_format
    from tripost.methods.tripost import FEEDBACK_PREFIX, LEARNER, UPDATE_PREFIX, segments
    from tripost.records import Segment, training_example
    from tripost.tasks import get_task

    cfg = load_config(None, [("task.name", "multistep_arithmetic"), ("task.max_train", n_examples)])
    task, fmt = get_task(cfg.task), prompt_format(False)
    out = []
    for ex in task.load("train"):
        gold = task.gold_rationale(ex)
        wrongs = [corrupt(gold, k) for k in range(turns)]
        segs = [Segment(fmt.question(ex.question), 0.0, "user"), Segment(wrongs[0][0], 1.0, LEARNER)]
        for (_, fb), (nxt, _) in zip(wrongs, wrongs[1:] + [(gold, None)]):
            segs += [Segment(FEEDBACK_PREFIX + fb, w, LEARNER), Segment(UPDATE_PREFIX + nxt, w, LEARNER)]
        n_numbered = sum(1 for s in steps.parse_steps(gold) if s.label.isdigit())
        out += [training_example("tripost", LEARNER, "improvement", segs, ex),
                training_example("tripost", LEARNER, "terminal",
                                 segments(fmt, ex.question, gold, steps.feedback_correct(n_numbered), None, w), ex),
                training_example("tripost", LEARNER, "gold", segments(fmt, ex.question, gold, None, None, w), ex)]
        if len(out) >= n_examples:
            break
    return out[:n_examples]


def build_tiny(out: Path) -> Path:
    """An untrained tiny Llama of the init_model defaults (as `tripost init-model`)."""
    from tripost.config import load_config
    from tripost.model_init import init_model
    from tripost.tasks import get_task

    if not (out / "config.json").exists():
        cfg = load_config(None, [("task.name", "multistep_arithmetic"), ("task.max_train", 400)])
        init_model(cfg.init_model, get_task(cfg.task), out)
    return out


# ----------------------------------------------------------------------------------------------
# The child: one training run


def memory_kb(field: str) -> int:
    """A field of /proc/self/status in kB: VmRSS (now) or VmHWM (the peak so far)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def run_tripost(system: str, model_dir: Path, examples: Path, out: Path, args) -> dict:
    import torch

    from tripost import train
    from tripost.config import load_config

    packed = system == "tripost-packed"
    cfg = load_config(None, [("train.packing", packed),
                             ("train.micro_batch_size", args.pack_micro_batch if packed else args.micro_batch),
                             ("train.epochs", 1.0), ("train.max_length", 1024), ("train.pack_length", args.pack_length),
                             ("train.log_every_steps", 10**6), ("train.threads", args.threads),
                             ("train.learning_rate", 1e-4),
                             ("train.loss_chunk", None if system == "tripost-full" else train.TrainConfig.loss_chunk)])
    # Instrumentation only: run_training looks these names up in its module at call time.
    marks = []  # (time, real tokens, slots, threads, CPU time) per collate call
    original_collate, original_save = train.collate, train.save_checkpoint
    end = {}

    def collate(rows, *a, **kw):
        batch = original_collate(rows, *a, **kw)
        marks.append((time.perf_counter(), sum(r.length for r in rows), batch["input_ids"].numel(),
                      torch.get_num_threads(), time.process_time()))
        return batch

    def save_checkpoint(*a, **kw):
        end.setdefault("t", time.perf_counter())
        end.setdefault("cpu", time.process_time())
        end.setdefault("hwm", memory_kb("VmHWM"))
        return original_save(*a, **kw)

    train.collate, train.save_checkpoint = collate, save_checkpoint
    s = train.run_training(cfg.train, examples, model_dir, out)
    steps = marks[-s["steps"]:]  # the loop's; chunking_matches collates one batch before the loop
    times = [m[0] for m in steps] + [end["t"]]
    cpus = [m[4] for m in steps] + [end["cpu"]]
    return {"step_tokens": [m[1] for m in steps], "step_slots": [m[2] for m in steps],
            "step_seconds": [b - a for a, b in zip(times, times[1:])],
            "step_cpu_seconds": [b - a for a, b in zip(cpus, cpus[1:])], "threads": steps[-1][3],
            "train_hwm_kb": end["hwm"],
            "final_loss": s["final_loss"]}


def run_trl(system: str, model_dir: Path, examples: Path, out: Path, args) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from tripost import records

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    tok.padding_side = "right"
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    texts = [e.text for e in records.read_examples(examples)]
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    sft = SFTConfig(output_dir=str(out), per_device_train_batch_size=args.micro_batch, num_train_epochs=1,
                    max_length=1024, packing=False, learning_rate=1e-4, report_to="none", save_strategy="no",
                    logging_steps=10**6, use_cpu=True, bf16=False, dataset_text_field="text", seed=0,
                    dataloader_num_workers=0, gradient_checkpointing=system == "trl")
    trainer = SFTTrainer(model=model, args=sft, train_dataset=Dataset.from_list([{"text": t} for t in texts]),
                         processing_class=tok)
    batches = []  # (real tokens, slots) per collated micro-batch
    inner = trainer.data_collator

    def counting(features):
        batch = inner(features)
        mask = batch.get("attention_mask")
        real = int(mask.sum()) if mask is not None else int(batch["input_ids"].numel())
        batches.append((real, batch["input_ids"].numel()))
        return batch

    trainer.data_collator = counting
    marks, cpus, info = [], [], {}

    class Clock(TrainerCallback):
        def on_train_begin(self, *a, **kw):
            marks.append(time.perf_counter())
            cpus.append(time.process_time())

        def on_step_end(self, *a, **kw):
            marks.append(time.perf_counter())
            cpus.append(time.process_time())
            info["hwm"] = memory_kb("VmHWM")
            info["threads"] = torch.get_num_threads()

    trainer.add_callback(Clock())
    result = trainer.train()
    info["checkpointing"] = bool(getattr(trainer.model, "is_gradient_checkpointing", False))
    n = len(marks) - 1
    return {"step_tokens": [b[0] for b in batches[:n]], "step_slots": [b[1] for b in batches[:n]],
            "step_seconds": [b - a for a, b in zip(marks, marks[1:])],
            "step_cpu_seconds": [b - a for a, b in zip(cpus, cpus[1:])], "threads": info["threads"],
            "train_hwm_kb": info["hwm"], "final_loss": result.training_loss,
            "checkpointing": info["checkpointing"]}


def child(args) -> None:
    # The same imports for every system first, so their footprint is in everyone's baseline.
    import datasets  # noqa: F401
    import deepspeed  # noqa: F401
    import peft  # noqa: F401
    import torch
    import transformers  # noqa: F401
    import trl  # noqa: F401

    torch.set_num_threads(args.threads)
    baseline = memory_kb("VmRSS")
    out = Path(tempfile.mkdtemp(prefix=f"bench_{args.child}_", dir=args.work))
    run = run_trl if args.child.startswith("trl") else run_tripost
    r = run(args.child, Path(args.model_dir), Path(args.examples_path), out, args)
    r["baseline_kb"] = baseline
    print("RESULT " + json.dumps(r), flush=True)


# ----------------------------------------------------------------------------------------------
# The parent: data, interleaved rounds, the table


def launch(system: str, model_dir: Path, examples: Path, args, log: Path) -> dict:
    """One child run; its result plus ru_maxrss (kB) of the child from os.wait4."""
    cmd = [sys.executable, __file__, "--child", system, "--model-dir", str(model_dir), "--examples-path",
           str(examples), "--micro-batch", str(args.micro_batch), "--pack-length", str(args.pack_length),
           "--pack-micro-batch", str(args.pack_micro_batch),
           "--threads", str(args.threads), "--work", str(args.work)]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    env.update(OMP_NUM_THREADS=str(args.threads), TOKENIZERS_PARALLELISM="false")
    start = time.perf_counter()
    with open(log, "w") as f:
        p = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        _, status, usage = os.wait4(p.pid, 0)
        p.returncode = os.waitstatus_to_exitcode(status)
    text = log.read_text()
    line = next((x for x in text.splitlines() if x.startswith("RESULT ")), None)
    if p.returncode != 0 or line is None:
        print(text[-4000:], file=sys.stderr)
        raise SystemExit(f"{system} failed (exit {p.returncode}); log: {log}")
    r = json.loads(line[7:])
    r["maxrss_kb"], r["wall_s"] = usage.ru_maxrss, time.perf_counter() - start
    return r


def steady_tps(r: dict, clock: str = "step_seconds") -> float:
    """Real tokens per second (wall, or CPU with clock="step_cpu_seconds") of step 2 onwards (all
    steps if there is only one)."""
    k = 1 if len(r[clock]) > 1 else 0
    return sum(r["step_tokens"][k:]) / sum(r[clock][k:])


def spread(values, fmt="{:.0f}") -> str:
    return f"{fmt.format(statistics.median(values))} ({fmt.format(min(values))}-{fmt.format(max(values))})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="model directory (default: an untrained tiny Llama built under --work)")
    ap.add_argument("--examples", type=int, default=160, help="training examples (3 per question)")
    ap.add_argument("--turns", type=int, default=1, help="wrong attempts in an improvement example")
    ap.add_argument("--micro-batch", type=int, default=8)
    ap.add_argument("--pack-length", type=int, default=1024)
    ap.add_argument("--pack-micro-batch", type=int, default=None,
                    help="rows per micro-batch when packed (default: about the tokens of an unpacked micro-batch)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--systems", default="trl,trl-nockpt,tripost,tripost-full,tripost-packed")
    ap.add_argument("--work", default=None, help="work directory (default: a temp dir)")
    ap.add_argument("--json", help="also write every run's raw result to this file")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--model-dir", help=argparse.SUPPRESS)
    ap.add_argument("--examples-path", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args)

    from tripost import io, records
    from tripost.train import encode_example
    from transformers import AutoTokenizer

    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    if set(systems) - set(ALL_SYSTEMS):
        raise SystemExit(f"unknown systems: {set(systems) - set(ALL_SYSTEMS)} (have {', '.join(ALL_SYSTEMS)})")
    args.work = Path(args.work or tempfile.mkdtemp(prefix="tripost_bench_train_")).resolve()
    args.work.mkdir(parents=True, exist_ok=True)
    model_dir = Path(args.model).resolve() if args.model else build_tiny(args.work / "model")
    examples_path = args.work / "examples.jsonl"
    io.write_jsonl(examples_path, build_examples(args.examples, args.turns))
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    lengths = [len(encode_example(e, tok, 1024)[0]) for e in records.read_examples(examples_path)]
    if args.pack_micro_batch is None:
        args.pack_micro_batch = max(1, round(args.micro_batch * statistics.mean(lengths) / args.pack_length))
    load_start = os.getloadavg()
    print(f"{len(lengths)} examples, {min(lengths)}-{max(lengths)} tokens (mean {statistics.mean(lengths):.0f}); "
          f"model {model_dir}; load average {load_start}", file=sys.stderr)

    runs = {s: [] for s in systems}
    for r in range(args.repeats):
        for system in systems:
            res = launch(system, model_dir, examples_path, args, args.work / f"{system}_{r}.log")
            runs[system].append(res)
            print(f"round {r + 1} {system}: {steady_tps(res):.0f} tokens/s "
                  f"({steady_tps(res, 'step_cpu_seconds'):.0f} per CPU-s), peak RSS in training "
                  f"{res['train_hwm_kb'] / 1024:.0f} MB, {res['wall_s']:.0f} s", file=sys.stderr)
    load_end = os.getloadavg()
    if args.json:
        Path(args.json).write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                               "load": [load_start, load_end], "runs": runs}, indent=1))

    from transformers import AutoConfig

    n_params = AutoConfig.from_pretrained(str(model_dir))
    print(f"\nbench/train.py: {model_dir} ({n_params.num_hidden_layers} layers x {n_params.hidden_size}, vocab "
          f"{n_params.vocab_size}); {len(lengths)} examples of {min(lengths)}-{max(lengths)} tokens (mean "
          f"{statistics.mean(lengths):.0f}), micro-batch {args.micro_batch} (packed: {args.pack_micro_batch} rows of "
          f"{args.pack_length}), one epoch, {args.threads} thread(s), "
          f"{args.repeats} interleaved rounds; load average {load_start[0]:.1f} at start, {load_end[0]:.1f} at end")
    print("| system | tokens/s, median (min-max) | vs trl (median of per-round ratios) | tokens per CPU-s | "
          "vs trl, CPU | steps | real tokens / step | padding | peak RSS in training, MB | process max RSS, MB | "
          "import baseline, MB | loss* |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for system, rs in runs.items():
        tps = [steady_tps(x) for x in rs]
        ctps = [steady_tps(x, "step_cpu_seconds") for x in rs]
        if "trl" in runs:
            ratio = spread([a / steady_tps(b) for a, b in zip(tps, runs["trl"])], "{:.2f}")
            cratio = spread([a / steady_tps(b, "step_cpu_seconds") for a, b in zip(ctps, runs["trl"])], "{:.2f}")
        else:
            ratio = cratio = "-"
        x = rs[0]
        padding = 1 - sum(x["step_tokens"]) / sum(x["step_slots"])
        threads = {y["threads"] for y in rs}
        print(f"| {system} | {spread(tps)} | {ratio} | {spread(ctps)} | {cratio} | {len(x['step_seconds'])} | "
              f"{statistics.mean(x['step_tokens']):.0f} | {padding:.1%} | "
              f"{spread([y['train_hwm_kb'] / 1024 for y in rs])} | {spread([y['maxrss_kb'] / 1024 for y in rs])} | "
              f"{spread([y['baseline_kb'] / 1024 for y in rs])} | {x['final_loss']:.3f} |"
              + ("" if threads == {args.threads} else f" threads seen: {sorted(threads)}")
              + (" activation checkpointing on" if x.get("checkpointing") else ""))
    print("loss*: TRL's mean training loss over the run (plain CE); tripost's weighted loss of the last step")


if __name__ == "__main__":
    main()
