"""Reliability (issue 13): what a transient failure, hostile input, a kill or a failed start must not do.

    item 1   an unreachable API is not a verdict: `tripost edit` and `tripost iterate` stop, nothing
             is written as dropped for the items not done, a rerun retries exactly those
    item 3   the parsers of model text stay linear on hostile inputs (1 MB, and just under the
             most they parse, steps.MAX_CHARS)
    item 4   bad input is one `error:` line and exit 2, never a traceback
    item 6   a failed start of `tripost edit` on a half-finished directory changes nothing in it
    item 7   a torn last line of a user's file is an error naming file:line; "id": null is refused
    item 9   word sorting: the gold-solution builder is iterative and bounded; words the rationale
             format cannot hold are refused; BIG-bench's rationales are unchanged
    item 11  a run killed in collect, then in a multi-batch edit, and rerun equals an uninterrupted one
    item 12  a restarted training keeps one log: the killed attempt's steps past the checkpoint go
    item 14  two identical runs record identical stage fingerprints and input hashes

The tiny runs (items 1, 11, 12, 14) use a small task of sums ("3 + 4 =", one step and the final
line) with a scripted expert written here, so the model learns the answer format in a short
warm-up and its attempts are really edited (an untrained model's text is cut off at
max_new_tokens and dropped before any expert call). Two uninterrupted runs are made once, side by
side, and shared; the killed runs start from a copy of the first one's finished round 0. The edits
against the fake Messages API run in this process (`tripost_here`), the other commands as
subprocesses.

    python -m pytest -q tests/test_reliability.py
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from contextlib import redirect_stderr, redirect_stdout
from io import StringIO
from pathlib import Path

import pytest

from tripost import io, steps
from tripost.config import PROJECT_ROOT, load_config
from tripost.errors import TripostError
from tripost.methods.tripost import split_continuation
from tripost.records import Message, Trajectory
from tripost.tasks import get_task
from tripost.tasks.word_sorting import (Final, Hence, Letters, RationaleTooLong, render, solve, sort_words,
                                        unsupported_word)

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import BIGBENCH_DIR  # noqa: E402
from fake_messages_server import FakeMessagesServer, gold_rule, tag, user_text  # noqa: E402

KEY_ENV = "TRIPOST_RELIABILITY_TEST_KEY"
os.environ[KEY_ENV] = "sk-test-reliability"  # for the edits run in this process (a name no one else reads)
needs_data = pytest.mark.skipif(not (BIGBENCH_DIR / "word_sorting.json").is_file(),
                                reason="shared BIG-bench data not present")


def env(**extra: str) -> dict:
    # Single-threaded torch keeps the 2-core machine usable; the fake server accepts any key.
    return dict(os.environ, **{KEY_ENV: "sk-test-reliability"}, OMP_NUM_THREADS="1", NO_COLOR="1",
                PYTHONPATH=str(PROJECT_ROOT), **extra)


def tripost(*args: str, cwd: Path | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tripost", *args], cwd=cwd, env=env(), capture_output=True,
                          text=True, timeout=timeout)


def tripost_here(*args: str) -> subprocess.CompletedProcess:
    """`tripost ARGS` in this process: the API client (seconds to import) is imported once for all
    the edits against the fake server, which runs in this process too."""
    from tripost.cli import main

    err = StringIO()
    with redirect_stderr(err), redirect_stdout(StringIO()):
        rc = main(list(args))
    return subprocess.CompletedProcess(args, rc, "", err.getvalue())


def user_error(proc: subprocess.CompletedProcess, *needles: str) -> str:
    """The one `error:` line of a refused command (exit 2, no traceback), checked to hold `needles`."""
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-3000:])
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr[-3000:]
    for needle in needles:
        assert needle in errors[0], (needle, errors[0])
    return errors[0]


def complete_lines(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


def snapshot(directory: Path) -> dict[str, bytes]:
    return {p.relative_to(directory).as_posix(): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


# ----------------------------------------------------------------------------------------------
# Item 3: the parsers of model text on 1 MB hostile inputs


def hostile(n: int) -> dict[str, str]:
    """About n characters of text each, built to make a backtracking or re-copying parser quadratic."""
    return {
        "spaces": 'In step (1) the part "x" is incorrect.' + " " * (n - 40) + "x",
        "step heads": 'In step (1) the part "' * (n // 22),
        "part ends": 'In step (1) the part "' + '" is incorrect. ' * (n // 16 - 2) + "x",
        "many lines": "(1) a\n" + "x\n" * (n // 2 - 3),
        "step lines": "(1) a\n" * (n // 6),
        "answer heads": "the answer is " * (n // 14),
        "feedback marks": "Feedback: Updated Answer: " * (n // 26),
    }


# 1 MB, and just under steps.MAX_CHARS (the longest text the parsers parse at all).
HOSTILE_MB, HOSTILE_CAP = hostile(1_000_000), hostile(steps.MAX_CHARS - 100)
PARSERS = {"parse_feedback": steps.parse_feedback, "parse_steps": steps.parse_steps,
           "extract_final_answer": steps.extract_final_answer, "split_continuation": split_continuation}


@pytest.mark.parametrize("kind", sorted(HOSTILE_MB))
@pytest.mark.parametrize("name", sorted(PARSERS))
def test_parsers_stay_linear_on_hostile_text(name, kind):
    # Only a generous ceiling: it catches quadratic work (minutes on 1 MB), not slow machines.
    for text in (HOSTILE_MB[kind], HOSTILE_CAP[kind]):
        start = time.perf_counter()
        PARSERS[name](text)
        assert time.perf_counter() - start < 5.0, (name, kind, len(text))


def test_parsers_results_on_hostile_text():
    # Over MAX_CHARS: not parsed at all (an answer after a megabyte of padding is no answer).
    assert steps.parse_steps(HOSTILE_MB["step lines"]) == []
    assert steps.extract_final_answer(HOSTILE_MB["answer heads"]) is None
    assert steps.parse_feedback(HOSTILE_MB["spaces"]) is None
    assert split_continuation(HOSTILE_MB["feedback marks"]) == ("", "", "")  # linear; not capped
    # Under it: parsed as the grammar says.
    assert steps.parse_feedback(HOSTILE_CAP["step heads"]) is None
    assert steps.parse_feedback(HOSTILE_CAP["spaces"]) is None  # "x" after the sentence is not "This is because"
    spaced = 'In step (1) the part "x" is incorrect. This is because' + " " * 19_000 + "y."
    assert steps.parse_feedback(spaced) == steps.Feedback(False, "1", "x", "y")
    assert steps.parse_feedback(HOSTILE_CAP["part ends"]) is None
    parsed = steps.parse_steps(HOSTILE_CAP["step lines"])
    assert len(parsed) == len(HOSTILE_CAP["step lines"]) // 6 and set(parsed) == {steps.Step("1", "a")}
    (step,) = steps.parse_steps(HOSTILE_CAP["many lines"])
    assert step.label == "1" and step.text.startswith("a\nx\nx")
    assert steps.extract_final_answer(HOSTILE_CAP["answer heads"]) == ""
    assert split_continuation(HOSTILE_CAP["feedback marks"]) == ("", "", "")


# ----------------------------------------------------------------------------------------------
# Item 9: word sorting on hostile data


def load_script(name: str):
    import importlib.util

    path = PROJECT_ROOT / "feedback_scripts" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"reliability_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


ws_script = load_script("word_sorting")


def ws_example(words: list[str]) -> dict:
    return {"id": "x", "task": "word_sorting", "subtask": f"words_{len(words)}", "seen": len(words) <= 7,
            "question": "Sort the following words alphabetically:\nList: " + " ".join(words),
            "answer": " ".join(sort_words(words))}


def ws_task(data_dir: Path):
    return get_task(load_config(None, [("task.name", "word_sorting"), ("task.data_dir", str(data_dir))]).task)


def write_ws_file(directory: Path, lists: list[tuple[str, str]]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    data = {"task_prefix": "Sort the following words alphabetically:", "example_input_prefix": "\nList: ",
            "examples": [{"input": words, "target": target} for words, target in lists]}
    (directory / "word_sorting.json").write_text(json.dumps(data))
    return directory / "word_sorting.json"


# sha256 of json.dumps(sorted((id, gold rationale))) over all 1900 BIG-bench lists, recorded with the
# recursive builder of 8326b9d (before it was made iterative and bounded).
BIGBENCH_RATIONALES_SHA256 = "407992383afeda253905afe3ce9b2f4d2e7de7f61fe641b735aef95cfc27634e"


@needs_data
def test_bigbench_rationales_unchanged():
    task = ws_task(BIGBENCH_DIR)
    train, test = task.split()
    rationales = sorted((ex.id, task.gold_rationale(ex)) for ex in train + test)
    assert len(rationales) == 1900
    assert hashlib.sha256(json.dumps(rationales).encode()).hexdigest() == BIGBENCH_RATIONALES_SHA256


def test_builder_is_iterative_past_the_recursion_limit():
    deep = ["x" * 1500 + "b", "x" * 1500 + "a"]  # 1,500 nested subparts; the limit is about 1,000
    solution = solve(deep, max_chars=10**9)
    assert solution[-1] == Final(tuple(sorted(deep)))
    assert sum(isinstance(s, Letters) for s in solution) == 1 + 1500  # step 1, then one per shared letter
    assert [s.words for s in solution if isinstance(s, Hence)] == [tuple(sorted(deep))] * 2


@pytest.mark.parametrize("words", [
    ["a" * i for i in range(1, 301)],                  # the n^3 chain
    ["x" * 5000 + "a", "x" * 5000 + "b"],              # a long shared prefix (RecursionError before)
    [f"w{i:05d}" for i in range(5000)],                # many words
    ["a" * 200_000],                                   # one huge word
], ids=["chain", "shared_prefix", "many_words", "huge_word"])
def test_builder_is_bounded(words, tmp_path):
    start = time.perf_counter()
    with pytest.raises(RationaleTooLong):
        solve(words)
    assert time.perf_counter() - start < 2.0
    # The task names the file and the example; the feedback script gives no judgement, quickly.
    path = write_ws_file(tmp_path, [("b a", "a b"), (" ".join(words), " ".join(sort_words(words)))])
    task = ws_task(tmp_path)
    ex = next(e for e in task.split()[0] + task.split()[1] if e.meta["source"].endswith("examples[1]"))
    with pytest.raises(TripostError, match=re.escape(f"{path}: examples[1]: the rationale would be longer")):
        task.gold_rationale(ex)
    start = time.perf_counter()
    assert ws_script.feedback(ws_example(words), "(1) x") is None
    assert time.perf_counter() - start < 2.0


@pytest.mark.parametrize("word,problem", [
    ('say"hi', "double quote"), ("a,b", "comma"), ("[x", "square bracket"), ("x]", "square bracket"),
    ("a\x07b", "control"), ("a\u200bb", "control or invisible"), ("Apple", "uppercase"), ("etc.", "ends with '.'"),
    (":x", "starts with ':'"),
])
def test_words_the_format_cannot_hold_are_refused(word, problem, tmp_path):
    assert problem in unsupported_word(word)
    path = write_ws_file(tmp_path, [("b a", "a b"), (f"zeta {word} alpha", "alpha zeta " + word)])
    with pytest.raises(TripostError) as e:
        ws_task(tmp_path).load("train")
    assert str(e.value).startswith(f"{path}: examples[1]: the word {word!r} ") and problem in str(e.value)
    # The script, given such a question anyway, gives no verdict rather than a wrong one.
    assert ws_script.feedback(ws_example(["zeta", word]), render(solve(["zeta", word]))) is None
    with pytest.raises(ValueError):
        ws_script.improve(ws_example(["zeta", word]), "(1) x", "")


def test_empty_list_and_target_out_of_order_are_refused(tmp_path):
    path = write_ws_file(tmp_path / "a", [("b a", "a b"), ("   ", "")])
    with pytest.raises(TripostError, match=re.escape(f"{path}: examples[1]: no words")):
        ws_task(tmp_path / "a").load("train")
    # "{" counts 0 in the rationale (before "a"), while a plain string sort puts it after "z".
    path = write_ws_file(tmp_path / "b", [("b a", "a b"), ("b{ ba", "ba b{")])
    with pytest.raises(TripostError, match=re.escape(f"{path}: examples[1]: the target 'ba b{{'")):
        ws_task(tmp_path / "b").load("train")


def test_unusual_words_the_format_holds_get_a_gold_the_script_accepts():
    rng = random.Random(0)
    alphabet = "aab'&.()-+=<>?09éü{~"
    checked = 0
    for _ in range(300):
        words = ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 5))) for _ in range(rng.randint(2, 7))]
        if any(unsupported_word(w) for w in words):
            continue
        gold = render(solve(words))
        assert steps.extract_final_answer(gold).split() == sort_words(words), gold
        assert steps.says_correct(ws_script.feedback(ws_example(words), gold)), (words, gold)
        checked += 1
    assert checked > 150


# ----------------------------------------------------------------------------------------------
# Items 4 and 7: bad input is one error line, never a traceback


def arith_trajectories(n: int = 12) -> tuple[list[Trajectory], dict[str, str]]:
    """n multistep_arithmetic attempts in the v2 format: a third right, the rest with one wrong
    number; and the gold rationale of each question."""
    task = get_task(load_config(None, [("task.name", "multistep_arithmetic"), ("task.max_train", n)]).task)
    trajs, golds = [], {}
    for i, ex in enumerate(task.load("train")):
        attempt = golds[ex.question] = task.gold_rationale(ex)
        if i % 3:
            st = steps.parse_steps(attempt)
            k = 1 + i % (len(st) - 2)
            st[k] = steps.Step(st[k].label, st[k].text[:-1] + "1.")
            attempt = steps.render_steps(st)
        trajs.append(Trajectory.of(ex, "tripost", status="kept", stage="collect", round=1,
                                   messages=[Message("learner", "attempt", attempt, "model:learner")]))
    return trajs, golds


@pytest.fixture(scope="module")
def arith(tmp_path_factory):
    """(attempts file of 12, attempts file of the first 6, the trajectories, gold by question)."""
    d = tmp_path_factory.mktemp("arith")
    trajs, golds = arith_trajectories()
    io.write_jsonl(d / "attempts.jsonl", trajs)
    io.write_jsonl(d / "attempts_6.jsonl", trajs[:6])
    return d / "attempts.jsonl", d / "attempts_6.jsonl", trajs, golds


def v1_record(**changes) -> dict:
    record = {"id": "0123456789abcdef", "task": "multistep_arithmetic", "question": "(1 + 2) =", "answer": "3",
              "subtask": "l1_d2", "seen": True,
              "turns": [{"attempt": "(1) 1 + 2 = 3.\n(Final response) So the answer is 3.", "attempt_by": "model",
                         "feedback": None, "feedback_by": None}],
              "outcome": "correct", "drop_reason": None, "provenance": {"stage": "collect", "round": 1},
              "schema": "tripost.trajectory/1"}
    record.update(changes)
    return record


def write_lines(path: Path, *lines: bytes) -> Path:
    path.write_bytes(b"".join(lines))
    return path


def good_line(traj: Trajectory) -> bytes:
    return (io.to_json(traj) + "\n").encode()


def edit_bad_attempts(tmp_path: Path, path: Path) -> subprocess.CompletedProcess:
    return tripost("edit", "--attempts", str(path), "--out", str(tmp_path / "edit"))


def test_attempts_not_utf8(arith, tmp_path):
    trajs = arith[2]
    path = write_lines(tmp_path / "a.jsonl", good_line(trajs[0]), good_line(trajs[1]).replace(b"(1)", b"(\xff)"))
    user_error(edit_bad_attempts(tmp_path, path), f"{path}:2", "not UTF-8")


def test_config_not_utf8(arith, tmp_path):
    config = write_lines(tmp_path / "bad.yaml", b"task:\n  name: multistep_arithmetic  # caf\xe9\n")
    user_error(tripost("edit", "--config", str(config), "--attempts", str(arith[0]), "--out", str(tmp_path / "e")),
               str(config), "not UTF-8")


@pytest.mark.parametrize("field,value", [("feedback", {"text": "Step (1) is correct."}), ("feedback", 3),
                                         ("attempt", ["(1) a"])])
def test_v1_turn_field_not_a_string(field, value, tmp_path):
    record = v1_record()
    record["turns"][0][field] = value
    path = write_lines(tmp_path / "a.jsonl", (json.dumps(v1_record(id="fedcba9876543210")) + "\n").encode(),
                       (json.dumps(record) + "\n").encode())
    user_error(edit_bad_attempts(tmp_path, path), f"{path}:2", field)


def test_v1_provenance_not_an_object(tmp_path):
    path = write_lines(tmp_path / "a.jsonl", (json.dumps(v1_record(provenance="collect")) + "\n").encode())
    user_error(edit_bad_attempts(tmp_path, path), f"{path}:1", "provenance")


@pytest.mark.parametrize("override,key", [("edit.api.max_retries=-1", "edit.api.max_retries"),
                                          ("edit.api.timeout_s=-5", "edit.api.timeout_s")])
def test_bad_api_values(arith, tmp_path, override, key):
    user_error(tripost("edit", "--attempts", str(arith[0]), "--out", str(tmp_path / "e"), "edit.feedback=llm",
                       override), f"'{key}'")


def test_duplicate_yaml_key_names_both_lines(arith, tmp_path):
    config = tmp_path / "dup.yaml"
    config.write_text("task:\n  name: multistep_arithmetic\n  max_train: 5\n  name: word_sorting\n")
    user_error(tripost("edit", "--config", str(config), "--attempts", str(arith[0]), "--out", str(tmp_path / "e")),
               str(config), "'name'", "lines 2 and 4")


GOOD_TEMPLATE = ("{% block system %}Judge the attempt.{% endblock %}\n"
                 "{% block user %}<question>{{ question }}</question>\n"
                 "<attempt>{{ attempt }}</attempt>{% endblock %}\n")


def prompts_dir(directory: Path, feedback_user_line: str) -> Path:
    """A prompts directory whose feedback.j2 has `feedback_user_line` on line 3 of its user block."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "feedback.j2").write_text(
        "{% block system %}Judge the attempt.{% endblock %}\n{% block user %}<question>{{ question }}</question>\n"
        f"{feedback_user_line}\n<attempt>{{{{ attempt }}}}</attempt>{{% endblock %}}\n")
    (directory / "improvement.j2").write_text(GOOD_TEMPLATE)
    return directory


def llm_args(url: str = "http://127.0.0.1:9") -> list[str]:
    return ["task.name=multistep_arithmetic", "task.max_train=12", "edit.feedback=llm", "edit.improvement=llm",
            f"edit.api.api_key_env={KEY_ENV}", "edit.api.model=claude-test", "edit.api.concurrency=2",
            "edit.api.max_retries=1", "edit.api.retry_base_s=0.01", "edit.api.retry_max_s=0.05",
            "edit.api.timeout_s=10", "edit.batch_size=4", f"edit.api.base_url={url}"]


@pytest.mark.parametrize("line,needle", [("{{ 1 / 0 }}", "ZeroDivisionError"),
                                         ('{% include "missing_part.j2" %}', "'missing_part.j2' not found"),
                                         ("{{ 10 ** 5000 }}", "too big")],
                         ids=["runtime_error", "missing_include", "huge_power"])
def test_template_errors(arith, tmp_path, line, needle):
    prompts = prompts_dir(tmp_path / "prompts", line)
    proc = tripost("edit", "--attempts", str(arith[0]), "--out", str(tmp_path / "e"), *llm_args(),
                   f"edit.prompts_dir={prompts}")
    user_error(proc, f"{prompts / 'feedback.j2'}:3", needle)


def test_torn_last_line_of_attempts(arith, tmp_path):
    trajs = arith[2]
    path = write_lines(tmp_path / "a.jsonl", good_line(trajs[0]), good_line(trajs[1]), good_line(trajs[2])[:80])
    user_error(edit_bad_attempts(tmp_path, path), f"{path}:3", "cut off")


def test_torn_last_line_of_a_jsonl_task_file(tmp_path):
    data = write_lines(tmp_path / "task.jsonl", b'{"question": "1 + 1 =", "answer": "2"}\n',
                       b'{"question": "1 + 2 =", "answer": "3"}\n', b'{"question": "1 + 3 =", "ans')
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")  # collect reads the task before it loads the model
    proc = tripost("collect", "--model", str(model), "--out", str(tmp_path / "attempts.jsonl"), "task.name=jsonl",
                   f"task.path={data}")
    user_error(proc, f"{data}:3", "cut off")


def test_id_null_is_refused_in_attempts(arith, tmp_path):
    v2 = json.loads(io.to_json(arith[2][0]))
    v2["id"] = None
    path = write_lines(tmp_path / "v2.jsonl", (json.dumps(v2) + "\n").encode())
    user_error(edit_bad_attempts(tmp_path, path), f"{path}:1", "'id'")


def test_id_null_is_refused_in_v1_attempts(tmp_path):
    path = write_lines(tmp_path / "v1.jsonl", (json.dumps(v1_record(id=None)) + "\n").encode())
    user_error(edit_bad_attempts(tmp_path, path), f"{path}:1", "id")


# ----------------------------------------------------------------------------------------------
# Items 1 and 6: `tripost edit` against the fake Messages API


def verdict_golds(golds: dict[str, str], trajs: list[Trajectory]) -> tuple[dict[str, str], set[str]]:
    """The golds without two questions: the fake server answers those with text and no tool call
    (a content verdict: llm_unparsable_feedback, final)."""
    verdicts = {trajs[1].question, trajs[2].question}
    return {q: g for q, g in golds.items() if q not in verdicts}, verdicts


def asked_questions(server: FakeMessagesServer) -> set[str]:
    return {tag(user_text(r.body), "question") for r in server.message_requests if r.body}


def edit_out(attempts: Path, out: Path, url: str, *extra: str) -> subprocess.CompletedProcess:
    return tripost_here("edit", "--attempts", str(attempts), "--out", str(out), *llm_args(url), *extra)


def records_of(out: Path) -> dict[str, list[str]]:
    return {name: sorted((out / name).read_text().splitlines()) if (out / name).exists() else []
            for name in ("trajectories.jsonl", "dropped.jsonl")}


def ids_in(out: Path) -> set[str]:
    return {json.loads(line)["id"] for lines in records_of(out).values() for line in lines}


@pytest.fixture(scope="module")
def edit_reference(arith, tmp_path_factory):
    """An uninterrupted LLM edit of the 12 attempts (two of them content verdicts)."""
    attempts, _, trajs, golds = arith
    out = tmp_path_factory.mktemp("edit_reference")
    with FakeMessagesServer(rule=gold_rule(verdict_golds(golds, trajs)[0])) as server:
        proc = edit_out(attempts, out, server.url)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return records_of(out)


def test_unreachable_api_then_rerun(arith, edit_reference, tmp_path):
    attempts, _, trajs, golds = arith
    with FakeMessagesServer() as gone:
        url = gone.url
    out = tmp_path / "edit"
    proc = edit_out(attempts, out, url)  # connection refused on every request
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "12 trajectories not done" in proc.stderr and "rerun" in proc.stderr, proc.stderr[-2000:]
    assert ids_in(out) == set()  # nothing written as dropped (or kept) for them
    assert io.read_json(out / "summary.json")["pending"] == 12

    with FakeMessagesServer(rule=gold_rule(verdict_golds(golds, trajs)[0])) as server:
        proc = edit_out(attempts, out, server.url)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert asked_questions(server) == {t.question for t in trajs}
    assert records_of(out) == edit_reference


def test_transient_failures_are_retried_and_verdicts_stay_final(arith, edit_reference, tmp_path):
    attempts, _, trajs, golds = arith
    rule_golds, verdicts = verdict_golds(golds, trajs)
    down = {trajs[4].question, trajs[5].question, trajs[7].question}
    out = tmp_path / "edit"
    with FakeMessagesServer(rule=gold_rule(rule_golds)) as server:
        server.fail_when(lambda body: tag(user_text(body), "question") in down, 503)
        proc = edit_out(attempts, out, server.url)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "3 trajectories not done" in proc.stderr and "rerun" in proc.stderr, proc.stderr[-2000:]
    written = {json.loads(line)["question"]: json.loads(line) for lines in records_of(out).values() for line in lines}
    assert set(written) == {t.question for t in trajs} - down
    for q in verdicts:
        assert (written[q]["status"], written[q]["drop_reason"]) == ("dropped", "llm_unparsable_feedback")
    verdict_lines = [line for line in records_of(out)["dropped.jsonl"] if json.loads(line)["question"] in verdicts]

    with FakeMessagesServer(rule=gold_rule(rule_golds)) as server:
        proc = edit_out(attempts, out, server.url)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert asked_questions(server) == down  # exactly the items not done; no verdict asked again
    assert all(line in records_of(out)["dropped.jsonl"] for line in verdict_lines)
    assert records_of(out) == edit_reference


@pytest.fixture(scope="module")
def half_done(arith, tmp_path_factory):
    """An LLM edit directory in which 6 of the 12 attempts are done."""
    _, attempts_6, trajs, golds = arith
    out = tmp_path_factory.mktemp("half_done") / "edit"
    with FakeMessagesServer(rule=gold_rule(verdict_golds(golds, trajs)[0])) as server:
        proc = edit_out(attempts_6, out, server.url)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(ids_in(out)) == 6 and (out / "config.yaml").is_file()
    return out


@pytest.mark.parametrize("case", ["missing_script", "template_syntax", "template_runtime", "no_api_key",
                                  "bad_api_value"])
def test_failed_start_changes_nothing(arith, half_done, tmp_path, case):
    syntax = prompts_dir(tmp_path / "syntax", "{{ attempt ")
    runtime = prompts_dir(tmp_path / "runtime", "{{ 1 / 0 }}")
    extra = {"missing_script": [f"edit.improvement=script:{tmp_path / 'no_such_script.py'}"],
             "template_syntax": [f"edit.prompts_dir={syntax}"],
             "template_runtime": [f"edit.prompts_dir={runtime}"],
             "no_api_key": ["edit.api.api_key_env=TRIPOST_RELIABILITY_UNSET_KEY"],
             "bad_api_value": ["edit.api.max_retries=-1"]}[case]
    before = snapshot(half_done)
    with FakeMessagesServer() as server:
        proc = edit_out(arith[0], half_done, server.url, *extra)
        assert server.message_requests == []
    user_error(proc)
    after = snapshot(half_done)
    assert after.keys() == before.keys(), f"files added or removed: {sorted(after.keys() ^ before.keys())}"
    changed = sorted(k for k in before if before[k] != after[k])
    assert not changed, f"changed by a failed start: {changed}"


# ----------------------------------------------------------------------------------------------
# The tiny runs: items 1 (iterate), 11, 12, 14


EXPERT_SCRIPT = '''"""Feedback and improvement for "a + b =" questions (tests/test_reliability.py)."""
import re

from tripost import steps


def gold(example):
    a, b = map(int, re.findall(r"-?\\d+", example["question"])[:2])
    return f"(1) {a} + {b} = {a + b}.\\n" + steps.final_line(str(a + b))


def feedback(example, attempt):
    want = steps.parse_steps(gold(example))
    got = [s for s in steps.parse_steps(attempt) if s.label != "0"]
    for i, s in enumerate(got):
        if i >= len(want) or " ".join(s.render().split()) != want[i].render():
            return steps.feedback_wrong(i, s.label, s.text[:40], f"it should be: {want[min(i, len(want) - 1)].text}")
    if len(got) < len(want):
        return None
    return steps.feedback_correct(len(want) - 1)


def improve(example, attempt, feedback):
    return gold(example)
'''

# Test instrumentation for the killed runs: `python slow_flush.py ARGS` is `tripost ARGS`, except
# that flushing one of the files named in TRIPOST_TEST_SLOW_FILES waits TRIPOST_TEST_SLOW_S
# seconds, so a file really holds some but not all of its records while the poller looks.
SLOW_FLUSH = '''import os, sys, time
from tripost import io
from tripost.cli import main

_flush = io.JsonlAppender.flush
_names = set(os.environ["TRIPOST_TEST_SLOW_FILES"].split(","))


def flush(self):
    _flush(self)
    if self.path.name in _names:
        time.sleep(float(os.environ["TRIPOST_TEST_SLOW_S"]))


io.JsonlAppender.flush = flush
sys.exit(main(sys.argv[1:]))
'''

N_TRAIN = 12


@pytest.fixture(scope="module")
def sums(tmp_path_factory):
    """The sums task file (60 questions), the expert script and the slow-flush wrapper, in one
    place shared by every run (the script's path is part of the edit stage's fingerprint)."""
    d = tmp_path_factory.mktemp("sums")
    rng = random.Random(0)
    pairs: list[tuple[int, int]] = []
    while len(pairs) < 60:
        a, b = rng.randint(0, 9), rng.randint(0, 9)
        if (a, b) not in pairs:
            pairs.append((a, b))
    io.write_jsonl(d / "sums.jsonl", [{"question": f"{a} + {b} =", "answer": str(a + b),
                                       "rationale": f"(1) {a} + {b} = {a + b}."} for a, b in pairs])
    (d / "sums_expert.py").write_text(EXPERT_SCRIPT)
    (d / "slow_flush.py").write_text(SLOW_FLUSH)
    return d


def run_args(sums: Path, name: str) -> list[str]:
    return ["iterate", "--name", name, "--config", str(PROJECT_ROOT / "configs/demo.yaml"),
            "task.name=jsonl", f"task.path={sums / 'sums.jsonl'}", "task.rationale_field=rationale",
            f"task.max_train={N_TRAIN}", "task.max_test=6", "iterate.warmup_questions=48", "iterate.warmup_epochs=12",
            f"edit.feedback=script:{sums / 'sums_expert.py'}", f"edit.improvement=script:{sums / 'sums_expert.py'}",
            "init_model.vocab_size=300", "init_model.hidden_size=64", "init_model.intermediate_size=128",
            "init_model.num_hidden_layers=1", "init_model.num_attention_heads=2", "init_model.num_key_value_heads=2",
            "collect.max_new_tokens=40", "evaluate.max_new_tokens=40", "collect.batch_size=4", "edit.batch_size=4",
            "evaluate.batch_size=16", "train.epochs=1", "train.micro_batch_size=4", "iterate.rounds=1",
            # No judge at test time: then no stage before the edit carries the edit settings, so the
            # edit's experts can be changed on a copy of a finished round 0 and collect.
            "tripost.judge=null", "iterate.base_cache=null", "iterate.warmup_train={}", "train.threads=1",
            "train.learning_rate=0.003"]  # the demo's rounds train at 5e-4: too little for this warm-up


@pytest.fixture(scope="module")
def runs(sums, tmp_path_factory):
    """Two uninterrupted tiny runs, "ref" and "twin", made side by side: (ref dir, twin dir)."""
    cwd = tmp_path_factory.mktemp("runs")
    procs = {}
    for name in ("ref", "twin"):
        log = (cwd / f"{name}.stderr").open("w")
        procs[name] = (subprocess.Popen([sys.executable, "-m", "tripost", *run_args(sums, name)], cwd=cwd, env=env(),
                                        stdout=subprocess.DEVNULL, stderr=log), log)
    for name, (proc, log) in procs.items():
        proc.wait(timeout=900)
        log.close()
        assert proc.returncode == 0, (cwd / f"{name}.stderr").read_text()[-3000:]
    ref = cwd / "runs" / "ref"
    # The runs are only a test of resuming if the experts really edit in several batches.
    edit = io.read_json(ref / "round_1/edit/summary.json")
    assert edit["kept"] + edit["dropped"] == N_TRAIN and edit["calls"].get("feedback", 0) >= N_TRAIN, edit
    return ref, cwd / "runs" / "twin"


def kill_when(args: list[str], cwd: Path, ready, slow_files: str, sums: Path, timeout: float = 600) -> None:
    """Run `tripost ARGS` with slow flushes of `slow_files`, SIGKILL its process group as soon as
    ready() is true (failing if it finishes first)."""
    log = cwd / "killed.stderr"
    with log.open("w") as err:
        proc = subprocess.Popen([sys.executable, str(sums / "slow_flush.py"), *args], cwd=cwd,
                                env=env(TRIPOST_TEST_SLOW_FILES=slow_files, TRIPOST_TEST_SLOW_S="1.0"),
                                stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)
        deadline = time.time() + timeout
        try:
            while not ready():
                assert proc.poll() is None, f"exited ({proc.returncode}) before the kill point: " \
                                            f"{log.read_text()[-2000:]}"
                assert time.time() < deadline, "the kill point was not reached"
                time.sleep(0.02)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def copy_run(ref: Path, cwd: Path, keep: tuple[str, ...]) -> Path:
    """A copy of the reference run with only the stage directories `keep` (as a run killed right
    after them would have)."""
    run = cwd / "runs" / ref.name
    shutil.copytree(ref / "round_0", run / "round_0")
    for sid in keep:
        shutil.copytree(ref / sid, run / sid)
    return run


def artifacts(run_dir: Path) -> dict:
    """What a run produced: every JSONL file's lines (order-insensitive; not train_log.jsonl), every
    metrics.json and the summary's rows without wall times."""
    out: dict = {}
    for path in sorted(run_dir.rglob("*.jsonl")):
        rel = path.relative_to(run_dir).as_posix()
        if path.name != "train_log.jsonl" and ".old-" not in rel:
            out[rel] = sorted(path.read_text().splitlines())
    for path in sorted(run_dir.rglob("metrics.json")):
        out[path.relative_to(run_dir).as_posix()] = io.read_json(path)
    rows = io.read_json(run_dir / "summary.json")["rows"]
    out["summary.json rows"] = [{k: v for k, v in row.items() if k != "wall_s"} for row in rows]
    return out


def assert_same_run(run: Path, ref: Path) -> None:
    from safetensors.torch import load_file

    got, want = artifacts(run), artifacts(ref)
    assert got.keys() == want.keys(), sorted(got.keys() ^ want.keys())
    assert [k for k in want if got[k] != want[k]] == []
    for model in ("round_1/train/learner/model", "baseline/round_1/train/model"):
        a, b = load_file(str(run / model / "model.safetensors")), load_file(str(ref / model / "model.safetensors"))
        assert a.keys() == b.keys()
        assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-4, model


def test_killed_in_collect_and_in_a_multi_batch_edit_then_rerun_equals_uninterrupted(runs, sums, tmp_path):
    """SIGKILL while round_1/collect/attempts.jsonl holds some but not all records; rerun and SIGKILL
    again while the edit (3 batches of 4) has written some but not all; rerun to the end."""
    ref, _ = runs
    run = copy_run(ref, tmp_path, keep=())
    attempts, edit = run / "round_1/collect/attempts.jsonl", run / "round_1/edit"

    def edited() -> int:
        return complete_lines(edit / "trajectories.jsonl") + complete_lines(edit / "dropped.jsonl")

    kill_when(run_args(sums, "ref"), tmp_path, lambda: 0 < complete_lines(attempts) < N_TRAIN, "attempts.jsonl", sums)
    assert 0 < complete_lines(attempts) < N_TRAIN
    assert io.read_json(run / "round_1/collect/manifest.json")["status"] == "running"
    kill_when(run_args(sums, "ref"), tmp_path, lambda: 0 < edited() < N_TRAIN, "trajectories.jsonl,dropped.jsonl",
              sums)
    assert 0 < edited() < N_TRAIN
    assert io.read_json(run / "round_1/collect/manifest.json")["status"] == "done"
    assert io.read_json(edit / "manifest.json")["status"] == "running"
    proc = tripost(*run_args(sums, "ref"), cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_same_run(run, ref)


def test_identical_runs_record_identical_fingerprints(runs):
    ref, twin = runs
    manifests = sorted(p.relative_to(ref) for p in ref.rglob("manifest.json"))
    assert manifests == sorted(p.relative_to(twin) for p in twin.rglob("manifest.json"))
    assert len(manifests) == 12
    for rel in manifests:
        a, b = io.read_json(ref / rel), io.read_json(twin / rel)

        def inputs(m: dict, run: Path) -> dict:  # inputs are run-relative; map any absolute path too
            return {k.replace(str(run.resolve()), "<run>"): v for k, v in m["inputs"].items()}

        assert inputs(a, ref) == inputs(b, twin), rel
        assert a["fingerprint"] == b["fingerprint"], rel


def test_iterate_stops_with_exit_2_when_the_api_is_unreachable(runs, sums, tmp_path):
    ref, _ = runs
    run = copy_run(ref, tmp_path, keep=("round_1/collect",))
    with FakeMessagesServer() as gone:
        url = gone.url
    args = [*run_args(sums, "ref"), "edit.feedback=llm", "edit.improvement=llm", f"edit.api.base_url={url}",
            f"edit.api.api_key_env={KEY_ENV}", "edit.api.max_retries=1", "edit.api.retry_base_s=0.01",
            "edit.api.retry_max_s=0.05"]
    proc = tripost(*args, cwd=tmp_path, timeout=600)
    user_error(proc, f"{N_TRAIN} trajectories not done", "rerun")
    assert "[iterate] round_1/edit ..." in proc.stderr  # round 0 and collect were kept as they were
    assert io.read_json(run / "round_1/edit/manifest.json")["status"] == "running"
    edit = run / "round_1/edit"
    assert complete_lines(edit / "trajectories.jsonl") + complete_lines(edit / "dropped.jsonl") == 0
    assert not (run / "round_1/process").exists()


TRAIN_STEPS = 8


def train_args(ref: Path, out: Path) -> list[str]:
    return ["train", "--examples", str(ref / "round_0/warmup_process/base.jsonl"),
            "--model", str(ref / "round_0/init_model"), "--out", str(out), f"train.max_steps={TRAIN_STEPS}",
            "train.micro_batch_size=4", "train.save_every_steps=2", "train.log_every_steps=1"]


def side_by_side(*commands: list[str], timeout: int = 600) -> list[subprocess.CompletedProcess]:
    """Run `tripost` commands at the same time (each is mostly start-up); their results."""
    procs = [subprocess.Popen([sys.executable, "-m", "tripost", *args], env=env(), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for args in commands]
    results = []
    for args, proc in zip(commands, procs):
        out, err = proc.communicate(timeout=timeout)
        results.append(subprocess.CompletedProcess(args, proc.returncode, out, err))
    return results


def log_steps(out: Path) -> list[int]:
    return [r["step"] for _, r in io.jsonl_objects(out / "train_log.jsonl")]


def tensorboard_steps(out: Path) -> list[int]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = list((out / "tensorboard").glob("events.out.tfevents.*"))
    assert len(events) == 1, events
    acc = EventAccumulator(str(out / "tensorboard"))
    acc.Reload()
    return [e.step for e in acc.Scalars("train/loss")]


def test_restarted_training_keeps_one_log(runs, sums, tmp_path):
    from tripost.train import latest_checkpoint

    ref, _ = runs
    out = tmp_path / "train"

    def checkpoint_and_more() -> bool:  # a complete checkpoint, and steps logged after it
        ckpt = latest_checkpoint(out)
        return ckpt is not None and complete_lines(out / "train_log.jsonl") > int(ckpt.name.split("_")[1])

    kill_when(train_args(ref, out), tmp_path, checkpoint_and_more, "train_log.jsonl", sums)
    resumed = int(latest_checkpoint(out).name.split("_")[1])
    killed_log = (out / "train_log.jsonl").read_text().splitlines()
    assert len(killed_log) > resumed and (out / "tensorboard").is_dir()  # steps it will redo, logged twice before
    # The same leftovers with no complete checkpoint: a kill before the first one.
    fresh = tmp_path / "fresh"
    shutil.copytree(out, fresh)
    shutil.rmtree(fresh / "checkpoints")

    resume, restart = side_by_side(train_args(ref, out), train_args(ref, fresh))
    assert resume.returncode == 0, resume.stderr[-3000:]
    assert f"resuming {out} from step {resumed} of {TRAIN_STEPS}" in resume.stderr
    assert log_steps(out) == list(range(1, TRAIN_STEPS + 1))
    assert (out / "train_log.jsonl").read_text().splitlines()[:resumed] == killed_log[:resumed]
    assert tensorboard_steps(out) == list(range(1, TRAIN_STEPS + 1))

    assert restart.returncode == 0, restart.stderr[-3000:]
    assert f"starting over {fresh}: no complete checkpoint" in restart.stderr
    assert log_steps(fresh) == list(range(1, TRAIN_STEPS + 1))
    assert tensorboard_steps(fresh) == list(range(1, TRAIN_STEPS + 1))
