"""SecretFlow SPU as a benchmark peer: the same ONNX file under SPU's ABY3 and SEMI2K next to MP-SPDZ.

SPU lives in its own virtual environment (``requirements-spu.txt``; found at ``$MPCVIT_SPU_PYTHON`` or
``<repo>/.venv-spu/bin/python``), so this module only prepares the model and images in the main environment and runs
``spu_worker.py`` there as a subprocess. The worker needs static shapes and folded constants: onnxruntime's basic
graph optimisation (constant folding, standard ONNX ops only) writes that file here.

Figures per protocol (medians over the images; each image is one SPU execution, as each mpcvit run is one MP-SPDZ
execution per batch): ``time_s`` (slowest party's wall time of the run, seconds, connection set-up excluded),
``bytes_party0`` and ``bytes_all`` (bytes sent), ``sends`` (party 0's send actions, SPU's figure closest to
rounds: one action per message, so concurrent messages count separately), and ``max_logit_error`` against
onnxruntime on the same images.
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from compiler.errors import UserError

REPO = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).with_name("spu_worker.py")
REQUIREMENTS = Path(__file__).with_name("requirements-spu.txt")
PROTOCOLS = ("ABY3", "SEMI2K")  # SEMI2K with a trusted first party generating the Beaver triples
SETUP = (f"python3.11 -m venv .venv-spu && .venv-spu/bin/pip install -r "
         f"{REQUIREMENTS.relative_to(REPO)}")


def spu_python() -> Path:
    """The SPU environment's interpreter; :class:`UserError` (one line: how to make it) when it is missing."""
    configured = os.environ.get("MPCVIT_SPU_PYTHON")
    python = Path(configured) if configured else REPO / ".venv-spu" / "bin" / "python"
    where = "$MPCVIT_SPU_PYTHON" if configured else str(python.relative_to(REPO))
    if not python.is_file():
        raise UserError(f"--peer spu: SPU is not installed ({where} not found); make its environment from the "
                        f"repository root with: {SETUP}")
    probe = subprocess.run([str(python), "-c", "import spu, jaxonnxruntime"], capture_output=True, text=True)
    if probe.returncode != 0:
        last = (probe.stderr.strip().splitlines() or ["no output"])[-1]
        raise UserError(f"--peer spu: {where} cannot import spu/jaxonnxruntime ({last}); remake it with: {SETUP}")
    return python


def prepare_onnx(onnx_path: Path, out_path: Path) -> Path:
    """``onnx_path`` with batch 1 and constants folded by onnxruntime (what jaxonnxruntime needs)."""
    import onnx
    import onnxruntime as ort

    model = onnx.load(str(onnx_path))
    for value in [*model.graph.input, *model.graph.output]:
        dim = value.type.tensor_type.shape.dim[0]
        if not dim.HasField("dim_value"):
            dim.ClearField("dim_param")
            dim.dim_value = 1
    static = out_path.with_suffix(".static.onnx")
    onnx.save(model, str(static))
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.optimized_model_filepath = str(out_path)
    ort.InferenceSession(str(static), options, providers=["CPUExecutionProvider"])
    return out_path


def run_spu(onnx_path: Path, images: np.ndarray, protocols: tuple[str, ...] = PROTOCOLS,
            timeout_s: float = 1800.0) -> dict[str, dict[str, Any]]:
    """Run ``images`` ([n, *input shape], model-ready) through ``onnx_path`` under SPU; figures per protocol.

    Raises :class:`UserError` when SPU is not installed or a run fails (its last line of output named).
    """
    from compiler.api import onnxruntime_logits

    python = spu_python()
    plain = onnxruntime_logits(onnx_path, images)
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="mpcvit-peer-") as tmp:
        folded = prepare_onnx(onnx_path, Path(tmp) / "model.onnx")
        np.save(Path(tmp) / "images.npy", images.astype(np.float32))
        for protocol in protocols:
            out = Path(tmp) / f"{protocol}.json"
            try:
                done = subprocess.run([str(python), str(WORKER), "--onnx", str(folded), "--images",
                                       str(Path(tmp) / "images.npy"), "--protocol", protocol, "--timeout", str(timeout_s),
                                       "--out", str(out)],
                                      capture_output=True, text=True, timeout=timeout_s)
            except subprocess.TimeoutExpired:
                raise UserError(f"--peer spu: SPU {protocol} did not finish within {timeout_s:.0f} s") from None
            if done.returncode != 0:
                last = ((done.stderr or done.stdout).strip().splitlines() or ["no output"])[-1]
                raise UserError(f"--peer spu: SPU {protocol} failed: {last}")
            results[f"spu-{protocol.lower()}"] = summarise(json.loads(out.read_text()), plain)
    return results


def summarise(worker: dict[str, Any], plain: np.ndarray) -> dict[str, Any]:
    """The worker's per-image runs → medians, and the logit error / top-1 agreement against ``plain``."""
    runs = worker["runs"]
    logits = np.concatenate([np.asarray(r["logits"], dtype=np.float64).reshape(1, -1) for r in runs])
    plain = plain.reshape(len(logits), -1)
    return {"system": f"SPU {worker['spu']} {worker['protocol']}", "parties": worker["parties"],
            "images": len(runs),
            "time_s": statistics.median(r["time_s"] for r in runs),
            "bytes_party0": int(statistics.median(r["parties"][0]["bytes_sent"] for r in runs)),
            "bytes_all": int(statistics.median(sum(p["bytes_sent"] for p in r["parties"]) for r in runs)),
            "sends": int(statistics.median(r["parties"][0]["send_actions"] for r in runs)),
            "max_logit_error": float(np.abs(logits - plain).max()),
            "top1_agreement": float(np.mean(logits.argmax(-1) == plain.argmax(-1)))}
