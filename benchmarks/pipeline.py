"""ONNX → lowered program → cost estimate, reference-executor error, emitted MP-SPDZ program (DESIGN.md entry points)."""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from compiler.backend import emit
from compiler.cost import CostReport, estimate
from compiler.frontend import load_onnx, require_one_input
from compiler.ir_eval import apply_input_layout
from compiler.lowering import Program, get_profile, lower
from compiler.passes import run_passes
from compiler.reference import execute
from compiler.api import CALIBRATION_SAMPLES, calibrate_graph, onnxruntime_logits, sample_images
from compiler.calibrate import Calibration
from compiler.lowering.plans import client_layout


@dataclass
class Compiled:
    program: Program
    cost: CostReport
    compile_s: float           # frontend + passes + lowering + emission (our compiler, not MP-SPDZ's)
    out_dir: Path | None
    reference_max_error: float | None = None  # fixed-point reference vs onnxruntime, on seeded images

    @property
    def batch(self) -> int:
        return self.program.batch


def calibrate_model(onnx_path: Path, batch: int) -> tuple[Calibration, int | None]:
    """The calibration ``mpcvit-compile`` makes by default (its sample images) and the f it chooses, once per model
    for :func:`compile_model` (the ranges do not depend on the protocol)."""
    graph = run_passes(require_one_input(load_onnx(onnx_path, batch=batch), onnx_path))
    images, source = sample_images(graph.metadata, client_layout(graph)[0], CALIBRATION_SAMPLES)
    return calibrate_graph(graph, images, source)


def compile_model(onnx_path: Path, protocol: str, batch: int, out_dir: Path | None = None,
                  template_set: str | None = None, name: str = "mpcvit",
                  calibration: tuple[Calibration, int | None] | None = None) -> Compiled:
    """``calibration`` (:func:`calibrate_model`): the fixed-point parameters (pre-scales, domains, segments,
    comparison bit lengths, f) chosen from its ranges, as ``mpcvit-compile`` does; None: the uncalibrated
    lowering."""
    start = time.perf_counter()
    graph = run_passes(require_one_input(load_onnx(onnx_path, batch=batch), onnx_path))
    frac_bits = None
    if calibration is not None:
        calib, frac_bits = calibration
        calib.annotate(graph)
    program = lower(graph, get_profile(protocol, frac_bits), name=name)
    if out_dir is not None:
        emit(program, out_dir, onnx_path=onnx_path, template_set=template_set)
    compile_s = time.perf_counter() - start
    return Compiled(program, estimate(program), compile_s, out_dir)


def reference_error(compiled: Compiled, onnx_path: Path, seed: int = 0) -> float:
    """Largest |fixed-point reference − onnxruntime| logit over one batch of seeded standard-normal images."""
    graph = compiled.program.graph
    input_node = next(n for n in graph.nodes if n.op == "input")
    shape = tuple(input_node.attrs.get("image_shape") or graph.values[graph.inputs[0]].shape)
    images = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
    result = execute(compiled.program, {graph.inputs[0]: apply_input_layout(input_node, images)})
    fixed = next(iter(result.outputs.values()))
    return float(np.abs(fixed.reshape(len(images), -1) - onnxruntime_logits(onnx_path, images)).max())
