"""`mpcvit-compile --check --data FILE.npz`: the user's own check inputs, one-line errors for bad files, and a check
that compares every graph output with onnxruntime."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper

from compiler.api import compile_onnx, load_check_data
from test_compile_cli import run  # one CLI runner for the compile CLI tests
from compiler.errors import UserError
from onnx_fixtures import onnx_graph

SHAPE = (1, 2, 3)


@pytest.fixture
def small_model(tmp_path: Path) -> Path:
    weight = np.linspace(-1, 1, 24, dtype=np.float32).reshape(6, 4)
    nodes = [helper.make_node("Flatten", ["x"], ["f"]), helper.make_node("MatMul", ["f", "w"], ["y"])]
    return onnx_graph(tmp_path / "small.onnx", nodes, ["N", *SHAPE[1:]], "y", ["N", 4], [("w", weight)])


def test_check_uses_the_array_named_like_the_input(small_model: Path, tmp_path: Path, capsys) -> None:
    data = tmp_path / "mine.npz"
    np.savez(data, other=np.zeros((3, 2, 3)), x=np.arange(30, dtype=np.int32).reshape(5, 2, 3) / 10)
    code, stdout, stderr = run([str(small_model), "-o", str(tmp_path / "out"), "--check", "--data", str(data)],
                               capsys)
    assert code == 0, stderr
    assert "check: 5 inputs (mine.npz, array 'x')" in stdout
    assert float(stdout.split("logits vs onnxruntime: max |err| ")[1].split()[0]) < 1e-3


def test_the_first_array_and_a_single_input_without_batch_axis(small_model: Path, tmp_path: Path) -> None:
    np.savez(tmp_path / "one.npz", (np.arange(6, dtype=np.float32) / 6).reshape(2, 3))  # one image, no batch axis
    images, source = load_check_data(tmp_path / "one.npz", "x", SHAPE)
    assert images.shape == (1, 2, 3) and images.dtype == np.float64 and source == "one.npz, array 'arr_0'"
    result = compile_onnx(small_model, tmp_path / "out", batch=2, check=True, check_data=tmp_path / "one.npz")
    assert result.check.samples == 1 and result.check.max_logit_error < 1e-3


@pytest.mark.parametrize("case, expect", [
    ("missing", "not found; give an .npz file (numpy.savez) holding the inputs as one float array of shape [N, 2, 3]"),
    ("text", "cannot be read as .npz"),
    ("npy", "is a single .npy array, not an .npz archive"),
    ("empty", "holds no array"),
    ("shape", "array 'x' has shape [4, 3, 2], the model input 'x' takes [2, 3] per input"),
    ("dtype", "array 'x' has dtype <U1"),
    ("objects", "array 'x' cannot be read (ValueError)"),
    ("nan", "array 'x' holds NaN or infinite values"),
    ("no_check", "gives the inputs of --check: add --check"),
])
def test_bad_data_files_are_one_line_naming_the_file_exit_2(small_model: Path, tmp_path: Path, capsys, case: str,
                                                            expect: str) -> None:
    path = tmp_path / ("data.npy" if case == "npy" else "data.npz")
    if case == "text":
        path.write_text("not numpy")
    elif case == "npy":
        np.save(path, np.zeros((1, 2, 3)))
    elif case == "empty":
        np.savez(path)
    elif case in ("shape", "dtype", "objects", "nan", "no_check"):
        array = {"shape": np.zeros((4, 3, 2)), "dtype": np.full((1, 2, 3), "a"),
                 "objects": np.array([[None] * 3] * 2, dtype=object)[None], "nan": np.full((1, 2, 3), np.nan),
                 "no_check": np.zeros((1, 2, 3))}[case]
        np.savez(path, x=array)
    out = tmp_path / "out"
    code, _, stderr = run([str(small_model), "-o", str(out), *(["--check"] * (case != "no_check")), "--data",
                           str(path)], capsys)
    lines = stderr.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: --data '") and expect in lines[0], stderr
    assert str(path) in lines[0] and not out.exists()


def test_load_check_data_raises_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="nope.npz' not found"):
        load_check_data(tmp_path / "nope.npz", "x", SHAPE)


def test_the_check_compares_every_output(tmp_path: Path) -> None:
    weight = np.linspace(-1, 1, 24, dtype=np.float32).reshape(6, 4)
    graph = helper.make_graph(
        [helper.make_node("Flatten", ["x"], ["f"]), helper.make_node("MatMul", ["f", "w"], ["y"]),
         helper.make_node("Relu", ["y"], ["z"])], "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 2, 3])],
        [helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, ["N", 4]) for name in ("y", "z")],
        [onnx.numpy_helper.from_array(weight, "w")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "two.onnx"))
    np.savez(tmp_path / "d.npz", x=np.random.default_rng(0).standard_normal((6, 2, 3)))
    check = compile_onnx(tmp_path / "two.onnx", tmp_path / "out", check=True, check_data=tmp_path / "d.npz").check
    assert list(check.output_errors) == ["y", "z"] and check.samples == 6
    assert check.max_logit_error == max(check.output_errors.values()) < 1e-3
    assert "per output max |err|: y " in check.table() and "all outputs vs onnxruntime: max |err|" in check.table()
