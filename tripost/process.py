"""Trajectories -> weighted training examples, one file per model that trains (`<model>.jsonl`).

    tripost process --trajectories edit/trajectories.jsonl --tokenizer models/tiny --out process/
    tripost process --rationales --tokenizer models/tiny --out warmup/     # rationale SFT ("ft rationale")

The method builds the examples and puts a weight on every segment (tripost/methods/); this stage
does what every method needs around that, in order, with the counts of each kind after each step in
stats.json:

  1. build: method.examples(kept trajectories, gold rationales, ...) -> examples, each naming its
     model, sorted by id (so nothing depends on the order of the records in the files); the
     method's drop_reasons say, per model, why a kept trajectory gave it no example;
  2. exact duplicates (same model, same text) are removed, the first one kept;
  3. examples longer than process.max_tokens tokens (as the trainer encodes them) are dropped;
  4. method.select(model, examples, ...) per model: e.g. TriPosT's rebalancing to a share p.

Rationale SFT (`rationale_sft`, the warm-up and the equal-compute baseline) writes one example per
train question with a gold rationale: the question, then the rationale (weight 1).

Gold rationales (`gold_rationales`) come from the task's script when it has one; for tasks without
(date_understanding, logical_deduction, jsonl) an LLM writes them from prompts/<task>/rationale.j2
when `experts` (the edit section) uses one, and only those reaching the gold answer are kept. The
LLM replies are cached under the output directory, so a rerun pays for nothing twice.
"""

from __future__ import annotations

import dataclasses
import random
from collections import Counter
from pathlib import Path

from tripost import io
from tripost.config import EditConfig, ProcessConfig
from tripost.errors import TripostError
from tripost.formats import prompt_format
from tripost.records import Example, Segment, TrainingExample, examples_file, read_trajectories, training_example

RATIONALE_KIND = "rationale"


def script_defines(path: Path, name: str) -> bool:
    """Whether a user's script has a top-level function `name` (read, not run)."""
    import ast

    try:
        tree = ast.parse(Path(path).read_text(encoding="utf-8"))
    except (OSError, SyntaxError, UnicodeDecodeError):
        return False  # starting its workers will report what is wrong with it
    return any(isinstance(n, ast.FunctionDef) and n.name == name for n in tree.body)


def rationale_source(task, experts: EditConfig | None) -> str | None:
    """Where the gold rationales come from, first that applies: "task" (the task's own: scripted,
    a task file's, task.rationale_field), "script" (the feedback script's `rationale(example)`),
    "llm" (an LLM expert writes them from rationale.j2), or None (there are none)."""
    from tripost.config import resolve_path

    if task.has_gold_rationale:
        return "task"
    if experts is None:
        return None
    if experts.feedback.startswith("script:") and \
            script_defines(resolve_path(experts.feedback[len("script:"):]), "rationale"):
        return "script"
    return "llm" if "llm" in (experts.feedback, experts.improvement) else None


def gold_rationales(task, experts: EditConfig | None, cache_dir: Path, drops: Counter) -> list[tuple[Example, str]]:
    """(example, rationale) for every train question that has a gold rationale (see the module
    docstring and `rationale_source`). Script and LLM rationales are kept only when they are in the
    step format and reach the gold answer; the others are counted in `drops`."""
    train = task.load("train")
    source = rationale_source(task, experts)
    if source is None:
        return []
    if source == "task":
        return [(ex, r) for ex in train if (r := task.gold_rationale(ex)) is not None]
    from tripost.experts import make_expert
    from tripost.tasks.base import rationale_steps

    expert = make_expert(experts.feedback if source == "script" else "llm", experts, task, cache_dir,
                         role="rationale")
    try:
        replies = expert.rationale_many(train)
    finally:
        expert.close()
    out = []
    for ex, reply in zip(train, replies):
        text = rationale_steps(reply.text, ex.answer) if source == "script" and reply.text else reply.text
        if text is None:
            drops[f"gold_{reply.error or 'no_rationale'}"] += 1
        elif not task.is_correct(ex, text):
            drops["gold_wrong_rationale"] += 1
        else:
            out.append((ex, text))
    return out


def load_tokenizer(tokenizer_dir):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(tokenizer_dir))
    except (OSError, ValueError) as e:
        raise TripostError(f"{tokenizer_dir}: cannot load a tokenizer ({e})") from None


def _counts(examples: list[TrainingExample]) -> dict:
    c = Counter(e.kind for e in examples)
    return dict(sorted(c.items())) | {"total": len(examples)}


def _dedupe_and_limit(examples: list[TrainingExample], tokenizer, max_tokens: int, stats: dict, drops: Counter):
    """Steps 2 and 3, counted."""
    from tripost.train import encode_examples

    seen, unique = set(), []
    for e in examples:
        if (e.model, e.text) not in seen:
            seen.add((e.model, e.text))
            unique.append(e)
    drops["duplicate"] += len(examples) - len(unique)
    stats["after_dedup"] = _counts(unique)
    if tokenizer is None:
        stats["length_limit"] = "skipped: no tokenizer given"
        return unique
    kept = [e for e, (ids, _) in zip(unique, encode_examples(unique, tokenizer)) if len(ids) <= max_tokens]
    drops["too_long"] += len(unique) - len(kept)
    stats["length_limit"] = f"max_tokens={max_tokens} (as the trainer encodes them: text + EOS)"
    stats["after_length"] = _counts(kept)
    return kept


def _write(out_dir: Path, by_model: dict[str, list[TrainingExample]], stats: dict) -> dict:
    for model, examples in by_model.items():
        io.write_jsonl(examples_file(out_dir, model), examples)
    stats["files"] = {model: str(examples_file(out_dir, model)) for model in by_model}
    io.write_json(out_dir / "stats.json", stats)
    return stats


def process(task, process_cfg: ProcessConfig, method: str, method_cfg, chat_template: bool, trajectories: list,
            tokenizer_dir, out_dir, experts: EditConfig | None = None) -> dict:
    """Build, dedupe, length-filter and select the method's training examples; write one
    `<model>.jsonl` per model and stats.json under out_dir; return the stats."""
    from tripost.methods import get_method

    m = get_method(method)
    out_dir = Path(out_dir)
    drops: Counter = Counter()
    trajs = []
    for path in trajectories:
        for t in read_trajectories(path):
            if t.status == "kept":
                trajs.append(t)
            else:
                drops[f"not_kept_{t.status}"] += 1
    gold = gold_rationales(task, experts, out_dir, drops) if m.uses_gold(method_cfg) else []
    if m.uses_gold(method_cfg) and not gold:
        import sys

        print(f"WARNING: {method} wants gold rationales, but task '{task.name}' has none (no scripted ones, "
              "no task.rationale_field, no rationale() in the feedback script, no LLM expert): no gold "
              "examples are added", file=sys.stderr)
        drops["no_gold_rationale_source"] += 1
    tokenizer = load_tokenizer(tokenizer_dir) if tokenizer_dir is not None else None
    fmt = prompt_format(chat_template, tokenizer)
    # By id, so the result does not depend on the order records were written in (a resumed
    # collect or edit writes them in another order than an uninterrupted one).
    trajs.sort(key=lambda t: t.id)
    built = sorted(m.examples(trajs, gold, method_cfg, fmt), key=lambda e: e.id)
    unused = m.drop_reasons(trajs, method_cfg)  # per model: why a kept trajectory gave it no example
    stats: dict = {"trajectories": len(trajs), "gold_rationales": len(gold), "models": {}}
    by_model: dict[str, list[TrainingExample]] = {}
    for model in m.models(method_cfg):
        mine = [e for e in built if e.model == model]
        model_drops: Counter = Counter(unused.get(model, {}))
        model_stats: dict = {"built": _counts(mine)}
        mine = _dedupe_and_limit(mine, tokenizer, process_cfg.max_tokens, model_stats, model_drops)
        mine, model_stats["select"] = m.select(model, mine, method_cfg, process_cfg.seed)
        model_stats["final"] = _counts(mine)
        model_stats["drops"] = dict(sorted(model_drops.items()))
        stats["models"][model] = model_stats
        by_model[model] = mine
    stats["drops"] = dict(sorted(drops.items()))
    return _write(out_dir, by_model, stats)


def rationale_example(fmt, model: str, ex: Example, rationale: str) -> TrainingExample:
    """Question (context) -> gold rationale (weight 1): the "ft rationale" data."""
    segs = [Segment(fmt.question(ex.question), 0.0, "user"), Segment(rationale, 1.0, model)]
    if fmt.closing:
        segs.append(Segment(fmt.closing, 1.0, model))
    return training_example("rationale_sft", model, RATIONALE_KIND, segs, ex, chat_template=fmt.chat_template)


def rationale_sft(task, process_cfg: ProcessConfig, chat_template: bool, tokenizer_dir, out_dir, model: str,
                  experts: EditConfig | None = None, held_out: set[str] = frozenset()) -> dict:
    """One rationale example per train question with a gold rationale (deduped, length-limited),
    for `model`: the warm-up ("base") and the baseline. Questions whose id is in `held_out` (the
    run's test questions, when the warm-up draws on a larger generated pool) are left out. Writes
    `<model>.jsonl` and stats.json."""
    out_dir = Path(out_dir)
    drops: Counter = Counter()
    gold = sorted(gold_rationales(task, experts, out_dir, drops), key=lambda pair: pair[0].id)
    kept = [(ex, r) for ex, r in gold if ex.id not in held_out]
    if len(kept) < len(gold):
        drops["held_out_test_question"] = len(gold) - len(kept)
    gold = kept
    if not gold:
        raise TripostError(f"task '{task.name}' has no gold rationales (no scripted ones, and no LLM expert "
                           "configured to write them), so there is no rationale SFT data")
    tokenizer = load_tokenizer(tokenizer_dir) if tokenizer_dir is not None else None
    fmt = prompt_format(chat_template, tokenizer)
    examples = [rationale_example(fmt, model, ex, r) for ex, r in gold]
    stats: dict = {"gold_rationales": len(gold), "built": _counts(examples)}
    examples = _dedupe_and_limit(examples, tokenizer, process_cfg.max_tokens, stats, drops)
    stats["final"] = _counts(examples)
    stats["drops"] = dict(sorted(drops.items()))
    return _write(out_dir, {model: examples}, stats)


def token_matched(examples: list[TrainingExample], tokenizer, max_length: int, budget: int, seed: int,
                  model: str | None = None) -> tuple[list[TrainingExample], dict]:
    """Passes over `examples` (reshuffled each pass, seeded) until their tokens (as the trainer
    encodes them, capped at max_length) reach `budget`: how a baseline or an arm is given the same
    compute as the method. Stops short when the next example would overshoot by more than it
    undershoots. `model` renames the copies (the model that trains on them)."""
    from tripost.train import encode_examples

    if not examples:
        raise TripostError("no training examples to match the token budget with")
    lengths = [len(ids) for ids, _ in encode_examples(examples, tokenizer, max_length)]
    rng = random.Random(seed)
    picked, total, passes, full = [], 0, 0, False
    while not full:
        order = list(range(len(examples)))
        rng.shuffle(order)
        passes += 1
        for i in order:
            over = total + lengths[i] - budget
            if picked and over > 0 and over > budget - total:
                full = True
                break
            picked.append(i)
            total += lengths[i]
            if total >= budget:
                full = True
                break
    out = [dataclasses.replace(examples[i], model=model or examples[i].model) for i in picked]
    return out, {"examples": len(out), "tokens_seen": total, "budget_tokens_seen": budget, "passes": passes}


def main(args, cfg) -> int:
    from tripost.config import method_config
    from tripost.tasks import get_task

    task = get_task(cfg.task)
    tokenizer = args.tokenizer or cfg.model
    experts = cfg.edit
    if args.rationales:
        stats = rationale_sft(task, cfg.process, cfg.chat_template, tokenizer, args.out, "base", experts)
    else:
        if not args.trajectories:
            raise TripostError("process: give --trajectories FILE ... (or --rationales)")
        stats = process(task, cfg.process, cfg.method, method_config(cfg), cfg.chat_template, args.trajectories,
                        tokenizer, args.out, experts)
    print(summary(stats))
    return 0


def summary(stats: dict) -> str:
    """The table `tripost process` prints: counts of each kind after each step, per model."""
    lines = []
    groups = stats["models"].items() if "models" in stats else [("base", stats)]
    for model, s in groups:
        steps_ = [k for k in ("built", "after_dedup", "after_length", "final") if k in s]
        kinds = sorted({k for st in steps_ for k in s[st] if k != "total"}) + ["total"]
        lines.append(f"model {model}: " + s.get("length_limit", ""))
        lines.append(f"  {'step':<13}" + "".join(f"{k:>13}" for k in kinds))
        for st in steps_:
            lines.append(f"  {st:<13}" + "".join(f"{s[st].get(k, 0):>13}" for k in kinds))
        if s.get("drops"):
            lines.append("  drops: " + ", ".join(f"{k}={v}" for k, v in s["drops"].items()))
        sel = s.get("select")
        if sel:
            lines.append(f"  select: {sel['action']}")
            if sel.get("reached") is False:
                lines.append(f"  WARNING: the improvement share p={sel['target_p']} was NOT reached "
                             f"(now {sel.get('after_p')}).")
        lines.append(f"  wrote {stats['files'][model]}")
    if stats.get("drops"):
        lines.append("drops: " + ", ".join(f"{k}={v}" for k, v in stats["drops"].items()))
    return "\n".join(lines)
