"""1/sqrt(x) for LayerNorm, honouring the model's ε: domain [ε, hi] (variance + ε).

``newton`` — Newton's iteration y ← y·(3 − x·y²)/2 from a proven initial guess, MP-SPDZ style normalisation
replaced by one vectorised comparison: thresholds t_j = lo·2^j (j = 1..J, lo = ε rounded to ≥ 1 LSB) locate x in
[lo·2^j, lo·2^(j+1)), where y0 = √c/√(lo·2^(j+1)), c = 4/3, as a public-weighted sum of the comparison bits.

Proof: in its segment, s0 = x·y0² ∈ [c/2, c) = [2/3, 4/3). With s = x·y² = 1 − e, one step gives
s' = s·(3 − s)²/4, i.e. e' = (3e² + e³)/4 ≤ e² for |e| ≤ 1, and 0 < s' ≤ 1 whenever 0 < s < 3 (convergence iff
0 < x·y0² < 3). From |e0| ≤ 1/3: e1 ≤ 0.093, e2 ≤ 6.6e-3, e3 ≤ 3.3e-5, e4 ≤ 8e-10. The relative error of y is
≤ |e|/2, so I = min{i : e_i/2 ≤ 2^-(f+1)} (f = 16: 4). Each step computes y² (trunc f), x·y²/2 (one truncation by
f+1: halving is free) and y·(3/2 − x·y²/2) (trunc f); computing x·(y²) rather than (x·y)·y keeps full relative
precision for tiny x, where y is large. Fixed-point error: ≤ 2^-f·(1 + 2·y) absolute plus the relative e_I/2:
|y − 1/√x| ≤ (e_I/2)/√x + (1 + 2/√x)·LSB; ``bounds`` gives its maximum over [ε, hi] at f = 16.

``wide`` — ``newton`` with y² kept to f + 8 fractional bits (one truncation by f − 8, then x·y² truncated by
f + 9): with f bits, y² of a large x (y = 1/128 at x = 16384: y² = 4 LSB) keeps almost no significant bits, so
``newton`` is off by percents there (6.5 % measured for x > 1000 on [2^-16, 16384]). x·y² ≈ 1 keeps its raw
value near 2^(2f+8) (2^40 at f = 16) whatever x is. The last step's rounding leaves y off by
≤ (0.5 + y/2 + √x/2^10)·LSB (y² by 2^-(f+8)/2, times x/2, times y; x·y²/2 by LSB/2, times y; the product's LSB/2),
plus Newton's relative e_I/2 (same guess, same iterations as ``newton``). Same comparisons and products as
``newton``; its default range is every positive value a comparison may consume (generic rsqrt/sqrt nodes, whose
range is unknown), which costs more segments than a LayerNorm's [ε, 64], so the profile keeps ``newton`` there.

``mpspdz`` — MP-SPDZ's ``mpc_math.InvertSqrt`` (Lu et al.). Reference: exact 1/√x quantised to f bits; the
built-in's own error (0.032 measured at x = 0.01) is bounded here by 0.04 on [0.01, 100].
"""
from __future__ import annotations

import math

import numpy as np

from compiler.approx import Approximation, register
from compiler.cost.primitives import Step
from compiler.errors import CompileError
from compiler.fixedpoint import FixedPoint

GUESS_SQUARE = 4.0 / 3.0
DEFAULT_F = 16


def _lo(eps: float, fx: FixedPoint) -> float:
    if eps <= 0:
        raise CompileError(f"LayerNorm epsilon {eps} must be positive for the inverse square root")
    return max(eps, fx.lsb)  # ε below one LSB is represented as 1 LSB


def segment_guess(eps: float, hi: float, fx: FixedPoint) -> tuple[np.ndarray, np.ndarray]:
    lo = _lo(eps, fx)
    if hi <= lo:
        raise CompileError(f"rsqrt range [{lo}, {hi}] is empty: raise hi above epsilon")
    segments = max(math.ceil(math.log2(hi / lo) - 1e-12), 1)
    thresholds = fx.encode(lo * 2.0 ** np.arange(1, segments + 1))
    guesses = fx.encode(math.sqrt(GUESS_SQUARE) / np.sqrt(lo * 2.0 ** np.arange(1, segments + 2)))
    return thresholds, guesses


def initial_error(eps: float, hi: float, fx: FixedPoint) -> float:
    """max |1 − x·y0²| over [lo, hi] with the encoded constants."""
    thresholds, guesses = segment_guess(eps, hi, fx)
    top = fx.encode(hi)
    starts = np.concatenate([[fx.encode(_lo(eps, fx))], thresholds])
    reached = starts <= top  # a last segment starting above hi is never used on [lo, hi]
    ends = np.minimum(np.concatenate([thresholds, [top]]), top)[reached].astype(np.float64)
    starts = starts[reached].astype(np.float64)
    w2 = guesses[reached].astype(np.float64) ** 2
    return float(np.max(np.abs(1.0 - np.concatenate([starts * w2, ends * w2]) / float(fx.scale) ** 3)))


def newton_iterations(eps: float, hi: float, f: int = DEFAULT_F) -> int:
    e = initial_error(eps, hi, FixedPoint(f, max(f + 15, 31)))
    if e >= 1.0:
        raise CompileError(f"rsqrt guess on [{eps}, {hi}] does not converge at f={f}; raise --frac-bits")
    steps = 0
    while e / 2 > 2.0 ** -(f + 1):
        e, steps = (3 * e * e + e ** 3) / 4, steps + 1
    return steps


def _iterations(eps: float, hi: float, iterations: int | None, f: int) -> int:
    return newton_iterations(eps, hi, f) if iterations is None else iterations


def newton_reference(x_int: np.ndarray, fx: FixedPoint, eps: float = 1e-5, hi: float = 64.0,
                     iterations: int | None = None) -> np.ndarray:
    thresholds, guesses = segment_guess(eps, hi, fx)
    below = (x_int[..., None] < thresholds).astype(np.int64)
    y = guesses[-1] + below @ (guesses[:-1] - guesses[1:])
    for _ in range(_iterations(eps, hi, iterations, fx.f)):
        half_s = fx.trunc(x_int * fx.mul(y, y), fx.f + 1)
        y = fx.mul(y, 3 * fx.scale // 2 - half_s)
    return y


def newton_steps(size: int, profile: object, eps: float = 1e-5, hi: float = 64.0,
                 iterations: int | None = None) -> list[Step]:
    f = int(getattr(profile, "f", DEFAULT_F))
    thresholds = segment_guess(eps, hi, FixedPoint(f, max(f + 15, 31)))[0]
    return [Step("ltz", size * len(thresholds))] + [Step("mul", size)] * 3 * _iterations(eps, hi, iterations, f)


def newton_bounds(eps: float = 1e-5, hi: float = 64.0, iterations: int | None = None):
    fx = FixedPoint(DEFAULT_F, 31)
    e = initial_error(eps, hi, fx)
    for _ in range(_iterations(eps, hi, iterations, fx.f)):
        e = (3 * e * e + e ** 3) / 4
    lo = _lo(eps, fx)
    return (lo, hi), (e / 2) / math.sqrt(lo) + (1 + 2 / math.sqrt(lo)) * fx.lsb


def newton_constants(fx: FixedPoint, params: dict) -> dict:
    thresholds, guesses = segment_guess(params["eps"], params["hi"], fx)
    return {"thresholds": [int(t) for t in thresholds], "guesses": [int(g) for g in guesses],
            "iterations": _iterations(params["eps"], params["hi"], params["iterations"], fx.f)}


def mpspdz_reference(x_int: np.ndarray, fx: FixedPoint, eps: float = 0.01, hi: float = 100.0) -> np.ndarray:
    return fx.encode(1.0 / np.sqrt(fx.decode(x_int)))


register(Approximation(
    op="rsqrt", choice="newton", reference=newton_reference, template="approx/rsqrt_newton.mpc.j2",
    steps=newton_steps, exact=lambda x: 1.0 / np.sqrt(x), bounds=newton_bounds,
    params={"eps": 1e-5, "hi": 64.0, "iterations": None}, constants=newton_constants,
    compared=lambda eps, hi, iterations: 2 * hi,  # the top threshold lo·2^J < 2·hi
    doc="segment guess from one comparison, Newton y(3 - xy^2)/2"))

register(Approximation(
    op="rsqrt", choice="mpspdz", reference=mpspdz_reference, template="approx/rsqrt_mpspdz.mpc.j2",
    steps=lambda size, profile, eps=0.01, hi=100.0: [Step("rsqrt:mpspdz", size)],
    exact=lambda x: 1.0 / np.sqrt(x), bounds=lambda eps=0.01, hi=100.0: ((max(eps, 0.01), hi), 0.04),
    params={"eps": 0.01, "hi": 100.0}, doc="MP-SPDZ mpc_math.InvertSqrt"))


WIDE_DEFAULTS = {"eps": 2.0 ** -16, "hi": 16384.0}  # every positive value a comparison may consume at f=16, k=31


def wide_extra_bits(fx: FixedPoint) -> int:
    """Fractional bits y² keeps beyond f (8 at f = 16; at most f/2 so that y² is still truncated)."""
    return min(8, fx.f // 2)


def wide_reference(x_int: np.ndarray, fx: FixedPoint, eps: float = WIDE_DEFAULTS["eps"],
                   hi: float = WIDE_DEFAULTS["hi"]) -> np.ndarray:
    thresholds, guesses = segment_guess(eps, hi, fx)
    below = (x_int[..., None] < thresholds).astype(np.int64)
    y = guesses[-1] + below @ (guesses[:-1] - guesses[1:])
    extra = wide_extra_bits(fx)
    for _ in range(newton_iterations(eps, hi, fx.f)):
        half_s = fx.trunc(x_int * fx.trunc(y * y, fx.f - extra), fx.f + extra + 1)
        y = fx.mul(y, 3 * fx.scale // 2 - half_s)
    return y


def wide_steps(size: int, profile: object, eps: float = WIDE_DEFAULTS["eps"],
               hi: float = WIDE_DEFAULTS["hi"]) -> list[Step]:
    return newton_steps(size, profile, eps=eps, hi=hi)


def wide_newton_error(eps: float, hi: float, fx: FixedPoint) -> tuple[float, float]:
    """(the domain's low end, the relative error of y left by the Newton steps): each step maps a relative
    error e to (3e² + e³)/4, starting from :func:`initial_error`."""
    e = initial_error(eps, hi, fx)
    for _ in range(newton_iterations(eps, hi, fx.f)):
        e = (3 * e * e + e ** 3) / 4
    return _lo(eps, fx), e


def wide_bounds(eps: float = WIDE_DEFAULTS["eps"], hi: float = WIDE_DEFAULTS["hi"]):
    """Newton's relative error e_I/2 times y plus the last step's rounding (0.5 + y/2 + √x/2^10)·LSB (see the
    module doc), maximised over [eps, hi] at f = 16."""
    fx = FixedPoint(DEFAULT_F, 31)
    lo, e = wide_newton_error(eps, hi, fx)
    x = np.geomspace(lo, hi, 10_001)
    y = 1 / np.sqrt(x)
    return (lo, hi), float(np.max((e / 2) * y + (0.5 + y / 2 + np.sqrt(x) / 2 ** 10) * fx.lsb))


register(Approximation(
    op="rsqrt", choice="wide", reference=wide_reference, template="approx/rsqrt_wide.mpc.j2", steps=wide_steps,
    exact=lambda x: 1.0 / np.sqrt(x), bounds=wide_bounds, params=dict(WIDE_DEFAULTS),
    constants=lambda fx, params: {**newton_constants(fx, {**params, "iterations": None}),
                                  "extra": wide_extra_bits(fx)},
    doc="as newton, x*y^2/2 computed as (x*y)*y/2: keeps relative precision up to the comparison range"))
