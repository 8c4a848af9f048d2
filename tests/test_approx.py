"""Every approximation meets its stated error bound over its whole domain (dense fixed-point sampling)."""
from __future__ import annotations

import numpy as np
import pytest
from scipy.special import erf

from compiler.approx import REGISTRY, get
from compiler.approx.reciprocal import newton_iterations
from compiler.approx.rsqrt import linear_coefficients, newton_errors, rsqrt_segments
from compiler.cost import CostProfile, Step
from compiler.errors import CompileError
from compiler.fixedpoint import FixedPoint

fx = FixedPoint(16, 31)
ELEMENTWISE = [(op, choice) for op, choices in REGISTRY.items() for choice in choices if op != "rowmax"]


def dense(lo: float, hi: float, count: int = 200_001, log: bool = False) -> np.ndarray:
    """Inputs over [lo, hi] in fixed point: a dense grid (log-spaced for positive ranges) plus both ends."""
    grid = np.geomspace(lo, hi, count) if log else np.linspace(lo, hi, count)
    return np.unique(fx.encode(np.concatenate([grid, [lo, hi]])))


@pytest.mark.parametrize("op,choice", ELEMENTWISE)
def test_error_bound_over_whole_domain(op, choice):
    approx = get(op, choice)
    lo, hi = approx.domain
    x = dense(lo, hi, log=lo > 0)
    x = x[(x >= fx.encode(lo)) & (x <= fx.encode(hi))]
    err = np.abs(fx.decode(approx.run(x, fx)) - approx.exact(fx.decode(x)))
    print(f"{op}:{choice} domain [{lo:g}, {hi:g}] max error {err.max():.3g} (bound {approx.max_abs_error:.3g})")
    assert err.max() <= approx.max_abs_error


@pytest.mark.parametrize("op", ["gelu", "tanh", "erf", "sigmoid"])
def test_inner_segment_meets_its_bound_on_the_interval_it_is_used_on(op):
    """``inner=True`` (the cut comparisons dropped, chosen where the calibrated input stays inside the cut) over
    its domain (-cut, cut): the same bound, and bit for bit the full form's result there; beyond the cut it is
    the polynomial extrapolated (what MP-SPDZ then computes), which is why lowering keeps a margin."""
    approx = get(op, "poly")
    (lo, hi), bound = approx.bounds(inner=True)
    assert bound == approx.max_abs_error and hi < approx.domain[1]
    x = dense(lo, hi)
    x = x[(x > fx.encode(lo)) & (x < fx.encode(hi))]
    inner = approx.run(x, fx, inner=True)
    assert np.array_equal(inner, approx.run(x, fx))
    assert np.abs(fx.decode(inner) - approx.exact(fx.decode(x))).max() <= bound
    assert len(approx.call_steps(100, CostProfile(), inner=True, bits=20)) == len(approx.steps(100, None)) - \
        (op == "gelu")  # gelu: no final inside x value product; the odd polynomials' products shrink to n
    ltz = [s for s in approx.call_steps(100, CostProfile(), inner=True, bits=20) if s.prim == "ltz"]
    assert ltz == [Step("ltz", 100, bits=20)]  # one sign comparison per element, at the call site's bit length


def test_gelu_band_form_tests_both_cuts_with_one_comparison():
    """``band=True`` (calibrated |x| times the margin below 8): bit for bit the three-comparison form on (-8, 8) and
    its bound there, from the top two bits of x mod 2^(f+4) (one comparison circuit, ``ltz2``) instead of three
    comparisons. The band test itself: bit f + 3 of (x + 4 mod 2^(f+4)) is [x outside [-4, 4)] for every x in
    [-12, 12)."""
    approx = get("gelu", "poly")
    (lo, hi), bound = approx.bounds(band=True)
    assert (lo, hi) == (-8.0, 8.0) and bound == approx.max_abs_error
    x = dense(lo, hi)
    x = x[(x > fx.encode(lo)) & (x < fx.encode(hi))]
    band = approx.run(x, fx, band=True)
    assert np.array_equal(band, approx.run(x, fx))
    assert np.abs(fx.decode(band) - approx.exact(fx.decode(x))).max() <= bound
    wide = dense(-12, 12)[:-1]  # [-12, 12)
    bit = ((wide + fx.encode(4.0)) % 2 ** (fx.f + 4)) >> (fx.f + 3)
    assert np.array_equal(bit, ((wide < fx.encode(-4.0)) | (wide >= fx.encode(4.0))).astype(np.int64))
    compared = [s for s in approx.call_steps(100, CostProfile(), band=True) if s.prim.startswith("ltz")]
    assert compared == [Step("ltz2", 100, bits=fx.f + 3)]
    assert len(approx.call_steps(100, CostProfile(), band=True)) == len(approx.steps(100, None))
    # the two bits cost one comparison, one conversion and one round more: below the three comparisons' cost
    cut, band = approx.cost(33280, CostProfile(), bits=fx.f + 4), approx.cost(33280, CostProfile(), band=True)
    assert band.bytes_p0 < 0.8 * cut.bytes_p0 and band.rounds < cut.rounds


def test_gelu_exact_is_erf_gelu_and_poly_meets_issue_bound():
    x = np.linspace(-8, 8, 101)
    assert np.allclose(get("gelu", "poly").exact(x), 0.5 * x * (1 + erf(x / np.sqrt(2))))
    assert get("gelu", "poly").max_abs_error <= 5e-3
    xi = dense(-8, 8)
    puma_err = np.abs(fx.decode(get("gelu", "mpspdz").run(xi, fx)) - get("gelu", "poly").exact(fx.decode(xi)))
    assert 0.01 < puma_err.max() < 0.016  # MP-SPDZ's ml.Gelu: 0.015 measured


@pytest.mark.parametrize("n", [5, 7, 9, 10])
def test_exp_limit_bound_holds_for_other_squaring_counts(n):
    approx = get("exp", "limit")
    x = dense(-40, 0)
    err = np.abs(fx.decode(approx.run(x, fx, n=n)) - np.exp(fx.decode(x)))
    assert err.max() <= approx.bounds(n=n)[1] < 2.5 * err.max()  # a bound, and not a loose one


@pytest.mark.parametrize("choice", ["limit", "limit2"])
def test_exp_inner_drops_the_clip_with_the_same_bound_on_its_domain(choice):
    """``inner=True`` (chosen where calibrated exponents stay inside [-2^n, 0]): bit for bit the clipped form there,
    the same bound, and no comparison left to pay."""
    approx = get("exp", choice)
    (lo, hi), bound = approx.bounds(**approx.with_params({"inner": True}))
    assert (lo, hi) == (-2.0 ** approx.params["n"], 0.0) and bound == approx.max_abs_error
    x = dense(lo, hi)
    inner = approx.run(x, fx, inner=True)
    assert np.array_equal(inner, approx.run(x, fx))
    assert np.abs(fx.decode(inner) - np.exp(fx.decode(x))).max() <= bound
    full, dropped = approx.steps(100, None), approx.steps(100, None, inner=True)
    assert [s.prim for s in full[:2]] == ["ltz", "mul_int"] and dropped == full[2:]


def test_exp_limit_clips_so_very_negative_inputs_give_zero_not_garbage():
    out = get("exp", "limit").run(fx.encode(np.array([-300.0, -256.0, -1000.0])), fx)
    assert np.all(out == 0)


@pytest.mark.parametrize("lo,hi", [(1.0, 65.0), (1.0, 197.0), (1e-3, 65 * 40.0), (0.5, 3.0)])
def test_reciprocal_newton_over_softmax_and_relu_softmax_ranges(lo, hi):
    approx = get("reciprocal", "newton")
    x = dense(lo, hi, 100_001, log=True)
    err = np.abs(fx.decode(approx.run(x, fx, lo=lo, hi=hi)) - 1 / fx.decode(x))
    assert err.max() <= approx.bounds(lo=lo, hi=hi)[1]
    # the stated iteration count is the proven one: one fewer iteration is visibly worse on the range
    iterations = newton_iterations(lo, hi)
    fewer = np.abs(fx.decode(approx.run(x, fx, lo=lo, hi=hi, iterations=iterations - 1)) - 1 / fx.decode(x))
    assert fewer.max() > err.max()


@pytest.mark.parametrize("per_octave", [1, 2, 8])
@pytest.mark.parametrize("lo,hi,shift", [(1.0, 65.0, 3), (np.exp(-1.0), 65.0, 2), (np.exp(-1.0), 197.0, 3)])
def test_reciprocal_series_without_the_final_newton_step(lo, hi, shift, per_octave):
    """``final=False`` (softmax denominators, lo = e^-1: the row max up to 1 above): the series of order 2^I
    alone meets its bound densely, one product shallower than with the final step; more segments per octave
    leave fewer iterations (softmax's vit_7_4_32 domain: 4, 3, 2)."""
    approx = get("reciprocal", "newton")
    params = {"lo": lo, "hi": hi, "shift": shift, "per_octave": per_octave, "final": False}
    x = dense(lo, hi, 100_001, log=True)
    err = np.abs(fx.decode(approx.run(x, fx, **params)) - 2.0 ** shift / fx.decode(x))
    bound = approx.bounds(**params)[1]
    assert err.max() <= bound < 2e-3 * 2.0 ** shift  # relative to 1/x: 2e-3 at worst (x = lo)
    steps, with_newton = approx.steps(10, CostProfile(), **params), approx.steps(10, CostProfile(),
                                                                                   **{**params, "final": True})
    assert len(steps) == len(with_newton) - 1 == newton_iterations(lo, hi, 16, per_octave) + 2
    thresholds = int(np.ceil(np.log2(hi / lo) * per_octave - 1e-9))
    assert steps[0] == Step("ltz", 10 * thresholds, (thresholds,))  # every threshold on one mask per value
    if (lo, hi) == (np.exp(-1.0), 65.0):
        assert newton_iterations(lo, hi, 16, per_octave) == {1: 4, 2: 3, 8: 2}[per_octave]


def test_reciprocal_guess_converges_below_lo_and_rejects_bad_ranges():
    approx = get("reciprocal", "newton")
    x = fx.encode(np.array([0.6, 0.8]))  # below lo = 1: slower but still convergent
    # 6 Newton steps from the range's guess converge to within f=16 rounding (~10 LSB of accumulated truncation)
    assert np.allclose(fx.decode(approx.run(x, fx, lo=1.0, hi=64.0, iterations=6)), [1 / 0.6, 1 / 0.8], atol=1e-4)
    with pytest.raises(CompileError, match="range"):
        approx.run(x, fx, lo=2.0, hi=1.0)


@pytest.mark.parametrize("per_octave", [1, 2, 4])
@pytest.mark.parametrize("eps,hi", [(1e-5, 64.0), (1e-6, 16.0), (1e-3, 1000.0), (8.8e-4, 166.0), (0.24, 66.6)])
def test_rsqrt_newton_honours_epsilon(eps, hi, per_octave):
    """The bound holds densely over the domain for every segment count; the last two domains are calibrated
    vit_7_4_32 LayerNorms (scaled variance + ε)."""
    approx = get("rsqrt", "newton")
    (lo, _), bound = approx.bounds(eps=eps, hi=hi, per_octave=per_octave)
    x = dense(lo, hi, 100_001, log=True)
    err = np.abs(fx.decode(approx.run(x, fx, eps=eps, hi=hi, per_octave=per_octave)) - 1 / np.sqrt(fx.decode(x)))
    assert err.max() <= bound
    # relative precision of f bits: within 1 LSB plus y·2^-(f+1) of 1/√x (the previous newton's bound: 1 + 2y LSB)
    assert np.all(err <= (1 + 1.1 / np.sqrt(lo) * 2.0 ** -12) * fx.lsb + 2.0 ** -17 / np.sqrt(fx.decode(x)) * 1.05)
    # far better than MP-SPDZ's InvertSqrt (0.032 at x = 0.01)
    at = fx.encode(np.array([max(0.01, lo)]))
    got = fx.decode(approx.run(at, fx, eps=eps, hi=hi, per_octave=per_octave))[0]
    assert abs(got - 1 / np.sqrt(fx.decode(at)[0])) < 1e-3
    assert newton_errors(eps, hi, fx.f, per_octave)[0] <= 4  # the old octave guess took 4 steps of 3 truncations


@pytest.mark.parametrize("f", [12, 20, 22])
def test_rsqrt_newton_keeps_its_bound_at_other_precisions(f):
    """Above f = 19 y² is truncated before x·y² and z keeps fewer extra bits (the raw products stay below 2^61);
    the bound of :func:`newton_errors` at that f still holds densely."""
    other = FixedPoint(f, 31)
    eps, hi = 1e-3, 64.0
    steps, e, rounding = newton_errors(eps, hi, f, 2)
    x = np.unique(other.encode(np.geomspace(eps, hi, 100_001)))
    err = np.abs(other.decode(get("rsqrt", "newton").run(x, other, eps=eps, hi=hi, per_octave=2)) -
                 1 / np.sqrt(other.decode(x)))
    assert np.all(err <= e / (1 + np.sqrt(1 - e)) / np.sqrt(other.decode(x)) + rounding * other.lsb)


@pytest.mark.parametrize("ratio", [2.0, 2 ** 0.5, 2 ** 0.25])
def test_rsqrt_linear_guess_is_the_minimax_one(ratio):
    """The closed form equioscillates (ends and the interior peak at ±e), and no nearby (a, b) does better."""
    a, b, e = linear_coefficients(ratio)
    u = np.linspace(1.0, ratio, 20_001)

    def worst(a_: float, b_: float) -> float:
        return float(np.max(np.abs(1 - u * (a_ + b_ * u) ** 2)))

    peak = -a / (3 * b)
    assert 1 < peak < ratio
    assert np.allclose([1 - (a + b) ** 2, 1 - ratio * (a + b * ratio) ** 2, peak * (a + b * peak) ** 2 - 1], e)
    assert worst(a, b) == pytest.approx(e, rel=1e-6)
    rng = np.random.default_rng(0)
    for da, db in rng.normal(0, 1e-3, (50, 2)):
        assert worst(a + da, b + db) >= e * (1 - 1e-9)


def test_layernorm_rsqrt_takes_the_fewest_steps_then_the_fewest_segments():
    assert rsqrt_segments(8.8e-4, 166.0) == 4 and newton_errors(8.8e-4, 166.0, 16, 4)[0] == 1
    assert newton_errors(8.8e-4, 166.0, 16, 1)[0] == 2
    # near 1 LSB the thresholds round together: more segments per octave do not help, one is kept
    assert rsqrt_segments(2.0 ** -16, 64.0) == 1


@pytest.mark.parametrize("choice, n, top, short", [("limit3", 3, 4.0, 8), ("limit4", 2, 4.0, 7)])
def test_exp_series_take_positive_exponents_and_a_short_first_product(choice, n, top, short):
    """Softmax without a row max: exponents on [−2^n, top] (limit3: top <= 2^(n−1), limit4: <= 2^n) within the
    bound; ``short``: x' = x truncated by f + n − 11 bits, both truncations told at most 24-bit inputs, the first
    product a plain one (no truncation of its own), its extra error inside the (larger) bound."""
    approx = get("exp", choice)
    x = np.linspace(-2.0 ** n, top, 40_001)
    for t in (0, short):
        (lo, hi), bound = approx.bounds(n=n, inner=True, top=top, short=t)
        assert (lo, hi) == (-2.0 ** n, top)
        err = np.abs(fx.decode(approx.run(fx.encode(x), fx, n=n, inner=True, top=top, short=t)) - np.exp(x))
        assert err.max() <= bound
    assert approx.bounds(n=n, inner=True, top=top, short=short)[1] > approx.bounds(n=n, inner=True, top=top)[1]
    steps = approx.call_steps(100, CostProfile(), n=n, inner=True, top=top, short=short)
    assert steps[:3] == [Step("trunc", 100, bits=17 + n), Step("mul_int", 100), Step("trunc", 100, bits=23)]
    assert [s.prim for s in steps[3:]] == ["mul"] * (n + 1)
    with pytest.raises(ValueError, match=f"short takes t = f \\+ n - 11 = {short}"):
        approx.bounds(n=n, inner=True, short=5)
    with pytest.raises(ValueError, match=f"positive top only inner and up to .* = {int(top)}, not 5.0"):
        approx.bounds(n=n, inner=True, top=5.0)


def test_exp_limit4_matches_limit3_with_one_product_fewer_on_unshifted_scores():
    """On softmax's unshifted exponents [−r, r] the fourth-order base with 2 squarings stays within limit3's
    (3 squarings) absolute bound up to r ≈ 3, one product fewer (4 against 5); beyond, limit3's is smaller."""
    third, fourth = get("exp", "limit3"), get("exp", "limit4")
    for r in (2.0, 2.5, 3.0):
        assert fourth.bounds(n=2, inner=True, top=r)[1] < third.bounds(n=3, inner=True, top=r)[1]
        x = np.linspace(-r, r, 20_001)
        errors = [np.abs(fx.decode(a.run(fx.encode(x), fx, n=n, inner=True, top=r)) - np.exp(x)).max()
                  for a, n in ((third, 3), (fourth, 2))]
        assert errors[1] <= errors[0]
    assert fourth.bounds(n=2, inner=True, top=4.0)[1] > third.bounds(n=3, inner=True, top=4.0)[1]
    assert len(fourth.call_steps(10, CostProfile(), n=2, inner=True)) == 4
    assert len(third.call_steps(10, CostProfile(), n=3, inner=True)) == 5


def test_rowmax_tree_is_exact_for_odd_and_even_widths():
    approx = get("rowmax", "tree")
    for cols in (1, 2, 7, 64, 65, 197):
        x = fx.encode(np.random.default_rng(cols).uniform(-30, 30, (3, 4, cols)))
        assert np.array_equal(approx.run(x, fx), x.max(axis=-1))


@pytest.mark.parametrize("drop", [13, 15])
def test_rowmax_drop_lies_within_its_gap_above_the_max(drop):
    """``drop`` t: the tournament on x truncated by t bits returns m with max < m <= max + 2^(t+1) LSB (the
    reference's nearest rounding; MP-SPDZ's probabilistic truncation is inside the proof's (x/2^t - 1, x/2^t + 1));
    its comparisons run at t fewer bits and the truncation first sees the inputs' bit length."""
    approx = get("rowmax", "tree")
    x = fx.encode(np.random.default_rng(drop).uniform(-3, 3, (200, 65)))
    x[:5] = x[:5, :1]  # all-equal rows
    gap = approx.run(x, fx, cols=65, drop=drop) - x.max(axis=-1)
    assert np.all(gap > 0) and np.all(gap <= 2 ** (drop + 1))
    assert approx.bounds(cols=65, drop=drop)[1] == 2.0 ** (drop + 1 - 16)
    steps = approx.call_steps(65 * 4, CostProfile(budget=100000), cols=65, drop=drop, bits=5)
    assert steps[0] == Step("trunc", 65 * 4, bits=5 + drop)
    assert {s.bits for s in steps if s.prim == "ltz"} == {5}


@pytest.mark.parametrize("groups,levels,rounds", [((), 7, 7 * 9), ((2, 2, 2, 3, 3), 5, 3 * 9 + 2 * 10),
                                                  ((3, 4, 8), 3, 10 + 10 + 11)])
def test_rowmax_groups_trade_levels_for_comparisons(groups, levels, rounds):
    """65 columns: each level one comparison call (8 rounds at 19 bits under replicated-ring) and log2 g rounds
    of products; a group of g compares g(g-1)/2 pairs of blocks."""
    approx = get("rowmax", "tree")
    profile = CostProfile(budget=100000)
    steps = approx.call_steps(65 * 10, profile, cols=65, groups=groups, bits=19)
    assert len([s for s in steps if s.prim == "ltz"]) == levels
    assert approx.cost(65 * 10, profile, cols=65, groups=groups, bits=19).online_rounds == rounds
    first = [s for s in steps if s.prim == "ltz"][0]
    g = (groups or (2,))[0]
    assert first.n == 10 * (65 // g) * g * (g - 1) // 2


def test_rowmax_rounds_do_not_depend_on_rows():
    approx = get("rowmax", "tree")
    profile = CostProfile(budget=100000)
    few, many = approx.cost(65 * 1, profile, cols=65), approx.cost(65 * 65 * 4, profile, cols=65)
    assert few.online_rounds == many.online_rounds
    assert many.bytes_all > 100 * few.variable_bytes_all
    assert len(approx.steps(65 * 65, profile, cols=65)) == 2 * 7  # ⌈log2 65⌉ levels, ltz + select each


def test_steps_describe_the_reference_computation():
    gelu_steps = get("gelu", "poly").steps(100, None)
    assert gelu_steps[0] == Step("ltz", 300, (3,))  # one comparison call: x against 0, 4 and -4
    exp_steps = get("exp", "limit").steps(10, None, n=6)
    assert [s.prim for s in exp_steps].count("mul") == 6
    recip = get("reciprocal", "newton").steps(65, CostProfile(), lo=1.0, hi=65.0)
    order = newton_iterations(1.0, 65.0)
    # Newton's first I - 1 steps as one series, then one step: 2I products of 65 rows, I + 2 deep (the middle ones
    # two side by side)
    assert recip[0] == Step("ltz", 65 * 7, (7,)) and len(recip) == 1 + order + 2
    assert sum(s.n for s in recip[1:]) == 2 * order * 65
    assert get("exp", "mpspdz").steps(5, None) == [Step("exp:mpspdz", 5)]


@pytest.mark.parametrize("op,choice", [(op, c) for op, cs in REGISTRY.items() for c in cs])
def test_templates_render_one_function(op, choice):
    approx = get(op, choice)
    params = {"cols": 65} if op == "rowmax" else {}
    source = approx.render("approx_fn", fx, **params)
    assert source.startswith("def approx_fn(x):")
    compile(source, f"{op}_{choice}.mpc", "exec")  # valid Python syntax (MP-SPDZ programs are Python)


def test_unknown_choice_and_parameter_are_reported():
    with pytest.raises(CompileError, match="choose one of"):
        get("exp", "taylor")
    with pytest.raises(CompileError, match="no parameter"):
        get("exp", "limit").run(np.zeros(1, np.int64), fx, squarings=3)
