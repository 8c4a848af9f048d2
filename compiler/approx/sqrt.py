"""sqrt(x) for x ≥ 0 (a Sqrt the LayerNorm pattern did not fuse), accurate over the whole comparison range.

``newton`` — y ≈ 1/√x by ``rsqrt:wide`` on [eps, hi] (its proven octave guess and iterations, y² kept to 8
extra fractional bits: :mod:`compiler.approx.rsqrt`), then s = x·y and ONE Newton step for the square root
itself, s' = s + (x − s²)·y/2 (the residual times y/2 truncated once, by f + 1).

Error (LSB = 2^-f): y is off by δy ≤ (0.5 + y/2 + √x/2^10)·LSB plus Newton's relative e_I/2 (rsqrt:wide), so
s = x·y by δ ≤ x·δy + (e_I/2)·√x + LSB/2 (0.16 at x = 16384: y has only f fractional bits). The final step cancels
δ to first order: s' − √x ≈ −δ·ρ − δ²/(2√x) + (x − s²)·δy/2 + rounding, with ρ = e_I/2 + δy·√x the relative
error of y and rounding ≤ (1 + y/4)·LSB (s² by LSB/2, times y/2; the last truncation LSB/2). ``bounds``
evaluates that estimate, doubled, over [eps, hi] at f = 16; tests check it densely up to the comparison range.

Cost: rsqrt:wide's comparison and 3 products per Newton step, then 3 products.
"""
from __future__ import annotations

import numpy as np

from compiler.approx import Approximation, get, register
from compiler.approx.rsqrt import WIDE_DEFAULTS, wide_newton_error, wide_reference, wide_steps
from compiler.cost.primitives import Step
from compiler.fixedpoint import FixedPoint

DEFAULT_F = 16


def sqrt_reference(x_int: np.ndarray, fx: FixedPoint, eps: float = WIDE_DEFAULTS["eps"],
                   hi: float = WIDE_DEFAULTS["hi"]) -> np.ndarray:
    y = wide_reference(x_int, fx, eps=eps, hi=hi)
    s = fx.mul(x_int, y)
    return s + fx.trunc((x_int - fx.mul(s, s)) * y, fx.f + 1)


def sqrt_steps(size: int, profile: object, eps: float = WIDE_DEFAULTS["eps"],
               hi: float = WIDE_DEFAULTS["hi"]) -> list[Step]:
    return wide_steps(size, profile, eps=eps, hi=hi) + [Step("mul", size)] * 3


def sqrt_bounds(eps: float = WIDE_DEFAULTS["eps"], hi: float = WIDE_DEFAULTS["hi"]):
    fx = FixedPoint(DEFAULT_F, 31)
    lo, e = wide_newton_error(eps, hi, fx)
    x = np.geomspace(lo, hi, 10_001)
    root = np.sqrt(x)
    dy = (0.5 + 0.5 / root + root / 2 ** 10) * fx.lsb
    rho = e / 2 + dy * root
    delta = x * dy + (e / 2) * root + fx.lsb / 2
    final = delta * rho + delta ** 2 / (2 * root) + root * delta * dy + (1 + 1 / (4 * root)) * fx.lsb
    return (lo, hi), float(2 * np.max(final))


def sqrt_constants(fx: FixedPoint, params: dict) -> dict:
    """The rsqrt:wide function this one calls, rendered under a local name."""
    return {"rsqrt_source": get("rsqrt", "wide").render("inner_rsqrt", fx, eps=params["eps"], hi=params["hi"])}


register(Approximation(
    op="sqrt", choice="newton", reference=sqrt_reference, template="approx/sqrt_newton.mpc.j2", steps=sqrt_steps,
    exact=lambda x: np.sqrt(np.maximum(x, 0.0)), bounds=sqrt_bounds, params=dict(WIDE_DEFAULTS),
    constants=sqrt_constants, doc="s = x * rsqrt:wide(x), then one Newton step s + (x - s^2) y/2"))
