"""sigmoid(x) = 1/(1 + e^−x) (QuickGELU, SiLU, SwiGLU gates, ConViT gating).

``poly`` — 0.5 + sign(x)·G(|x|), G(a) = σ(a) − 0.5 as a degree-7 polynomial in a/8 below 8 and 0.5 beyond
(1 − σ(8) = 3.4e-4); construction, cost and bound in :mod:`compiler.approx.oddpoly` (bound ≈ 5.5e-4 + rounding).
"""
from __future__ import annotations

from scipy.special import expit

from compiler.approx.oddpoly import OddPoly

SIGMOID = OddPoly("sigmoid", expit, c0=0.5, limit=0.5, cut=8.0, degree=7)
SIGMOID.register("0.5 + sign(x)·poly(|x|/8), 0.5 beyond 8")
