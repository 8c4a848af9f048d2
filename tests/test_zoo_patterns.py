"""The pattern passes issue 8 adds, each on the zoo model that needs it: the pattern fires (IR op counts after
``run_passes``) and the float IR evaluation before and after the pass agree (``compiler.ir_eval``)."""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
from scipy.special import erf
from torch import nn

from compiler.backend.render import render_program
from compiler.frontend import load_onnx
from compiler.ir import Graph
from compiler.ir_eval import evaluate
from compiler.lowering import get_profile, lower
from compiler.approx import REGISTRY
from compiler.passes import (PIPELINE, compose_layouts, fold_channel_affine, fuse_attention, fuse_gelu_tanh,
                             mean_as_sum, norm_heads_on_tokens, permutations_after_linear, run_passes,
                             weights_before_layouts)
from compiler.passes.patterns import TANH_GELU_GAP
from compiler.reference import execute
from onnx_fixtures import apply_kind, export, run_onnxruntime, shared_dir
from test_passes import make_graph
from zoo_models import export_zoo, random_inputs, tolerance

RNG = np.random.default_rng(3)


@pytest.fixture(scope="module")
def zoo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = shared_dir(tmp_path_factory) / "zoo"
    path.mkdir(exist_ok=True)
    return path


def feeds_for(graph: Graph, image: np.ndarray) -> dict[str, np.ndarray]:
    return {graph.inputs[0]: image}


def pipeline_checking(graph: Graph, target: Callable[[Graph], Graph], image: np.ndarray) -> tuple[Graph, dict, dict]:
    """Run the whole pipeline; around ``target`` compare the float evaluation before and after it. Returns the
    final graph and the op counts before and after ``target``. Tolerance: both sides are float64 evaluations of
    the same arithmetic regrouped (weights multiplied out), so only rounding differs."""
    counts: list[dict[str, int]] = []
    for step in PIPELINE:
        if step is target:
            before = evaluate(copy.deepcopy(graph), feeds_for(graph, image))
            counts.append(graph.op_counts())
            graph = step(graph)
            counts.append(graph.op_counts())
            after = evaluate(graph, feeds_for(graph, image))
            for b, a in zip(before.values(), after.values()):
                np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-9)
        else:
            graph = step(graph)
    assert counts, f"{target.__name__} is not in the pipeline"
    return graph, counts[0], counts[1]


def test_layerscale_folds_into_the_linear_weights(zoo_dir: Path) -> None:
    path = export_zoo("vit_layerscale", "dynamo", zoo_dir)
    image = random_inputs(1)
    graph, before, after = pipeline_checking(load_onnx(path), fold_channel_affine, image)
    # two LayerScale muls per block (attention and MLP branches), two blocks; the GeLU's x * (...) muls remain
    assert before["mul"] - after["mul"] == 4
    assert "mul" not in graph.op_counts() and graph.op_counts()["linear"] == 10
    np.testing.assert_allclose(evaluate(graph, feeds_for(graph, image))[graph.outputs[0]],
                               run_onnxruntime(path, image), atol=1e-4)  # float32 onnxruntime vs float64


def test_channel_affine_before_and_after_a_linear_folds_and_elsewhere_stays() -> None:
    w, b = RNG.standard_normal((4, 3)), RNG.standard_normal(3)
    c3, c4 = RNG.standard_normal(3), RNG.standard_normal((1, 1, 4))
    graph = make_graph({"x": (2, 5, 4)}, {"w": ("param", w), "b": ("param", b), "c3": ("param", c3),
                                           "c4": ("param", c4), "s": ("param", np.array([0.5]))},
                       [("mul", ["x", "c4"], "xs", (2, 5, 4), {}),       # before the linear: rows of W
                        ("add", ["xs", "c4"], "xa", (2, 5, 4), {}),      # before: b + c @ W
                        ("linear", ["xa", "w", "b"], "y", (2, 5, 3), {}),
                        ("mul", ["c3", "y"], "ys", (2, 5, 3), {}),       # after: columns of W and b
                        ("add", ["ys", "c3"], "ya", (2, 5, 3), {}),      # after: b + c
                        ("mul", ["ya", "ya"], "sq", (2, 5, 3), {}),      # secret x secret: not a channel op
                        ("mul", ["sq", "s"], "z", (2, 5, 3), {})],       # no linear next to it: stays
                       "z")
    feeds = {"x": RNG.standard_normal((2, 5, 4))}
    before = evaluate(copy.deepcopy(graph), feeds)["z"]
    graph = fold_channel_affine(graph)
    np.testing.assert_allclose(evaluate(graph, feeds)["z"], before, rtol=1e-12, atol=1e-12)
    assert graph.op_counts() == {"input": 1, "linear": 1, "mul": 2, "output": 1}


def test_relative_position_bias_stays_inside_the_attention_node(zoo_dir: Path) -> None:
    path = export_zoo("beit", "dynamo", zoo_dir)
    graph, before, after = pipeline_checking(load_onnx(path), fuse_attention, random_inputs(1))
    assert before["matmul"] == 2 and before["softmax"] == 1 and "matmul" not in after and "softmax" not in after
    (attention,) = [n for n in graph.nodes if n.op == "attention"]
    bias = graph.values[attention.inputs[3]]
    assert bias.shape == (1, 2, 17, 17) and bias.role == "param"
    assert attention.attrs["scale"] == 1.0  # folded into q; the bias is not scaled by it


class BiasedGroups(nn.Module):
    """Tokens [B, 6, 16] -> (token 0 of) attention with a learned bias [H, N, N] on the scores, heads 0 and 2
    ReLU-softmax and 1 and 3 softmax, each kind its own q/k/v chain (index_select of heads), concatenated and put
    back in order."""

    def __init__(self, dim: int = 16, heads: int = 4, tokens: int = 6) -> None:
        super().__init__()
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.bias = nn.Parameter(torch.randn(heads, tokens, tokens))
        self.heads = heads
        self.register_buffer("relu_heads", torch.tensor([0, 2]), persistent=False)
        self.register_buffer("soft_heads", torch.tensor([1, 3]), persistent=False)
        self.register_buffer("inverse", torch.tensor([0, 2, 1, 3]), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        parts = []
        for kind, index in (("relu_softmax", self.relu_heads), ("softmax", self.soft_heads)):
            s = q.index_select(1, index) @ k.index_select(1, index).transpose(-2, -1) * 0.5
            s = s + self.bias.index_select(0, index)
            parts.append(apply_kind(kind, s, 0.01) @ v.index_select(1, index))
        out = torch.cat(parts, 1).index_select(1, self.inverse)
        return self.proj(out.transpose(1, 2).reshape(B, N, C))[:, 0]


def test_biases_of_kind_groups_merge_into_one_attention(tmp_path: Path) -> None:
    torch.manual_seed(0)
    path = export(BiasedGroups(), torch.randn(1, 6, 16), tmp_path / "biased.onnx", dynamo=False, opset=17,
                  dynamic_batch=True)
    graph = run_passes(load_onnx(path, batch=2))  # the [1, H, N, N] bias broadcasts over the images
    assert graph.op_counts() == {"input": 1, "linear": 2, "attention": 1, "layout": 1, "output": 1}
    (attention,) = [n for n in graph.nodes if n.op == "attention"]
    assert [h["kind"] for h in attention.attrs["heads"]] == ["relu_softmax", "softmax", "relu_softmax", "softmax"]
    x = RNG.standard_normal((2, 6, 16))
    expected = run_onnxruntime(path, x)
    np.testing.assert_allclose(evaluate(graph, {graph.inputs[0]: x})[graph.outputs[0]], expected, atol=1e-4)
    # the fixed-point reference and the template: the bias is added per head slot (kinds grouped: 0, 2, 1, 3)
    program = lower(graph, get_profile("replicated-ring"))
    got = execute(program, {graph.inputs[0]: x}).outputs[graph.outputs[0]]
    np.testing.assert_allclose(got, expected, atol=tolerance(expected))
    source, _ = render_program(program)
    offsets = [h * 36 for h in (0, 2, 1, 3) for _ in range(2)]  # [1, 4, 6, 6] bias: each head's 6x6 block, twice
    assert f".get_vector(offset, 36).v for offset in {offsets}]" in source


def test_qk_norm_feeds_the_attention_pattern(zoo_dir: Path) -> None:
    path = export_zoo("vit_qk_norm", "dynamo", zoo_dir)
    image = random_inputs(1)
    graph, before, after = pipeline_checking(load_onnx(path), norm_heads_on_tokens, image)
    assert before["layernorm"] == after["layernorm"] == 9  # per block norm1, q_norm, k_norm, norm2; final norm
    counts = graph.op_counts()
    assert counts["attention"] == 2 and not {"matmul", "softmax", "scale"} & set(counts)
    # 1/sqrt(d) went into q_norm's gamma and beta: no truncation of the scores
    assert all(n.attrs["scale"] == 1.0 for n in graph.nodes if n.op == "attention")
    np.testing.assert_allclose(evaluate(graph, feeds_for(graph, image))[graph.outputs[0]],
                               run_onnxruntime(path, image), atol=1e-4)  # float32 onnxruntime vs float64


def test_token_mean_is_a_prescaled_sum_with_its_scale_folded_into_the_head(zoo_dir: Path) -> None:
    path = export_zoo("sdpa_block", "dynamo", zoo_dir)
    image = random_inputs(1)
    graph, before, after = pipeline_checking(load_onnx(path), mean_as_sum, image)
    assert before["reduce_mean"] == 1 and "reduce_mean" not in after
    counts = graph.op_counts()
    assert counts["reduce_sum"] == 1 and "scale" not in counts  # 2^4/16 = 1 in the head's weights
    (head,) = [n for n in graph.nodes if n.outputs == graph.outputs]
    assert head.op == "linear" and graph.producer(head.inputs[0]).op == "reduce_sum"
    assert graph.producer(head.inputs[0]).attrs["shift"] == 4  # the sum pre-scaled to the mean's magnitude
    np.testing.assert_allclose(evaluate(graph, feeds_for(graph, image))[graph.outputs[0]],
                               run_onnxruntime(path, image), atol=1e-4)  # float32 onnxruntime vs float64


def test_token_mean_before_a_layernorm_stays_a_mean(zoo_dir: Path) -> None:
    """timm's global_pool='avg' normalises the mean (fc_norm) before the head: nothing to fold the 1/N into, so the
    mean keeps its own lowering (a local sum and one public scale)."""
    graph = run_passes(load_onnx(export_zoo("vit_avg", "dynamo", zoo_dir)))
    (mean,) = [n for n in graph.nodes if n.op == "reduce_mean"]
    assert mean.attrs["axes"] == [1] and "reduce_sum" not in graph.op_counts()
    assert graph.consumers(mean.outputs[0])[0].op == "layernorm"


# the cube as the frontend writes Pow 3, and as TorchScript writes x * (x * x)
@pytest.mark.parametrize("cube_order", ["square_first", "x_first"])
def test_decomposed_tanh_gelu_becomes_gelu_tanh(cube_order: str) -> None:
    shape = (2, 5, 8)
    cube_inputs = ["sq", "x"] if cube_order == "square_first" else ["x", "sq"]
    graph = make_graph({"x": shape}, {"one": ("public", np.array(1.0))},
                       [("mul", ["x", "x"], "sq", shape, {}),
                        ("mul", cube_inputs, "cube", shape, {}),
                        ("scale", ["cube"], "t", shape, {"factor": 0.044714998453855515}),  # float32 constants
                        ("add", ["x", "t"], "inner", shape, {}),
                        ("scale", ["inner"], "pre", shape, {"factor": 0.7978845834732056}),
                        ("tanh", ["pre"], "th", shape, {}),
                        ("add", ["one", "th"], "p1", shape, {}),
                        ("mul", ["x", "p1"], "m", shape, {}),
                        ("scale", ["m"], "y", shape, {"factor": 0.5})], "y")
    feeds = {"x": 3 * RNG.standard_normal(shape)}
    before = evaluate(copy.deepcopy(graph), feeds)["y"]
    graph = fuse_gelu_tanh(graph)
    assert graph.op_counts() == {"input": 1, "gelu": 1, "output": 1}
    assert graph.nodes[1].attrs == {"approximate": "tanh"}
    # the exporter's float32 constants against the exact sqrt(2/pi) and 0.044715 of the fused node's semantic
    np.testing.assert_allclose(evaluate(graph, feeds)["y"], before, rtol=1e-6, atol=1e-6)


def test_gelu_approximations_are_within_their_bound_plus_the_gap_of_the_tanh_gelu() -> None:
    """The GeLU approximations target the erf GeLU; against the tanh formula (a gelu node with approximate='tanh')
    their error is at most their own bound plus TANH_GELU_GAP, sampled over each one's whole domain in fixed
    point (every LSB step of f=16 would be 1M points: every 7th is dense enough for these smooth curves)."""
    fx = get_profile("replicated-ring").fx
    grid = np.linspace(-20, 20, 400001)
    gap = np.abs(0.5 * grid * (1 + erf(grid / np.sqrt(2))) - gelu_tanh(grid)).max()
    assert 4.7e-4 < gap <= TANH_GELU_GAP
    for choice, approx in REGISTRY["gelu"].items():
        lo, hi = approx.domain
        x_int = np.arange(fx.encode(lo), fx.encode(hi) + 1, 7, dtype=np.int64)
        err = np.abs(fx.decode(approx.run(x_int, fx)) - gelu_tanh(fx.decode(x_int))).max()
        assert err <= approx.max_abs_error + TANH_GELU_GAP, choice


def gelu_tanh(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))


def test_batchnorm_after_a_conv_folds_through_the_layout_into_the_linear() -> None:
    """The frontend's Conv: linear on patches [B, L, Cout], a layout back to [B, Cout, H, W]; BatchNormalization:
    mul and add by [Cout, 1, 1] weights. Both fold into the linear; the layout stays."""
    w, b = RNG.standard_normal((6, 3)), RNG.standard_normal(3)
    back = np.arange(2 * 4 * 3).reshape(2, 4, 3).transpose(0, 2, 1).reshape(2, 3, 2, 2)  # [B, L=4, C] -> NCHW
    graph = make_graph({"x": (2, 4, 6)}, {"w": ("param", w), "b": ("param", b),
                                           "w2": ("param", RNG.standard_normal((3, 3))),
                                           "scale": ("param", RNG.standard_normal((3, 1, 1))),
                                           "shift": ("param", RNG.standard_normal((3, 1, 1))),
                                           "pixel": ("param", RNG.standard_normal((1, 2, 2)))},
                       [("linear", ["x", "w", "b"], "y", (2, 4, 3), {}),
                        ("layout", ["y"], "nchw", (2, 3, 2, 2), {"index": back}),
                        ("mul", ["nchw", "scale"], "scaled", (2, 3, 2, 2), {}),
                        ("add", ["shift", "scaled"], "bn", (2, 3, 2, 2), {}),
                        ("relu", ["bn"], "r", (2, 3, 2, 2), {}),
                        ("layout", ["r"], "r_flat", (2, 4, 3), {"index": back.transpose(0, 2, 3, 1).reshape(2, 4, 3)}),
                        ("linear", ["r_flat", "w2", "b"], "y2", (2, 4, 3), {}),
                        ("layout", ["y2"], "nchw2", (2, 3, 2, 2), {"index": back}),
                        ("mul", ["nchw2", "pixel"], "z", (2, 3, 2, 2), {})],  # per pixel, not per channel: stays
                       "z")
    feeds = {"x": RNG.standard_normal((2, 4, 6))}
    before = evaluate(copy.deepcopy(graph), feeds)["z"]
    graph = fold_channel_affine(graph)
    np.testing.assert_allclose(evaluate(graph, feeds)["z"], before, rtol=1e-12, atol=1e-12)
    assert graph.op_counts() == {"input": 1, "linear": 2, "layout": 3, "relu": 1, "mul": 1, "output": 1}


@pytest.mark.parametrize("name", ["nn_multihead_attention", "nn_transformer_encoder_layer"])
def test_sequence_first_attention_matches_once_its_transposes_pass_the_linears(name: str, zoo_dir: Path) -> None:
    path = export_zoo(name, "dynamo", zoo_dir)
    image = random_inputs(1)
    graph, _, _ = pipeline_checking(load_onnx(path), permutations_after_linear, image)
    counts = graph.op_counts()
    assert counts["attention"] == 1 and not {"matmul", "softmax"} & set(counts)
    np.testing.assert_allclose(evaluate(graph, feeds_for(graph, image))[graph.outputs[0]],
                               run_onnxruntime(path, image), atol=1e-4)  # float32 onnxruntime vs float64


def test_row_permutations_move_past_linears_and_cancel_but_row_selections_stay() -> None:
    to_seq = np.arange(2 * 5 * 4).reshape(2, 5, 4).transpose(1, 0, 2)  # [B, N, C] -> [N, B, C]
    back = np.arange(2 * 5 * 3).reshape(5, 2, 3).transpose(1, 0, 2)
    first_token = np.arange(2 * 5 * 3).reshape(2, 5, 3)[:, :1]
    graph = make_graph({"x": (2, 5, 4)}, {"w": ("param", RNG.standard_normal((4, 3))),
                                           "w2": ("param", RNG.standard_normal((3, 2)))},
                       [("layout", ["x"], "seq", (5, 2, 4), {"index": to_seq}),
                        ("linear", ["seq", "w"], "y", (5, 2, 3), {}),
                        ("layout", ["y"], "y_b", (2, 5, 3), {"index": back}),
                        ("relu", ["y_b"], "r", (2, 5, 3), {}),
                        ("layout", ["r"], "cls", (2, 1, 3), {"index": first_token}),
                        ("linear", ["cls", "w2"], "z", (2, 1, 2), {})], "z")
    feeds = {"x": RNG.standard_normal((2, 5, 4))}
    before = evaluate(copy.deepcopy(graph), feeds)["z"]
    graph = compose_layouts(permutations_after_linear(graph))
    np.testing.assert_allclose(evaluate(graph, feeds)["z"], before, rtol=1e-12, atol=1e-12)
    assert [n.op for n in graph.nodes] == ["input", "linear", "relu", "layout", "linear", "output"]


class WindowAttention(nn.Module):
    """Swin's shape on tokens [B, 16, 8] (a 4x4 grid): 2x2 windows gathered from the grid, qkv on the windows'
    tokens, a relative-position bias per head and a mask per window added through a [B, windows, H, N, N] view,
    the windows laid back onto the grid; token 0 out."""

    def __init__(self, dim: int = 8, heads: int = 2) -> None:
        super().__init__()
        self.qkv, self.proj, self.heads = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim), heads
        self.bias = nn.Parameter(torch.randn(heads, 4, 4))
        self.register_buffer("mask", torch.where(torch.rand(4, 4, 4) < 0.3, -100.0, 0.0), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, L, C = x.shape
        windows = x.view(B, 2, 2, 2, 2, C).permute(0, 1, 3, 2, 4, 5).reshape(B * 4, 4, C)
        q, k, v = self.qkv(windows).reshape(B * 4, 4, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        s = (q * (C // self.heads) ** -0.5) @ k.transpose(-2, -1) + self.bias
        s = (s.view(B, 4, self.heads, 4, 4) + self.mask[None, :, None]).view(B * 4, self.heads, 4, 4)
        out = (s.softmax(-1) @ v).transpose(1, 2).reshape(B * 4, 4, C)
        grid = self.proj(out).view(B, 2, 2, 2, 2, C).permute(0, 1, 3, 2, 4, 5).reshape(B, L, C)
        return grid[:, 0]


def test_window_attention_with_bias_and_mask_is_one_attention_node(tmp_path: Path) -> None:
    torch.manual_seed(0)
    path = export(WindowAttention(), torch.randn(1, 16, 8), tmp_path / "windows.onnx", dynamo=False, opset=17,
                  dynamic_batch=True)
    x = RNG.standard_normal((2, 16, 8))
    graph, _, _ = pipeline_checking(load_onnx(path, batch=2), weights_before_layouts, x)
    counts = graph.op_counts()
    assert counts["attention"] == 1 and not {"matmul", "softmax", "add", "scale"} & set(counts)
    (attention,) = [n for n in graph.nodes if n.op == "attention"]
    assert graph.values[attention.inputs[3]].shape == (8, 2, 4, 4)  # per window of each image: bias + mask
    assert attention.attrs["scale"] == 1.0  # folded into q's columns through the window row gather
    expected = run_onnxruntime(path, x)
    np.testing.assert_allclose(evaluate(graph, {graph.inputs[0]: x})[graph.outputs[0]], expected, atol=1e-4)
    program = lower(graph, get_profile("dealer"))
    np.testing.assert_allclose(execute(program, {graph.inputs[0]: x}).outputs[graph.outputs[0]], expected,
                               atol=tolerance(expected))
    render_program(program)  # the template takes the windows as the attention's batch


def _is_gelu_tanh(graph: Graph) -> bool:
    return all(n.attrs.get("approximate") == "tanh" for n in graph.nodes if n.op == "gelu")


# model, exporter -> (IR op counts after the passes that show the fast paths fired, extra check)
NEEDS_GENERAL_FRONTEND = {
    ("swin", "dynamo"): ({"attention": 3, "matmul": 0, "softmax": 0, "scale": 0}, None),  # bias + shifted mask
    ("vit_gelu_tanh", "dynamo"): ({"gelu": 2, "tanh": 0, "mul": 0}, _is_gelu_tanh),  # Pow 3 decomposition
    ("vit_gelu_tanh", "torchscript"): ({"gelu": 2, "tanh": 0, "mul": 0}, _is_gelu_tanh),  # x * x * x
    ("levit", "dynamo"): ({"attention": 1, "mul": 0, "matmul": 0}, None),  # BatchNorms folded, q/k narrower than v
    ("nn_transformer_encoder_layer", "torchscript"): ({"attention": 1, "matmul": 0, "softmax": 0}, None),
}


@pytest.mark.parametrize("name, exporter", list(NEEDS_GENERAL_FRONTEND), ids="-".join)
def test_fast_paths_on_models_that_need_the_general_frontend(name: str, exporter: str, zoo_dir: Path) -> None:
    """Models that load through the general frontend (Pad, Mod, Tanh, Pow 3, Conv, BatchNormalization converters):
    the fast paths must still fire on them."""
    graph = load_onnx(export_zoo(name, exporter, zoo_dir))
    image = random_inputs(1)
    before = evaluate(copy.deepcopy(graph), feeds_for(graph, image))[graph.outputs[0]]
    graph = run_passes(graph)
    counts, check = NEEDS_GENERAL_FRONTEND[name, exporter]
    assert {op: graph.op_counts().get(op, 0) for op in counts} == counts
    assert check is None or check(graph)
    # float64 before and after every pass; the tolerance admits float32 constants becoming exact (0.044715)
    np.testing.assert_allclose(evaluate(graph, feeds_for(graph, image))[graph.outputs[0]], before, rtol=1e-6,
                               atol=1e-6)
