"""The loop, for every method: round 0, then rounds of collect, edit, process, train, evaluate.

    tripost iterate --rounds 3                         # built-in CPU demo (configs/demo.yaml)
    tripost iterate --config my.yaml --name exp1 --rounds 3
    tripost iterate --config my.yaml --name exp1 --force-from round_2/edit

The plan (`plan`), under runs/<name>/ (documented file by file in docs/runs.md):

    round_0/init_model/          a tiny local model (only when `model` is null)
    round_0/warmup_process/      rationale SFT data ("ft rationale") for the base model
    round_0/warmup_train/        the warmed-up base model; every model of the method starts here
    round_0/evaluate/            its metrics
    round_<k>/collect/           the round's models answer the train split          (k = 1..rounds)
    round_<k>/edit/              (methods with an edit stage) expert edits -> trajectories
    round_<k>/process/           trajectories -> one <model>.jsonl per trained model
    round_<k>/train/<model>/     each model continues from its own previous version
    round_<k>/evaluate/          the method's test-time episode with the new models
    baseline/round_<k>/{process,train,evaluate}/
                                 equal-compute baseline: the previous baseline model trained on gold
                                 rationales for as many tokens as round k's training saw (tokens_seen)
    api_cache/                   cached API responses (shared by every round)
    summary.json                 the table printed at the end (tripost/results.py)

Each stage is a runner.Stage: its function gets exactly the config sections, files and values it is
fingerprinted on. A rerun resumes at the first unfinished stage; a finished stage whose config or
inputs changed is refused, naming the keys, unless `--force-from` names it (or an earlier stage):
then that stage and every later one is moved aside and redone.
"""

from __future__ import annotations

import copy
import fcntl
import sys
from pathlib import Path

import tripost
from tripost import io
from tripost.config import Config, method_config, resolve_path, save_config, stage_view, with_changes
from tripost.errors import TripostError
from tripost.records import examples_file, read_records
from tripost.runner import Later, Runner, Stage, is_done, move_aside, read_manifest

DEMO_CONFIG = "configs/demo.yaml"


# ----------------------------------------------------------------------------------------------
# Stage bodies: thin calls into the stage modules, taking only what the Stage passes


def _init_model(out, task, init_model, experts=None):
    """The tiny model and its tokenizer; `experts`: gold rationales come from a script or an LLM,
    and the tokenizer learns their text too."""
    from collections import Counter

    from tripost.model_init import init_model as build
    from tripost.process import gold_rationales
    from tripost.tasks import get_task

    t = get_task(task)
    rationales = {ex.id: r for ex, r in gold_rationales(t, experts, out, Counter())} if experts is not None else None
    build(init_model, t, out, rationales)
    return {"model": str(out)}


def _rationale_process(out, task, process, chat_template, model_name, tokenizer, experts=None, held_out_task=None):
    """Rationale SFT data for the base model; with `held_out_task` (the warm-up draws on a larger
    pool than the rounds), that task's test questions are left out."""
    from tripost.process import rationale_sft
    from tripost.tasks import get_task

    held_out = {ex.id for ex in get_task(held_out_task).load("test")} if held_out_task is not None else frozenset()
    return rationale_sft(get_task(task), process, chat_template, tokenizer, out, model_name, experts, held_out)


def _process(out, task, process, method, method_cfg, chat_template, trajectories, tokenizer, experts=None):
    from tripost.process import process as build
    from tripost.tasks import get_task

    return build(get_task(task), process, method, method_cfg, chat_template, trajectories, tokenizer, out, experts)


def _train(out, train, examples, model):
    from tripost.train import train as run

    if Path(examples).stat().st_size == 0:  # process wrote no examples for this model
        return _unchanged(out, model)
    return run(train, examples, model, out)


def _unchanged(out: Path, model) -> dict:
    """A model with no training examples this round (a method with several models may leave one
    without data, e.g. an agent none of whose answers agreed with the consensus) continues
    unchanged: its start model is copied to out/model, and it trained on 0 tokens."""
    import shutil

    from tripost.train import MARKER, is_complete

    if not is_complete(out / "model"):  # copy, then rename: a kill leaves no half model behind
        tmp = out / "model.partial"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(Path(model), tmp)
        io.write_text(tmp / MARKER, "copied: no training examples\n")
        shutil.rmtree(out / "model", ignore_errors=True)
        tmp.rename(out / "model")
    stats = {"steps": 0, "tokens_seen": 0, "model_dir": str(out / "model"),
             "skipped": "no training examples: the model continues unchanged"}
    io.write_json(out / "train_stats.json", stats)
    return stats


def _collect(out, task, collect, method, method_cfg, chat_template, round, models, partners=None, edit=None,
             partner_models=None, split="train"):
    from tripost.collect import collect as run
    from tripost.tasks import get_task

    return run(get_task(task), collect, method, method_cfg, chat_template, models, out / "attempts.jsonl",
               split=split, round=round, partners=partners, edit_cfg=edit)


def _edit(out, task, edit, method, method_cfg, attempts):
    from tripost.edit import edit as run
    from tripost.tasks import get_task

    summary = run(get_task(task), edit, method, method_cfg, attempts, out)
    if summary["pending"]:
        raise TripostError(f"{summary['pending']} trajectories not done in {out}: an expert was unreachable; "
                           "rerun to retry them")
    return summary


def _evaluate(out, task, evaluate, method, method_cfg, chat_template, models, partners=None, edit=None,
              partner_models=None):
    from tripost.evaluate import evaluate as run
    from tripost.tasks import get_task

    return run(get_task(task), evaluate, method, method_cfg, chat_template, models, out, partners=partners,
               edit_cfg=edit)


def _match(out: Path, models: list[str], tokenizer, max_length: int, budget: int, seed: int) -> dict:
    """Rewrite each model's examples file as passes over it up to its share of `budget` tokens."""
    from tripost.process import load_tokenizer, token_matched

    tok = load_tokenizer(tokenizer)
    matched = {}
    for model in models:
        pool = read_records(examples_file(out, model))
        if not pool:  # nothing to repeat: the model trains on nothing (see _unchanged)
            matched[model] = {"examples": 0, "tokens_seen": 0, "budget_tokens_seen": budget // len(models), "passes": 0}
            continue
        picked, matched[model] = token_matched(pool, tok, max_length, budget // len(models), seed)
        io.write_jsonl(examples_file(out, model), picked)
    return matched


def _baseline_process(out, task, process, chat_template, max_length, tokenizer, budget, seed, experts=None):
    """Rationale SFT examples for the model "baseline", then passes over them (reshuffled each pass)
    until their tokens reach `budget` (what the method's round trained on). Trained for one epoch."""
    from tripost.process import rationale_sft
    from tripost.tasks import get_task

    stats = rationale_sft(get_task(task), process, chat_template, tokenizer, out, "baseline", experts)
    stats["matched"] = _match(out, ["baseline"], tokenizer, max_length, budget, seed)["baseline"]
    io.write_json(out / "stats.json", stats)
    return stats


def _arm_process(out, task, process, method, method_cfg, chat_template, trajectories, tokenizer, max_length, budget,
                 seed, experts=None):
    """An arm's training data: the method's examples, then matched to the method's token budget."""
    from tripost.methods import get_method

    stats = _process(out, task, process, method, method_cfg, chat_template, trajectories, tokenizer, experts)
    stats["matched"] = _match(out, get_method(method).models(method_cfg), tokenizer, max_length, budget, seed)
    io.write_json(out / "stats.json", stats)
    return stats


# ----------------------------------------------------------------------------------------------
# The plan


def task_name(cfg: Config) -> str:
    """The task's name as its prompts directory knows it (a task file: its stem)."""
    return Path(cfg.task.name).stem if cfg.task.name.endswith(".py") else cfg.task.name


def expert_files(cfg: Config) -> list[Path]:
    """Feedback/improvement scripts, or the prompt templates for `llm`: what the edit stage runs."""
    from tripost.experts.templates import prompts_dir_for

    files: list[Path] = []
    for spec in (cfg.edit.feedback, cfg.edit.improvement):
        if spec.startswith("script:"):
            path = resolve_path(spec[len("script:"):])
            if not path.is_file():
                raise TripostError(f"config: edit script '{spec}' not found ({path})")
            files.append(path)
        elif spec == "llm":
            prompts = prompts_dir_for(cfg.edit, task_name(cfg))
            files.extend(sorted(p for p in prompts.glob("*.j2") if p.name != "rationale.j2"))
    return sorted(set(files))


def rationale_source(cfg: Config, task) -> tuple[dict, list[Path]]:
    """What stages that need gold rationales are given (process.rationale_source): nothing for the
    task's own; the edit section and the feedback script when its rationale() writes them; the edit
    section (its API settings) and prompts/<task>/rationale.j2 when an LLM does."""
    from tripost.experts.templates import prompts_dir_for
    from tripost.process import rationale_source as source_of

    source = source_of(task, cfg.edit)
    if source == "script":
        return {"experts": cfg.edit}, [resolve_path(cfg.edit.feedback[len("script:"):])]
    if source == "llm":
        template = prompts_dir_for(cfg.edit, task.name) / "rationale.j2"
        return {"experts": cfg.edit}, [template] if template.is_file() else []
    return {}, []


def partner_source(cfg: Config, m, mc, stage: str) -> tuple[dict, dict, list[Path]]:
    """What a rollout stage is given for the method's untrained answerers (partners): their specs and
    the edit section (script and API settings) as config, local partner models as inputs, partner
    scripts and templates as scripts."""
    from tripost.collect import partner_specs
    from tripost.experts.templates import prompts_dir_for

    specs = partner_specs(m, mc, stage, cfg.edit)
    if not specs:
        return {}, {}, []
    models = {n: resolve_path(s[len("model:"):]) for n, s in specs.items() if s.startswith("model:")}
    scripts: list[Path] = []
    for spec in specs.values():
        if spec.startswith("script:"):
            scripts.append(resolve_path(spec[len("script:"):]))
        elif spec == "llm":
            scripts.extend(sorted(prompts_dir_for(cfg.edit, task_name(cfg)).glob("*.j2")))
    # The edit section as the partners use it: their own specs, the script limits, and the API
    # settings only when one of them is an LLM (so editing edit.improvement redoes no evaluation).
    expert_specs = [s for s in specs.values() if not s.startswith("model:")]
    edit = with_changes(cfg.edit, feedback=expert_specs[0], improvement=expert_specs[0],
                        **({} if "llm" in expert_specs else {"api": type(cfg.edit.api)(), "prompts_dir": None})) \
        if expert_specs else None
    return ({"partners": specs, **({"edit": edit} if edit is not None else {})},
            {"partner_models": models} if models else {}, sorted(set(scripts)))


def plan(cfg: Config, run_dir: Path) -> list[Stage]:
    """Every stage of the run, in order: round 0, then per round the method's stages, each arm's,
    and the baseline's."""
    from tripost.methods import get_method
    from tripost.tasks import get_task

    task = get_task(cfg.task)
    m, mc, it = get_method(cfg.method), method_config(cfg), cfg.iterate
    rationales, rationale_scripts = rationale_source(cfg, task)
    if (it.warmup or it.baseline) and not task.has_gold_rationale and not rationales:
        raise TripostError(
            f"config: task '{cfg.task.name}' has no gold rationales, so iterate.warmup and iterate.baseline (both "
            "rationale SFT) cannot run. Give them one way: task.rationale_field (a worked solution in your data), a "
            "rationale(example) function in your task file or feedback script, or an LLM expert (edit.feedback: "
            "llm) that writes them; or set iterate.warmup=false and iterate.baseline=false and start from a model "
            "that already writes step-by-step answers")
    if cfg.model is None and not it.warmup:
        raise TripostError("config: model is null (a tiny model is built from scratch) and iterate.warmup is false: "
                           "an untrained model writes noise, so nothing could be learnt from its attempts. Keep "
                           "iterate.warmup: true, or give model: a directory of a model that can answer")
    stages: list[Stage] = []

    def add(sid: str, fn, config: dict, inputs: dict, values=None, scripts=()) -> Path:
        stages.append(Stage(sid, run_dir / sid, fn, config, inputs, values or {}, list(scripts)))
        return run_dir / sid

    # Round 0: the base model (built in the run, or found or built in the base cache), its evaluation.
    base_stages: list[Stage] = []

    def add_base(name: str, fn, config: dict, inputs: dict, scripts=()) -> Path:
        base_stages.append(Stage(f"round_0/{name}", run_dir / "round_0" / name, fn, config, inputs, {}, list(scripts)))
        return base_stages[-1].dir

    # With a warm-up pool larger than the rounds' (iterate.warmup_questions), the base holds out the
    # run's whole test split, so runs that differ only in how many test questions they evaluate
    # (task.max_test: the train split never depends on it) share one base.
    base_task = cfg.task if it.warmup_questions is None else with_changes(cfg.task, max_test=None)
    if cfg.model is None:
        base = add_base("init_model", _init_model, {"task": base_task, "init_model": cfg.init_model, **rationales}, {},
                        scripts=rationale_scripts)
    else:
        base = resolve_path(cfg.model)
        if not base.exists():
            raise TripostError(f"config: 'model' directory not found: {cfg.model}")
    if it.warmup:
        pool = cfg.task if it.warmup_questions is None else with_changes(base_task, max_train=it.warmup_questions)
        held_out = {} if it.warmup_questions is None else {"held_out_task": base_task}
        wp = add_base("warmup_process", _rationale_process,
                      {"task": pool, "process": cfg.process, "chat_template": cfg.chat_template,
                       "model_name": "base", **rationales, **held_out}, {"tokenizer": base}, scripts=rationale_scripts)
        warm = with_changes(cfg.train, **{"epochs": it.warmup_epochs, **it.warmup_train})
        base = Later(add_base("warmup_train", _train, {"train": warm},
                              {"examples": examples_file(wp, "base"), "model": base}))
    if it.base_cache is not None and base_stages:
        base = _cached(base_stages, Path(it.base_cache).expanduser(), None if cfg.model is None else base, base)
    stages.extend(base_stages)

    # Arms: the method itself ("" prefix), then its variants; each has its own models.
    arms = {"": mc}
    for name, overrides in it.arms.items():
        try:
            arms[f"arms/{name}/"] = with_changes(mc, **overrides)
        except TypeError as e:
            raise TripostError(f"config: iterate.arms.{name}: {e} (keys are fields of the '{cfg.method}' "
                               "section)") from None
    names = m.models(mc)
    models = {arm: {name: base for name in m.models(amc)} for arm, amc in arms.items()}
    trajectories: dict[str, list[Path]] = {arm: [] for arm in arms}

    def evaluate(sid, amc, arm_models):
        partner_cfg, partner_inputs, partner_scripts = partner_source(cfg, m, amc, "evaluate")
        add(sid, _evaluate, {"task": cfg.task, "method": cfg.method, "method_cfg": stage_view(amc, m.READS["evaluate"]),
                             "chat_template": cfg.chat_template, "evaluate": cfg.evaluate, **partner_cfg},
            {"models": dict(arm_models), **partner_inputs}, scripts=partner_scripts)

    evaluate("round_0/evaluate", mc, models[""])
    baseline_model = base
    once = with_changes(cfg.train, epochs=1.0, max_steps=None)  # token-matched data: one pass
    for k in range(1, it.rounds + 1):
        round_trains: list[Path] = []
        for arm, amc in arms.items():
            r = f"{arm}round_{k}"

            def common(stage):
                return {"task": cfg.task, "method": cfg.method, "method_cfg": stage_view(amc, m.READS[stage]),
                        "chat_template": cfg.chat_template}

            partner_cfg, partner_inputs, partner_scripts = partner_source(cfg, m, amc, "collect")
            split = {"split": "test"} if it.train_on_test else {}
            attempts = add(f"{r}/collect", _collect, {**common("collect"), "collect": cfg.collect, "round": k,
                                                      **partner_cfg, **split},
                           {"models": dict(models[arm]), **partner_inputs}, scripts=partner_scripts) / "attempts.jsonl"
            new = attempts
            if "edit" in m.STAGES:
                new = add(f"{r}/edit", _edit, {"task": cfg.task, "edit": cfg.edit, "method": cfg.method,
                                               "method_cfg": stage_view(amc, m.READS["edit"])}, {"attempts": attempts},
                          scripts=expert_files(cfg)) / "trajectories.jsonl"
            trajectories[arm] = trajectories[arm] + [new] if it.cumulative_data else [new]
            starts = models[arm] if it.continue_from_previous else {n: base for n in models[arm]}
            gold = rationales if m.uses_gold(amc) else {}
            inputs = {"trajectories": list(trajectories[arm]), "tokenizer": next(iter(starts.values()))}
            if arm:  # a variant: as many tokens as the method trained on this round
                proc = add(f"{r}/process", _arm_process,
                           {**common("process"), "process": cfg.process, "max_length": cfg.train.max_length,
                            "seed": cfg.process.seed + k, **gold}, inputs,
                           values={"budget": lambda dirs=tuple(round_trains): tokens_seen(dirs)},
                           scripts=rationale_scripts if gold else ())
            else:
                proc = add(f"{r}/process", _process, {**common("process"), "process": cfg.process, **gold}, inputs,
                           scripts=rationale_scripts if gold else ())
            for name in models[arm]:
                # An arm's data is already repeated up to the method's tokens: one pass over it.
                d = add(f"{r}/train/{name}", _train, {"train": once if arm else cfg.train},
                        {"examples": examples_file(proc, name), "model": starts[name]})
                if not arm:
                    round_trains.append(d)
                models[arm][name] = Later(d)
            evaluate(f"{r}/evaluate", amc, models[arm])

        if it.baseline:
            b = f"baseline/round_{k}"
            bp = add(f"{b}/process", _baseline_process,
                     {"task": cfg.task, "process": cfg.process, "chat_template": cfg.chat_template,
                      "max_length": cfg.train.max_length, "seed": cfg.process.seed + k, **rationales},
                     {"tokenizer": baseline_model},
                     values={"budget": lambda dirs=tuple(round_trains): tokens_seen(dirs)}, scripts=rationale_scripts)
            baseline_model = Later(add(f"{b}/train", _train, {"train": once},
                                       {"examples": examples_file(bp, "baseline"), "model": baseline_model}))
            evaluate(f"{b}/evaluate", mc, {name: baseline_model for name in names})
    return _legacy_layout(stages, run_dir)


# The code that makes a base model: part of the base cache's key (a change rebuilds the base).
BASE_CODE = ("model_init.py", "train.py", "process.py", "formats.py", "records.py", "steps.py", "arith.py",
             "tasks", "methods/tripost.py")


def base_key(base_stages: list[Stage], given_model: Path | None) -> str:
    """What makes the base model: its stages' configs, the given model's content (when the run
    starts from a model directory rather than init_model) and the code that builds it."""
    from tripost.runner import config_view

    root = Path(tripost.__file__).parent
    code = {}
    for name in BASE_CODE:
        for f in sorted((root / name).rglob("*.py")) if (root / name).is_dir() else [root / name]:
            code[str(f.relative_to(root))] = io.sha256_file(f)
    scripts = {str(p): io.sha256_file(p) for s in base_stages for p in s.scripts}  # e.g. a rationale() script
    return io.sha256_json({"stages": {s.id: {k: config_view(v) for k, v in s.config.items()} for s in base_stages},
                           "scripts": scripts,
                           "given_model": io.sha256_path(given_model) if given_model is not None else None,
                           "code": code, "version": tripost.__version__})[:16]


def _cached(base_stages: list[Stage], cache: Path, given_model: Path | None, base):
    """Move the base stages into cache/<key>/ (where another run may have built them already) and
    return where the base model will be."""
    key_dir = cache / base_key(base_stages, given_model)
    old = {s.dir: key_dir / s.dir.name for s in base_stages}
    for s in base_stages:
        s.dir = old[s.dir]
        s.id = f"base/{s.dir.name}"
        s.lock = key_dir / ".lock"
        s.inputs = {k: _moved(v, old) for k, v in s.inputs.items()}
    return _moved(base, old)


def _moved(x, old: dict):
    if isinstance(x, Later):
        return Later(old.get(x.train_dir, x.train_dir))
    if isinstance(x, Path):
        for a, b in old.items():
            if x == a or a in x.parents:
                return b / x.relative_to(a)
    return x


def tokens_seen(train_dirs) -> int:
    """Tokens the round's train stages pushed through their models (every position, all models):
    the equal-compute budget of the baseline."""
    return sum(int(io.read_json(Path(d) / "train_stats.json")["tokens_seen"]) for d in train_dirs)


def _legacy_layout(stages: list[Stage], run_dir: Path) -> list[Stage]:
    """Run directories written before the method seam (layout 1: manifests without "layout")
    trained one model per round in round_k/train/ and named their files otherwise. A finished
    layout-1 round is kept as it is (later stages read its model from round_k/train/model); an
    unfinished one is redone in layout 2 (`iterate` first moves its stages aside: `unfinished_legacy`)."""
    for group, members in _groups(stages).items():
        old = _legacy_dirs(run_dir / group)
        if old and len(old) == len(members) and all(is_done(d) for d in old):
            for stage in members:
                if stage.dir.parent.name == "train":  # round_k/train/<model> -> round_k/train
                    new_dir, stage.id, stage.dir = stage.dir, f"{group}/train", stage.dir.parent
                    for s in stages:
                        s.inputs = _redirect(s.inputs, new_dir, stage.dir)
    return stages


def unfinished_legacy(stages: list[Stage], run_dir: Path) -> list[Path]:
    """Stage directories of unfinished layout-1 rounds (to move aside before redoing the round)."""
    out = []
    for group, members in _groups(stages).items():
        old = _legacy_dirs(run_dir / group)
        if old and not (len(old) == len(members) and all(is_done(d) for d in old)):
            out.extend(old)
    return out


def _groups(stages: list[Stage]) -> dict[str, list[Stage]]:
    """Stages by round: "round_k" or "baseline/round_k"."""
    groups: dict[str, list[Stage]] = {}
    for s in stages:
        parts = s.id.split("/")
        groups.setdefault("/".join(parts[:2] if parts[0] == "baseline" else parts[:1]), []).append(s)
    return groups


def _legacy_dirs(root: Path) -> list[Path]:
    if not root.is_dir():
        return []
    return [d for d in sorted(root.iterdir())
            if d.is_dir() and (d / "manifest.json").is_file() and "layout" not in read_manifest(d)]


def _redirect(x, old: Path, new: Path):
    if isinstance(x, dict):
        return {k: _redirect(v, old, new) for k, v in x.items()}
    if isinstance(x, list):
        return [_redirect(v, old, new) for v in x]
    if isinstance(x, Later) and x.train_dir == old:
        return Later(new)
    return x


# ----------------------------------------------------------------------------------------------
# Entry points


def prepare(cfg: Config) -> Config:
    """Run-level defaults: the API cache lives inside the run directory."""
    cfg = copy.deepcopy(cfg)
    if cfg.edit.api.cache_dir is None:
        cfg.edit.api.cache_dir = str(Path(cfg.runs_dir) / cfg.name / "api_cache")
    return cfg


def find(stages: list[Stage], name: str) -> int:
    """Index of the first stage `--force-from NAME` names: a full id (round_2/edit), a stage name in
    every round (train), or a prefix (round_2, baseline)."""
    for i, s in enumerate(stages):
        if s.id == name or s.id.endswith("/" + name) or s.id.startswith(name.rstrip("/") + "/") \
                or f"/{name}/" in s.id:
            return i
    raise TripostError(f"--force-from: no stage '{name}' in this run; stages are: " + ", ".join(s.id for s in stages))


def iterate(cfg: Config, force_from: str | None = None, echo: bool = True) -> dict:
    """Run (or resume) every stage; return the summary. With iterate.seeds, the whole run once per
    seed (runs/<name>/seed_<s>/), then the mean and spread across seeds."""
    from tripost.results import across_seeds, format_seeds

    if not cfg.iterate.seeds:
        return _iterate_one(cfg, force_from, echo)
    summaries = []
    for seed in cfg.iterate.seeds:
        one = with_seed(cfg, seed)
        if echo:
            print(f"[iterate] seed {seed}: {Path(one.runs_dir) / one.name}", file=sys.stderr, flush=True)
        summaries.append(_iterate_one(one, force_from, echo))
    agg = across_seeds(summaries)
    io.write_json(Path(cfg.runs_dir) / cfg.name / "seeds_summary.json", agg)
    if echo:
        print(f"\nacross {len(summaries)} seeds (mean ± sd [min, max]):\n" + format_seeds(agg))
    return agg


def with_seed(cfg: Config, seed: int) -> Config:
    """The run of one seed: model init, data order, sampling and process seeds set; the task (its
    questions and split) unchanged, so every seed is tested on the same questions."""
    one = copy.deepcopy(cfg)
    one.runs_dir, one.name = str(Path(cfg.runs_dir) / cfg.name), f"seed_{seed}"
    one.init_model.seed = one.train.seed = one.process.seed = one.collect.seed = one.evaluate.seed = seed
    one.iterate.seeds = []
    return one


def _iterate_one(cfg: Config, force_from: str | None, echo: bool) -> dict:
    from tripost.methods import get_method
    from tripost.results import format_table, write_summary

    cfg = prepare(cfg)
    labels = get_method(cfg.method).METRIC_LABELS
    run_dir = Path(cfg.runs_dir) / cfg.name
    run_dir.mkdir(parents=True, exist_ok=True)
    # One iterate per run directory at a time; the OS drops the lock if we are killed.
    lock = (run_dir / ".lock").open("w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise TripostError(f"{run_dir}: another `tripost iterate` is running on this run directory") from None
    try:
        stages = plan(cfg, run_dir)
        for d in unfinished_legacy(stages, run_dir):
            moved = move_aside(d)
            print(f"[iterate] {d.relative_to(run_dir)}: part of an unfinished round written by an older tripost; "
                  f"moved aside to {moved.name} (the round is redone)", file=sys.stderr)
        runner = Runner(run_dir, cfg.method, Path(cfg.iterate.base_cache).expanduser() if cfg.iterate.base_cache else None)
        first = find(stages, force_from) if force_from is not None else len(stages)
        # Check the finished stages up front, so a refused run changes nothing (not even
        # config.yaml) and a forced one moves nothing aside when an earlier stage changed too.
        for stage in stages[:first]:
            if not is_done(stage.dir):
                break  # later stages are checked as the loop reaches them
            runner.refuse_if_changed(stage)
        if force_from is not None:
            for stage in stages[first:]:
                if stage.dir.exists():
                    moved = move_aside(stage.dir)
                    print(f"[iterate] --force-from {force_from}: moved {stage.id} aside to {moved.name}",
                          file=sys.stderr)
        save_config(cfg, run_dir / "config.yaml")
        for stage in stages:
            if stage.id.startswith("base/") and is_done(stage.dir) and echo:
                print(f"[iterate] {stage.id}: found in the base cache ({stage.dir})", file=sys.stderr)
            runner.run(stage)
            if stage.id.endswith("/evaluate"):
                summary = write_summary(cfg, stages, run_dir)
                round_over = stage.id.startswith("baseline/") or stage.id == "round_0/evaluate" \
                    or not cfg.iterate.baseline
                if echo and round_over:
                    print(format_table(summary, labels) + "\n", file=sys.stderr, flush=True)
        summary = write_summary(cfg, stages, run_dir)
        if echo:
            print(format_table(summary, labels))
            print(f"summary: {run_dir / 'summary.json'}")
        return summary
    finally:
        fcntl.flock(lock, fcntl.LOCK_UN)
        lock.close()


def main(args, cfg: Config) -> int:
    iterate(cfg, force_from=args.force_from)
    return 0
