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
from compiler.frontend import load_onnx, require_one_input
from compiler.lowering import Program, get_profile, lower
from compiler.lowering.profiles import DEFAULT_F, DEFAULT_K
from compiler.lowering.plans import client_layout
from compiler.passes import run_passes
from compiler.reference import execute


RANDOM_SOURCE = "random N(0, 1) images"  # sample_images' fallback when the model names no dataset we hold
# Default number of the sample inputs the parameters are calibrated on (without --calibrate): the float IR runs
# once per image batch (vit_7_4_32: ~0.1 s an image), so this bounds the compile time it adds.
CALIBRATION_SAMPLES = 32
CHECK_ABS_TOLERANCE, CHECK_REL_TOLERANCE = 0.02, 0.01  # see CheckReport.tolerance
# IR ops whose error is an approximation's (the --approx ops they call), which more fractional bits do not shrink
APPROXIMATED_OPS = {"gelu": ("gelu",), "layernorm": ("rsqrt",), "attention": ("exp", "reciprocal"),
                    "softmax": ("exp", "reciprocal"), "tanh": ("tanh",), "erf": ("erf",), "sigmoid": ("sigmoid",),
                    "exp": ("exp",), "reciprocal": ("reciprocal",), "rsqrt": ("rsqrt",), "sqrt": ("sqrt",)}


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
    max_logit_error: float  # fixed-point reference vs onnxruntime, over every output
    float_ir_error: float  # float IR evaluation vs onnxruntime (the frontend/passes' own exactness)
    top1_agreement: float  # argmax of output 0 per input
    output_errors: dict[str, float] = field(default_factory=dict)  # per graph output: fixed point vs onnxruntime
    max_abs_output: float = 0.0  # the largest |onnxruntime output|, which sets the tolerance

    @property
    def tolerance(self) -> float:
        """The bar a compiled program meets on a ViT's logits: max(0.02, 1 % of the largest |logit|), the zoo's
        (tests/test_zoo.py): the fixed-point LSB and the approximations' bounds, summed over the layers."""
        return max(CHECK_ABS_TOLERANCE, CHECK_REL_TOLERANCE * self.max_abs_output)

    @property
    def within_tolerance(self) -> bool:
        return bool(self.max_logit_error <= self.tolerance)  # False for NaN too

    @property
    def worst_growth(self) -> LayerError | None:
        """The layer whose relative error grows most over its input's: where precision is lost. Only layers whose
        relative error reaches a tenth of the largest count: the first layer's growth over the image's quantisation
        (~30x of a 1e-6 error) is large but loses nothing that matters."""
        top = max((e.rel_error for e in self.layers), default=0.0)
        return max((e for e in self.layers if e.rel_error >= top / 10), key=lambda e: e.growth, default=None)

    def table(self) -> str:
        lines = [f"check: {self.samples} inputs ({self.source}); fixed point vs float per layer",
                 f"{'node':<48} {'op':<10} {'max |err|':>10} {'max |v|':>9} {'rel err':>9} {'growth':>7}"]
        lines += [f"{e.name[-48:]:<48} {e.op:<10} {e.max_abs_error:>10.2e} {e.max_abs_value:>9.3g} "
                  f"{e.rel_error:>9.2e} {e.growth:>6.1f}x" for e in self.layers]
        worst = self.worst_growth
        if worst is not None:
            lines.append(f"error grows most at {worst.name} ({worst.op}): relative error {worst.rel_error:.2e}, "
                         f"{worst.growth:.1f}x its input's")
        what = "logits" if len(self.output_errors) <= 1 else "all outputs"  # max_logit_error spans every output
        lines.append(f"{what} vs onnxruntime: max |err| {self.max_logit_error:.3e} (float IR {self.float_ir_error:.1e}), "
                     f"top-1 agreement {self.top1_agreement * 100:.1f}%")
        if len(self.output_errors) > 1:
            lines.append("per output max |err|: " + ", ".join(f"{name} {err:.3e}"
                                                                for name, err in self.output_errors.items()))
        return "\n".join(lines)  # a check beyond its tolerance: :meth:`warning`, among the manifest's warnings

    def warning(self) -> str:
        """One line for a check beyond its tolerance: where the error grows, and what to try."""
        worst = self.worst_growth
        where = f"; the error grows most at {worst.name} ({worst.op})" if worst is not None else ""
        # a non-linear op's approximation error does not shrink with more fractional bits
        remedy = "check that the inputs are normalised as in training, calibrate on representative inputs " \
                 "(--calibrate FILE.npz), or "
        remedy += (f"try another choice of its approximation, whose error more fractional bits do not shrink: "
                   f"{' or '.join(f'--approx {op}=CHOICE' for op in APPROXIMATED_OPS[worst.op])} (an unknown CHOICE "
                   f"lists them)" if worst is not None and worst.op in APPROXIMATED_OPS else "raise --frac-bits")
        return (f"the check exceeds its tolerance (max |err| {self.max_logit_error:.3g} > "
                f"{self.tolerance:.3g} = max({CHECK_ABS_TOLERANCE}, {CHECK_REL_TOLERANCE:.0%} of max |output| "
                f"{self.max_abs_output:.3g})){where}: {remedy}")

    def as_dict(self) -> dict[str, Any]:
        worst = self.worst_growth
        return {"samples": self.samples, "source": self.source, "max_logit_error": self.max_logit_error,
                "float_ir_error": self.float_ir_error, "top1_agreement": self.top1_agreement,
                "error_grows_most_at": worst.name if worst is not None else None,
                "output_errors": self.output_errors, "tolerance": self.tolerance,
                "within_tolerance": self.within_tolerance,
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


def load_check_data(path: str | Path, input_name: str, image_shape: tuple[int, ...]) -> tuple[np.ndarray, str]:
    """The user's inputs for ``--check --data FILE.npz`` (the array :func:`compiler.runtime.datasets.image_array`
    picks); shaped [N, *image_shape[1:]] (a single input may omit N); any real numeric dtype."""
    path = Path(path)
    per_input = ", ".join(map(str, image_shape[1:]))
    hint = f"give an .npz file (numpy.savez) holding the inputs as one float array of shape [N, {per_input}]"
    if not path.is_file():
        raise UserError(f"--data {str(path)!r} not found; {hint}")
    try:
        archive = np.load(path, allow_pickle=False)
    except Exception as exc:  # numpy raises ValueError/OSError/BadZipFile/EOFError by what the bytes look like
        raise UserError(f"--data {str(path)!r} cannot be read as .npz ({type(exc).__name__}); {hint}") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise UserError(f"--data {str(path)!r} is a single .npy array, not an .npz archive; {hint}")
    with archive:
        if not archive.files:
            raise UserError(f"--data {str(path)!r} holds no array; {hint}")
        from compiler.runtime.datasets import image_array

        key = image_array(archive.files, input_name) or archive.files[0]
        try:
            data = archive[key]
        except Exception as exc:  # object arrays need pickle (refused), a damaged member fails to inflate
            raise UserError(f"--data {str(path)!r}: array {key!r} cannot be read ({type(exc).__name__}); "
                            f"{hint}") from None
    where = f"--data {str(path)!r}: array {key!r}"
    if data.dtype.kind not in "fiu":
        raise UserError(f"{where} has dtype {data.dtype}; {hint}")
    if data.shape == tuple(image_shape[1:]):
        data = data[None]
    if data.shape[1:] != tuple(image_shape[1:]) or len(data) == 0:
        raise UserError(f"{where} has shape {list(data.shape)}, the model input {input_name!r} takes "
                        f"{list(image_shape)[1:]} per input; {hint}")
    if not np.isfinite(data).all():
        raise UserError(f"{where} holds NaN or infinite values; {hint}")
    return data.astype(np.float64), f"{path.name}, array {key!r}"


def onnxruntime_outputs(onnx_path: str | Path, images: np.ndarray) -> list[np.ndarray]:
    """onnxruntime's outputs (all of them, in graph order) for ``images``, in chunks of the model's batch when that
    is fixed."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    spec = session.get_inputs()[0]
    fixed = spec.shape[0] if isinstance(spec.shape[0], int) else None
    dtype = {"tensor(double)": np.float64, "tensor(float16)": np.float16}.get(spec.type, np.float32)
    step = fixed or len(images)
    outs: list[list[np.ndarray]] = []
    for start in range(0, len(images), step):
        chunk = images[start:start + step].astype(dtype)
        pad = step - len(chunk)
        if pad:
            chunk = np.concatenate([chunk, np.repeat(chunk[:1], pad, axis=0)])
        outs.append([out[:step - pad] for out in session.run(None, {spec.name: chunk})])
    return [np.concatenate(parts) for parts in zip(*outs)]


def onnxruntime_logits(onnx_path: str | Path, images: np.ndarray) -> np.ndarray:
    """onnxruntime's output 0 for ``images`` (see :func:`onnxruntime_outputs`)."""
    return onnxruntime_outputs(onnx_path, images)[0]


def check_program(program: Program, onnx_path: str | Path, images: np.ndarray, source: str) -> CheckReport:
    """Reference executor (per layer: fixed vs float) and onnxruntime on ``images``, batch by batch, every output
    compared (graph outputs and ONNX outputs are in the same order)."""
    graph, batch = program.graph, program.batch
    name = graph.inputs[0]
    worst: dict[str, LayerError] = {}
    fixed: dict[str, list[np.ndarray]] = {out: [] for out in graph.outputs}
    floats: dict[str, list[np.ndarray]] = {out: [] for out in graph.outputs}
    for start in range(0, len(images), batch):
        chunk = images[start:start + batch]
        pad = batch - len(chunk)
        if pad:
            chunk = np.concatenate([chunk, np.repeat(chunk[:1], pad, axis=0)])
        result = execute(program, {name: chunk})
        for out in graph.outputs:
            fixed[out].append(result.outputs[out][:batch - pad])
            floats[out].append(result.float_outputs[out][:batch - pad])
        for rec in result.per_node:
            prev = worst.get(rec.name)
            worst[rec.name] = LayerError(rec.name, rec.op, max(rec.max_abs_error, prev.max_abs_error if prev else 0.0),
                                         max(rec.max_abs_value, prev.max_abs_value if prev else 0.0))
    error_growth(program, worst, 0.5 * program.profile.fx.lsb / max(float(np.abs(images).max()), 1e-12))
    per_image = lambda a: a.reshape(len(images), -1)  # noqa: E731
    ort_outs = [per_image(o) for o in onnxruntime_outputs(onnx_path, images)]
    fixed_outs = [per_image(np.concatenate(fixed[out])) for out in graph.outputs]
    float_outs = [per_image(np.concatenate(floats[out])) for out in graph.outputs]
    errors = {out: float(np.max(np.abs(f - o))) for out, f, o in zip(graph.outputs, fixed_outs, ort_outs)}
    return CheckReport(len(images), source, list(worst.values()), max(errors.values()),
                       max(float(np.max(np.abs(f - o))) for f, o in zip(float_outs, ort_outs)),
                       float(np.mean(fixed_outs[0].argmax(1) == ort_outs[0].argmax(1))), errors,
                       max(float(np.max(np.abs(o))) for o in ort_outs))


def calibrate_graph(graph: Any, images: np.ndarray, source: str, frac_bits: int | None = None,
                    calibration: str | Path | None = None) -> tuple[Calibration, int | None]:
    """Calibrate ``graph`` on ``images`` (or on the .npz ``calibration``, ``--calibrate``) and annotate it; returns
    the calibration and f: ``frac_bits`` when given, else as many fractional bits as the calibrated ranges allow
    when they come from real images (the activations of a trained model on random noise need not bound those on
    its data), else None (the default)."""
    if calibration is not None:
        calib = calibrate(graph, load_calibration_images(calibration, graph.inputs[0]), f"--calibrate {calibration}")
    else:
        calib = calibrate(graph, images, source)
    if frac_bits is None and (calibration is not None or source != RANDOM_SOURCE):
        frac_bits, calib.frac_bits_bound = choose_frac_bits(calib, graph, DEFAULT_K, DEFAULT_F)
    elif frac_bits is None:
        calib.frac_bits_bound = f"the default {DEFAULT_F}: calibrated on random images only (give --calibrate)"
    calib.annotate(graph)
    return calib, frac_bits


def two_party_alternative(semi2k: Program, hemi: Program) -> str:
    """The other semi-honest 2PC without a dealer, priced for the same model: hemi (HE triples in a prime field)
    sends several times fewer bytes than semi2k (OT triples) but computes more; which one is faster depends on the
    model's size and the network (measured crossover on a LAN about vit_2_4_32, README's protocol section)."""
    a, b = estimate(semi2k).total, estimate(hemi).total
    lan, wan = (min(("semi2k", a.latency(net)), ("hemi", b.latency(net)), key=lambda x: x[1])[0]
                for net in ("lan", "wan"))
    return (f"2PC without a dealer: --protocol hemi sends {a.bytes_all / max(b.bytes_all, 1):.1f}x fewer bytes "
            f"({b.bytes_all / 1e6:,.0f} MB vs {a.bytes_all / 1e6:,.0f} MB all parties, cost model); estimated "
            f"LAN {b.latency('lan'):,.0f} s vs {a.latency('lan'):,.0f} s, WAN {b.latency('wan'):,.0f} s vs "
            f"{a.latency('wan'):,.0f} s: " + (f"{lan} is faster on both a LAN and a WAN" if lan == wan else
                                                f"{lan} is faster on a LAN, {wan} on a WAN"))


def compile_onnx(onnx_path: str | Path, out_dir: str | Path, protocol: str = "replicated-ring", batch: int = 1,
                 frac_bits: int | None = None, approx: dict[str, str] | None = None, check: bool = False,
                 check_samples: int = 200, reveal: str = "logits", template_set: str | None = None,
                 on_graph: Callable[[Any], None] | None = None, check_data: str | Path | None = None,
                 calibration: str | Path | None = None,
                 calibration_samples: int = CALIBRATION_SAMPLES) -> CompileResult:
    """ONNX -> IR -> passes -> lowering for ``protocol`` -> ``out_dir`` (see module doc).

    ``on_graph`` sees the IR after the passes (``--dump-ir``). ``check`` compares the fixed-point reference with
    onnxruntime on ``check_samples`` inputs: the first ones of ``check_data`` (an .npz file, see
    :func:`load_check_data`) when given, else the digits test set when the metadata names it, else random.
    ``calibration``: an .npz of images (``--calibrate``) whose float ranges choose the fixed-point parameters
    (:mod:`compiler.calibrate`); by default the first ``calibration_samples`` of those same check inputs.
    """
    if check and check_samples < 1:
        raise UserError(f"--check-samples {check_samples}: give at least 1")
    if check_data is not None and not check:
        raise UserError(f"--data {str(check_data)!r} gives the inputs of --check: add --check")
    timings: dict[str, float] = {}
    start = time.perf_counter()
    graph = run_passes(require_one_input(load_onnx(onnx_path, batch=batch), onnx_path))
    timings["frontend_s"] = time.perf_counter() - start
    if on_graph is not None:
        on_graph(graph)
    image_shape, _ = client_layout(graph)
    if check_data is None:
        images, source = sample_images(graph.metadata, image_shape,
                                       max(batch, check_samples if check else 0, calibration_samples))
    else:
        images, source = load_check_data(check_data, graph.inputs[0], image_shape)
        images = images[:max(check_samples, calibration_samples)]
        check_samples = min(check_samples, len(images))
        images = np.concatenate([images] * -(-batch // len(images)))  # the emitted client input needs a batch
    calib, frac_bits = calibrate_graph(graph, images[:calibration_samples], source, frac_bits, calibration)
    profile = get_profile(protocol, frac_bits, approx)
    program = lower(graph, profile, name=Path(onnx_path).stem, reveal=reveal)
    program.warnings.extend(calib.warnings)
    if profile.protocol == "semi2k":
        program.warnings.append(two_party_alternative(program, lower(graph, get_profile("hemi", frac_bits, approx),
                                                                     name=program.name, reveal=reveal)))
    execute(program, {graph.inputs[0]: images[:batch]})  # range errors surface here, before anything is written
    timings["lowering_s"] = time.perf_counter() - start - timings["frontend_s"]
    report = check_program(program, onnx_path, images[:check_samples], source) if check else None
    if report is not None and not report.within_tolerance:  # in the manifest too: the output folder keeps it
        program.warnings.append(report.warning())
    beyond = int(np.count_nonzero(np.abs(images[:check_samples]).reshape(check_samples, -1).max(axis=1)
                                  > calib.input_bound)) if check else 0
    if beyond:  # the check itself still ran them: the reference has no client-side bound
        program.warnings.append(f"{beyond} of the {check_samples} --check inputs exceed |v| {calib.input_bound:.3g}, "
                                f"the bound the client enforces (4x the calibrated range): `mpcvit run` refuses "
                                f"them; calibrate on inputs like these (--calibrate FILE.npz)")
    emit_start = time.perf_counter()
    manifest = emit(program, out_dir, onnx_path=onnx_path, client_images=images[:batch], template_set=template_set,
                    calibration=calib.as_dict(program))
    timings["emit_s"] = time.perf_counter() - emit_start
    timings["total_s"] = time.perf_counter() - start
    return CompileResult(manifest, program, estimate(program), report, calib, timings)
