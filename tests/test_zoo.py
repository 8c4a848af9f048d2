"""Issue 8's zoo: every model of ``zoo_models.ZOO``, by each torch exporter, compiles for semi2k, dealer and
replicated-ring, and the fixed-point reference agrees with onnxruntime on 8 random images within
``zoo_models.tolerance`` (max(0.02, 1 % of the largest |logit|), the issue's acceptance figure)."""
from __future__ import annotations

from pathlib import Path

import pytest

from onnx_fixtures import shared_dir
from zoo_models import EXPORTERS, ZOO, compile_zoo, export_zoo

# Cases that fail on this branch alone, waiting for the general lowering (LOWER) or the frontend (FRONT) of
# issue 8; each names the missing op. Temporary: the merged branches must pass them (see /work/zoo_status.md).
PENDING: dict[str, str] = {
    "vit_avg": "LOWER: reduce_sum (the token sum of global average pooling)",
    "sdpa_block": "LOWER: reduce_sum (the token sum of global average pooling)",
    "vit_gelu_tanh": "FRONT: Pow 3 and Tanh converters (the pattern fuse_gelu_tanh then makes it one gelu node)",
    "vit_map": "LOWER: secret x secret matmul (attention-pool's latent query) and reduce ops",
    "vit_swiglu": "FRONT/LOWER: Sigmoid (SiLU gate), secret x secret mul",
    "cait": "LOWER: matmul/softmax of class attention, talking-heads mixing",
    "eva": "FRONT/LOWER: Neg and secret x secret mul (rotary embedding)",
    "swin": "FRONT: Pad, Mod (shifted windows); LOWER: generic ops",
    "pit": "FRONT: general Conv (overlapping patch stem, depthwise pooling)",
    "convit": "FRONT: ScatterND; LOWER: Sigmoid gating, matmul",
    "xcit": "FRONT: general Conv, BatchNormalization; LOWER: cross-covariance attention (matmul, div)",
    "levit": "FRONT: general Conv, BatchNormalization, HardSwish; LOWER: matmul",
    "nn_transformer_encoder_layer": "FRONT: Mod (TorchScript's shape subgraph); LOWER: reduce_sum (mean pooling)",
    "nn_multihead_attention": "FRONT: Mod (TorchScript's shape subgraph); LOWER: reduce_sum (mean pooling)",
}


def _cases() -> list:
    cases = []
    for name in ZOO:
        for exporter in EXPORTERS:
            marks = [pytest.mark.xfail(reason=PENDING[name], strict=False)] if name in PENDING else []
            cases.append(pytest.param(name, exporter, id=f"{name}-{exporter}", marks=marks))
    return cases


@pytest.fixture(scope="module")
def zoo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = shared_dir(tmp_path_factory) / "zoo"
    path.mkdir(exist_ok=True)
    return path


@pytest.mark.slow
@pytest.mark.parametrize("name, exporter", _cases())
def test_zoo_model_compiles_within_tolerance(name: str, exporter: str, zoo_dir: Path) -> None:
    results = compile_zoo(export_zoo(name, exporter, zoo_dir))
    failed = {protocol: f"max |err| {err:.3g} > {tol:.3g}" for protocol, (err, tol) in results.items() if err > tol}
    assert not failed, f"{name} ({exporter}): {failed}"
