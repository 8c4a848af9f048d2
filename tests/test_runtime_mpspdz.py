"""`run()` against the real MP-SPDZ (skipped without it): a tiny hand-written linear "model", every protocol mode."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from compiler.errors import MPSPDZError
from compiler.lowering.profiles import Profile, protocol_spec
from compiler.runtime import run
from compiler.runtime.mpspdz import MPSPDZ, mpspdz_version
from compiler.runtime.prep import FAKE_OFFLINE

pytestmark = pytest.mark.mpspdz

B, K, C = 2, 4, 3
PROGRAM = f"""
W = sfix.Matrix({K}, {C})
W.input_from(0)
X = sfix.Matrix({B}, {K})
X.input_from(1)
Y = X * W
for b in range({B}):
    print_ln_to(1, 'MPCVIT_OUT %s %s', b, Y[b][:].reveal_to(1))
"""
RNG = np.random.default_rng(0)
WEIGHTS = RNG.uniform(-2, 2, (K, C)).round(3)


def linear_program(tmp_path: Path, protocol: str) -> Path:
    out = tmp_path / "out"
    (out / "Player-Data").mkdir(parents=True)
    (out / "lin.mpc").write_text(PROGRAM)
    (out / "Player-Data" / "Input-P0-0").write_text(" ".join(map(str, WEIGHTS.ravel())) + "\n")
    (out / "Player-Data" / "Input-P1-0").write_text(" ".join(["0"] * B * K) + "\n")
    flags = Profile(spec=protocol_spec(protocol)).compile_flags  # hemi: a prime field, no -R
    manifest = {"name": "lin", "protocol": protocol, "compile_flags": flags, "batch": B,
                "output_shape": [B, C], "f": 16, "k": 31}
    (out / "manifest.json").write_text(json.dumps(manifest))
    return out


def write_floats(manifest: dict, images: np.ndarray, path: Path) -> None:
    path.write_text(" ".join(f"{v:.6f}" for v in images.ravel()) + "\n")


@pytest.mark.parametrize("protocol, online_only", [("semi2k", False), ("semi2k", True), ("dealer-ring", False),
                                                   ("replicated-ring", False)])
def test_linear_model_under_each_protocol(mpspdz: MPSPDZ, tmp_path: Path, protocol: str, online_only: bool) -> None:
    if online_only and not ((mpspdz.home / FAKE_OFFLINE).is_file() or os.environ.get("MPCVIT_FAKE_OFFLINE")):
        pytest.skip(f"{FAKE_OFFLINE} not built (MP-SPDZ with -DINSECURE) and MPCVIT_FAKE_OFFLINE unset")
    images = RNG.uniform(-1, 1, (5, K)).astype(np.float32)  # 5 images → 3 runs of batch 2
    np.savez(tmp_path / "data.npz", x=images, y=(images @ WEIGHTS).argmax(1))
    json_path = tmp_path / "result.json"
    result = run(linear_program(tmp_path, protocol), data=tmp_path / "data.npz", online_only=online_only,
                 json_path=json_path, mpspdz=mpspdz, client_input_writer=write_floats,
                 reference=lambda x: x @ WEIGHTS, timeout_s=120)
    np.testing.assert_allclose(result.logits, images @ WEIGHTS, atol=1e-3)
    assert result.top1_agreement == 1.0 and result.max_logit_error < 1e-3 and result.batches == 3
    assert result.rounds > 0 and result.bytes_party0 > 0 and result.global_bytes >= result.bytes_party0
    saved = json.loads(json_path.read_text())
    # whatever the tree says of its version (git checkout, release archive, or nothing), the result records it
    assert saved["mpspdz"] == {"home": str(mpspdz.home), **mpspdz_version(mpspdz)} and saved["online_only"] is online_only
    # -v split: online + offline bytes are party 0's total; with files, preprocessing sends nothing
    assert saved["online"]["bytes"] + saved["offline"]["bytes"] == result.bytes_party0
    assert (saved["offline"]["bytes"] == 0) == (online_only or protocol == "replicated-ring")


def test_compiled_vit_through_the_cli_agrees_with_onnxruntime(mpspdz: MPSPDZ, tmp_path: Path, capsys) -> None:
    """The whole path: seeded ViT → ONNX (dynamic batch, compiled for 2) → mpcvit's compiler → `mpcvit run OUT --images 4 --json`."""
    from benchmarks.models import ModelSpec, export_spec
    from benchmarks.pipeline import compile_model
    from mpcvit.cli import main

    onnx_path = export_spec(ModelSpec("vit_1_4_8", "mu0.5"), tmp_path / "m.onnx")
    compiled = compile_model(onnx_path, "replicated-ring", 2, tmp_path / "out")
    json_path = tmp_path / "run.json"
    assert main(["run", str(tmp_path / "out"), "--images", "4", "--json", str(json_path)]) == 0
    printed = json.loads(capsys.readouterr().out)
    saved = json.loads(json_path.read_text())
    # the classes party 1 learnt, one per image: onnxruntime's on the same 4 test images (top-1 agreement is 1)
    from compiler.api import onnxruntime_logits
    from compiler.frontend import load_onnx
    from compiler.runtime.datasets import eval_images

    images, _ = eval_images(load_onnx(onnx_path).metadata, 4)
    assert printed["predicted_class"] == onnxruntime_logits(onnx_path, images[:4]).argmax(axis=1).tolist()
    assert saved["predicted_class"] == printed["predicted_class"]
    assert saved["images"] == 4 and saved["batches"] == 2 and saved["top1_agreement"] == 1.0
    assert saved["max_logit_error"] < 0.05
    # measured party-0 bytes and rounds per execution within 25% of the cost model
    total = compiled.cost.total
    assert abs(saved["bytes_party0"] / 2 / total.bytes_p0 - 1) < 0.25
    assert abs(saved["rounds"] / 2 / total.rounds - 1) < 0.25


@pytest.mark.parametrize("protocol", ["rep4-ring", "sy-rep-ring", "ps-rep-ring", "trio", "astra", "hemi"])
def test_linear_model_under_the_other_protocols(mpspdz: MPSPDZ, tmp_path: Path, protocol: str) -> None:
    """Each protocol's processes (rep4-ring: 4 parties; trio/astra: 2 online + 3 preprocessing parties; hemi: a prime field) compute
    the same logits; trio/astra report their preprocessing process's traffic as party 0's offline phase."""
    from compiler.runtime.mpspdz import check_protocol_ready, protocol_spec

    try:
        check_protocol_ready(mpspdz, protocol_spec(protocol))
    except MPSPDZError as exc:
        pytest.skip(str(exc))
    images = RNG.uniform(-1, 1, (2, K)).astype(np.float32)
    np.savez(tmp_path / "data.npz", x=images, y=(images @ WEIGHTS).argmax(1))
    result = run(linear_program(tmp_path, protocol), data=tmp_path / "data.npz", json_path=tmp_path / "r.json",
                 mpspdz=mpspdz, client_input_writer=write_floats, reference=lambda x: x @ WEIGHTS, timeout_s=300)
    np.testing.assert_allclose(result.logits, images @ WEIGHTS, atol=1e-3)  # inputs rounded to 2^-16: ~1e-4
    assert result.top1_agreement == 1.0 and result.global_bytes >= result.bytes_party0 > 0
    saved = json.loads((tmp_path / "r.json").read_text())
    assert len(saved["processes"]) == protocol_spec(protocol).processes
    if protocol in ("trio", "astra"):
        assert saved["offline"]["bytes"] > 0 and saved["online"]["bytes"] > 0


@pytest.mark.parametrize("protocol", ["replicated-ring", "dealer", "semi2k"])
def test_shared_weights_are_made_once_and_carry_no_weight_traffic(mpspdz: MPSPDZ, tmp_path: Path,
                                                                  protocol: str) -> None:
    """`--weights shared`: the first run shares the weights once (one execution: party 0's weight input, one
    round), every later run reads each party's stored shares. Its outputs are the input mode's (the same program
    but for where the weights come from: identical up to the engine's probabilistic truncation, < 0.05 as above),
    and party 0 sends the weights' bytes less, as the cost model's ``shared_weights`` figure says (±25 %)."""
    from benchmarks.models import ModelSpec, export_spec
    from benchmarks.pipeline import compile_model

    onnx_path = export_spec(ModelSpec("vit_1_4_8", "mu0.5"), tmp_path / "m.onnx")
    compile_model(onnx_path, protocol, 1, tmp_path / "out")
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    plain = run(tmp_path / "out", images=1, mpspdz=mpspdz, log=lambda _: None)  # one image: one execution
    first = run(tmp_path / "out", images=1, mpspdz=mpspdz, log=lambda _: None, weights="shared")
    again = run(tmp_path / "out", images=1, mpspdz=mpspdz, log=lambda _: None, weights="shared")
    sharing = first.details["weights"]["sharing"]
    # what party 0's weight input costs it by the cost model: 8 B a weight under replicated-ring; nothing under
    # dealer and semi2k, whose two-party input masks with a PRG seeded by both
    saving = manifest["expected"]["bytes_p0"] - manifest["expected"]["shared_weights"]["bytes_p0"]
    assert sharing["rounds"] <= 2 and sharing["bytes_party0"] >= 0.9 * saving
    assert again.details["weights"] == {"mode": "shared", "sharing": None}
    for result in (first, again):
        assert np.abs(result.logits - plain.logits).max() < 0.05 and result.top1_agreement == 1.0
        assert plain.bytes_party0 - result.bytes_party0 >= 0.9 * saving
        assert abs(result.bytes_party0 / manifest["expected"]["shared_weights"]["bytes_p0"] - 1) < 0.25
        assert result.details["expected"]["bytes_p0"] == manifest["expected"]["shared_weights"]["bytes_p0"]
    # shared anew: other weights (a recompiled model), an unreadable stamp, a damaged share file (same size)
    store = tmp_path / "out" / "weight-shares"
    damages = [lambda: (store / "stamp.json").write_text((store / "stamp.json").read_text().replace(
                   '"weight_sha256": "', '"weight_sha256": "0')),
               lambda: (store / "stamp.json").write_text("{bad"),
               lambda: (store / "Transactions-P1.data").write_bytes(
                   bytes(b ^ 1 for b in (store / "Transactions-P1.data").read_bytes()))]
    for damage in damages:
        damage()
        again = run(tmp_path / "out", images=1, mpspdz=mpspdz, log=lambda _: None, weights="shared")
        assert again.details["weights"]["sharing"] is not None
        assert np.abs(again.logits - plain.logits).max() < 0.05
