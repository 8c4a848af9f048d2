"""erf(x) (an Erf the GeLU pattern did not fuse).

``poly`` — sign(x)·G(|x|), G = erf as a degree-8 polynomial in |x|/3 below 3 and 1 beyond (1 − erf 3 = 2.2e-5);
construction, cost and bound in :mod:`compiler.approx.oddpoly`.
"""
from __future__ import annotations

from scipy.special import erf

from compiler.approx.oddpoly import OddPoly

ERF = OddPoly("erf", erf, c0=0.0, limit=1.0, cut=3.0, degree=8)
ERF.register("sign(x)·poly(|x|/3), ±1 beyond 3")
