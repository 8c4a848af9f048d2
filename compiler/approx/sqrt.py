"""sqrt(x) for x ≥ 0 (a Sqrt the LayerNorm pattern did not fuse), accurate over the whole comparison range.

``newton`` — y ≈ 1/√x by Newton's iteration y ← y·(3/2 − x·y²/2) from rsqrt:newton's proven segment guess on
[eps, hi] (thresholds, guesses and iteration count from :mod:`compiler.approx.rsqrt`: same mathematics, same
convergence proof), then s = x·y and ONE Newton step for the square root itself, s' = s + (x − s²)·y/2.

Why not x·rsqrt:newton(x): rsqrt:newton forms y² first, which for large x (y = 1/128 at x = 16384: y² = 4 LSB)
keeps almost no significant bits, so y is off by percents and x·y by units. Here x·y²/2 is computed as (x·y)·y/2
(x·y ≈ √x keeps full relative precision, one truncation by f and one by f + 1), so each Newton step's rounding
leaves y off by ≤ (0.5 + y·(0.5 + y/4))·LSB; then s = x·y is off by δ ≤ x·δy + (e_I/2)·√x + LSB/2, and the final
step cancels δ to first order: s' − √x ≈ −δ·ρ − δ²/(2√x) + (x − s²)·δy/2 + rounding, with ρ the relative error
of y. ``bounds`` evaluates that estimate (doubled) over [eps, hi] at f = 16; the tests check it densely,
including hi = 16384 (the generic node's range).

Cost: one vectorised comparison (rsqrt's segments), 3 products per Newton step, 3 for the final step.
"""
from __future__ import annotations

import numpy as np

from compiler.approx import Approximation, register
from compiler.approx.rsqrt import _lo, initial_error, newton_iterations, segment_guess
from compiler.cost.primitives import Step
from compiler.fixedpoint import FixedPoint

DEFAULT_F = 16
DEFAULTS = {"eps": 2.0 ** -16, "hi": 64.0}


def _iterations(eps: float, hi: float, f: int) -> int:
    return newton_iterations(eps, hi, f)


def wide_rsqrt(x_int: np.ndarray, fx: FixedPoint, eps: float, hi: float) -> np.ndarray:
    """1/√x with x·y²/2 computed as (x·y)·y/2 (see the module doc)."""
    thresholds, guesses = segment_guess(eps, hi, fx)
    below = (x_int[..., None] < thresholds).astype(np.int64)
    y = guesses[-1] + below @ (guesses[:-1] - guesses[1:])
    for _ in range(_iterations(eps, hi, fx.f)):
        half = fx.trunc(fx.mul(x_int, y) * y, fx.f + 1)
        y = fx.mul(y, 3 * fx.scale // 2 - half)
    return y


def sqrt_reference(x_int: np.ndarray, fx: FixedPoint, eps: float = DEFAULTS["eps"],
                   hi: float = DEFAULTS["hi"]) -> np.ndarray:
    y = wide_rsqrt(x_int, fx, eps, hi)
    s = fx.mul(x_int, y)
    return s + fx.trunc((x_int - fx.mul(s, s)) * y, fx.f + 1)


def sqrt_steps(size: int, profile: object, eps: float = DEFAULTS["eps"], hi: float = DEFAULTS["hi"]) -> list[Step]:
    f = int(getattr(profile, "f", DEFAULT_F))
    thresholds = segment_guess(eps, hi, FixedPoint(f, max(f + 15, 31)))[0]
    return [Step("ltz", size * len(thresholds))] + [Step("mul", size)] * (3 * _iterations(eps, hi, f) + 3)


def sqrt_bounds(eps: float = DEFAULTS["eps"], hi: float = DEFAULTS["hi"]) -> tuple[tuple[float, float], float]:
    fx = FixedPoint(DEFAULT_F, 31)
    e = initial_error(eps, hi, fx)
    for _ in range(_iterations(eps, hi, fx.f)):
        e = (3 * e * e + e ** 3) / 4
    lo = _lo(eps, fx)
    x = np.geomspace(lo, hi, 10_001)
    root = np.sqrt(x)
    dy = (0.5 + (0.5 + 1 / (4 * root)) / root) * fx.lsb  # y's rounding, y = 1/√x
    rho = e / 2 + dy * root  # y's relative error
    delta = x * dy + (e / 2) * root + fx.lsb / 2  # s = x·y before the final step
    final = delta * rho + delta ** 2 / (2 * root) + root * delta * dy + (1 + 1 / (4 * root)) * fx.lsb
    return (lo, hi), float(2 * np.max(final))


def sqrt_constants(fx: FixedPoint, params: dict) -> dict:
    thresholds, guesses = segment_guess(params["eps"], params["hi"], fx)
    return {"thresholds": [int(t) for t in thresholds], "guesses": [int(g) for g in guesses],
            "iterations": _iterations(params["eps"], params["hi"], fx.f)}


register(Approximation(
    op="sqrt", choice="newton", reference=sqrt_reference, template="approx/sqrt_newton.mpc.j2", steps=sqrt_steps,
    exact=lambda x: np.sqrt(np.maximum(x, 0.0)), bounds=sqrt_bounds, params=dict(DEFAULTS),
    constants=sqrt_constants, doc="Newton 1/sqrt(x) as (x*y)*y, s = x*y, one Newton step on s"))
