"""Numeric fidelity of the fixed-point programs, per protocol (issue 9): the figures as one printed table.

Every figure is the numpy fixed-point reference executor of the lowered program (bit for bit the MPC computation
up to MP-SPDZ's probabilistic truncation, see DESIGN.md), compiled as ``mpcvit-compile`` does (calibrated), against
float64 / onnxruntime:

Column f: the program's fractional bits (``mpcvit-compile`` picks the most its calibrated ranges allow when they
come from real images, as for the digits models; random models and the LayerNorm and row sections keep f = 16).

* **layernorm**: LayerNorm(192, eps=1e-6) on tokens of std 100 and 0.01 (per-token means of a few std) against
  torch-equivalent float64: max |error| (bar 1e-2).
* **rows**: ReLU-softmax rows with sums up to ~1.2e4 (197 tokens) and softmax rows of 1,024 equal scores (v = 1, so
  the attention output is the row sum of the probabilities): max |row sum - 1| (bar 1e-3).
* **digits**: small ViTs trained on digits (cached under ``--cache``), calibrated on the digits *training* images,
  on 200 test images: top-1 agreement with onnxruntime (bar 100 %) and max logit error (bar 0.01).
* **random**: seeded random-weight ViTs of a paper model's shape (``vit_9_12_64``: 12 heads, dim 192, 257 tokens)
  at depth 2..9, on N(0, 1) images other than the calibration ones: max logit error as % of the logit range
  (max - min of onnxruntime's logits over the images; bar 0.5 %).

    python -m benchmarks.fidelity                         # everything (~10 min on 2 cores; training is cached)
    python -m benchmarks.fidelity --only rows layernorm   # the seconds-fast sections
    python -m benchmarks.fidelity --depths 2 9 --random-images 2 --json out/fidelity.json
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np

from compiler.calibrate import calibrate
from compiler.errors import UserError, run_cli
from compiler.ir import Graph, Node, Value
from compiler.lowering import get_profile, lower
from compiler.lowering.profiles import DEFAULT_F, PROTOCOLS, SEMI_HONEST_CORE
from compiler.reference import execute

SECTIONS = ("layernorm", "rows", "digits", "random")
DIGITS_SPECS = (("vit_1_4_8", "softmax"), ("vit_2_4_8", "mu0.5"))  # (model, attention), trained on digits
DIGITS_EPOCHS = 10
BARS = {"layernorm": 1e-2, "rows": 1e-3, "digits": 1e-2, "random": 0.5}


# --- small graphs (shared with tests/test_numerics.py) -------------------------------------------------------------
def layernorm_graph(batch: int, tokens: int, dim: int, eps: float, seed: int = 0) -> Graph:
    """input x [B, N, C] -> LayerNorm(C, eps) with a random affine γ ~ 1 ± 0.2, β ~ ±0.1 -> output y."""
    rng = np.random.default_rng(seed)
    g = Graph()
    g.add_value(Value("x", (batch, tokens, dim)))
    g.add_node(Node("input", [], ["x"], {"owner": 1}, name="x"))
    g.inputs.append("x")
    g.add_value(Value("gamma", (dim,), "param", 1 + 0.2 * rng.standard_normal(dim)))
    g.add_value(Value("beta", (dim,), "param", 0.1 * rng.standard_normal(dim)))
    g.add_value(Value("y", (batch, tokens, dim)))
    g.add_node(Node("layernorm", ["x", "gamma", "beta"], ["y"], {"eps": eps}, name="ln"))
    g.add_node(Node("output", ["y"], [], name="output"))
    g.outputs.append("y")
    return g


def tokens(std: float, batch: int, seed: int, n: int = 17, dim: int = 192) -> np.ndarray:
    """Tokens [B, n, dim] with per-token std around ``std`` (0.5x to 2x) and a per-token mean of a few std."""
    rng = np.random.default_rng(seed)
    spread = std * 2.0 ** rng.uniform(-1, 1, (batch, n, 1))
    return rng.standard_normal((batch, n, 1)) * 3 * std + spread * rng.standard_normal((batch, n, dim))


def attention_graph(kind: str, n: int, d: int = 1, eps: float = 1e-6) -> Graph:
    """input x [1, N, 3d] = q | k | v columns -> one attention head of ``kind`` -> output y [1, N, d]."""
    g = Graph()
    g.add_value(Value("x", (1, n, 3 * d)))
    g.add_node(Node("input", [], ["x"], {"owner": 1}, name="x"))
    g.inputs.append("x")
    head = {"kind": kind, "q_cols": list(range(d)), "k_cols": list(range(d, 2 * d)),
            "v_cols": list(range(2 * d, 3 * d))}
    g.add_value(Value("y", (1, n, d)))
    g.add_node(Node("attention", ["x", "x", "x"], ["y"], {"heads": [head], "scale": 1.0, "eps": eps,
                                                          "tokens": n, "head_dim": d}, name="att"))
    g.add_node(Node("output", ["y"], [], name="output"))
    g.outputs.append("y")
    return g


def relu_rows(seed: int, n: int = 197) -> np.ndarray:
    """q_i in [0.5, 8], k_j in [0, 14]: scores up to 112, row sums of relu(S) from ~700 to ~1.2e4; v = 1, so the
    attention output is the row sum of the probabilities."""
    rng = np.random.default_rng(seed)
    x = np.ones((1, n, 3))
    x[0, :, 0], x[0, :, 1] = rng.uniform(0.5, 8, n), rng.uniform(0, 14, n)
    return x


def equal_scores(n: int = 1024) -> np.ndarray:
    """q = k = (0.7, 0.7): every score 0.98; v = 1."""
    x = np.ones((1, n, 6))
    x[..., :4] = 0.7
    return x


def float_layernorm(x: np.ndarray, g: Graph, eps: float) -> np.ndarray:
    """torch.nn.LayerNorm's formula in float64: (x - mean) / sqrt(var + eps) · γ + β (biased variance)."""
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * g.values["gamma"].data + g.values["beta"].data


# --- sections ------------------------------------------------------------------------------------------------------
def layernorm_section(protocols: list[str]) -> list[dict[str, Any]]:
    rows = []
    for std in (100.0, 0.01):
        for protocol in protocols:
            g = layernorm_graph(4, 17, 192, 1e-6)
            program = lower(calibrate(g, tokens(std, 32, seed=1)).annotate(g), get_profile(protocol))
            x = tokens(std, 4, seed=2)
            err = float(np.abs(execute(program, {"x": x}).outputs["y"] - float_layernorm(x, g, 1e-6)).max())
            rows.append({"section": "layernorm", "case": f"LayerNorm(192) std {std:g}", "protocol": protocol,
                         "max_abs_error": err})
    return rows


def rows_section(protocols: list[str]) -> list[dict[str, Any]]:
    rows = []
    for protocol in protocols:
        g = attention_graph("relu_softmax", 197)
        program = lower(calibrate(g, np.concatenate([relu_rows(s) for s in range(4)])).annotate(g),
                        get_profile(protocol))
        sums = execute(program, {"x": relu_rows(9)}).outputs["y"]
        rows.append({"section": "rows", "case": "ReLU-softmax, sums to 1.2e4", "protocol": protocol,
                     "max_abs_error": float(np.abs(sums - 1).max())})
        g = attention_graph("softmax", 1024, d=2)
        sums = execute(lower(g, get_profile(protocol)), {"x": equal_scores()}).outputs["y"]
        rows.append({"section": "rows", "case": "softmax, 1024 equal scores", "protocol": protocol,
                     "max_abs_error": float(np.abs(sums - 1).max())})
    return rows


def digits_section(protocols: list[str], cache: Path, epochs: int, images: int,
                   log: Callable[[str], None]) -> list[dict[str, Any]]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    from benchmarks.models import ModelSpec, export_spec, trained_weights
    from compiler.api import check_program, compile_onnx
    from compiler.runtime.datasets import DIGITS_SEED, DIGITS_TEST_FRACTION, digits_test_set, normalise

    digits = load_digits()  # the training half of the split the test set comes from: calibrate on unseen images
    train, _ = train_test_split((digits.images / 16.0).astype(np.float32), test_size=DIGITS_TEST_FRACTION,
                                random_state=DIGITS_SEED, stratify=digits.target)
    test, _ = digits_test_set()
    rows = []
    with tempfile.TemporaryDirectory(prefix="mpcvit-fidelity-") as tmp:
        for model, attention in DIGITS_SPECS:
            spec = ModelSpec(model, attention)
            log(f"digits {spec.key}: training {epochs} epochs (cached in {cache})")
            path = export_spec(spec, Path(tmp) / f"{model}_{attention}.onnx", trained_weights(spec, epochs, cache))
            from compiler.frontend import load_onnx

            metadata = load_onnx(path).metadata
            calib_file = Path(tmp) / "calibration.npz"
            np.savez(calib_file, x=normalise(train[:, None], metadata))
            x = normalise(test, metadata)[:images].astype(np.float64)
            for protocol in protocols:
                result = compile_onnx(path, Path(tmp) / f"{model}-{protocol}", protocol=protocol, batch=50,
                                      calibration=calib_file)
                report = check_program(result.program, path, x, "digits test set")
                rows.append({"section": "digits", "case": f"{model} {attention} trained", "protocol": protocol,
                             "images": len(x), "f": result.program.profile.f, "top1_agreement": report.top1_agreement,
                             "max_abs_error": report.max_logit_error})
                log(f"digits {spec.key} {protocol}: {report.max_logit_error:.2e}")
    return rows


def random_section(protocols: list[str], shape: str, depths: list[int], images: int,
                   log: Callable[[str], None]) -> list[dict[str, Any]]:
    from benchmarks.models import ModelSpec, export_spec
    from compiler.api import CALIBRATION_SAMPLES, onnxruntime_logits, sample_images
    from compiler.frontend import load_onnx
    from compiler.lowering.plans import client_layout
    from compiler.passes import run_passes

    rows = []
    with tempfile.TemporaryDirectory(prefix="mpcvit-fidelity-") as tmp:
        for depth in depths:
            spec = ModelSpec(shape, "softmax", overrides=(("depth", depth),))
            path = export_spec(spec, Path(tmp) / f"{shape}_{depth}.onnx")
            graph = run_passes(load_onnx(path, batch=images))
            image_shape, _ = client_layout(graph)
            calib_images, source = sample_images(graph.metadata, image_shape, CALIBRATION_SAMPLES)
            calib = calibrate(graph, calib_images, source)
            f = DEFAULT_F  # as mpcvit-compile: more fractional bits only from calibration on real images
            x = np.random.default_rng(1).standard_normal(image_shape)  # other images than the calibration's
            ort = onnxruntime_logits(path, x).reshape(images, -1)
            logit_range = float(ort.max() - ort.min())
            for protocol in protocols:
                program = lower(calib.annotate(graph), get_profile(protocol, frac_bits=f))
                ours = execute(program, {graph.inputs[0]: x}).outputs[graph.outputs[0]].reshape(images, -1)
                err = float(np.abs(ours - ort).max())
                rows.append({"section": "random", "case": f"{shape} depth {depth} random", "protocol": protocol,
                             "images": images, "f": f, "max_abs_error": err, "logit_range": logit_range,
                             "percent_of_range": 100 * err / logit_range,
                             "top1_agreement": float(np.mean(ours.argmax(1) == ort.argmax(1)))})
                log(f"random {shape} depth {depth} {protocol}: {100 * err / logit_range:.3f} % of range")
    return rows


def passes(row: dict[str, Any]) -> bool:
    if row["section"] == "random":
        return row["percent_of_range"] <= BARS["random"]
    if row["section"] == "digits" and row["top1_agreement"] < 1.0:
        return False
    return row["max_abs_error"] <= BARS[row["section"]]


def table(rows: list[dict[str, Any]]) -> str:
    head = f"{'case':<32} {'protocol':<16} {'f':>3} {'max |err|':>10} {'% range':>8} {'top-1':>7} {'bar':>8}  ok"
    lines = [head, "-" * len(head)]
    for r in rows:
        pct = f"{r['percent_of_range']:.3f}" if "percent_of_range" in r else "-"
        top1 = f"{100 * r['top1_agreement']:.1f}%" if "top1_agreement" in r else "-"
        bar = f"{BARS[r['section']]:g}" + ("%" if r["section"] == "random" else "")
        lines.append(f"{r['case']:<32} {r['protocol']:<16} {r.get('f', DEFAULT_F):>3} {r['max_abs_error']:>10.2e} "
                     f"{pct:>8} {top1:>7} "
                     f"{bar:>8}  {'yes' if passes(r) else 'NO'}")
    return "\n".join(lines)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.fidelity", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", nargs="+", choices=SECTIONS, default=list(SECTIONS), help="sections to run")
    p.add_argument("--protocols", nargs="+", choices=list(PROTOCOLS), default=list(SEMI_HONEST_CORE))
    p.add_argument("--cache", default="out/fidelity-cache", help="trained digits checkpoints (default %(default)s)")
    p.add_argument("--epochs", type=int, default=DIGITS_EPOCHS, help="digits training epochs (default %(default)s)")
    p.add_argument("--digits-images", type=int, default=200, help="digits test images (default %(default)s)")
    p.add_argument("--shape", default="vit_9_12_64", help="the random models' shape (default %(default)s)")
    p.add_argument("--depths", nargs="+", type=int, default=list(range(2, 10)), help="random models' depths")
    p.add_argument("--random-images", type=int, default=2, help="images per random model (default %(default)s)")
    p.add_argument("--json", help="also write the rows as JSON here")
    return p


def run(args: argparse.Namespace, log: Callable[[str], None]) -> list[dict[str, Any]]:
    for flag, value in (("--epochs", args.epochs), ("--digits-images", args.digits_images),
                        ("--random-images", args.random_images), *(("--depths", d) for d in args.depths)):
        if value < 1:
            raise UserError(f"{flag} {value}: give a positive number")
    rows: list[dict[str, Any]] = []
    if "layernorm" in args.only:
        rows += layernorm_section(args.protocols)
    if "rows" in args.only:
        rows += rows_section(args.protocols)
    if "digits" in args.only:
        rows += digits_section(args.protocols, Path(args.cache), args.epochs, args.digits_images, log)
    if "random" in args.only:
        rows += random_section(args.protocols, args.shape, args.depths, args.random_images, log)
    return rows


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)

    def body() -> int:
        rows = run(args, lambda m: print(m, file=sys.stderr))
        print(table(rows))
        if args.json:
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).write_text(json.dumps(rows, indent=1))
        return 0 if all(passes(r) for r in rows) else 1

    return run_cli(body)


if __name__ == "__main__":
    sys.exit(main())
