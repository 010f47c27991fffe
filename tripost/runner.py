"""Stages of a run directory: what each is given, its manifest, its fingerprint, and resuming.

A `Stage` names the function that runs it and everything that function receives:

    Stage("round_1/process", dir, fn=process_stage,
          config={"task": cfg.task, "process": cfg.process, ...},     # passed to fn, fingerprinted
          inputs={"trajectories": [path], "tokenizer": model_dir},    # passed, hashed by content
          values={"budget": lambda: ...},                             # computed at run time, passed, fingerprinted
          scripts=[feedback_script, template, ...])                   # user code it runs, hashed

and `run_stage` calls `fn(out=dir, **config, **inputs, **values)`. What a stage is fingerprinted on
is exactly what it is given, so what it depends on cannot drift from what it reads.

Every stage directory holds manifest.json:

    {"stage", "layout": 2, "status": "running" | "done", "config", "inputs": {path: sha256},
     "values", "scripts": {path: sha256}, "code": {version, source hash}, "fingerprint",
     "counts": what fn returned, "timings": {start, end, seconds}}

written atomically before the stage starts and again, LAST, when its outputs are complete: a kill at
any moment leaves no manifest, a "running" one, or a complete "done" one. A rerun skips "done"
stages whose fingerprint matches, refuses a finished stage whose config or inputs changed (naming
the keys) unless --force-from names it, and reruns unfinished ones (every stage function resumes
from its own partial output). The package source hash is recorded, not compared: upgrading tripost
must not invalidate a finished run.

Run directories written before the method seam (manifests without "layout") still resume: their
finished stages are compared on the config keys and inputs both versions have, with the old key
names translated by config.MOVED.
"""

from __future__ import annotations

import dataclasses
import fcntl
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import tripost
from tripost import io
from tripost.config import MOVED, PROJECT_ROOT, ApiConfig, EditConfig, GenerationConfig, TrainConfig
from tripost.errors import TripostError

MANIFEST = "manifest.json"
LAYOUT = 2

# Config keys that change how a stage runs but not what it produces; editing them never
# invalidates a finished stage.
OPERATIONAL_KEYS = {
    EditConfig: {"script_workers", "batch_size"},
    ApiConfig: {"cache_dir", "base_url", "concurrency", "max_retries", "retry_base_s", "retry_max_s", "timeout_s",
                "batch", "batch_poll_s", "price_input_per_mtok", "price_output_per_mtok", "api_key_env"},
    GenerationConfig: {"threads", "data_parallel", "parallel"},
    TrainConfig: {"save_every_steps", "log_every_steps", "keep_checkpoints", "launcher", "threads"},
}


class Later:
    """A model directory that exists only after its train stage ran."""

    def __init__(self, train_dir: Path):
        self.train_dir = Path(train_dir)

    def __fspath__(self) -> str:
        return str(self.train_dir / "model")


def resolve(x):
    """Paths (and Later) inside inputs, as Paths; dicts and lists element-wise."""
    if isinstance(x, dict):
        return {k: resolve(v) for k, v in x.items()}
    if isinstance(x, list):
        return [resolve(v) for v in x]
    return Path(x)


@dataclass
class Stage:
    """One step of a run: where it writes, what it is given, and the function that runs it."""

    id: str  # "round_1/edit", "round_2/train/learner", "baseline/round_1/train", ...
    dir: Path
    fn: Callable[..., dict]
    config: dict = field(default_factory=dict)
    inputs: dict = field(default_factory=dict)
    values: dict = field(default_factory=dict)
    scripts: list = field(default_factory=list)
    lock: Path | None = None  # held while it runs (a stage shared by runs: the base cache)


def config_view(value):
    """A config value as plain data for the manifest, without operational keys."""
    if dataclasses.is_dataclass(value):
        skip = OPERATIONAL_KEYS.get(type(value), set())
        return {f.name: config_view(getattr(value, f.name)) for f in dataclasses.fields(value) if f.name not in skip}
    if isinstance(value, (str, Path)):
        return _project_relative(str(value))
    return value


def _project_relative(text: str) -> str:
    """A path (or "script:"/"model:" spec) inside tripost's own tree, relative to it: fingerprints of
    built-in scripts and configs stay the same wherever the checkout lies."""
    prefix = next((p for p in ("script:", "model:") if text.startswith(p)), "")
    root = str(PROJECT_ROOT) + "/"
    return prefix + text[len(prefix) + len(root):] if text[len(prefix):].startswith(root) else text


def _script_key(p: Path) -> str:
    """Built-in scripts/templates by their path in the project (stable if the checkout moves)."""
    try:
        return str(Path(p).resolve().relative_to(PROJECT_ROOT))
    except ValueError:
        return str(p)


def code_info() -> dict:
    root = Path(tripost.__file__).parent
    files = {str(f.relative_to(root)): io.sha256_file(f) for f in sorted(root.rglob("*.py"))}
    return {"tripost_version": tripost.__version__, "source_sha256": io.sha256_json(files)[:16]}


def read_manifest(stage_dir: Path) -> dict | None:
    path = Path(stage_dir) / MANIFEST
    if not path.is_file():
        return None
    return io.read_json(path)


def is_done(stage_dir: Path) -> bool:
    m = read_manifest(stage_dir)
    return m is not None and m.get("status") == "done"


def flatten(d: dict, prefix: str = "") -> dict:
    """{"a": {"b": 1}} -> {"a.b": 1}, to name the keys that changed."""
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def diff(old: dict, new: dict, only_common: bool = False) -> list[str]:
    """'key: old -> new' for every (flattened) key that differs (with only_common: among keys both have)."""
    a, b = flatten(old), flatten(new)
    keys = (set(a) & set(b)) if only_common else (set(a) | set(b))
    return [f"{k}: {a.get(k, '<unset>')!r} -> {b.get(k, '<unset>')!r}" for k in sorted(keys)
            if a.get(k, "<unset>") != b.get(k, "<unset>")]


def _v1_config(old: dict, method: str) -> dict:
    """A layout-1 manifest's config with moved keys renamed, in the shape of a layout-2 stage config
    (the method's section is "method_cfg")."""
    out: dict = {}
    for key, value in flatten(old).items():
        new = MOVED.get(key, key)
        if new is None:
            continue
        if new.startswith(method + "."):
            new = "method_cfg." + new[len(method) + 1:]
        out[new] = value
    return out


class Runner:
    """Runs the stages of one run directory."""

    def __init__(self, run_dir: Path, method: str, base_cache: Path | None = None):
        self.dir, self.method, self.base_cache = Path(run_dir), method, base_cache

    def rel(self, p) -> str:
        """How a manifest names an input path: relative to the run directory, or to the base cache
        ("base-cache:<key>/..."), so moving or copying either keeps finished stages finished."""
        full = Path(p).resolve()
        for root, prefix in ((self.dir, ""), (self.base_cache, "base-cache:")):
            if root is not None and full.is_relative_to(Path(root).resolve()):
                return prefix + str(full.relative_to(Path(root).resolve()))
        return str(p)

    def state(self, stage: Stage, only_inputs: set | None = None) -> dict:
        """Config, input hashes, values, script hashes and fingerprint of a stage as it would run
        now (`only_inputs`: hash just these input paths)."""
        config = {k: config_view(v) for k, v in stage.config.items()}
        inputs = {}
        for p in _paths(resolve(stage.inputs)):
            if only_inputs is None:
                inputs[self.rel(p)] = io.sha256_path(p)
            elif self.rel(p) in only_inputs:  # comparing with a layout-1 manifest: hash as 0.1 did
                inputs[self.rel(p)] = io.sha256_path(p, io.BOOKKEEPING_V1)
        values = {k: fn() for k, fn in stage.values.items()} if only_inputs is None else {}
        scripts = {_script_key(p): io.sha256_file(p) for p in stage.scripts}
        fp = io.sha256_json({"config": config, "inputs": inputs, "values": values, "scripts": scripts})
        return {"config": config, "inputs": inputs, "values": values, "scripts": scripts, "fingerprint": fp}

    def changes(self, stage: Stage, old: dict) -> list[str]:
        """How a finished stage's manifest differs from how it would run now (empty: it matches)."""
        if old.get("layout") == LAYOUT:
            now = self.state(stage)
            if old["fingerprint"] == now["fingerprint"]:
                return []
            changes = diff({k: old.get(k, {}) for k in ("config", "inputs", "values", "scripts")},
                           {k: now[k] for k in ("config", "inputs", "values", "scripts")})
            # The method's section is passed as "method_cfg"; users know it by the method's name.
            return [c.replace("config.method_cfg.", f"{self.method}.", 1) for c in changes]
        # Layout 1 (before the method seam): compare what both versions record.
        now = self.state(stage, only_inputs=set(old.get("inputs", {})))
        config = diff(_v1_config(old.get("config", {}), self.method), flatten(now["config"]), only_common=True)
        inputs = diff(old.get("inputs", {}), now["inputs"], only_common=True)
        return [f"config.{c}" for c in config] + [f"inputs.{c}" for c in inputs]

    def refuse_if_changed(self, stage: Stage) -> None:
        old = read_manifest(stage.dir)
        if old is None or old.get("status") != "done":
            return
        changes = self.changes(stage, old)
        if changes:
            raise TripostError(
                f"stage {stage.id} ({stage.dir}) is finished but its config or inputs changed:\n  "
                + "\n  ".join(changes[:20])
                + f"\nRerun with --force-from {stage.id} to redo it and every later stage (old "
                "directories are moved aside, not deleted), or restore the old values.")

    def run(self, stage: Stage) -> dict:
        """Run a stage unless it is done and unchanged; return its manifest."""
        if stage.lock is None:
            return self._run(stage)
        stage.lock.parent.mkdir(parents=True, exist_ok=True)
        with stage.lock.open("w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # another run building the same base: wait for it
            try:
                return self._run(stage)
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _run(self, stage: Stage) -> dict:
        old = read_manifest(stage.dir)
        if old is not None and old.get("status") == "done":
            self.refuse_if_changed(stage)
            return old
        now = self.state(stage)
        if old is not None and old.get("fingerprint") != now["fingerprint"]:
            # An unfinished stage started under another config: its partial output is not ours.
            moved = move_aside(stage.dir)
            print(f"[iterate] {stage.id}: config changed since it was interrupted; "
                  f"moved its partial output to {moved.name}", file=sys.stderr)
        start = time.time()
        manifest = {"stage": stage.id, "layout": LAYOUT, "status": "running", **now, "code": code_info(),
                    "counts": {}, "timings": {"start": _iso(start)}}
        io.write_json(stage.dir / MANIFEST, manifest)
        print(f"[iterate] {stage.id} ...", file=sys.stderr, flush=True)
        counts = stage.fn(out=stage.dir, **stage.config, **resolve(stage.inputs), **now["values"]) or {}
        end = time.time()
        manifest.update(status="done", counts=counts,
                        timings={"start": _iso(start), "end": _iso(end), "seconds": round(end - start, 3)})
        io.write_json(stage.dir / MANIFEST, manifest)  # last: the stage is done only once this lands
        print(f"[iterate] {stage.id} done in {end - start:.1f}s", file=sys.stderr, flush=True)
        return manifest


def _paths(x) -> list[Path]:
    if isinstance(x, dict):
        return [p for v in x.values() for p in _paths(v)]
    if isinstance(x, list):
        return [p for v in x for p in _paths(v)]
    return [x]


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def move_aside(path: Path) -> Path:
    """Rename a stage directory to <name>.old-<n> (never delete a user's outputs)."""
    n = 1
    while (target := path.with_name(f"{path.name}.old-{n}")).exists():
        n += 1
    path.rename(target)
    return target
