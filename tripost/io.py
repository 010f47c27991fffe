"""Files: the one JSONL reader, the one appender, the one atomic writer and the one hasher.

    for line, obj in jsonl_objects(path):          # every JSONL file tripost reads
        ...
    with JsonlAppender(path) as out:               # resumable outputs: a line per record
        out.write(record); out.flush()
    write_jsonl(path, records)                     # whole files, atomically
    write_json(path, data) / write_text(path, text)
    sha256_path(path)                              # a file or a model directory, by content
    content_id("task", "question", "answer")       # short stable ids

Resumable outputs are appended to and fsynced per batch, so a job killed at any moment loses at
most the batch in flight. A kill can tear the last line; the appender cuts a torn tail off when it
reopens the file, and `done_ids` (which reads a stage's own output) skips it. Every other read is
strict: a torn or malformed line, or bytes that are not UTF-8, is an error naming FILE:LINE.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import Iterator

from tripost.errors import TripostError, where


def content_id(*parts: str) -> str:
    """A short stable hash of the given strings (16 hex characters of sha256)."""
    h = hashlib.sha256()
    for part in parts:
        h.update(part.encode())
        h.update(b"\x00")
    return h.hexdigest()[:16]


def to_json(record) -> str:
    """One JSON line for a dataclass record or a plain dict."""
    data = dataclasses.asdict(record) if dataclasses.is_dataclass(record) else record
    return json.dumps(data, ensure_ascii=False)


# ----------------------------------------------------------------------------------------------
# Reading


def jsonl_objects(path: str | Path, allow_torn_tail: bool = False) -> Iterator[tuple[int, dict]]:
    """Yield (line number, JSON object) for each non-blank line. Anything else is a TripostError
    naming FILE:LINE. `allow_torn_tail`: a torn last line (an append killed mid-line, which the
    resumable writer redoes) is skipped; only a stage reading its own output passes True."""
    path = Path(path)
    if not path.is_file():
        raise TripostError(f"{path}: file not found")
    with path.open("rb") as f:
        lines = f.read().split(b"\n")
    last = len(lines) - 1 if lines and lines[-1] == b"" else len(lines)  # a final "\n" ends no line
    for i, raw in enumerate(lines[:last], start=1):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise TripostError(f"{where(path, i)}: not UTF-8 text (byte {e.start + 1} of the line)") from None
        if not text.strip():
            continue
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            torn = i == len(lines)  # the file does not end with a newline: this line may be cut off
            if allow_torn_tail and torn:
                return
            why = "the last line is cut off (no newline at its end)" if torn else f"{e.msg} at column {e.colno}"
            raise TripostError(f"{where(path, i)}: malformed JSON ({why})") from None
        if not isinstance(data, dict):
            raise TripostError(f"{where(path, i)}: expected a JSON object, got {type(data).__name__}")
        yield i, data


def done_ids(path: str | Path) -> set[str]:
    """Ids already in a stage's own resumable output file (none if it does not exist yet)."""
    path = Path(path)
    if not path.exists():
        return set()
    return {str(d.get("id")) for _, d in jsonl_objects(path, allow_torn_tail=True)}


# ----------------------------------------------------------------------------------------------
# Writing


class JsonlAppender:
    """Append records one line at a time; `flush` makes them durable (fsync). A torn last line
    left by a kill is cut off on open."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        _truncate_torn_tail(self.path)
        self._f = self.path.open("a", encoding="utf-8")

    def write(self, record) -> None:
        self._f.write((record if isinstance(record, str) else to_json(record)) + "\n")

    def flush(self) -> None:
        self._f.flush()
        os.fsync(self._f.fileno())

    def close(self) -> None:
        self.flush()
        self._f.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _truncate_torn_tail(path: Path) -> None:
    if not path.exists() or path.stat().st_size == 0:
        return
    with path.open("rb+") as f:
        data = f.read()
        if not data.endswith(b"\n"):
            f.truncate(data.rfind(b"\n") + 1)


def write_text(path: str | Path, text: str) -> None:
    """Write a whole file atomically: a temp file beside it, fsync, rename over the old one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with tmp.open("w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_json(path: str | Path, data) -> None:
    write_text(path, json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n")


def write_jsonl(path: str | Path, records) -> None:
    write_text(path, "".join((r if isinstance(r, str) else to_json(r)) + "\n" for r in records))


def read_json(path: str | Path):
    """A JSON file tripost wrote, or a TripostError naming it."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise TripostError(f"{path}: file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise TripostError(f"{path}: malformed JSON ({e})") from None


# ----------------------------------------------------------------------------------------------
# Hashing

# Files larger than this are hashed by size + first and last MiB, so checking a finished run that
# holds a multi-GB checkpoint stays fast.
_FULL_HASH_LIMIT = 64 * 2**20
_SAMPLE = 2**20
# Files in a directory that are bookkeeping, not content (logs, timings and completion markers
# differ between two identical runs).
BOOKKEEPING = {"manifest.json", "train_log.jsonl", "timings.json", "COMPLETE"}
# What tripost 0.1 skipped (it hashed the COMPLETE marker, whose timestamp made two identical runs
# differ); used only to compare with the manifests of run directories it wrote.
BOOKKEEPING_V1 = {"manifest.json", "train_log.jsonl", "timings.json"}


def sha256_file(path: str | Path) -> str:
    path = Path(path)
    h = hashlib.sha256()
    size = path.stat().st_size
    with path.open("rb") as f:
        if size <= _FULL_HASH_LIMIT:
            for block in iter(lambda: f.read(2**20), b""):
                h.update(block)
        else:
            h.update(f"size={size}".encode())
            h.update(f.read(_SAMPLE))
            f.seek(size - _SAMPLE)
            h.update(f.read(_SAMPLE))
    return h.hexdigest()


def sha256_path(path: str | Path, skip: set = BOOKKEEPING) -> str:
    """Hash of a file, or of a directory's top-level files (a model directory: weights, config,
    tokenizer). Subdirectories (checkpoints) and bookkeeping files (`skip`) are left out."""
    path = Path(path)
    if path.is_file():
        return sha256_file(path)
    if not path.is_dir():
        raise TripostError(f"{path}: input not found")
    h = hashlib.sha256()
    for child in sorted(path.iterdir()):
        if child.is_file() and child.name not in skip and not child.name.endswith(".tmp") \
                and not child.name.startswith("."):
            h.update(child.name.encode() + b"\x00" + sha256_file(child).encode() + b"\x00")
    return h.hexdigest()


def sha256_json(data) -> str:
    """Hash of JSON-able data, independent of key order."""
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()
