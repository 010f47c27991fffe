"""The built-in data tasks on the real BIG-bench files: split sizes, seen/unseen tagging, answer
extraction, and the errors a user gets for missing or malformed data.

    pytest tests/test_tasks.py -q
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from tripost import steps
from tripost.config import load_config
from tripost.errors import TripostError
from tripost.tasks import get_task
from tripost.tasks.base import as_number
from tripost.tasks.multiple_choice import choice_letter, parse_options

BIGBENCH_DIR = Path(__file__).resolve().parents[2] / "shared/data/bigbench"
needs_data = pytest.mark.skipif(not BIGBENCH_DIR.is_dir(), reason="shared BIG-bench data not present")


def make_task(name, **overrides):
    pairs = [("task.name", name)]
    if name != "jsonl":
        pairs.append(("task.data_dir", str(BIGBENCH_DIR)))
    pairs += [(f"task.{k}", v) for k, v in overrides.items()]
    return get_task(load_config(None, pairs).task)


def final(answer: str) -> str:
    return "(1) Some reasoning.\n" + steps.final_line(answer)


def check_split(task):
    """Shared invariants; returns (all, train, test)."""
    everything = task._load_all()
    train, test = task.load("train"), task.load("test")
    assert len({e.id for e in everything}) == len(everything)  # no duplicate questions
    assert {e.id for e in train}.isdisjoint({e.id for e in test})
    assert len(train) + len(test) == len(everything)
    assert all(e.seen for e in train), "unseen examples must only be in test"
    assert [e.id for e in task.load("test")] == [e.id for e in test], "split must be deterministic"
    return everything, train, test


# ----------------------------------------------------------------------------------------------
# Split sizes and tagging


@needs_data
def test_word_sorting_split():
    task = make_task("word_sorting")
    everything, train, test = check_split(task)
    by_len = Counter(len(e.question.split("List:")[1].split()) for e in everything)
    print("word_sorting: total", len(everything), "train", len(train), "test", len(test),
          "seen", sum(e.seen for e in everything), "test seen", sum(e.seen for e in test))
    assert len(everything) == 1900
    assert sorted(by_len) == list(range(2, 21)) and set(by_len.values()) == {100}
    for e in everything:
        n = len(e.question.split("List:")[1].split())
        assert e.subtask == f"words_{n}" and e.seen == (n <= 7)
        assert e.question.startswith("Sort the following words alphabetically:\nList: ")
        assert sorted(e.question.split("List:")[1].split()) == e.answer.split()
    assert sum(e.seen for e in everything) == 600
    assert len(train) == 480 and len(test) == 1420
    assert sum(e.seen for e in test) == 120  # 20 of each seen length
    assert Counter(e.subtask for e in test if e.seen) == {f"words_{n}": 20 for n in range(2, 8)}
    assert task.has_gold_rationale


@needs_data
def test_date_understanding_split():
    task = make_task("date_understanding")
    everything, train, test = check_split(task)
    print("date_understanding: total", len(everything), "train", len(train), "test", len(test))
    assert len(everything) == 369 and len(train) == 295 and len(test) == 74
    assert all(e.seen and e.subtask == "" for e in everything)
    assert not task.has_gold_rationale and task.gold_rationale(everything[0]) is None
    # the shuffled option order spreads the gold letter over all six letters
    assert set(Counter(e.answer for e in everything)) == {"(A)", "(B)", "(C)", "(D)", "(E)", "(F)"}


@needs_data
def test_logical_deduction_split():
    task = make_task("logical_deduction")
    everything, train, test = check_split(task)
    sizes = Counter(e.subtask for e in everything)
    print("logical_deduction:", dict(sizes), "train", len(train), "test", len(test),
          "test by subtask", dict(Counter(e.subtask for e in test)))
    assert sizes == {"three_objects": 300, "five_objects": 500, "seven_objects": 700}
    assert all(e.seen == (e.subtask != "seven_objects") for e in everything)
    assert Counter(e.subtask for e in train) == {"three_objects": 240, "five_objects": 400}
    assert Counter(e.subtask for e in test) == {"three_objects": 60, "five_objects": 100, "seven_objects": 700}
    for e in everything:
        n = {"three_objects": 3, "five_objects": 5, "seven_objects": 7}[e.subtask]
        assert list(parse_options(e.question)) == list("ABCDEFG"[:n])
        assert e.question.startswith("The following paragraphs each describe a set of")
        assert parse_options(e.question)[e.answer[1]] == e.meta["answer_text"]


@needs_data
def test_option_order_is_seeded_by_content_not_by_task_seed():
    a = make_task("logical_deduction")._load_all()
    b = make_task("logical_deduction", seed=7)._load_all()
    assert [(e.question, e.answer) for e in a] == [(e.question, e.answer) for e in b]
    split_a, split_b = make_task("logical_deduction").load("test"), make_task("logical_deduction", seed=7).load("test")
    assert [e.id for e in split_a] != [e.id for e in split_b]  # task.seed changes the split only


@needs_data
def test_max_caps():
    task = make_task("word_sorting", max_train=10, max_test=5)
    assert len(task.load("train")) == 10 and len(task.load("test")) == 5
    with pytest.raises(TripostError, match="unknown split"):
        task.load("dev")


# ----------------------------------------------------------------------------------------------
# Answer extraction and judging


@needs_data
def test_word_sorting_judging():
    task = make_task("word_sorting")
    ex = next(e for e in task._load_all() if e.question.endswith("List: stick gelatine"))
    assert ex.answer == "gelatine stick"
    assert task.is_correct(ex, task.gold_rationale(ex))
    assert task.is_correct(ex, final("gelatine stick"))
    assert task.is_correct(ex, final("Gelatine,  stick"))        # case, commas and spacing
    assert task.is_correct(ex, "So the answer is gelatine stick")  # no step format at all
    assert task.is_correct(ex, "(Final response) So the answer is: gelatine stick.")  # TriPosT's colon
    assert task.extract_answer(final("gelatine stick")) == "gelatine stick"
    assert not task.is_correct(ex, final("stick gelatine"))       # wrong order
    assert not task.is_correct(ex, final("gelatine"))             # missing word
    assert not task.is_correct(ex, final("gelatine stick glue"))  # extra word
    for garbage in ["", "gelatine stick", "(1) The first letter:", "\x00\x01 ???"]:
        assert task.extract_answer(garbage) is None and not task.is_correct(ex, garbage)


@needs_data
@pytest.mark.parametrize("name", ["date_understanding", "logical_deduction"])
def test_multiple_choice_judging(name):
    task = make_task(name)
    ex = task.load("test")[0]
    options = parse_options(ex.question)
    gold = ex.answer[1]
    wrong = next(letter for letter in options if letter != gold)
    right_forms = [f"({gold})", gold, f"({gold}) {options[gold]}", f"{gold}) {options[gold]}",
                   options[gold], options[gold].upper(), f"({gold.lower()})"]
    for form in right_forms:
        assert task.is_correct(ex, final(form)), form
    assert task.is_correct(ex, f"(1) ...\n(Final response) So the answer is: ({gold}).")
    assert task.extract_answer(final(f"({gold}) {options[gold]}")) == f"({gold})"
    assert task.extract_answer(final(options[gold])) == options[gold]  # no letter: text as written
    for form in [f"({wrong})", wrong, f"({wrong}) {options[wrong]}", options[wrong], "(Z)"]:
        assert not task.is_correct(ex, final(form)), form
    for garbage in ["", "I am not sure.", "(1) hmm\n(Final response) So the answer is", "\x00" * 10]:
        assert not task.is_correct(ex, garbage)


def test_choice_letter_rules():
    options = {"A": "05/01/2021", "B": "The black book is the leftmost."}
    assert choice_letter("(B)", options) == "B"
    assert choice_letter("B", options) == "B"
    assert choice_letter("B.", options) == "B"
    assert choice_letter("(A) 05/01/2021", options) == "A"
    assert choice_letter("05/01/2021", options) == "A"
    assert choice_letter("the black book is the leftmost", options) == "B"
    assert choice_letter("Blue", options) is None  # a word starting with a capital is not a letter
    assert choice_letter("", options) is None and choice_letter(None, options) is None


def test_jsonl_numbers_and_judging(tmp_path):
    path = tmp_path / "gsm.jsonl"
    path.write_text(
        '{"q": "How many?", "a": "3 + 4 = <<3+4=7>>7 so 1,000\\n#### 1,000", "kind": "easy"}\n'
        '\n'
        '{"q": "Half of 1?", "a": 0.5, "kind": "hard"}\n'
        '{"q": "Capital of France?", "a": "Paris", "kind": "easy"}\n')
    # Answers are compared as task.judge says: numbers (numeric) or text (exact, the default).
    task = make_task("jsonl", path=str(path), question_field="q", answer_field="a", subtask_field="kind",
                     judge="numeric")
    text_task = make_task("jsonl", path=str(path), question_field="q", answer_field="a", subtask_field="kind")
    gsm, half, text = task._load_all()
    assert (gsm.answer, half.answer, text.answer) == ("1,000", "0.5", "Paris")
    assert gsm.meta["solution"].startswith("3 + 4") and gsm.subtask == "easy" and gsm.seen
    assert task.is_correct(gsm, final("1000")) and task.is_correct(gsm, final("1,000.0"))
    assert task.is_correct(gsm, final("$1,000"))
    assert not task.is_correct(gsm, final("1000 apples"))  # numeric: the whole answer is one number
    assert not task.is_correct(gsm, final("1001")) and not task.is_correct(gsm, final("10 or 1000"))
    assert task.is_correct(half, final("1/2")) and task.is_correct(half, final(".5"))
    assert not task.is_correct(half, final("0.50001"))
    assert text_task.is_correct(text, final("paris")) and not text_task.is_correct(text, final("Lyon"))
    assert not text_task.is_correct(gsm, final("1000"))  # exact: "1000" is not the text "1,000"
    assert task.is_correct(gsm, "So the answer is: 1000.") and text_task.is_correct(text, "So the answer is: Paris.")
    for garbage in ["", "no final line", "\x00", final("__import__('os')")]:
        assert not task.is_correct(gsm, garbage)
    assert as_number("3.0") == as_number("3") and as_number("1e3") is None and as_number("1/0") is None


# ----------------------------------------------------------------------------------------------
# User errors name the path / file:line / field


@pytest.mark.parametrize("name,filename", [("word_sorting", "word_sorting.json"),
                                           ("date_understanding", "date_understanding.json"),
                                           ("logical_deduction", "logical_deduction_three_objects.json")])
def test_missing_data_file(tmp_path, name, filename):
    task = get_task(load_config(None, [("task.name", name), ("task.data_dir", str(tmp_path))]).task)
    with pytest.raises(TripostError) as err:
        task.load("train")
    assert str(tmp_path / filename) in str(err.value)
    no_dir = get_task(load_config(None, [("task.name", name)]).task)
    with pytest.raises(TripostError, match="task.data_dir"):
        no_dir.load("train")


def test_broken_bigbench_file(tmp_path):
    (tmp_path / "word_sorting.json").write_text('{"examples": [{"input": "a b"}]}')
    with pytest.raises(TripostError, match=r"word_sorting.json: examples\[0\]"):
        make_task("word_sorting", data_dir=str(tmp_path)).load("train")
    (tmp_path / "date_understanding.json").write_text("{not json")
    with pytest.raises(TripostError, match="date_understanding.json: not a BIG-bench task file"):
        make_task("date_understanding", data_dir=str(tmp_path)).load("train")


def test_jsonl_errors(tmp_path):
    missing = tmp_path / "nope.jsonl"
    with pytest.raises(TripostError, match=str(missing)):
        make_task("jsonl", path=str(missing)).load("train")
    with pytest.raises(TripostError, match="task.path"):
        make_task("jsonl").load("train")

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "q", "answer": "1"}\n\n{"question": "q2", "answer": \n')
    with pytest.raises(TripostError, match=rf"{bad}:3: malformed JSON"):
        make_task("jsonl", path=str(bad)).load("train")

    no_field = tmp_path / "field.jsonl"
    no_field.write_text('{"question": "q", "answer": "1"}\n{"question": "q2", "solution": "2"}\n')
    with pytest.raises(TripostError, match=rf"{no_field}:2: missing field 'answer'"):
        make_task("jsonl", path=str(no_field)).load("train")
    with pytest.raises(TripostError, match=rf"{no_field}:1: missing field 'kind'"):
        make_task("jsonl", path=str(no_field), subtask_field="kind").load("train")

    not_object = tmp_path / "list.jsonl"
    not_object.write_text('["q", "a"]\n')
    with pytest.raises(TripostError, match=rf"{not_object}:1: expected a JSON object"):
        make_task("jsonl", path=str(not_object)).load("train")

    nested = tmp_path / "nested.jsonl"
    nested.write_text('{"question": {"text": "q"}, "answer": "1"}\n')
    with pytest.raises(TripostError, match=rf"{nested}:1: field 'question' must be a string"):
        make_task("jsonl", path=str(nested)).load("train")
