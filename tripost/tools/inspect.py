"""`tripost inspect FILE.jsonl`: read any JSONL file tripost writes, in the terminal.

    tripost inspect runs/demo/round_1/edit/trajectories.jsonl              # first 5 trajectories
    tripost inspect runs/demo/round_1/edit/dropped.jsonl --summary         # counts by drop reason
    tripost inspect runs/demo/round_1/collect/attempts.jsonl --correct no --limit 3
    tripost inspect runs/demo/round_1/process/learner.jsonl --kind improvement --tokens

Works on attempts, trajectories, dropped, predictions and training-example files alike (each
record's "schema" says what it is; files of older tripost versions are read too). A trajectory is
shown as its conversation, round by round: who speaks, what kind of message, who wrote it, the
answer it gives and whether the task judges it right. A training example shows its segments with
their weights; with --tokens every token is coloured by the weight the trainer gives it, computed by
the trainer's own encoder (tripost.train.encode_example), with the tokenizer of the run the file
belongs to (or --tokenizer DIR).

Colours are used only when stdout is a terminal (and NO_COLOR is unset).
"""

from __future__ import annotations

import os
import sys
from collections import Counter
from pathlib import Path

from tripost.errors import TripostError
from tripost.io import jsonl_objects
from tripost.records import TrainingExample, Trajectory, parse_record

_ANSI = {"dim": "\033[2m", "bold": "\033[1m", "red": "\033[31m", "green": "\033[32m", "yellow": "\033[33m",
         "blue": "\033[34m", "magenta": "\033[35m", "cyan": "\033[36m", "reset": "\033[0m"}


class Style:
    """ANSI styles, or none when colours are off."""

    def __init__(self, colour: bool):
        self.colour = colour

    def __call__(self, text: str, *styles: str) -> str:
        if not self.colour or not styles:
            return text
        return "".join(_ANSI[s] for s in styles) + text + _ANSI["reset"]


def use_colour(stream=None) -> bool:
    stream = stream or sys.stdout
    return stream.isatty() and "NO_COLOR" not in os.environ


# ----------------------------------------------------------------------------------------------
# Loading and filtering


def run_dir_of(path: Path) -> Path | None:
    """The run directory a file lies in (the nearest parent with config.yaml and a round_0/)."""
    for parent in Path(path).resolve().parents:
        if (parent / "config.yaml").is_file() and (parent / "round_0").is_dir():
            return parent
    return None


def load_records(path, role_weights: dict | None = None) -> list[Trajectory | TrainingExample]:
    """Every record of a tripost JSONL file. `role_weights`: the weights of a layout-1 example
    file's roles (its run's train.w), when known."""
    from tripost.errors import where
    from tripost.records import EXAMPLE_V1, example_from_v1

    out = []
    for line, data in jsonl_objects(path):
        if data.get("schema") == EXAMPLE_V1 and role_weights is not None:
            out.append(example_from_v1(data, where(path, line), role_weights))
        else:
            out.append(parse_record(data, path, line))
    return out


FILTERS = {  # flag -> (record type, what it compares)
    "status": (Trajectory, lambda r: r.status),
    "correct": (Trajectory, lambda r: "yes" if r.correct else "no"),
    "drop_reason": (Trajectory, lambda r: r.drop_reason),
    "stop": (Trajectory, lambda r: r.stop),
    "kind": (TrainingExample, lambda r: r.kind),
    "model": (TrainingExample, lambda r: r.model),
    "subtask": (object, lambda r: r.subtask),
}


def select(records: list, args) -> list:
    """The records the command line's filters keep. A filter value that no record of its type has
    is an error listing the values the file does have."""
    chosen = records
    if args.id:
        chosen = [r for r in chosen if r.id.startswith(args.id)
                  or (isinstance(r, TrainingExample) and r.source_id.startswith(args.id))]
    for flag, (cls, value_of) in FILTERS.items():
        wanted = vars(args)[flag]
        if wanted is None:
            continue
        typed = [r for r in records if isinstance(r, cls)]
        valid = sorted({value_of(r) for r in typed})
        if wanted not in valid:
            kind = "records" if cls is object else f"{cls.__name__} records"
            raise TripostError(f"--{flag.replace('_', '-')} {wanted!r}: no {kind} in {args.file} have it; "
                               f"values there: {', '.join(map(repr, valid)) or 'none'}")
        chosen = [r for r in chosen if isinstance(r, cls) and value_of(r) == wanted]
    return chosen


# ----------------------------------------------------------------------------------------------
# Summary statistics


def summary(records: list) -> dict:
    """Counts for a file: by status, drop reason, stop, subtask and messages (trajectories); by
    kind and model, and mean length in characters (training examples)."""
    trajs = [r for r in records if isinstance(r, Trajectory)]
    examples = [r for r in records if isinstance(r, TrainingExample)]
    out: dict = {"records": len(records)}
    if trajs:
        out["trajectories"] = {
            "by_status": dict(Counter(t.status for t in trajs).most_common()),
            "correct": f"{sum(t.correct for t in trajs)} of {len(trajs)}",
            "by_drop_reason": dict(Counter(t.drop_reason for t in trajs if t.drop_reason).most_common()),
            "by_stop": dict(Counter(t.stop for t in trajs if t.stop).most_common()),
            "by_subtask": dict(sorted(Counter(t.subtask or "-" for t in trajs).items())),
            "messages_per_trajectory": dict(sorted(Counter(len(t.messages) for t in trajs).items())),
            "authors": dict(Counter(m.author for t in trajs for m in t.messages).most_common()),
        }
    if examples:
        by_kind = Counter(e.kind for e in examples)
        out["examples"] = {
            "by_kind": dict(by_kind.most_common()),
            "by_model": dict(Counter(e.model for e in examples).most_common()),
            "mean_chars_by_kind": {k: round(sum(len(e.text) for e in examples if e.kind == k) / n, 1)
                                   for k, n in by_kind.most_common()},
            "by_subtask": dict(sorted(Counter(e.subtask or "-" for e in examples).items())),
        }
    return out


def format_summary(stats: dict, style: Style) -> str:
    lines = [style(f"{stats['records']} records", "bold")]
    for section in ("trajectories", "examples"):
        for key, value in stats.get(section, {}).items():
            shown = ", ".join(f"{k}: {v}" for k, v in value.items()) or "-" if isinstance(value, dict) else str(value)
            lines.append(f"  {key.replace('_', ' ')}: {shown}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# One record


def _indent(text: str, prefix: str = "    ") -> str:
    return "\n".join(prefix + line for line in text.splitlines()) if text else prefix


KIND_COLOURS = {"attempt": "cyan", "update": "green", "feedback": "magenta", "remark": "yellow", "answer": "cyan"}


def show_trajectory(t: Trajectory, style: Style) -> str:
    head = f"{t.id}  {t.method}  {t.task}" + (f"/{t.subtask}" if t.subtask else "") + ("" if t.seen else "  (unseen)")
    lines = [style(head, "bold"), style("Q: ", "blue") + t.question, style("gold answer: ", "blue") + t.answer]
    last_round = None
    for m in t.messages:
        if m.round != last_round:
            lines.append(style(f"-- round {m.round}", "dim"))
            last_round = m.round
        verdict = ""
        if m.correct is not None:
            verdict = "  " + (style("right", "green") if m.correct else style("wrong", "red")) + f" ({m.answer or 'no answer'})"
        stance = f" [{m.stance}]" if m.stance else ""
        cut = style("  (cut off)", "yellow") if m.truncated else ""
        lines.append(style(f"{m.speaker} {m.kind}{stance}", KIND_COLOURS.get(m.kind, "cyan"), "bold")
                     + style(f" by {m.author}", "dim") + verdict + cut)
        lines.append(_indent(m.text))
    colour = {"kept": "green", "dropped": "yellow", "pending": "cyan"}[t.status]
    result = f"status: {style(t.status, colour, 'bold')}  final answer: {t.final_answer or '-'} " + \
             (style("(right)", "green") if t.correct else style("(wrong)", "red"))
    if t.drop_reason:
        result += f"  drop reason: {style(t.drop_reason, 'yellow')}"
    lines.append(result)
    extra = [f"stage={t.stage}", f"round={t.round}", f"stop={t.stop or '-'}", f"calls={t.calls}"]
    lines.append(style("  ".join(extra) + (f"  detail: {t.detail}" if t.detail else ""), "dim"))
    return "\n".join(lines)


def show_example(e: TrainingExample, style: Style) -> str:
    lines = [style(f"{e.id}  {e.kind}  trains {e.model}  (from {e.source_id})", "bold")]
    for seg in e.segments:
        label = style(f"[{seg.speaker} w={seg.weight:g}]", "cyan")
        lines.append(f"{label} " + (style(seg.text, "dim") if seg.weight == 0 else seg.text))
    return "\n".join(lines)


def token_weights(example: TrainingExample, tokenizer) -> tuple[list[str], list[float]]:
    """(token strings, weights) for one example, from the trainer's own encoder, so what is shown is
    exactly what training weighs."""
    from tripost.train import encode_example

    ids, weights = encode_example(example, tokenizer)
    offsets = tokenizer(example.text, return_offsets_mapping=True,
                        add_special_tokens=not example.chat_template)["offset_mapping"]
    tokens = []
    for i, tid in enumerate(ids):
        a, b = offsets[i] if i < len(offsets) else (0, 0)
        tokens.append(example.text[a:b] if b > a else tokenizer.convert_ids_to_tokens(tid))
    return tokens, weights


def show_tokens(tokens: list[str], weights: list[float], style: Style) -> str:
    """Tokens coloured by weight (dim 0, plain 1, bold magenta otherwise); without colours each
    token is bracketed with its weight."""
    out = []
    for tok, weight in zip(tokens, weights):
        if not style.colour:
            out.append(f"[{tok}|{weight:g}]")
        elif weight == 0:
            out.append(style(tok, "dim"))
        else:
            out.append(tok if weight == 1 else style(tok, "bold", "magenta"))
    shown = sorted(set(weights))
    legend = ("weights: " + ", ".join(f"{w:g}" for w in shown)) if not style.colour else \
        style("weight 0", "dim") + "  weight 1  " + style("other weights", "bold", "magenta")
    return "".join(out) + "\n" + legend


def _run_config(path: Path):
    """The config of the run directory `path` lies in, or None."""
    from tripost.config import load_config

    run = run_dir_of(path)
    return (run, load_config(run / "config.yaml", older=True)) if run is not None else (None, None)


def role_weights_of(cfg) -> dict | None:
    """A layout-1 example file's role weights, from its run's config (train.w, now tripost.w)."""
    from tripost.records import V1_ROLE_WEIGHTS

    return dict(V1_ROLE_WEIGHTS, feedback=cfg.tripost.w, improvement=cfg.tripost.w) if cfg is not None else None


def tokenizer_for(path: Path, given: str | None):
    """(tokenizer, where it came from) for --tokens: --tokenizer, or the model of the file's run."""
    from tripost.process import load_tokenizer

    if given is None:
        run, cfg = _run_config(path)
        if run is None:
            raise TripostError(f"{path} is not inside a run directory; give the tokenizer with --tokenizer DIR")
        given = str(init_model_dir(run, cfg)) if cfg.model is None else cfg.model
    return load_tokenizer(given), given


def init_model_dir(run: Path, cfg) -> Path:
    """Where a run's own tiny model is: round_0/init_model, or in iterate.base_cache."""
    local = run / "round_0/init_model"
    if local.is_dir() or cfg.iterate.base_cache is None:
        return local
    from tripost.iterate import plan, prepare

    return next(s.dir for s in plan(prepare(cfg), run) if s.id == "base/init_model")


def main(args, cfg=None) -> int:
    style = Style(use_colour())
    path = Path(args.file)
    records = load_records(path, role_weights_of(_run_config(path)[1]))
    tokenizer, where_from = tokenizer_for(path, args.tokenizer) if args.tokens else (None, None)
    chosen = select(records, args)
    stats = summary(chosen)
    if args.summary:
        print(format_summary(stats, style))
        return 0
    shown = chosen[: args.limit] if args.limit > 0 else chosen
    for r in shown:
        if isinstance(r, Trajectory):
            print(show_trajectory(r, style))
        else:
            print(show_example(r, style))
            if tokenizer is not None:
                tokens, weights = token_weights(r, tokenizer)
                print(style(f"tokens by weight (tokenizer {where_from}):", "cyan"))
                print(show_tokens(tokens, weights, style))
        print()
    filtered = f" ({len(records)} in the file)" if len(chosen) != len(records) else ""
    print(style(f"{len(shown)} of {len(chosen)} matching records{filtered}", "dim"))
    print(format_summary(stats, style))
    return 0
