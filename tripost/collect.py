"""Let the models answer a task split: attempts JSONL for the next stage (resumable).

    tripost collect --model models/tiny --split train --out runs/demo/attempts.jsonl collect.batch_size=64

Each question is one episode of the method (TriPosT: the learner answers and, once trained on
TriPosT data, critiques and updates its own answer), driven in batches (tripost/engine.py) with
the `collect` generation settings. Each finished question is appended to the output as a
Trajectory, flushed after every batch; a rerun skips ids already in the file, so a killed job loses
at most the batch in flight. The resolved config is written beside the output when it starts.
"""

from __future__ import annotations

from pathlib import Path

from tripost.config import Config, EditConfig, GenerationConfig, method_config, save_config
from tripost.engine import ExpertAnswerer, ModelAnswerer
from tripost.errors import TripostError
from tripost.experts import make_expert
from tripost.rollout import run_episodes, todo_examples


def partner_specs(method_module, method_cfg, stage: str, edit_cfg: EditConfig) -> dict[str, str]:
    """The method's partners for `stage`, with "edit.feedback" resolved to the edit section's
    feedback expert."""
    return {name: edit_cfg.feedback if spec == "edit.feedback" else spec
            for name, spec in method_module.partners(method_cfg, stage).items()}


def partner_answerer(name: str, spec: str, gen: GenerationConfig, chat_template: bool, edit_cfg: EditConfig | None,
                     task, out_dir: Path):
    """An answerer that is not trained: "model:PATH" (a local model), "script:PATH.py" or "llm" (an
    expert, with the script and API settings of the `edit` section)."""
    if spec.startswith("model:"):
        return ModelAnswerer(name, spec[len("model:"):], gen, chat_template)
    if edit_cfg is None:
        raise TripostError(f"partner {name!r} ({spec}) needs the edit section's expert settings")
    return ExpertAnswerer(make_expert(spec, edit_cfg, task, out_dir, role=name))


def rollout_stage(task, gen: GenerationConfig, method: str, method_cfg, chat_template: bool, models: dict,
                  split: str, out_path: Path, stage: str, round: int = 0, progress: bool = True,
                  partners: dict | None = None, edit_cfg: EditConfig | None = None) -> dict:
    """Run the method's rollout episode on every example of `split` not yet in `out_path`: the loop
    collect and evaluate share. `models` ({name: dir}) are the models being trained; `partners`
    ({name: spec}) answer too but are never trained. Returns counts."""
    from tripost.methods import get_method

    m = get_method(method)
    examples = task.load(split)
    todo = todo_examples(examples, {"kept": out_path})
    counts = {}
    if todo:
        answerers = {name: ModelAnswerer(name, path, gen, chat_template) for name, path in models.items()}
        fmt = next(iter(answerers.values())).format
        for name, spec in (partners or {}).items():
            answerers[name] = partner_answerer(name, spec, gen, chat_template, edit_cfg, task, out_path.parent)

        def episode(ex):
            traj = yield from m.rollout(ex, task, method_cfg, stage, fmt)
            traj.round = round
            return traj

        try:
            counts = run_episodes([(ex.id, episode(ex)) for ex in todo], answerers, {"kept": out_path},
                                  window=4 * gen.batch_size, desc=stage, progress=progress)
        finally:
            for a in answerers.values():
                if isinstance(a, ExpertAnswerer):
                    a.expert.close()
        if counts.get("pending"):  # a partner was unreachable: those questions are not written
            raise TripostError(f"{counts['pending']} questions not done in {out_path}: a partner was unreachable; "
                               "rerun to retry them")
    return {"examples": len(examples), "skipped": len(examples) - len(todo), "generated": len(todo),
            "correct_this_run": counts.get("correct", 0),
            "stops_this_run": {k[5:]: v for k, v in sorted(counts.items()) if k.startswith("stop:")}}


def collect(task, gen: GenerationConfig, method: str, method_cfg, chat_template: bool, models: dict,
            out_path, split: str = "train", round: int = 0, progress: bool = True, partners: dict | None = None,
            edit_cfg: EditConfig | None = None) -> dict:
    """Collect attempts of `models` ({name: model dir}) on `split` into out_path; return a summary."""
    out_path = Path(out_path)
    summary = rollout_stage(task, gen, method, method_cfg, chat_template, models, split, out_path, "collect",
                            round, progress, partners, edit_cfg)
    return {"path": str(out_path), "split": split, **summary}


def main(args, cfg: Config) -> int:
    from tripost.engine import check_model_dir
    from tripost.methods import get_method
    from tripost.tasks import get_task

    out = Path(args.out)
    models = {name: check_model_dir(cfg.model) for name in get_method(cfg.method).models(method_config(cfg))}
    save_config(cfg, out.with_name(out.name + ".config.yaml"))
    mc = method_config(cfg)
    partners = partner_specs(get_method(cfg.method), mc, "collect", cfg.edit)
    summary = collect(get_task(cfg.task), cfg.collect, cfg.method, mc, cfg.chat_template, models, out,
                      split=args.split, partners=partners, edit_cfg=cfg.edit)
    print(f"{summary['path']}: {summary['generated']} new attempts ({summary['skipped']} already there); "
          f"stops {summary['stops_this_run']}")
    return 0
