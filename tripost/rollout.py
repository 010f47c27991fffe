"""The resumable loop around the driver: collect, evaluate and edit all run through `run_episodes`.

    counts = run_episodes(todo, answerers, {"kept": out_path}, window=128, desc="collect")

`todo` is a list of (id, episode) for the questions not yet done; finished records are appended to
the file of their status ({"kept": ..., "dropped": ...}) and flushed after every batch, so a killed
job loses at most the batch in flight and a rerun (which skips ids already in the files) picks up
where it stopped. A record whose status has no file (an edit left "pending" by a transient API
failure) is counted and not written, so the rerun tries it again.
"""

from __future__ import annotations

import sys
from collections import Counter
from contextlib import ExitStack
from pathlib import Path

from tripost.engine import drive
from tripost.io import JsonlAppender, done_ids


def todo_examples(examples: list, outputs: dict[str, Path]) -> list:
    """The examples (or trajectories) whose ids are not in any output file yet, each id once."""
    done: set[str] = set()
    for path in outputs.values():
        done |= done_ids(path)
    out = []
    for ex in examples:
        if ex.id not in done:
            done.add(ex.id)
            out.append(ex)
    return out


def run_episodes(todo: list, answerers: dict, outputs: dict[str, Path], window: int, desc: str,
                 progress: bool = True) -> Counter:
    """Drive the episodes of `todo` ([(id, episode)]) and append each record to outputs[status].
    Returns counts by status, of correct records, and by stop reason ("stop:<reason>")."""
    from tqdm import tqdm

    counts: Counter = Counter()
    bar = tqdm(total=len(todo), desc=desc, unit="q", file=sys.stderr, disable=not progress)
    with ExitStack() as stack:
        files = {status: stack.enter_context(JsonlAppender(path)) for status, path in outputs.items()}
        try:
            for finished in drive([ep for _, ep in todo], answerers, window):
                for record in finished:
                    counts[record.status] += 1
                    counts["correct"] += record.correct
                    counts["stop:" + record.stop] += 1
                    if record.status in files:
                        files[record.status].write(record)
                for f in files.values():
                    f.flush()
                bar.update(len(finished))
        finally:
            bar.close()
    return counts
