"""Weighted SFT of a causal LM on TriPosT examples, run by DeepSpeed. See docs/training.md.

    tripost train --examples process/learner.jsonl --model models/tiny --out train/      # one process
    deepspeed --num_gpus 4 --module tripost train --examples ... --model ... --out ... \\
        train.deepspeed_config=configs/deepspeed/zero2.json                              # multi-GPU

From Python (the iterate loop), `train(cfg, examples_path, model_dir, out_dir)` runs the same
command in a child process (a fresh torch.distributed/DeepSpeed state per round) and returns the
stats it wrote. Rerunning an interrupted run resumes from its newest complete checkpoint.

How a loss is computed
  * Each example's text is tokenized with `return_offsets_mapping`; a token gets the weight of
    the span (records.Span) holding its LAST character, so a token straddling a boundary
    belongs to the span it ends in (the prompt's trailing space merges into the answer's first
    token, which must be trained). Weights: prompt 0 (1 if train.mask_question is false),
    attempt 1, feedback and improvement train.w. EOS is appended and trained with the weight of
    the last span; padding is never trained. Token t's weight applies where token t is the
    target (labels are the inputs shifted by one, as for any causal LM).
  * loss = sum_t weight_t * CE_t / normaliser, where the normaliser is the number of trained
    tokens (weight > 0; train.normalizer=mask, the paper) or the sum of their weights
    (train.normalizer=weight), taken over the WHOLE optimizer step: every micro-batch of every
    gradient-accumulation step on every data-parallel rank. The data order is a pure function of
    (seed, step), so every rank computes that normaliser from the token counts up front; no
    communication is needed. Each micro-batch's backward gets sum(w*CE)/N * world * gas, which
    undoes DeepSpeed's 1/gas loss scaling and its 1/world gradient averaging.
  * Packing (train.packing, off by default - see docs/training.md for the measurement): whole examples are packed first-fit-decreasing into rows of
    train.pack_length tokens; position ids restart at 0 per example and a block-diagonal causal
    4D mask stops attention across examples (eager/sdpa; flash-attention models get only the
    position ids, which Hugging Face turns into the same per-example attention). Without
    packing (the default) each example is its own row, and rows are length-bucketed to cut padding.

Checkpoints: <out>/checkpoints/step_XXXXXXXX/ is a Hugging Face model directory (from_pretrained
loads it) plus ds/ (DeepSpeed optimizer/scheduler state, all ranks) and trainer_state.json. Each is
written into a .tmp_ directory, the marker file COMPLETE is written last, then it is renamed; resume
takes the newest directory with the marker. The final model is <out>/model (with the marker).
"""

from __future__ import annotations

import bisect
import ctypes
import json
import math
import os
import random
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from tripost import io, records
from tripost.config import Config, TrainConfig, resolve_path, to_dict
from tripost.errors import TripostError

MARKER = "COMPLETE"
# Set by a launcher (or by init_distributed for a world of one, marked with WORLD_OF_ONE =
# "<pid>:<port>"); a launched child gets none of them from us.
WORLD_OF_ONE = "TRIPOST_WORLD_OF_ONE"
DIST_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "LOCAL_WORLD_SIZE", WORLD_OF_ONE)


# ----------------------------------------------------------------------------------------------
# Examples -> token ids and per-token weights


def encode_example(example: records.TrainingExample, tokenizer, max_length: int | None = None
                   ) -> tuple[list[int], list[float]]:
    """Token ids and per-token weights (weights[t] is used when token t is the target).

    A token gets the weight of the segment holding its LAST character: the question ends in a
    space that BPE merges into the answer's first token (" ("), and the model must learn to write
    that token. Added special tokens (BOS) are context. Plain text gets EOS appended, trained with
    the last segment's weight; chat-template text ends in its own end-of-turn segment."""
    return encode_examples([example], tokenizer, max_length)[0]


def encode_examples(examples: list[records.TrainingExample], tokenizer, max_length: int | None = None,
                    chunk: int = 1024) -> list[tuple[list[int], list[float]]]:
    """`encode_example` for many examples, tokenized in batches (about twice as fast per example
    as one call each, which matters for a warm-up of 100k rationales)."""
    if not tokenizer.is_fast:
        raise TripostError("train needs a fast tokenizer (offset mappings); got a slow one")
    specials = set(tokenizer.all_special_ids)
    out = []
    for at in range(0, len(examples), chunk):
        part = examples[at:at + chunk]
        encodings = {}
        for chat in (False, True):  # chat text carries its own special tokens
            rows = [i for i, e in enumerate(part) if e.chat_template == chat]
            if rows:
                enc = tokenizer([part[i].text for i in rows], return_offsets_mapping=True,
                                add_special_tokens=not chat)
                for j, i in enumerate(rows):
                    encodings[i] = (enc["input_ids"][j], enc["offset_mapping"][j])
        for i, example in enumerate(part):
            ids, offsets = encodings[i]
            out.append(_weigh(example, list(ids), offsets, specials, tokenizer.eos_token_id, max_length))
    return out


def _weigh(example, ids, offsets, specials, eos_id, max_length):
    starts, at = [], 0
    for seg in example.segments:
        starts.append(at)
        at += len(seg.text)
    weights = []
    for (a, b), tid in zip(offsets, ids):
        if a == b and tid in specials:
            weights.append(0.0)
            continue
        i = max(0, bisect.bisect_right(starts, max(a, b - 1)) - 1)
        weights.append(float(example.segments[i].weight))
    if not example.chat_template and eos_id is not None:
        ids.append(eos_id)
        weights.append(float(example.segments[-1].weight))
    if max_length is not None:
        ids, weights = ids[:max_length], weights[:max_length]
    return ids, weights


# ----------------------------------------------------------------------------------------------
# Rows (one or several examples), micro-batches and the deterministic data order


@dataclass
class Row:
    segments: list[tuple[list[int], list[float]]]  # whole examples: (ids, weights)

    @property
    def length(self) -> int:
        return sum(len(ids) for ids, _ in self.segments)


def pack_rows(encoded: list[tuple[list[int], list[float]]], capacity: int) -> list[Row]:
    """First-fit-decreasing bin packing of whole examples into rows of at most `capacity` tokens."""
    order = sorted(range(len(encoded)), key=lambda i: (-len(encoded[i][0]), i))
    rows: list[Row] = []
    free: list[int] = []
    for i in order:
        n = len(encoded[i][0])
        for r, space in enumerate(free):
            if n <= space:
                rows[r].segments.append(encoded[i])
                free[r] -= n
                break
        else:
            rows.append(Row([encoded[i]]))
            free.append(capacity - n)
    return rows


def epoch_micro_batches(rows: list[Row], micro_batch_size: int, seed: int, epoch: int,
                        bucketed: bool) -> list[list[Row]]:
    """The micro-batches of one epoch, a pure function of (seed, epoch). Bucketed: shuffled rows
    are sorted by length within windows of 32 micro-batches, cut into micro-batches, and those
    are shuffled again, so each micro-batch holds rows of similar length (less padding)."""
    rng = random.Random(seed * 1_000_003 + epoch)
    idx = list(range(len(rows)))
    rng.shuffle(idx)
    if bucketed:
        window = micro_batch_size * 32
        idx = [i for w in range(0, len(idx), window)
               for i in sorted(idx[w: w + window], key=lambda i: rows[i].length)]
    batches = [[rows[i] for i in idx[b: b + micro_batch_size]] for b in range(0, len(idx), micro_batch_size)]
    if bucketed:
        rng.shuffle(batches)
    return batches


def micro_batch_for(epochs: list, step: int, accum: int, rank: int, gas: int, world: int,
                    steps_per_epoch: int) -> list[Row] | None:
    """The micro-batch that `rank` trains on at (step, accum); None past the end of the epoch
    (that rank then runs a zero-weight dummy batch so collectives stay in step)."""
    batches = epochs[step // steps_per_epoch]
    i = (step % steps_per_epoch) * gas * world + accum * world + rank
    return batches[i] if i < len(batches) else None


def row_norm(row: Row, normalizer: str) -> float:
    """This row's share of the loss normaliser: trained targets (weight > 0) or their weights."""
    total = 0.0
    for _, w in row.segments:
        targets = w[1:]
        total += sum(1 for x in targets if x > 0) if normalizer == "mask" else sum(targets)
    return total


def collate(rows: list[Row], pad_id: int, pad_to_multiple: int = 8) -> dict:
    """Tensors for a micro-batch: input_ids, targets (-100 = no target), target weights,
    per-example position ids and segment ids (-1 = padding)."""
    import torch

    length = max(r.length for r in rows)
    length = -(-length // pad_to_multiple) * pad_to_multiple
    b = len(rows)
    input_ids = torch.full((b, length), pad_id, dtype=torch.long)
    targets = torch.full((b, length), -100, dtype=torch.long)
    weights = torch.zeros((b, length), dtype=torch.float32)
    positions = torch.zeros((b, length), dtype=torch.long)
    segments = torch.full((b, length), -1, dtype=torch.long)
    for r, row in enumerate(rows):
        o = 0
        for s, (ids, w) in enumerate(row.segments):
            n = len(ids)
            input_ids[r, o: o + n] = torch.tensor(ids)
            targets[r, o: o + n - 1] = torch.tensor(ids[1:])
            weights[r, o: o + n - 1] = torch.tensor(w[1:])
            positions[r, o: o + n] = torch.arange(n)
            segments[r, o: o + n] = s
            o += n
        positions[r, o:] = torch.arange(length - o)  # padding: its own run, never a target
    targets[weights == 0] = -100
    return {"input_ids": input_ids, "targets": targets, "weights": weights, "position_ids": positions,
            "segments": segments}


def block_causal_mask(segments, dtype):
    """Additive 4D mask (batch, 1, L, L): 0 where query i may attend key j (same segment, j <= i),
    the dtype's minimum elsewhere. Padding (segment -1) attends to padding only."""
    import torch

    same = segments[:, :, None] == segments[:, None, :]
    n = segments.shape[1]
    causal = torch.ones(n, n, dtype=torch.bool, device=segments.device).tril()
    allowed = same & causal
    mask = torch.zeros(allowed.shape, dtype=dtype, device=segments.device)
    mask.masked_fill_(~allowed, torch.finfo(dtype).min)
    return mask[:, None]


def hf_model(module):
    """The Hugging Face model inside a PEFT wrapper (LoRA layers are injected into it in place)."""
    from peft import PeftModel

    return module.get_base_model() if isinstance(module, PeftModel) else module


def _model_inputs(hf, batch: dict) -> dict:
    if not bool((batch["segments"] > 0).any()):
        # One example per row, right-padded: causal attention alone is exact for every real token
        # (it sees only earlier positions, all real), and the model's default positions are the
        # example's. No mask to build and sdpa runs its is_causal kernel: 1.1-1.2x a step on CPU.
        return {"input_ids": batch["input_ids"]}
    kwargs = {"input_ids": batch["input_ids"], "position_ids": batch["position_ids"]}
    if "flash" not in (hf.config._attn_implementation or "eager"):
        # Flash kernels take no 4D mask; they read packing from position_ids.
        kwargs["attention_mask"] = block_causal_mask(batch["segments"], hf.dtype)
    return kwargs


def forward_losses(module, batch: dict):
    """Per-position cross-entropy (0 where there is no target) for a collated micro-batch, from
    the full logits (what a causal LM's forward returns)."""
    import torch
    import torch.nn.functional as F

    logits = module(**_model_inputs(hf_model(module), batch)).logits
    ce = F.cross_entropy(logits.float().flatten(0, 1), batch["targets"].flatten(), ignore_index=-100,
                         reduction="none")
    return ce.view(batch["targets"].shape).to(torch.float32)


def _head_loss(head, hidden, targets, weights):
    import torch.nn.functional as F

    return (F.cross_entropy(head(hidden).float(), targets, reduction="none") * weights).sum()


def weighted_loss_sum(module, batch: dict, chunk: int | None = None):
    """sum_t weight_t * CE_t over the micro-batch (divide by the step's normaliser).

    chunk=None: from the model's own forward and its full logits. Otherwise the vocabulary logits
    are computed only where there is a target, from the body's hidden states, `chunk` trained
    tokens at a time; with more than one chunk each is recomputed in the backward pass (activation
    checkpointing of the head), so at most chunk x vocab logits are alive. One chunk is computed
    once: recomputing it would save no memory."""
    if chunk is None:
        return (forward_losses(module, batch) * batch["weights"]).sum()
    from torch.utils.checkpoint import checkpoint

    hf = hf_model(module)
    hidden = hf.base_model(**_model_inputs(hf, batch)).last_hidden_state
    trained = batch["weights"] != 0
    hidden, targets, weights = hidden[trained], batch["targets"][trained], batch["weights"][trained]
    head = hf.get_output_embeddings()
    if len(targets) <= chunk:
        return _head_loss(head, hidden, targets, weights)
    return sum(checkpoint(_head_loss, head, hidden[s: s + chunk], targets[s: s + chunk], weights[s: s + chunk],
                          use_reentrant=False) for s in range(0, len(targets), chunk))


def chunking_matches(module, batch: dict, chunk: int) -> bool:
    """Whether the chunked loss equals the full one on a small slice of a batch: a model whose
    forward does more than head(hidden states) (e.g. logit soft-capping) must use the full logits."""
    import torch

    small = {k: v[:1, :64] for k, v in batch.items()}
    small["weights"] = torch.ones_like(small["weights"])
    small["targets"] = torch.where(small["targets"] < 0, 0, small["targets"])
    with torch.no_grad():
        full, part = weighted_loss_sum(module, small).item(), weighted_loss_sum(module, small, chunk).item()
    return abs(full - part) <= 1e-4 * max(1.0, abs(full))


# ----------------------------------------------------------------------------------------------
# DeepSpeed setup


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _inherited_world_of_one() -> bool:
    """The distributed variables were set by a parent process's own world of one (it trained in
    process, then started us), not by a launcher: its store still holds that port."""
    marker = os.environ.get(WORLD_OF_ONE, "")
    pid, _, port = marker.partition(":")
    return bool(marker) and pid != str(os.getpid()) and port == os.environ.get("MASTER_PORT")


def init_distributed(deepspeed, backend: str) -> None:
    """Join the launcher's world, or make a world of one for a plain `tripost train` (marked, so
    a tripost process this one starts does not take it for a launcher's)."""
    if "RANK" not in os.environ or _inherited_world_of_one():
        port = str(_free_port())
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
        os.environ[WORLD_OF_ONE] = f"{os.getpid()}:{port}"
    # On its first CPU init DeepSpeed JIT-builds a shared-memory all-reduce kernel
    # (deepspeed_shm_comm): 52 s of C++ on a fresh 2-core machine, for a kernel only DeepSpeed's
    # inference all-reduce calls; training reduces through torch.distributed. Marked unavailable,
    # it is not built.
    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    deepspeed.init_distributed(dist_backend=backend)


def use_bf16(tc) -> bool:
    import torch

    if tc.bf16 == "auto":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return tc.bf16 == "true"


def deepspeed_config(tc) -> dict:
    """The JSON file, with the keys tripost owns filled in from train.* ("auto" or absent)."""
    path = resolve_path(tc.deepspeed_config)
    try:
        ds = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise TripostError(f"{path}: DeepSpeed config not found (train.deepspeed_config)") from None
    except json.JSONDecodeError as e:
        raise TripostError(f"{path}:{e.lineno}: invalid JSON ({e.msg})") from None
    if "optimizer" in ds or "scheduler" in ds:
        raise TripostError(f"{path}: remove the 'optimizer'/'scheduler' blocks; tripost builds AdamW and "
                           "the schedule from train.* (a DeepSpeed optimizer block triggers a C++ build)")
    owned = {"train_micro_batch_size_per_gpu": tc.micro_batch_size,
             "gradient_accumulation_steps": tc.gradient_accumulation_steps,
             "gradient_clipping": tc.max_grad_norm}
    for key, value in owned.items():
        if ds.get(key, "auto") not in ("auto", value):
            raise TripostError(f"{path}: '{key}' is {ds[key]!r}; set it with the tripost config key instead "
                               "(train.micro_batch_size, train.gradient_accumulation_steps, train.max_grad_norm) "
                               "or write \"auto\"")
        ds[key] = value
    ds.pop("train_batch_size", None)
    ds["bf16"] = dict(ds.get("bf16", {}), enabled=use_bf16(tc))
    ds.setdefault("steps_per_print", 10**9)
    return ds


def _offloads_optimizer(ds: dict) -> bool:
    off = ds.get("zero_optimization", {}).get("offload_optimizer", {})
    return off.get("device", "none") not in ("none", None)


def lr_lambda(tc, total_steps: int):
    warmup = math.ceil(tc.warmup_ratio * total_steps)

    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        if tc.lr_schedule == "constant":
            return 1.0
        progress = (step - warmup) / max(1, total_steps - warmup)
        if tc.lr_schedule == "linear":
            return max(0.0, 1.0 - progress)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return f


# ----------------------------------------------------------------------------------------------
# Checkpoints


def is_complete(path: Path) -> bool:
    return (Path(path) / MARKER).is_file()


def latest_checkpoint(out_dir: Path) -> Path | None:
    """The newest checkpoint directory that has the marker; others (torn writes) are ignored."""
    root = Path(out_dir) / "checkpoints"
    found = sorted(p for p in root.glob("step_*") if p.is_dir() and is_complete(p)) if root.is_dir() else []
    return found[-1] if found else None


def _write_marker(path: Path) -> None:
    with open(path / MARKER, "w") as f:
        f.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')}\n")
        f.flush()
        os.fsync(f.fileno())


def load_for_training(model_dir, tc, ds_cfg: dict):
    """The model to train: all of it, or (train.lora) LoRA adapters on it, only they trained. A
    model that was itself LoRA-trained (its adapter in model/adapter/) goes on training that same
    adapter on the same base, so every round's adapter stays an adapter of one base model (which
    lets a vLLM engine serve the agents of a run as adapters of one base)."""
    import json

    import torch
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM

    if tc.lora.r == 0:
        return AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    if ds_cfg.get("zero_optimization", {}).get("stage", 0) == 3:
        raise TripostError("train.lora with ZeRO-3 is not supported (adapters on partitioned weights); "
                           "use a ZeRO-0/1/2 DeepSpeed config")
    adapter = Path(model_dir) / "adapter"
    if (adapter / "adapter_config.json").is_file():
        base = Path(json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"])
        if (base / "config.json").is_file():
            model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
            return PeftModel.from_pretrained(model, str(adapter), is_trainable=True)
    lc = tc.lora
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    return get_peft_model(model, LoraConfig(r=lc.r, lora_alpha=lc.alpha, lora_dropout=lc.dropout,
                                            target_modules=list(lc.target_modules), task_type="CAUSAL_LM"))


def save_hf(engine, tokenizer, path: Path, rank: int, final: bool = False) -> None:
    """Hugging Face weights + tokenizer. ZeRO-3 gathers the partitioned weights first (every rank
    must take part; rank 0 receives them). With LoRA: the adapter in path/adapter/ (what an engine
    serving adapters per request loads), and for the final model also the merged weights in path,
    a normal model directory for every later stage."""
    from peft import PeftModel

    module = engine.module
    if isinstance(module, PeftModel):
        if rank == 0:
            module.save_pretrained(path / "adapter", safe_serialization=True)
            if final:
                module.merge_and_unload().save_pretrained(path, safe_serialization=True)
            tokenizer.save_pretrained(path)
        return
    zero3 = engine.zero_optimization_stage() == 3
    state = engine._zero3_consolidated_16bit_state_dict() if zero3 else None
    if rank == 0:
        module.save_pretrained(path, state_dict=state, safe_serialization=True)
        tokenizer.save_pretrained(path)


def save_checkpoint(engine, tokenizer, out_dir: Path, name: str, rank: int, dist, state: dict | None,
                    keep: int) -> Path:
    """Write out_dir/<name> atomically: temp dir, contents, marker LAST, rename. `state` None = the
    final model (weights only); otherwise a step checkpoint with the DeepSpeed training state."""
    final = out_dir / name
    tmp = final.parent / f".tmp_{final.name}"
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    dist.barrier()
    if state is not None:
        engine.save_checkpoint(str(tmp / "ds"), tag="state", client_state={"tripost": state})
    save_hf(engine, tokenizer, tmp, rank, final=state is None)
    dist.barrier()
    if rank == 0:
        if state is not None:
            (tmp / "trainer_state.json").write_text(json.dumps(state, indent=2))
        _write_marker(tmp)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        if state is not None:  # keep the newest `keep` complete step checkpoints
            done = sorted(p for p in final.parent.glob("step_*") if is_complete(p))
            for old in done[: max(0, len(done) - keep)]:
                shutil.rmtree(old, ignore_errors=True)
    dist.barrier()
    return final


# ----------------------------------------------------------------------------------------------
# The training run (one process of a possibly distributed job)


def _fingerprint(examples_path: Path, tc: TrainConfig) -> str:
    """What a checkpoint was made from: the examples and the settings that change the math (how
    often to save or log may differ on resume)."""
    math_keys = {k: v for k, v in to_dict(tc).items()
                 if k not in ("save_every_steps", "keep_checkpoints", "log_every_steps", "launcher", "threads",
                              "hostfile", "launch_command")}
    return io.sha256_json({"examples": io.sha256_file(examples_path), "train": math_keys})[:16]


def run_training(tc: TrainConfig, examples_path, model_dir, out_dir) -> dict:
    import deepspeed
    import torch
    from tqdm import tqdm
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out_dir, examples_path = Path(out_dir), Path(examples_path)
    if model_dir is None:
        raise TripostError("train: no model to start from (give --model or config 'model')")
    model_dir = Path(model_dir).resolve()  # a LoRA adapter records its base model by this path
    if is_complete(out_dir / "model") and (out_dir / "train_stats.json").is_file():
        return json.loads((out_dir / "train_stats.json").read_text())  # already done

    # Input errors surface before any distributed setup.
    examples = records.read_examples(examples_path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    except (OSError, ValueError) as e:
        raise TripostError(f"{model_dir}: cannot load a tokenizer ({e})") from None
    encoded = encode_examples(examples, tokenizer, tc.max_length)
    encoded = [x for x in encoded if len(x[0]) >= 2]
    if not encoded:
        raise TripostError(f"{examples_path}: no training examples")
    pad_id = next((t for t in (tokenizer.pad_token_id, tokenizer.eos_token_id) if t is not None), 0)

    backend = "nccl" if torch.cuda.is_available() else "gloo"
    init_distributed(deepspeed, backend)
    import torch.distributed as dist

    rank, world = dist.get_rank(), dist.get_world_size()
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
    random.seed(tc.seed)
    torch.manual_seed(tc.seed)

    # Data: encode, pack or bucket, and fix the order of every epoch from the seed.
    if tc.packing:
        rows = pack_rows(encoded, tc.pack_length or tc.max_length)
    else:
        rows = [Row([x]) for x in encoded]
    gas = tc.gradient_accumulation_steps
    n_batches = math.ceil(len(rows) / tc.micro_batch_size)
    steps_per_epoch = math.ceil(n_batches / (gas * world))
    total_steps = tc.max_steps or math.ceil(tc.epochs * steps_per_epoch)
    n_epochs = math.ceil(total_steps / steps_per_epoch)
    epochs = [epoch_micro_batches(rows, tc.micro_batch_size, tc.seed, e, bucketed=not tc.packing)
              for e in range(n_epochs)]

    # Model, optimizer, schedule, engine.
    ds_cfg = deepspeed_config(tc)
    threads = tc.threads or max(1, (os.cpu_count() or 2) // 2)
    torch.set_num_threads(threads)
    model = load_for_training(model_dir, tc, ds_cfg)
    if rank == 0:
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        print(f"[train] {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters "
              f"({trainable / 1e6:.2f}M trained{', LoRA r=%d' % tc.lora.r if tc.lora.r else ''}), "
              f"torch threads {threads}, loss chunk {tc.loss_chunk or 'off'}", file=sys.stderr)
    if _offloads_optimizer(ds_cfg):
        from deepspeed.ops.adam import DeepSpeedCPUAdam  # ZeRO offload needs it (builds a C++ op once)

        optimizer = DeepSpeedCPUAdam([p for p in model.parameters() if p.requires_grad], lr=tc.learning_rate,
                                     weight_decay=tc.weight_decay, adamw_mode=True)
    else:
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=tc.learning_rate,
                                      weight_decay=tc.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(tc, total_steps))
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler, config=ds_cfg)
    device = engine.device

    # Resume.
    fingerprint = _fingerprint(examples_path, tc)
    start_step, prior_wall = 0, 0.0
    ckpt = latest_checkpoint(out_dir)
    if ckpt is not None:
        state = json.loads((ckpt / "trainer_state.json").read_text())
        if state["fingerprint"] != fingerprint:
            raise TripostError(f"{ckpt}: checkpoint was made from other examples or train settings; "
                               "use a new --out directory or delete it")
        engine.load_checkpoint(str(ckpt / "ds"), tag="state")
        start_step, prior_wall = state["step"], state["wall_s"]
        random.setstate(_unjson_random(state["python_rng"]))
        torch.set_rng_state(torch.tensor(state["torch_rng"], dtype=torch.uint8))
        if rank == 0:
            print(f"resuming {out_dir} from step {start_step} of {total_steps}", file=sys.stderr)
    elif rank == 0 and _earlier_attempt(out_dir):
        print(f"starting over {out_dir}: no complete checkpoint", file=sys.stderr)

    writer = log = None
    if rank == 0:
        from torch.utils.tensorboard import SummaryWriter

        out_dir.mkdir(parents=True, exist_ok=True)
        io.write_text(out_dir / "config.yaml", yaml.safe_dump({"train": to_dict(tc)}, sort_keys=False))
        # A killed attempt may have logged steps past the checkpoint resumed from (past step 0 when
        # there is none): keep the log up to that step, and rebuild TensorBoard from what is kept,
        # so both show one curve with no step twice.
        kept = _truncate_log(out_dir / LOG_FILE, start_step)
        shutil.rmtree(out_dir / TENSORBOARD_DIR, ignore_errors=True)
        writer = SummaryWriter(str(out_dir / TENSORBOARD_DIR))
        for record in kept:
            _add_scalars(writer, record)
        log = io.JsonlAppender(out_dir / LOG_FILE)

    # Token counts are a pure function of the data order, so every rank knows the whole step's
    # normaliser before its first backward.
    def step_batches(step):
        return [[micro_batch_for(epochs, step, a, r, gas, world, steps_per_epoch) for r in range(world)]
                for a in range(gas)]

    totals = {"tokens": 0, "slots": 0}
    loss_value, t0 = float("nan"), time.time()
    window_tokens, window_t = 0, time.time()
    bar = tqdm(total=total_steps, initial=start_step, desc="train", disable=rank != 0, file=sys.stderr)
    engine.train()
    chunk = tc.loss_chunk
    if chunk is not None and not chunking_matches(engine.module, {k: v.to(device) for k, v in
                                                                  collate(epochs[0][0], pad_id).items()}, chunk):
        print("[train] this model's forward is not head(hidden states): the loss uses the full logits",
              file=sys.stderr)
        chunk = None
    for step in range(start_step, total_steps):
        grid = step_batches(step)
        all_rows = [row for acc in grid for mb in acc if mb for row in mb]
        norm = sum(row_norm(row, tc.normalizer) for row in all_rows)
        step_tokens = sum(row.length for row in all_rows)
        scale = world * gas / max(norm, 1e-8)
        local_sum = torch.zeros((), device=device)
        for a in range(gas):
            mb = grid[a][rank]
            batch = collate(mb if mb else grid[0][0], pad_id)
            if not mb:  # past the end of the data: a zero-weight dummy keeps the ranks in step
                batch["weights"].zero_()
                batch["targets"].fill_(-100)
            if mb:
                totals["slots"] += batch["input_ids"].numel()  # tokens + padding actually computed
            batch = {k: v.to(device) for k, v in batch.items()}
            wsum = weighted_loss_sum(engine.module, batch, chunk)
            engine.backward(wsum * scale)
            engine.step()
            local_sum += wsum.detach()
        if world > 1:
            dist.all_reduce(local_sum)
        loss_value = local_sum.item() / max(norm, 1e-8)
        totals["tokens"] += step_tokens
        window_tokens += step_tokens
        done = step + 1
        bar.update(1)
        if rank == 0 and (done % tc.log_every_steps == 0 or done == total_steps):
            now = time.time()
            tps = window_tokens / max(now - window_t, 1e-9)
            lr = scheduler.get_last_lr()[0]
            record = {"step": done, "loss": loss_value, "lr": lr, "tokens_per_s": tps}
            _add_scalars(writer, record)
            log.write(json.dumps(record))
            log.flush()
            bar.set_postfix(loss=f"{loss_value:.4f}")
            window_tokens, window_t = 0, now
        if tc.save_every_steps and done % tc.save_every_steps == 0 and done < total_steps:
            state = {"step": done, "total_steps": total_steps, "fingerprint": fingerprint,
                     "wall_s": prior_wall + time.time() - t0, "python_rng": random.getstate(),
                     "torch_rng": torch.get_rng_state().tolist()}
            save_checkpoint(engine, tokenizer, out_dir / "checkpoints", f"step_{done:08d}", rank, dist, state,
                            tc.keep_checkpoints)
    bar.close()
    train_time = time.time() - t0
    run_tokens = totals["tokens"]  # this process's share of the run (less than all after a resume)
    # Whole-run counts (every step, also those done before a resume): a function of the data order.
    all_rows = [row for step in range(total_steps) for acc in step_batches(step) for mb in acc if mb for row in mb]
    totals.update(tokens_targeted=sum(row_norm(r, "mask") for r in all_rows),
                  tokens_weighted=sum(row_norm(r, "weight") for r in all_rows),
                  tokens=sum(r.length for r in all_rows))

    save_checkpoint(engine, tokenizer, out_dir, "model", rank, dist, None, tc.keep_checkpoints)
    wall = prior_wall + time.time() - t0
    stats = {"steps": total_steps, "resumed_from_step": start_step, "world_size": world,
             "examples": len(encoded), "rows": len(rows), "steps_per_epoch": steps_per_epoch,
             # tokens_seen: every position trained through (the compute); tokens_targeted: those with a
             # weight > 0 (the loss normaliser's "mask"); tokens_weighted: the sum of their weights.
             "tokens_seen": totals["tokens"], "tokens_targeted": totals["tokens_targeted"],
             "tokens_weighted": totals["tokens_weighted"], "final_loss": loss_value, "wall_s": wall,
             # share of computed positions that were padding (this rank's micro-batches)
             "padding_fraction": 1 - sum(r.length for e in range(start_step, total_steps) for a in range(gas)
                                         for r in (micro_batch_for(epochs, e, a, rank, gas, world,
                                                                   steps_per_epoch) or []))
                                 / max(totals["slots"], 1),
             "tokens_per_s": run_tokens / max(train_time, 1e-9),
             "model_dir": str(out_dir / "model")}
    if rank == 0:
        writer.close()
        log.close()
        (out_dir / "train_stats.json").write_text(json.dumps(stats, indent=2) + "\n")
    dist.barrier()
    return stats


LOG_FILE, TENSORBOARD_DIR = "train_log.jsonl", "tensorboard"


def _earlier_attempt(out_dir: Path) -> bool:
    """An interrupted run left something in out_dir (a log, TensorBoard files, checkpoints)."""
    return any((out_dir / name).exists() for name in (LOG_FILE, TENSORBOARD_DIR, "checkpoints"))


def _truncate_log(path: Path, step: int) -> list[dict]:
    """Keep the lines of train_log.jsonl up to `step` (the checkpoint being resumed; 0 = none):
    the file is rewritten atomically, and its kept records returned."""
    if not path.exists():
        return []
    kept = [r for _, r in io.jsonl_objects(path, allow_torn_tail=True)
            if isinstance(r.get("step"), int) and r["step"] <= step]
    io.write_jsonl(path, kept)
    return kept


def _add_scalars(writer, record: dict) -> None:
    """One train_log.jsonl record as TensorBoard scalars."""
    for key in ("loss", "lr", "tokens_per_s"):
        writer.add_scalar(f"train/{key}", record[key], record["step"])


def _unjson_random(state):
    """random.getstate() after a JSON round trip (lists back to tuples)."""
    return (state[0], tuple(state[1]), state[2])


# ----------------------------------------------------------------------------------------------
# Entry points


def _die_with_parent() -> None:
    """In the child: get SIGKILL when the parent dies, so a killed pipeline leaves no orphan
    trainer racing the rerun (its checkpoints stay; the rerun resumes from them). Linux only."""
    try:
        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def train(tc: TrainConfig, examples_path, model_dir, out_dir) -> dict:
    """Train and return the stats; resumes an interrupted run in out_dir and returns at once when
    out_dir/model is complete. train.launcher: "inprocess" runs here (what "auto" does for one
    process: no second start-up of torch, transformers and DeepSpeed per stage); "subprocess" a
    `tripost train` child; "torchrun" train.nproc processes (what "auto" does for nproc > 1)."""
    out_dir = Path(out_dir)
    if is_complete(out_dir / "model") and (out_dir / "train_stats.json").is_file():
        return json.loads((out_dir / "train_stats.json").read_text())
    launcher = tc.launcher if tc.launcher != "auto" else ("inprocess" if tc.nproc == 1 else "torchrun")
    if launcher == "inprocess":
        import torch

        if tc.nproc != 1:
            raise TripostError("config: train.launcher=inprocess runs one process; set train.nproc=1")
        threads = torch.get_num_threads()
        try:
            return run_training(tc, examples_path, model_dir, out_dir)
        finally:
            torch.set_num_threads(threads)  # the rollouts that follow choose their own
    out_dir.mkdir(parents=True, exist_ok=True)
    cfg_path = out_dir / "train_config.yaml"
    io.write_text(cfg_path, yaml.safe_dump({"train": to_dict(tc)}, sort_keys=False))
    args = ["train", "--examples", str(Path(examples_path).resolve()), "--model", str(Path(model_dir).resolve()),
            "--out", str(out_dir.resolve()), "--config", str(cfg_path.resolve())]
    if launcher == "subprocess":
        cmd = [sys.executable, "-m", "tripost"] + args
    elif launcher == "torchrun":
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(tc.nproc),
               "--master_port", str(_free_port()), "-m", "tripost"] + args
    elif launcher == "deepspeed":
        # The DeepSpeed launcher starts the ranks of every node of the hostfile (ssh/pdsh); paths
        # are absolute, so nodes that share this filesystem find the data and the model.
        cmd = ["deepspeed", "--no_local_rank", "--master_port", str(_free_port())]
        cmd += ["--hostfile", str(resolve_path(tc.hostfile))] if tc.hostfile else ["--num_gpus", str(tc.nproc)]
        cmd += ["--module", "tripost"] + args
    else:  # command: the user's launcher prefix, e.g. srun torchrun ...
        cmd = shlex.split(tc.launch_command) + ["-m", "tripost"] + args
    print(f"[train] {' '.join(cmd)}", file=sys.stderr)
    env = {k: v for k, v in os.environ.items() if k not in DIST_ENV}
    proc = subprocess.run(cmd, env=env, preexec_fn=_die_with_parent if sys.platform == "linux" else None)
    if proc.returncode != 0:
        raise TripostError(f"training failed (exit {proc.returncode}); see the output above. "
                           f"Rerun to resume from the last checkpoint in {out_dir / 'checkpoints'}")
    return json.loads((out_dir / "train_stats.json").read_text())


def main(args, cfg: Config) -> int:
    model_dir = args.model or cfg.model
    stats = run_training(cfg.train, args.examples, model_dir, args.out)
    if int(os.environ.get("RANK", 0)) == 0:
        print(f"trained {stats['steps']} steps, final loss {stats['final_loss']:.4f}, "
              f"{stats['tokens_per_s']:.0f} tokens/s -> {stats['model_dir']}")
    return 0
