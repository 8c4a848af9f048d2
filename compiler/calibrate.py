"""Calibration: the float IR run on sample inputs, each tensor's range, and the choices made from the ranges.

``calibrate(graph, images)`` evaluates the IR in float64 (:func:`compiler.ir_eval.evaluate`, every value kept) on
the calibration images (``mpcvit-compile --calibrate FILE.npz``; by default the check samples of
:func:`compiler.api.sample_images`) and records, per tensor, its min and max over all samples, and per call site
the statistics its fixed-point parameters depend on (LayerNorm: the per-row variance range, the largest |row mean|
and |x - mean|, and |γ|; attention: the largest |score|, and with ReLU-softmax heads the range of its row sums
Σ relu(S) + ε, ``cmp_abs`` the largest |score + bias|, what its comparisons see, and ``v_abs`` the largest |v|,
the range of P·V; every other node that compares: ``in_abs``, its first input's largest magnitude; a linear that
takes a LayerNorm's output: ``product_abs``, its largest |x·W|, which bounds the fused truncation of both).
:meth:`Calibration.annotate` writes those statistics into ``node.attrs["calibration"]``, where
:mod:`compiler.lowering.plans` reads them (``layernorm_scale``, ``relu_softmax_scale``); :func:`choose_frac_bits`
picks f from the ranges. Lowering chooses from them the pre-scales (LayerNorm, ReLU-softmax row sums), the
approximation domains (reciprocal, rsqrt), the GeLU/tanh/erf/sigmoid segments (the cut comparisons are dropped
where the input stays inside the polynomial's interval) and the bit length of every comparison
(``compiler.lowering.plans.comparison_bits``); the manifest's ``calibration.choices`` lists them per call site.

Safety margin: inputs other than the calibration samples are assumed to reach up to ``MAGNITUDE_MARGIN`` (4)
times the calibrated magnitudes (16 times for variances, its square). The same margin bounds the client's input:
party 1 refuses (:func:`check_client_images`) an image whose values leave ±4·max|calibrated input|, before
anything is secret-shared, since the parameters chosen here would not cover it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from compiler.errors import CompileError, UserError
from compiler.ir import Graph
from compiler.lowering.plans import MAGNITUDE_MARGIN, Program, comparison_steps

FLOAT32_FROM = 20_000_000  # weights from which calibration evaluates in float32 (see calibrate)

# Node kinds whose comparisons, polynomial segments or (reduce_mean) constants follow their first input's calibrated
# magnitude ``in_abs``
INPUT_MAGNITUDE = ("relu", "gelu", "abs", "clip", "hardsigmoid", "hardswish", "reduce_max", "softmax", "sigmoid",
                   "tanh", "erf", "output", "reduce_mean")


@dataclass
class Calibration:
    samples: int
    source: str  # where the calibration images came from
    input_range: tuple[float, float]  # min, max of the client's images (the model input, before its layout)
    ranges: dict[str, tuple[float, float]]  # tensor -> (min, max) over all samples
    sites: dict[str, dict[str, Any]] = field(default_factory=dict)  # node name -> statistics for its parameters
    frac_bits_bound: str | None = None  # the magnitude that bounded an automatic choice of f (choose_frac_bits)
    warnings: list[str] = field(default_factory=list)  # inputs outside an op's mathematical domain (domain_warnings)

    @property
    def input_bound(self) -> float:
        """The largest |image value| party 1 accepts: the margin times the calibrated largest magnitude."""
        return MAGNITUDE_MARGIN * max(abs(self.input_range[0]), abs(self.input_range[1]))

    def annotate(self, graph: Graph) -> Graph:
        """Write each call site's statistics into its node's ``attrs["calibration"]`` (read by lowering)."""
        for node in graph.nodes:
            if node.name in self.sites:
                node.attrs["calibration"] = self.sites[node.name]
        return graph

    def as_dict(self, program: Program | None = None) -> dict[str, Any]:
        """The manifest's ``calibration``: ranges, the input guard, and per call site the choices made."""
        out: dict[str, Any] = {
            "samples": self.samples, "source": self.source, "margin": MAGNITUDE_MARGIN,
            "input_range": list(self.input_range), "input_bound": self.input_bound,
            "ranges": {name: list(r) for name, r in self.ranges.items()}, "sites": self.sites}
        if program is not None:
            out["frac_bits"] = {"f": program.profile.f, "bounded_by": self.frac_bits_bound or "--frac-bits"}
            out["choices"] = {p.node.name: _choices(p) for p in program.node_plans
                              if p.params or any(u.params for u in p.approx.values())}
            # the program's comparison bit lengths (plans.choose_comparison_lengths), each its own preprocessing
            out["comparison_lengths"] = sorted({s.bits for s in comparison_steps(program.node_plans)})
        return out


def _choices(plan: Any) -> dict[str, Any]:
    choices: dict[str, Any] = {role: {"approx": use.label, **use.kwargs} for role, use in plan.approx.items()}
    for role, value in plan.params.items():
        if role == "bits" or role.endswith(".bits"):
            choices[role.replace("bits", "comparison_bits")] = value
    mean = plan.params.get("mean.scale")
    if mean is not None:
        choices["mean_prescale"] = {"shift": mean.shift, "extra_bits": mean.bits, "mul": mean.mul}
    scale = plan.params.get("scale")
    if scale is not None:
        choices["prescale"] = {"sigma": scale.sigma, "exact_centring": scale.exact, "shift": scale.shift,
                               "centre_bits": scale.centre_bits, "var_bits": scale.var_bits, "eps_lsb": scale.eps_int}
    return choices


def calibrate(graph: Graph, images: np.ndarray, source: str = "calibration images") -> Calibration:
    """Evaluate ``graph`` in float64 on ``images`` ([n, *image]) batch by batch and record the ranges."""
    from threadpoolctl import threadpool_limits

    from compiler.ir_eval import KERNELS, evaluate, float_constants
    from compiler.lowering.plans import _name_nodes, client_layout

    images = np.asarray(images, dtype=np.float64)
    image_shape, _ = client_layout(graph)
    batch = image_shape[0]
    if images.ndim != len(image_shape) or images.shape[1:] != tuple(image_shape[1:]) or not len(images):
        raise UserError(f"calibration images have shape {images.shape}; the model takes images of shape "
                        f"{tuple(image_shape[1:])} (give an array [n, {', '.join(map(str, image_shape[1:]))}], "
                        f"n >= 1)")
    if not np.all(np.isfinite(images)):
        raise UserError("calibration images contain NaN or infinite values; give finite, normalised images")
    if images.min() == images.max():  # no range to calibrate on: every real image would leave it
        raise UserError(f"the calibration images ({source}) are all the same value ({images.min():g}): give "
                        f"representative, normalised images")
    _name_nodes(graph)  # sites are keyed by node name, as lowering will name them
    missing = sorted({n.op for n in graph.nodes if n.op not in KERNELS and n.op not in ("input", "output")})
    if missing:
        raise CompileError(f"the model uses op(s) {', '.join(missing)}, which the float evaluator "
                           f"(compiler.ir_eval) lacks, so it cannot be calibrated; these ops are not supported yet")
    ranges: dict[str, tuple[float, float]] = {}
    sites: dict[str, dict[str, Any]] = {}
    name = graph.inputs[0]
    # a big model's ranges in float32: twice the GEMM speed, and 7 significant digits are plenty for ranges taken
    # with a 4x margin (ViT-B/16 compiles in 22 s instead of 39 s); small models keep float64
    weights = sum(v.data.size for v in graph.values.values() if v.data is not None)
    constants = float_constants(graph, np.float32 if weights >= FLOAT32_FROM else np.float64)
    for start in range(0, len(images), batch):
        chunk = images[start:start + batch]
        if len(chunk) < batch:  # the graph's batch is fixed: repeat the first image (same ranges)
            chunk = np.concatenate([chunk, np.repeat(chunk[:1], batch - len(chunk), axis=0)])
        with threadpool_limits(1, user_api="blas"):  # small GEMMs: OpenBLAS's threads cost more than they save
            env = evaluate(graph, {name: chunk}, keep_all=True, constants=constants)
            for node in graph.nodes:  # the attention statistics multiply scores too (vit_9_12_64: 31 s -> 5 s)
                if node.op == "layernorm":
                    _merge(sites, node.name, _layernorm_stats(env[node.inputs[0]], graph.values[node.inputs[1]].data))
                elif node.op == "attention":
                    _merge(sites, node.name, _attention_stats(node, [env[n] for n in node.inputs]))
                elif node.op == "linear" and getattr(graph.producer(node.inputs[0]), "op", None) == "layernorm":
                    bias = graph.values[node.inputs[2]].data if len(node.inputs) > 2 else 0.0  # (plans.RawInput)
                    _merge(sites, node.name, {"product_abs": float(np.max(np.abs(env[node.outputs[0]] - bias)))})
                if node.op in INPUT_MAGNITUDE and np.asarray(env[node.inputs[0]]).size:
                    _merge(sites, node.name, {"in_abs": float(np.max(np.abs(env[node.inputs[0]])))})
        for value, data in env.items():
            if graph.values[value].role == "secret" and np.asarray(data).dtype.kind == "f" and data.size:
                lo, hi = float(data.min()), float(data.max())
                old = ranges.get(value, (lo, hi))
                ranges[value] = (min(lo, old[0]), max(hi, old[1]))
    return Calibration(len(images), source, (float(images.min()), float(images.max())), ranges, sites,
                       warnings=domain_warnings(graph, ranges, source))


# ops undefined on part of the real line: (where, what onnxruntime gives there), keyed by IR op
UNDEFINED = {"reciprocal": ("crosses zero", "±inf"), "sqrt": ("goes below zero", "NaN"), "rsqrt": ("goes below zero", "NaN")}


def domain_warnings(graph: Graph, ranges: dict[str, tuple[float, float]], source: str) -> list[str]:
    """One line per reciprocal / sqrt / rsqrt node whose calibrated input leaves the function's domain: there the
    float model itself is infinite or NaN, and the MPC approximation (valid on one sign only) meaningless."""
    lines = []
    for node in graph.nodes:
        if node.op not in UNDEFINED or node.inputs[0] not in ranges:
            continue
        lo, hi = ranges[node.inputs[0]]
        where, result = UNDEFINED[node.op]
        if (lo <= 0.0 <= hi) if node.op == "reciprocal" else lo < 0.0:
            lines.append(f"node {node.name} ({node.op}): its input on the {source} spans [{lo:.3g}, {hi:.3g}], "
                         f"which {where}: the float model gives {result} there and the MPC result is meaningless; "
                         f"calibrate on representative inputs (--calibrate FILE.npz) or keep the input away from it")
    return lines


def _layernorm_stats(x: np.ndarray, gamma: np.ndarray | None) -> dict[str, Any]:
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1)
    return {"var": [float(var.min()), float(var.max())], "mean_abs": float(np.abs(mean).max()),
            "diff_abs": float(np.abs(x - mean).max()),
            "gamma_abs": float(np.abs(gamma).max()) if gamma is not None else 1.0}


def _attention_stats(node: Any, sources: list[np.ndarray]) -> dict[str, Any]:
    """The largest |score| of any head, the largest |score + bias| (what the row max and the ReLU compare), the
    largest |v| (the product P·V's range), and [min, max] over the ReLU-softmax rows of Σ relu(S) + ε."""
    from compiler.ir_eval import attention_heads

    q, k, v = attention_heads(node, *sources[:3])  # [..., H, N, d]
    scores = (q * float(node.attrs.get("scale", 1.0))) @ np.swapaxes(k, -1, -2)
    stats: dict[str, Any] = {"scores_abs": float(np.abs(scores).max()), "v_abs": float(np.abs(v).max())}
    if len(sources) > 3:  # bias [b, H, N, N], b broadcasting over the batch
        scores = scores + np.asarray(sources[3])
    stats["cmp_abs"] = float(np.abs(scores).max())
    relu = np.array([h["kind"] == "relu_softmax" for h in node.attrs["heads"]])
    if relu.any():
        sums = np.maximum(scores[..., relu, :, :], 0).sum(-1) + float(node.attrs.get("eps", 0.0) or 0.0)
        stats["relu_sums"] = [float(sums.min()), float(sums.max())]
    return stats


def _merge(sites: dict[str, dict[str, Any]], name: str, stats: dict[str, Any]) -> None:
    """Union of the statistics of two batches: ranges widen, maxima grow."""
    old = sites.get(name)
    if old is None:
        sites[name] = stats
        return
    for key, value in stats.items():
        if isinstance(value, list):
            old[key] = [min(old[key][0], value[0]), max(old[key][1], value[1])]
        else:
            old[key] = max(old[key], value)


# The most fractional bits choose_frac_bits picks: the approximations' bounds are tested up to here, and MP-SPDZ's
# sfix products truncate (k + f)-bit values in the 64-bit ring.
MAX_AUTO_FRAC_BITS = 20


def choose_frac_bits(calibration: Calibration, graph: Graph, k: int, default: int) -> tuple[int, str]:
    """The most fractional bits f (from ``default`` up to MAX_AUTO_FRAC_BITS) that keep every calibrated
    magnitude, times the margin, inside the comparison/product range 2^(k-f-1): every secret tensor, twice every
    attention's largest |score| (a softmax exponent s - max), and a softmax row sum (<= N). LayerNorm and ReLU-softmax
    internals adapt their own pre-scale to f. Returns f and the magnitude that bounds it."""
    worst: list[tuple[float, str]] = [(abs(v), name) for name, r in calibration.ranges.items() for v in r]
    for node in graph.nodes:
        site = calibration.sites.get(node.name, {})
        if "scores_abs" in site:
            worst.append((2 * site["scores_abs"], f"{node.name} (attention scores)"))
            if any(h["kind"] == "softmax" for h in node.attrs["heads"]):
                worst.append((float(node.attrs["tokens"]) / MAGNITUDE_MARGIN, f"{node.name} (softmax row sums)"))
    top, name = max(worst, default=(1.0, "no tensor"))
    f = k - 2 - max(0, math.ceil(math.log2(max(top * MAGNITUDE_MARGIN, 1e-12))))
    if f >= MAX_AUTO_FRAC_BITS:
        return MAX_AUTO_FRAC_BITS, f"the cap {MAX_AUTO_FRAC_BITS} (largest: {name}, |v| {top:.3g})"
    return max(f, default), f"{name}, |v| {top:.3g}"


def load_calibration_images(path: str | Path, input_name: str | None = None) -> np.ndarray:
    """The images of ``--calibrate FILE.npz``: the array :func:`compiler.runtime.datasets.image_array` picks (named
    like the model input, else ``x``, else the first that is not ``y``), as ``mpcvit run --data`` does."""
    from compiler.runtime.datasets import image_array

    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            key = image_array(list(data.keys()), input_name)
            if key is None:
                raise UserError(f"--calibrate {path}: holds no image array; save the images as x "
                                "(np.savez(path, x=images))")
            return np.asarray(data[key], dtype=np.float64)
    except FileNotFoundError:
        raise UserError(f"--calibrate {path}: no such file; give an .npz of normalised images "
                        "(np.savez(path, x=images))") from None
    except (ValueError, OSError, AttributeError, TypeError, EOFError) as exc:  # a .npy, a damaged archive
        raise UserError(f"--calibrate {path}: not a readable .npz ({type(exc).__name__}); write it with "
                        "np.savez(path, x=images)") from None


def check_client_images(manifest: dict[str, Any], images: np.ndarray, source: str = "the images") -> None:
    """Party 1's guard, run on its own plaintext images before anything is secret-shared (reveals nothing).

    Raises one line, naming ``source`` (e.g. ``--data x.npz``), when a value leaves the manifest's
    ``calibration.input_bound``: the parameters chosen for the program would not cover it, and MPC would compute
    wrapped values without noticing.
    """
    calib = manifest.get("calibration")
    if not calib:
        return
    images = np.asarray(images, dtype=np.float64)
    if images.size == 0:
        return
    if not np.all(np.isfinite(images)):
        raise UserError(f"{source} hold NaN or infinite values; give finite, normalised inputs")
    worst = float(np.max(np.abs(images)))
    if worst > float(calib["input_bound"]):
        signed = float(images.max()) if abs(float(images.max())) >= abs(float(images.min())) else float(images.min())
        lo, hi = calib["input_range"]
        meta = (manifest.get("model_config") or {})
        norm = ", ".join(f"{k.split('.')[-1].replace('input_', '')} {meta[k]}" for k in ("mpcvit.input_mean",
                                                                                     "mpcvit.input_std") if k in meta)
        raise UserError(f"{source}: image values reach {signed:.4g}, beyond the |v| <= "
                        f"{float(calib['input_bound']):.3g} the program accepts (calibrated on [{lo:.2g}, {hi:.2g}], "
                        "with its margin): normalise them as in training"
                        + (f" ({norm} in the model metadata)" if norm else "")
                        + ", or recompile calibrated on images like these (mpcvit-compile --calibrate FILE.npz)")
