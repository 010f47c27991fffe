"""The generated multistep arithmetic task: sizes, seen/unseen split, answers, gold rationales."""

import re

import pytest

from tripost import arith, steps
from tripost.config import TaskConfig
from tripost.tasks import get_task, make_example
from tripost.tasks import multistep_arithmetic as ma


def make(**kwargs):
    return get_task(TaskConfig(name="multistep_arithmetic", **kwargs))


@pytest.fixture(scope="module")
def default_split():
    return make().split()


def test_default_sizes_and_tagging(default_split):
    train, test = default_split
    n_seen = ma.SEEN_PER_SUBTASK * len(ma.SEEN)
    n_unseen = ma.UNSEEN_PER_SUBTASK * len(ma.UNSEEN)
    assert len(train) == n_seen - round(ma.SEEN_PER_SUBTASK * 0.2) * len(ma.SEEN)
    assert len(test) == len(ma.SEEN) * round(ma.SEEN_PER_SUBTASK * 0.2) + n_unseen
    assert all(ex.seen for ex in train), "unseen examples must never be trained on"
    assert {ex.subtask for ex in train} == {"l3_d2", "l4_d2"}
    assert {ex.subtask for ex in test if not ex.seen} == {"l5_d2", "l6_d2", "l3_d3", "l4_d3"}
    assert not {ex.id for ex in train} & {ex.id for ex in test}
    assert len({ex.id for ex in train + test}) == len(train) + len(test)


def test_questions_look_like_bigbench(default_split):
    train, test = default_split
    for ex in (train + test)[:300]:
        length, depth = ex.meta["length"], ex.meta["depth"]
        assert ex.subtask == f"l{length}_d{depth}"
        assert ex.question.endswith(") =")
        numbers = re.findall(r"-?\d+", ex.question)
        assert len(numbers) == length * 2 ** (depth - 1)
        assert all(-9 <= int(n) <= 9 for n in numbers)
        assert re.fullmatch(r"[-()0-9 +*=]+", ex.question)
        assert ex.answer == str(arith.evaluate(ma.question_expression(ex.question)))
        # BIG-bench spacing: one space around operators, negatives written "-4"
        assert arith.render(ma.question_expression(ex.question)) + " =" == ex.question


def test_split_is_deterministic_by_seed():
    a_train, a_test = make(seed=1, max_train=50, max_test=30).split()
    b_train, b_test = make(seed=1, max_train=50, max_test=30).split()
    c_train, _ = make(seed=2, max_train=50, max_test=30).split()
    assert [e.id for e in a_train] == [e.id for e in b_train]
    assert [e.id for e in a_test] == [e.id for e in b_test]
    assert [e.id for e in a_train] != [e.id for e in c_train]
    assert len(a_train) == 50 and len(a_test) == 30
    assert all(e.seen for e in a_train)
    assert make(seed=1).load("train") == make(seed=1).load("train")


def test_caps_larger_than_the_defaults_are_met():
    train, test = make(max_train=2500, max_test=1500).split()
    assert len(train) == 2500 and len(test) == 1500
    assert all(e.seen for e in train)


def test_answer_extraction_and_normalization():
    task = make(max_train=5, max_test=5)
    ex = task.load("train")[0]
    value = int(ex.answer)
    right = f"(1) some work\n{steps.final_line(str(value))}"
    assert task.extract_answer(right) == str(value)
    assert task.is_correct(ex, right)
    for variant in (f"{value}", f" {value} ", f"{value}."):
        assert task.is_correct(ex, f"(Final response) So the answer is {variant}")
    assert task.normalize("-12") == task.normalize(" -12 ") == task.normalize("-12.") == "-12"
    assert not task.is_correct(ex, steps.final_line(str(value + 1)))
    assert not task.is_correct(ex, "")
    assert not task.is_correct(ex, "(1) I am not sure.\n(Final response) So the answer is unknown.")
    assert task.extract_answer("garbage without an answer") is None
    assert not task.is_correct(ex, "(Final response) So the answer is 9**9**9.")


def test_answer_extraction_agrees_with_steps_and_stays_fast_on_long_spaces():
    task = make(max_train=5, max_test=5)
    samples = ["(1) a\n(Final response) So the answer is -15.", "(Final response) So the answer is  -15 .\n",
               "x\nthe answer is\n 7.\nmore", "(Final response) So the answer is 3\nblah",
               "(Final response) The answer is -1..", "nothing", "(Final response) So the answer is",
               "(1) the answer is 5.\n(2) so the answer is 6", "So the answer is 4. Or 5."]
    for text in samples:
        assert task.extract_answer(text) == steps.extract_final_answer(text), text
    # A backtracking regex needed seconds for a few thousand spaces; ours is linear, and text over
    # steps.MAX_CHARS is not parsed at all: an answer behind a long run of padding is no answer.
    gold = make_example("multistep_arithmetic", "(1 + 2) =", "-15")
    for pad in (15_000, 50_000):
        for text in ("(Final response) So the answer is -15" + " " * pad + "x",
                     "So the answer is -15" + " " * pad + "x"):
            if len(text) <= steps.MAX_CHARS:
                assert task.extract_answer(text).startswith("-15")
            else:
                assert task.extract_answer(text) is None
            assert task.is_correct(gold, text) is False


def test_gold_rationale_format():
    question = "((-7 + 6 * 2) * (3 - 5 - 1)) ="
    assert ma.rationale(question) == (
        '(1) This equation can be written as "A * B", where A = (-7 + 6 * 2) and B = (3 - 5 - 1).\n'
        "(2) Let's calculate A = (-7 + 6 * 2) = (-7 + 12) = 5.\n"
        "(3) Let's calculate B = (3 - 5 - 1) = (-2 - 1) = -3.\n"
        "(4) Then, the final equation is A * B = 5 * -3 = -15.\n"
        "(Final response) So the answer is -15.")
    deep = ma.rationale("(((1 + 2 * 3) - (3 * 4 - 1)) + ((1 - 2) * (4 + 4))) =")
    assert ("(2) Let's calculate A = ((1 + 2 * 3) - (3 * 4 - 1)) = ((1 + 6) - (12 - 1)) = (7 - 11) = -4."
            in deep)
    assert deep.endswith("(4) Then, the final equation is A + B = -4 + -8 = -12.\n"
                         "(Final response) So the answer is -12.")


def test_gold_rationales_are_correct_for_1000_examples(default_split):
    task = make()
    train, test = default_split
    unseen = [e for e in test if not e.seen]
    sample = train[:1000 - len(unseen)] + unseen
    assert len(sample) == 1000
    for ex in sample:
        text = task.gold_rationale(ex)
        assert task.is_correct(ex, text), (ex.question, text)
        parsed = steps.parse_steps(text)
        assert [s.label for s in parsed] == [str(i + 1) for i in range(len(parsed) - 1)] + ["Final response"]
        # every "=" link keeps the value
        for step in parsed[1:-1]:
            # drop "Let's calculate A" / "Then, the final equation is A * B"; the rest keeps the value
            chain = step.text.rstrip(".").split(" = ")[1:]
            assert len({arith.evaluate(arith.parse(c)) for c in chain}) == 1, step.text
