"""Per-node plans and approximation choices; see :mod:`compiler.lowering`."""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from compiler.approx import REGISTRY
from compiler.approx.exp import SHORT_BITS, short_shift
from compiler.approx.gelu import CUT as GELU_CUT
from compiler.approx.rowmax import best_groups
from compiler.approx.rsqrt import RING_TOP, rsqrt_segments
from compiler.cost.primitives import SHORT_TRUNC, Step, steps_cost
from compiler.errors import CompileError, UserError
from compiler.ir import Graph, Node
from compiler.lowering.profiles import RANK_NETWORK, Profile

# Node kinds the templates and the reference executor implement: the ViT-level kinds the passes produce, then
# every generic kind (each with a general lowering, slower than a pattern's fast path).
SUPPORTED_OPS = ("input", "linear", "layout", "add", "sub", "scale", "layernorm", "attention", "gelu", "relu",
                 "output", "neg", "abs", "mul", "div", "matmul", "reduce_sum", "reduce_mean", "reduce_max", "softmax",
                 "exp", "sigmoid", "tanh", "erf", "reciprocal", "rsqrt", "sqrt", "hardsigmoid", "hardswish", "clip",
                 "where")
# Element-wise approximations of generic nodes; the profile chooses among their candidates.
PROFILE_UNARY = ("sigmoid", "tanh", "erf")
# The choices for generic nodes whose input range is unknown: MP-SPDZ's exponential (any sign) and division (any
# sign and magnitude), and rsqrt:wide (precise over the whole positive comparison range); the profile's choices
# are made for softmax and LayerNorm ranges.
RANGE_AGNOSTIC = {"exp": "mpspdz", "reciprocal": "mpspdz", "rsqrt": "wide"}
HARDSWISH = (1.0 / 6.0, 0.5)  # ONNX HardSwish = x * HardSigmoid(x; alpha=1/6, beta=1/2)


@dataclass(frozen=True)
class ApproxUse:
    """One call site's approximation: op, choice and compile-time params (a reciprocal's range, …)."""

    op: str
    choice: str
    params: tuple[tuple[str, Any], ...] = ()

    @property
    def kwargs(self) -> dict[str, Any]:
        return dict(self.params)

    @property
    def fn_name(self) -> str:
        """The MP-SPDZ function defined once in the prelude for this (op, choice, params)."""
        tag = hashlib.sha1(json.dumps(self.params, default=str).encode()).hexdigest()[:6] if self.params else ""
        return f"{self.op}_{self.choice}".replace("-", "_") + (f"_{tag}" if tag else "")

    @property
    def label(self) -> str:
        return f"{self.op}:{self.choice}"


@dataclass
class NodePlan:
    node: Node
    approx: dict[str, ApproxUse] = field(default_factory=dict)  # role in the node ("softmax.exp") -> use
    steps: list[Step] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)  # call-site constants the template and reference share


@dataclass
class Program:
    graph: Graph
    profile: Profile
    node_plans: list[NodePlan]
    name: str = "mpcvit"
    reveal: str = "logits"  # or "argmax"
    warnings: list[str] = field(default_factory=list)

    @property
    def plans(self) -> dict[str, list[Step]]:
        """Node name -> plan steps (what :func:`compiler.cost.estimate` prices)."""
        return {p.node.name: p.steps for p in self.node_plans}

    @property
    def batch(self) -> int:
        return self.graph.values[self.graph.inputs[0]].shape[0]

    def approx_uses(self) -> list[ApproxUse]:
        """Every distinct approximation call site, in first-use order (the prelude defines each once)."""
        seen: dict[str, ApproxUse] = {}
        for p in self.node_plans:
            for use in p.approx.values():
                seen.setdefault(use.fn_name, use)
        return list(seen.values())


def _use(profile: Profile, op: str, **params: Any) -> ApproxUse:
    if op not in profile.approx:
        raise CompileError(f"profile {profile.protocol} has no approximation for {op!r}; the approximation "
                           f"registry lacks it (compiler.approx)")
    return ApproxUse(op, profile.approx[op], tuple(sorted(params.items())))


def comparison_bits(profile: Profile, calibrated: float | None, exact: float = 0.0) -> int:
    """The bit length k' of one comparison call site: MP-SPDZ's ``sint.less_than(other, bit_length=k')``, an LTZ
    on k' + 1 bits, exact while |a - b| < 2^k' LSB and wrapping beyond. k' is the smallest with every compared
    operand below 2^(k'-1) LSB (so their difference stays below 2^k'): ``calibrated`` (a calibrated largest
    magnitude, times MAGNITUDE_MARGIN) and ``exact`` (a bound that holds whatever the input: a constant compared
    with, an approximation's domain top), rounded up to the next of the program's lengths ``profile.cmp_bits``
    (chosen by :func:`choose_comparison_lengths`). The profile's k without calibration (None) or where that is
    shorter. Comparisons cost in proportion to k' (compiler.cost.primitives), rounds in ⌈log2 k'⌉."""
    fx = profile.fx
    if calibrated is None:
        return fx.k
    top = max(float(calibrated) * MAGNITUDE_MARGIN, abs(float(exact))) * fx.scale
    bits = int(min(fx.k, max(2, math.floor(math.log2(max(top, 1.0))) + 2)))
    return min([b for b in profile.cmp_bits if b >= bits], default=bits)


def calibrated_abs(node: Node, key: str = "in_abs") -> float | None:
    """A call site's calibrated largest magnitude (``node.attrs["calibration"][key]``, :mod:`compiler.calibrate`:
    ``in_abs`` the first input's, ``cmp_abs`` attention's compared scores), None without calibration."""
    value = (node.attrs.get("calibration") or {}).get(key)
    return None if value is None else float(value)


def _compare_use(profile: Profile, op: str, calibrated: float | None, exact: float | None = None,
                 **params: Any) -> ApproxUse:
    """The profile's approximation of ``op`` at a call site whose compared input reaches ``calibrated`` (None:
    unknown): its comparisons at the bit length :func:`comparison_bits` picks (``exact``: a bound on the input
    that needs no margin, e.g. a domain top), and, for approximations with an ``inner`` form, the outer segments
    dropped when the input times the margin stays inside the polynomial's interval (``compared``, the cut)."""
    use = _use(profile, op, **params)
    approx = REGISTRY[op][use.choice]
    if approx.compared is None or (calibrated is None and exact is None):
        return use
    values = approx.with_params(use.kwargs)
    if "inner" in approx.params and calibrated is not None and \
            calibrated * MAGNITUDE_MARGIN < approx.compared(**values):
        values["inner"] = True
    if exact is None:
        bits = comparison_bits(profile, calibrated, approx.compared(**values))
    else:
        bits = comparison_bits(profile, 0.0, max(exact, approx.compared(**values)))
    chosen = {k: v for k, v in values.items() if v != approx.params.get(k)} | dict(use.kwargs)
    if bits < profile.fx.k:
        chosen["bits"] = bits
    return ApproxUse(op, use.choice, tuple(sorted(chosen.items())))


def _gelu_use(profile: Profile, calibrated: float | None) -> ApproxUse:
    """A gelu call site: :func:`_compare_use`, and gelu:poly's ``band`` form (one comparison tests both cuts, at
    k' = f + 3; compiler/approx/gelu.py) where the calibrated |x| times the margin stays below twice the cut, in
    a ring (a prime field's comparison is undefined beyond its bit length, which the band form relies on)."""
    use = _compare_use(profile, "gelu", calibrated)
    values = dict(use.kwargs)
    if use.choice != "poly" or values.get("inner") or calibrated is None or profile.spec.field_bits or \
            calibrated * MAGNITUDE_MARGIN >= 2 * GELU_CUT:
        return use
    values.update(band=True, bits=profile.f + 3)
    return ApproxUse("gelu", use.choice, tuple(sorted(values.items())))


def _approx_steps(use: ApproxUse, n: int, profile: Profile) -> list[Step]:
    """The approximation's own steps at this call site's params (a built-in is one fitted step)."""
    approx = REGISTRY[use.op][use.choice]
    return approx.call_steps(int(n), profile, **use.kwargs)


def _param_inputs(node: Node, graph: Graph) -> list[Step]:
    return [Step("weights", graph.values[v].size, party=0) for v in node.inputs if graph.values[v].role == "param"]


def attention_groups(node: Node) -> dict[str, list[int]]:
    """Head indices per kind, kinds in order of first appearance (the order of their blocks in the program)."""
    groups: dict[str, list[int]] = {}
    for h, head in enumerate(node.attrs["heads"]):
        groups.setdefault(head["kind"], []).append(h)
    return groups


def relu_softmax_eps(node: Node, profile: Profile) -> tuple[int, bool]:
    """ε in fixed point, at least 1 LSB; and whether the model's ε had to be raised to that."""
    eps = float(node.attrs.get("eps", 0.0) or 0.0)
    eps_int = int(round(eps * 2 ** profile.f))
    return max(eps_int, 1), eps_int < 1


# Calibration margins (compiler.calibrate): magnitudes (|mean|, |x - mean|, row sums, |scores|) are assumed to reach
# up to MAGNITUDE_MARGIN times their calibrated maximum (minimum: divided by it), variances VARIANCE_MARGIN (its
# square) times beyond their calibrated range, on inputs other than the calibration samples.
MAGNITUDE_MARGIN = 4.0
VARIANCE_MARGIN = MAGNITUDE_MARGIN ** 2


@dataclass(frozen=True)
class DenominatorScale:
    """How an attention row's probabilities p = a/(Σ + ε) are computed in fixed point (see the callers).

    ``trunc`` t: the row sum is truncated by t bits before the reciprocal (only when it may leave the comparison
    range 2^(k-f-1), costs one truncation per row); ``shift`` q: the reciprocal computes 2^q/x (free, see
    :mod:`compiler.approx.reciprocal`); the product a·r is then truncated by f + t + q instead of f. ``eps_int``
    is the ε added to the (truncated) sum, in LSBs: at least 1 for ReLU-softmax, 0 for softmax (which adds none).
    """

    trunc: int = 0
    shift: int = 0
    eps_int: int = 1


def balanced_shift(lo: float, hi: float, fx: Any) -> int:
    """q with 2^q ≈ sqrt(2·lo·hi), at most k-f-2 (a·2^q/x <= 2^q stays in the product range): over [lo, hi] the
    rounding of the reciprocal's input (relative 2^(t-f-1)/x) and of its output 2^q/x (relative 2^-f·x/2^q)
    are then balanced; without the shift 1/x at x = 10^4 keeps 6.5 LSBs (4 % off)."""
    return int(min(max(0, math.floor(math.log2(math.sqrt(2 * lo * hi)))), fx.k - fx.f - 2))


def softmax_sum_top(tokens: int) -> float:
    """The top of a softmax row sum's domain [1, top]: Σ exp(s - max) over N keys lies in [1, N] whatever the
    scores; one key's sum is exactly 1, a degenerate domain the reciprocal cannot be fitted on, so N >= 2."""
    return float(max(tokens, 2))


def softmax_scale(profile: Profile, lo: float, hi: float) -> DenominatorScale:
    """Softmax rows whose sums lie in [lo, hi] (:func:`softmax_uses`: after a row max [e^-gap, N] whatever the
    scores; without one [N·e^-r, N·e^r]): the reciprocal's free shift, no truncation."""
    return DenominatorScale(0, balanced_shift(lo, hi, profile.fx), 0)


# How far above the true row maximum softmax's shift m may lie (rowmax ``drop``, compiler.approx.rowmax): softmax is
# invariant to m, the exponents stay <= 0 and the row sums >= e^-gap, but exp's relative error grows with |x|, so a
# peaky row's largest terms lose accuracy with the gap (trained digits vit_1_4_8, max logit error: 0.0080 exact,
# 0.0082 at a gap of 1/16, 0.0084 at 1/8, 0.0091 at 1/4, 0.014 at 1). A gap of 1/8 compares the scores in units of
# 1/16 (f − 4 bits dropped): 8-bit comparisons for |scores| <= 2 (calibrated, times the margin), 6 rounds, not 8.
SOFTMAX_MAX_GAP = 0.125
# Rows whose calibrated |scores| times the margin stay within this reach take exp(s) itself, without a row max
# (softmax is invariant to the shift; :func:`softmax_uses`): 2^(n-1) for limit3's n = 3, up to which its raw sums
# stay below the negative side's whatever f (compiler/approx/exp.py).
UNSHIFTED_REACH = 4.0
# Segments per octave of the softmax reciprocal's guess: 2 leave a series of order 8 (4 products deep) where 1
# needs order 16 (5 deep), for 2·log2(N/lo) comparisons per row instead of log2(N/lo) (in the same round). Fixed, so
# that an attention's rounds do not depend on its rows (8 per octave: 3 deep, but 8 times the comparisons).
SOFTMAX_PER_OCTAVE = 2


@dataclass(frozen=True)
class SoftmaxUses:
    """The approximations of one softmax call site (rows of ``cols`` values) and its denominator scale."""

    rowmax: ApproxUse | None  # None: exp of the scores themselves (:func:`softmax_uses`)
    exp: ApproxUse
    reciprocal: ApproxUse
    scale: DenominatorScale

    def steps(self, rows: int, cols: int, profile: Profile, unreduced: bool = False) -> list[Step]:
        """Row max, exp, one reciprocal per row, then the normalising product (``unreduced``: left untruncated,
        :func:`softmax_unreduced_bits`)."""
        return [*(_approx_steps(self.rowmax, rows * cols, profile) if self.rowmax else []),
                *_approx_steps(self.exp, rows * cols, profile),
                *_approx_steps(self.reciprocal, rows, profile), Step("mul_int" if unreduced else "mul", rows * cols)]


def softmax_unreduced_bits(node: Node, profile: Profile, shift: int) -> int | None:
    """The bit length of the raw product P·V of an attention's softmax heads when the probabilities are left as
    the raw e·r (None: without a calibrated |V|, e·r is truncated first, as ReLU-softmax's a·r).

    p = e·r/2^(f+q) is kept as e·r (2f + q fractional bits; e_j·r <= 2^q·Σ/Σ) and P·V truncated once by 2f + q
    instead of f: one truncation of N·N values per head fewer (2 rounds and 8 B per value at party 0 under
    replicated-ring), one rounding instead of two. Its raw sums Σ_j e_j·r·v_j reach 2^(3f+q)·max|V|·(1 + ε)
    (Σ_j e_j·r = 2^q up to the reciprocal's relative error ε): with the calibrated |V| times the margin below 2^b
    they stay below 2^(3f+q+b+1), which must stay under 2^RING_TOP; the truncation is told one bit more (sign)."""
    v_abs = calibrated_abs(node, "v_abs")
    if v_abs is None:
        return None
    b = max(0, math.ceil(math.log2(max(v_abs * MAGNITUDE_MARGIN, 1.0))))
    top = 3 * profile.f + shift + b + 1
    return top + 1 if top <= RING_TOP else None


def softmax_exp(profile: Profile, exponents: float | None) -> ApproxUse:
    """Softmax's exp at a call site whose exponents reach −``exponents`` (calibrated; None: unknown).

    The limits' relative error grows with |x| (limit2 |x|³/(6·4^n), limit3 x⁴/(24·8^n)), and a trained model's
    peaky rows feel it beyond what the absolute bounds say (trained digits vit_1_4_8: 0.008 max logit error with
    limit2 n = 5, 0.04 with limit3 n = 3 clipped at −8). Unless ``--approx exp=`` forced another choice than the
    profile's own, a limit is therefore picked per call site: limit3 without its clip where the exponents times
    the margin stay above −8 (n = 3, 5 products) or −16 (n = 4, 6 products, at most a quarter of limit2's relative
    error there), else limit2 (n = 5) as without calibration."""
    choice = profile.approx.get("exp")
    automatic = choice == ((profile.justification or {}).get("exp") or {}).get("chosen", choice)
    if not automatic or choice not in ("limit2", "limit3"):
        return _compare_use(profile, "exp", exponents)
    reach = None if exponents is None else exponents * MAGNITUDE_MARGIN
    if reach is not None and reach < 16:
        return _compare_use(replace(profile, approx={**profile.approx, "exp": "limit3"}), "exp", exponents,
                            **({"n": 4} if reach >= 8 else {}))
    return _compare_use(replace(profile, approx={**profile.approx, "exp": "limit2"}), "exp", exponents)


def _unshifted_exp(profile: Profile, top: float) -> ApproxUse:
    """exp on the unshifted scores, calibrated |s| <= ``top`` (reach r = top times the margin): limit4 with n = 2
    (4 products) where its bound is no larger than limit3's with n = 3 (5 products), up to r ≈ 3
    (compiler/approx/exp.py); either without its clip, with positive exponents up to r, and h from x truncated by
    ``short`` bits where both its truncations are short ones for the protocol."""
    reach = top * MAGNITUDE_MARGIN

    def use(choice: str, n: int) -> ApproxUse:
        site = _compare_use(replace(profile, approx={**profile.approx, "exp": choice}), "exp", top, n=n)
        short = short_shift(n, profile.f)
        shorten = {"short": short} if short > 0 and \
            max(profile.f + 4, SHORT_BITS) <= SHORT_TRUNC.get(profile.protocol, (0, 0.0))[0] else {}
        return ApproxUse("exp", choice, tuple(sorted({**site.kwargs, "top": reach, **shorten}.items())))

    def bound(site: ApproxUse) -> float:
        approx = REGISTRY["exp"][site.choice]
        return approx.bounds(**approx.split_bits(site.kwargs)[0], f=profile.f)[1]

    third = use("limit3", 3)
    if reach < 4.0:
        fourth = use("limit4", 2)
        if fourth.kwargs.get("inner") and bound(fourth) <= bound(third):
            return fourth
    return third


def softmax_uses(profile: Profile, top: float | None, rows: int, cols: int) -> SoftmaxUses:
    """Softmax over rows of ``cols`` values whose calibrated largest magnitude is ``top`` (None: uncalibrated).

    Where top times the margin (the reach r) stays within :data:`UNSHIFTED_REACH` and the rows' sums N·e^r inside
    the comparison range, no row max at all (``rowmax`` None): the exponents are the scores themselves, in [−r, r]
    rather than [−2r − gap, 0], so limit3's relative error x⁴/(24·8^n) is lower on calibrated rows (|s| <= top)
    than after a max-subtraction (2·top + gap), and the tournament's comparisons, selections and rounds are gone
    (vit_7_4_32 under replicated-ring: 2.4 MB of party 0's bytes and 30 rounds per layer). The row sums lie in
    [N·e^-r, N·e^r]. Beyond the margin the exponents leave exp's domain, as the scores would leave the tree's
    comparison range.

    Otherwise, calibrated, the row max is taken on the values truncated by ``drop`` = f + log2(SOFTMAX_MAX_GAP) − 1
    bits (its comparisons that many bits shorter; uncalibrated they stay at k bits, where dropping saves nothing),
    its tournament groups least latency on ``RANK_NETWORK``; the exponents then reach −(2·top + gap), the row sums
    [e^-gap, N]. The reciprocal (``newton``) takes :data:`SOFTMAX_PER_OCTAVE` segments per octave and its series
    without the final Newton step (``final``, error bound in compiler.approx.reciprocal)."""
    sum_top = softmax_sum_top(cols)
    reach = None if top is None else top * MAGNITUDE_MARGIN
    exp = softmax_exp(profile, top) if reach is not None and 0.0 < reach <= UNSHIFTED_REACH and \
        sum_top * math.exp(reach) <= profile.fx.max_abs / 2 else None
    if exp is not None and exp.choice == "limit3" and exp.kwargs.get("inner") and exp.kwargs.get("n", 3) == 3:
        rowmax, exp = None, _unshifted_exp(profile, top)
        lo, hi = sum_top * math.exp(-reach), sum_top * math.exp(reach)
    else:
        drop = profile.f + round(math.log2(SOFTMAX_MAX_GAP)) - 1 if top is not None else 0
        gap = 2.0 ** (drop + 1 - profile.f) if drop else 0.0
        coarse = None if top is None else top * 2.0 ** -drop  # the compared values' magnitude, in units of 2^(drop-f)
        dropped = {"drop": drop} if drop else {}
        rowmax = _compare_use(profile, "rowmax", coarse, cols=cols, **dropped)
        groups = best_groups(cols, rows, profile, rowmax.kwargs.get("bits"), RANK_NETWORK)
        rowmax = _compare_use(profile, "rowmax", coarse, cols=cols, **dropped, **({"groups": groups} if groups else {}))
        # the margin applies to the scores, not to the gap (exact)
        exp = softmax_exp(profile, None if top is None else 2 * top + gap / MAGNITUDE_MARGIN)
        lo, hi = math.exp(-gap), sum_top  # whatever the scores: an exact bound for the reciprocal's comparisons
    scale = softmax_scale(profile, lo, hi)
    shift = {"shift": scale.shift} if scale.shift else {}
    newton = {"per_octave": SOFTMAX_PER_OCTAVE, "final": False} if profile.approx.get("reciprocal") == "newton" else {}
    rec = _compare_use(profile, "reciprocal", None, hi, lo=lo, hi=hi, **shift, **newton)
    return SoftmaxUses(rowmax, exp, rec, scale)


def scaling_fold(tokens: int, fx: Any) -> tuple[int, int]:
    """(g, C) of scaling attention's 1/N, folded into V: (S/N)·V = S·V'/2^g with V' = trunc(V·C, f),
    C = round(2^(f+g)/N), g = ⌊log2 N⌋ (so 2^g/N ∈ (1/2, 1]: |V'| <= |V| stays in range and keeps V's bits), and
    the product S·V' truncated by f + g instead of f. Truncations: N·d per head (V') instead of N·N (the scores).
    Error: each V' is off by <= 0.5 LSB and C by a relative N/2^(f+g+1) <= 2^-f, so an output is off by
    <= Σ_j |S_ij|·LSB/2^(g+1) + 0.5 LSB + |out|·2^-f (nearest rounding), against Σ_j |V_j|·LSB/2 when each score
    S_ij/N was rounded: a row's |S| sum over 2^g ≈ N, against N times |V|. C = 2^f (N a power of two): V' = V.

    Without a bias and with scale 1 (:func:`scaling_linear`) the scores are not formed at all: S·V' = Q·(Kᵀ·V'),
    so M = trunc(Kᵀ·V', f + g) ≈ Kᵀ·V/N (d_key × d per head: the average of k·v over the tokens, as small as
    the products themselves) and out = trunc(Q·M, f): d_key·d + N·d products per head instead of N·N + N·d. Error:
    M is off by <= Σ_r |k_r|·LSB/2^(g+1) + 0.5 LSB, times Σ_c |q_c| in out, + 0.5 LSB."""
    g = int(math.floor(math.log2(max(tokens, 1))))
    return g, int(round(2.0 ** (fx.f + g) / tokens))


def scaling_linear(node: Node) -> bool:
    """Whether the scaling heads use the associative form Q·(Kᵀ·V') (no bias added to the scores, scale 1)."""
    return len(node.inputs) == 3 and float(node.attrs.get("scale", 1.0)) == 1.0


def relu_softmax_scale(node: Node, profile: Profile) -> tuple[DenominatorScale, tuple[float, float] | None]:
    """ReLU-softmax rows from the calibrated row sums (``node.attrs["calibration"]["relu_sums"]``: [min, max] of
    Σ relu(S) + ε, written by :mod:`compiler.calibrate`), with margins [min/4, max·4]; None without calibration
    (today's computation: 1/(Σ + ε) on [ε, min(N·S_max, S_max)]).

    Sums whose top stays inside the comparison range get only the free reciprocal shift; larger ones are first
    truncated by t bits (one truncation per row) so that the reciprocal's comparisons see them in range, and the
    rest of the balance is the shift. ε' = max(1 LSB, ε·2^-t) is added after that truncation (an all-negative row
    then divides by ε', not by a truncated 0).
    Returns the scale and the reciprocal's domain (of the truncated sum).
    """
    eps_int, _ = relu_softmax_eps(node, profile)
    sums = (node.attrs.get("calibration") or {}).get("relu_sums")
    if not sums:
        return DenominatorScale(eps_int=eps_int), None
    fx = profile.fx
    s_lo = max(float(sums[0]) / MAGNITUDE_MARGIN, eps_int * fx.lsb)
    s_hi = max(float(sums[1]) * MAGNITUDE_MARGIN, 2 * s_lo)
    t = max(0, math.ceil(math.log2(s_hi / (fx.max_abs / 2))))  # keep the truncated top below half the range
    if t:
        eps_int = max(1, int(round(float(node.attrs.get("eps", 0.0) or 0.0) * 2.0 ** (fx.f - t))))
        s_lo, s_hi = max(s_lo * 2.0 ** -t, eps_int * fx.lsb), s_hi * 2.0 ** -t
    return DenominatorScale(t, balanced_shift(s_lo, s_hi, fx), eps_int), (s_lo, s_hi)


def _attention(node: Node, graph: Graph, profile: Profile, p: NodePlan) -> None:
    batch, tokens = graph.values[node.inputs[0]].shape[:2]
    d = int(node.attrs["head_dim"])
    d_key = len(node.attrs["heads"][0]["q_cols"])  # q/k width per head: d, or less (LeViT's key_dim)
    heads = len(node.attrs["heads"])
    lsb = 2.0 ** -profile.f
    linear = len(attention_groups(node).get("scaling", [])) if scaling_linear(node) else 0  # no scores for those
    if heads > linear:
        p.steps.append(Step("matmul", tokens * tokens, (tokens, d_key, tokens), instances=(heads - linear) * batch))
    if float(node.attrs.get("scale", 1.0)) != 1.0:
        p.steps.append(Step("trunc", heads * batch * tokens * tokens))
    score_max = 2.0 ** (profile.k - profile.f - 1)
    scores = calibrated_abs(node, "cmp_abs")  # |scores (+ bias)|, what the row max and the ReLU compare
    for kind, members in attention_groups(node).items():
        rows = len(members) * batch * tokens
        n = rows * tokens
        if kind == "softmax":
            uses = softmax_uses(profile, scores, rows, tokens)
            p.approx.update({"softmax.exp": uses.exp, "softmax.reciprocal": uses.reciprocal,
                             **({"softmax.rowmax": uses.rowmax} if uses.rowmax else {})})
            p.params["softmax.scale"] = uses.scale
            unreduced = p.params["softmax.unreduced"] = softmax_unreduced_bits(node, profile, uses.scale.shift)
            p.steps += uses.steps(rows, tokens, profile, unreduced is not None)
        elif kind == "relu_softmax":
            eps_int, raised = relu_softmax_eps(node, profile)
            if raised:
                p.notes.append(f"relu_softmax eps={node.attrs.get('eps')} rounds to 0 at f={profile.f}; "
                               f"using 1 LSB = {lsb:g}")
            scale, domain = relu_softmax_scale(node, profile)
            p.params["relu_softmax.scale"] = scale
            bits = p.params["relu_softmax.bits"] = comparison_bits(profile, scores)
            shift = {"shift": scale.shift} if scale.shift else {}
            if domain is None:  # range [ε, N·S_max], capped by the comparison range the row sum must respect
                domain = (eps_int * lsb, min(float(tokens) * score_max, score_max))
                rec = p.approx["relu_softmax.reciprocal"] = _use(profile, "reciprocal", lo=domain[0], hi=domain[1],
                                                                 **shift)
            else:  # the calibrated domain's top (margin included) bounds the sums the comparisons see
                rec = p.approx["relu_softmax.reciprocal"] = _compare_use(profile, "reciprocal", None, domain[1],
                                                                         lo=domain[0], hi=domain[1], **shift)
            p.steps += [Step("relu", n, bits=bits), *([Step("trunc", rows)] if scale.trunc else []),
                        *_approx_steps(rec, rows, profile), Step("mul", n)]
        elif kind == "scaling":  # 1/N folded into V (scaling_fold): the scores stay as they are, or are not formed
            g, c = p.params["scaling.fold"] = scaling_fold(tokens, profile.fx)
            if c != profile.fx.scale:
                p.steps.append(Step("trunc", batch * tokens * d * len(members)))
            if linear:
                p.steps += [Step("matmul", d_key * d, (d_key, tokens, d), instances=linear * batch),
                            Step("matmul", tokens * d, (tokens, d_key, d), instances=linear * batch)]
        else:
            raise CompileError(f"attention node {node.name!r}: head kind {kind!r} is not one of "
                               f"softmax, relu_softmax, scaling")
    if heads > linear:
        p.steps.append(Step("matmul", tokens * d, (tokens, tokens, d), instances=(heads - linear) * batch))


def public_scalar(graph: Graph, name: str) -> float | None:
    """The value of a public one-element operand (rendered as a constant, multiplied locally), else None."""
    value = graph.values[name]
    if value.role == "public" and value.data is not None and value.size == 1:
        return float(np.asarray(value.data).reshape(-1)[0])
    return None


def constant_operands(node: Node, graph: Graph) -> list[str]:
    """Inputs of ``node`` that the template uses as compile-time constants, not as party 0's inputs."""
    if node.op == "where":
        return [node.inputs[0]]
    if node.op == "mul":
        return [n for n in node.inputs if public_scalar(graph, n) is not None][:1]
    if node.op == "div":
        return [node.inputs[1]] if public_scalar(graph, node.inputs[1]) is not None else []
    return []


def reduction_axes(node: Node, shape: tuple[int, ...]) -> tuple[list[int], list[int]]:
    """(kept axes, reduced axes) of a reduce_*/softmax node, both ascending; softmax reduces its one axis."""
    rank = len(shape)
    raw = [node.attrs["axis"]] if node.op == "softmax" else list(node.attrs.get("axes") or range(rank))
    reduced = sorted({int(a) % rank for a in raw}) if rank else []
    return [a for a in range(rank) if a not in reduced], reduced


def reduction_block(node: Node, shape: tuple[int, ...]) -> tuple[int, int, tuple[int, ...]]:
    """(rows, cols, permutation): the input reordered by ``permutation`` (kept axes, then the reduced ones) is a
    row-major rows x cols block whose rows are reduced."""
    kept, reduced = reduction_axes(node, shape)
    cols = int(np.prod([shape[a] for a in reduced], dtype=np.int64))
    rows = int(np.prod([shape[a] for a in kept], dtype=np.int64))
    return rows, cols, tuple(kept + reduced)


def matmul_instances(a_shape: tuple[int, ...], b_shape: tuple[int, ...]) -> list[tuple[int, int]] | None:
    """Per product instance (row-major over the broadcast leading dims), the instance index into a and into b;
    None when b is one [K, N] matrix shared by every row of a (then a single 2-D product does it all). Both
    shapes have at least 2 dims (the lowering checks)."""
    if len(b_shape) == 2:
        return None
    lead = np.broadcast_shapes(a_shape[:-2], b_shape[:-2])
    index_a = np.broadcast_to(np.arange(int(np.prod(a_shape[:-2], dtype=np.int64))).reshape(a_shape[:-2]), lead)
    index_b = np.broadcast_to(np.arange(int(np.prod(b_shape[:-2], dtype=np.int64))).reshape(b_shape[:-2]), lead)
    return list(zip(index_a.reshape(-1).tolist(), index_b.reshape(-1).tolist()))


def _matmul(node: Node, graph: Graph, p: NodePlan) -> None:
    a_shape, b_shape = (graph.values[n].shape for n in node.inputs)
    if len(a_shape) < 2 or len(b_shape) < 2:
        raise CompileError(f"matmul node {node.name!r}: operands {a_shape} @ {b_shape} need at least 2 dims each; "
                           f"reshape a vector operand to [1, K] or [K, 1] first")
    (m, k), n = a_shape[-2:], b_shape[-1]
    if b_shape[-2] != k:
        raise CompileError(f"matmul node {node.name!r}: {a_shape} @ {b_shape} has mismatched inner dims")
    pairs = matmul_instances(a_shape, b_shape)
    if pairs is None:
        rows = int(np.prod(a_shape[:-1], dtype=np.int64))
        p.steps.append(Step("matmul", rows * n, (rows, k, n)))
    else:  # one merged round: every instance's product is issued before any is stored
        p.steps.append(Step("matmul", m * n, (m, k, n), instances=len(pairs)))


def _clip_steps(size: int, bounds: int, bits: int) -> list[Step]:
    """One comparison call and one bit x value call over the given bounds (see helpers' mpcvit_clip)."""
    return [Step("ltz", bounds * size, (bounds,), bits=bits), Step("mul_int", bounds * size)] if bounds else []


def _generic(node: Node, graph: Graph, profile: Profile, p: NodePlan) -> None:
    """Plans of the generic kinds (see NODE_KINDS); local kinds (neg, where, reduce_sum) have no step."""
    op = node.op
    out = graph.values[node.outputs[0]]
    x_shape = graph.values[node.inputs[0]].shape
    fx = profile.fx
    if op == "where":
        cond = graph.values[node.inputs[0]]
        if cond.role != "public" or cond.data is None:
            raise CompileError(f"where node {node.name!r}: its condition {cond.name!r} is {cond.role}; only a "
                               f"compile-time (public) condition is supported: compute a secret select as "
                               f"b + c * (a - b) with mul/add instead")
    elif op == "abs":  # |x| = x - 2 [x < 0] x
        bits = p.params["bits"] = comparison_bits(profile, calibrated_abs(node))
        p.steps += [Step("ltz", out.size, bits=bits), Step("mul_int", out.size)]
    elif op == "mul":
        p.steps.append(Step("trunc" if constant_operands(node, graph) else "mul", out.size))
    elif op == "div":
        if constant_operands(node, graph):
            p.steps.append(Step("trunc", out.size))
        else:
            use = p.approx["reciprocal"] = ApproxUse("reciprocal", RANGE_AGNOSTIC["reciprocal"])
            p.steps += [*_approx_steps(use, graph.values[node.inputs[1]].size, profile), Step("mul", out.size)]
    elif op == "matmul":
        _matmul(node, graph, p)
    elif op == "reduce_mean":
        scale = p.params["mean.scale"] = mean_scale(node, profile, reduction_block(node, x_shape)[1])
        p.steps += [Step("trunc", out.size)] * (2 if scale.shift else 1)
    elif op == "reduce_sum" and node.attrs.get("shift"):  # a pooled sum pre-scaled by 2^-shift (passes.mean_as_sum)
        p.steps.append(Step("trunc", out.size))
    elif op == "reduce_max":
        rows, cols, _ = reduction_block(node, x_shape)
        use = p.approx["rowmax"] = _compare_use(profile, "rowmax", calibrated_abs(node), cols=cols)
        p.steps += _approx_steps(use, rows * cols, profile)
    elif op == "softmax":  # as an attention softmax head: max-subtraction, exp, one reciprocal per row
        rows, cols, _ = reduction_block(node, x_shape)
        uses = softmax_uses(profile, calibrated_abs(node), rows, cols)
        p.approx.update({"exp": uses.exp, "reciprocal": uses.reciprocal,
                         **({"rowmax": uses.rowmax} if uses.rowmax else {})})
        p.params["softmax.scale"] = uses.scale  # 2^q/sum: free bits for long rows
        p.steps += uses.steps(rows, cols, profile)
    elif op in ("exp", "reciprocal"):
        use = p.approx[op] = ApproxUse(op, RANGE_AGNOSTIC[op])
        p.steps += _approx_steps(use, out.size, profile)
    elif op in PROFILE_UNARY:
        use = p.approx[op] = _compare_use(profile, op, calibrated_abs(node))
        p.steps += _approx_steps(use, out.size, profile)
    elif op in ("rsqrt", "sqrt"):  # unknown range: every positive fixed-point value of the comparison range
        params = (("eps", fx.lsb), ("hi", fx.max_abs))
        use = p.approx[op] = ApproxUse(op, RANGE_AGNOSTIC[op], params) if op in RANGE_AGNOSTIC else \
            _use(profile, op, **dict(params))
        p.steps += _approx_steps(use, out.size, profile)
    elif op in ("hardsigmoid", "hardswish"):  # a clip of alpha x + beta to [0, 1]
        alpha, beta = HARDSWISH if op == "hardswish" else (node.attrs.get("alpha", 0.2), node.attrs.get("beta", 0.5))
        top = calibrated_abs(node)
        bits = p.params["bits"] = comparison_bits(profile, None if top is None else top * abs(alpha) + abs(beta), 1.0)
        p.steps += [Step("trunc", out.size), *_clip_steps(out.size, 2, bits)] + \
            ([Step("mul", out.size)] if op == "hardswish" else [])
    elif op == "clip":
        bounds = [abs(float(node.attrs[b])) for b in ("min", "max") if node.attrs.get(b) is not None]
        bits = p.params["bits"] = comparison_bits(profile, calibrated_abs(node), max(bounds, default=0.0))
        p.steps += _clip_steps(out.size, len(bounds), bits)


@dataclass(frozen=True)
class MeanScale:
    """A mean over C values in fixed point (see :func:`mean_scale`): the row sum, truncated by ``shift`` p bits
    first where that is needed, times the integer ``mul`` = round(2^(f+g+p)/C), truncated by f + ``bits`` g."""

    shift: int = 0
    bits: int = 0
    mul: int = 0


def mean_scale(node: Node, profile: Profile, cols: int) -> MeanScale:
    """The constants of one mean over ``cols`` values from its input's calibrated largest magnitude m
    (``in_abs``; |mean| <= m). The product sum·mul is mean·2^(2f+g) whatever p, so g is the largest keeping
    m·4·2^g below half the product range 2^(k-f-1) (as LayerNorm's extra bits). The constant's rounding then
    offsets the mean by up to m·C/2^(f+g+p+1): where that exceeds 1 LSB (large m and C) the sum is first
    truncated by p bits (1 LSB of sum/2^p is C/2^p LSB of the mean, so p <= ⌈log2 C⌉), one truncation per row
    more. Without calibration: 1/C at f bits, as a public multiply."""
    fx = profile.fx
    top = calibrated_abs(node)
    if top is None:
        return MeanScale(mul=int(round(fx.scale / cols)))
    limit = 2.0 ** (fx.k - fx.f - 1)
    g = int(min(fx.f, max(0, math.floor(math.log2(limit / max(top * MAGNITUDE_MARGIN, fx.lsb))) - 1)))
    offset = top * MAGNITUDE_MARGIN * cols / 2.0 ** (g + 1)  # in LSB, for p = 0
    shift = int(min(max(0, math.ceil(math.log2(offset))), math.ceil(math.log2(cols)))) if offset > 1 else 0
    return MeanScale(shift, g, int(round(2.0 ** (fx.f + g + shift) / cols)))


@dataclass(frozen=True)
class LayerNormScale:
    """The fixed-point constants of one LayerNorm call site over C columns (see :func:`layernorm_scale`).

    The centred values are computed scaled by σ, so that the variance computed is σ²·var and lands where fixed
    point is precise; the model's ε is scaled with it (``eps_int`` = round(ε·σ²·2^f), at least 1 LSB), and the σ
    cancels exactly in (x - mean)·σ·γ / sqrt(σ²·(var + ε)). Two ways to centre:

    * ``exact=False``: mean = trunc(Σx · ``centre_mul``, f + ``centre_bits``) (``centre_mul`` = round(2^(f+g)/C):
      1/C with g extra bits), then x - mean times 2^``shift`` (shift >= 0: a local multiply); σ = 2^shift.
    * ``exact=True``: (C·x - Σx) is C·(x - mean) exactly (local), then one truncation: trunc((C·x - Σx) ·
      ``centre_mul``, f + ``centre_bits``) with ``centre_mul`` = round(2^(f+g+shift)/C), so σ = C·centre_mul /
      2^(f+g) ≈ 2^shift. The rounding of the constant is a common factor of the whole row (LayerNorm ignores it),
      where the mean's 1/C error is not: it offsets every x - mean by |mean|·C/2^(f+g+1).

    The variance is trunc(Σ squares · ``var_mul``, f + ``var_bits``) with ``var_mul`` = round(2^(f+var_bits)/C);
    with ``raw_squares`` (calibrated) the squares are raw ring products (2f fractional bits, exact) and the one
    truncation is by 2f + ``var_bits``.

    * ``moments=True`` (calibrated, where the ring has room): no mean at all. C·x − Σx = C·(x − mean) and
      C·Σx² − (Σx)² = C²·var (2f fractional bits) are exact ring values (the terms may wrap mod 2^64, their
      difference stays below 2^RING_TOP); σ = C/2^``shift``, so trunc(C²·var, f + 2·shift) is σ²·var and
      trunc((C·x − Σx)·γ, f + ``shift``) is σ·(x − mean)·γ, whose raw product has ``raw_bits`` bits. The products
      (x², (Σx)², (C·x − Σx)·γ) share one round and the two truncations the next: no truncation before them.
      Without γ (folded into the next linears: γ = 1, β = 0) the output is trunc((C·x − Σx)·rsqrt, f + shift),
      whose raw product has ``raw_bits`` bits.
    """

    exact: bool = False
    shift: int = 0
    centre_bits: int = 0
    centre_mul: int = 0
    var_bits: int = 0
    var_mul: int = 0
    eps_int: int = 1
    sigma: float = 1.0
    raw_squares: bool = False
    moments: bool = False
    raw_bits: int = 0


# The scaled variance's calibrated maximum (with margin) is placed at or below 2^VARIANCE_TOP: high enough that the
# smallest rows keep their bits, low enough that 1/sqrt keeps >= 2^(f - VARIANCE_TOP/2) LSBs of its own.
VARIANCE_TOP = 8
# The mean's 1/C rounding may offset x - mean by at most this fraction of the smallest calibrated std, else
# the centring is exact (one truncation per element instead of per row).
MEAN_OFFSET = 1e-4


def layernorm_scale(node: Node, profile: Profile, cols: int,
                    affine: bool = True) -> tuple[LayerNormScale, dict[str, float] | None]:
    """The pre-scale of one LayerNorm from its calibrated statistics (``node.attrs["calibration"]``, written by
    :mod:`compiler.calibrate`): ``var`` [min, max] of the per-row variance, ``mean_abs`` and ``diff_abs`` the
    largest |row mean| and |x - mean|, ``gamma_abs`` the largest |γ|.

    The exact moments (``moments``) where C²·(var_max + ε)·16·2^(2f) < 2^RING_TOP: σ = C/2^g with g the least
    integer keeping σ²·(var_max + ε)·16 <= 2^VARIANCE_TOP and σ·|x - mean|·4·|γ| < L/2. Otherwise:
    the shift p is the largest integer with, after the margins above (L = 2^(k-f-1), the sfix product range):
    4^p·(var_max + ε)·16 <= 2^VARIANCE_TOP (the rsqrt domain's top), (2^p·|x - mean|·4)^2 < L (each square is a
    truncated product) and 2^p·|x - mean|·4·|γ| < L (the product with γ). Every extra-bit count g is the largest
    keeping the truncated product below 2^(k+f-1) (value·2^g·4 < L, one bit spare). Returns the constants and the
    rsqrt domain {lo, hi} in scaled units (None without calibration: the unscaled computation, σ = 1, the
    mean's 1/C at f bits and the rsqrt's default domain).
    """
    fx = profile.fx
    eps = float(node.attrs.get("eps", 1e-5))
    calib = node.attrs.get("calibration")
    inv_cols = int(round(fx.scale / cols))
    if not calib:
        return LayerNormScale(centre_mul=inv_cols, var_mul=inv_cols, eps_int=max(1, int(round(eps * fx.scale)))), None
    limit = 2.0 ** (fx.k - fx.f - 1)

    def extra_bits(top: float) -> int:
        return int(min(fx.f, max(0, math.floor(math.log2(limit / max(top * MAGNITUDE_MARGIN, fx.lsb))) - 1)))

    var_lo, var_hi = (float(v) + eps for v in calib["var"])
    diff = max(float(calib["diff_abs"]), fx.lsb)
    gamma = max(float(calib.get("gamma_abs", 1.0)), fx.lsb)

    def domain(sigma: float) -> tuple[int, dict[str, float]]:
        hi = var_hi * sigma ** 2 * VARIANCE_MARGIN
        eps_int = max(1, int(round(eps * sigma ** 2 * fx.scale)))
        lo = max(var_lo * sigma ** 2 / VARIANCE_MARGIN, eps_int * fx.lsb)
        return eps_int, {"lo": lo, "hi": max(hi, 2 * lo)}

    # moments: the largest σ = C/2^g with σ²·var below 2^VARIANCE_TOP and σ·|x - mean|·|γ| in the sfix range
    top = min(2.0 ** ((VARIANCE_TOP - math.log2(var_hi * VARIANCE_MARGIN)) / 2),
              limit / (2 * diff * MAGNITUDE_MARGIN * gamma))
    g = math.ceil(math.log2(cols / top))
    # the raw (C·x − Σx)·γ, or without γ (C·x − Σx)·rsqrt = 2^g·(x − mean)/std, |(x − mean)/std| ≤ √C
    raw_bits = math.ceil(math.log2(cols * diff * MAGNITUDE_MARGIN * gamma)) + 2 * fx.f + 1 if affine else \
        math.ceil(math.log2(2 * math.sqrt(cols))) + 2 * fx.f + 1
    if cols ** 2 * var_hi * VARIANCE_MARGIN * 4.0 ** fx.f < 2.0 ** RING_TOP and raw_bits <= RING_TOP + 1 and \
            fx.f + 2 * g >= 1:
        raw_bits += 0 if affine else g
        eps_int, bounds = domain(cols / 2.0 ** g)
        return LayerNormScale(shift=g, eps_int=eps_int, sigma=cols / 2.0 ** g, moments=True, raw_bits=raw_bits), bounds
    p = math.floor((VARIANCE_TOP - math.log2(var_hi * VARIANCE_MARGIN)) / 2)
    p = min(p, math.ceil(math.log2(math.sqrt(limit) / (diff * MAGNITUDE_MARGIN))) - 1,
            math.ceil(math.log2(limit / (diff * MAGNITUDE_MARGIN * gamma))) - 1)
    g = extra_bits(float(calib["mean_abs"]))
    centre_mul = int(round(2.0 ** (fx.f + g) / cols))
    offset = float(calib["mean_abs"]) * MAGNITUDE_MARGIN * abs(centre_mul * cols / 2.0 ** (fx.f + g) - 1)
    exact = p < 0 or offset > MEAN_OFFSET * math.sqrt(var_lo)
    if exact:
        g = extra_bits(diff * 2.0 ** p)
        centre_mul = int(round(2.0 ** (fx.f + g + p) / cols))
        sigma = centre_mul * cols / 2.0 ** (fx.f + g)
    else:
        sigma = 2.0 ** p
    eps_int, bounds = domain(sigma)
    # raw squares where Σ squares · var_mul ≈ variance·2^(3f + var_bits), the variance below hi, stays under
    # 2^RING_TOP (f ≤ 16 or so); else truncated squares
    raw_bits = math.floor(RING_TOP - 3 * fx.f - math.log2(bounds["hi"]))
    var_bits = int(min(fx.f, raw_bits)) if raw_bits >= 0 else extra_bits(bounds["hi"] / MAGNITUDE_MARGIN)
    return (LayerNormScale(exact, p, g, centre_mul, var_bits, int(round(2.0 ** (fx.f + var_bits) / cols)), eps_int,
                           sigma, raw_squares=raw_bits >= 0), bounds)


@dataclass(frozen=True)
class RawInput:
    """A linear node whose input is a LayerNorm's untruncated output (:func:`layernorm_raw_input`): its one
    truncation, by ``shift`` bits of a ``bits``-bit product, takes the LayerNorm's too."""

    layernorm: str  # the producing LayerNorm's output tensor
    shift: int
    bits: int
    # where the LayerNorm's other consumers need its truncated output, its first fused linear forms it in the same
    # truncation as its product's: R·2^f (``truncate`` bits) truncated by ``shift`` is trunc(R, f + g) exactly
    truncate: int | None = None


def layernorm_raw_input(node: Node, graph: Graph, profile: Profile) -> RawInput | None:
    """Fused truncation of a LayerNorm (exact moments, γ/β folded away) and a linear that takes its output.

    Such a LayerNorm ends in trunc(R, f + g) with R = (C·x − Σx)·rsqrt = z·2^(2f+g) (z the normalised value,
    g = its ``shift``). It hands R on untruncated to the linears whose left factor it is, which truncate
    R·W = y·2^(3f+g) by 2f + g instead of f: the LayerNorm's last product becomes local (−2 rounds under
    replicated-ring). Where nothing else takes the output, its truncation is gone too; otherwise (a residual
    add) trunc(R, f + g) is still formed, in one truncation with the linear's (``RawInput.truncate``, where R·2^f
    fits the ring). R·W must stay in the ring: bits = ⌈log2(margin·|R·W|max/2^(3f+g))⌉ + 3f + g + 1 <= RING_TOP + 1,
    from the linear's calibrated largest product ``product_abs`` (:mod:`compiler.calibrate`). Returns the fusion of
    linear ``node`` (None where it does not apply: not calibrated, an affine LayerNorm, or a product too wide).
    """
    ln = graph.producer(node.inputs[0]) if node.op == "linear" and len(node.inputs) > 1 else None
    if ln is None or ln.op != "layernorm" or ln.outputs[0] in graph.outputs:
        return None
    gamma, beta = (graph.values[n].data for n in ln.inputs[1:3])
    if gamma is None or beta is None or not (np.all(gamma == 1) and np.all(beta == 0)):
        return None
    scale, _ = layernorm_scale(ln, profile, graph.values[ln.inputs[0]].shape[-1], affine=False)
    if not scale.moments:
        return None
    fx = profile.fx

    def product_bits(consumer: Node) -> int | None:
        top = consumer.attrs.get("calibration", {}).get("product_abs")
        if consumer.op != "linear" or consumer.inputs.index(ln.outputs[0]) != 0 or top is None or \
                consumer.inputs.count(ln.outputs[0]) != 1:
            return None
        bits = math.ceil(math.log2(max(top * MAGNITUDE_MARGIN, fx.lsb))) + 3 * fx.f + scale.shift + 1
        return bits if bits <= RING_TOP + 1 else None

    consumers = graph.consumers(ln.outputs[0])
    fused = [c for c in consumers if product_bits(c) is not None]
    if not any(c is node for c in fused) or (len(fused) < len(consumers) and scale.raw_bits + fx.f > RING_TOP + 1):
        return None
    truncate = scale.raw_bits + fx.f if fused[0] is node and len(fused) < len(consumers) else None
    return RawInput(ln.outputs[0], 2 * fx.f + scale.shift, product_bits(node), truncate)


def _row_scaling(rows: int, cols: int, raw: bool, profile: Profile, p: NodePlan) -> list[Step]:
    """The centred rows times their rsqrt: element-wise (one product per element), or as ONE matrix product
    diag(r)·X where that costs party 0 fewer bytes in no more rounds: Beaver matrix triples (dealer) open
    rows² + rows·cols values, element-wise products 2·rows·cols (−99 kB per vit_7_4_32 LayerNorm). ``raw``: left
    untruncated for the linears that take it (:func:`layernorm_raw_input`)."""
    suffix = "_int" if raw else ""
    elementwise = [Step("mul" + suffix, rows * cols)]
    diagonal = [Step("matmul" + suffix, rows * cols, (rows, rows, cols))]
    # marginal costs: a program with linears has paid the matrix products' one-time setup already
    costs = [steps_cost(steps, profile) for steps in (elementwise, diagonal)]
    p.params["diagonal_scaling"] = costs[1].variable_bytes_p0 < costs[0].variable_bytes_p0 and \
        costs[1].online_rounds <= costs[0].online_rounds
    return diagonal if p.params["diagonal_scaling"] else elementwise


def _layernorm(node: Node, graph: Graph, profile: Profile, p: NodePlan) -> None:
    shape = graph.values[node.inputs[0]].shape
    cols = shape[-1]
    rows = int(np.prod(shape[:-1]))
    gamma, beta = (graph.values[n].data for n in node.inputs[1:3])
    # γ = 1, β = 0 (folded into the next linears, passes.linear.fold_layernorm_affine): no product with γ
    affine = p.params["affine"] = gamma is None or beta is None or not (np.all(gamma == 1) and np.all(beta == 0))
    scale, domain = layernorm_scale(node, profile, cols, affine)
    p.params["scale"] = scale
    if domain is None:
        rsqrt = p.approx["rsqrt"] = _use(profile, "rsqrt")
    else:
        # the reference refuses variances above the domain top: an exact bound for the comparisons
        per_octave = {"per_octave": rsqrt_segments(domain["lo"], domain["hi"], profile.f)} \
            if profile.approx.get("rsqrt") == "newton" else {}
        rsqrt = p.approx["rsqrt"] = _compare_use(profile, "rsqrt", None, domain["hi"], eps=domain["lo"],
                                                 hi=domain["hi"], **per_octave)
        p.params["rsqrt_domain"] = domain
        # ε raised to 1 LSB only matters when that LSB is not negligible against the smallest calibrated variance
        used = scale.eps_int * profile.fx.lsb / scale.sigma ** 2
        if used > 2 * float(node.attrs.get("eps", 1e-5)) and used > 1e-3 * float(node.attrs["calibration"]["var"][0]):
            p.notes.append(f"layernorm eps={node.attrs.get('eps')} is below 1 LSB after the pre-scale "
                           f"{scale.sigma:g}; using {used:g}, above 1e-3 of the smallest calibrated variance")
    # centring: the mean (one truncation per row) or exactly (one per element); centred square (raw when
    # calibrated), variance (1/C), rsqrt, (x-mean)*gamma in parallel, times rsqrt
    if scale.moments:  # x², (Σx)², (C·x - Σx)·γ in one round, both truncations in the next
        raw = p.params["raw_output"] = any(layernorm_raw_input(c, graph, profile) is not None
                                           for c in graph.consumers(node.outputs[0]))
        # affine: x², (Σx)², (C·x − Σx)·γ in one call; else C·Σx² − (Σx)² as one dot product per row
        products = [Step("mul_int", 2 * rows * cols + rows)] if affine else [Step("dot", rows, (cols + 1,))]
        p.steps += [*products, Step("trunc", affine * rows * cols + rows),
                    *_approx_steps(rsqrt, rows, profile), *_row_scaling(rows, cols, raw, profile, p)]
        return
    p.steps += [Step("trunc", rows * cols if scale.exact else rows),
                Step("mul_int" if scale.raw_squares else "mul", rows * cols), Step("trunc", rows),
                *_approx_steps(rsqrt, rows, profile), *[Step("mul", rows * cols)] * (1 + affine)]


def output_index(node: Node, graph: Graph) -> int:
    """Position of an output node's tensor in ``graph.outputs`` (output 0 prints ``MPCVIT_OUT``, j ``MPCVIT_OUT<j>``)."""
    return graph.outputs.index(node.inputs[0]) if node.inputs[0] in graph.outputs else 0


def _output(node: Node, graph: Graph, profile: Profile, reveal: str, p: NodePlan) -> None:
    shape = graph.values[node.inputs[0]].shape
    batch = graph.values[graph.inputs[0]].shape[0]
    if not shape or shape[0] != batch:
        raise CompileError(f"output {node.inputs[0]!r} has shape {shape}: its first axis must be the batch "
                           f"({batch}), since each image's slice is revealed to its client; reduce over other axes")
    if reveal == "argmax" and output_index(node, graph) == 0:
        if len(shape) != 2:
            raise CompileError(f"--reveal argmax: output {node.inputs[0]!r} has shape {shape}, not [batch, classes]; "
                               f"use --reveal logits")
        batch, classes = int(np.prod(shape[:-1])), shape[-1]
        bits = p.params["bits"] = comparison_bits(profile, calibrated_abs(node))
        width = classes
        while width > 1:  # tree argmax: per level one comparison and two selections
            half = width // 2
            p.steps += [Step("ltz", batch * half, bits=bits), Step("mul", 2 * batch * half)]
            width -= half
        p.steps.append(Step("reveal", batch))
    else:
        p.steps.append(Step("reveal", int(np.prod(shape))))


def plan(node: Node, profile: Profile, graph: Graph, reveal: str = "logits") -> NodePlan:
    """The approximations and ordered vectorised MP-SPDZ calls of one node. Raises CompileError naming the node
    (an approximation's own errors, e.g. an empty domain, know no node)."""
    name = node.name or (node.outputs or node.inputs)[0]
    try:
        return _plan(node, profile, graph, reveal)
    except CompileError as exc:
        if f"{name!r}" in str(exc):
            raise
        raise CompileError(f"node {name!r} ({node.op}): {exc}") from exc


def _plan(node: Node, profile: Profile, graph: Graph, reveal: str) -> NodePlan:
    if node.op not in SUPPORTED_OPS:
        raise CompileError(f"node {node.name or node.outputs[0]!r}: op {node.op!r} is not supported by the MPC "
                           f"backend (supported: {', '.join(SUPPORTED_OPS)}); express it with those ops"
                           + (" or reveal it with --reveal argmax" if node.op == "argmax" else ""))
    p = NodePlan(node)
    out = graph.values[(node.outputs or node.inputs)[0]]
    p.steps += _param_inputs(node, graph)
    if node.op == "input":
        # the round in which party 0 inputs every weight tensor (their bytes: each node's "weights" steps)
        p.steps += [Step("input", 0, party=0)] * any(graph.params()) + [Step("input", out.size, party=1)]
    elif node.op == "linear":
        raw = p.params["raw_input"] = layernorm_raw_input(node, graph, profile)
        x_shape = graph.values[node.inputs[0]].shape
        rows, k, cols = int(np.prod(x_shape[:-1])), x_shape[-1], out.shape[-1]
        p.steps.append(Step("matmul", rows * cols, (rows, k, cols)))
        if raw and raw.truncate:  # the LayerNorm's truncation, in the rounds of this product's
            p.steps.append(Step("trunc", rows * k, parallel=True))
    elif node.op == "scale":
        p.steps.append(Step("trunc", out.size))
    elif node.op == "relu":
        bits = p.params["bits"] = comparison_bits(profile, calibrated_abs(node))
        p.steps.append(Step("relu", out.size, bits=bits))
    elif node.op == "gelu":
        use = p.approx["gelu"] = _gelu_use(profile, calibrated_abs(node))
        p.steps += _approx_steps(use, out.size, profile)
    elif node.op == "layernorm":
        _layernorm(node, graph, profile, p)
    elif node.op == "attention":
        _attention(node, graph, profile, p)
    elif node.op == "output":
        _output(node, graph, profile, reveal, p)
    elif node.op not in ("layout", "add", "sub"):
        _generic(node, graph, profile, p)
    return p


def lower(graph: Graph, profile: Profile, name: str = "mpcvit", reveal: str = "logits") -> Program:
    """Choose the approximations and the plan of every node; reject ops the backend cannot run."""
    if reveal not in ("logits", "argmax"):
        raise CompileError(f"--reveal {reveal!r} is unknown; choose logits or argmax")
    if len(graph.inputs) != 1:
        raise CompileError(f"the model has {len(graph.inputs)} inputs {graph.inputs}; expected one image input")
    if reveal == "argmax" and len(graph.outputs) > 1:  # the other outputs would be revealed whole
        raise CompileError(f"--reveal argmax reveals one [batch, classes] output, but the model has "
                           f"{len(graph.outputs)} ({', '.join(graph.outputs)}): use --reveal logits, or export the "
                           f"model with only its class output")
    _name_nodes(graph)
    _check_constants(graph, profile)
    plans = [plan(node, profile, graph, reveal) for node in graph.nodes]
    lengths = choose_comparison_lengths(plans, profile)
    if lengths != sorted({s.bits for s in comparison_steps(plans)}):
        profile = replace(profile, cmp_bits=tuple(lengths))
        plans = [plan(node, profile, graph, reveal) for node in graph.nodes]
    warnings = [f"{p.node.name or p.node.op}: {note}" for p in plans for note in p.notes]
    safe = "".join(c if c.isalnum() else "_" for c in name) or "mpcvit"
    return Program(graph, profile, plans, safe, reveal, warnings)


def comparison_steps(plans: list[NodePlan]) -> list[Step]:
    """The steps that compare at a bit length (a truncation's ``bits`` is its inputs' length, not a comparison's)."""
    return [s for p in plans for s in p.steps if s.bits and s.prim != "trunc"]


def choose_comparison_lengths(plans: list[NodePlan], profile: Profile) -> list[int]:
    """The comparison bit lengths a program uses: each distinct length needs its own preprocessing (the dealer's
    and semi2k's edaBits of that length: a setup of rounds and bytes, compiler.cost.primitives), so the call
    sites' lengths are merged upwards into the subset that minimises the comparisons' estimated latency on
    ``RANK_NETWORK`` (their bytes and rounds by length, plus one setup per length) among those with no more
    rounds than the longest length alone (so neither bytes nor rounds exceed one length for all, as without
    calibration). Exhaustive over the subsets of the distinct lengths that keep the longest (a handful)."""
    from itertools import combinations

    from compiler.cost.primitives import steps_cost
    from compiler.lowering.profiles import RANK_NETWORK

    steps = comparison_steps(plans)
    demanded = sorted({s.bits for s in steps})
    if len(demanded) < 2:
        return demanded

    def cost(menu: tuple[int, ...]) -> Any:
        return steps_cost([replace(s, bits=min(b for b in menu if b >= s.bits)) for s in steps], profile)

    menus = [(*subset, demanded[-1]) for size in range(len(demanded)) for subset in combinations(demanded[:-1], size)]
    rounds = cost((demanded[-1],)).rounds
    allowed = [menu for menu in menus if cost(menu).rounds <= rounds + 1e-9]
    return list(min(allowed, key=lambda menu: (cost(menu).latency(RANK_NETWORK), len(menu))))


def _check_constants(graph: Graph, profile: Profile) -> None:
    """Fixed point has no infinities: a constant operand holding ±inf or NaN (e.g. a mask filled with -inf) would
    encode to garbage; name it and say what to use instead."""
    for node in graph.nodes:
        for name in node.inputs:
            value = graph.values[name]
            if value.role != "secret" and value.data is not None and np.asarray(value.data).dtype.kind == "f" \
                    and not np.isfinite(value.data).all():
                raise CompileError(f"constant {name!r} of node {node.name!r} ({node.op}) holds inf or NaN, which "
                                   f"fixed point cannot represent: use a finite value within ±{profile.fx.max_abs:g} "
                                   f"(e.g. -1e4 for a mask added to softmax scores)")
        # an attention mask of a huge constant (-1e9, the float minimum SDPA's is_causal exports) leaves the
        # comparison range of the row max; -100 masks the same (e^-100 is 0 in fixed point)
        bias = graph.values[node.inputs[3]] if node.op == "attention" and len(node.inputs) > 3 else None
        if bias is not None and bias.data is not None and np.abs(bias.data).max() >= profile.fx.max_abs:
            raise CompileError(f"attention {node.name!r}: its mask/bias constant {bias.name!r} reaches "
                               f"|v| = {np.abs(bias.data).max():.3g} (a mask of a huge value such as -1e9, or SDPA's "
                               f"is_causal=True), beyond the ±{profile.fx.max_abs:g} of fixed point: mask with a "
                               f"finite value such as -100 (e^-100 is 0 in fixed point) and re-export")


def client_layout(graph: Graph) -> tuple[tuple[int, ...], np.ndarray | None]:
    """(the shape of the client's image batch, the index laying it out as the input tensor or None).

    ``compiler.passes`` moves the patch embedding's im2col into the ``input`` node (``layout_index``,
    ``image_shape``): party 1 applies it in plaintext, ``image.reshape(-1)[layout_index]``.
    """
    name = graph.inputs[0]
    node = next(n for n in graph.nodes if n.op == "input" and n.outputs == [name])
    if "layout_index" in node.attrs:
        return tuple(node.attrs["image_shape"]), np.asarray(node.attrs["layout_index"], dtype=np.int64)
    return graph.values[name].shape, None


def batch_images(images: np.ndarray, image_shape: tuple[int, ...]) -> np.ndarray:
    """``images`` as the batch the program was compiled for (one image may omit the batch axis)."""
    images = np.asarray(images, dtype=np.float64)
    if images.shape == tuple(image_shape[1:]):
        images = images[None]
    if images.shape != tuple(image_shape):
        raise UserError(f"images have shape {images.shape}; the program was compiled for {tuple(image_shape)} "
                        f"(recompile with --batch {images.shape[0] if images.ndim == len(image_shape) else 1})")
    return images


def client_input(graph: Graph, images: np.ndarray) -> np.ndarray:
    """The input tensor party 1 secret-shares for ``images`` (the model's input, e.g. [B, C, H, W])."""
    image_shape, index = client_layout(graph)
    images = batch_images(images, image_shape)
    return images if index is None else images.reshape(-1)[index]


def _name_nodes(graph: Graph) -> None:
    """Give every node a unique name (cost reports and per-layer errors are keyed by it)."""
    seen: set[str] = set()
    for i, node in enumerate(graph.nodes):
        if not node.name or node.name in seen:
            node.name = f"{node.name or node.op}_{i}"
        seen.add(node.name)
