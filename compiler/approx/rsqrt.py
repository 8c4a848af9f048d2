"""1/sqrt(x) for LayerNorm, honouring the model's ε: domain [ε, hi] (variance + ε).

``newton`` — a per-segment linear guess, then Newton's iteration y ← y·(3 − x·y²)/2 with one truncation per
step's pair of products. One vectorised comparison against the thresholds t_j = lo·r^j (r = 2^(1/per_octave),
j = 1..J, lo = ε rounded to ≥ 1 LSB) locates x in its segment [L, r·L); the guess y0 = A + x·B with
A = a/√L, B = b/L^1.5 (public-weighted sums of the comparison bits, then one truncated product).

Guess (:func:`linear_coefficients`): (a, b) minimise max |1 − u·(a + b·u)²| on [1, r]; the error equioscillates
at u = 1, u = r and the interior peak u = −a/(3b), which gives a closed form (e0 = 0.0445 per octave, 0.0112 per
half octave, 2.8e-3 per quarter octave). The bound :func:`_guess_error` evaluates the encoded constants exactly:
per segment the cubic x·(A ± 1 LSB + B·x)² at both ends and at its peak (the ± LSB: the product's truncation).

Step: z = 3/2 − x·y²/2 from y² and x·y² as raw ring products (x·y² < 2 at 2^(3f): below 2^50 at f = 16)
truncated once to f + z_bits fractional bits (12 at f = 16, :func:`z_bits`), then y·z truncated by f + z_bits:
2 truncations in sequence instead of 3, and y² is not rounded at all (above f = 19 it is, by :func:`square_shift`). With s = x·y² = 1 − e, exact Newton gives e' = (3e² ∓ e³)/4 ≤ (3e² + e³)/4 and 0 < s' ≤ 1
whenever 0 < s < 3. Each step's rounding (≤ 1 + y·2^-z_bits LSB of y, y ≤ 1.1/√lo) moves s by a relative
(1 + ρ)² − 1, ρ = rounding/min y, min y = √((1 − e)/hi); :func:`newton_errors` carries it into the next step.
Steps: the least I with y's relative error e_I/(1 + √(1 − e_I)) ≤ 2^-(f+1) (|√s − 1| ≤ |s − 1|/(1 + √s)).
Error: |y − 1/√x| ≤ (e_I/(1 + √(1 − e_I)))/√x + (1 + y·2^-z_bits)·LSB, largest at x = lo (``bounds``).
LayerNorm picks per_octave (1..4, :func:`rsqrt_segments`) for the fewest steps, then the fewest comparisons: over
a calibrated domain 4 segments per octave leave one step (3 more comparisons per octave and row, 7 fewer rounds
under replicated-ring).

``wide`` — the constant guess y0 = √c/√(lo·2^(j+1)), c = 4/3, on octaves (s0 = x·y0² ∈ [2/3, 4/3), e0 ≤ 1/3),
then Newton steps each computing y² (trunc), x·y²/2 (one truncation by f+1: halving is free) and y·(3/2 − x·y²/2),
with y² kept to f + 8 fractional bits (one truncation by f − 8, then x·y² truncated by
f + 9): with f bits, y² of a large x (y = 1/128 at x = 16384: y² = 4 LSB) keeps almost no significant bits, so
a y² truncated to f bits would be off by percents there (6.5 % measured for x > 1000 on [2^-16, 16384]).
x·y² ≈ 1 keeps its raw value near 2^(2f+8) (2^40 at f = 16) whatever x is. The last step's rounding leaves y off
by ≤ (0.5 + y/2 + √x/2^10)·LSB (y² by 2^-(f+8)/2, times x/2, times y; x·y²/2 by LSB/2, times y; the product's
LSB/2), plus Newton's relative e_I/2 (I = min{i : e_i/2 ≤ 2^-(f+1)}, e_(i+1) = (3e_i² + e_i³)/4). Its default
range is every positive value a comparison may consume (generic rsqrt/sqrt nodes, whose range is unknown).

``mpspdz`` — MP-SPDZ's ``mpc_math.InvertSqrt`` (Lu et al.). Reference: exact 1/√x quantised to f bits; the
built-in's own error (0.032 measured at x = 0.01) is bounded here by 0.04 on [0.01, 100].
"""
from __future__ import annotations

import math

import numpy as np

from compiler.approx import Approximation, register
from compiler.cost.primitives import Step
from compiler.errors import CompileError
from compiler.fixedpoint import FixedPoint

GUESS_SQUARE = 4.0 / 3.0
DEFAULT_F = 16


def _lo(eps: float, fx: FixedPoint) -> float:
    if eps <= 0:
        raise CompileError(f"LayerNorm epsilon {eps} must be positive for the inverse square root")
    return max(eps, fx.lsb)  # ε below one LSB is represented as 1 LSB


def segment_guess(eps: float, hi: float, fx: FixedPoint) -> tuple[np.ndarray, np.ndarray]:
    lo = _lo(eps, fx)
    if hi <= lo:
        raise CompileError(f"rsqrt range [{lo}, {hi}] is empty: raise hi above epsilon")
    segments = max(math.ceil(math.log2(hi / lo) - 1e-12), 1)
    thresholds = fx.encode(lo * 2.0 ** np.arange(1, segments + 1))
    guesses = fx.encode(math.sqrt(GUESS_SQUARE) / np.sqrt(lo * 2.0 ** np.arange(1, segments + 2)))
    return thresholds, guesses


def initial_error(eps: float, hi: float, fx: FixedPoint) -> float:
    """max |1 − x·y0²| over [lo, hi] with the encoded constants."""
    thresholds, guesses = segment_guess(eps, hi, fx)
    top = fx.encode(hi)
    starts = np.concatenate([[fx.encode(_lo(eps, fx))], thresholds])
    reached = starts <= top  # a last segment starting above hi is never used on [lo, hi]
    ends = np.minimum(np.concatenate([thresholds, [top]]), top)[reached].astype(np.float64)
    starts = starts[reached].astype(np.float64)
    w2 = guesses[reached].astype(np.float64) ** 2
    return float(np.max(np.abs(1.0 - np.concatenate([starts * w2, ends * w2]) / float(fx.scale) ** 3)))


def newton_iterations(eps: float, hi: float, f: int = DEFAULT_F) -> int:
    """Newton steps from :func:`segment_guess` (``wide``: relative error of y at most 2^-(f+1))."""
    e = initial_error(eps, hi, FixedPoint(f, max(f + 15, 31)))
    if e >= 1.0:
        raise CompileError(f"rsqrt guess on [{eps}, {hi}] does not converge at f={f}; raise --frac-bits")
    steps = 0
    while e / 2 > 2.0 ** -(f + 1):
        e, steps = (3 * e * e + e ** 3) / 4, steps + 1
    return steps


# ---- newton: a per-segment linear guess, then fused Newton steps ----
RING_TOP = 61  # raw products stay below 2^61 (Z_2^64 with sign and rounding room)


def z_bits(fx: FixedPoint) -> int:
    """Fractional bits z = 3/2 − x·y²/2 keeps beyond f: y·z (y ≤ 1.1/√lo ≤ 1.1·2^(f/2), z < 1.5) stays below
    2^(f/2 + 1 + 2f + bits) ≤ 2^RING_TOP: 12 at f = 16, fewer above f = 18."""
    return max(0, min(12, RING_TOP - 1 - 2 * fx.f - math.ceil(fx.f / 2)))


def step_bits(fx: FixedPoint) -> int:
    """Bit length of a raw y·z, sign included."""
    return math.ceil(fx.f / 2) + 2 * fx.f + z_bits(fx) + 2


def guess_bits(fx: FixedPoint) -> int:
    """Fractional bits the guess's slope keeps beyond f: |x·B| ≤ 0.6/√lo ≤ 0.6·2^(f/2) (lo ≥ 1 LSB), so x·B stays
    below 2^(2f + bits + f/2) < 2^RING_TOP (16 at f = 16)."""
    return max(0, min(16, RING_TOP - 1 - 2 * fx.f - math.ceil(fx.f / 2)))


def square_shift(fx: FixedPoint) -> int:
    """Bits y² is truncated by before x·y² (≈ 1 at 2^(3f)) so that x·y² stays below 2^RING_TOP: 0 up to f = 19."""
    return max(0, 3 * fx.f + 2 - (RING_TOP + 1))


def linear_coefficients(ratio: float) -> tuple[float, float, float]:
    """(a, b, e): y0 = a + b·u minimises max |1 − u·y0²| on [1, ratio] (e, the minimum). Equioscillation at both
    ends and at the interior maximum u* = −a/(3b) of u·(a + b·u)²: with t = −b/a, equal ends give
    t = (√r − 1)/(r√r − 1); the ends' value (1 − t)² and the peak 4/(27t) straddle 1 symmetrically."""
    root = math.sqrt(ratio)
    t = (root - 1) / (ratio * root - 1)
    ends, peak = (1 - t) ** 2, 4 / (27 * t)
    a = math.sqrt(2 / (ends + peak))
    return a, -t * a, (peak - ends) / (peak + ends)


def linear_guess(eps: float, hi: float, fx: FixedPoint, per_octave: int = 1):
    """(thresholds, A, B) in fixed point: thresholds t_j = lo·2^(j/per_octave) (j = 1..J, the first ≥ hi last),
    segment j = [t_j, t_(j+1)) (t_0 = lo) with guess A_j + x·B_j, A at f fractional bits, B at f + guess_bits."""
    lo = _lo(eps, fx)
    if hi <= lo:
        raise CompileError(f"rsqrt range [{lo}, {hi}] is empty: raise hi above epsilon")
    if per_octave < 1:
        raise CompileError(f"rsqrt per_octave={per_octave} must be a positive number of segments per octave")
    ratio = 2.0 ** (1.0 / per_octave)
    segments = max(math.ceil(math.log2(hi / lo) * per_octave - 1e-9), 1)
    thresholds = fx.encode(lo * ratio ** np.arange(1, segments + 1))
    starts = np.concatenate([[fx.encode(lo)], thresholds]).astype(np.float64) / fx.scale
    a, b, _ = linear_coefficients(ratio)
    slope = np.rint(b / starts ** 1.5 * 2.0 ** (fx.f + guess_bits(fx))).astype(np.int64)
    return thresholds, fx.encode(a / np.sqrt(starts)), slope


def _guess_error(eps: float, hi: float, fx: FixedPoint, per_octave: int) -> float:
    """max |1 − x·y0²| over [lo, hi] for the encoded constants, y0 off by up to 1 LSB (the slope product's
    truncation): per segment the cubic x·(A ± LSB + B·x)² at both ends and at its peak x = −(A ± LSB)/(3B)."""
    thresholds, a_int, b_int = linear_guess(eps, hi, fx, per_octave)
    top = float(fx.encode(hi)) / fx.scale
    starts = np.concatenate([[fx.encode(_lo(eps, fx))], thresholds]).astype(np.float64) / fx.scale
    ends = np.minimum(np.append(starts[1:], top), top)
    worst = 0.0
    for start, end, a, b in zip(starts, ends, a_int / fx.scale, b_int / 2.0 ** (fx.f + guess_bits(fx))):
        if start > top:
            break
        for shifted in (a - fx.lsb, a + fx.lsb):
            xs = [start, end] + [x for x in [-shifted / (3 * b)] if start < x < end]
            worst = max(worst, *(abs(1 - x * (shifted + b * x) ** 2) for x in xs))
    return worst


def newton_errors(eps: float, hi: float, f: int = DEFAULT_F, per_octave: int = 1,
                  iterations: int | None = None) -> tuple[int, float, float]:
    """(Newton steps I, e: max |1 − x·y²| that Newton leaves after the last step before its rounding, the last
    step's absolute rounding of y in LSB). Each step maps e to (3e² + e³)/4 and then its rounding (≤ 1 + y·2^-z_bits
    LSB of y, y ≤ 1.1/√lo) adds (1 + e)·((1 + ρ)² − 1), ρ = rounding / min y (min y = √((1 − e)/hi)). Without
    ``iterations``, I is the least with e/(1 + √(1 − e)) (y's relative error) ≤ 2^-(f+1)."""
    fx = FixedPoint(f, max(f + 15, 31))
    e = _guess_error(eps, hi, fx, per_octave)
    if e >= 1.0:
        raise CompileError(f"rsqrt guess on [{eps}, {hi}] does not converge at f={f}; raise --frac-bits")
    # y·z's LSB, z's times y, and where y² is truncated its rounding times x·y/2 = √x/2
    rounding = 1 + 1.1 / math.sqrt(_lo(eps, fx)) * 2.0 ** -z_bits(fx) + \
        (math.sqrt(hi) * 2.0 ** (square_shift(fx) - fx.f - 1) if square_shift(fx) else 0.0)
    steps = 0
    while (steps < iterations) if iterations is not None else (e / (1 + math.sqrt(1 - e)) > 2.0 ** -(f + 1)):
        if steps:
            rho = rounding * fx.lsb / math.sqrt((1 - e) / hi)
            e += (1 + e) * ((1 + rho) ** 2 - 1)
        e, steps = (3 * e * e + e ** 3) / 4, steps + 1
        if steps > 8:
            raise CompileError(f"rsqrt on [{eps}, {hi}] needs more than 8 Newton steps at f={f}; raise --frac-bits")
    return steps, e, rounding


def rsqrt_segments(lo: float, hi: float, f: int = DEFAULT_F) -> int:
    """Segments per octave (1..4) for a LayerNorm's domain: the fewest Newton steps, then the fewest comparisons
    (a step costs more rounds than 3 comparisons per octave and row cost bytes)."""
    return min(range(1, 5), key=lambda per_octave: (newton_errors(lo, hi, f, per_octave)[0], per_octave))


def newton_guess(x_int: np.ndarray, fx: FixedPoint, eps: float, hi: float, per_octave: int) -> np.ndarray:
    """y0 = A_j + trunc(x·B_j): the segment's constants as public-weighted sums of the comparison bits."""
    thresholds, a_int, b_int = linear_guess(eps, hi, fx, per_octave)
    below = (x_int[..., None] < thresholds).astype(np.int64)
    a = a_int[-1] + below @ (a_int[:-1] - a_int[1:])
    b = b_int[-1] + below @ (b_int[:-1] - b_int[1:])
    return a + fx.trunc(x_int * b, fx.f + guess_bits(fx))


def newton_factor(x_int: np.ndarray, y: np.ndarray, fx: FixedPoint) -> np.ndarray:
    """z = 3/2 − x·y²/2 at f + z_bits fractional bits: y² and x·y² are raw ring products (x·y² ≈ 1 at 2^(3f);
    y² first truncated by :func:`square_shift` for f > 19), one truncation; the step is then y·z truncated by
    f + z_bits."""
    shift, bits = square_shift(fx), z_bits(fx)
    return 3 * (1 << (fx.f + bits - 1)) - fx.trunc(x_int * fx.trunc(y * y, shift), 2 * fx.f + 1 - bits - shift)


def newton_reference(x_int: np.ndarray, fx: FixedPoint, eps: float = 1e-5, hi: float = 64.0,
                     iterations: int | None = None, per_octave: int = 1) -> np.ndarray:
    y = newton_guess(x_int, fx, eps, hi, per_octave)
    for _ in range(newton_errors(eps, hi, fx.f, per_octave, iterations)[0]):
        y = fx.trunc(y * newton_factor(x_int, y, fx), fx.f + z_bits(fx))
    return y


def newton_steps(size: int, profile: object, eps: float = 1e-5, hi: float = 64.0,
                 iterations: int | None = None, per_octave: int = 1) -> list[Step]:
    """The comparison, the guess's product, then per step z (y², x·y² raw, one truncation) and y·z."""
    f = int(getattr(profile, "f", DEFAULT_F))
    fx = FixedPoint(f, max(f + 15, 31))
    thresholds = linear_guess(eps, hi, fx, per_octave)[0]
    step = [Step("mul_int", size), *([Step("trunc", size)] if square_shift(fx) else []), Step("mul_int", size),
            Step("trunc", size), Step("mul", size)]
    return [Step("ltz", size * len(thresholds), (len(thresholds),)), Step("mul", size)] + \
        step * newton_errors(eps, hi, f, per_octave, iterations)[0]


def newton_bounds(eps: float = 1e-5, hi: float = 64.0, iterations: int | None = None, per_octave: int = 1):
    """|y − 1/√x| ≤ (e/(1 + √(1 − e)))/√x + rounding·LSB (:func:`newton_errors`), largest at x = lo."""
    fx = FixedPoint(DEFAULT_F, 31)
    _, e, rounding = newton_errors(eps, hi, fx.f, per_octave, iterations)
    lo = _lo(eps, fx)
    return (lo, hi), (e / (1 + math.sqrt(1 - e))) / math.sqrt(lo) + rounding * fx.lsb


def newton_constants(fx: FixedPoint, params: dict) -> dict:
    thresholds, a_int, b_int = linear_guess(params["eps"], params["hi"], fx, params["per_octave"])
    steps = newton_errors(params["eps"], params["hi"], fx.f, params["per_octave"], params["iterations"])[0]
    ends = np.append(thresholds, fx.encode(params["hi"])).astype(np.float64)  # segment j's x below ends[j]
    return {"thresholds": [int(t) for t in thresholds], "offsets": [int(a) for a in a_int],
            "slopes": [int(b) for b in b_int], "iterations": steps, "guess_bits": guess_bits(fx), "z_bits": z_bits(fx),
            "square_shift": square_shift(fx), "ring_top": RING_TOP + 1,
            # bit lengths of the truncated raw values (sign included): x·B, x·y² (< 2 after the guess), y·z
            "k_guess": int(np.max(np.abs(b_int.astype(np.float64)) * ends)).bit_length() + 2,
            "k_square": 3 * fx.f + 2 - square_shift(fx), "k_step": step_bits(fx)}


def mpspdz_reference(x_int: np.ndarray, fx: FixedPoint, eps: float = 0.01, hi: float = 100.0) -> np.ndarray:
    return fx.encode(1.0 / np.sqrt(fx.decode(x_int)))


register(Approximation(
    op="rsqrt", choice="newton", reference=newton_reference, template="approx/rsqrt_newton.mpc.j2",
    steps=newton_steps, exact=lambda x: 1.0 / np.sqrt(x), bounds=newton_bounds,
    params={"eps": 1e-5, "hi": 64.0, "iterations": None, "per_octave": 1}, constants=newton_constants,
    compared=lambda eps, hi, iterations, per_octave: 2 * hi,  # the top threshold lo·2^(J/per_octave) < 2·hi
    doc="per-segment linear guess from one comparison, Newton y(3 - xy^2)/2 with one truncation per product pair"))

register(Approximation(
    op="rsqrt", choice="mpspdz", reference=mpspdz_reference, template="approx/rsqrt_mpspdz.mpc.j2",
    steps=lambda size, profile, eps=0.01, hi=100.0: [Step("rsqrt:mpspdz", size)],
    exact=lambda x: 1.0 / np.sqrt(x), bounds=lambda eps=0.01, hi=100.0: ((max(eps, 0.01), hi), 0.04),
    params={"eps": 0.01, "hi": 100.0}, doc="MP-SPDZ mpc_math.InvertSqrt"))


WIDE_DEFAULTS = {"eps": 2.0 ** -16, "hi": 16384.0}  # every positive value a comparison may consume at f=16, k=31


def wide_extra_bits(fx: FixedPoint) -> int:
    """Fractional bits y² keeps beyond f (8 at f = 16; at most f/2 so that y² is still truncated)."""
    return min(8, fx.f // 2)


def wide_reference(x_int: np.ndarray, fx: FixedPoint, eps: float = WIDE_DEFAULTS["eps"],
                   hi: float = WIDE_DEFAULTS["hi"]) -> np.ndarray:
    thresholds, guesses = segment_guess(eps, hi, fx)
    below = (x_int[..., None] < thresholds).astype(np.int64)
    y = guesses[-1] + below @ (guesses[:-1] - guesses[1:])
    extra = wide_extra_bits(fx)
    for _ in range(newton_iterations(eps, hi, fx.f)):
        half_s = fx.trunc(x_int * fx.trunc(y * y, fx.f - extra), fx.f + extra + 1)
        y = fx.mul(y, 3 * fx.scale // 2 - half_s)
    return y


def wide_steps(size: int, profile: object, eps: float = WIDE_DEFAULTS["eps"],
               hi: float = WIDE_DEFAULTS["hi"]) -> list[Step]:
    """The octave comparison, then per Newton step 3 truncated products (y², x·y², y·(3/2 − x·y²/2))."""
    f = int(getattr(profile, "f", DEFAULT_F))
    thresholds = segment_guess(eps, hi, FixedPoint(f, max(f + 15, 31)))[0]
    return [Step("ltz", size * len(thresholds))] + [Step("mul", size)] * 3 * newton_iterations(eps, hi, f)


def wide_newton_error(eps: float, hi: float, fx: FixedPoint) -> tuple[float, float]:
    """(the domain's low end, the relative error of y left by the Newton steps): each step maps a relative
    error e to (3e² + e³)/4, starting from :func:`initial_error`."""
    e = initial_error(eps, hi, fx)
    for _ in range(newton_iterations(eps, hi, fx.f)):
        e = (3 * e * e + e ** 3) / 4
    return _lo(eps, fx), e


def wide_bounds(eps: float = WIDE_DEFAULTS["eps"], hi: float = WIDE_DEFAULTS["hi"]):
    """Newton's relative error e_I/2 times y plus the last step's rounding (0.5 + y/2 + √x/2^10)·LSB (see the
    module doc), maximised over [eps, hi] at f = 16."""
    fx = FixedPoint(DEFAULT_F, 31)
    lo, e = wide_newton_error(eps, hi, fx)
    x = np.geomspace(lo, hi, 10_001)
    y = 1 / np.sqrt(x)
    return (lo, hi), float(np.max((e / 2) * y + (0.5 + y / 2 + np.sqrt(x) / 2 ** 10) * fx.lsb))


def wide_constants(fx: FixedPoint, params: dict) -> dict:
    thresholds, guesses = segment_guess(params["eps"], params["hi"], fx)
    return {"thresholds": [int(t) for t in thresholds], "guesses": [int(g) for g in guesses],
            "iterations": newton_iterations(params["eps"], params["hi"], fx.f)}


register(Approximation(
    op="rsqrt", choice="wide", reference=wide_reference, template="approx/rsqrt_wide.mpc.j2", steps=wide_steps,
    exact=lambda x: 1.0 / np.sqrt(x), bounds=wide_bounds, params=dict(WIDE_DEFAULTS),
    constants=lambda fx, params: {**wide_constants(fx, params), "extra": wide_extra_bits(fx)},
    doc="as newton, x*y^2/2 computed as (x*y)*y/2: keeps relative precision up to the comparison range"))
