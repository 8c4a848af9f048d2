"""`mpcvit-compile`: end to end on exported ViTs, the summary and --check, and one-line errors with exit 2."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper

from compiler.cli import main

onnx_fixtures = pytest.importorskip("onnx_fixtures")


@pytest.fixture(scope="module")
def timm_onnx(tmp_path_factory) -> Path:
    return onnx_fixtures.timm_vit(tmp_path_factory.mktemp("onnx"), False)


def run(argv: list[str], capsys) -> tuple[int, str, str]:
    try:
        code = main(argv)
    except SystemExit as exc:
        code = int(exc.code)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_compile_with_check_writes_the_program_and_prints_the_summary(timm_onnx, tmp_path, capsys):
    out = tmp_path / "out"
    code, stdout, stderr = run([str(timm_onnx), "--protocol", "semi2k", "-o", str(out), "--batch", "1", "--check",
                                "--check-samples", "24", "--approx", "gelu=mpspdz", "--dump-ir"], capsys)
    assert code == 0, stderr
    assert "= attention(" in stdout  # --dump-ir
    # f: the most fractional bits the calibrated ranges allow (compiler.calibrate.choose_frac_bits), at least 16
    assert re.search(rf"compiled {timm_onnx.stem} for semi2k \(MP-SPDZ -E semi2k, f=(1[6-9]|20), k=31, batch 1\)",
                     stdout)
    assert "layers: 2 attention" in stdout and "gelu=mpspdz" in stdout
    assert "cost estimate (semi2k)" in stdout and "TOTAL" in stdout and "latency LAN" in stdout
    # the other 2PC without a dealer, priced by the cost model for this model: fewer bytes, faster by network
    advice = re.search(r"warning: 2PC without a dealer: --protocol hemi sends ([\d.]+)x fewer bytes .*: "
                       r"((semi2k|hemi) is faster on both a LAN and a WAN|semi2k is faster on a LAN, hemi on a WAN|"
                       r"hemi is faster on a LAN, semi2k on a WAN)", stdout)
    assert advice and float(advice.group(1)) > 1
    assert "check: 24 inputs" in stdout and "top-1 agreement 100.0%" in stdout
    error = float(stdout.split("logits vs onnxruntime: max |err| ")[1].split()[0])
    assert error <= 0.05
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["protocol"] == "semi2k" and manifest["onnx"]["sha256"]
    assert manifest["approximations"]["/blocks/blocks.0/mlp/act/Gelu"]["gelu"] == "gelu:mpspdz"
    assert (out / f"{timm_onnx.stem}.mpc").is_file()


def test_a_check_beyond_its_tolerance_stays_in_the_manifest(tmp_path, capsys):
    """Unnormalised images (0..255, calibrated on themselves; max logit error ~0.19 on a timm ViT): the check misses
    its tolerance; the one warning line is in the printed summary and in the manifest's warnings, and the compile
    still succeeds (exit 0)."""
    import numpy as np
    import torch
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    model = VisionTransformer(img_size=16, patch_size=4, num_classes=10, embed_dim=32, depth=2, num_heads=2).eval()
    torch.onnx.export(model, torch.randn(1, 3, 16, 16), tmp_path / "vit.onnx", input_names=["x"],
                      output_names=["logits"], opset_version=17, dynamo=False)
    np.savez(tmp_path / "u8.npz", x=np.random.default_rng(0).integers(0, 256, (8, 3, 16, 16)).astype(np.float32))
    out = tmp_path / "out"
    code, stdout, stderr = run([str(tmp_path / "vit.onnx"), "-o", str(out), "--check", "--data",
                                str(tmp_path / "u8.npz")], capsys)
    warnings = json.loads((out / "manifest.json").read_text())["warnings"]
    assert code == 0 and stderr == "" and stdout.count("the check exceeds its tolerance") == 1
    assert [w for w in warnings if w.startswith("the check exceeds its tolerance")]


def test_api_check_uses_the_digits_test_set_with_mixed_head_kinds(tmp_path):
    models = pytest.importorskip("benchmarks.models")
    from compiler.api import compile_onnx

    path = models.export_spec(models.ModelSpec("vit_1_4_8", attention="mu0.5"), tmp_path / "digits.onnx")
    result = compile_onnx(path, tmp_path / "o", protocol="dealer", batch=1, check=True, check_samples=200,
                          reveal="argmax")
    kinds = {h["kind"] for n in result.program.graph.nodes if n.op == "attention" for h in n.attrs["heads"]}
    assert kinds == {"relu_softmax", "scaling"}
    check = result.check
    assert check.source == "digits test set" and check.samples == 200
    assert check.top1_agreement == 1.0 and check.max_logit_error <= 0.05
    assert result.manifest.output_shape == [1, 1] and result.manifest.model_config["mpcvit.dataset"] == "digits"


def _graph(tmp_path, nodes, inits, shape=(1, 4), out_shape=(1, 4), name="m.onnx"):
    return onnx_fixtures.onnx_graph(tmp_path / name, nodes, list(shape), "y", list(out_shape),
                                    [(k, np.asarray(v, np.float32)) for k, v in inits])


@pytest.mark.parametrize("case, expect", [
    ("protocol", "--protocol 'spdz' is unknown; choose one of semi2k, dealer, replicated-ring"),
    ("approx", "--approx gelu=cubic: unknown choice"),
    ("missing", "not found"),
    ("truncated", "m.onnx' cannot be read (DecodeError): the file is truncated"),
    ("unsupported", "ONNX node 'y': op Sin (opset 17) is not supported; supported ops: Abs, Add"),
    ("range", "outside the comparison range"),
    ("product", "beyond the |v| < 16384 that sfix products allow at f=16, k=31"),
    ("ring", "--frac-bits 28 is out of range; use 15..22"),  # logits of thousands at f=28 wrapped the ring
    ("dynamic", "N"),
    ("bad_metadata", "ONNX metadata mpcvit.input_mean='not json' is malformed: give a JSON number or a per-channel "
                     "list of numbers"),
    ("missing_weight", "fails the ONNX checker: Nodes in a graph must be topologically sorted, however input "
                       "'Wmissing' of node: name: lin OpType: MatMul is not output of any previous nodes."),
    ("two_inputs", "two.onnx' has 2 inputs ('x', 'x2'); only one image input (the client's) is supported"),
])
def test_bad_input_is_one_error_line_exit_2_and_nothing_written(tmp_path, capsys, timm_onnx, case, expect):
    model, extra = str(timm_onnx), []
    if case == "protocol":
        extra = ["--protocol", "spdz"]
    elif case == "approx":
        extra = ["--approx", "gelu=cubic"]
    elif case == "missing":
        model = str(tmp_path / "nope.onnx")
    elif case == "truncated":
        data = Path(timm_onnx).read_bytes()
        (tmp_path / "m.onnx").write_bytes(data[: len(data) // 3])
        model = str(tmp_path / "m.onnx")
    elif case == "unsupported":
        model = str(_graph(tmp_path, [helper.make_node("Sin", ["x"], ["y"])], []))
    elif case == "range":  # relu of values around 3e4 (a sum, no product): beyond |v| < 2^14
        model = str(_graph(tmp_path, [helper.make_node("Add", ["x", "w"], ["h"]), helper.make_node("Relu", ["h"], ["y"])],
                           [("w", np.full((1, 4), 3e4))]))
    elif case == "product":  # a product around 1e5: MP-SPDZ's truncation assumes |v| < 2^14
        model = str(_graph(tmp_path, [helper.make_node("MatMul", ["x", "w"], ["h"], name="mm"),
                                      helper.make_node("Relu", ["h"], ["y"])], [("w", np.full((4, 4), 3e4))]))
    elif case == "ring":  # logits of a few thousand at f=28: v·2^56 >= 2^63
        extra = ["--frac-bits", "28"]
        model = str(_graph(tmp_path, [helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")],
                           [("w", np.full((4, 4), 1000.0))]))
    elif case == "dynamic":
        model = str(_graph(tmp_path, [helper.make_node("Relu", ["x"], ["y"])], [], shape=(1, "N"), out_shape=(1, "N")))
    elif case == "bad_metadata":  # read when the digits test set is normalised for calibration
        model = str(_graph(tmp_path, [helper.make_node("Relu", ["x"], ["y"])], [], shape=(1, 1, 8, 8),
                           out_shape=(1, 1, 8, 8)))
        proto = onnx.load(model)
        helper.set_model_props(proto, {"mpcvit.dataset": "digits", "mpcvit.input_mean": "not json"})
        onnx.save(proto, model)
    elif case == "missing_weight":  # the checker names the node on a second line: kept, joined into one
        model = str(_graph(tmp_path, [helper.make_node("MatMul", ["x", "Wmissing"], ["y"], name="lin")], []))
    elif case == "two_inputs":  # refused by the frontend, before calibration evaluates the graph on one input
        graph = helper.make_graph([helper.make_node("Add", ["x", "x2"], ["y"])], "g",
                                  [helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, [1, 4]) for n in ("x", "x2")],
                                  [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 4])])
        model = str(tmp_path / "two.onnx")
        onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), model)
    out = tmp_path / "out"
    code, stdout, stderr = run([model, "-o", str(out), *extra], capsys)
    assert code == 2
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expect in lines[0], stderr
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


def test_check_feeds_onnxruntime_the_input_type_of_the_model(tmp_path, capsys):
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", onnx.TensorProto.DOUBLE, [1, 4])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.DOUBLE, [1, 3])],
                              [onnx.numpy_helper.from_array(np.arange(12.0).reshape(4, 3) / 8, "w")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "f64.onnx"))
    code, stdout, stderr = run([str(tmp_path / "f64.onnx"), "-o", str(tmp_path / "out"), "--check",
                                "--check-samples", "5"], capsys)
    assert code == 0, stderr
    assert float(stdout.split("logits vs onnxruntime: max |err| ")[1].split()[0]) < 1e-3


@pytest.mark.parametrize("argv, expect", [
    ([], "error: the following arguments are required: model (see mpcvit-compile --help)"),
    (["m.onnx", "--batch", "two"], "error: argument --batch: invalid int value: 'two'"),
    (["m.onnx", "--reveal", "all"], "error: argument --reveal: invalid choice: 'all'"),
    (["m.onnx", "--check-samples", "5"], "error: --check-samples 5 counts the inputs of --check; add --check"),
])
def test_bad_flags_are_one_error_line_exit_2(capsys, argv, expect):
    code, _, stderr = run(argv, capsys)
    assert code == 2 and len(stderr.strip().splitlines()) == 1 and stderr.startswith(expect), stderr


def test_console_script_exit_code(tmp_path):
    done = subprocess.run([sys.executable, "-m", "compiler.cli", str(tmp_path / "x.onnx")], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 2 and done.stderr.startswith("error: ONNX file")


def test_a_check_beyond_its_tolerance_says_so() -> None:
    from compiler.api import CheckReport, LayerError

    layers = [LayerError("blocks.0.norm1", "layernorm", 0.04, 1.0, growth=9.0)]
    ok = CheckReport(8, "test", layers, max_logit_error=0.019, float_ir_error=0.0, top1_agreement=1.0,
                     max_abs_output=1.5)
    assert ok.within_tolerance and "exceeds" not in ok.table()
    # 1 % of |logit| 5 = 0.05 > 0.02: the relative part of the bar applies
    bad = CheckReport(8, "test", layers, max_logit_error=0.06, float_ir_error=0.0, top1_agreement=1.0,
                      max_abs_output=5.0)
    assert bad.tolerance == pytest.approx(0.05, rel=1e-12) and not bad.within_tolerance
    # the warning is one of the manifest's warnings (printed once by the CLI's summary), not also in the table
    assert "exceeds" not in bad.table() and bad.warning().startswith("the check exceeds its tolerance")
    assert "blocks.0.norm1 (layernorm): check that the inputs are normalised" in bad.warning()
    assert "--approx rsqrt=CHOICE" in bad.warning() and "--frac-bits" not in bad.warning()
    # the first layer's large growth over the image's tiny quantisation error is not where precision is lost
    first = LayerError("patch_embed", "linear", 1e-6, 1.0, growth=30.0)
    assert CheckReport(8, "test", [first, *layers], 0.06, 0.0, 1.0, max_abs_output=5.0).worst_growth is layers[0]
    nan = CheckReport(8, "test", layers, float("nan"), 0.0, 1.0, max_abs_output=5.0)
    assert not nan.within_tolerance


def test_attention_over_a_single_key_compiles_and_checks_under_every_protocol(tmp_path):
    """One token (no class token, one patch): each softmax row sum is exactly 1, a degenerate reciprocal domain;
    every protocol (whichever reciprocal its profile picks) compiles it and agrees with onnxruntime."""
    import torch
    from timm.models.vision_transformer import VisionTransformer

    from compiler.api import compile_onnx
    from compiler.lowering.profiles import PROTOCOLS

    torch.manual_seed(0)
    model = VisionTransformer(img_size=4, patch_size=4, num_classes=3, embed_dim=8, depth=1, num_heads=2,
                              class_token=False, global_pool="avg").eval()
    path = tmp_path / "one_token.onnx"
    torch.onnx.export(model, torch.randn(1, 3, 4, 4), path, input_names=["input"], output_names=["logits"],
                      opset_version=17, dynamo=False)
    for protocol in PROTOCOLS:
        result = compile_onnx(path, tmp_path / protocol, protocol=protocol, check=True, check_samples=16)
        # 0.05: the bound the CLI tests use for a whole ViT's logits at the calibrated f (here ~1e-3 is typical)
        assert result.check.max_logit_error <= 0.05, protocol
