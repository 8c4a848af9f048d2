"""ONNX export with torch's dynamo exporter (opset 18, one file), checked by onnx.checker and onnxruntime, with the
model config, head kinds, MLP kinds and input normalisation stored as metadata for the compiler."""
from __future__ import annotations

import contextlib
import io
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch

from compiler.errors import UserError
from mpcvit.models import MPCViT

OPSET = 18
TOLERANCE = 1e-4


@dataclass
class ExportResult:
    path: Path
    max_abs_error: float
    metadata: dict[str, str]


def export_metadata(model: MPCViT, dataset: dict[str, Any]) -> dict[str, str]:
    """The ONNX metadata keys of DESIGN.md."""
    return {
        "mpcvit.config": json.dumps(model.cfg.to_dict()),
        "mpcvit.head_kinds": json.dumps(model.cfg.head_kinds),
        "mpcvit.mlp_kinds": json.dumps(model.cfg.mlp_kinds),
        "mpcvit.dataset": str(dataset.get("name", "")),
        "mpcvit.input_mean": json.dumps(list(dataset.get("mean", []))),
        "mpcvit.input_std": json.dumps(list(dataset.get("std", []))),
    }


def write_onnx(model: MPCViT, path: Path, metadata: dict[str, str]) -> None:
    """Export ``model`` with a dynamic batch axis (the compiler fixes it with ``--batch``) and store ``metadata``."""
    cfg = model.cfg
    # a traced batch of 2: torch.export specialises a batch of 1 into a constant
    sample = torch.zeros((2, cfg.in_chans, cfg.img_size, cfg.img_size))
    # the dynamo exporter reports progress on stdout and through logging; keep the CLI output to our own lines
    quiet = logging.getLogger("torch.onnx")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            torch.onnx.export(model, (sample,), str(path), dynamo=True, opset_version=OPSET, external_data=False,
                              input_names=["image"], output_names=["logits"], verbose=False,
                              dynamic_shapes=({0: torch.export.Dim("batch")},))
    finally:
        quiet.setLevel(level)
    proto = onnx.load(str(path))
    onnx.helper.set_model_props(proto, metadata)
    onnx.checker.check_model(proto, full_check=True)
    onnx.save(proto, str(path))


def onnxruntime_max_error(path: Path, model: MPCViT, inputs: torch.Tensor) -> float:
    """Largest |onnxruntime − PyTorch| over the logits of ``inputs`` (one batch)."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        expected = model(inputs).numpy()
    got = session.run(None, {session.get_inputs()[0].name: inputs.numpy()})[0]
    return float(np.abs(got - expected).max())


def export_onnx(model: MPCViT, path: str | Path, dataset: dict[str, Any], sample: torch.Tensor | None = None,
                tolerance: float = TOLERANCE, check_images: int = 4) -> ExportResult:
    """Export ``model`` (fixed kinds, eval mode) to ``path`` and verify it against onnxruntime.

    The check runs ``sample`` plus ``check_images - 1`` random images; an error above ``tolerance`` raises.
    """
    if model.cfg.search:
        raise UserError("cannot export a search model (mixed α); binarise it with `mpcvit retrain --mu ...` first")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    cfg = model.cfg
    shape = (1, cfg.in_chans, cfg.img_size, cfg.img_size)
    generator = torch.Generator().manual_seed(0)
    sample = torch.randn(shape, generator=generator) if sample is None else sample.reshape(shape)
    metadata = export_metadata(model, dataset)
    write_onnx(model, path, metadata)
    images = torch.cat([sample, torch.randn((max(check_images - 1, 0), *shape[1:]), generator=generator)])
    error = onnxruntime_max_error(path, model, images)
    if not error <= tolerance:
        raise UserError(f"ONNX export {path}: onnxruntime differs from PyTorch by {error:.3g} > {tolerance:g}; "
                        "the graph did not export faithfully (report this model config)")
    return ExportResult(path, error, metadata)


def read_metadata(path: str | Path) -> dict[str, str]:
    return {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
