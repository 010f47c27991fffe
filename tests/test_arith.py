"""The allow-list arithmetic parser: exact values, canonical rendering, step reduction, and refusal
of everything that is not plain arithmetic."""

import threading
from fractions import Fraction

import pytest

from tripost import arith
from tripost.arith import ArithError, evaluate, parse, reduction_chain, render


def finishes(fn, limit_s=1.0):
    """Run fn() in a thread; return (done, result or exception). A safety bound, not a speed goal."""
    box = {}

    def run():
        try:
            box["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - handed back to the test
            box["value"] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(limit_s)
    return not t.is_alive(), box.get("value")


@pytest.mark.parametrize("text,value", [
    ("1 + 2 * 3", 7),
    ("(-7 + -189)", -196),
    ("3 - -4", 7),
    ("((-1 + 2) * (3 - -4))", 7),
    ("-(1 + 2) * 3", -9),
    ("2 * 3 * 4 - 5 - 6", 13),
    ("  ( 8 )  ", 8),
    ("+5 - 2", 3),
    ("12 / 4", 3),
    ("123456789012345678901234567890 * 10", 1234567890123456789012345678900),
])
def test_values_are_exact(text, value):
    assert evaluate(parse(text)) == value
    assert type(evaluate(parse(text))) is int


def test_division_is_exact_fraction():
    assert evaluate(parse("1 / 3 + 1 / 6")) == Fraction(1, 2)
    with pytest.raises(ArithError, match="division by zero"):
        evaluate(parse("1 / (2 - 2)"))


def test_render_is_canonical():
    assert render(parse("((-1+2)*(3- -4))")) == "((-1 + 2) * (3 - -4))"
    assert render(parse("- 4")) == "-4"


def test_names_only_when_allowed():
    node = parse("A * (B - 3)", names=True)
    assert arith.names_in(node) == ["A", "B"]
    assert evaluate(node, {"A": 2, "B": 5}) == 4
    with pytest.raises(ArithError):
        parse("A * B")
    with pytest.raises(ArithError):
        evaluate(node)
    with pytest.raises(ArithError):
        parse("AB + 1", names=True)


def test_reduction_chain_products_first_then_left_to_right():
    assert reduction_chain(parse("(-7 + 6 * 2)")) == ["(-7 + 6 * 2)", "(-7 + 12)", "5"]
    # one multiplication per step, in every product of the group at once
    assert reduction_chain(parse("(6 * 5 * 8)")) == ["(6 * 5 * 8)", "(30 * 8)", "240"]
    assert reduction_chain(parse("(1 - 2 * -3 * 4 + 5 * 6)")) == [
        "(1 - 2 * -3 * 4 + 5 * 6)", "(1 - -6 * 4 + 30)", "(1 - -24 + 30)", "(25 + 30)", "55"]
    assert reduction_chain(parse("(1 - 2 + 3 - 4)")) == ["(1 - 2 + 3 - 4)", "(-1 + 3 - 4)", "(2 - 4)", "-2"]
    assert reduction_chain(parse("((1 + 2 * 3) - (3 * 4 - 1))")) == [
        "((1 + 2 * 3) - (3 * 4 - 1))", "((1 + 6) - (12 - 1))", "(7 - 11)", "-4"]
    # every step keeps the value
    text = "(((0 * 2 - 8 + 0) * (2 - -3 + 0 - -9)) - ((-3 * -5 * -6 + 6) + (-1 - -5 * -5 + 2)))"
    chain = reduction_chain(parse(text))
    assert len({evaluate(parse(c)) for c in chain}) == 1 and chain[-1] == "-4"


def test_parse_int():
    for text in ("-12", " -12 ", "-12.", "- 12", "\u221212"):
        assert arith.parse_int(text) == -12
    for text in ("12a", "1e3", "", "1 2", "9" * 31, "(1)"):
        assert arith.parse_int(text) is None


REFUSED = [
    "__import__('os')",
    "__import__('os').system('echo hi')",
    "(1).__class__",
    "x.real",
    "lambda: 1",
    "(lambda x: x)(1)",
    "a",
    "A",  # names only with names=True
    "9**9**9",
    "2 ** 100000",
    "1e9999999",
    "1.5 + 2",
    "0x10",
    "1_000",
    "abs(-3)",
    "[1, 2]",
    "1; 2",
    "1 + ",
    "(1 + 2",
    "1 + 2)",
    "",
    "   ",
    "(" * 10_000 + "1" + ")" * 10_000,
    "(" * 51 + "1" + ")" * 51,
    "-" * 60 + "1",
    "1" * 31,
    "1 + " * 600 + "1",  # longer than MAX_CHARS
    "9" * 30 + " * " + " * ".join(["9" * 30] * 60),  # intermediate result too large
    "\x00",
    "１ + ２",  # full-width digits are not ASCII digits
]


@pytest.mark.parametrize("text", REFUSED)
def test_refuses_everything_else_promptly(text):
    def attempt():
        return evaluate(parse(text))

    done, result = finishes(attempt)
    assert done, f"took more than 1 s: {text[:40]!r}"
    assert isinstance(result, ArithError), f"accepted {text[:40]!r}: {result!r}"
    assert isinstance(result, ValueError)
    assert len(str(result)) < 120  # messages never echo big inputs


def test_limits_allow_the_largest_legal_inputs():
    depth = arith.MAX_DEPTH
    assert evaluate(parse("(" * depth + "1" + ")" * depth)) == 1
    assert evaluate(parse("9" * arith.MAX_DIGITS)) == int("9" * arith.MAX_DIGITS)
