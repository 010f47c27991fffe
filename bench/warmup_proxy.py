"""Warm-up recipes, compared fast: a plain torch loop on generated gold rationales, scored by
teacher forcing on held-out rationales. What docs/warmup.md's "recipe search" rows come from.

A full `bench/warmup.py` row (a real `tripost iterate iterate.rounds=0`) costs data generation,
tokenization and a 800-question greedy evaluation on top of the training; this script trains the
same model shape on the same kind of data and measures, every --eval-every steps:

  * exact: the share of 1000 held-out rationales whose every target token is the model's argmax
    under teacher forcing (= greedy decoding would write the gold rationale word for word; a
    real evaluation also counts answers that are right by luck, e.g. a product with a 0);
  * num acc: the share of number tokens predicted right (copies and results alike).

    python bench/warmup_proxy.py --questions 80000 --batch 32 --lr 3e-3
    python bench/warmup_proxy.py --questions 80000 --batch 32 --lr 3e-3 --format whole_products
    python bench/warmup_proxy.py --questions 80000 --batch 32 --lr 3e-3 --fourier

--format whole_products reproduces the gold format before 2026-12-02 (every product of a group in
one step, "(6 * 5 * 8) = 240"); one_per_step is the current one ("(6 * 5 * 8) = (30 * 8) = 240").
--fourier starts the number tokens' embeddings at cos/sin features of their value. The tokenizer
is a `numbers` tokenizer built by tripost's init_model on the task (vocab 640, max_number 299);
the questions are the task's own train split (the demo's draw), encoded by tripost's trainer.
"""

from __future__ import annotations

import argparse
import math
import random
import time

import torch


def whole_products(node):
    """The old `arith._reduce_flat`: every product at once, then sums one at a time."""
    from tripost import arith
    if type(node) is arith.Num:
        return node
    if node.is_product:
        return arith._num(arith.evaluate(node))
    if any(type(x) is arith.Chain for x in node.items()):
        first = arith._num(arith.evaluate(node.first)) if type(node.first) is arith.Chain else node.first
        rest = tuple((op, arith._num(arith.evaluate(x)) if type(x) is arith.Chain else x) for op, x in node.rest)
        return arith.Chain(first, rest)
    return arith._fold_first(node)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--questions", type=int, default=80000, help="training questions (one epoch)")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--heads", type=int, default=2)
    p.add_argument("--mlp", type=int, default=192, help="intermediate size")
    p.add_argument("--untied", action="store_true", help="an output embedding of its own")
    p.add_argument("--seed", type=int, default=0, help="initialisation and data order")
    p.add_argument("--format", choices=("one_per_step", "whole_products"), default="one_per_step")
    p.add_argument("--fourier", action="store_true")
    p.add_argument("--eval-every", type=int, default=500)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()

    from transformers import LlamaConfig, LlamaForCausalLM
    from tripost import arith
    from tripost.config import Config, with_changes
    from tripost.formats import prompt_format
    from tripost.model_init import tokenizer_corpus, train_tokenizer
    from tripost.process import rationale_example
    from tripost.tasks import get_task
    from tripost import train as trainer
    from tripost.train import encode_examples

    if a.format == "whole_products":
        arith._reduce_flat = whole_products
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    # The demo's own data: the task's train split (seed 0), gold rationales as the warm-up builds
    # them, token ids and weights as the trainer encodes them; 1000 of them held out.
    task = get_task(with_changes(Config().task, name="multistep_arithmetic", max_train=a.questions + 1000))
    tok = train_tokenizer(tokenizer_corpus(task), 640, "numbers", 299)
    fmt = prompt_format(False)
    examples = [rationale_example(fmt, "base", ex, task.gold_rationale(ex)) for ex in task.load("train")]
    random.Random(0).shuffle(examples)
    encoded = encode_examples(examples[:a.questions + 1000], tok)
    test, train = encoded[-1000:], encoded[:-1000]
    numbers = {i for s, i in tok.get_vocab().items() if s.lstrip("-").isdigit()}

    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=a.hidden, intermediate_size=a.mlp,
                      num_hidden_layers=a.layers, num_attention_heads=a.heads,
                      num_key_value_heads=a.heads, max_position_embeddings=1024,
                      tie_word_embeddings=not a.untied, pad_token_id=tok.pad_token_id)
    model = LlamaForCausalLM(cfg)
    if a.fourier:
        periods = [2, 3, 4, 5, 6, 7, 8, 9, 10, 12, 15, 20, 30, 50, 100, 200][: a.hidden // 4]
        with torch.no_grad():
            for s, i in tok.get_vocab().items():
                if i in numbers:
                    n = int(s)
                    f = [g(2 * math.pi * n / t) for t in periods for g in (math.cos, math.sin)]
                    model.model.embed_tokens.weight[i, :len(f)] = torch.tensor(f) * 0.02 * math.sqrt(2)
    opt = torch.optim.AdamW(model.parameters(), lr=a.lr, weight_decay=0.0)
    steps = math.ceil(len(train) / a.batch)
    warm = max(1, int(0.05 * steps))

    def lr_at(s):
        return a.lr * ((s + 1) / warm if s < warm else 0.5 * (1 + math.cos(math.pi * (s - warm) / (steps - warm))))

    def collate(items):
        n = max(len(x) for x, _ in items)
        ids = torch.full((len(items), n), tok.pad_token_id)
        labels = torch.full((len(items), n), -100)
        mask = torch.zeros((len(items), n), dtype=torch.long)
        for r, (x, w) in enumerate(items):  # w[t]: the weight of token t as a target
            ids[r, :len(x)] = torch.tensor(x)
            mask[r, :len(x)] = 1
            labels[r, :len(x)] = torch.where(torch.tensor(w) > 0, torch.tensor(x), -100)
        return ids, mask, labels

    def evaluate():
        model.eval()
        exact = num_ok = num_n = 0
        with torch.no_grad():
            for j in range(0, len(test), 100):
                ids, mask, labels = collate(test[j:j + 100])
                pred = model(input_ids=ids, attention_mask=mask).logits[:, :-1].argmax(-1)
                y = labels[:, 1:]
                trained = y != -100
                exact += int(((pred == y) | ~trained).all(1).sum())
                is_num = torch.isin(y, torch.tensor(sorted(numbers))) & trained
                num_ok += int(((pred == y) & is_num).sum())
                num_n += int(is_num.sum())
        model.train()
        return exact / len(test), num_ok / num_n

    # Length-sorted windows of 32 batches, shuffled (as tripost's trainer buckets).
    order = list(range(len(train)))
    random.Random(a.seed).shuffle(order)
    batches = []
    for w in range(0, len(order), a.batch * 32):
        window = sorted(order[w:w + a.batch * 32], key=lambda i: len(train[i][0]))
        batches += [window[j:j + a.batch] for j in range(0, len(window), a.batch)]
    random.Random(a.seed + 1).shuffle(batches)
    print(f"{a.format}{' fourier' if a.fourier else ''}: {sum(p.numel() for p in model.parameters())} "
          f"parameters, {len(train)} questions, batch {a.batch}, lr {a.lr}, {steps} steps", flush=True)
    print(f"{'step':>6} {'tokens':>10} {'train s':>8} {'exact':>6} {'num acc':>8}")
    tokens, train_s = 0, 0.0
    for s, batch in enumerate(batches):
        t = time.perf_counter()
        for g in opt.param_groups:
            g["lr"] = lr_at(s)
        # the trainer's loss: tripost.train's batch and weighted loss, normalised by trained tokens
        mb = trainer.collate([trainer.Row([train[i]]) for i in batch], tok.pad_token_id)
        loss = trainer.weighted_loss_sum(model, mb, trainer.TrainConfig.loss_chunk) / (mb["weights"] > 0).sum()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        train_s += time.perf_counter() - t
        tokens += int((mb["segments"] >= 0).sum())
        if (s + 1) % a.eval_every == 0 or s + 1 == steps:
            exact, num_acc = evaluate()
            print(f"{s + 1:>6} {tokens:>10} {train_s:>8.0f} {exact:>6.3f} {num_acc:>8.3f}", flush=True)


if __name__ == "__main__":
    main()
