"""The edit rules (tripost/methods/tripost.py, run by tripost/edit.py) with a tiny deterministic fake expert, and end to end with the
real feedback scripts once they exist.

The fake expert knows a gold attempt per question: its feedback names the first step that differs
from the gold one; its improvement does whatever `mode` says (fix everything, fix one step, change
nothing, ...). Attempts files are written by hand, as `tripost collect` would.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

import pytest

from tripost import io, records, steps
from tripost.config import PROJECT_ROOT, load_config, method_config
from tripost.edit import edit as edit_stage
from tripost.edit import format_summary
from tripost.experts import Expert, Reply
from tripost.methods.tripost import agrees, attempt_progress, feedback_progress, turns_of
from tripost.records import Message, Trajectory
from tripost.tasks.base import Task, make_example

MODEL = "model:learner"  # the author of the model's own turns in an attempts file

GOLD = """(1) This equation can be written as "A * B", where A = (2 + 3) and B = (4 * 2).
(2) Let's calculate A = (2 + 3) = 5.
(3) Let's calculate B = (4 * 2) = 8.
(4) Then, the final equation is A * B = 5 * 8 = 40.
(Final response) So the answer is 40."""


def variant(text: str, **changes: str) -> str:
    """GOLD with some steps replaced: variant(GOLD, s3="...", final="41")."""
    out = []
    for st in steps.parse_steps(text):
        key = "final" if st.label == steps.FINAL else f"s{st.label}"
        if key in changes:
            st = steps.Step(st.label, f"So the answer is {changes[key]}." if key == "final" else changes[key])
        out.append(st)
    return steps.render_steps(out)


WRONG_B = variant(GOLD, s3="Let's calculate B = (4 * 2) = 9.",
                  s4="Then, the final equation is A * B = 5 * 9 = 45.", final="45")
WRONG_FINAL = variant(GOLD, s4="Then, the final equation is A * B = 5 * 8 = 45.", final="45")


class FakeExpert(Expert):
    """Feedback against a gold attempt per question id; improvement by `mode`:
    fix_all (return the gold attempt), fix_one (repair only the first wrong step),
    noop (return the same attempt), break_prefix (repair the wrong step but change step 1)."""

    def __init__(self, gold: dict[str, str], mode: str = "fix_all", name: str = "script:fake.py"):
        self.gold, self.mode, self.name = gold, mode, name
        self.provenance = {"fake": True}
        self.calls = Counter()
        self.seen_ids: list[str] = []

    def first_wrong(self, ex, attempt):
        gold, mine = steps.parse_steps(self.gold[ex.id]), steps.parse_steps(attempt)
        for k, (g, m) in enumerate(zip(gold, mine)):
            if g != m:
                return k, g, m
        return None

    def _feedback(self, ex, attempt):
        wrong = self.first_wrong(ex, attempt)
        if wrong is None:
            return steps.feedback_correct(len(steps.parse_steps(attempt)) - 1)
        k, g, m = wrong
        return steps.feedback_wrong(k, m.label, m.text, f"it should be: {g.text}")

    def feedback_many(self, requests):
        self.calls["feedback"] += len(requests)
        self.seen_ids += [ex.id for ex, _ in requests]
        return [Reply(self._feedback(ex, a)) for ex, a in requests]

    def _improve(self, ex, attempt):
        if self.mode == "noop":
            return attempt
        gold = steps.parse_steps(self.gold[ex.id])
        if self.mode == "fix_all":
            return self.gold[ex.id]
        k, g, _ = self.first_wrong(ex, attempt)
        mine = steps.parse_steps(attempt)
        mine[k] = g
        if self.mode == "break_prefix":
            mine[0] = steps.Step("1", "Something else entirely.")
        return steps.render_steps(mine)

    def improve_many(self, requests):
        self.calls["improve"] += len(requests)
        return [Reply(self._improve(ex, a)) for ex, a, _ in requests]


class Arith(Task):
    name = "toy"


@pytest.fixture()
def cfg():
    return load_config(None, [("tripost.max_improvements", 3), ("edit.batch_size", 4)])


@pytest.fixture()
def task(cfg):
    return Arith(cfg.task)


def example(i: int = 0, answer: str = "40"):
    return make_example("toy", f"((2 + 3) * (4 * 2)) = [{i}]", answer)


def attempts_file(tmp_path: Path, trajs: list[Trajectory]) -> Path:
    path = tmp_path / "attempts.jsonl"
    io.write_jsonl(path, trajs)
    return path


def model_traj(ex, *turns: tuple[str, str | None], round_: int = 1) -> Trajectory:
    """The model's trajectory as collect writes it: attempt, then updates, each with the model's
    own feedback when it gave some."""
    messages = []
    for i, (attempt, feedback) in enumerate(turns):
        messages.append(Message("learner", "attempt" if i == 0 else "update", attempt, MODEL, round=i))
        if feedback is not None:
            messages.append(Message("learner", "feedback", feedback, MODEL, round=i))
    return Trajectory.of(ex, "tripost", messages=messages, status="kept", stage="collect", round=round_)


def edit(cfg, attempts, out, task, expert: Expert | None = None) -> dict:
    """The edit stage with `expert` for both feedback and improvement (None: the experts of cfg.edit)."""
    experts = None if expert is None else {"feedback": expert, "improvement": expert}
    return edit_stage(task, cfg.edit, cfg.method, method_config(cfg), attempts, out, experts=experts,
                      progress=False)


def outcome(t: Trajectory) -> str:
    """What an edit made of a trajectory: dropped, correct (kept, right on the first attempt: a
    terminal example) or improved (kept, with updates)."""
    if t.status != "kept":
        return t.status
    return "correct" if len(turns_of(t)) == 1 else "improved"


def outcomes(out: Path) -> dict:
    """Outcome counts over an edit output directory."""
    trajs = [t for name in ("trajectories.jsonl", "dropped.jsonl") if (out / name).exists()
             for t in records.read_trajectories(out / name)]
    return dict(Counter(outcome(t) for t in trajs))


def model_turns_kept(t: Trajectory) -> int:
    return sum(1 for x in turns_of(t) if x.attempt_by == MODEL)


def run_one(tmp_path, cfg, task, traj, expert):
    summary = edit(cfg, attempts_file(tmp_path, [traj]), tmp_path / "out", task, expert)
    kept = records.read_trajectories(tmp_path / "out/trajectories.jsonl")
    dropped = records.read_trajectories(tmp_path / "out/dropped.jsonl")
    return summary, (kept + dropped)[0]


# ----------------------------------------------------------------------------------------------
# The small pieces


def test_progress_and_agreement_helpers():
    fb3 = steps.parse_feedback(steps.feedback_wrong(2, "3", "(4 * 2) = 9", "x"))
    assert attempt_progress(WRONG_B, "3", GOLD)
    assert not attempt_progress(WRONG_B, "3", WRONG_B)  # wrong step unchanged
    assert not attempt_progress(WRONG_B, "3", variant(GOLD, s1="(1) changed"))  # prefix changed
    assert attempt_progress(WRONG_B, "3", GOLD.replace("equation can", "equation   can") + "\n")  # spacing
    assert not attempt_progress(WRONG_B, "3", WRONG_B.replace("= 9.", "=  9.") + "\n")  # spacing only
    assert not attempt_progress(WRONG_B, "3", "(1) This equation")  # lost the step
    assert feedback_progress(fb3, steps.parse_feedback(steps.feedback_correct(4))) is None
    assert feedback_progress(fb3, steps.parse_feedback(steps.feedback_wrong(3, "4", "x", "y"))) is None
    assert feedback_progress(fb3, steps.parse_feedback(steps.feedback_wrong(1, "2", "x", "y"))) == "regression"
    assert feedback_progress(fb3, fb3) == "no_progress"
    assert agrees(steps.feedback_wrong(2, "3", "other part", "z"), fb3)
    assert not agrees(steps.feedback_wrong(1, "2", "x", "z"), fb3)
    assert not agrees(steps.feedback_correct(4), fb3)
    assert not agrees(None, fb3) and not agrees("nonsense", fb3)


# ----------------------------------------------------------------------------------------------
# The rules


def test_already_correct_first_attempt_is_one_turn(tmp_path, cfg, task):
    ex = example()
    expert = FakeExpert({ex.id: GOLD})
    summary, t = run_one(tmp_path, cfg, task, model_traj(ex, (GOLD, None)), expert)
    turns = turns_of(t)
    assert outcome(t) == "correct" and t.correct and len(turns) == 1
    assert turns[0].attempt == GOLD and turns[0].attempt_by == MODEL
    assert steps.says_correct(turns[0].feedback) and turns[0].feedback_by == "script:fake.py"
    assert expert.calls == {"feedback": 1}
    assert t.round == 1 and t.stage == "edit"
    assert summary["experts"]["feedback"]["fake"] is True
    assert outcomes(tmp_path / "out") == {"correct": 1} and summary["kept"] == 1 and summary["dropped"] == 0


def test_fix_in_one_improvement(tmp_path, cfg, task):
    ex = example()
    expert = FakeExpert({ex.id: GOLD}, mode="fix_all")
    summary, t = run_one(tmp_path, cfg, task, model_traj(ex, (WRONG_B, None)), expert)
    turns = turns_of(t)
    assert outcome(t) == "improved" and t.correct
    assert [x.attempt_by for x in turns] == [MODEL, "script:fake.py"]
    assert steps.parse_feedback(turns[0].feedback).wrong_step == "3"
    assert turns[1].attempt == GOLD and steps.says_correct(turns[1].feedback)
    assert t.calls == 1 and t.stop == "disagreement"
    assert expert.calls == {"feedback": 2, "improve": 1}
    assert summary["calls"] == {"feedback": 2, "improve": 1}


def test_step_by_step_fixes_make_progress(tmp_path, cfg, task):
    ex = example()
    _, t = run_one(tmp_path, cfg, task, model_traj(ex, (WRONG_B, None)), FakeExpert({ex.id: GOLD}, "fix_one"))
    # step 3, then step 4, then the final response: three improvements, each progress
    turns = turns_of(t)
    assert outcome(t) == "improved" and len(turns) == 4
    assert [steps.parse_feedback(x.feedback).wrong_step for x in turns[:-1]] == ["3", "4", steps.FINAL]


def test_no_progress_is_dropped(tmp_path, cfg, task):
    ex = example()
    for mode in ("noop", "break_prefix"):
        out = tmp_path / mode
        out.mkdir()
        summary, t = run_one(out, cfg, task, model_traj(ex, (WRONG_B, None)), FakeExpert({ex.id: GOLD}, mode))
        assert t.status == "dropped" and t.drop_reason == "no_progress", mode
        assert summary["drop_reasons"] == {"no_progress": 1}
        assert turns_of(t)[-1].attempt_by == "script:fake.py"  # the rejected attempt is shown


def test_exceeding_max_improvements(tmp_path, cfg, task):
    ex = example()
    cfg.tripost.max_improvements = 2  # fix_one needs 3 improvements here
    expert = FakeExpert({ex.id: GOLD}, "fix_one")
    summary, t = run_one(tmp_path, cfg, task, model_traj(ex, (WRONG_B, None)), expert)
    assert t.drop_reason == "not_fixed_within_limit" and expert.calls["improve"] == 2
    assert "dropped: not_fixed_within_limit" in format_summary(summary)


def test_expert_accepts_a_wrong_answer(tmp_path, cfg, task):
    ex = example()
    _, t = run_one(tmp_path, cfg, task, model_traj(ex, (WRONG_B, None)), FakeExpert({ex.id: WRONG_B}))
    assert t.drop_reason == "expert_wrong_final"


def test_model_feedback_disagreement_is_where_editing_starts(tmp_path, cfg, task):
    ex = example()
    step3_fixed = variant(WRONG_B, s3="Let's calculate B = (4 * 2) = 8.")  # still wrong at step 4
    traj = model_traj(ex,
                      (WRONG_B, steps.feedback_wrong(2, "3", "(4 * 2) = 9", "4 * 2 is 8")),  # agrees
                      (step3_fixed, steps.feedback_correct(4)),  # disagrees: step 4 is wrong
                      (step3_fixed, None))  # the model's later turns are discarded
    expert = FakeExpert({ex.id: GOLD})
    _, t = run_one(tmp_path, cfg, task, traj, expert)
    turns = turns_of(t)
    assert outcome(t) == "improved"
    assert [x.attempt_by for x in turns] == [MODEL, MODEL, "script:fake.py"]
    assert all(x.feedback_by == "script:fake.py" for x in turns)
    assert steps.parse_feedback(turns[1].feedback).wrong_step == "4"  # expert's, not the model's
    assert t.stop == "disagreement" and model_turns_kept(t) == 2
    assert expert.calls == {"feedback": 3 + 1, "improve": 1}  # every model attempt was judged


def test_model_trajectory_that_agrees_throughout_needs_no_edit(tmp_path, cfg, task):
    ex = example()
    traj = model_traj(ex, (WRONG_B, steps.feedback_wrong(2, "3", "(4 * 2) = 9", "4 * 2 is 8")),
                      (GOLD, steps.feedback_correct(4)))
    expert = FakeExpert({ex.id: GOLD})
    _, t = run_one(tmp_path, cfg, task, traj, expert)
    assert outcome(t) == "improved" and [x.attempt_by for x in turns_of(t)] == [MODEL, MODEL]
    assert t.stop == "expert_says_correct" and expert.calls["improve"] == 0


def test_missing_model_feedback_counts_as_disagreement(tmp_path, cfg, task):
    ex = example()
    traj = model_traj(ex, (WRONG_B, "I think it is fine"), (GOLD, None))
    _, t = run_one(tmp_path, cfg, task, traj, FakeExpert({ex.id: GOLD}))
    # the unparseable model feedback at turn 0 starts the edit; the model's own fix is not used
    assert t.stop == "disagreement" and model_turns_kept(t) == 1
    assert [x.attempt_by for x in turns_of(t)] == [MODEL, "script:fake.py"]


def test_regression_truncates_before_it(tmp_path, cfg, task):
    ex = example()
    regressed = variant(GOLD, s2="Let's calculate A = (2 + 3) = 6.")  # fixed step 3, broke step 2
    traj = model_traj(ex, (WRONG_B, steps.feedback_wrong(2, "3", "(4 * 2) = 9", "4 * 2 is 8")),
                      (regressed, steps.feedback_correct(4)))
    expert = FakeExpert({ex.id: GOLD})
    _, t = run_one(tmp_path, cfg, task, traj, expert)
    # truncated to (question, WRONG_B, expert feedback); the expert improves from there
    assert t.stop == "model_regression"
    assert [x.attempt for x in turns_of(t)] == [WRONG_B, GOLD]
    assert outcome(t) == "improved"


def test_expert_errors_become_drop_reasons(tmp_path, cfg, task):
    ex1, ex2, ex3 = example(1), example(2), example(3)

    class Flaky(FakeExpert):
        def feedback_many(self, requests):
            out = super().feedback_many(requests)
            return [Reply(None, "llm_refused", "no") if ex.id == ex1.id else
                    Reply("this is not feedback") if ex.id == ex2.id else r
                    for (ex, _), r in zip(requests, out)]

    expert = Flaky({e.id: GOLD for e in (ex1, ex2, ex3)})
    trajs = [model_traj(e, (WRONG_B, None)) for e in (ex1, ex2, ex3)]
    summary = edit(cfg, attempts_file(tmp_path, trajs), tmp_path / "out", task, expert)
    assert summary["drop_reasons"] == {"llm_refused": 1, "feedback_unparseable": 1}
    assert summary["kept"] == 1 and summary["dropped"] == 2 and summary["pending"] == 0
    assert outcomes(tmp_path / "out") == {"dropped": 2, "improved": 1}
    dropped = {t.id: t for t in records.read_trajectories(tmp_path / "out/dropped.jsonl")}
    assert dropped[ex1.id].detail == "no"


def test_resume_does_not_redo_finished_ids(tmp_path, cfg, task):
    exs = [example(i) for i in range(10)]
    gold = {e.id: GOLD for e in exs}
    trajs = [model_traj(e, (GOLD if i % 3 == 0 else WRONG_B, None)) for i, e in enumerate(exs)]
    path = attempts_file(tmp_path, trajs)

    class Interrupted(FakeExpert):
        def feedback_many(self, requests):
            if self.calls["feedback"] >= 6:  # batch 1 (2 right, 2 wrong) needs 4 + 2 calls; die in batch 2
                raise KeyboardInterrupt
            return super().feedback_many(requests)

    first = Interrupted(gold)
    with pytest.raises(KeyboardInterrupt):
        edit(cfg, path, tmp_path / "out", task, first)
    done = io.done_ids(tmp_path / "out/trajectories.jsonl")
    assert done == {e.id for e in exs[:4]}

    second = FakeExpert(gold)
    summary = edit(cfg, path, tmp_path / "out", task, second)
    assert set(second.seen_ids) == {e.id for e in exs[4:]}
    assert summary["skipped_already_done"] == 4 and summary["edited_this_run"] == 6
    assert summary["kept"] == 10 and outcomes(tmp_path / "out") == {"correct": 4, "improved": 6}
    ids = [t.id for t in records.read_trajectories(tmp_path / "out/trajectories.jsonl")]
    assert sorted(ids) == sorted(e.id for e in exs)  # each exactly once

    third = FakeExpert(gold)  # nothing left: no expert calls at all
    edit(cfg, path, tmp_path / "out", task, third)
    assert third.calls == {}
    # The command on a finished output has nothing to do either; it writes the resolved config.
    from tripost.cli import main

    assert main(["edit", "--attempts", str(path), "--out", str(tmp_path / "out"), "edit.batch_size=4"]) == 0
    assert (tmp_path / "out/config.yaml").exists()
    assert len(records.read_trajectories(tmp_path / "out/trajectories.jsonl")) == 10
    # Which experts made the data (records carry no expert provenance) survives a rerun.
    summary = json.loads((tmp_path / "out/summary.json").read_text())
    assert summary["experts"]["feedback"]["fake"] is True and summary["kept"] == 10


def test_trajectory_with_no_turns(tmp_path, cfg, task):
    _, t = run_one(tmp_path, cfg, task, Trajectory.of(example(), "tripost", status="kept"), FakeExpert({}))
    assert t.drop_reason == "no_attempt"


# ----------------------------------------------------------------------------------------------
# With scripts: misbehaving ones are contained; the real built-in ones edit real attempts


SCRIPTS = Path(__file__).parent / "data/scripts"


def test_edit_with_misbehaving_scripts_counts_drop_reasons(tmp_path, cfg, task):
    exs = [example(i) for i in range(3)]
    path = attempts_file(tmp_path, [model_traj(e, (GOLD, None)) for e in exs])
    cfg.edit.script_timeout_s = 0.5
    cfg.edit.script_workers = 1
    cfg.tripost.max_improvements = 0
    for name, reason in [("raises", "script_error"), ("hangs", "script_timeout"), ("exits", "script_crashed")]:
        cfg.edit.feedback = f"script:{SCRIPTS / name}.py"
        cfg.edit.improvement = f"script:{SCRIPTS}/good.py"
        summary = edit(cfg, path, tmp_path / name, task)
        assert summary["drop_reasons"] == {reason: 3}, name
        assert summary["experts"]["feedback"]["script_sha256"]
    cfg.edit.feedback = f"script:{SCRIPTS}/good.py"
    summary = edit(cfg, path, tmp_path / "good", task)
    assert summary["kept"] == 3 and outcomes(tmp_path / "good") == {"correct": 3}


def test_cli_edit_missing_script_is_an_error(tmp_path, capsys):
    from tripost.cli import main

    ex = example()
    path = attempts_file(tmp_path, [model_traj(ex, (GOLD, None))])
    missing = tmp_path / "nope/feedback.py"
    code = main(["edit", "--attempts", str(path), "--out", str(tmp_path / "out"), "--task", "word_sorting",
                 f"edit.feedback=script:{missing}", f"edit.improvement=script:{missing}"])
    assert code == 2
    assert str(missing) in capsys.readouterr().err


def _real_script(name: str) -> Path:
    path = PROJECT_ROOT / "feedback_scripts" / f"{name}.py"
    if not path.exists():
        pytest.skip(f"{path} not written yet")
    return path


def corrupt_one_number(rationale: str, rng: random.Random) -> str | None:
    """Change one number inside one numbered step (not a step label): a wrong value, a wrong
    letter position, ... None if the rationale has no number to change."""
    import re

    lines = rationale.splitlines()
    spots = [(i, m) for i, line in enumerate(lines) if re.match(r"\(\d+\) ", line)
             for m in re.finditer(r"-?\d+", line[line.index(" "):])]
    if not spots:
        return None
    i, m = rng.choice(spots)
    start, end = m.start() + lines[i].index(" "), m.end() + lines[i].index(" ")
    lines[i] = lines[i][:start] + str(int(m.group()) + rng.choice([-3, -1, 1, 7])) + lines[i][end:]
    return "\n".join(lines)


BIGBENCH = Path(__file__).resolve().parents[2] / "shared/data/bigbench"


@pytest.mark.parametrize("task_name", ["multistep_arithmetic", "word_sorting"])
def test_end_to_end_with_the_real_scripts(tmp_path, task_name):
    """Attempts made from the task's gold rationales with one corrupted number, edited by the
    built-in script. Every third one is a two-turn model trajectory whose own feedback wrongly says
    "correct": editing must start at its first turn."""
    script = _real_script(task_name)
    overrides = [("task.name", task_name), ("task.max_train", 40), ("edit.feedback", f"script:{script}"),
                 ("edit.improvement", f"script:{script}"), ("edit.batch_size", 16)]
    if task_name == "word_sorting":
        if not (BIGBENCH / "word_sorting.json").exists():
            pytest.skip(f"{BIGBENCH} not available")
        overrides.append(("task.data_dir", str(BIGBENCH)))
    try:
        from tripost.tasks import get_task

        cfg = load_config(None, overrides)
        task = get_task(cfg.task)
        examples = task.load("train")
    except ImportError:
        pytest.skip(f"tripost.tasks.{task_name} not written yet")
    rng = random.Random(0)
    trajs, wrong_ids = [], set()
    for k, ex in enumerate(examples):
        gold = task.gold_rationale(ex)
        wrong = corrupt_one_number(gold, rng)
        if wrong is None or k % 5 == 4:  # some stay right: one-turn "correct" trajectories
            trajs.append(model_traj(ex, (gold, None), round_=0))
            continue
        wrong_ids.add(ex.id)
        n = sum(1 for st in steps.parse_steps(wrong) if st.label.isdigit())
        turns = [(wrong, None)]
        if k % 3 == 0:
            turns = [(wrong, steps.feedback_correct(n)), (wrong, None)]
        trajs.append(model_traj(ex, *turns, round_=2))
    assert len(wrong_ids) >= 25
    summary = edit(cfg, attempts_file(tmp_path, trajs), tmp_path / "out", task)
    assert summary["kept"] + summary["dropped"] == len(trajs)
    got = outcomes(tmp_path / "out")
    assert got.get("correct", 0) == len(trajs) - len(wrong_ids)
    # the script finds the corrupted number and its improvement fixes it
    assert got.get("improved", 0) >= 0.9 * len(wrong_ids), summary
    assert summary["experts"]["feedback"]["script_sha256"]
    for t in records.read_trajectories(tmp_path / "out/trajectories.jsonl"):
        turns = turns_of(t)
        assert task.is_correct(t.example(), turns[-1].attempt) and t.correct
        assert turns[0].attempt_by == MODEL
        assert all(x.attempt_by == f"script:{task_name}.py" for x in turns[1:])
        assert all(x.feedback_by == f"script:{task_name}.py" for x in turns)
        if t.id in wrong_ids:
            assert t.round == 2 and model_turns_kept(t) == 1
            assert t.stop == "disagreement"


def test_worked_example_in_docs_runs(tmp_path, monkeypatch, capsys):
    """docs/feedback_scripts.md: its script, config and data maker, run as the page says."""
    import doctest
    import re
    import subprocess
    import sys

    from tripost.cli import main

    doc = (PROJECT_ROOT / "docs/feedback_scripts.md").read_text()
    for name, body in re.findall(r"<!-- doc-test: (\S+) -->\n```\w+\n(.*?)```", doc, re.DOTALL):
        (tmp_path / name).write_text(body)
    assert {p.name for p in tmp_path.iterdir()} >= {"sum_feedback.py", "sums.yaml", "make_data.py"}
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    # the >>> session
    session = re.search(r"```pycon\n(.*?)```", doc, re.DOTALL).group(1)
    test = doctest.DocTestParser().get_doctest(session, {}, "feedback_scripts.md", None, 0)
    runner = doctest.DocTestRunner()
    runner.run(test)
    assert runner.failures == 0 and runner.tries >= 3
    subprocess.run([sys.executable, "make_data.py"], check=True, capture_output=True)
    assert main(["edit", "--config", "sums.yaml", "--attempts", "attempts.jsonl", "--out", "edit"]) == 0
    out = capsys.readouterr().out
    summary = json.loads((tmp_path / "edit/summary.json").read_text())
    assert summary["kept"] == 11 and summary["dropped"] == 1, out
    assert outcomes(tmp_path / "edit") == {"correct": 7, "dropped": 1, "improved": 4}, out
    assert summary["drop_reasons"] == {"script_error": 1}
    assert (tmp_path / "edit/config.yaml").is_file()
    assert "IndexError: list index out of range (sum_feedback.py:18)" in out


def test_bad_edit_settings_are_user_errors(tmp_path, cfg, task):
    from tripost.errors import TripostError

    # Range checks are the config's (validate), and the old key names the new one.
    with pytest.raises(TripostError, match="tripost.max_improvements"):
        load_config(None, [("tripost.max_improvements", -1)])
    with pytest.raises(TripostError, match="'edit.max_improvements' is now 'tripost.max_improvements'"):
        load_config(None, [("edit.max_improvements", 1)])
    cfg.tripost.max_improvements = 1
    with pytest.raises(TripostError, match="missing.jsonl"):
        edit(cfg, tmp_path / "missing.jsonl", tmp_path / "out", task)
