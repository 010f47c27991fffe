"""Benchmark: one training step of a small model, three ways of computing the weighted loss, side
by side in one process (alternating, so a busy machine slows all of them alike).

    python bench/train_step.py                              # the demo's warm-up: h64, 2 layers, batch 32
    python bench/train_step.py --hidden 128 --batch 16 --rounds 5

Systems:
  masked-checkpointed  what tripost's trainer did before 2026-12-02 (second session): the
                       block-diagonal 4D mask on every micro-batch, the vocabulary logits of all
                       positions, 256 positions per row at a time, each chunk recomputed in backward.
  hf-2d-mask           a plain loop: the model's forward with a 2D padding mask, full logits,
                       cross-entropy over every position (what bench/warmup_proxy.py does).
  tripost              tripost.train.weighted_loss_sum as the trainer calls it (train.loss_chunk
                       default): no mask for one-example rows, logits only at trained positions.

Data: the demo's gold rationales (multistep_arithmetic train split, `numbers` tokenizer as the demo
builds it), encoded by tripost's trainer, length-bucketed micro-batches. Each round runs every
system for --steps steps on the same batches (AdamW, clipping), the first 3 steps not timed;
printed: tokens/s per round and the median, and each system's median against tripost's.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

import torch


def masked_checkpointed(model, batch):
    from torch.utils.checkpoint import checkpoint

    from tripost.train import block_causal_mask

    def part(hidden, targets, weights):
        logits = model.lm_head(hidden).float()
        ce = torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-100,
                                               reduction="none")
        return (ce.view(targets.shape) * weights).sum()

    hidden = model.model(input_ids=batch["input_ids"], position_ids=batch["position_ids"],
                         attention_mask=block_causal_mask(batch["segments"], model.dtype)).last_hidden_state
    return sum(checkpoint(part, hidden[:, s: s + 256], batch["targets"][:, s: s + 256],
                          batch["weights"][:, s: s + 256], use_reentrant=False)
               for s in range(0, hidden.shape[1], 256))


def hf_2d_mask(model, batch):
    logits = model(input_ids=batch["input_ids"], attention_mask=(batch["segments"] >= 0).long()).logits
    ce = torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch["targets"].flatten(), ignore_index=-100,
                                           reduction="none")
    return (ce.view(batch["targets"].shape) * batch["weights"]).sum()


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()

    from transformers import LlamaConfig, LlamaForCausalLM

    from tripost import train
    from tripost.config import Config, with_changes
    from tripost.formats import prompt_format
    from tripost.model_init import tokenizer_corpus, train_tokenizer
    from tripost.process import rationale_example
    from tripost.tasks import get_task

    torch.set_num_threads(a.threads)
    n = a.batch * (a.steps + 3)
    task = get_task(with_changes(Config().task, name="multistep_arithmetic", max_train=n))
    tok = train_tokenizer(tokenizer_corpus(task), 640, "numbers", 299)
    fmt = prompt_format(False)
    encoded = train.encode_examples([rationale_example(fmt, "base", ex, task.gold_rationale(ex))
                                     for ex in task.load("train")], tok)
    encoded.sort(key=lambda e: len(e[0]))
    batches = [train.collate([train.Row([x]) for x in encoded[i: i + a.batch]], tok.pad_token_id)
               for i in range(0, len(encoded) - a.batch + 1, a.batch)]
    random.Random(0).shuffle(batches)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=a.hidden, intermediate_size=3 * a.hidden,
                      num_hidden_layers=a.layers, num_attention_heads=a.hidden // 32,
                      num_key_value_heads=a.hidden // 32, max_position_embeddings=1024,
                      tie_word_embeddings=True, pad_token_id=tok.pad_token_id)
    systems = {"masked-checkpointed": masked_checkpointed, "hf-2d-mask": hf_2d_mask,
               "tripost": lambda m, b: train.weighted_loss_sum(m, b, train.TrainConfig.loss_chunk)}
    print(f"h{a.hidden}, {a.layers} layers, vocabulary {len(tok)}, micro-batch {a.batch}, "
          f"{sum(len(x) for x, _ in encoded) / len(encoded):.0f} tokens per example, {a.threads} threads")
    rates: dict[str, list[float]] = {name: [] for name in systems}
    for r in range(a.rounds):
        for name, loss_fn in systems.items():
            torch.manual_seed(0)
            model = LlamaForCausalLM(cfg)
            opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
            tokens, seconds = 0, 0.0
            for s, batch in enumerate(batches):
                t = time.perf_counter()
                loss_fn(model, batch).backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                opt.step()
                opt.zero_grad(set_to_none=True)
                if s >= 3:
                    seconds += time.perf_counter() - t
                    tokens += int((batch["segments"] >= 0).sum())
            rates[name].append(tokens / seconds)
            print(f"round {r + 1}  {name:20s} {tokens / seconds:8.0f} tokens/s", flush=True)
    ref = statistics.median(rates["tripost"])
    print(f"\n{'system':20s} {'median tokens/s':>16} {'vs tripost':>11}")
    for name, xs in rates.items():
        print(f"{name:20s} {statistics.median(xs):16.0f} {statistics.median(xs) / ref:10.2f}x")


if __name__ == "__main__":
    main()
