"""Small statistics for reporting accuracy: intervals, paired comparisons, seed spread.

Standard library only (math, fractions, statistics); no scipy.

- `normal_quantile(p)`: the standard normal quantile (inverse CDF). Acklam's rational
  approximation (P. J. Acklam, "An algorithm for computing the inverse normal cumulative
  distribution function", 2003; relative error ~1e-9) refined by one Halley step against
  `math.erfc`, which brings it to ~1e-15.
- `wilson_interval(k, n)`: the Wilson score interval for a binomial proportion (E. B. Wilson,
  JASA 22, 1927; method 3 of R. G. Newcombe, "Two-sided confidence intervals for the single
  proportion: comparison of seven methods", Stat. Med. 17:857-872, 1998). Use it for one
  accuracy on a test set: unlike the Wald interval it stays inside [0, 1] and behaves at 0 and n.
- `mcnemar_exact(b, c)`: the exact (binomial) two-sided McNemar test for two methods scored on
  the same questions, from the discordant counts only. Exact integer arithmetic.
- `paired_difference(first, second)`: accuracy(first) - accuracy(second) for two correctness
  vectors over the same questions, with Newcombe's hybrid score interval for a difference of
  paired proportions (R. G. Newcombe, "Improved confidence intervals for the difference between
  binomial proportions based on paired data", Stat. Med. 17:2635-2650, 1998, method 10) and the
  exact McNemar p-value. Use it for "method vs baseline" claims: pairing removes the
  question-difficulty variance that two independent intervals would ignore.
- `mean_and_spread(values)`: mean, sample standard deviation, min and max of a result repeated
  over seeds.
- `format_interval(p, lo, hi)` / `format_p(p)`: table text, "38.5 [34.1, 43.2]" and "p=0.031".
"""

from __future__ import annotations

import math
import statistics
from fractions import Fraction

# Acklam's coefficients: central region |p - 0.5| <= 0.47575 and the two tails.
_A = (-3.969683028665376e+01, 2.209460984245205e+02, -2.759285104469687e+02,
      1.383577518672690e+02, -3.066479806614716e+01, 2.506628277459239e+00)
_B = (-5.447609879822406e+01, 1.615858368580409e+02, -1.556989798598866e+02,
      6.680131188771972e+01, -1.328068155288572e+01)
_C = (-7.784894002430293e-03, -3.223964580411365e-01, -2.400758277161838e+00,
      -2.549732539343734e+00, 4.374664141464968e+00, 2.938163982698783e+00)
_D = (7.784695709041462e-03, 3.224671290700398e-01, 2.445134137142996e+00,
      3.754408661907416e+00)
_P_LOW = 0.02425


def normal_quantile(p: float) -> float:
    """The x with P(Z <= x) = p for a standard normal Z, for 0 < p < 1 (accurate to ~1e-15)."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"normal_quantile needs 0 < p < 1, got {p!r}")
    if p > 0.5:
        # Work in the lower tail, where erfc gives the tail probability without cancellation.
        return -normal_quantile(1.0 - p)
    if p < _P_LOW:
        q = math.sqrt(-2.0 * math.log(p))
        c = _C
        x = (((((c[0] * q + c[1]) * q + c[2]) * q + c[3]) * q + c[4]) * q + c[5]) / \
            ((((_D[0] * q + _D[1]) * q + _D[2]) * q + _D[3]) * q + 1.0)
    else:
        q = p - 0.5
        r = q * q
        a, b = _A, _B
        x = (((((a[0] * r + a[1]) * r + a[2]) * r + a[3]) * r + a[4]) * r + a[5]) * q / \
            (((((b[0] * r + b[1]) * r + b[2]) * r + b[3]) * r + b[4]) * r + 1.0)
    # One Halley step on f(x) = Phi(x) - p.
    e = 0.5 * math.erfc(-x / math.sqrt(2.0)) - p
    u = e * math.sqrt(2.0 * math.pi) * math.exp(x * x / 2.0)
    return x - u / (1.0 + x * u / 2.0)


def _z(confidence: float) -> float:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    return -normal_quantile((1.0 - confidence) / 2.0)


def wilson_interval(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for k successes out of n; (0.0, 1.0) when n == 0."""
    if n < 0 or not 0 <= k <= n:
        raise ValueError(f"wilson_interval needs 0 <= k <= n, got k={k}, n={n}")
    z = _z(confidence)
    if n == 0:
        return 0.0, 1.0
    z2 = z * z
    center = (k + z2 / 2.0) / (n + z2)
    half = z / (n + z2) * math.sqrt(k * (n - k) / n + z2 / 4.0)
    low = 0.0 if k == 0 else max(0.0, center - half)
    high = 1.0 if k == n else min(1.0, center + half)
    return low, high


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value from the discordant counts.

    b = pairs where the first is right and the second wrong, c = the reverse. Under the null each
    discordant pair goes either way with probability 1/2, so p = min(1, 2 * P(X <= min(b, c))) for
    X ~ Binomial(b + c, 1/2); 1.0 when there are no discordant pairs.
    """
    if b < 0 or c < 0:
        raise ValueError(f"mcnemar_exact needs non-negative counts, got b={b}, c={c}")
    n = b + c
    if n == 0:
        return 1.0
    term = tail = 1  # C(n, 0); then C(n, i + 1) = C(n, i) * (n - i) / (i + 1), exactly
    for i in range(min(b, c)):
        term = term * (n - i) // (i + 1)
        tail += term
    return float(min(Fraction(1), Fraction(2 * tail, 2 ** n)))


def paired_difference(first: list[bool], second: list[bool], confidence: float = 0.95) -> dict:
    """Compare two correctness vectors over the same questions, in the same order.

    `first` is the method, `second` the baseline. Returns
      n, first_correct, second_correct,
      b  (first right, second wrong), c (first wrong, second right),
      difference = accuracy(first) - accuracy(second) = (b - c) / n  (positive: method better),
      ci_low, ci_high: Newcombe (1998) method 10, the square-and-add interval built from the
        Wilson intervals (l1, u1), (l2, u2) of the two accuracies p1, p2 and their correlation phi:
          low  = d - sqrt((p1 - l1)^2 - 2 phi (p1 - l1)(u2 - p2) + (u2 - p2)^2)
          high = d + sqrt((u1 - p1)^2 - 2 phi (u1 - p1)(p2 - l2) + (p2 - l2)^2)
        phi is the phi coefficient of the 2x2 table (a both right, d both wrong),
        (ad - bc) / sqrt((a+b)(c+d)(a+c)(b+d)), with Newcombe's continuity correction: a positive
        ad - bc is replaced by max(ad - bc - n/2, 0); phi = 0 when any margin is empty.
      p_value: exact McNemar (`mcnemar_exact(b, c)`).
    With n == 0 nothing is known: difference 0.0, interval [-1, 1], p 1.0.
    """
    if len(first) != len(second):
        raise ValueError(f"paired_difference needs vectors over the same questions: "
                         f"{len(first)} vs {len(second)} entries")
    n = len(first)
    a = b = c = d = 0
    for x, y in zip(first, second):
        x, y = bool(x), bool(y)
        if x and y:
            a += 1
        elif x:
            b += 1
        elif y:
            c += 1
        else:
            d += 1
    out = {"n": n, "first_correct": a + b, "second_correct": a + c, "b": b, "c": c}
    if n == 0:
        return {**out, "difference": 0.0, "ci_low": -1.0, "ci_high": 1.0, "p_value": 1.0}
    p1, p2 = (a + b) / n, (a + c) / n
    l1, u1 = wilson_interval(a + b, n, confidence)
    l2, u2 = wilson_interval(a + c, n, confidence)
    margins = (a + b) * (c + d) * (a + c) * (b + d)
    cross = a * d - b * c
    if margins == 0:
        phi = 0.0
    else:
        if cross > 0:
            cross = max(cross - n / 2.0, 0.0)
        phi = cross / math.sqrt(margins)
    diff = (b - c) / n
    down = math.sqrt(max(0.0, (p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2))
    up = math.sqrt(max(0.0, (u1 - p1) ** 2 - 2 * phi * (u1 - p1) * (p2 - l2) + (p2 - l2) ** 2))
    return {**out, "difference": diff, "ci_low": max(-1.0, diff - down),
            "ci_high": min(1.0, diff + up), "p_value": mcnemar_exact(b, c)}


def mean_and_spread(values: list[float]) -> dict:
    """mean, std (sample, n - 1 denominator; 0.0 for one value), min, max, n of a non-empty list."""
    values = [float(v) for v in values]
    if not values:
        raise ValueError("mean_and_spread needs at least one value")
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"mean": statistics.fmean(values), "std": std, "min": min(values),
            "max": max(values), "n": len(values)}


def format_interval(p: float, lo: float, hi: float) -> str:
    """A proportion and its interval in percent, one decimal: '38.5 [34.1, 43.2]'."""
    return f"{100 * p:.1f} [{100 * lo:.1f}, {100 * hi:.1f}]"


def format_p(p: float) -> str:
    """'p=0.031' (three decimals), or 'p<0.001' below 0.001."""
    return "p<0.001" if p < 0.001 else f"p={p:.3f}"
