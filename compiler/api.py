"""One call from an ONNX file to a compiled MP-SPDZ program: ``compile_onnx`` (used by the CLI, the demo, the runtime).

Nothing is written unless every stage succeeds: the fixed-point reference runs on the emitted sample input (so
values leaving the fixed-point range are reported, naming the tensor) before the output directory is created.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from compiler.backend import Manifest, emit
from compiler.calibrate import Calibration, calibrate, choose_frac_bits, load_calibration_images
from compiler.cost import CostReport, estimate
from compiler.errors import UserError
from compiler.frontend import load_onnx
from compiler.lowering import Program, get_profile, lower
from compiler.lowering.profiles import DEFAULT_F, DEFAULT_K
from compiler.lowering.plans import client_layout
from compiler.passes import run_passes
from compiler.reference import execute


RANDOM_SOURCE = "random N(0, 1) images"  # sample_images' fallback when the model names no dataset we hold
# Default number of the sample inputs the parameters are calibrated on (without --calibrate): the float IR runs
# once per image batch (vit_7_4_32: ~0.1 s an image), so this bounds the compile time it adds.
CALIBRATION_SAMPLES = 32


@dataclass
class LayerError:
    name: str
    op: str
    max_abs_error: float  # fixed point vs the float evaluation of the same IR, over all samples
    max_abs_value: float
    growth: float = 1.0  # relative error (max |err| / max |v|) over that of its worst secret input (see error_growth)

    @property
    def rel_error(self) -> float:
        return self.max_abs_error / max(self.max_abs_value, 1e-12)


@dataclass
class CheckReport:
    samples: int
    source: str  # where the sample images came from
    layers: list[LayerError]
    max_logit_error: float  # fixed-point reference vs onnxruntime
    float_ir_error: float  # float IR evaluation vs onnxruntime (the frontend/passes' own exactness)
    top1_agreement: float

    @property
    def worst_growth(self) -> LayerError | None:
        """The layer whose relative error grows most over its input's: where precision is lost."""
        return max(self.layers, key=lambda e: e.growth, default=None)

    def table(self) -> str:
        lines = [f"check: {self.samples} inputs ({self.source}); fixed point vs float per layer",
                 f"{'node':<48} {'op':<10} {'max |err|':>10} {'max |v|':>9} {'rel err':>9} {'growth':>7}"]
        lines += [f"{e.name[-48:]:<48} {e.op:<10} {e.max_abs_error:>10.2e} {e.max_abs_value:>9.3g} "
                  f"{e.rel_error:>9.2e} {e.growth:>6.1f}x" for e in self.layers]
        worst = self.worst_growth
        if worst is not None:
            lines.append(f"error grows most at {worst.name} ({worst.op}): relative error {worst.rel_error:.2e}, "
                         f"{worst.growth:.1f}x its input's")
        lines.append(f"logits vs onnxruntime: max |err| {self.max_logit_error:.3e} (float IR {self.float_ir_error:.1e}), "
                     f"top-1 agreement {self.top1_agreement * 100:.1f}%")
        return "\n".join(lines)

    def as_dict(self) -> dict[str, Any]:
        worst = self.worst_growth
        return {"samples": self.samples, "source": self.source, "max_logit_error": self.max_logit_error,
                "float_ir_error": self.float_ir_error, "top1_agreement": self.top1_agreement,
                "error_grows_most_at": worst.name if worst is not None else None,
                "layers": [{**e.__dict__, "rel_error": e.rel_error} for e in self.layers]}


def error_growth(program: Program, layers: dict[str, LayerError], input_rel_error: float) -> None:
    """Fill each layer's ``growth``: its relative error over the largest relative error among its secret inputs.

    Relative errors (max |err| / max |v|) so that a layer that only rescales (a LayerNorm of tiny tokens, a
    scale) shows no growth; the client's input starts at ``input_rel_error`` (half an LSB of quantisation over
    its largest magnitude).
    """
    graph = program.graph
    by_output = {graph_output: layers[p.node.name] for p in program.node_plans if p.node.name in layers
                 for graph_output in p.node.outputs}
    for p in program.node_plans:
        layer = layers.get(p.node.name)
        if layer is None:
            continue
        inputs = []
        for name in p.node.inputs:
            if graph.values[name].role != "secret":
                continue
            source = by_output.get(name)
            inputs.append(source.rel_error if source is not None else input_rel_error)
        base = max(inputs, default=input_rel_error)
        layer.growth = layer.rel_error / max(base, 1e-12)


@dataclass
class CompileResult:
    manifest: Manifest
    program: Program
    cost: CostReport
    check: CheckReport | None = None
    calibration: Calibration | None = None
    timings: dict[str, float] = field(default_factory=dict)


def sample_images(metadata: dict[str, str], image_shape: tuple[int, ...], count: int,
                  seed: int = 0) -> tuple[np.ndarray, str]:
    """``count`` model inputs: the metadata's dataset (``digits``, normalised) when its images fit, else N(0, 1)."""
    if metadata.get("mpcvit.dataset") == "digits":
        from compiler.runtime.datasets import digits_test_set, normalise

        x, _ = digits_test_set()
        x = normalise(x, metadata)
        if x.shape[1:] == tuple(image_shape[1:]):
            reps = -(-count // len(x))
            return np.concatenate([x] * reps)[:count].astype(np.float64), "digits test set"
    rng = np.random.default_rng(seed)
    return rng.standard_normal((count, *image_shape[1:])), RANDOM_SOURCE


def onnxruntime_logits(onnx_path: str | Path, images: np.ndarray) -> np.ndarray:
    """onnxruntime's outputs for ``images``, in chunks of the model's batch when that is fixed."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    spec = session.get_inputs()[0]
    fixed = spec.shape[0] if isinstance(spec.shape[0], int) else None
    dtype = {"tensor(double)": np.float64, "tensor(float16)": np.float16}.get(spec.type, np.float32)
    step = fixed or len(images)
    outs = []
    for start in range(0, len(images), step):
        chunk = images[start:start + step].astype(dtype)
        pad = step - len(chunk)
        if pad:
            chunk = np.concatenate([chunk, np.repeat(chunk[:1], pad, axis=0)])
        outs.append(session.run(None, {spec.name: chunk})[0][:step - pad])
    return np.concatenate(outs)


def check_program(program: Program, onnx_path: str | Path, images: np.ndarray, source: str) -> CheckReport:
    """Reference executor (per layer: fixed vs float) and onnxruntime on ``images``, batch by batch."""
    graph, batch = program.graph, program.batch
    name, out = graph.inputs[0], graph.outputs[0]
    worst: dict[str, LayerError] = {}
    fixed, floats = [], []
    for start in range(0, len(images), batch):
        chunk = images[start:start + batch]
        pad = batch - len(chunk)
        if pad:
            chunk = np.concatenate([chunk, np.repeat(chunk[:1], pad, axis=0)])
        result = execute(program, {name: chunk})
        fixed.append(result.outputs[out][:batch - pad])
        floats.append(result.float_outputs[out][:batch - pad])
        for rec in result.per_node:
            prev = worst.get(rec.name)
            worst[rec.name] = LayerError(rec.name, rec.op, max(rec.max_abs_error, prev.max_abs_error if prev else 0.0),
                                         max(rec.max_abs_value, prev.max_abs_value if prev else 0.0))
    error_growth(program, worst, 0.5 * program.profile.fx.lsb / max(float(np.abs(images).max()), 1e-12))
    ort_out = onnxruntime_logits(onnx_path, images).reshape(len(images), -1)
    fixed_out = np.concatenate(fixed).reshape(len(images), -1)
    float_out = np.concatenate(floats).reshape(len(images), -1)
    return CheckReport(len(images), source, list(worst.values()), float(np.max(np.abs(fixed_out - ort_out))),
                       float(np.max(np.abs(float_out - ort_out))),
                       float(np.mean(fixed_out.argmax(1) == ort_out.argmax(1))))


def compile_onnx(onnx_path: str | Path, out_dir: str | Path, protocol: str = "replicated-ring", batch: int = 1,
                 frac_bits: int | None = None, approx: dict[str, str] | None = None, check: bool = False,
                 check_samples: int = 200, reveal: str = "logits", template_set: str | None = None,
                 on_graph: Callable[[Any], None] | None = None, calibration: str | Path | None = None,
                 calibration_samples: int = CALIBRATION_SAMPLES) -> CompileResult:
    """ONNX -> IR -> passes -> lowering for ``protocol`` -> ``out_dir`` (see module doc).

    ``on_graph`` sees the IR after the passes (``--dump-ir``). ``check`` compares the fixed-point reference with
    onnxruntime on ``check_samples`` inputs (the digits test set when the metadata names it, else random).
    ``calibration``: an .npz of images (``--calibrate``) whose float ranges choose the fixed-point parameters
    (:mod:`compiler.calibrate`); by default the first ``calibration_samples`` of those same sample inputs.
    """
    if check and check_samples < 1:
        raise UserError(f"--check-samples {check_samples}: give at least 1")
    timings: dict[str, float] = {}
    start = time.perf_counter()
    graph = run_passes(load_onnx(onnx_path, batch=batch))
    timings["frontend_s"] = time.perf_counter() - start
    if on_graph is not None:
        on_graph(graph)
    image_shape, _ = client_layout(graph)
    images, source = sample_images(graph.metadata, image_shape,
                                   max(batch, check_samples if check else 0, calibration_samples))
    if calibration is not None:
        calib = calibrate(graph, load_calibration_images(calibration), f"--calibrate {calibration}")
    else:
        calib = calibrate(graph, images[:calibration_samples], source)
    if frac_bits is None and (calibration is not None or source != RANDOM_SOURCE):
        # as many fractional bits as the calibrated ranges allow, when they come from real images (the activations
        # of a trained model on random noise need not bound those on its data)
        frac_bits, calib.frac_bits_bound = choose_frac_bits(calib, graph, DEFAULT_K, DEFAULT_F)
    elif frac_bits is None:
        calib.frac_bits_bound = f"the default {DEFAULT_F}: calibrated on random images only (give --calibrate)"
    profile = get_profile(protocol, frac_bits, approx)
    program = lower(calib.annotate(graph), profile, name=Path(onnx_path).stem, reveal=reveal)
    execute(program, {graph.inputs[0]: images[:batch]})  # range errors surface here, before anything is written
    timings["lowering_s"] = time.perf_counter() - start - timings["frontend_s"]
    report = check_program(program, onnx_path, images[:check_samples], source) if check else None
    emit_start = time.perf_counter()
    manifest = emit(program, out_dir, onnx_path=onnx_path, client_images=images[:batch], template_set=template_set,
                    calibration=calib.as_dict(program))
    timings["emit_s"] = time.perf_counter() - emit_start
    timings["total_s"] = time.perf_counter() - start
    return CompileResult(manifest, program, estimate(program), report, calib, timings)
