"""GeLU(x) = x·Φ(x) (erf form).

* ``poly`` — GeLU(x) = ReLU(x) − g(|x|) with g(a) = a·Φ(−a) (even, below 1.3e-4 for a ≥ 4). g is a degree-5
  minimax polynomial in t = a/4 on [0, 1] (fit error 2.6e-3; in t, Horner's rounding errors are not amplified)
  and cut to 0 for |x| ≥ 4. Cost: ONE vectorised LTZ on [x, x − 4, x + 4] (3n elements) gives the sign bit b and
  the cut c = [x < 4] − [x < −4] (local); one bit×value product b·x gives ReLU = x − b·x and |x| = x − 2·b·x;
  Horner's rule with *fused truncations* (:func:`horner_stages`): t is |x| itself read with f + 2 fractional
  bits (no truncation), the public coefficient products are local, and where the 64-bit ring has room two secret
  products share one truncation (the partial value at scale 2^(3f+4) stays below 2^63: f <= 18): degree 5 is
  four secret products and three truncations (one product + truncation, two products + truncation, one product +
  truncation) instead of two truncations and four truncated products; finally c·p (bit×value).
  Bound: |error| ≤ 3e-3 on [−8, 8] (fit 2.6e-3 + the three truncations' 0.5 LSB each, times t ≤ 1, + the
  coefficients' encoding at ≥ 2f + 2 bits; beyond |x| ≥ 4 only g's tail 1.3e-4).
  ``inner=True`` (chosen per call site when the calibrated |x| times the margin stays below 4): the cut
  comparisons are dropped (an LTZ on n elements, not 3n; c = 1), the same bound on (−4, 4), its domain.
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
from compiler.errors import CompileError
from compiler.fixedpoint import FixedPoint

CUT = 4.0
# max |tanh-GeLU − erf-GeLU| (dense grid on [−10, 10]; both tend to x resp. 0 beyond): a gelu node with
# approximate='tanh' is lowered with the same approximation, so its bound grows by this gap
TANH_GELU_GAP = 4.8e-4
# g(4t) = 4t·Φ(−4t) ≈ Σ POLY[i]·t^i on t ∈ [0, 1] (minimax, Lawson iterations on 8001 points)
POLY = (-2.59231964e-03, 2.22394950e+00, -9.47899037e+00, 1.49188074e+01, -1.01864867e+01, 2.52284436e+00)
# ml.Gelu's coefficients (Compiler/ml.py at 3a0a7b1d): f0 = Σ F0[i] x^i, f1 = Σ F1[power] x^power
PUMA_F0 = (-0.5054031199708174, -0.42226581151983866, -0.11807612951181953, -0.011034134030615728)
PUMA_F1 = {0: 0.008526321541038084, 1: 0.5, 2: 0.3603292692789629, 4: -0.037688200365904236,
           6: 0.0018067462606141187}


_ERF = np.frompyfunc(math.erf, 1, 1)


def gelu_exact(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return 0.5 * x * (1.0 + _ERF(x / math.sqrt(2.0)).astype(np.float64))


RING_BITS = 64  # the programs' ring, MP-SPDZ -R 64 (compiler.lowering.profiles.RING_BITS)
T_BITS = 2  # t = |x|/4 = |x| read with f + 2 fractional bits


@lru_cache(maxsize=None)
def horner_stages(f: int) -> tuple[int, int, tuple[tuple[tuple[int, ...], int, int], ...]]:
    """Fused Horner evaluation of POLY at t = T/2^(f+2), T = |x| in fixed point (raw, f fractional bits).

    Returns (top, start, stages): p = T·top + start (local: top = c5 at f bits, start = c4 at 2f + 2 bits, so p is
    at scale 2^(2f+2)), then per stage (constants, shift, k): for each constant c, p ← p·T + c (one secret product;
    c is encoded at the product's scale), then p ← trunc(p, shift) (its k: p's bit length, sign included). Stages
    start at scale 2^(2f+2) (the first takes one product to 3f + 4, then truncates by 2f + 4 to f) and go on from
    scale 2^f: two products (2f + 2, then 3f + 4) per truncation where 3f + 4 bits plus the partial values' own
    bits fit the ring, else one (2f + 2, truncated by f + 2). Raises CompileError when not even one fits."""
    coefficients = list(POLY)  # c0..c5
    t = np.linspace(0.0, 1.0, 10_001)
    partial = [np.full_like(t, coefficients[-1])]
    for c in coefficients[-2::-1]:  # h_i = h_(i+1)·t + c_i: Horner's partial values on t ∈ [0, 1]
        partial.append(partial[-1] * t + c)
    head = int(math.ceil(math.log2(max(float(np.max(np.abs(h))) for h in partial)))) + 2  # sign and 1 spare bit

    def fits(scale: int) -> bool:
        return scale + head <= RING_BITS

    if not fits(2 * f + T_BITS):
        raise CompileError(f"gelu:poly needs 2f + {T_BITS + head} <= {RING_BITS} ring bits; f={f} is too large")
    top = int(round(coefficients[-1] * 2.0 ** f))
    start = int(round(coefficients[-2] * 2.0 ** (2 * f + T_BITS)))
    rest = coefficients[-3::-1]  # c3, c2, c1, c0
    stages = []
    if fits(3 * f + 2 * T_BITS):  # from 2f + 2: one product to 3f + 4, back to f
        stages.append(((int(round(rest[0] * 2.0 ** (3 * f + 2 * T_BITS))),), 2 * f + 2 * T_BITS,
                       3 * f + 2 * T_BITS + head))
        rest = rest[1:]
    else:  # back to f first, no product
        stages.append(((), f + T_BITS, 2 * f + T_BITS + head))
    while rest:
        if len(rest) >= 2 and fits(3 * f + 2 * T_BITS):
            stages.append(((int(round(rest[0] * 2.0 ** (2 * f + T_BITS))),
                            int(round(rest[1] * 2.0 ** (3 * f + 2 * T_BITS)))), 2 * f + 2 * T_BITS,
                           3 * f + 2 * T_BITS + head))
            rest = rest[2:]
        else:
            stages.append(((int(round(rest[0] * 2.0 ** (2 * f + T_BITS))),), f + T_BITS, 2 * f + T_BITS + head))
            rest = rest[1:]
    return top, start, tuple(stages)


def poly_reference(x_int: np.ndarray, fx: FixedPoint, inner: bool = False) -> np.ndarray:
    cut = np.int64(CUT * fx.scale)
    neg = (x_int < 0).astype(np.int64)
    inside = 1 if inner else (x_int < cut).astype(np.int64) - (x_int < -cut).astype(np.int64)
    neg_x = neg * x_int  # bit × value: no truncation
    relu, magnitude = x_int - neg_x, x_int - 2 * neg_x
    top, start, stages = horner_stages(fx.f)
    with np.errstate(over="ignore"):  # beyond the cut p wraps like the ring does; inside = 0 discards it there
        p = magnitude * np.int64(top) + np.int64(start)
        for constants, shift, _ in stages:
            for c in constants:
                p = p * magnitude + np.int64(c)
            p = fx.trunc(p, shift)
    return relu - inside * p


def poly_steps(size: int, profile: object, inner: bool = False) -> list[Step]:
    f = int(getattr(profile, "f", 16))
    horner = [s for constants, _, _ in horner_stages(f)[2] for s in [Step("mul_int", size)] * len(constants) +
              [Step("trunc", size)]]
    return [Step("ltz", (1 if inner else 3) * size), Step("mul_int", size)] + horner + \
        ([] if inner else [Step("mul_int", size)])


def poly_constants(fx: FixedPoint, params: dict) -> dict:
    top, start, stages = horner_stages(fx.f)
    return {"cut": CUT, "top": top, "start": start, "stages": [list(stage) for stage in stages],
            "t_bits": T_BITS}


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
    exact=gelu_exact, bounds=lambda inner=False: ((-CUT, CUT) if inner else (-8.0, 8.0), 3e-3),
    params={"inner": False}, constants=poly_constants,
    compared=lambda inner: CUT,
    doc="ReLU(x) - g(|x|), g a degree-5 polynomial on [0, 4]"))

register(Approximation(
    op="gelu", choice="mpspdz", reference=puma_reference, template="approx/gelu_mpspdz.mpc.j2",
    steps=lambda size, profile: [Step("gelu:mpspdz", size)], exact=gelu_exact,
    bounds=lambda: ((-8.0, 8.0), 0.016), params={}, doc="MP-SPDZ ml.Gelu (PUMA piecewise polynomial)"))
