"""`mpcvit bench --peer spu`: SecretFlow SPU on the same ONNX file, in its own environment (skipped without it)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from benchmarks.peer import spu_peer
from benchmarks.report import peer_rows
from compiler.errors import UserError
from mpcvit.cli import main as mpcvit_main


def spu_installed() -> bool:
    try:
        spu_peer.spu_python()
    except UserError:
        return False
    return True


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory) -> Path:
    from benchmarks.models import ModelSpec, export_spec

    path = tmp_path_factory.mktemp("peer") / "vit_1_4_8.onnx"
    export_spec(ModelSpec("vit_1_4_8", "softmax", "gelu"), path)
    return path


def test_missing_spu_environment_is_one_line_with_the_setup_command(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("MPCVIT_SPU_PYTHON", str(tmp_path / "no-such-python"))
    with pytest.raises(UserError) as error:
        spu_peer.spu_python()
    message = str(error.value)
    assert "\n" not in message and "$MPCVIT_SPU_PYTHON" in message and spu_peer.SETUP in message


def test_bench_with_peer_but_no_spu_exits_2_before_measuring(monkeypatch, tmp_path, capsys) -> None:
    monkeypatch.setenv("MPCVIT_SPU_PYTHON", str(tmp_path / "no-such-python"))
    results = tmp_path / "m.jsonl"
    with pytest.raises(SystemExit) as exit_:
        mpcvit_main(["bench", "--models", "vit_1_4_8", "--attention", "softmax", "--protocols", "dealer",
                     "--networks", "lan", "--peer", "spu", "--results", str(results), "--no-progress"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--peer spu" in err[0]
    assert not results.exists()


def test_prepared_onnx_computes_what_the_original_does(tiny_onnx, tmp_path) -> None:
    import onnx

    from compiler.api import onnxruntime_logits

    folded = spu_peer.prepare_onnx(tiny_onnx, tmp_path / "folded.onnx")
    model = onnx.load(str(folded))
    assert [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim][0] == 1
    assert "Shape" not in {node.op_type for node in model.graph.node}  # folded: jaxonnxruntime needs constants
    x = np.random.default_rng(0).standard_normal((1, 1, 8, 8))
    # both are onnxruntime float32 on the same weights; folding reorders a few float32 operations
    np.testing.assert_allclose(onnxruntime_logits(folded, x), onnxruntime_logits(tiny_onnx, x), atol=1e-5)


def test_peer_rows_put_each_peer_beside_mpcvit_per_model() -> None:
    peer = {"spu-aby3": {"system": "SPU 0.9.5 ABY3", "time_s": 2.0, "bytes_party0": 3e6, "bytes_all": 9e6,
                         "sends": 40, "max_logit_error": 1e-3}}
    records = [{"model": "m", "attention": "softmax", "mlp": "gelu", "protocol": p, "online_only": False,
                "network": n, "cost": {"compute_s": 0.5, "bytes_p0": 1e6, "bytes_all": 3e6, "rounds": 30},
                "real": {"time_s": 1.0, "bytes_party0": 2e6, "global_bytes": 5e6, "rounds": 20,
                         "max_logit_error": 2e-3} if p == "dealer" else None, "peer": peer}
               for p in ("dealer", "replicated-ring") for n in ("lan", "wan")]
    rows = peer_rows(records)
    assert [r["system"] for r in rows] == ["mpcvit dealer", "SPU 0.9.5 ABY3", "mpcvit replicated-ring (cost model)"]
    assert rows[0]["rounds_or_sends"] == 20 and rows[1]["rounds_or_sends"] == 40
    assert rows[2]["MB_all"] == pytest.approx(3.0, rel=1e-12)  # 3e6 bytes in MB; only float rounding differs


@pytest.mark.skipif(not spu_installed(), reason="SPU environment not installed (see benchmarks/README.md)")
def test_spu_runs_the_same_onnx_close_to_onnxruntime(tiny_onnx) -> None:
    x = np.random.default_rng(1).standard_normal((2, 1, 8, 8))
    results = spu_peer.run_spu(tiny_onnx, x)
    assert set(results) == {"spu-aby3", "spu-semi2k"}
    for name, figures in results.items():
        assert figures["images"] == 2 and figures["top1_agreement"] == 1.0, name
        # SPU's FM64 fixed point has 18 fractional bits (4e-6) and approximates exp/erf/division: 1e-2 on
        # logits of magnitude ~1 is the same bar the mpcvit reference meets
        assert figures["max_logit_error"] < 1e-2, name
        assert figures["bytes_party0"] > 0 and figures["sends"] > 0, name
        assert figures["bytes_all"] >= figures["bytes_party0"], name
