"""Let the models answer a task split: attempts JSONL for the next stage (resumable).

    tripost collect --model models/tiny --split train --out runs/demo/attempts.jsonl collect.batch_size=64

Each question is one episode of the method (TriPosT: the learner answers and, once trained on
TriPosT data, critiques and updates its own answer), driven in batches (tripost/engine.py) with
the `collect` generation settings. Each finished question is appended to the output as a
Trajectory, flushed after every batch; one the method drops (status "dropped", e.g. a debate with
no consensus) goes to dropped.jsonl beside it, so it is counted, not lost. A rerun skips ids
already in either file, so a killed job loses at most the batch in flight. The resolved config is
written beside the output when it starts.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from collections import Counter
from pathlib import Path

from tripost.config import Config, EditConfig, GenerationConfig, method_config, save_config
from tripost.engine import ExpertAnswerer, ModelAnswerer, close_vllm_engines
from tripost.errors import TripostError
from tripost.experts import make_expert
from tripost.io import done_ids, jsonl_objects, write_jsonl
from tripost.records import read_trajectories
from tripost.rollout import run_episodes, todo_examples

DROPPED = "dropped.jsonl"


def dropped_path(out_path: Path) -> Path:
    """Where a rollout stage writes the records the method dropped: beside its output
    (attempts.jsonl -> dropped.jsonl, a shard's attempts.shard0-of-2.jsonl -> dropped.shard0-of-2.jsonl)."""
    out_path = Path(out_path)
    stem, dot, rest = out_path.name.partition(".")
    return out_path.with_name(DROPPED if rest == "jsonl" else f"dropped{dot}{rest}")


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
                  partners: dict | None = None, edit_cfg: EditConfig | None = None,
                  shard: tuple[int, int] | None = None) -> dict:
    """Run the method's rollout episode on every example of `split` not yet in `out_path`: the loop
    collect and evaluate share. `models` ({name: dir}) are the models being trained; `partners`
    ({name: spec}) answer too but are never trained. Records the method drops go to
    dropped.jsonl beside out_path. With gen.data_parallel = N > 1, N processes each take a shard
    (`shard` = (k, N): the questions whose id falls in shard k) into shard files of their own,
    merged when all are done. Returns counts (kept, dropped and drop reasons over both files, the
    rest for this run)."""
    from tripost.methods import get_method

    m = get_method(method)
    examples = task.load(split)
    outputs = {"kept": out_path, "dropped": dropped_path(out_path)}
    todo = todo_examples(examples, outputs)
    if shard is not None:
        todo = [ex for ex in todo if in_shard(ex.id, *shard)]
    elif gen.data_parallel > 1 and todo:
        return data_parallel(task, gen, method, method_cfg, chat_template, models, split, out_path, stage, round,
                             partners, edit_cfg, len(examples), len(todo))
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
            counts = run_episodes([(ex.id, episode(ex)) for ex in todo], answerers, outputs,
                                  window=4 * gen.batch_size, desc=stage, progress=progress)
        finally:
            for a in answerers.values():
                if isinstance(a, ExpertAnswerer):
                    a.expert.close()
            close_vllm_engines()
        if counts.get("pending"):  # a partner was unreachable: those questions are not written
            raise TripostError(f"{counts['pending']} questions not done in {out_path}: a partner was unreachable; "
                               "rerun to retry them")
    dropped = read_trajectories(outputs["dropped"]) if outputs["dropped"].is_file() else []
    return {"examples": len(examples), "skipped": len(examples) - len(todo), "generated": len(todo),
            "kept": len(done_ids(out_path)), "dropped": len(dropped),
            "drop_reasons": dict(sorted(Counter(t.drop_reason for t in dropped).items())),
            "correct_this_run": counts.get("correct", 0),
            "stops_this_run": {k[5:]: v for k, v in sorted(counts.items()) if k.startswith("stop:")}}


def in_shard(example_id: str, k: int, n: int) -> bool:
    """Shard k of n: chosen by the content id, so a question always lands in the same shard."""
    return int(example_id, 16) % n == k


def shard_file(out_path: Path, k: int, n: int) -> Path:
    return out_path.with_name(f"{out_path.stem}.shard{k}-of-{n}{out_path.suffix}")


def _shard_main(k: int, n: int, task_cfg, gen, method, method_cfg, chat_template, models, split, out_path, stage,
                round, partners, edit_cfg, under_ray: bool = False) -> None:
    """One data-parallel process: its own device (one GPU each), its own shard file. Under Ray the
    scheduler gives it its GPU and owns its lifetime."""
    if not under_ray:
        import ctypes
        import signal

        visible = [d for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
        os.environ["CUDA_VISIBLE_DEVICES"] = visible[k % len(visible)] if visible else str(k)  # one GPU each
        if sys.platform.startswith("linux"):
            ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: die with the stage
    from tripost.tasks import get_task

    rollout_stage(get_task(task_cfg), dataclasses.replace(gen, data_parallel=1), method, method_cfg, chat_template,
                  models, split, shard_file(out_path, k, n), stage, round, progress=k == 0, partners=partners,
                  edit_cfg=edit_cfg, shard=(k, n))


def _run_processes(args: list[tuple]) -> list[int]:
    """One spawned process per shard on this machine; the shards that failed."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")  # a fresh process: its own torch, its own device
    procs = [ctx.Process(target=_shard_main, args=a) for a in args]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    return [k for k, p in enumerate(procs) if p.exitcode != 0]


def _run_ray(args: list[tuple]) -> list[int]:
    """One Ray task per shard, on the cluster RAY_ADDRESS names (or a local one): a GPU each when
    the cluster has GPUs. The shard files must be on a filesystem every node sees."""
    try:
        import ray
    except ImportError:
        raise TripostError("collect.parallel=ray needs the ray package: pip install 'tripost[ray]'") from None
    ray.init(address=os.environ.get("RAY_ADDRESS"), ignore_reinit_error=True, log_to_driver=True)
    gpus = 1 if ray.cluster_resources().get("GPU", 0) >= 1 else 0
    task = ray.remote(num_gpus=gpus, num_cpus=1, max_retries=0)(_shard_main)
    refs = [task.remote(*a, under_ray=True) for a in args]
    failed = []
    for k, ref in enumerate(refs):
        try:
            ray.get(ref)
        except ray.exceptions.RayError as e:
            print(f"shard {k}: {e}", file=sys.stderr)
            failed.append(k)
    return failed


def data_parallel(task, gen, method, method_cfg, chat_template, models, split, out_path: Path, stage, round,
                  partners, edit_cfg, n_examples: int, n_todo: int) -> dict:
    """gen.data_parallel processes, one shard each (a killed shard resumes alone from its file),
    then one merged output file: the same records as one process would write (sampling seeds come
    from the questions, not from the process)."""
    n = gen.data_parallel
    args = [(k, n, task.cfg, gen, method, method_cfg, chat_template, models, split, out_path, stage, round, partners,
             edit_cfg) for k in range(n)]
    print(f"[{stage}] {n_todo} questions in {n} data-parallel {gen.parallel}", file=sys.stderr)
    failed = _run_ray(args) if gen.parallel == "ray" else _run_processes(args)
    if failed:
        raise TripostError(f"{stage}: data-parallel shard(s) {failed} failed (see above); rerun to resume them")
    new = []
    for final in (out_path, dropped_path(out_path)):
        shards = [shard_file(final, k, n) for k in range(n)]
        merged = {d["id"]: d for _, d in jsonl_objects(final)} if final.exists() else {}
        for shard in shards:
            if shard.exists():
                records = [d for _, d in jsonl_objects(shard, allow_torn_tail=True)]
                merged.update((d["id"], d) for d in records)
                new += records
        if merged or final == out_path:  # the kept file always exists: the next stage's input
            write_jsonl(final, [merged[i] for i in sorted(merged)])
        for shard in shards:
            shard.unlink(missing_ok=True)
    dropped = read_trajectories(dropped_path(out_path)) if dropped_path(out_path).is_file() else []
    return {"examples": n_examples, "skipped": n_examples - n_todo, "generated": n_todo, "data_parallel": n,
            "kept": len(done_ids(out_path)), "dropped": len(dropped),
            "drop_reasons": dict(sorted(Counter(t.drop_reason for t in dropped).items())),
            "correct_this_run": sum(bool(d["correct"]) for d in new),
            "stops_this_run": dict(sorted(Counter(d["stop"] for d in new).items()))}


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
