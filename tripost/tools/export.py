"""`tripost export`: training examples in the formats other trainers read.

    tripost export runs/demo --format trl --out demo_trl.jsonl                # the latest round's data
    tripost export runs/demo --stage round_2/process --format openai --out r2_openai.jsonl
    tripost export runs/demo --stage all --format hf --out demo_hf/            # every process stage
    tripost export runs/demo/round_1/process/learner.jsonl --format llamafactory --out lf.jsonl

Reads training-example files (`tripost.example/2`, and the `/1` `examples.jsonl` of older runs):
one file, a stage directory, or a run directory. In a run directory `--stage` picks the stage
directories: `latest` (the default: the newest finished `round_<k>/process/`, the data the
method's last training round used; with `iterate.cumulative_data` it already holds every round's
trajectories), `all` (every finished `process/` and `warmup_process/` stage: warm-up, rounds,
baseline, arms), or one stage by its path, e.g. `round_2/process`. Every `*.jsonl` of a chosen
stage is read (one per model that trains).

Formats (docs/export.md shows a line of each and what each loses):

    trl            {"prompt", "completion"}: prompt = the text before the first weighted segment
    trl-messages   {"messages": [{"role", "content"}]}: for TRL's assistant_only_loss
    llamafactory   LLaMA-Factory v1 {"messages": [{"role", "content": [{"type", "value"}], "loss_weight"}]}
    openai         chat fine-tuning {"messages": [{"role", "content", "weight" (assistant only, 0/1)}]}
    hf             a `datasets` directory (save_to_disk): metadata, text, segments, and the token
                   ids and per-token weights of tripost's own encoder (tripost.train.encode_example)

Messages: consecutive segments of one role are one message; the model's own segments (speaker ==
example.model) are "assistant", every other speaker "user". The text is kept exactly as tripost
trains it (plain examples: "Q: ...\\nA: " in the user message). Examples rendered with a chat
template hold the template's special tokens in their text, so only `hf` exports them.
"""

from __future__ import annotations

import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from tripost import io
from tripost.config import TrainConfig, load_config
from tripost.errors import TripostError
from tripost.records import Segment, TrainingExample
from tripost.runner import is_done
from tripost.tools.inspect import load_records, role_weights_of, tokenizer_for

FORMATS = ("trl", "trl-messages", "llamafactory", "openai", "hf")
# What stands in for the weights tripost cannot hand over, per format (for the warning line).
FLATTENED_TO = {
    "trl": "a 0/1 mask (prompt / completion)",
    "trl-messages": "a 0/1 mask (user / assistant)",
    "llamafactory": "one loss_weight per message (the length-weighted mean of its segments)",
    "openai": "a 0/1 weight per assistant message",
}
# Where iterate puts process stages (docs/runs.md): warm-up, the method's rounds, baseline, arms.
STAGE_PATTERNS = ("round_0/warmup_process", "round_*/process", "baseline/round_*/process", "arms/*/round_*/process")


# ----------------------------------------------------------------------------------------------
# Which files


def is_run_dir(path: Path) -> bool:
    return (path / "config.yaml").is_file() and (path / "round_0").is_dir()


def run_dir_of(path: Path) -> Path | None:
    """The run directory `path` is (or lies in), or None."""
    path = Path(path).resolve()
    for candidate in (path, *path.parents):
        if is_run_dir(candidate):
            return candidate
    return None


def process_stages(run: Path) -> list[Path]:
    """Every finished process stage of a run (warm-up, rounds, baseline, arms), in path order."""
    found = [p for pattern in STAGE_PATTERNS for p in run.glob(pattern) if p.is_dir() and is_done(p)]
    return sorted(found, key=lambda p: p.relative_to(run).parts)


def latest_stage(run: Path) -> Path:
    """The newest finished round_<k>/process/ of the method (k >= 1)."""
    rounds = [p for p in process_stages(run) if p.parent.parent == run and p.name == "process"
              and p.parent.name.startswith("round_") and p.parent.name[len("round_"):].isdigit()]
    if not rounds:
        have = ", ".join(str(p.relative_to(run)) for p in process_stages(run)) or "none"
        raise TripostError(f"{run}: no finished round_<k>/process stage yet; finished process stages: {have} "
                           "(pick one with --stage)")
    return max(rounds, key=lambda p: int(p.parent.name[len("round_"):]))


def stage_files(stage: Path) -> list[Path]:
    """The example files of a stage directory: every *.jsonl (`<model>.jsonl`; `examples.jsonl` in
    layout-1 runs, whose baseline trained on `examples_matched.jsonl` instead)."""
    files = sorted(p for p in stage.glob("*.jsonl") if p.is_file())
    if any(p.name == "examples_matched.jsonl" for p in files):
        files = [p for p in files if p.name != "examples.jsonl"]
    if not files:
        raise TripostError(f"{stage}: no training-example files (*.jsonl) in this directory")
    return files


def input_files(source: Path, stage: str | None) -> list[Path]:
    """The example files to export: `source` itself (a file), a stage directory's files, or the
    files of the stages `stage` picks in a run directory (default "latest")."""
    if not source.exists():
        raise TripostError(f"{source}: file not found")
    if source.is_file():
        if stage is not None:
            raise TripostError("--stage picks stages of a run directory; the source is a file")
        return [source]
    if not is_run_dir(source):
        if stage is not None:
            raise TripostError(f"--stage needs a run directory (with config.yaml and round_0/); {source} is not one")
        return stage_files(source)
    if stage in (None, "latest"):
        return stage_files(latest_stage(source))
    if stage == "all":
        stages = process_stages(source)
        if not stages:
            raise TripostError(f"{source}: no finished process stage yet")
        return [f for s in stages for f in stage_files(s)]
    chosen = source / stage
    if not chosen.is_dir() or not is_done(chosen):
        have = ", ".join(str(p.relative_to(source)) for p in process_stages(source)) or "none"
        state = "is not finished" if chosen.is_dir() else "does not exist"
        raise TripostError(f"--stage {stage}: {chosen} {state}; finished process stages: {have} (or 'latest', 'all')")
    return stage_files(chosen)


def examples_of(path: Path, role_weights: dict | None) -> list[TrainingExample]:
    """The training examples of one file (layout-1 files with their run's role weights)."""
    records = load_records(path, role_weights)
    other = [r for r in records if not isinstance(r, TrainingExample)]
    if other:
        raise TripostError(f"{path}: holds {type(other[0]).__name__} records, not training examples; export reads "
                           "the <model>.jsonl files that `tripost process` writes (e.g. round_1/process/learner.jsonl)")
    return records


def run_config(run: Path | None):
    """The config of a run directory, or None."""
    return load_config(run / "config.yaml", older=True) if run is not None else None


def stage_of(path: Path, run: Path | None) -> str:
    """The stage a file belongs to, as a path inside its run (e.g. round_1/process); "" outside one."""
    return str(path.resolve().parent.relative_to(run)) if run is not None else ""


# ----------------------------------------------------------------------------------------------
# Examples as chat messages


@dataclass
class Turn:
    role: str  # "user" | "assistant"
    segments: list[Segment]
    indices: list[int]  # where its segments are in example.segments

    @property
    def text(self) -> str:
        return "".join(s.text for s in self.segments)

    def mean_weight(self) -> float:
        """The weight of the turn's characters on average (its segments' weights by length)."""
        return sum(s.weight * len(s.text) for s in self.segments) / len(self.text)


def turns(example: TrainingExample) -> list[Turn]:
    """Consecutive segments of one role, in order; the model's own segments are "assistant",
    everyone else's "user". Empty segments are left out."""
    out: list[Turn] = []
    for i, seg in enumerate(example.segments):
        if not seg.text:
            continue
        role = "assistant" if seg.speaker == example.model else "user"
        if out and out[-1].role == role:
            out[-1].segments.append(seg)
            out[-1].indices.append(i)
        else:
            out.append(Turn(role, [seg], [i]))
    return out


def as_trl(example: TrainingExample) -> tuple[dict, list[float]]:
    """{"prompt", "completion"} and the weight each segment gets there (0 in the prompt, 1 after)."""
    segs = example.segments
    first = next((i for i, s in enumerate(segs) if s.weight > 0), len(segs))
    record = {"prompt": "".join(s.text for s in segs[:first]), "completion": "".join(s.text for s in segs[first:])}
    return record, [0.0] * first + [1.0] * (len(segs) - first)


def _exported(example: TrainingExample, weight_of) -> list[float]:
    """The weight each segment gets when each turn is trained with weight_of(turn)."""
    out = [s.weight for s in example.segments]  # empty segments: unchanged (they have no tokens)
    for turn in turns(example):
        for i in turn.indices:
            out[i] = weight_of(turn)
    return out


def as_trl_messages(example: TrainingExample) -> tuple[dict, list[float]]:
    record = {"messages": [{"role": t.role, "content": t.text} for t in turns(example)]}
    return record, _exported(example, lambda t: 1.0 if t.role == "assistant" else 0.0)


def llamafactory_weight(turn: Turn) -> float:
    return round(turn.mean_weight(), 4) if turn.role == "assistant" else 0.0


def as_llamafactory(example: TrainingExample) -> tuple[dict, list[float]]:
    record = {"messages": [{"role": t.role, "content": [{"type": "text", "value": t.text}],
                            "loss_weight": llamafactory_weight(t)} for t in turns(example)]}
    return record, _exported(example, llamafactory_weight)


def openai_weight(turn: Turn) -> int:
    return int(turn.role == "assistant" and any(s.weight > 0 for s in turn.segments))


def as_openai(example: TrainingExample) -> tuple[dict, list[float]]:
    messages = []
    for t in turns(example):
        message = {"role": t.role, "content": t.text}
        if t.role == "assistant":
            message["weight"] = openai_weight(t)
        messages.append(message)
    return {"messages": messages}, _exported(example, lambda t: float(openai_weight(t)))


CONVERTERS = {"trl": as_trl, "trl-messages": as_trl_messages, "llamafactory": as_llamafactory, "openai": as_openai}


@dataclass
class Losses:
    """What a message format could not keep, counted by example."""

    examples: int = 0
    reweighted: int = 0  # a trained segment got another weight (e.g. 1.5 -> 1)
    remasked: int = 0  # a segment went from trained to context or back
    weights: tuple = ()  # the original weights other than 0 and 1

    def add(self, example: TrainingExample, exported: list[float]) -> None:
        self.examples += 1
        pairs = list(zip((s.weight for s in example.segments), exported))
        self.reweighted += any(a > 0 and b > 0 and a != b for a, b in pairs)
        self.remasked += any((a > 0) != (b > 0) for a, b in pairs)
        self.weights = tuple(sorted(set(self.weights) | {s.weight for s in example.segments if s.weight not in (0, 1)}))

    def warning(self, fmt: str) -> str | None:
        if not self.reweighted and not self.remasked:
            return None
        parts = []
        if self.reweighted:
            shown = ", ".join(f"{w:g}" for w in self.weights)
            parts.append(f"in {self.reweighted} of {self.examples} examples weights other than 0 and 1 "
                         f"({shown}) became {FLATTENED_TO[fmt]}")
        if self.remasked:
            parts.append(f"in {self.remasked} of {self.examples} examples text changed between trained and context")
        return (f"warning: --format {fmt} cannot hold tripost's per-token weights: " + "; ".join(parts)
                + " (--format hf keeps them exactly)")


def message_records(examples: list[TrainingExample], fmt: str) -> tuple[list[dict], Losses]:
    """The examples as records of a message format, and what that lost."""
    if fmt not in CONVERTERS:
        raise TripostError(f"unknown format {fmt!r}; formats: {', '.join(FORMATS)}")
    templated = [e for e in examples if e.chat_template]
    if templated:
        raise TripostError(f"{len(templated)} of {len(examples)} examples were rendered with the tokenizer's chat "
                           f"template (chat_template: true), e.g. {templated[0].id}: their text already holds the "
                           f"template's special tokens and turn markers, which {fmt} would wrap in a chat template "
                           "again. Export them with --format hf (token ids and weights as tripost trains them), or "
                           "build the examples with chat_template: false")
    losses = Losses()
    out = []
    for e in examples:
        record, exported = CONVERTERS[fmt](e)
        losses.add(e, exported)
        out.append(record)
    return out, losses


# ----------------------------------------------------------------------------------------------
# The hf format


def hf_features():
    import datasets

    return datasets.Features({
        "id": datasets.Value("string"), "method": datasets.Value("string"), "model": datasets.Value("string"),
        "kind": datasets.Value("string"), "source_id": datasets.Value("string"), "task": datasets.Value("string"),
        "subtask": datasets.Value("string"), "stage": datasets.Value("string"),
        "chat_template": datasets.Value("bool"), "text": datasets.Value("string"),
        # [{...}] and Sequence: lists of structs and of values in every datasets version (List is 4.0+)
        "segments": [{"text": datasets.Value("string"), "weight": datasets.Value("float64"),
                      "speaker": datasets.Value("string")}],
        "input_ids": datasets.Sequence(datasets.Value("int64")),
        "weights": datasets.Sequence(datasets.Value("float64")),
    })


def hf_rows(examples: list[tuple[str, TrainingExample]], tokenizer, max_length: int | None) -> tuple[list[dict], int]:
    """One row per (stage, example), with the trainer's own token ids and weights; and how many
    examples max_length cut."""
    from tripost.train import encode_example

    rows, cut = [], 0
    for stage, e in examples:
        ids, weights = encode_example(e, tokenizer, max_length)
        cut += max_length is not None and len(encode_example(e, tokenizer)[0]) > max_length
        rows.append({"id": e.id, "method": e.method, "model": e.model, "kind": e.kind, "source_id": e.source_id,
                     "task": e.task, "subtask": e.subtask, "stage": stage, "chat_template": e.chat_template,
                     "text": e.text, "segments": [{"text": s.text, "weight": s.weight, "speaker": s.speaker}
                                                  for s in e.segments],
                     "input_ids": ids, "weights": weights})
    return rows, cut


def write_hf(rows: list[dict], out: Path) -> None:
    import datasets

    if out.is_file() or (out.is_dir() and any(out.iterdir()) and not (out / "state.json").is_file()):
        raise TripostError(f"--out {out}: exists and is not a saved dataset; choose a new directory")
    features = hf_features()
    columns = {name: [row[name] for row in rows] for name in features}
    # An empty dataset needs its one (empty) shard written, or load_from_disk cannot read it back.
    datasets.Dataset.from_dict(columns, features=features).save_to_disk(str(out), num_shards=None if rows else 1)


# ----------------------------------------------------------------------------------------------
# The command


def main(args, cfg=None) -> int:
    fmt = args.format
    if fmt not in FORMATS:
        raise TripostError(f"--format {fmt!r}: unknown format; formats: {', '.join(FORMATS)}")
    source = Path(args.source)
    files = input_files(source, args.stage)
    out = Path(args.out)
    if out.resolve() in {f.resolve() for f in files}:
        raise TripostError(f"--out {out}: that is an input file")
    run = run_dir_of(files[0])
    run_cfg = run_config(run)
    role_weights = role_weights_of(run_cfg)
    examples: list[tuple[str, TrainingExample]] = []
    counts: dict[Path, Counter] = {}
    for f in files:
        mine = examples_of(f, role_weights)
        counts[f] = Counter(e.model for e in mine)
        examples += [(stage_of(f, run), e) for e in mine]

    if fmt == "hf":
        tokenizer, where_from = tokenizer_for(files[0], args.tokenizer)
        max_length = args.max_length or (run_cfg.train.max_length if run_cfg is not None else TrainConfig().max_length)
        rows, cut = hf_rows(examples, tokenizer, max_length)
        write_hf(rows, out)
        print(f"token ids and weights: tripost.train.encode_example, tokenizer {where_from}, max_length {max_length}"
              + (f" ({cut} examples cut to it, as training cuts them)" if cut else ""))
    else:
        if out.is_dir():
            raise TripostError(f"--out {out}: is a directory; --format {fmt} writes one JSONL file")
        records, losses = message_records([e for _, e in examples], fmt)
        io.write_jsonl(out, records)
        warning = losses.warning(fmt)
        if warning:
            print(warning, file=sys.stderr)

    base = run if run is not None else Path.cwd()
    for f, c in counts.items():
        shown = str(f.resolve().relative_to(base)) if f.resolve().is_relative_to(base) else str(f)
        print(f"  {shown}: " + (", ".join(f"{m} {n}" for m, n in sorted(c.items())) or "no examples"))
    total = sum(counts.values(), Counter())
    by_model = ", ".join(f"{m} {n}" for m, n in sorted(total.items())) or "none"
    print(f"wrote {len(examples)} examples ({by_model}) to {out} (--format {fmt})")
    return 0
