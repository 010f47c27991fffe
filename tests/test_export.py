"""`tripost export`: every format read back with `datasets`, field by field; stage selection in a
run directory; errors; and the trajectory files of several stages loading together."""

from __future__ import annotations

import json

import datasets
import pytest

from tripost import io
from tripost.cli import main as cli
from tripost.config import TrainConfig, load_config, save_config
from tripost.methods.tripost import FEEDBACK_PREFIX, UPDATE_PREFIX
from tripost.model_init import train_tokenizer
from tripost.records import Message, Segment, Trajectory, example_from_v1, make_example, training_example
from tripost.tools.export import turns
from tripost.train import encode_example

Q1, Q2 = "((1 + 2) * 3) =", "((4 - 6) + 5) ="
ATTEMPT = "(1) (1 + 2) = 4.\n(2) 4 * 3 = 12.\n(Final response) So the answer is 12."
FEEDBACK = 'In step (1) the part "(1 + 2) = 4" is incorrect. This is because (1 + 2) = 3.'
UPDATE = "(1) (1 + 2) = 3.\n(2) 3 * 3 = 9.\n(Final response) So the answer is 9."
RATIONALE = "(1) (4 - 6) = -2.\n(2) -2 + 5 = 3.\n(Final response) So the answer is 3."
REMARK = "Partner: check step (1) again."


def examples():
    """An improvement example (weights 0, 1, 1.5, 1.5), a rationale example (0, 1, only 0/1), and a
    two-agent one: learner, partner (context), learner again."""
    ex1, ex2 = make_example("toy", Q1, "9"), make_example("toy", Q2, "3")
    improvement = training_example("tripost", "learner", "improvement", [
        Segment(f"Q: {Q1}\nA: ", 0.0, "user"), Segment(ATTEMPT, 1.0, "learner"),
        Segment(FEEDBACK_PREFIX + FEEDBACK, 1.5, "learner"), Segment(UPDATE_PREFIX + UPDATE, 1.5, "learner")], ex1)
    rationale = training_example("rationale_sft", "learner", "rationale", [
        Segment(f"Q: {Q2}\nA: ", 0.0, "user"), Segment(RATIONALE, 1.0, "learner")], ex2)
    two_agents = training_example("debate", "learner", "discussion", [
        Segment(f"Q: {Q1}\nA: ", 0.0, "user"), Segment(ATTEMPT, 1.0, "learner"),
        Segment("\n" + REMARK + "\n", 0.0, "partner"), Segment(UPDATE, 1.5, "learner")], ex1)
    return [improvement, rationale, two_agents]


def run_cli(capsys, *argv):
    code = cli([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture()
def example_file(tmp_path):
    path = tmp_path / "learner.jsonl"
    io.write_jsonl(path, examples())
    return path


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    texts = [s.text for e in examples() for s in e.segments] * 20
    tok = train_tokenizer(texts, 320)
    out = tmp_path_factory.mktemp("tok")
    tok.save_pretrained(out)
    return out


def load_jsonl(path):
    return datasets.load_dataset("json", data_files=str(path), split="train")


def test_trl_prompt_completion(example_file, tmp_path, capsys):
    out = tmp_path / "trl.jsonl"
    code, stdout, err = run_cli(capsys, "export", example_file, "--format", "trl", "--out", out)
    assert code == 0, err
    ds = load_jsonl(out)
    assert ds.column_names == ["prompt", "completion"]
    for row, e in zip(ds, examples()):
        assert row["prompt"] == e.segments[0].text  # everything before the first weighted segment
        assert row["completion"] == "".join(s.text for s in e.segments[1:])
        assert row["prompt"] + row["completion"] == e.text  # the text exactly as tripost trains it
    # one warning line: 1.5 flattened in two examples; the partner's remark (weight 0) became trained text
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1
    assert "in 2 of 3 examples weights other than 0 and 1 (1.5)" in warnings[0]
    assert "in 1 of 3 examples text changed between trained and context" in warnings[0]
    assert "wrote 3 examples (learner 3)" in stdout


def test_trl_messages(example_file, tmp_path, capsys):
    out = tmp_path / "trl_messages.jsonl"
    code, _, err = run_cli(capsys, "export", example_file, "--format", "trl-messages", "--out", out)
    assert code == 0, err
    ds = load_jsonl(out)
    assert ds.column_names == ["messages"]
    improvement, rationale, two_agents = ds["messages"]
    assistant = ATTEMPT + FEEDBACK_PREFIX + FEEDBACK + UPDATE_PREFIX + UPDATE
    assert improvement == [{"role": "user", "content": f"Q: {Q1}\nA: "}, {"role": "assistant", "content": assistant}]
    assert rationale == [{"role": "user", "content": f"Q: {Q2}\nA: "}, {"role": "assistant", "content": RATIONALE}]
    assert [m["role"] for m in two_agents] == ["user", "assistant", "user", "assistant"]
    assert [m["content"] for m in two_agents] == [f"Q: {Q1}\nA: ", ATTEMPT, "\n" + REMARK + "\n", UPDATE]
    # the mask (assistant = trained) matches the weights: only 1.5 is flattened
    assert "in 2 of 3 examples weights other than 0 and 1" in err and "trained and context" not in err


def test_llamafactory_loss_weight(example_file, tmp_path, capsys):
    out = tmp_path / "lf.jsonl"
    code, _, err = run_cli(capsys, "export", example_file, "--format", "llamafactory", "--out", out)
    assert code == 0, err
    ds = load_jsonl(out)
    improvement, rationale, two_agents = ds["messages"]
    assert [m["role"] for m in improvement] == ["user", "assistant"]
    assert improvement[0] == {"role": "user", "content": [{"type": "text", "value": f"Q: {Q1}\nA: "}],
                              "loss_weight": 0.0}
    assistant = ATTEMPT + FEEDBACK_PREFIX + FEEDBACK + UPDATE_PREFIX + UPDATE
    assert improvement[1]["content"] == [{"type": "text", "value": assistant}]
    mean = (len(ATTEMPT) * 1.0 + (len(FEEDBACK_PREFIX + FEEDBACK) + len(UPDATE_PREFIX + UPDATE)) * 1.5) / len(assistant)
    assert improvement[1]["loss_weight"] == pytest.approx(mean, abs=1e-4)
    assert 1.0 < improvement[1]["loss_weight"] < 1.5
    assert [m["loss_weight"] for m in rationale] == [0.0, 1.0]
    assert [m["loss_weight"] for m in two_agents] == [0.0, 1.0, 0.0, 1.5]  # one weight per turn: kept exactly
    assert [m["content"][0]["value"] for m in two_agents] == [f"Q: {Q1}\nA: ", ATTEMPT, "\n" + REMARK + "\n", UPDATE]
    assert "in 1 of 3 examples weights other than 0 and 1" in err


def test_openai_weight(example_file, tmp_path, capsys):
    out = tmp_path / "openai.jsonl"
    code, _, err = run_cli(capsys, "export", example_file, "--format", "openai", "--out", out)
    assert code == 0, err
    ds = load_jsonl(out)
    for messages, e in zip(ds["messages"], examples()):
        assert [m["content"] for m in messages] == [t.text for t in turns(e)]
        assert [m["weight"] for m in messages if m["role"] == "assistant"] == [1] * sum(
            t.role == "assistant" for t in turns(e))
        assert all("weight" not in m for m in messages if m["role"] == "user")
    # in the file itself the weight is only on assistant messages, and is an integer 0 or 1
    for line in out.read_text().splitlines():
        for m in json.loads(line)["messages"]:
            assert ("weight" in m) == (m["role"] == "assistant")
            assert m.get("weight", 0) in (0, 1) and not isinstance(m.get("weight", 0), float)


def test_openai_untrained_assistant_turn(tmp_path, capsys):
    """A turn of the model's own that is only context (weight 0) gets weight 0."""
    ex = make_example("toy", Q1, "9")
    e = training_example("tripost", "learner", "improvement", [
        Segment(f"Q: {Q1}\nA: ", 0.0, "user"), Segment(ATTEMPT, 0.0, "learner"),
        Segment("\n" + REMARK + "\n", 0.0, "partner"), Segment(UPDATE, 1.0, "learner")], ex)
    src = tmp_path / "learner.jsonl"
    io.write_jsonl(src, [e])
    code, _, err = run_cli(capsys, "export", src, "--format", "openai", "--out", tmp_path / "o.jsonl")
    assert code == 0 and "warning" not in err  # 0/1 weights per turn: nothing lost
    messages = load_jsonl(tmp_path / "o.jsonl")[0]["messages"]
    assert [(m["role"], m.get("weight")) for m in messages] == [("user", None), ("assistant", 0), ("user", None),
                                                                 ("assistant", 1)]


def test_hf_keeps_token_weights(example_file, tokenizer_dir, tmp_path, capsys):
    from transformers import AutoTokenizer

    out = tmp_path / "hf"
    code, stdout, err = run_cli(capsys, "export", example_file, "--format", "hf", "--out", out,
                                "--tokenizer", tokenizer_dir)
    assert code == 0, err
    assert "warning" not in err
    ds = datasets.load_from_disk(str(out))
    columns = {"id", "model", "kind", "source_id", "task", "subtask", "text", "input_ids", "weights"}
    assert columns <= set(ds.column_names)
    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    max_length = TrainConfig().max_length  # outside a run: the trainer's default
    assert len(ds) == 3
    for row, e in zip(ds, examples()):
        assert (row["id"], row["model"], row["kind"], row["source_id"], row["task"], row["subtask"], row["text"]) == \
               (e.id, e.model, e.kind, e.source_id, e.task, e.subtask, e.text)
        ids, weights = encode_example(e, tok, max_length)
        assert row["input_ids"] == ids
        assert row["weights"] == weights
        assert [(s["text"], s["weight"], s["speaker"]) for s in row["segments"]] == \
               [(s.text, s.weight, s.speaker) for s in e.segments]
        assert row["stage"] == "" and row["chat_template"] is False
    assert 1.5 in ds[0]["weights"] and 0.0 in ds[0]["weights"] and 1.0 in ds[0]["weights"]
    # rerunning into the same directory replaces the saved dataset
    assert run_cli(capsys, "export", example_file, "--format", "hf", "--out", out, "--tokenizer", tokenizer_dir)[0] == 0


def test_empty_example_file(tmp_path, tokenizer_dir, capsys):
    """A model with no examples this round: empty outputs that still load."""
    src = tmp_path / "learner.jsonl"
    io.write_jsonl(src, [])
    code, out, err = run_cli(capsys, "export", src, "--format", "openai", "--out", tmp_path / "o.jsonl")
    assert code == 0 and "learner.jsonl: no examples" in out and (tmp_path / "o.jsonl").read_text() == ""
    code, out, err = run_cli(capsys, "export", src, "--format", "hf", "--out", tmp_path / "hf",
                             "--tokenizer", tokenizer_dir)
    assert code == 0, err
    ds = datasets.load_from_disk(str(tmp_path / "hf"))
    assert len(ds) == 0 and "weights" in ds.column_names


def test_hf_needs_a_tokenizer_outside_a_run(example_file, tmp_path, capsys):
    code, _, err = run_cli(capsys, "export", example_file, "--format", "hf", "--out", tmp_path / "hf")
    assert code == 2 and err.startswith("error:") and "--tokenizer" in err


def test_chat_template_examples_only_in_hf(tmp_path, tokenizer_dir, capsys):
    ex = make_example("toy", Q1, "9")
    e = training_example("tripost", "learner", "terminal", [
        Segment(f"<s>[user]{Q1}[/user][assistant]", 0.0, "user"), Segment(ATTEMPT, 1.0, "learner"),
        Segment("[/assistant]", 1.0, "learner")], ex, chat_template=True)
    src = tmp_path / "learner.jsonl"
    io.write_jsonl(src, [e])
    for fmt in ("trl", "trl-messages", "llamafactory", "openai"):
        code, _, err = run_cli(capsys, "export", src, "--format", fmt, "--out", tmp_path / f"{fmt}.jsonl")
        assert code == 2 and err.startswith("error: 1 of 1 examples were rendered with the tokenizer's chat template")
        assert "--format hf" in err and not (tmp_path / f"{fmt}.jsonl").exists()
    code, _, err = run_cli(capsys, "export", src, "--format", "hf", "--out", tmp_path / "hf",
                           "--tokenizer", tokenizer_dir)
    assert code == 0, err
    from transformers import AutoTokenizer

    row = datasets.load_from_disk(str(tmp_path / "hf"))[0]
    assert row["chat_template"] is True
    assert row["weights"] == encode_example(e, AutoTokenizer.from_pretrained(str(tokenizer_dir)), 1024)[1]


def test_errors(example_file, tmp_path, capsys):
    traj = tmp_path / "trajectories.jsonl"
    io.write_jsonl(traj, [Trajectory.of(make_example("toy", Q1, "9"), "tripost", status="kept")])
    cases = [
        (["export", tmp_path / "missing.jsonl", "--format", "trl", "--out", tmp_path / "o.jsonl"], "file not found"),
        (["export", traj, "--format", "trl", "--out", tmp_path / "o.jsonl"], "holds Trajectory records"),
        (["export", example_file, "--format", "alpaca", "--out", tmp_path / "o.jsonl"], "unknown format"),
        (["export", example_file, "--format", "trl", "--out", example_file], "input file"),
        (["export", example_file, "--format", "trl", "--out", tmp_path], "is a directory"),
        (["export", example_file, "--stage", "all", "--format", "trl", "--out", tmp_path / "o.jsonl"], "--stage"),
    ]
    for argv, message in cases:
        code, _, err = run_cli(capsys, *argv)
        assert code == 2, argv
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], err


# ----------------------------------------------------------------------------------------------
# Run directories


def stage(run, name, files: dict, status="done"):
    d = run / name
    for model, records in files.items():
        io.write_jsonl(d / f"{model}.jsonl", records)
    io.write_json(d / "manifest.json", {"stage": name, "status": status})
    return d


@pytest.fixture()
def run_dir(tmp_path, tokenizer_dir):
    """A run directory as iterate leaves it (only what export reads): config (model: null, so the
    tokenizer is round_0/init_model's; train.max_length 40), a warm-up stage, rounds 1 and 2 done,
    round 3 still running."""
    import shutil

    run = tmp_path / "runs" / "r"
    save_config(load_config(None, [("train.max_length", 40)]), run / "config.yaml")
    shutil.copytree(tokenizer_dir, run / "round_0" / "init_model")
    imp, rat, two = examples()
    ex2 = make_example("toy", Q2, "3")
    base = training_example("rationale_sft", "base", "rationale", [Segment(f"Q: {Q2}\nA: ", 0.0, "user"),
                                                                   Segment(RATIONALE, 1.0, "base")], ex2)
    critic = training_example("debate", "critic", "critique", [Segment(f"Q: {Q2}\nA: {RATIONALE}\n", 0.0, "user"),
                                                               Segment(REMARK, 1.0, "critic")], ex2)
    stage(run, "round_0/warmup_process", {"base": [base]})
    stage(run, "round_1/process", {"learner": [imp]})
    stage(run, "round_2/process", {"learner": [imp, rat, two], "critic": [critic]})
    stage(run, "round_3/process", {"learner": [imp]}, status="running")
    stage(run, "baseline/round_1/process", {"baseline": [rat]})
    stage(run, "arms/short/round_1/process", {"learner": [rat]})
    stage(run, "round_2/process.old-1", {"learner": [imp]})  # moved aside by --force-from: never read
    return run


def test_run_dir_latest_round_by_default(run_dir, tmp_path, capsys):
    code, out, err = run_cli(capsys, "export", run_dir, "--format", "trl-messages", "--out", tmp_path / "o.jsonl")
    assert code == 0, err
    assert "round_2/process/learner.jsonl: learner 3" in out and "round_2/process/critic.jsonl: critic 1" in out
    assert "wrote 4 examples (critic 1, learner 3)" in out
    messages = load_jsonl(tmp_path / "o.jsonl")["messages"]
    assert messages[0] == [{"role": "user", "content": f"Q: {Q2}\nA: {RATIONALE}\n"},
                           {"role": "assistant", "content": REMARK}]  # critic.jsonl first: files in name order


def test_run_dir_stage_choice(run_dir, tmp_path, capsys):
    code, out, err = run_cli(capsys, "export", run_dir, "--stage", "round_1/process", "--format", "openai",
                             "--out", tmp_path / "o.jsonl")
    assert code == 0, err
    assert "wrote 1 examples (learner 1)" in out
    code, _, err = run_cli(capsys, "export", run_dir, "--stage", "round_3/process", "--format", "openai",
                           "--out", tmp_path / "o.jsonl")
    assert code == 2 and "round_3/process is not finished" in err and "round_2/process" in err
    # a stage directory given directly
    code, out, err = run_cli(capsys, "export", run_dir / "round_2" / "process", "--format", "trl",
                             "--out", tmp_path / "o.jsonl")
    assert code == 0 and "wrote 4 examples" in out, err


def test_run_dir_all_stages_hf(run_dir, tmp_path, capsys):
    from transformers import AutoTokenizer

    out = tmp_path / "hf"
    code, stdout, err = run_cli(capsys, "export", run_dir, "--stage", "all", "--format", "hf", "--out", out)
    assert code == 0, err
    assert f"tokenizer {run_dir / 'round_0' / 'init_model'}" in stdout and "max_length 40" in stdout
    ds = datasets.load_from_disk(str(out))
    assert ds["stage"] == ["arms/short/round_1/process", "baseline/round_1/process", "round_0/warmup_process",
                           "round_1/process"] + ["round_2/process"] * 4
    assert ds["model"] == ["learner", "learner", "base", "learner", "critic", "learner", "learner", "learner"]
    tok = AutoTokenizer.from_pretrained(str(run_dir / "round_0" / "init_model"))
    imp = examples()[0]
    row = ds[3]
    assert row["id"] == imp.id and (row["input_ids"], row["weights"]) == encode_example(imp, tok, 40)
    assert len(row["input_ids"]) == 40 and len(encode_example(imp, tok)[0]) > 40  # cut as training cuts it
    assert "examples cut to it" in stdout


def test_v1_run_dir(tmp_path, capsys):
    """A run written by tripost 0.1: examples.jsonl (tripost.example/1) read with the run's weights."""
    from pathlib import Path

    from transformers import AutoTokenizer

    run = Path(__file__).parent / "data" / "v1_run"
    out = tmp_path / "hf"
    code, stdout, err = run_cli(capsys, "export", run, "--format", "hf", "--out", out)
    assert code == 0, err
    ds = datasets.load_from_disk(str(out))
    raw = [data for _, data in io.jsonl_objects(run / "round_1" / "process" / "examples.jsonl")]
    assert len(ds) == len(raw) and set(ds["stage"]) == {"round_1/process"}
    cfg = load_config(run / "config.yaml", older=True)
    tok = AutoTokenizer.from_pretrained(str(run / "round_0" / "init_model"))
    for row, data in zip(ds, raw):
        e = example_from_v1(data, "v1")
        assert (row["input_ids"], row["weights"]) == encode_example(e, tok, cfg.train.max_length)
    code, _, err = run_cli(capsys, "export", run, "--format", "llamafactory", "--out", tmp_path / "lf.jsonl")
    assert code == 0 and "1.5" in err


# ----------------------------------------------------------------------------------------------
# Trajectory files of several stages load together


def trajectory(example, stage, status, *messages, **fields):
    return Trajectory.of(example, "tripost", messages=list(messages), status=status, stage=stage, round=1, **fields)


def test_trajectory_files_of_all_stages_load_together(tmp_path):
    ex1, ex2, ex3 = (make_example("toy", q, a, subtask="l2") for q, a in ((Q1, "9"), (Q2, "3"), ("(1 + 1) =", "2")))
    attempt = Message("learner", "attempt", ATTEMPT, "model:learner", answer="12", correct=False)
    right = Message("learner", "attempt", RATIONALE, "model:learner", answer="3", correct=True)
    feedback = Message("learner", "feedback", FEEDBACK, "script:toy.py")
    update = Message("learner", "update", UPDATE, "script:toy.py", round=1, answer="9", correct=True)
    says_ok = Message("learner", "feedback", "Step (1) to (2) are correct. The final response is also correct.",
                      "script:toy.py", round=1)
    cut = Message("learner", "attempt", "(1) (1 +", "model:learner", truncated=True)
    files = {
        "attempts": [trajectory(ex1, "collect", "kept", attempt, final_answer="12", stop="no_feedback", calls=1),
                     trajectory(ex2, "collect", "kept", right, correct=True, final_answer="3", calls=1),
                     trajectory(ex3, "collect", "kept", cut, stop="truncated", calls=1)],
        "trajectories": [trajectory(ex1, "edit", "kept", attempt, feedback, update, says_ok, correct=True,
                                    final_answer="9", stop="disagreement", calls=1)],
        "dropped": [trajectory(ex3, "edit", "dropped", cut, drop_reason="no_progress", detail="unreadable attempt")],
        "dropped_empty": [],
        "predictions": [trajectory(ex2, "evaluate", "kept", right, correct=True, final_answer="3",
                                   stop="feedback_correct", calls=2)],
    }
    paths = {}
    for name, records in files.items():
        paths[name] = tmp_path / f"{name}.jsonl"
        io.write_jsonl(paths[name], records)
    assert paths["dropped_empty"].read_text() == ""
    ds = datasets.load_dataset("json", data_files=[str(p) for p in paths.values()], split="train")
    assert len(ds) == 6
    assert ds["stage"] == ["collect"] * 3 + ["edit", "edit", "evaluate"]
    assert ds["status"] == ["kept"] * 4 + ["dropped", "kept"]
    assert ds[3]["messages"][1]["correct"] is None and ds[3]["messages"][2]["correct"] is True
    assert ds[4]["drop_reason"] == "no_progress" and ds[2]["messages"][0]["truncated"] is True
    # an empty dropped.jsonl alone, and in first place, does not break it either
    first = [paths["dropped_empty"], paths["trajectories"], paths["dropped"]]
    assert len(datasets.load_dataset("json", data_files=[str(p) for p in first], split="train")) == 2
