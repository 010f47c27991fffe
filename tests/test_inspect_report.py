"""`tripost inspect` and `tripost report` on a real (tiny) run directory made by `tripost iterate`
with the demo's scripted feedback (and a scripted learner: conftest.scripted_iterate)."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import TINY_RUN_OVERRIDES, scripted_iterate
from tripost.cli import main as cli_main
from tripost.records import Message
from tripost.tools.inspect import Style, show_tokens

TINY = [*TINY_RUN_OVERRIDES, "train.log_every_steps=1"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("run")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(scripted_iterate("--name", "r", *TINY), cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return cwd / "runs" / "r"


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    code = cli_main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_inspect_trajectories_and_summary(run_dir, capsys):
    edit = run_dir / "round_1/edit"
    # The (scripted) learner's attempts are all wrong: the script edits or drops every one of them.
    kept = sum(1 for _ in open(edit / "trajectories.jsonl"))
    dropped = sum(1 for _ in open(edit / "dropped.jsonl"))
    assert kept + dropped == 10
    path = edit / ("trajectories.jsonl" if kept else "dropped.jsonl")
    code, out, _ = run_cli(capsys, "inspect", str(path), "--limit", "2")
    assert code == 0
    assert "Q: " in out and "learner attempt by model:learner" in out
    assert "learner feedback by script:multistep_arithmetic.py" in out
    assert "status: " in out and "by status:" in out and "messages per trajectory:" in out
    assert "\x1b[" not in out  # not a terminal: no colour codes
    assert out.count("learner attempt by") == min(2, kept or dropped)

    code, out, _ = run_cli(capsys, "inspect", str(run_dir / "round_1/collect/attempts.jsonl"), "--summary")
    assert code == 0 and out.startswith("10 records")
    assert "by status: kept: 10" in out and "correct: 0 of 10" in out
    code, out, _ = run_cli(capsys, "inspect", str(run_dir / "round_1/collect/attempts.jsonl"), "--correct", "no",
                           "--summary")
    assert code == 0 and out.startswith("10 records")

    if dropped:
        reason = json.loads(open(edit / "dropped.jsonl").readline())["drop_reason"]
        code, out, _ = run_cli(capsys, "inspect", str(edit / "dropped.jsonl"), "--drop-reason", reason)
        assert code == 0 and f"drop reason: {reason}" in out and f"by drop reason: {reason}" in out


def test_inspect_examples_tokens(run_dir, capsys, tmp_path):
    examples = run_dir / "round_1/process/learner.jsonl"
    kinds = {json.loads(line)["kind"] for line in open(examples)}
    kind = "improvement" if "improvement" in kinds else sorted(kinds)[0]
    code, out, _ = run_cli(capsys, "inspect", str(examples), "--kind", kind, "--limit", "1", "--tokens",
                           "--tokenizer", str(run_dir / "round_0/init_model"))
    assert code == 0
    assert f"  {kind}  trains learner  (from " in out and "[user w=0]" in out and "by kind:" in out
    # Plain mode brackets each token with its weight: the question 0, the attempt 1, feedback w (1.5).
    weights = set(re.findall(r"\|(\d+(?:\.\d+)?)\]", out))
    assert {"0", "1"} <= weights
    if kind == "improvement":
        assert "1.5" in weights
    # Without --tokenizer: the tokenizer of the run the file lies in.
    code, out2, _ = run_cli(capsys, "inspect", str(examples), "--kind", kind, "--limit", "1", "--tokens")
    assert code == 0 and set(re.findall(r"\|(\d+(?:\.\d+)?)\]", out2)) == weights
    # A file outside a run directory needs --tokenizer.
    shutil.copy(examples, tmp_path / "learner.jsonl")
    code, out, err = run_cli(capsys, "inspect", str(tmp_path / "learner.jsonl"), "--tokens")
    assert code == 2 and "--tokenizer" in err
    # A filter value the file does not have is an error that lists the values it does have.
    code, out, err = run_cli(capsys, "inspect", str(examples), "--kind", "nosuch")
    assert code == 2 and "nosuch" in err and repr(kind) in err


def test_token_colours_on_a_terminal():
    out = show_tokens(["Q: 1", " (1)", " Feedback"], [0.0, 1.0, 1.5], Style(True))
    assert "\x1b[2mQ: 1\x1b[0m" in out  # weight 0: dim
    assert "\x1b[0m (1)\x1b[1m" in out  # weight 1: plain, no style of its own
    assert "\x1b[1m\x1b[35m Feedback\x1b[0m" in out  # weight w: bold magenta


def test_inspect_rejects_unknown_records(tmp_path, capsys):
    bad = tmp_path / "x.jsonl"
    bad.write_text('{"schema": "something/9", "id": "a"}\n')
    code, _, err = run_cli(capsys, "inspect", str(bad))
    assert code == 2 and f"{bad}:1" in err and "unknown record schema" in err


def test_report_has_plots_and_escaped_trajectories(run_dir, tmp_path, capsys):
    copy = tmp_path / "r"
    shutil.copytree(run_dir, copy)
    # A record with markup in it must show as text, not become markup.
    path = copy / "round_1/edit/trajectories.jsonl"
    rec = json.loads((copy / "round_1/collect/attempts.jsonl").read_text().splitlines()[0])
    rec.update(id="ffffffffffffffff", question="<script>alert(1)</script> & (1 + 2) =", status="kept",
               correct=True, stage="edit")
    attempt = "(1) <b>bold?</b>\n(Final response) So the answer is 3."
    feedback = "Step (1) is correct. The final response is also correct."
    rec["messages"] = [dataclasses.asdict(m) for k in range(3) for m in (
        Message("learner", "attempt" if k == 0 else "update", attempt, "model:learner", round=k, answer="3",
                correct=True),
        Message("learner", "feedback", feedback, "script:multistep_arithmetic.py", round=k))]
    with path.open("a") as f:
        f.write(json.dumps(rec) + "\n")
    out = tmp_path / "report.html"
    code, stdout, _ = run_cli(capsys, "report", str(copy), "--out", str(out))
    assert code == 0 and str(out) in stdout
    page = out.read_text()
    assert '<img alt="method metrics per round"' in page  # the SI metrics of the summary rows
    assert page.count('<img alt="') >= 4 and page.count("data:image/png;base64,") >= 4
    assert "training loss" in page and "accuracy per round" in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt; &amp; (1 + 2) =" in page
    assert "<script>" not in page and "&lt;b&gt;bold?&lt;/b&gt;" in page
    assert "Sample trajectories" in page and "learner attempt by model:learner" in page
    assert "baseline" in page and "<table>" in page
    # Every accuracy with its 95% interval, each arm against the baseline of its round (paired).
    assert "acc (all) [95% CI]" in page and "vs baseline (paired)" in page
    summary = json.loads((copy / "summary.json").read_text())
    tripost_row = next(r for r in summary["rows"] if r["round"] == 1 and r["arm"] == "tripost")
    lo, hi = tripost_row["accuracy_ci"]
    assert f"[{100 * lo:.1f}, {100 * hi:.1f}]" in page
    d = tripost_row["vs_baseline"]
    assert f"{100 * d['difference']:+.1f} [{100 * d['ci_low']:+.1f}, {100 * d['ci_high']:+.1f}]" in page
    # Default location: inside the run directory.
    code, stdout, _ = run_cli(capsys, "report", str(copy))
    assert code == 0 and (copy / "report.html").is_file()


def test_accuracy_plot_has_error_bars(monkeypatch):
    """The accuracy plot draws each point's 95% interval (Wilson) as an error bar."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.axes import Axes

    from tripost.tools.report import plot_metric_lines

    bars = []
    original = Axes.errorbar
    monkeypatch.setattr(Axes, "errorbar", lambda self, x, y, **kw: bars.append((list(x), list(y), kw["yerr"]))
                        or original(self, x, y, **kw))
    rows = [{"round": 0, "arm": "warm-up", "accuracy_seen": 0.2, "accuracy_seen_ci": [0.1, 0.3]},
            {"round": 1, "arm": "tripost", "accuracy_seen": 0.4, "accuracy_seen_ci": [0.3, 0.55]},
            {"round": 1, "arm": "baseline", "accuracy_seen": 0.3, "accuracy_seen_ci": [0.2, 0.4]}]
    assert plot_metric_lines(rows, [("accuracy_seen", "seen")], "t") is not None
    assert len(bars) == 2
    xs, ys, (low, high) = bars[0]
    assert xs == [0, 1] and ys == [20.0, 40.0]
    assert [round(v, 6) for v in low] == [10.0, 10.0] and [round(v, 6) for v in high] == [10.0, 15.0]
