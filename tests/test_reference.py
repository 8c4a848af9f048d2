"""Reference executor: exact ring arithmetic, the same truncations as MPC, range checks, and accuracy against
numpy / onnxruntime."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

import tiny_vit_ir
from compiler.approx import REGISTRY
from compiler.errors import FixedPointRangeError, UserError
from compiler.fixedpoint import FixedPoint
from compiler.lowering import get_profile, lower
from compiler.reference import execute, exact_int_matmul


def test_exact_int_matmul_is_the_ring_product():
    rng = np.random.default_rng(0)
    for bits, k in ((20, 7), (40, 300), (62, 5)):
        a = rng.integers(-2 ** bits, 2 ** bits, (3, 4, k), dtype=np.int64)
        b = rng.integers(-2 ** 30, 2 ** 30, (3, k, 5), dtype=np.int64)
        exact = np.array([[[sum(int(a[h, i, j]) * int(b[h, j, m]) for j in range(k)) for m in range(5)]
                           for i in range(4)] for h in range(3)], dtype=object)
        ring = ((exact + 2 ** 63) % 2 ** 64 - 2 ** 63).astype(np.int64)  # wraps like Z_2^64
        assert np.array_equal(exact_int_matmul(a, b), ring)


def _run(batch=3, kinds=tiny_vit_ir.KINDS, protocol="replicated-ring", seed=1, scale=1.0, **approx):
    g = tiny_vit_ir.build(batch=batch, kinds=kinds)
    prog = lower(g, get_profile(protocol, approx=approx or None))
    x = np.random.default_rng(seed).uniform(-1, 1, (batch, 1, 8, 8)) * scale
    return g, prog, x, execute(prog, {"image": x})


def test_float_path_is_the_model_and_fixed_point_is_close():
    g, prog, x, res = _run()
    truth = tiny_vit_ir.forward(g, x)
    # the IR semantics, independently: both float64, same ops in another order (~1e-15 relative on logits ~1)
    assert np.allclose(res.float_outputs["logits"], truth, rtol=0, atol=1e-9)
    err = np.abs(res.outputs["logits"] - truth).max()
    assert 1e-5 < err < 0.02  # fixed point is not exact, and close
    assert (res.outputs["logits"].argmax(1) == truth.argmax(1)).all()
    assert [r.op for r in res.per_node][:3] == ["linear", "layout", "add"]
    assert all(r.max_abs_error < 0.05 for r in res.per_node)


def test_fixed_point_follows_the_templates_step_by_step():
    """Attention of one softmax head recomputed from the FixedPoint primitives in the template's order."""
    g, prog, x, res = _run(batch=1, kinds=("softmax",), exp="limit", reciprocal="newton")
    fx = FixedPoint(16, 31)
    node = next(n for n in g.nodes if n.op == "attention")
    head = node.attrs["heads"][0]
    qkv = res.ints["qkv"][0]
    q, k, v = (qkv[:, head[c]] for c in ("q_cols", "k_cols", "v_cols"))
    s = fx.trunc(q @ k.T)
    e = REGISTRY["exp"]["limit"].run(s - s.max(-1, keepdims=True), fx)
    # r = 2^q/sum with 2^q ~ sqrt(2·1·5) (plans.softmax_scale); the product's truncation by f + q divides it out;
    # two segments per octave, the series without a final Newton step (plans.softmax_uses)
    r = REGISTRY["reciprocal"]["newton"].run(e.sum(-1), fx, lo=1.0, hi=5.0, shift=1, per_octave=2, final=False)
    assert np.array_equal(res.ints["attn"][0], fx.trunc(fx.trunc(e * r[:, None], 17) @ v))


def test_layernorm_and_linear_truncate_once_per_product():
    g, prog, x, res = _run(batch=2, rsqrt="newton")
    fx = FixedPoint(16, 31)
    h0 = res.ints["h0"]
    gamma, beta = (fx.encode(g.values[n].data) for n in ("ln1_g", "ln1_b"))
    diff = h0 - fx.mul_public(h0.sum(-1), 1 / 16)[..., None]
    var = fx.mul_public(fx.mul(diff, diff).sum(-1), 1 / 16) + round(1e-5 * 2 ** 16)
    inv = REGISTRY["rsqrt"]["newton"].run(var, fx)
    assert np.array_equal(res.ints["ln1"], fx.mul(fx.mul(diff, gamma), inv[..., None]) + beta)
    w, b = fx.encode(g.values["w_qkv"].data), fx.encode(g.values["b_qkv"].data)
    assert np.array_equal(res.ints["qkv"], fx.trunc(res.ints["ln1"] @ w) + b)


def test_values_outside_the_range_name_the_tensor():
    with pytest.raises(FixedPointRangeError, match=r"tensor 'ln1 \(layernorm variance\)'.*\|v\| < 16384"):
        _run(scale=3e3)


def test_bad_inputs_are_user_errors():
    g, prog, x, _ = _run(batch=2)
    with pytest.raises(UserError, match=r"compiled for \(2, 1, 8, 8\).*--batch 3"):
        execute(prog, {"image": np.zeros((3, 1, 8, 8))})
    with pytest.raises(UserError, match="input 'image' is missing"):
        execute(prog, {})


def test_vit_7_4_32_sized_model_runs_a_batch_in_seconds():
    """7 layers' worth of width (dim 256, 4 heads, 65 tokens, MLP 512) on 32 images, one layer deep."""
    g = tiny_vit_ir.build(batch=32, image=32, patch=4, dim=256, hidden=512, classes=10)
    prog = lower(g, get_profile("replicated-ring"))
    x = np.random.default_rng(0).uniform(-1, 1, (32, 1, 32, 32))
    start = time.process_time()  # CPU time (the executor runs one BLAS thread): wall time follows machine load
    res = execute(prog, {"image": x})
    per_layer = time.process_time() - start
    assert per_layer * 7 < 30, f"{per_layer:.2f} s CPU per layer"
    assert np.abs(res.outputs["logits"] - res.float_outputs["logits"]).max() < 0.1


@pytest.fixture(scope="module")
def onnx_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("onnx")


@pytest.mark.parametrize("dynamo", [False, True])
def test_timm_vit_matches_onnxruntime_on_200_inputs(onnx_dir, dynamo):
    onnx_fixtures = pytest.importorskip("onnx_fixtures")
    from compiler.api import onnxruntime_logits
    from compiler.frontend import load_onnx
    from compiler.passes import run_passes

    path = onnx_fixtures.timm_vit(onnx_dir, dynamo, dynamic_batch=not dynamo)
    batch = 1 if dynamo else 200  # the dynamo exporter fixes the batch to 1
    prog = lower(run_passes(load_onnx(path, batch=batch)), get_profile("replicated-ring"))
    x = np.random.default_rng(0).standard_normal((200, 3, 32, 32))
    name, out = prog.graph.inputs[0], prog.graph.outputs[0]
    ours = np.concatenate([execute(prog, {name: x[i:i + batch]}).outputs[out] for i in range(0, 200, batch)])
    ort = onnxruntime_logits(path, x)
    assert np.abs(ours - ort).max() <= 0.05
    assert (ours.argmax(1) == ort.argmax(1)).all()


def test_digits_like_mixed_kinds_model_matches_onnxruntime(onnx_dir):
    onnx_fixtures = pytest.importorskip("onnx_fixtures")
    from compiler.api import onnxruntime_logits
    from compiler.frontend import load_onnx
    from compiler.passes import run_passes

    path = onnx_fixtures.tiny_mpcvit(onnx_dir, (("softmax", "softmax", "relu_softmax", "scaling"),
                                                ("scaling", "softmax", "relu_softmax", "relu_softmax")),
                                     ("gelu", "relu"), grouping="index")
    graph = run_passes(load_onnx(path, batch=1))
    kinds = [h["kind"] for n in graph.nodes if n.op == "attention" for h in n.attrs["heads"]]
    assert set(kinds) == {"softmax", "relu_softmax", "scaling"}
    prog = lower(graph, get_profile("replicated-ring"))
    x = np.random.default_rng(0).standard_normal((200, 3, 16, 16))
    ours = np.concatenate([execute(prog, {graph.inputs[0]: x[i:i + 1]}).outputs[graph.outputs[0]]
                           for i in range(200)])
    ort = onnxruntime_logits(path, x)
    assert np.abs(ours - ort).max() <= 0.05
    assert (ours.argmax(1) == ort.argmax(1)).all()
