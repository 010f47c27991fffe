"""Typed configuration: dataclasses, loaded from YAML, overridden from the command line.

One `Config` holds a section per pipeline stage. Every command reads the sections it needs:

    tripost collect --config configs/demo.yaml collect.batch_size=64 task.name=word_sorting

Rules (as in torchtune):
  * YAML keys and `key.sub=value` overrides must name a real field; a typo is an error that names
    the key and suggests the closest field.
  * Values are parsed as YAML scalars (`3`, `1e-4`, `true`, `null`, `[1, 2]`) and type-checked
    against the field's annotation.
  * `validate(cfg)` checks cross-field rules; the resolved config is written beside every output
    (`save_config`) so a run directory always says how it was made.
"""

from __future__ import annotations

import dataclasses
import math
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tripost.errors import TripostError

# The repository root: built-in prompts/, feedback_scripts/ and configs/ live here.
PROJECT_ROOT = Path(__file__).resolve().parent.parent


# ----------------------------------------------------------------------------------------------
# Sections


@dataclass
class TaskConfig:
    """Which task, where its data lives, how it is split and judged (docs/tasks.md)."""

    # A built-in task, or the path of your own task file (my_task.py: plain functions, run in an
    # isolated worker like feedback scripts).
    name: str = "multistep_arithmetic"
    # Directory with the BIG-bench task JSON files (word_sorting.json, ...). Not needed for
    # multistep_arithmetic (generated) or jsonl (uses `path`).
    data_dir: str | None = None
    # jsonl task: one file split into train and test (test_fraction), or separate train/test files.
    path: str | None = None
    train_path: str | None = None
    test_path: str | None = None
    question_field: str = "question"
    answer_field: str = "answer"
    subtask_field: str | None = None
    # A field saying whether a question is from the training distribution (true / "seen") or a
    # harder held-out one (false / "unseen": test only), so generalisation is measured on own data.
    seen_field: str | None = None
    # A field with a worked solution to train on (the warm-up, the baseline, gold examples): steps
    # "(1) ..." as tripost writes them, or lines of text (each becomes a numbered step), e.g. the
    # GSM8K `answer` with its solution before "#### 72" (give answer_field as rationale_field).
    rationale_field: str | None = None
    # How an answer is compared with the gold one: exact (text), numeric (as exact numbers:
    # "1,000" == "1000.0"), set or list (items split by judge_separator, null = whitespace or commas).
    # Text is compared ignoring case (unless judge_case_sensitive), runs of whitespace and a final period.
    judge: str = "exact"
    judge_separator: str | None = None
    judge_case_sensitive: bool = False
    # Deterministic train/test split (see docs/tasks.md): test_fraction of each subtask's seen
    # questions are test (unseen ones always are); ignored with separate train/test files.
    seed: int = 0
    test_fraction: float = 0.2
    # Caps on split sizes (null = everything); generated tasks use them as their sizes.
    max_train: int | None = None
    max_test: int | None = None
    # Your own settings for a task file (passed to its examples(task_config) as task_config["options"]).
    options: dict = field(default_factory=dict)


@dataclass
class InitModelConfig:
    """The tiny Llama model `tripost init-model` builds locally."""

    vocab_size: int = 512
    hidden_size: int = 128
    intermediate_size: int = 344
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    num_key_value_heads: int = 4
    max_position_embeddings: int = 1024
    # false: the output layer has weights of its own instead of the input embeddings' (the same
    # compute, more parameters); with number tokens it learns arithmetic sooner (docs/warmup.md).
    tie_word_embeddings: bool = True
    seed: int = 0
    # "numbers": every integer from -max_number to max_number is one token (larger ones are spelled
    # digit by digit) and the text between numbers is cut into phrases; "numbers_words": the same
    # number tokens, text cut into words; "digits": numbers spelled one digit per token, text cut
    # into words. vocab_size is the byte-level BPE part; number tokens come on top of it.
    # See tripost/model_init.py and docs/warmup.md.
    tokenizer: str = "digits"
    max_number: int = 299


@dataclass
class GenerationConfig:
    """How the small model generates, in `collect` and `evaluate`."""

    batch_size: int = 32
    max_new_tokens: int = 256
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int = 0
    # Torch CPU threads while generating; null = 1 for a small model (under 100M parameters: its
    # matrices are too small to split) and half the cores otherwise, so a shared machine is not
    # oversubscribed. Printed in the run's log.
    threads: int | None = None
    # Generation engine: hf (Hugging Face, with tripost's CPU decode loop for small Llama models) or
    # vllm (offline vLLM; an optional install, see docs/real_models.md).
    backend: str = "hf"
    # Processes generating at once, each on a shard of the questions (one per GPU; on a CPU,
    # processes sharing its cores). The merged output is the same as one process's.
    data_parallel: int = 1
    # How they run: "processes" on this machine, or "ray" tasks on the cluster RAY_ADDRESS names
    # (a local one when unset; several nodes need the run directory on a shared filesystem).
    parallel: str = "processes"


@dataclass
class LoraConfig:
    """LoRA adapters (PEFT) instead of full fine-tuning; r = 0 trains every weight."""

    r: int = 0
    alpha: float = 16.0
    dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])


@dataclass
class ApiConfig:
    """An Anthropic Messages-API (or compatible) backend for LLM feedback and improvement."""

    model: str = "claude-sonnet-4-6"
    base_url: str | None = None
    # Name of the environment variable holding the key; the key itself never enters a config.
    api_key_env: str = "ANTHROPIC_API_KEY"
    max_tokens: int = 1024
    # null = do not send the parameter (some models reject it).
    temperature: float | None = None
    concurrency: int = 8
    max_retries: int = 8
    # Exponential backoff between retries: base * 2**attempt seconds (jittered), at most max;
    # a server's retry-after header is honoured as a lower bound.
    retry_base_s: float = 1.0
    retry_max_s: float = 60.0
    timeout_s: float = 120.0
    # On-disk response cache; null = <output dir>/api_cache.
    cache_dir: str | None = None
    # Use the Message Batches API (half price, asynchronous).
    batch: bool = False
    batch_poll_s: float = 30.0
    # USD per million tokens, for the cost estimate printed at the end of a run.
    price_input_per_mtok: float = 3.0
    price_output_per_mtok: float = 15.0


@dataclass
class EditConfig:
    """Expert feedback and improvement: `script:PATH.py` or `llm` (uses `api`)."""

    feedback: str = "script:feedback_scripts/multistep_arithmetic.py"
    improvement: str = "script:feedback_scripts/multistep_arithmetic.py"
    # Jinja templates for `llm`; null = prompts/<task>/.
    prompts_dir: str | None = None
    script_timeout_s: float = 10.0
    script_memory_mb: int = 1024
    script_workers: int = 2
    # Trajectories edited together (one batch of expert requests per round; results appended per batch).
    batch_size: int = 256
    api: ApiConfig = field(default_factory=ApiConfig)


@dataclass
class ProcessConfig:
    """Trajectories -> training examples (the method builds them; see tripost/process.py)."""

    # Examples longer than this many tokens (text + EOS) are dropped.
    max_tokens: int = 1024
    seed: int = 0


@dataclass
class TrainConfig:
    """Weighted SFT run by DeepSpeed."""

    deepspeed_config: str = "configs/deepspeed/zero0.json"
    epochs: float = 1.0
    max_steps: int | None = None
    learning_rate: float = 1e-4
    weight_decay: float = 0.0
    warmup_ratio: float = 0.05
    lr_schedule: str = "cosine"  # cosine | linear | constant
    micro_batch_size: int = 8
    gradient_accumulation_steps: int = 1
    max_grad_norm: float = 1.0
    max_length: int = 1024
    # Loss normaliser: "mask" = sum of trained-token mask (paper), "weight" = sum of weights.
    normalizer: str = "mask"
    # false (default, chosen by bench/train.py, see docs/training.md): one example per row,
    # length-bucketed micro-batches. true: whole examples packed into rows of pack_length tokens
    # (null = max_length); a micro-batch is then micro_batch_size rows of several examples each.
    packing: bool = False
    pack_length: int | None = None
    bf16: str = "auto"  # auto | true | false
    save_every_steps: int | None = None
    # Complete step checkpoints kept in <out>/checkpoints (older ones are deleted).
    keep_checkpoints: int = 2
    # Processes that train() starts (torchrun, one per GPU); 1 = a single process.
    nproc: int = 1
    # How `iterate` runs a train stage: auto (in this process for nproc 1, else torchrun),
    # inprocess, subprocess (a `tripost train` child), torchrun (nproc processes on this node),
    # deepspeed (the DeepSpeed launcher: nodes and GPUs from `hostfile`, started over ssh/pdsh), or
    # command (`launch_command` + "-m tripost train ...": srun, mpirun, a multi-node torchrun).
    launcher: str = "auto"
    hostfile: str | None = None
    launch_command: str | None = None
    # Torch CPU threads per training process; null = half the cores (a shared machine is not
    # oversubscribed). Printed when training starts.
    threads: int | None = None
    # Vocabulary logits are computed only for trained tokens, at most this many at a time (several
    # chunks are recomputed in the backward pass), so peak memory grows with the chunk, not with
    # the micro-batch: 4096 x SmolLM2's 49k vocabulary = 0.8 GB of float32 logits. null = the
    # model's own forward, full logits at every position.
    loss_chunk: int | None = 4096
    lora: LoraConfig = field(default_factory=LoraConfig)
    log_every_steps: int = 10
    seed: int = 0


@dataclass
class TripostConfig:
    """TriPosT's own settings (tripost/methods/tripost.py)."""

    # Share of improvement examples after rebalancing (paper: 1.5 : 1 : 1 -> 0.43).
    p: float = 0.43
    # Loss weight on feedback and improvement tokens (first-attempt tokens get 1).
    w: float = 1.5
    # Loss weight on the attempt of an improvement example, the answer the feedback finds wrong
    # (1, the paper: the model also trains on its own wrong steps; 0: only on feedback and update).
    attempt_weight: float = 1.0
    # Improvement-expert calls per trajectory in the edit stage.
    max_improvements: int = 5
    # Add each train question's gold rationale, with "correct" feedback, to every round's data.
    include_gold: bool = True
    # Model calls per question: while collecting (a model trained on TriPosT data critiques and
    # updates its own answers) and at test time (self-improvement).
    collect_max_calls: int = 3
    evaluate_max_calls: int = 3
    # Who judges the model's own critiques at test time (critique accuracy: does its feedback on its
    # first answer agree with this expert's?): "edit.feedback" (the edit section's feedback expert),
    # another expert spec, or null (not measured).
    judge: str | None = "edit.feedback"


@dataclass
class MultiagentConfig:
    """Multi-agent finetuning's own settings (tripost/methods/multiagent.py; Subramaniam et al. 2025)."""

    # N: generator agents gen0..gen{N-1} and, with debate_rounds >= 2, as many critics critic0..
    agents: int = 3
    # Answers per question by each generator at debate round 0 (> 1 only with debate_rounds 1: one
    # agent sampling several answers and voting, the single-agent majority-vote baseline).
    samples: int = 1
    # Debate rounds, counting round 0 (the generators alone): 2 = answers at rounds 0 and 1.
    debate_rounds: int = 2
    # Other agents' previous-round answers a critic sees (shuffled; the paper's code: at most 5).
    max_others: int = 5
    # The critic first summarises the other agents' answers and sees its summary instead of them.
    summarize: bool = False
    # A plurality tie: "no_label" (the question gives no data; counted) or "largest_string" (the
    # lexicographically largest tied answer wins, as the official code does; for reproduction).
    tie_break: str = "no_label"
    # D+ critic examples (kept an answer that already agreed) per D- example (changed its answer to
    # reach the consensus), sampled with the process seed, never more than exist; null = all D+.
    dplus_ratio: float | None = 0.5
    # Loss weights of a critic's debate: its revised answers (rounds >= 1) and its round-0 answer
    # when they agree with the consensus; any of its answers that does not (the round-0 answer it
    # revised); the other agents' text.
    w_revised: float = 1.0
    w_first: float = 1.0
    w_wrong: float = 0.0
    w_others: float = 0.0
    # Ablation (uses labels, unlike the paper's method): keep the answers that match the gold answer
    # instead of those that match the consensus.
    gold_filter: bool = False


@dataclass
class SaieConfig:
    """SAIE's own settings (tripost/methods/saie.py; docs/methods.md, "SAIE")."""

    # The fixed partner who remarks on the learner's answers: "script:PATH.py" (a feedback script
    # with a `remark(example, attempt, stance)` function), "llm" (the Messages API with the `edit`
    # section's settings and prompts/<task>/remark_*.j2) or "model:DIR" (a local model, not trained).
    partner: str = "script:feedback_scripts/multistep_arithmetic.py"
    # Discussion rounds R after the learner's first answer: a remark, then the learner answers
    # again (paper: 3); and at test time (null = the same R).
    discussion_rounds: int = 3
    test_rounds: int | None = None
    # Training remarks: "both" (supportive on a wrong answer, adversarial on a right one: the
    # paper), "supportive" (always supportive) or "adversarial" (always adversarial).
    stances: str = "both"
    # The learner's training targets: "own_or_gold" (every round: its own answer when right, else
    # the gold rationale), "gold" (every round: the gold rationale) or "final_round" (the last
    # round only, own_or_gold).
    target: str = "own_or_gold"
    # Loss weights of the targets: the first answer (round 0) and the answers after a remark.
    w_first: float = 1.0
    w_discussion: float = 1.0
    # Test-time discussions beside the single-pass answer: "partner" (with the partner; the stance
    # from the oracle for scripted and local-model partners, the LLM's own judgement for "llm") and
    # "self" (the learner is asked to check its answer and answer again).
    test_modes: list[str] = field(default_factory=lambda: ["partner", "self"])


@dataclass
class IterateConfig:
    """The loop: rounds of collect, edit, process, train, evaluate (tripost/iterate.py)."""

    rounds: int = 3
    # Warm up the initial model on gold rationales ("ft rationale") before round 1.
    warmup: bool = True
    warmup_epochs: float = 3.0
    # train.* settings that differ for the warm-up, e.g. {micro_batch_size: 16, learning_rate: 0.005}:
    # the warm-up trains on thousands of questions, a round on a few hundred.
    warmup_train: dict = field(default_factory=dict)
    # Train questions the warm-up sees (generated tasks can make more than the rounds' pool,
    # task.max_train); the run's test questions are always left out. null = the rounds' pool.
    warmup_questions: int | None = None
    # Build the base model (init_model + warm-up) once in this directory, keyed by everything that
    # makes it (task, tokenizer and model settings, warm-up data and training settings, code), and
    # reuse it in every run and arm that asks for the same; null = build it inside the run.
    base_cache: str | None = None
    # Repeat the whole run with these seeds (model init, data order, sampling; the questions stay
    # the same) under runs/<name>/seed_<s>/ and report mean and spread; [] = one run.
    seeds: list[int] = field(default_factory=list)
    # Each round continues from the previous round's model (paper) or restarts from the base.
    continue_from_previous: bool = True
    # Train on this round's new data only (paper) or on all rounds so far.
    cumulative_data: bool = False
    # Train the equal-compute rationale-SFT baseline alongside.
    baseline: bool = True
    # More arms beside the method: variants of it (an ablation, a method's own baseline), each a
    # name and overrides of the method's config section, e.g. {supportive_only: {stances: supportive}}.
    # Each trains its own models from the same base, on as many tokens per round as the method.
    arms: dict = field(default_factory=dict)
    # Collect (and so train) on the test split's questions instead of the train split's: reproduces
    # protocols that train and evaluate on the same questions (the official multi-agent finetuning
    # code). Not a held-out evaluation; the results say so.
    train_on_test: bool = False


@dataclass
class Config:
    """Everything a run needs. Each command uses the sections it needs."""

    name: str = "demo"
    runs_dir: str = "runs"
    # The self-improvement method (tripost/methods/): tripost | multiagent | saie (its settings: the
    # section of its name).
    method: str = "tripost"
    # A Hugging Face model directory; null = build a tiny model (`init_model`) for the demo.
    model: str | None = None
    # Render prompts and training examples with the tokenizer's chat template (instruct models).
    chat_template: bool = False
    task: TaskConfig = field(default_factory=TaskConfig)
    init_model: InitModelConfig = field(default_factory=InitModelConfig)
    collect: GenerationConfig = field(default_factory=GenerationConfig)
    edit: EditConfig = field(default_factory=EditConfig)
    process: ProcessConfig = field(default_factory=ProcessConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    evaluate: GenerationConfig = field(default_factory=GenerationConfig)
    iterate: IterateConfig = field(default_factory=IterateConfig)
    tripost: TripostConfig = field(default_factory=TripostConfig)
    multiagent: MultiagentConfig = field(default_factory=MultiagentConfig)
    saie: SaieConfig = field(default_factory=SaieConfig)


# ----------------------------------------------------------------------------------------------
# Loading


def _field_names(cls) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


# Keys that moved (tripost 0.2: a method's settings live in the method's own section). Used for
# the error a config with an old key gets, and to read the manifests of older run directories.
MOVED = {
    "process.p": "tripost.p",
    "process.include_gold": "tripost.include_gold",
    "train.w": "tripost.w",
    "edit.max_improvements": "tripost.max_improvements",
    "collect.max_generate_calls": "tripost.collect_max_calls",
    "evaluate.max_generate_calls": "tripost.evaluate_max_calls",
    "train.chat_template": "chat_template",
    "train.mask_question": None,  # removed: the question is context, never a training target
}


def _unknown_key(key: str, cls, source: str) -> TripostError:
    if key in MOVED:
        new = MOVED[key]
        if new is None:
            return TripostError(f"{source}: config key '{key}' was removed (the question is never trained on)")
        return TripostError(f"{source}: config key '{key}' is now '{new}' (a method's settings live in its "
                            "own section); rename it")
    names = _field_names(cls)
    short = key.rsplit(".", 1)[-1]
    close = difflib.get_close_matches(short, names, n=1)
    hint = f" Did you mean '{key[: -len(short)]}{close[0]}'?" if close else ""
    return TripostError(f"{source}: unknown config key '{key}'.{hint} Valid keys here: {', '.join(names)}")


def _coerce(value: Any, annotation: Any, key: str, source: str) -> Any:
    """Check `value` against a field annotation (str, int, float, bool, X | None, list[X])."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(annotation)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key, source)
            except TripostError as e:
                errors.append(e)
        raise errors[0]
    if annotation is dict or origin is dict:
        if not isinstance(value, dict):
            raise TripostError(f"{source}: config key '{key}' must be a mapping, got {value!r}")
        return value
    if origin is list:
        (item,) = typing.get_args(annotation)
        if not isinstance(value, list):
            raise TripostError(f"{source}: config key '{key}' must be a list, got {value!r}")
        return [_coerce(v, item, key, source) for v in value]
    if dataclasses.is_dataclass(annotation):
        if not isinstance(value, dict):
            raise TripostError(f"{source}: config key '{key}' must be a mapping, got {value!r}")
        return _build(annotation, value, source, prefix=key + ".")
    if annotation is bool:
        if isinstance(value, bool):
            return value
    elif annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "3e-3" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif annotation is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
    elif annotation is Any:
        return value
    name = getattr(annotation, "__name__", str(annotation))
    raise TripostError(f"{source}: config key '{key}' must be {name}, got {value!r}")


def _build(cls, data: dict, source: str, prefix: str = ""):
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in data.items():
        if key not in hints:
            raise _unknown_key(prefix + key, cls, source)
        kwargs[key] = _coerce(value, hints[key], prefix + key, source)
    return cls(**kwargs)


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def _set_path(data: dict, dotted: str, value: Any, cls, source: str) -> None:
    parts = dotted.split(".")
    node, node_cls = data, cls
    for i, part in enumerate(parts):
        hints = typing.get_type_hints(node_cls)
        if part not in hints:
            raise _unknown_key(".".join(parts[: i + 1]), node_cls, source)
        if i == len(parts) - 1:
            node[part] = value
        elif hints[part] is dict:  # a free mapping (task.options, iterate.arms): the rest of the key is inside it
            sub = node.setdefault(part, {})
            for inner in parts[i + 1:-1]:
                sub = sub.setdefault(inner, {})
            sub[parts[-1]] = value
            return
        else:
            node_cls = hints[part]
            if not dataclasses.is_dataclass(node_cls):
                raise TripostError(f"{source}: config key '{'.'.join(parts[: i + 1])}' has no sub-keys")
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise TripostError(f"{source}: config key '{'.'.join(parts[: i + 1])}' must be a mapping")


def parse_override(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise TripostError(f"command line: override '{text}' must look like key.sub=value")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


class _UniqueKeyLoader(yaml.SafeLoader):
    """A YAML loader that refuses a key given twice in one mapping (PyYAML keeps the last)."""

    def construct_mapping(self, node, deep=False):
        lines: dict = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in lines:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key '{key}' is given twice (lines {lines[key]} and {key_node.start_mark.line + 1})",
                    key_node.start_mark)
            lines[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


def read_yaml(path: Path) -> dict:
    """A YAML mapping from a file, or one TripostError naming the file and line."""
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise TripostError(f"{path}: not UTF-8 text (byte {e.start + 1})") from None
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader) or {}
    except yaml.YAMLError as e:
        mark = e.problem_mark if isinstance(e, yaml.MarkedYAMLError) else None
        line = f":{mark.line + 1}" if mark is not None else ""
        problem = e.problem if isinstance(e, yaml.MarkedYAMLError) else str(e)
        raise TripostError(f"{path}{line}: invalid YAML: {problem}") from None
    if not isinstance(data, dict):
        raise TripostError(f"{path}: a config file must be a mapping of sections")
    return data


def upgrade(data: dict) -> dict:
    """A config written by an older tripost (a run directory's own config.yaml) with its moved keys
    renamed (config.MOVED) and removed ones dropped."""
    data = {k: dict(v) if isinstance(v, dict) else v for k, v in data.items()}
    for old, new in MOVED.items():
        section, key = old.split(".")
        if key not in (data.get(section) or {}):
            continue
        value = data[section].pop(key)
        if new is not None:
            head, _, tail = new.rpartition(".")
            (data.setdefault(head, {}) if head else data)[tail] = value
    return data


def load_config(path: str | Path | None = None, overrides=(), cls=Config, older: bool = False):
    """Defaults <- YAML file <- overrides (`"key=value"` strings, or `(key, value)` pairs taken as
    they are), type-checked, then validated. Relative paths in the file are relative to the file's
    directory (falling back to the working directory, then to tripost's built-in files); on the
    command line, to the working directory. The result holds absolute paths. `older`: the file is a
    run directory's own config.yaml, possibly written by an older tripost (moved keys are renamed
    rather than refused)."""
    data: dict = {}
    source = "config"
    if path is not None:
        path = Path(path)
        source = str(path)
        if not path.is_file():
            raise TripostError(f"{path}: config file not found")
        data = read_yaml(path)
        if older:
            data = upgrade(data)
        _absolute_paths(data, path.resolve().parent)
    for item in overrides:
        key, value = item if isinstance(item, tuple) else parse_override(item)
        _set_path(data, key, value, cls, "command line")
    _absolute_paths(data, Path.cwd())
    cfg = _build(cls, data, source)
    if cls is Config:
        validate(cfg)
    return cfg


# Config keys that hold paths (or "script:PATH" / "model:PATH" specs), resolved by `load_config`.
PATH_KEYS = ("model", "task.name", "task.data_dir", "task.path", "task.train_path", "task.test_path",
             "edit.feedback", "edit.improvement", "edit.prompts_dir", "train.deepspeed_config", "train.hostfile",
             "iterate.base_cache", "tripost.judge")


def _absolute_paths(data: dict, base: Path) -> None:
    """Make the relative paths of PATH_KEYS in `data` absolute: `base` / path when it exists there,
    else the working directory's or the built-in file (resolve_path), else `base` / path (so an
    error names where it was looked for). Names that are not paths (task "jsonl", expert "llm")
    are left alone."""
    for dotted in PATH_KEYS:
        node = data
        *heads, key = dotted.split(".")
        for head in heads:
            node = node.get(head) if isinstance(node, dict) else None
        if not isinstance(node, dict) or not isinstance(node.get(key), str):
            continue
        value = node[key]
        prefix = next((p for p in ("script:", "model:") if value.startswith(p)), "")
        raw = value[len(prefix):].strip()
        if dotted == "task.name" and not raw.endswith(".py"):
            continue
        if (not prefix and dotted in ("edit.feedback", "edit.improvement", "tripost.judge")) or not raw:
            continue
        p = Path(raw).expanduser()
        if p.is_absolute():
            node[key] = prefix + str(p)
            continue
        here = base / p
        node[key] = prefix + str(here if here.exists() else (resolve_path(p).resolve() if resolve_path(p).exists() else here))


def check_api_config(api_cfg: ApiConfig) -> None:
    """Raise one TripostError naming the key (`edit.api.<key>`) for a value out of range.

    Called by `validate` and by ApiClient (where the values are used)."""

    def need(ok: bool, key: str, why: str) -> None:
        if not ok:
            raise TripostError(f"config: 'edit.api.{key}' {why}, got {getattr(api_cfg, key)!r}")

    def finite(x: float) -> bool:
        return not (math.isnan(x) or math.isinf(x))

    need(bool(api_cfg.model.strip()), "model", "must name a model")
    need(bool(api_cfg.api_key_env.strip()), "api_key_env", "must name an environment variable")
    need(api_cfg.base_url is None or api_cfg.base_url.startswith(("http://", "https://")), "base_url",
         "must be null or an http:// or https:// URL")
    need(api_cfg.max_tokens >= 1, "max_tokens", "must be >= 1")
    need(api_cfg.temperature is None or (finite(api_cfg.temperature) and api_cfg.temperature >= 0),
         "temperature", "must be null or >= 0")
    need(api_cfg.concurrency >= 1, "concurrency", "must be >= 1")
    need(api_cfg.max_retries >= 0, "max_retries", "must be >= 0")
    need(finite(api_cfg.retry_base_s) and api_cfg.retry_base_s >= 0, "retry_base_s", "must be >= 0 seconds")
    need(finite(api_cfg.retry_max_s) and api_cfg.retry_max_s >= 0, "retry_max_s", "must be >= 0 seconds")
    need(finite(api_cfg.timeout_s) and api_cfg.timeout_s > 0, "timeout_s", "must be > 0 seconds")
    need(finite(api_cfg.batch_poll_s) and api_cfg.batch_poll_s > 0, "batch_poll_s", "must be > 0 seconds")
    for key in ("price_input_per_mtok", "price_output_per_mtok"):
        need(finite(getattr(api_cfg, key)) and getattr(api_cfg, key) >= 0, key, "must be >= 0")


METHOD_NAMES = ("tripost", "multiagent", "saie")


def stage_view(section, reads: tuple[str, ...]):
    """A method section as one stage sees it: the keys it reads (the method's READS) as configured,
    the rest at their defaults, so a stage is given, and fingerprinted on, only what it reads."""
    return dataclasses.replace(type(section)(), **{key: getattr(section, key) for key in reads})


def method_config(cfg: Config):
    """The config section of the method `cfg.method` names (its section has the method's name)."""
    if cfg.method == "tripost":
        return cfg.tripost
    if cfg.method == "multiagent":
        return cfg.multiagent
    if cfg.method == "saie":
        return cfg.saie
    raise TripostError(f"config: unknown method {cfg.method!r} (choose from {', '.join(METHOD_NAMES)})")


SAIE_STANCES = ("both", "supportive", "adversarial")
SAIE_TARGETS = ("own_or_gold", "gold", "final_round")
SAIE_TEST_MODES = ("partner", "self")


def check_saie(sc: SaieConfig, key: str) -> None:
    """Raise one TripostError naming the key (`saie.<field>`, or an arm's) for a bad SAIE value."""

    def need(ok: bool, field_name: str, why: str) -> None:
        if not ok:
            raise TripostError(f"config: '{key}.{field_name}' {why}, got {getattr(sc, field_name)!r}")

    need(sc.partner == "llm" or sc.partner.startswith(("script:", "model:")), "partner",
         "must be 'llm', 'script:PATH.py' or 'model:DIR'")
    need(sc.discussion_rounds >= 1, "discussion_rounds", "must be >= 1")
    need(sc.test_rounds is None or sc.test_rounds >= 1, "test_rounds", "must be >= 1 (or null)")
    need(sc.stances in SAIE_STANCES, "stances", f"must be one of {', '.join(SAIE_STANCES)}")
    need(sc.target in SAIE_TARGETS, "target", f"must be one of {', '.join(SAIE_TARGETS)}")
    need(sc.w_first > 0, "w_first", "must be > 0")
    need(sc.w_discussion > 0, "w_discussion", "must be > 0")
    need(all(m in SAIE_TEST_MODES for m in sc.test_modes) and len(set(sc.test_modes)) == len(sc.test_modes),
         "test_modes", f"must list distinct modes out of {', '.join(SAIE_TEST_MODES)}")


def validate(cfg: Config) -> None:
    """Value ranges and cross-field checks; raises TripostError naming the key."""

    def need(ok: bool, key: str, why: str):
        if not ok:
            raise TripostError(f"config: '{key}' {why}")

    need(cfg.method in METHOD_NAMES, "method", f"must be one of {', '.join(METHOD_NAMES)}, got {cfg.method!r}")
    t = cfg.tripost
    need(0.0 <= t.p < 1.0, "tripost.p", "must be in [0, 1)")
    need(t.w > 0, "tripost.w", "must be > 0")
    need(t.attempt_weight >= 0, "tripost.attempt_weight", "must be >= 0")
    need(t.max_improvements >= 0, "tripost.max_improvements", "must be >= 0")
    need(t.collect_max_calls >= 1, "tripost.collect_max_calls", "must be >= 1")
    need(t.evaluate_max_calls >= 1, "tripost.evaluate_max_calls", "must be >= 1")
    check_multiagent(cfg.multiagent, "multiagent")
    check_saie(cfg.saie, "saie")
    check_section = {"multiagent": check_multiagent, "saie": check_saie}.get(cfg.method)
    for name, overrides in cfg.iterate.arms.items():  # each arm is the method's section, changed
        try:
            arm = with_changes(method_config(cfg), **overrides)
        except TypeError as e:
            raise TripostError(f"config: iterate.arms.{name}: {e} (keys are fields of the '{cfg.method}' "
                               "section)") from None
        if check_section:
            check_section(arm, f"iterate.arms.{name}")
    need(cfg.init_model.tokenizer in ("numbers", "numbers_words", "digits"), "init_model.tokenizer",
         f"must be numbers, numbers_words or digits, got {cfg.init_model.tokenizer!r}")
    need(cfg.init_model.max_number >= 0, "init_model.max_number", "must be >= 0")
    tc = cfg.train
    need(tc.normalizer in ("mask", "weight"), "train.normalizer", "must be 'mask' or 'weight'")
    need(tc.lr_schedule in ("cosine", "linear", "constant"), "train.lr_schedule",
         "must be cosine, linear or constant")
    need(tc.bf16 in ("auto", "true", "false"), "train.bf16", "must be auto, true or false")
    need(tc.launcher in ("auto", "inprocess", "subprocess", "torchrun", "deepspeed", "command"), "train.launcher",
         "must be auto, inprocess, subprocess, torchrun, deepspeed or command")
    need(tc.launcher != "command" or bool(tc.launch_command), "train.launch_command",
         "is needed with train.launcher=command (e.g. 'srun torchrun --nnodes 2 --nproc_per_node 8 ...')")
    for key in ("micro_batch_size", "gradient_accumulation_steps", "max_length", "nproc", "log_every_steps",
                "keep_checkpoints"):
        need(getattr(tc, key) >= 1, f"train.{key}", "must be >= 1")
    need(tc.epochs > 0, "train.epochs", "must be > 0")
    need(tc.threads is None or tc.threads >= 1, "train.threads", "must be >= 1 (or null)")
    need(tc.loss_chunk is None or tc.loss_chunk >= 1, "train.loss_chunk", "must be >= 1 (or null)")
    need(tc.lora.r >= 0 and tc.lora.alpha > 0 and 0.0 <= tc.lora.dropout < 1.0, "train.lora",
         "needs r >= 0, alpha > 0 and dropout in [0, 1)")
    need(tc.learning_rate > 0, "train.learning_rate", "must be > 0")
    need(0.0 <= tc.warmup_ratio < 1.0, "train.warmup_ratio", "must be in [0, 1)")
    need(tc.max_steps is None or tc.max_steps >= 1, "train.max_steps", "must be >= 1 (or null)")
    need(0.0 < cfg.task.test_fraction < 1.0, "task.test_fraction", "must be in (0, 1)")
    need(cfg.task.judge in ("exact", "numeric", "set", "list"), "task.judge", "must be exact, numeric, set or list")
    need((cfg.task.train_path is None) == (cfg.task.test_path is None), "task.train_path",
         "and task.test_path go together (or give one file as task.path)")
    need(cfg.process.max_tokens >= 1, "process.max_tokens", "must be >= 1")
    for section in ("collect", "evaluate"):
        gen = getattr(cfg, section)
        need(gen.batch_size >= 1, f"{section}.batch_size", "must be >= 1")
        need(gen.max_new_tokens >= 1, f"{section}.max_new_tokens", "must be >= 1")
        need(gen.temperature > 0, f"{section}.temperature", "must be > 0")
        need(0.0 < gen.top_p <= 1.0, f"{section}.top_p", "must be in (0, 1]")
        need(gen.threads is None or gen.threads >= 1, f"{section}.threads", "must be >= 1 (or null)")
        need(gen.data_parallel >= 1, f"{section}.data_parallel", "must be >= 1")
        need(gen.backend in ("hf", "vllm"), f"{section}.backend", "must be hf or vllm")
        need(gen.parallel in ("processes", "ray"), f"{section}.parallel", "must be processes or ray")
    e = cfg.edit
    for key in ("feedback", "improvement"):
        spec = getattr(e, key)
        need(spec == "llm" or spec.startswith("script:"), f"edit.{key}",
             f"must be 'llm' or 'script:PATH.py', got {spec!r}")
    need(e.batch_size >= 1, "edit.batch_size", "must be >= 1")
    need(e.script_workers >= 1, "edit.script_workers", "must be >= 1")
    need(e.script_timeout_s > 0, "edit.script_timeout_s", "must be > 0")
    need(e.script_memory_mb >= 0, "edit.script_memory_mb", "must be >= 0 (0 = no limit)")
    check_api_config(e.api)
    need(cfg.iterate.rounds >= 0, "iterate.rounds", "must be >= 0")
    need(cfg.init_model.vocab_size > 259, "init_model.vocab_size",
         "must be > 259 (the 256 byte tokens and the special tokens come first)")
    need(cfg.iterate.warmup_epochs > 0, "iterate.warmup_epochs", "must be > 0")
    unknown = sorted(set(cfg.iterate.warmup_train) - {f.name for f in dataclasses.fields(TrainConfig)})
    need(not unknown, "iterate.warmup_train", f"has keys that are not train.* settings: {', '.join(unknown)}")
    need(cfg.iterate.warmup_questions is None or cfg.iterate.warmup_questions >= 1, "iterate.warmup_questions",
         "must be >= 1 (or null)")
    need(len(set(cfg.iterate.seeds)) == len(cfg.iterate.seeds), "iterate.seeds", "must not repeat a seed")


def check_multiagent(mc: MultiagentConfig, prefix: str) -> None:
    """Ranges of a multiagent section (or an arm's overrides of it, `prefix` iterate.arms.<name>)."""

    def need(ok: bool, key: str, why: str):
        if not ok:
            raise TripostError(f"config: '{prefix}.{key}' {why}, got {getattr(mc, key)!r}")

    need(1 <= mc.agents <= 16, "agents", "must be in 1..16")
    need(mc.samples >= 1, "samples", "must be >= 1")
    need(mc.debate_rounds >= 1, "debate_rounds", "must be >= 1 (1 = the generators alone, no critics)")
    need(mc.samples == 1 or mc.debate_rounds == 1, "samples",
         "must be 1 when debate_rounds >= 2 (several samples per agent is the single-agent voting baseline, "
         "debate_rounds 1)")
    need(mc.debate_rounds == 1 or mc.agents >= 2, "agents", "must be >= 2 for a debate (debate_rounds >= 2)")
    need(mc.max_others >= 1, "max_others", "must be >= 1")
    need(mc.tie_break in ("no_label", "largest_string"), "tie_break", "must be no_label or largest_string")
    need(mc.dplus_ratio is None or mc.dplus_ratio >= 0, "dplus_ratio", "must be >= 0 (or null: all D+)")
    for key in ("w_revised", "w_first", "w_wrong", "w_others"):
        need(getattr(mc, key) >= 0, key, "must be >= 0")
    need(mc.w_revised > 0, "w_revised", "must be > 0 (the revised answers are what a critic learns)")


def with_changes(section, **changes):
    """A copy of a config section with some fields replaced: with_changes(cfg.train, epochs=3.0)."""
    return dataclasses.replace(section, **changes)


def save_config(cfg, path: str | Path) -> None:
    """Write the resolved config (YAML) beside an output."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))


def resolve_path(path: str | Path) -> Path:
    """A user path as given; a relative path that does not exist from the working directory is
    looked up in the project root (for the built-in prompts/, feedback_scripts/, configs/)."""
    p = Path(path).expanduser()
    if p.is_absolute() or p.exists():
        return p
    builtin = PROJECT_ROOT / p
    return builtin if builtin.exists() else p
