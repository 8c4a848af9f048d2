"""exp(x) for the softmax numerators (inputs are ≤ 0 after max-subtraction).

* ``limit`` — exp(x) ≈ (1 + x/2^n)^(2^n): clip x to [-2^n, 0] (one LTZ + one bit×value product) so the base never
  goes negative, one truncation by n bits, then n squarings (n sfix products). Error: the limit itself is about
  e^x·x²/2^(n+1) (≈ 1.1e-3 at x = -2 for n = 8), and fixed point adds ≤ 2^n·LSB·e^x/(1 + x/2^n) (see
  ``exp_limit_bounds``): 3.9e-3 at f = 16, n = 8; n = 7 is the most accurate at f = 16 (2.4e-3).
  Under MP-SPDZ's probabilistic truncation each squaring may land 1 LSB away, amplified the same way, so the
  real engine agrees with this reference to ~2^n·LSB at x near 0, not to a few LSBs.
* ``limit2`` — the same limit from a second-order base: exp(x) ≈ (1 + y + y²/2)^(2^n), y = x/2^n, after clipping
  x to [-2^n, 0] (the base stays >= 1/2 > 0). ln(1 + y + y²/2) = y - y³/6 + O(y⁴), so the limit's own error is
  about e^x·|x|³/(6·4^n) (0.224/4^n at x = -3) instead of e^x·x²/2^(n+1): n = 5 squarings reach what n = 8 cannot,
  so the rounding amplification 2^n·LSB is 8 times smaller too. y + y²/2 = x·(x + 2^(n+1))/2^(2n+1) is ONE
  product of x and x + 2^(n+1) (a local addition) truncated once by f + 2n + 1 (a separate truncation of y beside
  the product would be a second MP-SPDZ instruction: 2 more rounds, measured); the raw product <= 2^(2n+2f+1)
  stays in the product range for n <= 6. Cost: n + 1 products (6 at n = 5) against limit's n (8); error 4.9e-4 at
  f = 16.
* ``limit3`` — a third-order base: exp(x) ≈ (1 + y + y²/2 + y³/6)^(2^n), y = x/2^n, after clipping x to [-2^n, 0]
  (the base stays >= 1/3). ln(base) = y − y⁴/24 + O(y⁵): the limit's own error is about e^x·x⁴/(24·8^n), so n = 3
  squarings reach limit2's n = 5 (5.8e-4 at f = 16; n = 4: 3.7e-4). The base takes two products one after the
  other: h = y²/2 = trunc(x·x, f + 2n + 1), then y + h·(1 + y/3) = [h·(x + 3·2^n)·K + x·2^(f+S)]/2^(f+n+S) as ONE
  product truncated once, the 1/3 as the public K = round(2^S/3) and y as a public multiple of x added before
  the truncation (S = :func:`third_bits`: the raw sum below 2^61 whatever f). Cost: n + 2 products (5 at n = 3,
  against limit2's 6 at n = 5).
* ``limit4`` — a fourth-order base: exp(x) ≈ (1 + y + y²/2 + y³/6 + y⁴/24)^(2^n), y = x/2^n. The base costs what
  limit3's does: y + h·(1 + y/3 + h/6) (h = y²/2, so h·h/6 = y⁴/24) is the same ONE second product, its factor
  x + 3·2^n + h·2^(n−1) one local addition longer. ln(base) = y − y⁵/120 + O(y⁶): the limit's own error is about
  e^x·|x|⁵/(120·16^n), so n = 2 squarings (4 products) reach limit3's n = 3 (5 products) on the softmax's unshifted
  exponents: over [−r, r] its absolute bound is the smaller up to r ≈ 3 (2.4e-4 against 6.1e-4 at r = 1, 1.3e-2
  against 1.9e-2 at r = 2.3), and its rounding is amplified 2^n-fold instead of 2^(n+1)-fold. The base stays ≥ 3/8
  at y = −1; the raw second sum reaches 1.71·2^(2f+n+S) at y = 1, one bit more than limit3's, so positive exponents
  go up to 2^n (``top``).
* ``top`` (limit3/limit4, with ``inner``) — the call site's largest positive exponent: softmax rows whose scores stay small
  take exp(s) without a row max (compiler.lowering.plans.softmax_uses), x ∈ [−top, top]. Nothing changes in the
  computation for 0 < x <= 2^(n−1): the base exceeds 1, every raw sum stays below the negative side's (h <= 1/8,
  x + 3·2^n <= 3.5·2^n) and the squarings below e^(2^(n−1)) <= e^4; the relative error is the same x⁴/(24·8^n),
  the absolute one e^x times it, as ``exp_limit3_bounds`` takes over [−2^n, top].
* ``short`` t (limit3/limit4; chosen per call site where the protocol truncates inputs of at most 24 bits with a large gap
  to its ring, compiler.cost.primitives.SHORT_TRUNC): h from x' = trunc(x, t) instead of x, t = f + n − 11, so that
  both x' (f + n + 1 bits) and x'·x' (below 2^22) are such short truncations (no message from party 0 under
  replicated-ring) and the first product is a plain one: 8 B per value at party 0 instead of 16. x' is off by up to
  1 LSB at f − t bits, h by up to (2|x| + 2^(t−f))·2^(t−f)/2^(2n+1) more, which ``exp_limit3_bounds`` adds (3.1e-4
  relative at |x| = 0.6, f = 16).
* ``inner=True`` (every limit; chosen per call site when the calibrated |x| times the margin stays below 2^n, e.g.
  softmax exponents x − max of scores bounded by B, |x| <= 2B): the clipping comparison and its selection are
  dropped (x is already in [−2^n, 0]), with the same bound on [−2^n, 0], its domain; below −2^n the base goes
  negative (what MP-SPDZ then computes), which is why lowering keeps a margin.
* ``mpspdz`` — MP-SPDZ's ``ml.exp`` (= ``mpc_math.pow_fx(e, x)`` via ``exp2_fx``). The reference is the exact
  exponential quantised to f bits; the built-in's own measured error is 2e-5 on [-10, 0], bounded here by 5e-5.
"""
from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

from compiler.approx import Approximation, register
from compiler.cost.primitives import Step
from compiler.fixedpoint import FixedPoint


def _clip(x_int: np.ndarray, fx: FixedPoint, n: int, inner: bool) -> np.ndarray:
    """x clipped to [-2^n, ...) (one LTZ and one bit x value product), or x itself when ``inner``."""
    return x_int if inner else np.maximum(x_int, np.int64(-(1 << n) * fx.scale))


def _clip_steps(size: int, inner: bool) -> list[Step]:
    return [] if inner else [Step("ltz", size), Step("mul_int", size)]


def exp_limit_reference(x_int: np.ndarray, fx: FixedPoint, n: int = 8, inner: bool = False) -> np.ndarray:
    z = fx.scale + fx.trunc(_clip(x_int, fx, n, inner), n)  # 1 + x/2^n, never negative
    for _ in range(n):
        z = fx.mul(z, z)
    return z


def exp_limit_steps(size: int, profile: object, n: int = 8, inner: bool = False) -> list[Step]:
    return _clip_steps(size, inner) + [Step("trunc", size)] + [Step("mul", size)] * n


@lru_cache(maxsize=None)
def exp_limit_bounds(n: int = 8, inner: bool = False, f: int = 16) -> tuple[tuple[float, float], float]:
    """max over x ∈ [-2^n, 0] of the limit's own error plus the rounding term 2^n·LSB·e^x/(1 + x/2^n): the base's
    0.5 LSB is amplified 2^n-fold by the squarings, squaring i's 0.5 LSB 2^(n-i)-fold; their sum is ≤ 2^n·LSB,
    relative to z^(m-1) = e^x/z. Below -2^n the clipped result is 0 and e^x < e^-2^n. Any x ≤ 0 in the
    comparison range is in the domain."""
    m = 2 ** n
    x = np.linspace(-m, 0.0, 200_001)
    base = 1.0 + x / m
    bound = np.max(np.abs(np.exp(x) - base ** m) + m * 2.0 ** -f * np.exp(x) / np.maximum(base, 1.0 / m))
    return (-float(m) if inner else -8000.0, 0.0), float(bound)


def exp_limit2_reference(x_int: np.ndarray, fx: FixedPoint, n: int = 5, inner: bool = False) -> np.ndarray:
    clipped = _clip(x_int, fx, n, inner)
    z = fx.scale + fx.trunc(clipped * (clipped + (fx.scale << (n + 1))), fx.f + 2 * n + 1)  # 1 + y + y²/2
    for _ in range(n):
        z = fx.mul(z, z)
    return z


def exp_limit2_steps(size: int, profile: object, n: int = 5, inner: bool = False) -> list[Step]:
    # y + y²/2 as one product and one truncation, then the squarings
    return _clip_steps(size, inner) + [Step("mul", size)] * (n + 1)


@lru_cache(maxsize=None)
def exp_limit2_bounds(n: int = 5, inner: bool = False, f: int = 16) -> tuple[tuple[float, float], float]:
    """max over x ∈ [-2^n, 0] of the limit's own error plus rounding: the base carries <= 0.5 LSB (one
    truncation), amplified 2^n-fold like the squarings' 0.5 LSB each (see exp_limit_bounds), so <= 2^n·LSB
    relative to e^x/base."""
    if not 1 <= n <= 6:
        raise ValueError(f"exp:limit2 takes 1 <= n <= 6 squarings (x² <= 4^n must stay in the product range), not {n}")
    m = 2 ** n
    x = np.linspace(-m, 0.0, 200_001)
    y = x / m
    base = 1.0 + y + y * y / 2
    bound = np.max(np.abs(np.exp(x) - base ** m) + m * 2.0 ** -f * np.exp(x) / base)
    return (-float(m) if inner else -8000.0, 0.0), float(bound)


def third_bits(n: int, f: int, order: int = 3) -> int:
    """S of K = round(2^S/3): the largest (up to 20) with the second raw sum below 2^(2f+n+S+order−3) (limit3:
    |h·(x + 3·2^n)·K| <= 2^(2f+n+S-1) and |x·2^(f+S)| <= 2^(2f+n+S); limit4: their sum <= 1.71·2^(2f+n+S)) below
    2^RING_TOP (61); K's relative error 1.5·2^-S moves the base by < 2^-S."""
    from compiler.approx.rsqrt import RING_TOP

    if not 1 <= n <= 4:
        raise ValueError(f"exp:limit{order} takes 1 <= n <= 4 squarings, not {n}")
    bits = min(20, RING_TOP - 2 * f - n - (order - 3))
    if bits < 12:
        raise ValueError(f"exp:limit{order} at f = {f} leaves 1/3 only {bits} bits in the ring; use exp:limit2")
    return bits


SHORT_BITS = 23  # x'·x' below 2^22 (``short``): a truncation input of at most 24 bits, with a bit to spare


def short_shift(n: int, f: int) -> int:
    """t of ``short``: x' = trunc(x, t) at f − t = 11 − n bits, so x'·x' < (2^n·2^(f−t))² = 2^22 for |x| <= 2^n."""
    return f + n - (SHORT_BITS - 1) // 2


def limit3_constants(n: int, f: int, short: int = 0, order: int = 3) -> dict[str, int]:
    """S, K = round(2^S/3), and the bit lengths of the truncations' inputs (x·x below 2^(2f+2n), or x'·x' below
    2^(2(f−t)+2n) with x' = trunc(x, t) of f + n + 1 bits; the second raw sum below 2^(2f+n+S+order−3)), for the
    third-order base (``order`` 3) or the fourth (4: ``fourth``, the factor's h·2^(n−1))."""
    bits = third_bits(n, f, order)
    if short and short != short_shift(n, f):
        raise ValueError(f"exp:limit{order} short takes t = f + n - 11 = {short_shift(n, f)}, not {short}")
    return {"third_bits": bits, "third": round(2 ** bits / 3), "second_bits": 2 * f + n + bits + order - 2,
            "first_bits": 2 * (f - short) + 2 * n + 1, "x_bits": f + n + 1, "h_shift": f + 2 * n + 1 - 2 * short,
            "fourth": order == 4}


def _series_reference(x_int: np.ndarray, fx: FixedPoint, n: int, inner: bool, short: int,
                      order: int) -> np.ndarray:
    c = limit3_constants(n, fx.f, short, order)
    x = _clip(x_int, fx, n, inner)
    xs = fx.trunc(x, short) if short else x
    h = fx.trunc(xs * xs, c["h_shift"])  # y²/2
    factor = x + 3 * (fx.scale << n) + (h << np.int64(n - 1) if c["fourth"] else 0)  # 2^n·(3 + y [+ h/2])
    raw = h * factor * c["third"] + x * (fx.scale << c["third_bits"])
    z = fx.scale + fx.trunc(raw, fx.f + n + c["third_bits"])  # 1 + y + h·(1 + y/3 [+ h/6])
    for _ in range(n):
        z = fx.mul(z, z)
    return z


def exp_limit3_reference(x_int: np.ndarray, fx: FixedPoint, n: int = 3, inner: bool = False,
                         top: float = 0.0, short: int = 0) -> np.ndarray:
    return _series_reference(x_int, fx, n, inner, short, 3)


def exp_limit4_reference(x_int: np.ndarray, fx: FixedPoint, n: int = 2, inner: bool = False,
                         top: float = 0.0, short: int = 0) -> np.ndarray:
    return _series_reference(x_int, fx, n, inner, short, 4)


def _series_steps(size: int, profile: object, n: int, inner: bool, short: int, order: int) -> list[Step]:
    if not short:
        return _clip_steps(size, inner) + [Step("mul", size)] * (n + 2)
    c = limit3_constants(n, int(getattr(profile, "f", 16)), short, order)
    return _clip_steps(size, inner) + [Step("trunc", size, bits=c["x_bits"]), Step("mul_int", size),
                                       Step("trunc", size, bits=c["first_bits"])] + [Step("mul", size)] * (n + 1)


def exp_limit3_steps(size: int, profile: object, n: int = 3, inner: bool = False, top: float = 0.0,
                     short: int = 0) -> list[Step]:
    return _series_steps(size, profile, n, inner, short, 3)


def exp_limit4_steps(size: int, profile: object, n: int = 2, inner: bool = False, top: float = 0.0,
                     short: int = 0) -> list[Step]:
    return _series_steps(size, profile, n, inner, short, 4)


@lru_cache(maxsize=None)
def _series_bounds(n: int, inner: bool, top: float, short: int, f: int,
                   order: int) -> tuple[tuple[float, float], float]:
    """max over x ∈ [-2^n, top] of the limit's own error plus rounding, to first order: the base carries its
    truncation's 0.5 LSB, h's 0.5 times ∂base/∂h = 1 + y/3 (+ h/3 at order 4) and K's < 2^-S < 0.05 LSB (f = 16),
    moving the result by 2^n·base^(2^n − 1) times that; squaring i's 0.5 LSB moves it by 2^(n−i)·base^(2^n − 2^i)
    times that (the last one's 0.5 LSB unamplified). ``short``: h's extra error from x' (see the module doc),
    amplified like the base's."""
    limit3_constants(n, f, short, order)
    m = 2 ** n
    reach = m if order == 4 else m // 2  # positive exponents: where the raw second sum keeps its bit length
    if top and (not inner or not 0.0 < top <= reach):
        raise ValueError(f"exp:limit{order} takes a positive top only inner and up to "
                         f"{'2^n' if order == 4 else '2^(n-1)'} = {reach}, not {top}")
    x = np.linspace(-m, float(top), 200_001)
    y = x / m
    h = y * y / 2
    base = 1.0 + y + h + y ** 3 / 6 + (y ** 4 / 24 if order == 4 else 0.0)
    slope = np.abs(1 + y / 3 + (h / 3 if order == 4 else 0.0))
    rounding = (0.55 + 0.5 * slope) * m * base ** (m - 1) + \
        sum(0.5 * 2 ** (n - i) * base ** (m - 2 ** i) for i in range(1, n + 1))
    if short:  # x' off by <= 1 LSB at f − t bits: h by (2|x| + 2^(t−f))·2^(t−f)/2^(2n+1), times ∂base/∂h
        lsb = 2.0 ** (short - f)
        rounding = rounding + m * base ** (m - 1) * (2 * np.abs(x) + lsb) * lsb / 2 ** (2 * n + 1) * slope * 2.0 ** f
    bound = np.max(np.abs(np.exp(x) - base ** m) + rounding * 2.0 ** -f)
    # below −2^n the clipped input gives the result at −2^n (x[0]), against an e^x in (0, e^-2^n)
    clipped = max(base[0] ** m + rounding[0] * 2.0 ** -f, math.exp(-m))
    return (-float(m) if inner else -8000.0, float(top)), float(max(bound, 0.0 if inner else clipped))


def exp_limit3_bounds(n: int = 3, inner: bool = False, top: float = 0.0, short: int = 0,
                      f: int = 16) -> tuple[tuple[float, float], float]:
    return _series_bounds(n, inner, top, short, f, 3)


def exp_limit4_bounds(n: int = 2, inner: bool = False, top: float = 0.0, short: int = 0,
                      f: int = 16) -> tuple[tuple[float, float], float]:
    return _series_bounds(n, inner, top, short, f, 4)


def exp_mpspdz_reference(x_int: np.ndarray, fx: FixedPoint) -> np.ndarray:
    return fx.encode(np.exp(fx.decode(x_int)))


register(Approximation(
    op="exp", choice="limit", reference=exp_limit_reference, template="approx/exp_limit.mpc.j2",
    steps=exp_limit_steps, exact=np.exp, bounds=exp_limit_bounds, params={"n": 8, "inner": False},
    compared=lambda n, inner: 2.0 ** n,
    doc="(1 + x/2^n)^(2^n) after clipping x to [-2^n, 0]"))

register(Approximation(
    op="exp", choice="limit2", reference=exp_limit2_reference, template="approx/exp_limit2.mpc.j2",
    steps=exp_limit2_steps, exact=np.exp, bounds=exp_limit2_bounds, params={"n": 5, "inner": False},
    compared=lambda n, inner: 2.0 ** n,
    doc="(1 + y + y^2/2)^(2^n), y = x/2^n, after clipping x to [-2^n, 0]"))

register(Approximation(
    op="exp", choice="limit3", reference=exp_limit3_reference, template="approx/exp_limit3.mpc.j2",
    steps=exp_limit3_steps, exact=np.exp, bounds=exp_limit3_bounds,
    params={"n": 3, "inner": False, "top": 0.0, "short": 0},
    constants=lambda fx, params: limit3_constants(params["n"], fx.f, params["short"]),
    compared=lambda n, inner, top, short: 2.0 ** n,
    doc="(1 + y + y^2/2 + y^3/6)^(2^n), y = x/2^n, after clipping x to [-2^n, 0]"))

register(Approximation(
    op="exp", choice="limit4", reference=exp_limit4_reference, template="approx/exp_limit3.mpc.j2",
    steps=exp_limit4_steps, exact=np.exp, bounds=exp_limit4_bounds,
    params={"n": 2, "inner": False, "top": 0.0, "short": 0},
    constants=lambda fx, params: limit3_constants(params["n"], fx.f, params["short"], 4),
    compared=lambda n, inner, top, short: 2.0 ** n,
    doc="(1 + y + y^2/2 + y^3/6 + y^4/24)^(2^n), y = x/2^n, after clipping x to [-2^n, 0]"))

register(Approximation(
    op="exp", choice="mpspdz", reference=exp_mpspdz_reference, template="approx/exp_mpspdz.mpc.j2",
    steps=lambda size, profile: [Step("exp:mpspdz", size)], exact=np.exp,
    bounds=lambda: ((-10.0, 0.0), 5e-5), params={}, doc="MP-SPDZ ml.exp (exp2_fx)"))
