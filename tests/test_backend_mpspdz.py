"""The emitted programs under real MP-SPDZ: compile, run each protocol, match the reference executor."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

import tiny_vit_ir
from compiler.backend import emit, write_client_input
from compiler.lowering import get_profile, lower
from compiler.reference import execute
from compiler.runtime.parser import revealed_matrix

pytestmark = pytest.mark.mpspdz
# approximations whose reference emulates the MPC computation step by step (the built-ins' references are exact)
FAITHFUL = {"exp": "limit", "reciprocal": "newton", "rsqrt": "newton", "gelu": "poly"}


def _compile_and_reference(tmp_path, protocol, reveal="logits", batch=2, frac_bits=None):
    prog = lower(tiny_vit_ir.build(batch=batch), get_profile(protocol, frac_bits=frac_bits, approx=FAITHFUL),
                 name="tiny", reveal=reveal)
    images = np.random.default_rng(7).uniform(-1, 1, (batch, 1, 8, 8))
    emit(prog, tmp_path / protocol, client_images=images)
    return execute(prog, {"image": images}).outputs["logits"], tmp_path / protocol


@pytest.mark.parametrize("protocol", ["semi2k", "dealer", "replicated-ring"])
def test_protocol_runs_match_the_reference_executor(mpspdz, tmp_path, protocol):
    from compiler.runtime.runner import run

    expected, out = _compile_and_reference(tmp_path, protocol)
    result = run(out, mpspdz=mpspdz, log=lambda _: None)
    assert result.logits.shape == expected.shape
    assert np.abs(result.logits - expected).max() <= 1e-2


@pytest.mark.parametrize("protocol", ["dealer", "replicated-ring"])
def test_run_script_runs_the_program_in_an_mpspdz_tree(mpspdz, tmp_path, protocol):
    """OUT/run.sh, the manual path: compiles and runs in $MP_SPDZ_HOME (here a tree of links to the built one with
    its own Programs/ and logs/) and prints the revealed logits from the client's log, which MP-SPDZ's scripts
    name after their first argument: the program, before the run flags (the dealer's -d -b)."""
    expected, out = _compile_and_reference(tmp_path, protocol)
    home = tmp_path / "home"
    home.mkdir()
    for entry in mpspdz.home.iterdir():
        if entry.name not in ("Programs", "logs"):
            (home / entry.name).symlink_to(entry)
    for folder in ("Source", "Bytecode", "Schedules"):
        (home / "Programs" / folder).mkdir(parents=True)
    done = subprocess.run(["bash", str(out / "run.sh")], env={**os.environ, "MP_SPDZ_HOME": str(home)},
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    # the printed values, as the runner reads them, within the engine's few LSB per truncation (1e-2, as above)
    logits = revealed_matrix(done.stdout, *expected.shape)
    assert np.abs(logits - expected).max() <= 1e-2


@pytest.mark.parametrize("frac_bits", [15, 18, 22])
def test_other_precisions_run_like_the_reference(mpspdz, tmp_path, frac_bits):
    """Inputs, public constants and revealed outputs all at f (at f=17/18 the input files were garbage, and any f
    but 16 printed the outputs scaled by 2^(f-16): cfix kept MP-SPDZ's default precision)."""
    from compiler.runtime.runner import run

    expected, out = _compile_and_reference(tmp_path, "replicated-ring", frac_bits=frac_bits)
    result = run(out, mpspdz=mpspdz, log=lambda _: None)
    assert np.abs(result.logits - expected).max() <= 1e-2  # as at f=16: a few LSB per probabilistic truncation


def test_argmax_reveal_under_mpc(mpspdz, tmp_path):
    from compiler.runtime.runner import run

    expected, out = _compile_and_reference(tmp_path, "replicated-ring", reveal="argmax", batch=3)
    result = run(out, mpspdz=mpspdz, log=lambda _: None)
    assert result.logits.reshape(-1).tolist() == expected.argmax(1).tolist()


def _vm_rounds(mpspdz, tmp_path, batch, kinds):
    prog = lower(tiny_vit_ir.build(batch=batch, kinds=kinds, dim=4 * len(kinds)), get_profile("replicated-ring"),
                 name="r")
    out = emit(prog, tmp_path / f"r{batch}_{len(kinds)}").directory
    work = tmp_path / f"w{batch}_{len(kinds)}"
    (work / "Programs" / "Source").mkdir(parents=True)
    shutil.copy(out / "r.mpc", work / "Programs" / "Source" / "r.mpc")
    (work / "compile.py").symlink_to(mpspdz.compile_py)
    (work / "Compiler").symlink_to(mpspdz.home / "Compiler")
    # batches=1: the batch loop's count fixed at compile time, so that compile.py counts its rounds (not inf)
    done = subprocess.run([sys.executable, "compile.py", *prog.profile.compile_flags, "r", "batches=1"], cwd=work,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "Order of memory instructions not preserved" not in done.stdout
    return int(re.search(r"(\d+) virtual machine rounds", done.stdout).group(1))


def test_rounds_do_not_grow_with_heads_or_images(mpspdz, tmp_path):
    """MP-SPDZ's own round count (compile.py): 3 heads x 1 image and 12 heads x 4 images take the same rounds."""
    base = _vm_rounds(mpspdz, tmp_path, 1, ("softmax", "relu_softmax", "scaling"))
    assert _vm_rounds(mpspdz, tmp_path, 4, ("softmax", "relu_softmax", "scaling") * 4) == base


def test_exported_digits_model_end_to_end(mpspdz, tmp_path):
    """ONNX (mixed ReLU-softmax/scaling heads) -> mpcvit-compile's API -> MP-SPDZ on 4 digits, default approximations."""
    models = pytest.importorskip("benchmarks.models")
    from compiler.api import compile_onnx
    from compiler.runtime.runner import run

    path = models.export_spec(models.ModelSpec("vit_1_4_8", attention="mu0.5"), tmp_path / "digits.onnx")
    result = compile_onnx(path, tmp_path / "out", protocol="replicated-ring", batch=4)
    images = np.random.default_rng(0).standard_normal((4, 1, 8, 8))
    graph = result.program.graph
    expected = execute(result.program, {graph.inputs[0]: images}).outputs[graph.outputs[0]]
    write_client_input(result.manifest, images)
    mpc = run(tmp_path / "out", mpspdz=mpspdz, log=lambda _: None)
    assert np.abs(mpc.logits - expected).max() <= 1e-2


def test_padded_im2col_layout_under_mpc(mpspdz, tmp_path):
    """A layout that is neither affine nor a few copies (a padded, strided convolution's im2col reading a zero
    constant) is emitted as strided gathers; MP-SPDZ reproduces the plain gather exactly (no arithmetic)."""
    from test_backend import padded_im2col

    from compiler.ir import Graph, Node, Value
    from compiler.runtime.runner import run

    index = padded_im2col()
    g = Graph()
    g.add_value(Value("image", (1, 2, 5, 5)))
    g.add_value(Value("zero", (1,), "public", np.zeros(1)))
    g.add_value(Value("cols", index.shape))
    g.add_value(Value("flat", (1, index.size)))
    g.add_node(Node("input", [], ["image"], {"owner": 1}, name="image"))
    g.add_node(Node("layout", ["image", "zero"], ["cols"], {"index": index}, name="im2col"))
    g.add_node(Node("layout", ["cols"], ["flat"], {"index": np.arange(index.size).reshape(1, -1)}, name="flatten"))
    g.add_node(Node("output", ["flat"], [], name="out"))
    g.inputs, g.outputs = ["image"], ["flat"]
    prog = lower(g, get_profile("replicated-ring"), name="im2col")
    image = np.random.default_rng(1).uniform(-2, 2, (1, 2, 5, 5))
    out = emit(prog, tmp_path / "out", client_images=image).directory
    assert "strided gathers" in (out / "im2col.mpc").read_text()
    expected = np.concatenate([image.reshape(-1), [0.0]])[index]
    result = run(out, mpspdz=mpspdz, log=lambda _: None)
    # inputs are quantised to f=16 bits and moved, not computed on: equal within half an LSB
    assert np.abs(result.logits.reshape(expected.shape) - expected).max() <= 2 ** -17


def test_argmax_program_through_mpcvit_run_compares_classes(mpspdz, tmp_path):
    """`mpcvit run --images` on a --reveal argmax program reports class agreement (it crashed after the MPC)."""
    models = pytest.importorskip("benchmarks.models")
    from compiler.api import compile_onnx
    from compiler.runtime.runner import run

    path = models.export_spec(models.ModelSpec("vit_1_4_8", attention="mu0.5"), tmp_path / "digits.onnx")
    compile_onnx(path, tmp_path / "out", protocol="replicated-ring", batch=2, reveal="argmax")
    result = run(tmp_path / "out", images=4, mpspdz=mpspdz, log=lambda _: None)
    assert result.logits.shape == (4, 1) and result.top1_agreement == 1.0 and result.max_logit_error is None


@pytest.mark.parametrize("protocol", ["semi2k", "dealer", "replicated-ring"])
def test_binary_inputs_reach_mpspdz_bit_for_bit(mpspdz, tmp_path, protocol):
    """Both binary input files as MP-SPDZ reads them: image (float64) + two int64 weight tensors (one with
    |w| > 256, beyond float32's 24 bits at f = 16) has no truncation, so every revealed value is the reference's
    integer. 120,000 values a tensor: more than the loop budget (-b 100000)."""
    from compiler.backend.inputs import input_file
    from compiler.ir import Graph, Node, Value
    from compiler.runtime.runner import run

    rng = np.random.default_rng(2)
    shape = (1, 3, 200, 200)
    g = Graph()
    g.add_value(Value("image", shape))
    g.add_value(Value("small", shape, "param", rng.uniform(-2, 2, shape)))
    g.add_value(Value("large", shape, "param", rng.uniform(-3000, 3000, shape)))
    for name in ("a", "b"):
        g.add_value(Value(name, shape))
    g.add_node(Node("input", [], ["image"], {"owner": 1}, name="image"))
    g.add_node(Node("add", ["image", "small"], ["a"], name="add_small"))
    g.add_node(Node("add", ["a", "large"], ["b"], name="add_large"))
    g.add_node(Node("output", ["b"], [], name="out"))
    g.inputs, g.outputs = ["image"], ["b"]
    prog = lower(g, get_profile(protocol), name="inputs")
    image = rng.uniform(-2, 2, shape)
    manifest = emit(prog, tmp_path / "out", client_images=image)
    assert [w["dtype"] for w in manifest.weights] == ["int64", "int64"]
    assert (tmp_path / "out" / input_file(0)).stat().st_size == (8 + 8) * image.size
    expected = execute(prog, {"image": image}).outputs["b"].reshape(-1)
    result = run(tmp_path / "out", mpspdz=mpspdz, log=lambda _: None)
    fx = prog.profile.fx
    # printed with 12 significant digits: |v| < 5000 at f = 16 leaves the LSB (1.5e-5) well resolved
    assert np.array_equal(fx.encode(result.logits.reshape(-1)), fx.encode(expected))
