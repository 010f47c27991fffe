"""collect: attempts JSONL, resumable after an interruption, and a clear error for a missing model."""

from __future__ import annotations

import pytest

import tripost.tasks
from tripost import engine
from tripost.cli import main as cli_main
from tripost.collect import collect as collect_stage
from tripost.config import load_config, method_config
from tripost.records import read_trajectories

from conftest import TINY_OVERRIDES, ToyArithmetic


@pytest.fixture
def cfg():
    return load_config(None, TINY_OVERRIDES + [("collect.batch_size", 4)])


def collect(cfg, model_dir, out, task, round=0):
    return collect_stage(task, cfg.collect, cfg.method, method_config(cfg), cfg.chat_template,
                         {"learner": model_dir}, out, split="train", round=round, progress=False)


class GoldGenerator:
    """Stands in for generate_batch: answers each prompt with the gold rationale (counting prompts)
    and raises after `fail_after` batches, like a job killed mid-run."""

    def __init__(self, task, examples, fail_after=None):
        self.task, self.by_q = task, {ex.question: ex for ex in examples}
        self.fail_after, self.batches, self.questions = fail_after, 0, []

    def __call__(self, model, tokenizer, prompts, gen, *args):
        if self.fail_after is not None and self.batches >= self.fail_after:
            raise KeyboardInterrupt
        self.batches += 1
        out = []
        for p in prompts:
            q = p[len("Q: "):p.index("\nA: ")]
            self.questions.append(q)
            out.append((self.task.gold_rationale(self.by_q[q]), False))
        return out


def test_collect_resumes_without_redoing_finished_ids(tmp_path, tiny_model_dir, toy_task, cfg, monkeypatch):
    examples = toy_task.load("train")
    out = tmp_path / "attempts.jsonl"
    first = GoldGenerator(toy_task, examples, fail_after=3)
    monkeypatch.setattr(engine, "generate_batch", first)
    with pytest.raises(KeyboardInterrupt):
        collect(cfg, tiny_model_dir, out, toy_task)
    written = read_trajectories(out)
    assert len(written) == 3 * 4  # three finished batches were flushed before the "kill"
    # A torn half-line from a kill -9 is cut off on the next run and that question redone.
    with out.open("a") as f:
        f.write('{"id": "torn')
    second = GoldGenerator(toy_task, examples)
    monkeypatch.setattr(engine, "generate_batch", second)
    summary = collect(cfg, tiny_model_dir, out, toy_task, round=2)
    assert summary["skipped"] == 12 and summary["generated"] == len(examples) - 12
    finished_first = {t.question for t in written}
    assert not finished_first & set(second.questions)  # finished ids were not regenerated
    trajs = read_trajectories(out)
    ids = [t.id for t in trajs]
    assert len(ids) == len(set(ids)) and set(ids) == {ex.id for ex in examples}
    assert all(t.status == "kept" and t.correct for t in trajs)  # gold rationales judged correct
    assert all(t.stage == "collect" and t.stop == "no_feedback" for t in trajs)
    assert all(t.round == 2 for t in trajs if t.question not in finished_first)
    # A third run has nothing to do (through the command, which writes the config beside the output).
    third = GoldGenerator(toy_task, examples)
    monkeypatch.setattr(engine, "generate_batch", third)
    monkeypatch.setattr(tripost.tasks, "get_task", lambda task_cfg: toy_task)
    assert cli_main(["collect", "--model", str(tiny_model_dir), "--out", str(out), "collect.batch_size=4"]) == 0
    assert third.questions == [] and len(read_trajectories(out)) == len(examples)
    assert (tmp_path / "attempts.jsonl.config.yaml").is_file()


def test_collect_with_real_generation(tmp_path, tiny_model_dir, cfg):
    out = tmp_path / "attempts.jsonl"
    cfg.task.max_train = 6
    toy_task = ToyArithmetic(cfg.task)
    summary = collect(cfg, tiny_model_dir, out, toy_task)
    trajs = read_trajectories(out)
    assert summary["generated"] == 6 == len(trajs)
    assert all(t.messages and t.messages[0].kind == "attempt" and t.messages[0].author == "model:learner"
               for t in trajs)
    assert all(t.status == "kept" and t.messages[0].correct in (True, False) for t in trajs)


@pytest.mark.parametrize("command", ["collect", "evaluate"])
def test_missing_model_dir_is_a_clear_error(tmp_path, capsys, command):
    missing = tmp_path / "no_such_model"
    code = cli_main([command, "--model", str(missing), "--out", str(tmp_path / "out")])
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and str(missing) in err and "Traceback" not in err


def test_directory_without_config_is_a_clear_error(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert cli_main(["collect", "--model", str(tmp_path / "empty"), "--out", str(tmp_path / "a.jsonl")]) == 2
    assert "not a Hugging Face model directory" in capsys.readouterr().err
