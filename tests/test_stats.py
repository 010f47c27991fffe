"""tripost.stats against published values and an independent high-precision implementation."""

import math
import random
from decimal import Decimal, getcontext
from fractions import Fraction

import pytest

from tripost.stats import (format_interval, format_p, mcnemar_exact, mean_and_spread,
                           normal_quantile, paired_difference, wilson_interval)

# z_{0.975} to 40 digits (sqrt(2) * erfinv(0.95)).
Z975 = Decimal("1.959963984540054235524594430520551527956")


# --- independent reference: the textbook formulas in 50-digit Decimal arithmetic -------------

def ref_wilson(k, n, z=Z975):
    getcontext().prec = 50
    k, n = Decimal(k), Decimal(n)
    z2 = z * z
    center = (k + z2 / 2) / (n + z2)
    half = z / (n + z2) * (k * (n - k) / n + z2 / 4).sqrt()
    return center - half, center + half


def ref_newcombe(a, b, c, d, z=Z975):
    """Newcombe (1998) method 10 for the 2x2 paired table [[a, b], [c, d]]."""
    getcontext().prec = 50
    n = a + b + c + d
    p1, p2 = Decimal(a + b) / n, Decimal(a + c) / n
    l1, u1 = ref_wilson(a + b, n, z)
    l2, u2 = ref_wilson(a + c, n, z)
    margins = (a + b) * (c + d) * (a + c) * (b + d)
    cross = Decimal(a * d - b * c)
    if cross > 0:
        cross = max(cross - Decimal(n) / 2, Decimal(0))
    phi = Decimal(0) if margins == 0 else cross / Decimal(margins).sqrt()
    diff = p1 - p2
    low = diff - ((p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2).sqrt()
    high = diff + ((u1 - p1) ** 2 - 2 * phi * (u1 - p1) * (p2 - l2) + (p2 - l2) ** 2).sqrt()
    return diff, low, high


def vectors(a, b, c, d):
    """Correctness vectors (first, second): a both right, b first only, c second only, d neither."""
    pairs = [(True, True)] * a + [(True, False)] * b + [(False, True)] * c + [(False, False)] * d
    random.Random(0).shuffle(pairs)
    return [x for x, _ in pairs], [y for _, y in pairs]


# --- normal quantile ---------------------------------------------------------------------------

@pytest.mark.parametrize("p,x", [
    (0.975, 1.959963984540054),
    (0.025, -1.959963984540054),
    (0.995, 2.5758293035489008),
    (0.9, 1.2815515655446004),
    (0.5, 0.0),
    (1e-10, -6.361340902404056),
    (1e-6, -4.753424308822899),
])
def test_normal_quantile_known_values(p, x):
    assert normal_quantile(p) == pytest.approx(x, abs=1e-12)


def test_normal_quantile_inverts_the_cdf():
    for p in [1e-300, 1e-12, 0.001, 0.02425, 0.1, 0.3, 0.49, 0.51, 0.7, 0.97575, 0.999]:
        x = normal_quantile(p)
        assert 0.5 * math.erfc(-x / math.sqrt(2)) == pytest.approx(p, rel=1e-13)


@pytest.mark.parametrize("p", [0.0, 1.0, -0.1, 2.0])
def test_normal_quantile_rejects_out_of_range(p):
    with pytest.raises(ValueError):
        normal_quantile(p)


# --- Wilson ------------------------------------------------------------------------------------

@pytest.mark.parametrize("k,n,low,high", [
    # Newcombe (1998), "Two-sided confidence intervals for the single proportion", method 3.
    (81, 263, 0.2553, 0.3662),
    (15, 148, 0.0624, 0.1605),
    (0, 20, 0.0, 0.1611),
    (1, 29, 0.0061, 0.1718),
])
def test_wilson_published_values(k, n, low, high):
    lo, hi = wilson_interval(k, n)
    assert round(lo, 4) == low and round(hi, 4) == high


@pytest.mark.parametrize("k,n", [(81, 263), (15, 148), (1, 29), (1, 2), (500, 1000), (3, 100000)])
def test_wilson_matches_high_precision_formula(k, n):
    lo, hi = wilson_interval(k, n)
    ref_lo, ref_hi = ref_wilson(k, n)
    assert lo == pytest.approx(float(ref_lo), abs=1e-12)
    assert hi == pytest.approx(float(ref_hi), abs=1e-12)


def test_wilson_edges():
    assert wilson_interval(0, 0) == (0.0, 1.0)
    lo, hi = wilson_interval(0, 10)
    assert lo == 0.0 and hi == pytest.approx(0.27753279986288926, abs=1e-12)
    lo, hi = wilson_interval(10, 10)
    assert hi == 1.0 and lo == pytest.approx(1 - 0.27753279986288926, abs=1e-12)
    # Wider at higher confidence, and the point estimate lies inside.
    lo90, hi90 = wilson_interval(30, 100, 0.90)
    lo99, hi99 = wilson_interval(30, 100, 0.99)
    assert lo99 < lo90 < 0.3 < hi90 < hi99
    for bad in [(-1, 5), (6, 5)]:
        with pytest.raises(ValueError):
            wilson_interval(*bad)
    with pytest.raises(ValueError):
        wilson_interval(1, 2, confidence=1.0)


# --- McNemar -----------------------------------------------------------------------------------

@pytest.mark.parametrize("b,c,p", [
    (1, 6, 0.125),
    (6, 1, 0.125),
    (0, 5, 0.0625),
    (3, 3, 1.0),
    (10, 0, 0.001953125),
    (0, 0, 1.0),
    (0, 1, 1.0),
])
def test_mcnemar_small_tables(b, c, p):
    assert mcnemar_exact(b, c) == p


def test_mcnemar_matches_direct_binomial_sum_and_handles_large_n():
    for b, c in [(7, 19), (40, 20), (250, 300)]:
        n = b + c
        tail = sum(Fraction(math.comb(n, i), 2 ** n) for i in range(min(b, c) + 1))
        assert mcnemar_exact(b, c) == float(min(Fraction(1), 2 * tail))
    p = mcnemar_exact(5000, 5300)  # z ~ 2.96: two-sided normal p ~ 0.003
    assert 0.002 < p < 0.004
    assert mcnemar_exact(20000, 21000) < 1e-6


# --- paired difference -------------------------------------------------------------------------

def test_paired_difference_published_example():
    # Cavo et al. (2012) table [[59, 6], [16, 80]]: Fagerland, Lydersen & Laake, "Statistical
    # Analysis of Contingency Tables" (2017), ch. 8, Newcombe square-and-add interval
    # -0.0621 (-0.1186 to -0.0046).
    first, second = vectors(59, 6, 16, 80)
    r = paired_difference(first, second)
    assert (r["n"], r["first_correct"], r["second_correct"], r["b"], r["c"]) == (161, 65, 75, 6, 16)
    assert round(r["difference"], 4) == -0.0621
    assert round(r["ci_low"], 4) == -0.1186 and round(r["ci_high"], 4) == -0.0046
    assert r["p_value"] == mcnemar_exact(6, 16)


@pytest.mark.parametrize("table", [
    (36, 12, 2, 0), (59, 6, 16, 80), (1, 1, 7, 12), (263, 15, 3, 0), (5, 1, 0, 0),
    (6, 0, 0, 0), (0, 0, 0, 6), (10, 30, 5, 55), (50, 2, 3, 45), (0, 4, 0, 0),
])
def test_paired_difference_matches_high_precision_formula(table):
    r = paired_difference(*vectors(*table))
    diff, low, high = ref_newcombe(*table)
    assert r["difference"] == pytest.approx(float(diff), abs=1e-12)
    assert r["ci_low"] == pytest.approx(max(-1.0, float(low)), abs=1e-10)
    assert r["ci_high"] == pytest.approx(min(1.0, float(high)), abs=1e-10)
    assert -1.0 <= r["ci_low"] <= r["difference"] <= r["ci_high"] <= 1.0
    # Swapping method and baseline mirrors the interval.
    s = paired_difference(*reversed(vectors(*table)))
    assert s["difference"] == pytest.approx(-r["difference"], abs=1e-15)
    assert (s["ci_low"], s["ci_high"]) == pytest.approx((-r["ci_high"], -r["ci_low"]), abs=1e-12)
    assert s["p_value"] == r["p_value"]


def test_paired_difference_sign_and_identical_vectors():
    method = [True] * 30 + [False] * 10
    baseline = [True] * 20 + [False] * 20
    r = paired_difference(method, baseline)
    assert r["difference"] == pytest.approx(0.25) and r["ci_low"] > 0  # method is better
    assert (r["b"], r["c"]) == (10, 0) and r["p_value"] == 2 / 1024
    same = paired_difference(method, method)
    assert same["difference"] == 0.0 and same["p_value"] == 1.0
    assert same["ci_low"] < 0 < same["ci_high"]
    empty = paired_difference([], [])
    assert (empty["difference"], empty["ci_low"], empty["ci_high"], empty["p_value"]) == \
        (0.0, -1.0, 1.0, 1.0)
    with pytest.raises(ValueError):
        paired_difference([True, False], [True])


# --- seeds and formatting ----------------------------------------------------------------------

def test_mean_and_spread():
    r = mean_and_spread([0.30, 0.35, 0.40])
    assert r["mean"] == pytest.approx(0.35) and r["std"] == pytest.approx(0.05)
    assert (r["min"], r["max"], r["n"]) == (0.30, 0.40, 3)
    assert mean_and_spread([0.5]) == {"mean": 0.5, "std": 0.0, "min": 0.5, "max": 0.5, "n": 1}
    with pytest.raises(ValueError):
        mean_and_spread([])


def test_formatting():
    assert format_interval(0.385, 0.3412, 0.4321) == "38.5 [34.1, 43.2]"
    lo, hi = wilson_interval(81, 263)
    assert format_interval(81 / 263, lo, hi) == "30.8 [25.5, 36.6]"
    assert format_interval(-0.0621, -0.1186, -0.0046) == "-6.2 [-11.9, -0.5]"
    assert format_p(0.0314) == "p=0.031"
    assert format_p(1.0) == "p=1.000"
    assert format_p(0.001) == "p=0.001"
    assert format_p(0.00099) == "p<0.001"
    assert format_p(0.0) == "p<0.001"
