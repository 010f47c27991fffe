"""Feedback throughput and API economy. Prints numbers; asserts nothing.

    python bench/feedback.py                 # defaults: 2000 attempts, 60 API trajectories
    python bench/feedback.py --n 5000 --api-n 120

(a) Scripted feedback: feedback_scripts/multistep_arithmetic.py's `feedback` called directly on
    gold and corrupted attempts (one core; target >= 2,000 attempts/s), then the same requests
    through ScriptExpert (the worker-process path `tripost edit` uses, edit.script_workers workers).
(b) LLM feedback and improvement: `tripost.edit.edit` with edit.feedback=llm / edit.improvement=llm
    against the local fake Messages server (tests/fake_messages_server.py, judging against gold
    rationales): API calls per kept trajectory, then a rerun into a fresh output directory sharing
    the response cache: its cache hit rate (target 100%) and the requests the server saw (target 0).
(c) Parsing hostile model text (--parsing): tripost.steps.parse_feedback, parse_steps,
    extract_final_answer and split_continuation (tripost.methods.tripost; tripost.steps before the
    method seam) on inputs of 10k, 100k and 1M characters built to provoke quadratic work (long
    runs of spaces, many "In step (" heads, many lines); time per call in ms, each call in a forked
    child killed after --limit-s seconds. Run it against another checkout to compare:

        python bench/feedback.py --parsing                          # this checkout
        PYTHONPATH=/tmp/wt-old python bench/feedback.py --parsing   # e.g. a worktree of 65ec9aa
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# This checkout's tripost only as a fallback: PYTHONPATH (another checkout, for --parsing) wins.
sys.path.append(str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from tripost import steps  # noqa: E402


def corrupt(attempt: str, i: int) -> str:
    """Gold with one wrong number: step k's last number off by one (k varies with i)."""
    st = steps.parse_steps(attempt)
    k = 1 + i % (len(st) - 2) if len(st) > 2 else 0
    text = st[k].text
    st[k] = steps.Step(st[k].label, text[:-1] + ("1." if not text[:-1].endswith("1") else "2."))
    return steps.render_steps(st)


def make_attempts(n: int):
    from tripost.config import load_config
    from tripost.tasks import get_task

    cfg = load_config(None, [("task.name", "multistep_arithmetic"), ("task.max_train", n)])
    task = get_task(cfg.task)
    examples = task.load("train")[:n]
    pairs = []
    for i, ex in enumerate(examples):
        gold = task.gold_rationale(ex)
        pairs.append((ex, gold if i % 2 == 0 else corrupt(gold, i), gold))
    return cfg, task, pairs


def bench_scripted(n: int) -> None:
    from tripost.experts import ScriptExpert, example_dict

    cfg, _, pairs = make_attempts(n)
    path = ROOT / "feedback_scripts" / "multistep_arithmetic.py"
    spec = importlib.util.spec_from_file_location("fb_script", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    items = [(example_dict(ex), attempt) for ex, attempt, _ in pairs]
    module.feedback(*items[0])  # warm up
    start = time.perf_counter()
    out = [module.feedback(ex, attempt) for ex, attempt in items]
    direct = len(items) / (time.perf_counter() - start)
    n_correct = sum(steps.says_correct(f) for f in out)
    print(f"(a) scripted feedback, direct call, one core: {direct:,.0f} attempts/s "
          f"({len(items)} attempts, {n_correct} judged correct, target >= 2,000/s)")

    expert = ScriptExpert(path, cfg.edit)
    try:
        requests = [(ex, attempt) for ex, attempt, _ in pairs]
        start = time.perf_counter()
        replies = expert.feedback_many(requests)
        via = len(requests) / (time.perf_counter() - start)
    finally:
        expert.close()
    errors = sum(r.error is not None for r in replies)
    same = sum(r.text == f for r, f in zip(replies, out))
    print(f"    through ScriptExpert ({cfg.edit.script_workers} workers): {via:,.0f} attempts/s "
          f"({errors} errors, {same}/{len(replies)} identical to the direct call)")


def bench_api(n: int) -> None:
    from fake_messages_server import FakeMessagesServer, gold_rule
    from tripost import io, records
    from tripost.config import load_config, method_config
    from tripost.edit import edit

    _, task, pairs = make_attempts(n)
    golds = {ex.question: gold for ex, _, gold in pairs}
    key_env = "TRIPOST_BENCH_FAKE_KEY"
    os.environ[key_env] = "sk-bench-fake"
    with tempfile.TemporaryDirectory() as tmp, FakeMessagesServer(rule=gold_rule(golds)) as server:
        tmp = Path(tmp)
        attempts = tmp / "attempts.jsonl"
        io.write_jsonl(attempts, [records.Trajectory.of(ex, "tripost", status="kept", stage="collect", messages=[
            records.Message("learner", "attempt", attempt, "model:learner")]) for ex, attempt, _ in pairs])
        overrides = [("task.name", "multistep_arithmetic"), ("task.max_train", n), ("edit.feedback", "llm"),
                     ("edit.improvement", "llm"), ("edit.api.base_url", server.url), ("edit.api.api_key_env", key_env),
                     ("edit.api.model", "claude-fake"), ("edit.api.cache_dir", str(tmp / "cache"))]
        cfg = load_config(None, overrides)

        def run(out: Path) -> dict:
            return edit(task, cfg.edit, cfg.method, method_config(cfg), attempts, out, progress=False)

        start = time.perf_counter()
        summary = run(tmp / "run1")
        wall = time.perf_counter() - start
        calls = len(server.answered)
        kept = summary["kept"]
        print(f"(b) LLM edit against the fake server: {n} attempts -> {kept} kept, {summary['dropped']} dropped; "
              f"{calls} API calls = {calls / max(kept, 1):.2f} calls per kept trajectory "
              f"(kept messages {summary['kept_messages']}), {wall:.1f}s")
        before = len(server.requests)
        summary2 = run(tmp / "run2")
        usage = json.loads((tmp / "run2" / "api_usage.json").read_text())
        hits, sent = usage["cache_hits"], usage["sent"]
        print(f"    rerun into a fresh output dir, same cache: hit rate {hits / max(hits + sent, 1):.1%} "
              f"({hits} hits, {sent} sent), server saw {len(server.requests) - before} new requests; "
              f"same trajectories: {_same(tmp / 'run1', tmp / 'run2')}; kept {summary2['kept']}")


def _same(a: Path, b: Path) -> bool:
    def lines(d: Path) -> list[str]:
        return sorted((d / "trajectories.jsonl").read_text().splitlines())
    return lines(a) == lines(b)


# ----------------------------------------------------------------------------------------------
# (c) Parsing hostile text


PARSING_SIZES = (10_000, 100_000, 1_000_000)


def parsing_functions() -> dict:
    """The four parsers of model text, wherever this tripost keeps them."""
    try:
        from tripost.methods.tripost import split_continuation
    except ImportError:  # before the method seam (65ec9aa) it lived in tripost.steps
        split_continuation = steps.split_continuation
    return {"parse_feedback": steps.parse_feedback, "parse_steps": steps.parse_steps,
            "extract_final_answer": steps.extract_final_answer, "split_continuation": split_continuation}


def hostile_text(kind: str, n: int) -> str:
    """About n characters of text that a backtracking or re-copying parser spends O(n^2) on."""
    def fill(unit: str, head: str = "", tail: str = "") -> str:
        return head + unit * max(1, (n - len(head) - len(tail)) // len(unit)) + tail

    return {
        "spaces": fill(" ", 'In step (1) the part "x" is incorrect.', "x"),
        "step heads": fill('In step (1) the part "'),
        "part ends": fill('" is incorrect. ', 'In step (1) the part "', "x"),
        "many lines": fill("x\n", "(1) a\n"),
        "answer heads": fill("the answer is "),
        "feedback marks": fill("Feedback: Updated Answer: "),
    }[kind]


HOSTILE_KINDS = ("spaces", "step heads", "part ends", "many lines", "answer heads", "feedback marks")


def _timed_call(name: str, kind: str, n: int, conn) -> None:
    """Send the best of up to 3 timed calls (one if a call takes over 0.1 s)."""
    text = hostile_text(kind, n)
    fn = parsing_functions()[name]
    best = math.inf
    for _ in range(3):
        start = time.perf_counter()
        fn(text)
        best = min(best, time.perf_counter() - start)
        if best > 0.1:
            break
    conn.send(best)


def time_call(name: str, kind: str, n: int, limit_s: float) -> float | None:
    """Seconds one call took, in a forked child; None if it ran past limit_s (killed)."""
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    receive, send = ctx.Pipe(duplex=False)
    child = ctx.Process(target=_timed_call, args=(name, kind, n, send))
    child.start()
    took = receive.recv() if receive.poll(limit_s) else None
    if child.is_alive():
        child.kill()
    child.join()
    return took


def bench_parsing(limit_s: float) -> None:
    import tripost

    print(f"(c) parsing hostile text: tripost {getattr(tripost, '__version__', '?')} from "
          f"{Path(tripost.__file__).parent}; ms per call ('>' = killed after {limit_s:g} s)")
    print(f"    {'function':<22} {'input':<16}" + "".join(f"{n:>12,}" for n in PARSING_SIZES))
    for name in parsing_functions():
        for kind in HOSTILE_KINDS:
            cells, timed_out = [], False
            for n in PARSING_SIZES:
                took = None if timed_out else time_call(name, kind, n, limit_s)
                timed_out = took is None  # a larger input would only take longer
                cells.append(f">{limit_s * 1000:,.0f}" if took is None else f"{took * 1000:,.1f}")
            print(f"    {name:<22} {kind:<16}" + "".join(f"{c:>12}" for c in cells), flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=2000, help="attempts for the scripted benchmark")
    p.add_argument("--api-n", type=int, default=60, help="attempts for the API benchmark")
    p.add_argument("--parsing", action="store_true", help="only (c): parsing hostile text (works with an older "
                   "checkout on PYTHONPATH)")
    p.add_argument("--limit-s", type=float, default=10.0, help="(c): seconds before a call is killed")
    args = p.parse_args()
    if args.parsing:
        bench_parsing(args.limit_s)
        return
    bench_scripted(args.n)
    bench_api(args.api_n)
    bench_parsing(args.limit_s)


if __name__ == "__main__":
    main()
