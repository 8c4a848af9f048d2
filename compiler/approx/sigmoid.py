"""sigmoid(x) = 1/(1 + e^−x) (QuickGELU, SiLU, SwiGLU gates, ConViT gating).

``poly`` — 0.5 + sign(x)·G(|x|), G(a) = σ(a) − 0.5 as a degree-7 polynomial in a/8 below 8 and 0.5 beyond
(1 − σ(8) = 3.4e-4); construction, cost and bound in :mod:`compiler.approx.oddpoly` (bound ≈ 5.5e-4 + rounding).

``mpspdz`` — MP-SPDZ's ``ml.sigmoid``: exp(−x) by ``pow_fx`` (the ``exp:mpspdz`` built-in), then 1/(1 + e^−x) by
sfix division (``reciprocal:mpspdz``), saturated to 0/1 beyond ±ln 2^(k−f−1) (two comparisons, two selections);
its steps are those built-ins' fitted costs. The reference is the exact sigmoid quantised to f bits; the
built-in's own error, measured under replicated-ring on 4000 points of [−16, 16], is bounded by BUILTIN_BOUND
(tests/test_general_ops_mpspdz.py re-measures it).
"""
from __future__ import annotations

import numpy as np
from scipy.special import expit

from compiler.approx import Approximation, register
from compiler.approx.oddpoly import OddPoly
from compiler.cost.primitives import Step
from compiler.fixedpoint import FixedPoint

BUILTIN_BOUND = 1e-4  # measured 6.1e-5 (at x = −9.7, where the saturation starts)

SIGMOID = OddPoly("sigmoid", expit, c0=0.5, limit=0.5, cut=8.0, degree=7)
SIGMOID.register("0.5 + sign(x)·poly(|x|/8), 0.5 beyond 8")


def builtin_reference(x_int: np.ndarray, fx: FixedPoint) -> np.ndarray:
    return fx.encode(expit(fx.decode(x_int)))


register(Approximation(
    op="sigmoid", choice="mpspdz", reference=builtin_reference, template="approx/sigmoid_mpspdz.mpc.j2",
    steps=lambda size, profile: [Step("exp:mpspdz", size), Step("reciprocal:mpspdz", size), Step("ltz", 2 * size),
                                 Step("mul_int", 2 * size)],
    exact=expit, bounds=lambda: ((-16.0, 16.0), BUILTIN_BOUND), params={}, doc="MP-SPDZ ml.sigmoid"))
