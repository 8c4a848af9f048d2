"""ONNX -> IR: both torch exporters, opsets 13-20, constant folding, batch, per-op layouts, clear errors."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper

from compiler.errors import CompileError, UserError
from compiler.frontend import load_onnx, supported_ops
from compiler.frontend.registry import find_converter
from compiler.ir_eval import evaluate
from onnx_fixtures import onnx_graph, run_onnxruntime, shared_dir, timm_vit

TOL = 1e-4


@pytest.fixture
def onnx_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return shared_dir(tmp_path_factory)


def ir_vs_onnxruntime(path: Path, batch: int = 1, seed: int = 0) -> float:
    graph = load_onnx(path, batch=batch)
    x = np.random.default_rng(seed).standard_normal(graph.values[graph.inputs[0]].shape).astype(np.float32)
    return float(np.abs(evaluate(graph, {graph.inputs[0]: x})[graph.outputs[0]] - run_onnxruntime(path, x)).max())


@pytest.mark.parametrize("dynamo,opset", [(False, 13), (False, 17), (False, 20), (True, None)])
def test_timm_vit_matches_onnxruntime(onnx_dir: Path, dynamo: bool, opset: int | None) -> None:
    path = timm_vit(onnx_dir, dynamo, opset)
    assert ir_vs_onnxruntime(path) <= TOL
    counts = load_onnx(path).op_counts()
    assert counts["input"] == counts["output"] == 1
    assert counts["linear"] == 1  # the patch-embedding Conv
    if opset == 13:  # LayerNormalization (opset 17) and Gelu (opset 20) are not available: decomposed forms
        assert "layernorm" not in counts and counts["erf"] == 2 and counts["sqrt"] == 5
    else:
        assert counts["layernorm"] == 5 and ("gelu" in counts) == (opset in (20, None))


def test_constants_fold_and_roles(onnx_dir: Path) -> None:
    graph = load_onnx(timm_vit(onnx_dir, dynamo=False, opset=13))
    model = onnx.load(timm_vit(onnx_dir, dynamo=False, opset=13))
    assert {"Shape", "ConstantOfShape", "Where", "Expand", "Equal"} <= {n.op_type for n in model.graph.node}
    pos = graph.values["pos_embed"]
    assert pos.role == "param" and pos.shape == (1, 65, 64)
    # the class token, expanded over the batch by Shape/ConstantOfShape/Where/Expand, is folded into a param
    concat = next(n for n in graph.nodes if n.op == "layout" and len(n.inputs) == 2)
    cls = graph.values[concat.inputs[0]]
    expected_cls = onnx.numpy_helper.to_array(next(i for i in model.graph.initializer if i.name == "cls_token"))
    # folding copies the float32 initializer into float64 data: exact, so only float64 rounding may differ
    assert cls.role == "param" and np.allclose(cls.data, expected_cls, rtol=0, atol=1e-12)
    scalars = [v for v in graph.values.values() if v.data is not None and v.data.size == 1]
    assert scalars and all(v.role == "public" for v in scalars)  # eps, 1/sqrt(2), 0.5, the attention scale
    assert all(v.role == "secret" for n in graph.nodes for v in map(graph.values.get, n.outputs))


def test_dynamic_batch_is_resolved(onnx_dir: Path) -> None:
    path = timm_vit(onnx_dir, dynamo=False, opset=17, dynamic_batch=True)
    graph = load_onnx(path, batch=3)
    assert graph.values[graph.inputs[0]].shape == (3, 3, 32, 32)
    assert graph.values[graph.outputs[0]].shape == (3, 10)
    assert ir_vs_onnxruntime(path, batch=3) <= TOL


def test_fixed_batch_conflict_names_the_flag(onnx_dir: Path) -> None:
    with pytest.raises(CompileError, match=r"'image'.*fixed batch of 1.*--batch 2"):
        load_onnx(timm_vit(onnx_dir, dynamo=True), batch=2)


def test_dynamic_image_size_is_an_error(tmp_path: Path) -> None:
    path = onnx_graph(tmp_path / "dyn.onnx", [helper.make_node("Relu", ["x"], ["y"])], ["n", 3, "h", 8], "y",
                      ["n", 3, "h", 8])
    with pytest.raises(CompileError, match=r"input 'x': dimension 2 \(h\) is dynamic.*--batch"):
        load_onnx(path)


# --- single ops against onnxruntime ---------------------------------------------------------------------------

def _i64(*values: int) -> np.ndarray:
    return np.array(values, dtype=np.int64)


SINGLE_OPS = {
    "transpose_reshape": ([helper.make_node("Transpose", ["x"], ["t"], perm=[0, 2, 1, 3]),
                           helper.make_node("Reshape", ["t", "s"], ["y"])], [("s", _i64(0, 3, -1))], 17, [1, 3, 16]),
    "slice_steps": ([helper.make_node("Slice", ["x", "st", "en", "ax", "sp"], ["y"])],
                    [("st", _i64(3, 1)), ("en", _i64(-(2 ** 62), 100)), ("ax", _i64(3, 1)), ("sp", _i64(-2, 1))], 13,
                    [1, 2, 4, 2]),
    "split_num_outputs": ([helper.make_node("Split", ["x"], ["a", "b"], axis=3, num_outputs=2),
                           helper.make_node("Sub", ["a", "b"], ["y"])], [], 18, [1, 3, 4, 2]),
    "split_sizes": ([helper.make_node("Split", ["x", "sz"], ["a", "b"], axis=1),
                     helper.make_node("Concat", ["b", "a"], ["y"], axis=1)], [("sz", _i64(1, 2))], 13,
                    [1, 3, 4, 4]),
    "gather_squeeze_unsqueeze": ([helper.make_node("Gather", ["x", "i"], ["g"], axis=2),
                                  helper.make_node("Unsqueeze", ["g", "ax"], ["y"])],
                                 [("i", _i64(2, 0, 2)), ("ax", _i64(-1))], 13, [1, 3, 3, 4, 1]),
    "flatten_expand": ([helper.make_node("Flatten", ["x"], ["f"], axis=2),
                        helper.make_node("Unsqueeze", ["f", "ax"], ["u"]),
                        helper.make_node("Expand", ["u", "sh"], ["y"])],
                       [("ax", _i64(1)), ("sh", _i64(2, 3, 1, 1))], 13, [2, 3, 1, 16]),
    "reduce_pow_sqrt_div": ([helper.make_node("Pow", ["x", "two"], ["p"]),
                             helper.make_node("ReduceMean", ["p", "ax"], ["m"], keepdims=1),
                             helper.make_node("ReduceSum", ["x", "ax"], ["s"], keepdims=1),
                             helper.make_node("Add", ["m", "one"], ["m1"]),
                             helper.make_node("Sqrt", ["m1"], ["r"]),
                             helper.make_node("Div", ["s", "r"], ["y"])],
                            [("two", np.float32(2.0)), ("ax", _i64(-1)), ("one", np.float32(1.0))], 18,
                            [1, 3, 4, 1]),
    "gemm_erf_gelu": ([helper.make_node("Reshape", ["x", "s"], ["r"]),
                       helper.make_node("Gemm", ["r", "w", "b"], ["g"], transB=1, alpha=0.5, beta=2.0),
                       helper.make_node("Erf", ["g"], ["e"]),
                       helper.make_node("Gelu", ["e"], ["y"])],
                      [("s", _i64(1, -1)), ("w", np.random.default_rng(0).standard_normal((5, 48), np.float32)),
                       ("b", np.arange(5, dtype=np.float32))], 20, [1, 5]),
    "softmax_shape_range": ([helper.make_node("Shape", ["x"], ["sh"], start=-1),
                             helper.make_node("Gather", ["sh", "first"], ["len"]),
                             helper.make_node("Cast", ["len"], ["shf"], to=onnx.TensorProto.FLOAT),
                             helper.make_node("Range", ["zero", "shf", "onef"], ["rng"]),
                             helper.make_node("Mul", ["x", "rng"], ["xm"]),
                             helper.make_node("Softmax", ["xm"], ["y"], axis=-1)],
                            [("zero", np.float32(0.0)), ("onef", np.float32(1.0)), ("first", np.int64(0))], 15,
                            [1, 3, 4, 4]),
}


@pytest.mark.parametrize("case", sorted(SINGLE_OPS))
def test_single_ops_match_onnxruntime(tmp_path: Path, case: str) -> None:
    nodes, inits, opset, out_shape = SINGLE_OPS[case]
    path = onnx_graph(tmp_path / f"{case}.onnx", nodes, [1, 3, 4, 4], "y", out_shape, inits, opset)
    assert ir_vs_onnxruntime(path, seed=1) <= 1e-5


def test_layout_ops_become_one_index_map_each(tmp_path: Path) -> None:
    nodes, inits, opset, out_shape = SINGLE_OPS["slice_steps"]
    graph = load_onnx(onnx_graph(tmp_path / "s.onnx", nodes, [1, 3, 4, 4], "y", out_shape, inits, opset))
    layout = next(n for n in graph.nodes if n.op == "layout")
    expected = np.arange(48).reshape(1, 3, 4, 4)[:, 1:, :, 3::-2]
    assert np.array_equal(layout.attrs["index"], expected)


# --- errors ---------------------------------------------------------------------------------------------------

def test_missing_and_truncated_files_name_the_file(onnx_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"'.*nope\.onnx' not found"):
        load_onnx(tmp_path / "nope.onnx")
    with pytest.raises(UserError, match=r"'.*' is a directory; pass the path of an exported \.onnx model"):
        load_onnx(tmp_path)
    corrupt = tmp_path / "corrupt.onnx"  # a dangling input whose (corrupted) name is not UTF-8: the checker's
    named = onnx_graph(tmp_path / "named.onnx", [helper.make_node("Relu", ["ZZZZ"], ["y"])], [1, 4], "y",
                       [1, 4])  # message about it fails to decode
    corrupt.write_bytes(named.read_bytes().replace(b"ZZZZ", b"\xff\xfe\xff\xfe"))
    with pytest.raises(CompileError, match=r"'.*corrupt\.onnx' fails the ONNX checker"):
        load_onnx(corrupt)
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(timm_vit(onnx_dir, dynamo=True).read_bytes()[:5000])
    with pytest.raises(UserError, match=r"truncated\.onnx"):
        load_onnx(truncated)


def test_unsupported_op_names_node_op_opset_and_lists_supported(tmp_path: Path) -> None:
    path = onnx_graph(tmp_path / "round.onnx", [helper.make_node("Round", ["x"], ["y"], name="my_round")], [1, 4], "y",
                      [1, 4])
    with pytest.raises(CompileError) as info:
        load_onnx(path)
    message = str(info.value)
    assert "'my_round': op Round (opset 17) is not supported" in message and "secret input" in message
    assert all(op in message for op in ("MatMul", "Softmax", "LayerNormalization", "Conv")) and "\n" not in message
    assert {"MatMul", "Gemm", "Conv", "Erf", "Gelu", "Tanh", "Where", "Pad"} <= set(supported_ops())


def test_converter_is_chosen_by_opset() -> None:
    reduce_mean = [helper.make_node("ReduceMean", ["x"], ["y"], axes=[1])]
    assert find_converter(reduce_mean[0], 17) is not find_converter(reduce_mean[0], 18)  # axes: attribute -> input
    with pytest.raises(CompileError, match=r"op Gelu \(opset 18\) is not supported"):
        find_converter(helper.make_node("Gelu", ["x"], ["y"]), 18)  # Gelu exists from opset 20


def test_bad_opset_is_an_error(tmp_path: Path) -> None:
    old = onnx_graph(tmp_path / "old.onnx", [helper.make_node("Relu", ["x"], ["y"])], [1, 4], "y", [1, 4], opset=11)
    with pytest.raises(CompileError, match="opset 11; supported opsets are 13-20"):
        load_onnx(old)


def test_secret_shape_arithmetic_is_an_error(tmp_path: Path) -> None:
    nodes = [helper.make_node("Equal", ["x", "x"], ["e"], name="eq"), helper.make_node("Where", ["e", "x", "x"], ["y"])]
    with pytest.raises(CompileError, match=r"'eq': op Equal .*depend on the secret input"):
        load_onnx(onnx_graph(tmp_path / "eq.onnx", nodes, [1, 4], "y", [1, 4]))


def _one_input_model(path: Path, elem_type: int, shape: list[int], nodes: list[onnx.NodeProto],
                     initializers: list[onnx.TensorProto] = (), external: bool = False) -> Path:
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", elem_type, shape)],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, shape)], initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, str(path), save_as_external_data=external, location=f"{path.stem}.data", size_threshold=0)
    return path


def test_external_weights_load_and_a_missing_data_file_is_named(tmp_path: Path) -> None:
    weight = np.arange(16, dtype=np.float32).reshape(4, 4)
    path = _one_input_model(tmp_path / "ext.onnx", onnx.TensorProto.FLOAT, [1, 4],
                            [helper.make_node("MatMul", ["x", "w"], ["y"])],
                            [onnx.numpy_helper.from_array(weight, "w")], external=True)
    assert np.array_equal(load_onnx(path).values["w"].data, weight)
    data = (tmp_path / "ext.data").read_bytes()
    (tmp_path / "ext.data").write_bytes(data[:20])  # truncated: 20 of the 64 bytes
    with pytest.raises(UserError, match=r"'.*ext\.onnx': its external weights cannot be read .*truncated"):
        load_onnx(path)
    (tmp_path / "ext.data").unlink()
    with pytest.raises(UserError, match=r"'.*ext\.onnx' keeps its weights in 'ext\.data', which is not next to it"):
        load_onnx(path)


def test_non_float_and_scalar_inputs_are_errors(tmp_path: Path) -> None:
    cast = [helper.make_node("Cast", ["x"], ["y"], to=onnx.TensorProto.FLOAT)]
    with pytest.raises(CompileError, match=r"input 'x' has type INT64; the image input must be FLOAT"):
        load_onnx(_one_input_model(tmp_path / "int.onnx", onnx.TensorProto.INT64, [1, 4], cast))
    relu = [helper.make_node("Relu", ["x"], ["y"])]
    with pytest.raises(CompileError, match=r"input 'x' is a scalar"):
        load_onnx(_one_input_model(tmp_path / "scalar.onnx", onnx.TensorProto.FLOAT, [], relu))
    with pytest.raises(CompileError, match=r"input 'x' has no shape \(not even a rank\)"):
        load_onnx(_one_input_model(tmp_path / "unranked.onnx", onnx.TensorProto.FLOAT, None, relu))


@pytest.mark.parametrize("case", ["nan_weight", "divide_by_zero"])
def test_non_finite_constants_used_by_secrets_name_the_tensor(tmp_path: Path, case: str) -> None:
    if case == "nan_weight":
        nodes = [helper.make_node("MatMul", ["x", "w"], ["y"])]
        inits = [("w", np.where(np.eye(4) > 0, np.nan, 1.0).astype(np.float32))]
        expect = r"ONNX tensor 'w' has 4 NaN/infinite value\(s\)"
    else:
        nodes = [helper.make_node("Div", ["x", "zero"], ["y"])]
        inits = [("zero", np.zeros(4, np.float32))]
        expect = r"ONNX tensor 'y__reciprocal' has 4 NaN/infinite"
    with pytest.raises(CompileError, match=expect):
        load_onnx(onnx_graph(tmp_path / f"{case}.onnx", nodes, [1, 4], "y", [1, 4], inits))


def test_shape_inconsistencies_that_pass_the_checker_name_the_node(tmp_path: Path) -> None:
    """Strict shape inference does not see through Concat, so a bad Reshape target reaches the converter."""
    nodes = [helper.make_node("Concat", ["one", "five"], ["s"], axis=0),
             helper.make_node("Reshape", ["x", "s"], ["y"], name="rs")]
    path = onnx_graph(tmp_path / "rs.onnx", nodes, [1, 4], "y", [1, 4], [("one", _i64(1)), ("five", _i64(5))])
    with pytest.raises(CompileError, match=r"ONNX node 'rs' \(Reshape\): cannot reshape array of size 4 into shape "
                                           r"\(1,5\); the model is inconsistent"):
        load_onnx(path)


def test_an_initializer_of_unknown_data_type_names_it(tmp_path: Path) -> None:
    weight = onnx.numpy_helper.from_array(np.ones((4, 4), np.float32), "w")
    weight.data_type = 105  # not a TensorProto type (as a corrupted byte makes it); the checker lets it through
    path = _one_input_model(tmp_path / "w.onnx", onnx.TensorProto.FLOAT, [1, 4],
                            [helper.make_node("MatMul", ["x", "w"], ["y"])], [weight])
    with pytest.raises(CompileError, match=r"initializer 'w' cannot be read \(KeyError: 105\)"):
        load_onnx(path)
