"""exp(x) for the softmax numerators (inputs are ≤ 0 after max-subtraction).

* ``limit`` — exp(x) ≈ (1 + x/2^n)^(2^n): clip x to [-2^n, 0] (one LTZ + one bit×value product) so the base never
  goes negative, one truncation by n bits, then n squarings (n sfix products). Error: the limit itself is about
  e^x·x²/2^(n+1) (≈ 1.1e-3 at x = -2 for n = 8), and fixed point adds ≤ 2^n·LSB·e^x/(1 + x/2^n) (see
  ``exp_limit_bounds``): 3.9e-3 at f = 16, n = 8; n = 7 is the most accurate at f = 16 (2.4e-3).
  Under MP-SPDZ's probabilistic truncation each squaring may land 1 LSB away, amplified the same way, so the
  real engine agrees with this reference to ~2^n·LSB at x near 0, not to a few LSBs.
* ``mpspdz`` — MP-SPDZ's ``ml.exp`` (= ``mpc_math.pow_fx(e, x)`` via ``exp2_fx``). The reference is the exact
  exponential quantised to f bits; the built-in's own measured error is 2e-5 on [-10, 0], bounded here by 5e-5.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np

from compiler.approx import Approximation, register
from compiler.cost.primitives import Step
from compiler.fixedpoint import FixedPoint


def exp_limit_reference(x_int: np.ndarray, fx: FixedPoint, n: int = 8) -> np.ndarray:
    lower = np.int64(-(1 << n) * fx.scale)
    z = fx.scale + fx.trunc(np.maximum(x_int, lower), n)  # 1 + x/2^n, never negative
    for _ in range(n):
        z = fx.mul(z, z)
    return z


def exp_limit_steps(size: int, profile: object, n: int = 8) -> list[Step]:
    return [Step("ltz", size), Step("mul_int", size), Step("trunc", size)] + [Step("mul", size)] * n


@lru_cache(maxsize=None)
def exp_limit_bounds(n: int = 8, f: int = 16) -> tuple[tuple[float, float], float]:
    """max over x ∈ [-2^n, 0] of the limit's own error plus the rounding term 2^n·LSB·e^x/(1 + x/2^n): the base's
    0.5 LSB is amplified 2^n-fold by the squarings, squaring i's 0.5 LSB 2^(n-i)-fold; their sum is ≤ 2^n·LSB,
    relative to z^(m-1) = e^x/z. Below -2^n the clipped result is 0 and e^x < e^-2^n. Any x ≤ 0 in the
    comparison range is in the domain."""
    m = 2 ** n
    x = np.linspace(-m, 0.0, 200_001)
    base = 1.0 + x / m
    bound = np.max(np.abs(np.exp(x) - base ** m) + m * 2.0 ** -f * np.exp(x) / np.maximum(base, 1.0 / m))
    return (-8000.0, 0.0), float(bound)


def exp_mpspdz_reference(x_int: np.ndarray, fx: FixedPoint) -> np.ndarray:
    return fx.encode(np.exp(fx.decode(x_int)))


register(Approximation(
    op="exp", choice="limit", reference=exp_limit_reference, template="approx/exp_limit.mpc.j2",
    steps=exp_limit_steps, exact=np.exp, bounds=exp_limit_bounds, params={"n": 8},
    doc="(1 + x/2^n)^(2^n) after clipping x to [-2^n, 0]"))

register(Approximation(
    op="exp", choice="mpspdz", reference=exp_mpspdz_reference, template="approx/exp_mpspdz.mpc.j2",
    steps=lambda size, profile: [Step("exp:mpspdz", size)], exact=np.exp,
    bounds=lambda: ((-10.0, 0.0), 5e-5), params={}, doc="MP-SPDZ ml.exp (exp2_fx)"))
