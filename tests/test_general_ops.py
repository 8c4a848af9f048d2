"""Every generic IR op has a general lowering: its fixed-point reference agrees with the float kernel within a
stated tolerance, its plan prices what it does (non-empty unless the op is local; it grows with the tensor), and
its template renders. Graphs: tests/general_ops_ir.py (one op, secret operands carved out of the client input)."""
from __future__ import annotations

import numpy as np
import pytest

from compiler.approx import get
from compiler.approx.gelu import TANH_GELU_GAP
from compiler.backend.render import render_program
from compiler.cost import estimate
from compiler.errors import CompileError, FixedPointRangeError
from compiler.fixedpoint import FixedPoint
from compiler.lowering import get_profile, lower
from compiler.reference import execute
from general_ops_ir import client_input, one_op, quantised

fx = FixedPoint(16, 31)
LSB = fx.lsb
PROFILE = get_profile("replicated-ring")
RNG = np.random.default_rng(11)
S = "secret"


def bound(op: str, choice: str | None = None, **params) -> float:
    approx = get(op, choice or PROFILE.approx[op])
    return approx.bounds(**approx.with_params(params))[1]


def softmax_tol(cols: int) -> float:
    """ê is off by ≤ ε_exp each, so the row sum (≥ 1 after max-subtraction) by ≤ cols·ε_exp; p = ê·r̂ is off by
    ε_exp + p·cols·ε_exp ≤ (1 + cols)·ε_exp, plus the reciprocal's bound (ê ≤ 1) and one truncation."""
    return (1 + cols) * bound("exp") + bound("reciprocal", lo=1.0, hi=float(max(cols, 2))) + LSB


# id -> (op, operands, attrs, input options, tolerance: None = bit-exact integer comparison)
CASES = {
    "neg": ("neg", [(S, (2, 3, 4))], {}, {}, None),
    "abs": ("abs", [(S, (2, 3, 4))], {}, {}, None),
    # one truncation per product (0.5 LSB) + float rounding
    "mul_secret_secret_broadcast": ("mul", [(S, (2, 3, 4)), (S, (2, 1, 4))], {}, {}, LSB),
    "mul_secret_param": ("mul", [(S, (2, 3, 4)), ("param", RNG.uniform(-2, 2, (4,)))], {}, {}, LSB),
    "mul_public_scalar": ("mul", [("public", np.array(0.25)), (S, (2, 5))], {}, {}, LSB),
    # 1/b quantised (0.5 LSB) times |a| ≤ 3, plus the product's truncation
    "div_secret": ("div", [(S, (2, 3, 4)), (S, (2, 3, 1))], {}, {"away_from_zero": 0.5}, (0.5 * 3 + 1) * LSB),
    "div_public_scalar": ("div", [(S, (2, 6)), ("public", np.array(4.0))], {}, {}, LSB),
    # one truncation per output of each product
    "matmul_batched_broadcast": ("matmul", [(S, (2, 3, 4, 5)), (S, (2, 1, 5, 6))], {}, {}, LSB),
    "matmul_secret_param_2d": ("matmul", [(S, (2, 3, 5)), ("param", RNG.uniform(-1, 1, (5, 2)))], {}, {}, LSB),
    "matmul_param_left": ("matmul", [("param", RNG.uniform(-1, 1, (4, 5))), (S, (2, 3, 5, 2))], {}, {}, LSB),
    "reduce_sum_middle": ("reduce_sum", [(S, (2, 3, 4))], {"axes": [1], "keepdims": False}, {}, None),
    "reduce_sum_two_axes": ("reduce_sum", [(S, (2, 3, 4, 5))], {"axes": [1, 3], "keepdims": True}, {}, None),
    # the public 1/cols is encoded to 0.5 LSB (times |sum| ≤ cols·3) plus one truncation
    "reduce_mean_last": ("reduce_mean", [(S, (2, 3, 6))], {"axes": [-1], "keepdims": True}, {}, (0.5 * 18 + 1) * LSB),
    "reduce_mean_tokens": ("reduce_mean", [(S, (2, 5, 4))], {"axes": [1], "keepdims": False}, {}, (0.5 * 15 + 1) * LSB),
    "reduce_max_middle": ("reduce_max", [(S, (2, 5, 3))], {"axes": [1], "keepdims": False}, {}, None),
    "reduce_max_two_axes": ("reduce_max", [(S, (2, 3, 4, 5))], {"axes": [1, 3], "keepdims": True}, {}, None),
    "softmax_last": ("softmax", [(S, (2, 3, 7))], {"axis": -1}, {}, softmax_tol(7)),
    "softmax_middle": ("softmax", [(S, (2, 5, 3))], {"axis": 1}, {}, softmax_tol(5)),
    # built-in references are the exact function quantised (0.5 LSB)
    "exp": ("exp", [(S, (2, 8))], {}, {}, LSB),
    "reciprocal": ("reciprocal", [(S, (2, 8))], {}, {"away_from_zero": 0.25}, LSB),
    "sigmoid": ("sigmoid", [(S, (2, 40))], {}, {"lo": -12, "hi": 12}, bound("sigmoid")),
    "tanh": ("tanh", [(S, (2, 40))], {}, {"lo": -6, "hi": 6}, bound("tanh")),
    "erf": ("erf", [(S, (2, 40))], {}, {"lo": -4, "hi": 4}, bound("erf")),
    "rsqrt": ("rsqrt", [(S, (2, 20))], {}, {"lo": 0.01, "hi": 50}, bound("rsqrt", "wide", eps=LSB, hi=fx.max_abs)),
    "sqrt": ("sqrt", [(S, (2, 20))], {}, {"lo": 0.0, "hi": 50}, bound("sqrt", eps=LSB, hi=fx.max_abs)),
    "gelu_tanh": ("gelu", [(S, (2, 40))], {"approximate": "tanh"}, {"lo": -6, "hi": 6},
                  bound("gelu") + TANH_GELU_GAP),
    # alpha·x encodes alpha to 0.5 LSB (times |x| ≤ 3) + one truncation; the clip itself is exact
    "hardsigmoid": ("hardsigmoid", [(S, (2, 30))], {"alpha": 0.2, "beta": 0.5}, {"lo": -4, "hi": 4}, 2.5 * LSB),
    # h is off by ≤ (0.5·4 + 1) LSB as above; times |x| ≤ 4, plus the product's truncation
    "hardswish": ("hardswish", [(S, (2, 30))], {}, {"lo": -4, "hi": 4}, (3 * 4 + 1) * LSB),
    "clip_both": ("clip", [(S, (2, 3, 4))], {"min": -1.0, "max": 0.5}, {}, None),
    "clip_min_only": ("clip", [(S, (2, 3, 4))], {"min": 0.0, "max": None}, {}, None),
    "where_public_mask": ("where", [("public", RNG.uniform(size=(3, 4)) > 0.5), (S, (2, 3, 4)),
                                    ("param", RNG.uniform(-1, 1, (4,)))], {}, {}, None),
}
LOCAL = {"neg", "where", "reduce_sum"}  # ops without communication


def _program(case: str, batch_scale: int = 1):
    op, operands, attrs, _, _ = CASES[case]
    if batch_scale != 1:
        operands = [(role, (spec[0] * batch_scale, *spec[1:])) if role == S else (role, spec)
                    for role, spec in operands]
    return lower(one_op(op, operands, attrs), PROFILE, name=case)


@pytest.mark.parametrize("case", sorted(CASES))
def test_reference_matches_float_kernel(case):
    _, _, _, options, tol = CASES[case]
    program = _program(case)
    x = client_input(program.graph, np.random.default_rng(len(case)), **options)
    result = execute(program, {"x": x})
    got, want = result.ints["y"], result.float_outputs["y"]
    assert got.shape == want.shape
    if tol is None:  # comparisons, selections, sums and negations of exact inputs: bit-exact
        assert np.array_equal(got, fx.encode(want))
    else:
        err = np.max(np.abs(fx.decode(got) - want))
        assert err <= tol, f"{case}: error {err:.3g} above the stated {tol:.3g}"


@pytest.mark.parametrize("case", sorted(CASES))
def test_plan_prices_the_op_and_grows_with_the_tensor(case):
    op = CASES[case][0]
    small, large = (estimate(_program(case, scale)).rows for scale in (1, 4))
    node_small = next(r for r in small if r.op == op)
    node_large = next(r for r in large if r.op == op)
    steps = dict(_program(case).plans)[f"the_{op}"]
    if op in LOCAL:  # only party 0's weight inputs, if any
        assert [s.prim for s in steps if s.prim != "weights"] == []
    else:
        assert steps, f"{case}: empty plan"
        assert node_large.cost.variable_bytes_all > node_small.cost.variable_bytes_all
        assert node_large.cost.online_rounds == node_small.cost.online_rounds  # vectorised: rounds do not grow


@pytest.mark.parametrize("case", sorted(CASES))
def test_template_renders_valid_python(case):
    text, weights = render_program(_program(case))
    assert f"# the_{CASES[case][0]}:" in text
    compile(text, f"{case}.mpc", "exec")
    if case == "where_public_mask":  # the mask is a compile-time constant, never a party-0 input
        assert [w.name for w, _ in weights] == ["in0_2"]


def test_generic_rsqrt_uses_the_wide_range_choice_and_layernorm_keeps_newton():
    plan = next(p for p in _program("rsqrt").node_plans if p.node.op == "rsqrt")
    assert plan.approx["rsqrt"].label == "rsqrt:wide" and plan.approx["rsqrt"].kwargs["hi"] == fx.max_abs
    assert PROFILE.approx["rsqrt"] == "newton"


def test_softmax_reuses_the_attention_approximations():
    from compiler.lowering.plans import softmax_exp

    plan = next(p for p in _program("softmax_middle").node_plans if p.node.op == "softmax")
    # uncalibrated: the exp attention picks for unknown exponents (plans.softmax_exp)
    assert {u.label for u in plan.approx.values()} == {"rowmax:tree", softmax_exp(PROFILE, None).label,
                                                         f"reciprocal:{PROFILE.approx['reciprocal']}"}
    assert plan.approx["rowmax"].kwargs["cols"] == 5


def test_batched_matmul_is_one_merged_product_step():
    steps = dict(_program("matmul_batched_broadcast").plans)["the_matmul"]
    assert [(s.prim, s.shape, s.instances) for s in steps] == [("matmul", (4, 5, 6), 6)]


def test_several_outputs_of_any_shape_print_one_marker_each():
    g = one_op("softmax", [(S, (2, 3, 4))], {"axis": -1}, extra_outputs=2)
    text, _ = render_program(lower(g, PROFILE))
    assert "'MPCVIT_OUT %s %s'" in text and "'MPCVIT_OUT1 %s %s'" in text and "'MPCVIT_OUT2 %s %s'" in text
    assert text.count("width = 12") == 3  # each image's [3, 4] slice, flattened


def test_argmax_needs_batch_by_classes_output_zero():
    g = one_op("softmax", [(S, (2, 3, 4))], {"axis": -1})
    with pytest.raises(CompileError, match="--reveal argmax: output 'y' has shape \\(2, 3, 4\\).*--reveal logits"):
        lower(g, PROFILE, reveal="argmax")
    flat = one_op("softmax", [(S, (2, 4))], {"axis": -1})
    assert "mpcvit_argmax_rows" in render_program(lower(flat, PROFILE, reveal="argmax"))[0]


def test_outputs_must_keep_the_batch_axis():
    g = one_op("reduce_max", [(S, (2, 3, 4))], {"axes": [0, 2], "keepdims": True})
    with pytest.raises(CompileError, match="output 'y' has shape \\(1, 3, 1\\): its first axis must be the batch"):
        lower(g, PROFILE)


def test_where_with_a_secret_condition_is_one_line_naming_the_node():
    g = one_op("where", [(S, (2, 3)), (S, (2, 3)), (S, (2, 3))])
    with pytest.raises(CompileError, match="where node 'the_where': its condition 'in0_0' is secret; only a "
                                           "compile-time \\(public\\) condition"):
        lower(g, PROFILE)


def test_matmul_of_a_vector_is_one_line_naming_the_node():
    g = one_op("matmul", [(S, (2, 3, 4)), ("param", np.ones((4, 5)))])
    g.values["in0_1"].shape, g.values["in0_1"].data = (4,), np.ones(4)
    with pytest.raises(CompileError, match="matmul node 'the_matmul': operands \\(2, 3, 4\\) @ \\(4,\\) need"):
        lower(g, PROFILE)


@pytest.mark.parametrize("op,choice,exact", [("sqrt", "newton", np.sqrt), ("rsqrt", "wide", lambda x: 1 / np.sqrt(x))])
def test_generic_sqrt_and_rsqrt_are_accurate_over_the_whole_comparison_range(op, choice, exact):
    """The generic nodes' range: every positive value a comparison may consume (not only variances)."""
    approx = get(op, choice)
    (lo, hi), stated = approx.bounds(eps=LSB, hi=fx.max_abs)
    x = np.unique(fx.encode(np.geomspace(lo, hi - LSB, 200_001)))
    got, want = fx.decode(approx.run(x, fx, eps=LSB, hi=fx.max_abs)), exact(fx.decode(x))
    assert np.max(np.abs(got - want)) <= stated <= 2.5e-3
    large = fx.decode(x) > 1000  # relative precision kept where y = 1/√x has few significant bits
    assert np.max(np.abs(got - want)[large] / want[large]) < 2e-3


def test_infinite_constant_is_one_line_naming_it():
    g = one_op("add", [(S, (2, 3)), ("param", np.array([0.0, -np.inf, 1.0]))])
    with pytest.raises(CompileError, match="constant 'in0_1' of node 'the_add' \\(add\\) holds inf or NaN.*-1e4"):
        lower(g, PROFILE)


def test_exp_beyond_the_fixed_point_range_is_a_range_error_naming_the_tensor():
    program = _program("exp")
    x = np.full(program.graph.values["x"].shape, 10.0)  # e^10 = 22026 > 2^(k-f-1) = 16384
    with pytest.raises(FixedPointRangeError, match="tensor 'y' \\(exp 'the_exp'\\) reaches"):
        execute(program, {"x": x})


def test_quantised_helper_is_exact_in_fixed_point():
    x = quantised(np.random.default_rng(0).uniform(-3, 3, 100))
    assert np.array_equal(fx.decode(fx.encode(x)), x)
