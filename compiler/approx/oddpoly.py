"""Shared construction of the bounded, point-symmetric non-linearities (sigmoid, tanh, erf): ``poly`` choices.

f(x) = c0 + sign(x)·G(|x|) with G(a) = P(a/cut) for a < cut and G(a) = L (the limit of f − c0) beyond. P is a
degree-d polynomial in t = a/cut ∈ [0, 1] (t keeps Horner's rounding errors from being amplified): the
least-squares Chebyshev fit of G(cut·t) on 2000 Chebyshev nodes (numpy.polynomial.chebyshev.chebfit), converted
to the power basis. The fit is computed once per process from those fixed nodes, so the constants are
deterministic.

MPC computation on an sfix vector of n elements (the same sequence as gelu:poly):
ONE vectorised LTZ on [x, x − cut, x + cut] (3n) gives the sign bit b and the cut bit c = [x < cut] − [x < −cut];
ONE bit×value call on 2n elements gives b·x and b·c; |x| = x − 2·b·x; t = |x|·(1/cut) (one truncation); Horner
(one public-coefficient product, d − 1 secret products, one truncation each); finally with s = c − 2·b·c
(= sign(x) inside the cut, 0 outside) f(x) = c0 + L·(1 − 2b) + s·(P(t) − L): one bit×value product.

``inner=True`` (chosen per call site when the calibrated |x| times the margin stays below cut): the cut
comparisons are dropped (c = 1: an LTZ on n elements, one bit×value call on n), with the fit's bound on
(−cut, cut), its domain.

Error bound: max(fit error of P on [0, cut], tail |L − G(cut)|) + rounding. Rounding: the Horner value is off by
≤ (d + 1)·LSB (each step's truncation and coefficient encoding ≤ 1 LSB, multiplied by t ≤ 1 afterwards), t by
≤ 1 LSB (truncation, and the encoded 1/cut times |x| < cut), which moves P by ≤ max|P'(t)|·LSB on [0, 1].
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Callable

import numpy as np
from numpy.polynomial import chebyshev, polynomial

from compiler.approx import Approximation, register
from compiler.cost.primitives import Step
from compiler.fixedpoint import FixedPoint

FIT_NODES = 2000
BOUND_F = 16  # the bound is stated at f = 16, like every approximation's


@dataclass(frozen=True)
class OddPoly:
    """f(x) = c0 + sign(x)·G(|x|), G ≈ polynomial in |x|/cut below cut, L beyond."""

    op: str
    exact: Callable[[np.ndarray], np.ndarray]
    c0: float
    limit: float
    cut: float
    degree: int

    def odd_part(self, a: np.ndarray) -> np.ndarray:
        return self.exact(a) - self.c0

    @cached_property
    def coefficients(self) -> tuple[float, ...]:
        """p_0..p_d of P(t) = Σ p_i t^i, t = |x|/cut."""
        nodes = np.cos(np.pi * (np.arange(FIT_NODES) + 0.5) / FIT_NODES)  # in [-1, 1]; t = (s + 1)/2
        cheb = chebyshev.chebfit(nodes, self.odd_part(self.cut * (nodes + 1) / 2), self.degree)
        in_s = chebyshev.cheb2poly(cheb)
        in_t = np.zeros(1)
        power = np.ones(1)
        for c in in_s:  # substitute s = 2t − 1
            in_t = polynomial.polyadd(in_t, c * power)
            power = polynomial.polymul(power, [-1.0, 2.0])
        return tuple(float(c) for c in in_t)

    def reference(self, x_int: np.ndarray, fx: FixedPoint, inner: bool = False) -> np.ndarray:
        cut = np.int64(fx.encode(self.cut))
        neg = (x_int < 0).astype(np.int64)
        inside = 1 if inner else (x_int < cut).astype(np.int64) - (x_int < -cut).astype(np.int64)
        neg_x, neg_inside = neg * x_int, neg * inside  # one bit × value call on 2n elements
        t = fx.mul_public(x_int - 2 * neg_x, 1.0 / self.cut)
        p = self._horner(t, fx)
        limit = np.int64(fx.encode(self.limit))
        s = inside - 2 * neg_inside
        return np.int64(fx.encode(self.c0)) + limit - 2 * limit * neg + s * (p - limit)

    def _horner(self, t: np.ndarray, fx: FixedPoint) -> np.ndarray:
        c = self.coefficients
        p = fx.mul_public(t, c[-1]) + fx.encode(c[-2])
        for coefficient in c[-3::-1]:
            p = fx.mul(p, t) + fx.encode(coefficient)
        return p

    def steps(self, size: int, profile: object, inner: bool = False) -> list[Step]:
        compared = [Step("ltz", size)] if inner else [Step("ltz", 3 * size, (3,))]  # x against 0, cut, −cut
        return [*compared, Step("mul_int", (1 if inner else 2) * size),
                Step("trunc", size), Step("trunc", size)] + \
            [Step("mul", size)] * (self.degree - 1) + [Step("mul_int", size)]

    @cached_property
    def fit_error(self) -> float:
        a = np.linspace(0.0, self.cut, 40_001)  # smooth on [0, cut]; the tests re-check in fixed point
        p = polynomial.polyval(a / self.cut, self.coefficients)
        tail = abs(self.limit - float(self.odd_part(np.array(self.cut))))
        return max(float(np.max(np.abs(p - self.odd_part(a)))), tail)

    def bounds(self, inner: bool = False) -> tuple[tuple[float, float], float]:
        """Domain: the comparison range at k = 31, f = 16 (beyond ±cut the result is the limit anyway); with
        ``inner``, (−cut, cut)."""
        slope = polynomial.polyval(np.linspace(0.0, 1.0, 10_001), polynomial.polyder(self.coefficients))
        rounding = (self.degree + 1 + float(np.max(np.abs(slope)))) * 2.0 ** -BOUND_F
        return ((-self.cut, self.cut) if inner else (-16000.0, 16000.0)), self.fit_error + rounding

    def register(self, doc: str) -> Approximation:
        return register(Approximation(
            op=self.op, choice="poly", reference=self.reference, template="approx/odd_poly.mpc.j2",
            steps=self.steps, exact=self.exact, bounds=self.bounds, params={"inner": False},
            constants=lambda fx, params: {"poly": list(self.coefficients), "cut": self.cut, "c0": self.c0,
                                          "limit": self.limit},
            compared=lambda inner: self.cut,
            doc=doc))
