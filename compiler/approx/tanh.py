"""tanh(x) (GeLU with approximate='tanh' when not fused, tanh MLPs).

``poly`` — sign(x)·G(|x|), G = tanh as a degree-8 polynomial in |x|/4 below 4 and 1 beyond (1 − tanh 4 = 6.7e-4);
construction, cost and bound in :mod:`compiler.approx.oddpoly`.
"""
from __future__ import annotations

import numpy as np

from compiler.approx.oddpoly import OddPoly

TANH = OddPoly("tanh", np.tanh, c0=0.0, limit=1.0, cut=4.0, degree=8)
TANH.register("sign(x)·poly(|x|/4), ±1 beyond 4")
