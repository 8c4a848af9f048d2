"""GeLU(x) = x·Φ(x) (erf form).

* ``poly`` — GeLU(x) = ReLU(x) − g(|x|) with g(a) = a·Φ(−a) (even, below 1.3e-4 for a ≥ 4). g is a degree-5
  minimax polynomial in t = a/4 on [0, 1] (fit error 2.6e-3), evaluated in the centred variable s = 2t − 1 =
  |x|/2 − 1 ∈ [−1, 1], where its coefficients are below 0.25 (:data:`CENTRED`): s is |x| read with f + 1
  fractional bits, so rounding errors are not amplified and few truncations suffice. Cut to 0 for |x| ≥ 4.
  Cost (:func:`centred_scales`): the comparisons (below), then one round of two products [b·x, x·x] (b the sign
  bit): ReLU = x − b·x, |x| = x − 2·b·x and v = s² = x²/4 − |x| + 1 (local); v truncated to f − 1 bits; Estrin
  p = c0 + c1·s + v·(c2 + c3·s + v·(c4 + c5·s)): two products, no truncation between them (the scales add up to
  at most 60 bits; from f = 17 on one more truncation of the inner sum); inside·p (bit × value) and one final
  truncation: five products and two truncations, 8 rounds after the comparisons.
  The comparisons, one vectorised LTZ:
  - ``band=True`` (chosen per call site when the calibrated |x| times the margin stays below 2·cut = 8, in a ring):
    the top two bits h = bit f + 3, l = bit f + 2 of x mod 2^(f+4), from ONE comparison's circuit (MP-SPDZ's LTZ
    on f + 4 bits, whose carry into bit f + 2 gives l, one AND more for the carry into bit f + 3; cost primitive
    ``ltz2``): the sign is h for |x| < 8, and adding 4 = 2^(f+2) LSB adds 1 to (h, l), so [x ∉ [−4, 4)] is bit
    f + 3 of x + 4, h ⊕ l, for x ∈ [−12, 12) (binary, before the two bits are converted to arithmetic in one call).
    A prime field's comparison has no such carry circuit, so not there;
  - default: [x, x − 4, x + 4] at the call site's k', inside = [x < 4] − [x < −4];
  - ``inner=True`` (the calibrated |x| times the margin below 4): the sign only, inside = 1, no inside·p.
  Bound: |error| ≤ 3e-3 on [−8, 8] (fit 2.6e-3, the two truncations and the coefficients' encoding below 1e-4;
  beyond |x| ≥ 4 only g's tail 1.3e-4); ``inner``: the same on (−4, 4), ``band``: on (−8, 8).
* ``mpspdz`` — MP-SPDZ's ``ml.Gelu`` (PUMA 3-piece polynomial: f0 on [−4, −1.95), f1 on [−1.95, 3], x above 3,
  0 below −4). The reference emulates it operation by operation in fixed point; its error against erf-GeLU on
  [−8, 8] is below 0.016 (0.015 measured by MP-SPDZ runs).
"""
from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

from compiler.approx import Approximation, register
from compiler.cost.primitives import Step
from compiler.fixedpoint import FixedPoint

CUT = 4.0
# max |tanh-GeLU − erf-GeLU| (dense grid on [−10, 10]; both tend to x resp. 0 beyond): a gelu node with
# approximate='tanh' is lowered with the same approximation, so its bound grows by this gap
TANH_GELU_GAP = 4.8e-4
# g(4t) = 4t·Φ(−4t) ≈ Σ POLY[i]·t^i on t ∈ [0, 1] (minimax, Lawson iterations on 8001 points)
POLY = (-2.59231964e-03, 2.22394950e+00, -9.47899037e+00, 1.49188074e+01, -1.01864867e+01, 2.52284436e+00)
# the same polynomial in s = 2t − 1: Σ CENTRED[i]·s^i (exact change of variable)
CENTRED = tuple(float(c) for c in np.polynomial.Polynomial(POLY)(np.polynomial.Polynomial([0.5, 0.5])).coef)
# ml.Gelu's coefficients (Compiler/ml.py at 3a0a7b1d): f0 = Σ F0[i] x^i, f1 = Σ F1[power] x^power
PUMA_F0 = (-0.5054031199708174, -0.42226581151983866, -0.11807612951181953, -0.011034134030615728)
PUMA_F1 = {0: 0.008526321541038084, 1: 0.5, 2: 0.3603292692789629, 4: -0.037688200365904236,
           6: 0.0018067462606141187}
# the largest scale (bits) p may reach before its final truncation: |p| < 1/2 inside the cut, so p and its sign
# stay below 2^61, a margin under the 64-bit ring
TOP_SCALE = 60
COEFF_BITS = 13  # fractional bits of the smallest-scaled coefficient (c5 = 0.079: error ≤ 2^-14 ≈ 6e-5)


_ERF = np.frompyfunc(math.erf, 1, 1)


def gelu_exact(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return 0.5 * x * (1.0 + _ERF(x / math.sqrt(2.0)).astype(np.float64))


@lru_cache(maxsize=None)
def centred_scales(f: int) -> dict[str, int]:
    """Fixed-point plan of the Estrin evaluation at precision f (bits are scales: a value v is held as v·2^bits).

    s = |x|/2 − 1 at ``s`` = f + 1 bits; v = s² at ``v`` = f − 1 bits (the product x·x at 2f + 2 bits, truncated
    by ``v_shift``); L = c4 + c5·s at s + COEFF_BITS; B = c2 + c3·s + v·L at ``b`` = v + s + COEFF_BITS bits,
    truncated by ``b_shift`` (0 unless v·B would pass TOP_SCALE, i.e. f ≥ 17); p = c0 + c1·s + v·B at ``p`` bits;
    the output at f bits, truncated by ``p_shift``. The ``coeffs`` are the integers c0..c5 at their scales."""
    s, v = f + 1, f - 1
    b = v + s + COEFF_BITS
    b_shift = max(0, v + b - TOP_SCALE)
    p = v + b - b_shift
    scales = (p, p - s, b, b - s, s + COEFF_BITS, COEFF_BITS)  # c0 (alone), c1·s, c2, c3·s, c4, c5·s
    return {"s": s, "v": v, "b": b, "p": p, "v_shift": 2 * s - v, "b_shift": b_shift, "p_shift": p - f,
            "coeffs": tuple(int(round(c * 2.0 ** e)) for c, e in zip(CENTRED, scales))}


def poly_reference(x_int: np.ndarray, fx: FixedPoint, inner: bool = False, band: bool = False) -> np.ndarray:
    cut = np.int64(CUT * fx.scale)
    plan = centred_scales(fx.f)
    c0, c1, c2, c3, c4, c5 = (np.int64(c) for c in plan["coeffs"])
    neg = (x_int < 0).astype(np.int64)
    # band: the top two bits equal the two cut tests inside their range (|x| < 12)
    inside = 1 if inner else (x_int < cut).astype(np.int64) - (x_int < -cut).astype(np.int64)
    neg_x = neg * x_int  # bit × value: no truncation
    relu, magnitude = x_int - neg_x, x_int - 2 * neg_x
    s = magnitude - np.int64(1 << plan["s"])
    with np.errstate(over="ignore"):  # beyond the cut p wraps like the ring does; inside = 0 discards it there
        v = fx.trunc(x_int * x_int - (magnitude << np.int64(plan["s"] + 1)) + np.int64(1 << (2 * plan["s"])),
                     plan["v_shift"])  # s² = x²/4 − |x| + 1, x·x read at 2s bits
        b = fx.trunc(c2 + c3 * s + v * (c4 + c5 * s), plan["b_shift"])
        p = c0 + c1 * s + v * b
    return relu - fx.trunc(inside * p, plan["p_shift"])


def poly_steps(size: int, profile: object, inner: bool = False, band: bool = False) -> list[Step]:
    plan = centred_scales(int(getattr(profile, "f", 16)))  # band: its comparisons at k' = f + 3 = s + 2
    compared = [Step("ltz", size)] if inner else [Step("ltz2", size, bits=plan["s"] + 2)] if band else \
        [Step("ltz", 3 * size, (3,))]
    return [*compared, Step("mul_int", 2 * size), Step("trunc", size), Step("mul_int", size),
            *([Step("trunc", size)] if plan["b_shift"] else []), Step("mul_int", size),
            *([] if inner else [Step("mul_int", size)]), Step("trunc", size)]


def poly_constants(fx: FixedPoint, params: dict) -> dict:
    return {"cut": CUT, **centred_scales(fx.f)}


def poly_bounds(inner: bool = False, band: bool = False) -> tuple[tuple[float, float], float]:
    reach = CUT if inner else 2 * CUT if band else 8.0
    return (-reach, reach), 3e-3


def puma_reference(x_int: np.ndarray, fx: FixedPoint) -> np.ndarray:
    b0 = x_int < fx.encode(-4.0)
    b1 = x_int < fx.encode(-1.95)
    b2 = x_int > fx.encode(3.0)
    z0, z1, z2 = (b1 & ~b0).astype(np.int64), (~b1 & ~b2).astype(np.int64), b2.astype(np.int64)
    x2 = fx.mul(x_int, x_int)
    x3 = fx.mul(x2, x_int)
    powers = {1: x_int, 2: x2, 3: x3, 4: fx.mul(x2, x2), 6: fx.mul(x3, x3)}
    f0 = fx.encode(PUMA_F0[0]) + sum(fx.mul_public(powers[i], c) for i, c in enumerate(PUMA_F0) if i)
    f1 = fx.encode(PUMA_F1[0]) + sum(fx.mul_public(powers[i], c) for i, c in PUMA_F1.items() if i)
    return z0 * f0 + z1 * f1 + z2 * x_int


register(Approximation(
    op="gelu", choice="poly", reference=poly_reference, template="approx/gelu_poly.mpc.j2", steps=poly_steps,
    exact=gelu_exact, bounds=poly_bounds, params={"inner": False, "band": False}, constants=poly_constants,
    compared=lambda inner, band: CUT,
    doc="ReLU(x) - g(|x|), g a degree-5 polynomial on [0, 4] (centred Estrin)"))

register(Approximation(
    op="gelu", choice="mpspdz", reference=puma_reference, template="approx/gelu_mpspdz.mpc.j2",
    steps=lambda size, profile: [Step("gelu:mpspdz", size)], exact=gelu_exact,
    bounds=lambda: ((-8.0, 8.0), 0.016), params={}, doc="MP-SPDZ ml.Gelu (PUMA piecewise polynomial)"))
