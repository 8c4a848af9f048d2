"""1/x for the softmax denominators (one reciprocal per attention row, then a multiplication).

``newton`` — Newton's iteration y ← y·(2 − x·y) on a known denominator range [lo, hi] (softmax rows after
max-subtraction: [1, N]; ReLU-softmax: [ε, N·S_max]).

Initial guess (one vectorised LTZ, no multiplication): with thresholds t_j = lo·2^j (j = 1..J, J = ⌈log2(hi/lo)⌉)
the bits l_j = [x < t_j] locate x in a segment [lo·2^j, lo·2^(j+1)), where y0 = c/(lo·2^(j+1)), c = 4/3. The
guess is the public-weighted bit sum y0 = w_J + Σ_j l_j·(w_(j-1) − w_j) (local).

Proof of convergence: in its segment, x·y0 ∈ [c/2, c) = [2/3, 4/3), so e0 = 1 − x·y0 has |e0| ≤ 1/3, i.e.
0 < x·y0 < 2 (Newton converges iff 0 < x·y0 < 2). With e_i = 1 − x·y_i, one step gives
e_(i+1) = 1 − x·y_i(2 − x·y_i) = (1 − x·y_i)² = e_i²: quadratic convergence, e_I = e0^(2^I). The relative error of
y_I is e_I, so I = min{i : (1/3)^(2^i) ≤ 2^-(f+1)} iterations suffice (f = 16: I = 4). The actual e0 bound is
computed from the *encoded* thresholds and weights (rounding shifts them by ≤ 0.5 LSB). Below lo the guess stays
in (0, 2/x) (convergent, slower); above hi it stays convergent up to x < 3·lo·2^J.
Fixed-point error: the last step's two truncations add ≤ 0.5 LSB to x·y and ≤ 0.5 LSB to y, so
|y − 1/x| ≤ e_I/x + (1 + 1/x)·LSB (LSB = 2^-f); ``bounds`` reports its maximum over [lo, hi] at f = 16.

``mpspdz`` — MP-SPDZ's sfix division ``1 / x`` (``library.FPDiv``, Goldschmidt; ``sfix(1) / x`` on a vector
would silently compute one element). The reference is the exact reciprocal quantised to f bits; the built-in's
measured error is 4e-5 on [1, 300].

``shift`` q (both choices, default 0): compute 2^q/x instead of 1/x, for a caller that divides the product by 2^q
again in a truncation it makes anyway (the softmax's e·r truncated by f + q): 1/x of a large x keeps only a few
LSBs (1/10^4 is 6.5 LSBs at f = 16), 2^q/x keeps 2^q times more, at no extra cost. ``newton`` scales its guesses
by 2^q and truncates x·y by f + q (e = 1 − x·y/2^q: the proof above unchanged); ``mpspdz`` divides 2^q by x.
Bounds are on 2^q/x (its absolute error; relative to 1/x, 2^q times smaller).
"""
from __future__ import annotations

import math

import numpy as np

from compiler.approx import Approximation, register
from compiler.cost.primitives import Step
from compiler.errors import CompileError
from compiler.fixedpoint import FixedPoint

GUESS_SCALE = 4.0 / 3.0
DEFAULT_F = 16


def segment_guess(lo: float, hi: float, fx: FixedPoint, shift: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Encoded thresholds t_1..t_J and guesses w_0..w_J (of 2^shift/x) of the piecewise-constant initial guess."""
    if not 0 < lo < hi:
        raise CompileError(f"reciprocal range [{lo}, {hi}] is empty or not positive: give 0 < lo < hi")
    segments = max(math.ceil(math.log2(hi / lo) - 1e-12), 1)
    thresholds = fx.encode(lo * 2.0 ** np.arange(1, segments + 1))
    guesses = fx.encode(GUESS_SCALE * 2.0 ** shift / (lo * 2.0 ** np.arange(1, segments + 2)))
    return thresholds, guesses


def initial_error(lo: float, hi: float, fx: FixedPoint) -> float:
    """max |1 − x·y0| over [lo, hi] with the encoded constants (attained at the segment ends)."""
    thresholds, guesses = segment_guess(lo, hi, fx)
    top = fx.encode(hi)
    starts = np.concatenate([[fx.encode(lo)], thresholds])
    reached = starts <= top  # a last segment starting above hi is never used on [lo, hi]
    ends = np.minimum(np.concatenate([thresholds, [top]]), top)[reached].astype(np.float64)
    starts = starts[reached].astype(np.float64)
    w = guesses[reached].astype(np.float64)
    products = np.concatenate([starts * w, ends * w]) / float(fx.scale) ** 2
    if np.any(guesses <= 0):
        raise CompileError(f"reciprocal range [{lo}, {hi}] is too wide for {fx.f} fractional bits: the initial "
                           "guess of the largest denominators rounds to 0; raise --frac-bits or lower hi")
    return float(np.max(np.abs(1.0 - products)))


def newton_iterations(lo: float, hi: float, f: int = DEFAULT_F) -> int:
    e0 = initial_error(lo, hi, FixedPoint(f, max(f + 15, 31)))
    if e0 >= 1.0:
        raise CompileError(f"reciprocal guess on [{lo}, {hi}] does not converge at f={f}; raise --frac-bits")
    return max(math.ceil(math.log2(math.log(2.0 ** -(f + 1)) / math.log(e0))), 0)


def _iterations(lo: float, hi: float, iterations: int | None, f: int) -> int:
    return newton_iterations(lo, hi, f) if iterations is None else iterations


def newton_reference(x_int: np.ndarray, fx: FixedPoint, lo: float = 1.0, hi: float = 64.0,
                     iterations: int | None = None, shift: int = 0) -> np.ndarray:
    thresholds, guesses = segment_guess(lo, hi, fx, shift)
    below = (x_int[..., None] < thresholds).astype(np.int64)  # l_j, one vectorised LTZ
    y = guesses[-1] + below @ (guesses[:-1] - guesses[1:])
    for _ in range(_iterations(lo, hi, iterations, fx.f)):
        y = fx.mul(y, 2 * fx.scale - fx.trunc(x_int * y, fx.f + shift))
    return y


def newton_steps(size: int, profile: object, lo: float = 1.0, hi: float = 64.0,
                 iterations: int | None = None, shift: int = 0) -> list[Step]:
    f = int(getattr(profile, "f", DEFAULT_F))
    thresholds = segment_guess(lo, hi, FixedPoint(f, max(f + 15, 31)))[0]
    return [Step("ltz", size * len(thresholds))] + [Step("mul", size)] * 2 * _iterations(lo, hi, iterations, f)


def newton_bounds(lo: float = 1.0, hi: float = 64.0, iterations: int | None = None,
                  shift: int = 0) -> tuple[tuple[float, float], float]:
    f = DEFAULT_F
    e0 = initial_error(lo, hi, FixedPoint(f, 31))
    e_final = e0 ** (2 ** _iterations(lo, hi, iterations, f))
    return (lo, hi), 2.0 ** shift * e_final / lo + (1 + 2.0 ** shift / lo) * 2.0 ** -f


def newton_template_constants(fx: FixedPoint, params: dict) -> dict:
    """Encoded segment constants and the derived iteration count, rendered into the template."""
    thresholds, guesses = segment_guess(params["lo"], params["hi"], fx, params["shift"])
    return {"thresholds": [int(t) for t in thresholds], "guesses": [int(g) for g in guesses],
            "iterations": _iterations(params["lo"], params["hi"], params["iterations"], fx.f)}


def mpspdz_reference(x_int: np.ndarray, fx: FixedPoint, lo: float = 1.0, hi: float = 300.0,
                     shift: int = 0) -> np.ndarray:
    return fx.encode(2.0 ** shift / fx.decode(x_int))


register(Approximation(
    op="reciprocal", choice="newton", reference=newton_reference, template="approx/reciprocal_newton.mpc.j2",
    steps=newton_steps, exact=lambda x: 1.0 / x, bounds=newton_bounds,
    params={"lo": 1.0, "hi": 64.0, "iterations": None, "shift": 0}, constants=newton_template_constants,
    compared=lambda lo, hi, iterations, shift: 2 * hi,  # the top threshold lo·2^J < 2·hi
    doc="Newton with a proven piecewise initial guess"))

register(Approximation(
    op="reciprocal", choice="mpspdz", reference=mpspdz_reference, template="approx/reciprocal_mpspdz.mpc.j2",
    steps=lambda size, profile, lo=1.0, hi=300.0, shift=0: [Step("reciprocal:mpspdz", size)], exact=lambda x: 1.0 / x,
    bounds=lambda lo=1.0, hi=300.0, shift=0: ((lo, hi), 2.0 ** shift * 5e-5 * max(1.0, 1.0 / lo ** 2)),
    params={"lo": 1.0, "hi": 300.0, "shift": 0}, doc="MP-SPDZ sfix division 1 / x (2^shift / x)"))
