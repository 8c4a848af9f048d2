"""tanh(x) (GeLU with approximate='tanh' when not fused, tanh MLPs).

``poly`` — sign(x)·G(|x|), G = tanh as a degree-8 polynomial in |x|/4 below 4 and 1 beyond (1 − tanh 4 = 6.7e-4);
construction, cost and bound in :mod:`compiler.approx.oddpoly`.

``mpspdz`` — MP-SPDZ's ``mpc_math.tanh``: y = e^(2x) by ``pow_fx`` (``exp:mpspdz``), then (y − 1)/(y + 1) by one
sfix division (FPDiv, priced as ``reciprocal:mpspdz``, the same call), saturated to ±1 beyond ±ln(2^(k−f−2))/2
(two comparisons, two selections). Reference: exact tanh quantised to f bits; the built-in's own error, measured
under replicated-ring on 4000 points of [−16, 16], is bounded by BUILTIN_BOUND (re-measured by
tests/test_general_ops_mpspdz.py).
"""
from __future__ import annotations

import numpy as np

from compiler.approx import Approximation, register
from compiler.approx.oddpoly import OddPoly
from compiler.cost.primitives import Step
from compiler.fixedpoint import FixedPoint

BUILTIN_BOUND = 3e-4  # measured 2.4e-4 (at x = −4.5, next to the saturation point)

TANH = OddPoly("tanh", np.tanh, c0=0.0, limit=1.0, cut=4.0, degree=8)
TANH.register("sign(x)·poly(|x|/4), ±1 beyond 4")


def builtin_reference(x_int: np.ndarray, fx: FixedPoint) -> np.ndarray:
    return fx.encode(np.tanh(fx.decode(x_int)))


register(Approximation(
    op="tanh", choice="mpspdz", reference=builtin_reference, template="approx/tanh_mpspdz.mpc.j2",
    steps=lambda size, profile: [Step("ltz", 2 * size), Step("exp:mpspdz", size), Step("reciprocal:mpspdz", size),
                                 Step("mul_int", 2 * size)],
    exact=np.tanh, bounds=lambda: ((-16.0, 16.0), BUILTIN_BOUND), params={}, doc="MP-SPDZ mpc_math.tanh"))
