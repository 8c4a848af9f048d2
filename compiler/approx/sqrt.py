"""sqrt(x) for x ≥ 0 (a Sqrt the LayerNorm pattern did not fuse).

``newton`` — sqrt(x) = x·(1/√x) with 1/√x from ``rsqrt:newton`` on [eps, hi] (its segment guess and proven Newton
iterations, :mod:`compiler.approx.rsqrt`), then ONE sfix product (one truncation).

Error (LSB = 2^-f, y ≈ 1/√x, Newton's relative error e_I of rsqrt): the last rsqrt step truncates y² (0.5 LSB,
multiplied by x/2 in x·y²/2, then by y), x·y²/2 (0.5 LSB, times y) and its product (0.5 LSB): y is off by
≤ 0.5 + y·(0.5 + x/4) LSB; s = x·y multiplies that by x and adds 0.5 LSB:
|s − √x| ≤ (e_I/2)·√x + (1 + x/2 + √x/2 + x^1.5/4)·LSB (1 % margin on y). ``bounds`` gives its maximum over
[eps, hi] at f = 16: 2.4e-3 at hi = 64, growing like x^1.5·LSB/4 (0.5 at x = 256): y holds only f fractional
bits, so its relative precision falls as x grows. Below eps the guess keeps Newton convergent but slower.
"""
from __future__ import annotations

import numpy as np

from compiler.approx import Approximation, get, register
from compiler.approx.rsqrt import _lo, initial_error, newton_iterations, newton_reference, newton_steps
from compiler.cost.primitives import Step
from compiler.fixedpoint import FixedPoint

DEFAULT_F = 16


def sqrt_reference(x_int: np.ndarray, fx: FixedPoint, eps: float = 2.0 ** -16, hi: float = 64.0) -> np.ndarray:
    return fx.mul(x_int, newton_reference(x_int, fx, eps=eps, hi=hi))


def sqrt_steps(size: int, profile: object, eps: float = 2.0 ** -16, hi: float = 64.0) -> list[Step]:
    return newton_steps(size, profile, eps=eps, hi=hi) + [Step("mul", size)]


def sqrt_bounds(eps: float = 2.0 ** -16, hi: float = 64.0) -> tuple[tuple[float, float], float]:
    fx = FixedPoint(DEFAULT_F, 31)
    e = initial_error(eps, hi, fx)
    for _ in range(newton_iterations(eps, hi, fx.f)):
        e = (3 * e * e + e ** 3) / 4
    lo = _lo(eps, fx)
    x = np.geomspace(lo, hi, 10_001)
    bound = (e / 2) * np.sqrt(x) + 1.01 * (1 + x / 2 + np.sqrt(x) / 2 + x ** 1.5 / 4) * fx.lsb
    return (lo, hi), float(np.max(bound))


def sqrt_constants(fx: FixedPoint, params: dict) -> dict:
    """The rsqrt:newton function this one calls, rendered under a derived name."""
    inner = get("rsqrt", "newton").render("inner_rsqrt", fx, eps=params["eps"], hi=params["hi"])
    return {"rsqrt_source": inner}


register(Approximation(
    op="sqrt", choice="newton", reference=sqrt_reference, template="approx/sqrt_newton.mpc.j2", steps=sqrt_steps,
    exact=lambda x: np.sqrt(np.maximum(x, 0.0)), bounds=sqrt_bounds, params={"eps": 2.0 ** -16, "hi": 64.0},
    constants=sqrt_constants, doc="x * rsqrt:newton(x)"))
