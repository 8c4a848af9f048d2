"""1/x for the softmax denominators (one reciprocal per attention row, then a multiplication).

``newton`` — Newton's iteration on a known denominator range [lo, hi] (softmax rows after max-subtraction: [1, N];
ReLU-softmax: [ε, N·S_max]), its first I − 1 steps taken as ONE step of order 2^(I−1) (same products, I deep
instead of 2(I − 1)), then one Newton step that corrects that series' rounding.

Initial guess (one vectorised LTZ, no multiplication): with ``per_octave`` p segments per doubling, ρ = 2^(1/p),
and thresholds t_j = lo·ρ^j (j = 1..J, J = ⌈log_ρ(hi/lo)⌉) the bits l_j = [x < t_j] locate x in a segment
[lo·ρ^j, lo·ρ^(j+1)), where y0 = c/(lo·ρ^(j+1)), c = 2ρ/(1 + ρ) (4/3 per octave). The guess is the public-weighted
bit sum y0 = w_J + Σ_j l_j·(w_(j-1) − w_j) (local). More segments cost more comparisons in the same round and
shrink e0 = (ρ − 1)/(ρ + 1) below (1/3 per octave, 0.17 per half octave, 0.043 per eighth).

Proof of convergence: in its segment, x·y0 ∈ [c/ρ, c) (= [2/3, 4/3) per octave), so e = 1 − x·y0 has |e| ≤ e0. A Newton
step y ← y·(2 − x·y) squares the relative error 1 − x·y, so m steps give y_m = (1 − e^(2^m))/x; the same value is
the series y0·(1 + e)(1 + e²)···(1 + e^(2^(m−1))) = y0·(1 − e^(2^m))/(1 − e), computed here for m = I − 1: e (one
product), then per line y ← y·(1 + s) and s ← s² side by side (m − 1 lines), then y·(1 + s): 2m products, m + 1
deep. The final Newton step squares the series' relative error ε: e_I ≤ ε², and with ε ≤ e0^(2^(I−1)) (plus
rounding, below) I = min{i : e0^(2^i) ≤ 2^-(f+1)} suffices (f = 16: I = 4: 8 products, 6 deep instead of 8). The
actual e0 is computed from the *encoded* thresholds and weights (rounding shifts them by ≤ 0.5 LSB). Below lo the
guess stays in (0, 2/x) (|e| < 1: convergent, slower); above hi it stays convergent up to x < 3·lo·2^J.
Fixed-point error (u = 2^-f, c = e0 + u, v = 2^q/x the exact result): the series does not correct its own
rounding: the truncated x·y0 moves the relative error by ≤ u/(1 − c); each square adds ≤ u/2 plus twice the
previous error times |s| ≤ c² (≤ u/(2(1 − 2c²)) in all), moving y relatively by that over 1 − s ≥ 1 − c²; each
product y·(1 + s) adds ≤ u/2 absolute, times the later factors (≤ 1/(1 − c)). So
ε ≤ c^(2^m) + u/(1 − c) + (m − 1)·u/(2(1 − 2c²)(1 − c²)) + m·u/(2(1 − c)·v), and the Newton step's two truncations
add ≤ u/2·v and u/2: |y − v| ≤ v·ε² + (1 + v)·u; ``bounds`` reports its maximum over [lo, hi] (at lo or hi: the
bound is convex in x) at f = 16.

``final=False`` drops that last Newton step and takes the series to order 2^I itself (m = I: I + 1 products, I + 1
deep, against I + 2): its error is the series' v·ε above, which already holds the rounding to a few LSBs (the
Newton step's own two truncations add as much, (1 + v)·u). Softmax denominators use it (compiler.lowering.plans).

``mpspdz`` — MP-SPDZ's sfix division ``1 / x`` (``library.FPDiv``, Goldschmidt; ``sfix(1) / x`` on a vector
would silently compute one element). The reference is the exact reciprocal quantised to f bits; the built-in's
measured error is 4e-5 on [1, 300].

``shift`` q (both choices, default 0): compute 2^q/x instead of 1/x, for a caller that divides the product by 2^q
again in a truncation it makes anyway (the softmax's e·r truncated by f + q): 1/x of a large x keeps only a few
LSBs (1/10^4 is 6.5 LSBs at f = 16), 2^q/x keeps 2^q times more, at no extra cost. ``newton`` scales its guesses
by 2^q and truncates x·y by f + q (e = 1 − x·y/2^q: the proof above unchanged); ``mpspdz`` divides 2^q by x.
Bounds are on 2^q/x (its absolute error; relative to 1/x, 2^q times smaller).
"""
from __future__ import annotations

import math

import numpy as np

from compiler.approx import Approximation, register
from compiler.cost.primitives import Step
from compiler.errors import CompileError
from compiler.fixedpoint import FixedPoint

DEFAULT_F = 16


def segment_guess(lo: float, hi: float, fx: FixedPoint, shift: int = 0,
                  per_octave: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Encoded thresholds t_1..t_J and guesses w_0..w_J (of 2^shift/x) of the piecewise-constant initial guess."""
    if not 0 < lo < hi:
        raise CompileError(f"reciprocal range [{lo}, {hi}] is empty or not positive: give 0 < lo < hi")
    ratio = 2.0 ** (1.0 / per_octave)
    segments = max(math.ceil(math.log(hi / lo, ratio) - 1e-9), 1)
    thresholds = fx.encode(lo * ratio ** np.arange(1, segments + 1))
    guesses = fx.encode(2 * ratio / (1 + ratio) * 2.0 ** shift / (lo * ratio ** np.arange(1, segments + 2)))
    return thresholds, guesses


def initial_error(lo: float, hi: float, fx: FixedPoint, per_octave: int = 1) -> float:
    """max |1 − x·y0| over [lo, hi] with the encoded constants (attained at the segment ends)."""
    thresholds, guesses = segment_guess(lo, hi, fx, per_octave=per_octave)
    top = fx.encode(hi)
    starts = np.concatenate([[fx.encode(lo)], thresholds])
    reached = starts <= top  # a last segment starting above hi is never used on [lo, hi]
    ends = np.minimum(np.concatenate([thresholds, [top]]), top)[reached].astype(np.float64)
    starts = starts[reached].astype(np.float64)
    w = guesses[reached].astype(np.float64)
    products = np.concatenate([starts * w, ends * w]) / float(fx.scale) ** 2
    if np.any(guesses <= 0):
        raise CompileError(f"reciprocal range [{lo}, {hi}] is too wide for {fx.f} fractional bits: the initial "
                           "guess of the largest denominators rounds to 0; raise --frac-bits or lower hi")
    return float(np.max(np.abs(1.0 - products)))


def newton_iterations(lo: float, hi: float, f: int = DEFAULT_F, per_octave: int = 1) -> int:
    """I = min{i : e0^(2^i) <= 2^-(f+1)} for the guess's e0 on [lo, hi]."""
    e0 = initial_error(lo, hi, FixedPoint(f, max(f + 15, 31)), per_octave)
    if e0 >= 1.0:
        raise CompileError(f"reciprocal guess on [{lo}, {hi}] does not converge at f={f}; raise --frac-bits")
    return max(math.ceil(math.log2(math.log(2.0 ** -(f + 1)) / math.log(e0))), 0)


def _order(lo: float, hi: float, iterations: int | None, f: int, per_octave: int, final: bool) -> int:
    """The series' order m (2^m): I − 1 before a final Newton step, I without."""
    steps = newton_iterations(lo, hi, f, per_octave) if iterations is None else iterations
    return steps - 1 if final else steps


def newton_reference(x_int: np.ndarray, fx: FixedPoint, lo: float = 1.0, hi: float = 64.0,
                     iterations: int | None = None, shift: int = 0, per_octave: int = 1,
                     final: bool = True) -> np.ndarray:
    thresholds, guesses = segment_guess(lo, hi, fx, shift, per_octave)
    below = (x_int[..., None] < thresholds).astype(np.int64)  # l_j, one vectorised LTZ
    y = guesses[-1] + below @ (guesses[:-1] - guesses[1:])
    order = _order(lo, hi, iterations, fx.f, per_octave, final)  # the series' order 2^m, then a Newton step
    if order > 0:
        s = fx.scale - fx.trunc(x_int * y, fx.f + shift)  # e = 1 - x·y0/2^q
        for _ in range(order - 1):
            y, s = fx.mul(y, fx.scale + s), fx.mul(s, s)  # side by side: one round of products
        y = fx.mul(y, fx.scale + s)
    if final and order >= 0:
        y = fx.mul(y, 2 * fx.scale - fx.trunc(x_int * y, fx.f + shift))
    return y


def newton_steps(size: int, profile: object, lo: float = 1.0, hi: float = 64.0, iterations: int | None = None,
                 shift: int = 0, per_octave: int = 1, final: bool = True) -> list[Step]:
    f = int(getattr(profile, "f", DEFAULT_F))
    thresholds = segment_guess(lo, hi, FixedPoint(f, max(f + 15, 31)), per_octave=per_octave)[0]
    order = _order(lo, hi, iterations, f, per_octave, final)
    series = [Step("mul", size)] + [Step("mul", 2 * size)] * (order - 1) + [Step("mul", size)] if order > 0 else []
    newton = [Step("mul", size)] * 2 if final and order >= 0 else []
    return [Step("ltz", size * len(thresholds), (len(thresholds),))] + series + newton


def newton_bounds(lo: float = 1.0, hi: float = 64.0, iterations: int | None = None, shift: int = 0,
                  per_octave: int = 1, final: bool = True) -> tuple[tuple[float, float], float]:
    """The module doc's bound on |y − 2^q/x| over [lo, hi] at f = 16."""
    f = DEFAULT_F
    u = 2.0 ** -f
    order = _order(lo, hi, iterations, f, per_octave, final)
    c = initial_error(lo, hi, FixedPoint(f, 31), per_octave) + u
    ends = np.array([lo, hi], dtype=np.float64)
    v = 2.0 ** shift / ends
    if order < 0 or (order == 0 and not final):
        return (lo, hi), float(np.max(v * c + u))
    eps = np.full(2, c)
    if order > 0:
        eps = c ** (2 ** order) + u / (1 - c) + (order - 1) * u / (2 * (1 - 2 * c * c) * (1 - c * c)) + \
            order * u / (2 * (1 - c) * v)
    if not final:
        return (lo, hi), float(np.max(v * eps))
    return (lo, hi), float(np.max(v * eps ** 2 + (1 + v) * u))


def newton_template_constants(fx: FixedPoint, params: dict) -> dict:
    """Encoded segment constants and the derived series order, rendered into the template."""
    thresholds, guesses = segment_guess(params["lo"], params["hi"], fx, params["shift"], params["per_octave"])
    return {"thresholds": [int(t) for t in thresholds], "guesses": [int(g) for g in guesses],
            "order": _order(params["lo"], params["hi"], params["iterations"], fx.f, params["per_octave"],
                            params["final"])}


def mpspdz_reference(x_int: np.ndarray, fx: FixedPoint, lo: float = 1.0, hi: float = 300.0,
                     shift: int = 0) -> np.ndarray:
    return fx.encode(2.0 ** shift / fx.decode(x_int))


register(Approximation(
    op="reciprocal", choice="newton", reference=newton_reference, template="approx/reciprocal_newton.mpc.j2",
    steps=newton_steps, exact=lambda x: 1.0 / x, bounds=newton_bounds,
    params={"lo": 1.0, "hi": 64.0, "iterations": None, "shift": 0, "per_octave": 1, "final": True},
    constants=newton_template_constants,
    compared=lambda lo, hi, iterations, shift, per_octave, final: 2 * hi,  # the top threshold lo·ρ^J < 2·hi
    doc="Newton with a proven piecewise initial guess"))

register(Approximation(
    op="reciprocal", choice="mpspdz", reference=mpspdz_reference, template="approx/reciprocal_mpspdz.mpc.j2",
    steps=lambda size, profile, lo=1.0, hi=300.0, shift=0: [Step("reciprocal:mpspdz", size)], exact=lambda x: 1.0 / x,
    bounds=lambda lo=1.0, hi=300.0, shift=0: ((lo, hi), 2.0 ** shift * 5e-5 * max(1.0, 1.0 / lo ** 2)),
    params={"lo": 1.0, "hi": 300.0, "shift": 0}, doc="MP-SPDZ sfix division 1 / x (2^shift / x)"))
