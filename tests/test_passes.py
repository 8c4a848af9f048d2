"""Pattern passes: each pass on a small graph (structure before/after, numerics preserved by ir_eval), and the
whole pipeline on timm and MPCViT-shaped exports against onnxruntime."""
from __future__ import annotations

import copy
import json
import time
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from onnx import helper

from compiler.frontend import load_onnx
from compiler.ir import Graph, Node, Value
from compiler.ir_eval import evaluate
from compiler.passes import (PIPELINE, compose_layouts, fold_layouts_into_linear, fold_scales, fuse_gelu, fuse_layernorm,
                             fuse_linear_chains, layout_into_input, linear_from_matmul, run_passes, scale_from_mul,
                             scales_after_layouts)
from onnx_fixtures import onnx_graph, run_onnxruntime, separate_projections, shared_dir, timm_vit, tiny_mpcvit

VIT_KINDS = {"input", "linear", "layout", "add", "scale", "layernorm", "attention", "gelu", "relu", "output"}
RNG = np.random.default_rng(0)


@pytest.fixture
def onnx_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return shared_dir(tmp_path_factory)


def make_graph(inputs: dict[str, tuple[int, ...]], consts: dict[str, tuple[str, np.ndarray]],
               nodes: list[tuple[str, list[str], str, tuple[int, ...], dict]], output: str) -> Graph:
    """Hand-built IR: ``nodes`` as (op, inputs, output, output shape, attrs)."""
    graph = Graph(inputs=list(inputs), outputs=[output])
    for name, shape in inputs.items():
        graph.add_value(Value(name, shape))
        graph.add_node(Node("input", [], [name], {"owner": 1}))
    for name, (role, data) in consts.items():
        graph.add_value(Value(name, data.shape, role, data))
    for op, ins, out, shape, attrs in nodes:
        graph.add_value(Value(out, shape))
        graph.add_node(Node(op, ins, [out], attrs, name=out))
    graph.add_node(Node("output", [output], []))
    return graph


def preserved(graph: Graph, step: Callable[[Graph], Graph]) -> Graph:
    """Run ``step`` and check it computes what the graph computed before, on random inputs (float64; the
    tolerance only admits float32 constants such as 1/sqrt(2) becoming exact)."""
    feeds = {name: RNG.standard_normal(graph.values[name].shape) for name in graph.inputs}
    for node in graph.nodes:  # an input whose layout already moved into the input writer takes the raw image
        if "image_shape" in node.attrs:
            feeds[node.outputs[0]] = RNG.standard_normal(node.attrs["image_shape"])
    before = evaluate(copy.deepcopy(graph), feeds)
    after_graph = step(graph)
    after = evaluate(after_graph, feeds)
    for b, a in zip(before.values(), after.values()):
        # float64 before and after a rewrite that reassociates (folded scales, composed weights): ~1e-15 relative
        # per op; 1e-6 is far above rounding and far below any real semantic change
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    return after_graph


def param(*shape: int) -> tuple[str, np.ndarray]:
    return "param", RNG.standard_normal(shape)


def public(value: float) -> tuple[str, np.ndarray]:
    return "public", np.array(value)


def test_scale_from_mul() -> None:
    graph = make_graph({"x": (2, 3)}, {"c": public(0.25)},
                       [("mul", ["c", "x"], "y", (2, 3), {}), ("relu", ["y"], "z", (2, 3), {})], "z")
    graph = preserved(graph, scale_from_mul)
    assert graph.op_counts() == {"input": 1, "scale": 1, "relu": 1, "output": 1}
    assert graph.nodes[1].attrs == {"factor": 0.25} and "c" not in graph.values


def test_linear_from_matmul_folds_the_bias() -> None:
    graph = make_graph({"x": (2, 3, 4)}, {"w": param(4, 5), "b": param(1, 1, 5)},
                       [("matmul", ["x", "w"], "m", (2, 3, 5), {}), ("add", ["b", "m"], "y", (2, 3, 5), {})], "y")
    graph = preserved(graph, linear_from_matmul)
    linear = graph.nodes[1]
    assert graph.op_counts() == {"input": 1, "linear": 1, "output": 1}
    assert linear.outputs == ["y"] and graph.values[linear.inputs[2]].shape == (5,)


def _transpose_index(shape: tuple[int, ...], perm: tuple[int, ...]) -> np.ndarray:
    return np.arange(int(np.prod(shape))).reshape(shape).transpose(perm)


def test_compose_layouts_merges_chains_and_drops_identities() -> None:
    graph = make_graph({"x": (2, 3, 4)}, {"cls": param(2, 1, 4)}, [
        ("layout", ["x"], "t", (2, 4, 3), {"index": _transpose_index((2, 3, 4), (0, 2, 1))}),
        ("layout", ["t"], "r", (2, 12), {"index": np.arange(24).reshape(2, 12)}),
        ("layout", ["r"], "back", (2, 3, 4), {"index": _transpose_index((2, 4, 3), (0, 2, 1))}),
        ("layout", ["cls", "back"], "cat", (2, 4, 4),  # class token prepended: [param, secret]
         {"index": np.concatenate([np.arange(8).reshape(2, 1, 4), 8 + np.arange(24).reshape(2, 3, 4)], axis=1)}),
        ("relu", ["cat"], "y", (2, 4, 4), {})], "y")
    graph = preserved(graph, compose_layouts)
    layouts = [n for n in graph.nodes if n.op == "layout"]
    assert len(layouts) == 1 and layouts[0].inputs == ["cls", "x"]


def test_scales_after_layouts() -> None:
    graph = make_graph({"x": (2, 3, 4)}, {}, [
        ("scale", ["x"], "s", (2, 3, 4), {"factor": 0.5}),
        ("layout", ["s"], "t", (2, 4, 3), {"index": _transpose_index((2, 3, 4), (0, 2, 1))}),
        ("layout", ["t"], "y", (2, 3, 4), {"index": _transpose_index((2, 4, 3), (0, 2, 1))})], "y")
    graph = preserved(graph, scales_after_layouts)
    assert [n.op for n in graph.nodes] == ["input", "layout", "layout", "scale", "output"]
    assert preserved(graph, compose_layouts).op_counts() == {"input": 1, "scale": 1, "output": 1}


def test_fold_layouts_into_linear_weights() -> None:
    reverse_cols = np.arange(2 * 3 * 5).reshape(2, 3, 5)[..., ::-1]
    pick_cols = np.arange(2 * 3 * 4).reshape(2, 3, 4)[..., [0, 2, 2]]
    graph = make_graph({"x": (2, 3, 4)}, {"w1": param(4, 5), "b1": param(5), "w2": param(3, 6)}, [
        ("linear", ["x", "w1", "b1"], "h", (2, 3, 5), {}),
        ("layout", ["h"], "hp", (2, 3, 5), {"index": reverse_cols}),  # after a linear: permute W's columns
        ("relu", ["hp"], "r", (2, 3, 5), {}),
        ("layout", ["x"], "xs", (2, 3, 3), {"index": pick_cols}),  # before a linear: scatter W's rows
        ("linear", ["xs", "w2"], "o", (2, 3, 6), {}),
        ("layout", ["r", "o"], "y", (2, 3, 11), {"index": np.concatenate(
            [np.arange(30).reshape(2, 3, 5), 30 + np.arange(36).reshape(2, 3, 6)], axis=-1)})], "y")
    graph = preserved(graph, fold_layouts_into_linear)
    assert graph.op_counts()["layout"] == 1  # the final concat is not a column selection of one input


def test_fold_scales_into_linear_and_merge() -> None:
    graph = make_graph({"x": (2, 4)}, {"w": param(4, 3), "b": param(3)}, [
        ("scale", ["x"], "s1", (2, 4), {"factor": 2.0}),
        ("scale", ["s1"], "s2", (2, 4), {"factor": 0.25}),
        ("linear", ["s2", "w", "b"], "h", (2, 3), {}),
        ("scale", ["h"], "y", (2, 3), {"factor": -3.0})], "y")
    graph = preserved(graph, fold_scales)
    assert graph.op_counts() == {"input": 1, "linear": 1, "output": 1}


def test_fold_layernorm_affine_into_the_linears_that_take_it() -> None:
    """γ, β move into both projections of ln1 (W[j, :]·γ_j, b + β @ W); ln2, whose output is also added to the
    residual, keeps them. The lowered ln1 then skips its product with γ."""
    from compiler.lowering import get_profile, lower
    from compiler.passes import fold_layernorm_affine

    graph = make_graph({"x": (2, 5, 4)}, {"g1": param(4), "b1": param(4), "wq": param(4, 3), "bq": param(3),
                                          "wk": param(4, 3), "g2": param(3), "b2": param(3)}, [
        ("layernorm", ["x", "g1", "b1"], "ln1", (2, 5, 4), {"eps": 1e-5}),
        ("linear", ["ln1", "wq", "bq"], "q", (2, 5, 3), {}),
        ("linear", ["ln1", "wk"], "k", (2, 5, 3), {}),
        ("add", ["q", "k"], "qk", (2, 5, 3), {}),
        ("layernorm", ["qk", "g2", "b2"], "ln2", (2, 5, 3), {"eps": 1e-5}),
        ("add", ["ln2", "qk"], "y", (2, 5, 3), {})], "y")
    graph = preserved(graph, fold_layernorm_affine)
    ln1, ln2 = (next(n for n in graph.nodes if n.name == name) for name in ("ln1", "ln2"))
    assert np.array_equal(graph.values[ln1.inputs[1]].data, np.ones(4))
    assert np.array_equal(graph.values[ln1.inputs[2]].data, np.zeros(4))
    assert ln2.inputs[1:] == ["g2", "b2"]
    plans = {p.node.name: p for p in lower(graph, get_profile("replicated-ring")).node_plans}
    assert not plans["ln1"].params["affine"] and plans["ln2"].params["affine"]
    assert len(plans["ln2"].steps) == len(plans["ln1"].steps) + 1  # the product with γ


def test_fuse_linear_chains_mpcvit_plus() -> None:
    graph = make_graph({"x": (2, 3, 4)}, {"w1": param(4, 8), "b1": param(8), "w2": param(8, 4), "b2": param(4)}, [
        ("linear", ["x", "w1", "b1"], "h", (2, 3, 8), {}),
        ("linear", ["h", "w2", "b2"], "o", (2, 3, 4), {}),
        ("relu", ["o"], "y", (2, 3, 4), {})], "y")
    graph = preserved(graph, fuse_linear_chains)
    assert graph.op_counts() == {"input": 1, "linear": 1, "relu": 1, "output": 1}
    assert graph.values[graph.nodes[1].inputs[1]].shape == (4, 4)
    bottleneck = make_graph({"x": (2, 8)}, {"w1": param(8, 1), "w2": param(1, 8)}, [
        ("linear", ["x", "w1"], "h", (2, 1), {}), ("linear", ["h", "w2"], "y", (2, 8), {})], "y")
    assert fuse_linear_chains(bottleneck).op_counts()["linear"] == 2  # 8x8 would cost more than 8x1 + 1x8


def test_layout_into_input_sets_the_input_writer_attrs() -> None:
    im2col = np.arange(3 * 8 * 8).reshape(1, 3, 2, 4, 2, 4).transpose(0, 2, 4, 1, 3, 5).reshape(1, 4, 48)
    graph = make_graph({"img": (1, 3, 8, 8)}, {"w": param(48, 5)}, [
        ("layout", ["img"], "patches", (1, 4, 48), {"index": im2col}),
        ("linear", ["patches", "w"], "y", (1, 4, 5), {})], "y")
    feeds = {"img": RNG.standard_normal((1, 3, 8, 8))}
    before = evaluate(copy.deepcopy(graph), feeds)["y"]
    graph = layout_into_input(graph)
    node = graph.nodes[0]
    assert graph.op_counts() == {"input": 1, "linear": 1, "output": 1}
    assert node.attrs["image_shape"] == (1, 3, 8, 8) and np.array_equal(node.attrs["layout_index"], im2col)
    assert graph.values["img"].shape == (1, 4, 48)
    # float64: the same products, only the gather moved to the input writer (reassociation-free: ~1e-15)
    np.testing.assert_allclose(evaluate(graph, feeds)["y"], before, rtol=1e-12, atol=1e-12)


def test_fuse_layernorm_decomposed_with_its_eps(onnx_dir: Path) -> None:
    path = tiny_mpcvit(onnx_dir, (("softmax",) * 4,), ("gelu",), opset=13)  # LayerNormalization needs opset 17
    graph = load_onnx(path)
    assert "layernorm" not in graph.op_counts()
    graph = preserved(scale_from_mul(graph), fuse_layernorm)
    norms = [n for n in graph.nodes if n.op == "layernorm"]
    assert len(norms) == 3 and "sqrt" not in graph.op_counts() and "reduce_mean" not in graph.op_counts()
    assert sorted(round(n.attrs["eps"], 8) for n in norms) == [1e-5, 1e-5, 1e-3]


def test_fuse_gelu_exporter_variants(onnx_dir: Path, tmp_path: Path) -> None:
    graph = preserved(scale_from_mul(load_onnx(timm_vit(onnx_dir, dynamo=False, opset=13))), fuse_gelu)
    assert graph.op_counts()["gelu"] == 2 and "erf" not in graph.op_counts()
    # 0.5 applied to x first, erf argument as a multiplication by 1/sqrt(2)
    nodes = [helper.make_node("Mul", ["x", "half"], ["hx"]), helper.make_node("Mul", ["x", "rs2"], ["t"]),
             helper.make_node("Erf", ["t"], ["e"]), helper.make_node("Add", ["one", "e"], ["a"]),
             helper.make_node("Mul", ["a", "hx"], ["y"])]
    consts = [("half", np.float32(0.5)), ("rs2", np.float32(2 ** -0.5)), ("one", np.float32(1.0))]
    path = onnx_graph(tmp_path / "gelu.onnx", nodes, [2, 6], "y", [2, 6], consts)
    graph = preserved(scale_from_mul(load_onnx(path, batch=2)), fuse_gelu)
    assert graph.op_counts() == {"input": 1, "gelu": 1, "output": 1}


def _matches_onnxruntime(path: Path, graph: Graph, image: tuple[int, ...]) -> float:
    x = RNG.standard_normal(image).astype(np.float32)
    return float(np.abs(evaluate(graph, {graph.inputs[0]: x})[graph.outputs[0]] - run_onnxruntime(path, x)).max())


@pytest.mark.parametrize("dynamo,fused_attn", [(False, False), (True, False), (False, True)])
def test_timm_vit_pipeline(onnx_dir: Path, dynamo: bool, fused_attn: bool) -> None:
    path = timm_vit(onnx_dir, dynamo, None if dynamo else 14 if fused_attn else 13, fused_attn=fused_attn)
    graph = run_passes(load_onnx(path))
    counts = graph.op_counts()
    assert set(counts) <= VIT_KINDS
    assert counts["attention"] == 2 and counts["layernorm"] == 5 and counts["gelu"] == 2 and counts["linear"] == 10
    assert counts["layout"] == 2  # the class-token concat and the class-token pick
    attention = next(n for n in graph.nodes if n.op == "attention")
    assert attention.attrs["scale"] == 1.0 and attention.attrs["tokens"] == 65 and attention.attrs["head_dim"] == 16
    head = attention.attrs["heads"][2]
    assert head == {"kind": "softmax", "q_cols": list(range(32, 48)), "k_cols": list(range(96, 112)),
                    "v_cols": list(range(160, 176))}
    assert graph.nodes[0].attrs["image_shape"] == (1, 3, 32, 32) and graph.values[graph.inputs[0]].shape == (1, 64, 48)
    assert _matches_onnxruntime(path, graph, (1, 3, 32, 32)) <= 1e-4


INTERLEAVED = ("softmax", "relu_softmax", "scaling", "relu_softmax")  # index_select groups
CONTIGUOUS = ("relu_softmax", "softmax", "softmax", "scaling")  # slice groups


@pytest.mark.parametrize("grouping,split,dynamo", [
    ("slice", "scores", False), ("index", "scores", False), ("slice", "qkv", False), ("index", "qkv", False),
    ("index", "qkv", True)])
def test_mixed_head_kinds_become_one_attention(onnx_dir: Path, grouping: str, split: str, dynamo: bool) -> None:
    kinds = (INTERLEAVED if grouping == "index" else CONTIGUOUS, ("scaling", "scaling", "softmax", "softmax"))
    path = tiny_mpcvit(onnx_dir, kinds, ("gelu", "relu"), grouping, split, dynamo, 18 if dynamo else 17)
    graph = run_passes(load_onnx(path))
    assert set(graph.op_counts()) <= VIT_KINDS and graph.op_counts()["relu"] == 1
    attentions = [n for n in graph.nodes if n.op == "attention"]
    assert [[h["kind"] for h in a.attrs["heads"]] for a in attentions] == [list(k) for k in kinds]
    assert all(a.attrs["scale"] == 1.0 and a.attrs["tokens"] == 17 for a in attentions)
    assert attentions[0].attrs["eps"] == pytest.approx(1e-2)
    for h, head in enumerate(attentions[0].attrs["heads"]):  # q, k, v of head h: its columns of each third
        assert head["q_cols"] == list(range(8 * h, 8 * h + 8)) and head["v_cols"][0] == 64 + 8 * h
    assert _matches_onnxruntime(path, graph, (1, 3, 16, 16)) <= 1e-4


@pytest.mark.parametrize("kind", ["softmax", "relu_softmax", "scaling"])
def test_uniform_head_kinds(onnx_dir: Path, kind: str) -> None:
    path = tiny_mpcvit(onnx_dir, ((kind,) * 4,), ("linear",))
    graph = run_passes(load_onnx(path))
    attention = next(n for n in graph.nodes if n.op == "attention")
    assert {h["kind"] for h in attention.attrs["heads"]} == {kind}
    assert graph.op_counts()["linear"] == 5  # patch, qkv, proj, fc2·fc1 fused (MPCViT+), head
    assert _matches_onnxruntime(path, graph, (1, 3, 16, 16)) <= 1e-4


def test_every_pipeline_step_preserves_numerics(onnx_dir: Path) -> None:
    """Step by step on per-kind-group attention (one chain per group, then merged): onnxruntime after each pass."""
    path = tiny_mpcvit(onnx_dir, (INTERLEAVED,), ("gelu",), "index", "qkv", opset=13)
    graph = load_onnx(path)
    x = RNG.standard_normal((1, 3, 16, 16)).astype(np.float32)
    expected = run_onnxruntime(path, x)
    attentions = []
    for step in PIPELINE:
        graph = step(graph)
        attentions.append(graph.op_counts().get("attention", 0))
        error = np.abs(evaluate(graph, {graph.inputs[0]: x})[graph.outputs[0]] - expected).max()
        assert error <= 1e-4, f"after {step.__name__}: {error}"
    names = [step.__name__ for step in PIPELINE]
    assert attentions[names.index("fuse_attention")] == 3  # one per kind group
    assert attentions[names.index("merge_attention")] == 1
    attention = next(n for n in graph.nodes if n.op == "attention")
    assert attention.attrs["scale"] == 1.0 and [h["kind"] for h in attention.attrs["heads"]] == list(INTERLEAVED)


def test_batched_pipeline(onnx_dir: Path) -> None:
    path = timm_vit(onnx_dir, dynamo=False, opset=17, dynamic_batch=True)
    graph = run_passes(load_onnx(path, batch=3))
    assert graph.op_counts()["attention"] == 2 and graph.nodes[0].attrs["image_shape"] == (3, 3, 32, 32)
    assert _matches_onnxruntime(path, graph, (3, 3, 32, 32)) <= 1e-4


@pytest.mark.parametrize("dynamo", [False, True])
def test_attention_with_separate_q_k_v_projections(onnx_dir: Path, dynamo: bool) -> None:
    path = separate_projections(onnx_dir, dynamo)
    graph = run_passes(load_onnx(path, batch=2))
    assert graph.op_counts() == {"input": 1, "linear": 4, "attention": 1, "output": 1}
    attention = next(n for n in graph.nodes if n.op == "attention")
    assert len(set(attention.inputs)) == 3 and attention.attrs["scale"] == 1.0
    assert attention.attrs["heads"][1]["k_cols"] == list(range(8, 16))
    assert _matches_onnxruntime(path, graph, (2, 5, 16)) <= 1e-4


def test_unmatched_graph_stays_generic_and_correct(tmp_path: Path) -> None:
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Softmax", ["h"], ["y"], axis=0)]
    path = onnx_graph(tmp_path / "sm.onnx", nodes, [3, 4], "y", [3, 5],
                      [("w", RNG.standard_normal((4, 5)).astype(np.float32))])
    graph = run_passes(load_onnx(path, batch=3))
    assert graph.op_counts() == {"input": 1, "linear": 1, "softmax": 1, "output": 1}
    assert _matches_onnxruntime(path, graph, (3, 4)) <= 1e-5


def test_vit_9_12_64_compiles_fast(onnx_dir: Path) -> None:
    path = timm_vit(onnx_dir, False, 17, img_size=64, embed_dim=192, depth=9, num_heads=12, mlp_ratio=2.0,
                    num_classes=200)
    start = time.process_time()  # CPU time: the test machine's cores are shared
    graph = run_passes(load_onnx(path))
    elapsed = time.process_time() - start
    assert graph.op_counts()["attention"] == 9 and graph.values[graph.inputs[0]].shape == (1, 256, 48)
    assert elapsed < 2.0, f"ONNX -> IR + passes took {elapsed:.2f}s"


@pytest.mark.parametrize("head_kinds,mlp_kinds", [
    ([["softmax", "relu_softmax", "scaling", "relu_softmax"], ["relu_softmax"] * 4], ["linear", "relu"]),
    ([["softmax"] * 4, ["scaling"] * 4], ["gelu", "linear"])])
def test_mpcvit_models_exported_by_mpcvit_export(tmp_path: Path, head_kinds: list[list[str]],
                                                 mlp_kinds: list[str]) -> None:
    import torch

    from mpcvit.export import export_onnx
    from mpcvit.models import create, model_config

    torch.manual_seed(0)
    model = create(model_config("vit_2_4_8", head_kinds=head_kinds, mlp_kinds=mlp_kinds))
    path = export_onnx(model, tmp_path / "model.onnx", {"name": "digits"}).path
    graph = run_passes(load_onnx(path))
    counts = graph.op_counts()
    assert set(counts) <= VIT_KINDS
    attentions = [n for n in graph.nodes if n.op == "attention"]
    assert [[h["kind"] for h in a.attrs["heads"]] for a in attentions] == json.loads(graph.metadata["mpcvit.head_kinds"])
    assert all(a.attrs["scale"] == 1.0 for a in attentions)
    # patch, head, per layer qkv + proj, and 2 MLP linears (1 for MPCViT+'s fused linear MLP)
    assert counts["linear"] == 2 + 2 * 2 + sum(1 if kind == "linear" else 2 for kind in mlp_kinds)
    assert counts.get("gelu", 0) == mlp_kinds.count("gelu") and counts.get("relu", 0) == 2 - mlp_kinds.count("gelu")
    assert _matches_onnxruntime(path, graph, (1, 1, 8, 8)) <= 1e-4
