"""An ONNX graph that matches no ViT pattern compiles through the general lowerings: secret×secret batched MatMul,
Softmax over a middle axis, ReduceMean over tokens, Mul, Sqrt, a secret Div and Erf; the fixed-point reference
agrees with onnxruntime within the stated bound, and MP-SPDZ (when present) with the reference."""
from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from onnx import helper

from compiler.approx import get
from compiler.backend import emit
from compiler.frontend import load_onnx
from compiler.lowering import get_profile, lower
from compiler.passes import run_passes
from compiler.reference import execute
from onnx_fixtures import onnx_graph

TOKENS, DIM = 4, 6


def _model(tmp_path):
    nodes = [
        helper.make_node("Transpose", ["x"], ["xt"], perm=[0, 2, 1]),
        helper.make_node("MatMul", ["x", "xt"], ["s"]),  # [2, 4, 4], secret × secret
        helper.make_node("Softmax", ["s"], ["p"], axis=1),  # over the query axis: not the attention pattern
        helper.make_node("MatMul", ["p", "x"], ["o"]),
        helper.make_node("ReduceMean", ["o"], ["m"], axes=[1], keepdims=0),  # opset 17: axes attribute
        helper.make_node("Mul", ["m", "m"], ["q"]),
        helper.make_node("Add", ["q", "one"], ["q1"]),
        helper.make_node("Sqrt", ["q1"], ["r"]),
        helper.make_node("Div", ["m", "r"], ["d"]),  # secret divisor r ≥ 1
        helper.make_node("Erf", ["d"], ["y"]),
    ]
    return onnx_graph(tmp_path / "generic.onnx", nodes, [2, TOKENS, DIM], "y", [2, DIM],
                      [("one", np.array(1.0, np.float32))])


def _compiled(tmp_path, protocol="replicated-ring"):
    path = _model(tmp_path)
    graph = run_passes(load_onnx(path, batch=2))
    program = lower(graph, get_profile(protocol), name="generic")
    x = np.random.default_rng(3).uniform(-1, 1, (2, TOKENS, DIM))
    return path, program, x


def test_generic_onnx_graph_compiles_and_matches_onnxruntime(tmp_path):
    path, program, x = _compiled(tmp_path)
    assert {"matmul", "softmax", "reduce_mean", "mul", "sqrt", "div", "erf"} <= set(program.graph.op_counts())
    got = execute(program, {program.graph.inputs[0]: x}).outputs[program.graph.outputs[0]]
    want = ort.InferenceSession(str(path)).run(None, {"x": x.astype(np.float32)})[0]
    profile = program.profile
    exp_bound = get("exp", profile.approx["exp"]).max_abs_error
    rec = get("reciprocal", profile.approx["reciprocal"])
    softmax = (1 + TOKENS) * exp_bound + rec.bounds(**rec.with_params({"lo": 1.0, "hi": float(TOKENS)}))[1]
    # p is off by ≤ softmax per entry; o = p @ x sums TOKENS of them times |x| ≤ 1; the mean keeps that; d = m / r
    # with r = sqrt(m² + 1) ≥ 1 has |∂d/∂m| ≤ 1; erf's slope ≤ 2/√π; plus erf's own bound and a few LSBs per step
    tolerance = 2 / np.sqrt(np.pi) * TOKENS * softmax + get("erf", profile.approx["erf"]).max_abs_error + 1e-3
    err = np.max(np.abs(got - want))
    print(f"max |reference - onnxruntime| = {err:.3g} (stated {tolerance:.3g})")
    assert err <= tolerance


@pytest.mark.mpspdz
def test_generic_onnx_graph_runs_under_mpspdz(mpspdz, tmp_path):
    from compiler.runtime.runner import run

    _, program, x = _compiled(tmp_path)
    emit(program, tmp_path / "out", client_images=x)
    expected = execute(program, {program.graph.inputs[0]: x}).outputs[program.graph.outputs[0]]
    result = run(tmp_path / "out", mpspdz=mpspdz, log=lambda _: None)
    # probabilistic truncation: exp:limit's squarings amplify one LSB up to 2^8-fold in the softmax
    # (tests/test_approx_mpspdz.py), summed over TOKENS in p @ x; the rest adds a few LSBs
    assert np.max(np.abs(result.logits - expected)) <= (TOKENS * 2 ** 9 + 64) * 2.0 ** -16
