"""The benchmark matrix: models × attention × MLP × protocol × network (× mpcvit vs the naive `ml` baseline).

Every cell is priced by the cost model; with `--real` it also runs under MP-SPDZ (`--repeats` runs, medians), with
`--images N` over N test images for top-1 agreement with the plaintext model. Cells are appended to a JSON-lines
results file as they finish and skipped when already there (resumable). `--report` writes the markdown table and
plots (see `benchmarks/report.py`).

    python -m benchmarks.matrix --models vit_2_4_8 --attention softmax mu0.1 --protocols replicated-ring --real
    mpcvit bench ...   (the same options)
"""
from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
import tempfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterator

from tqdm import tqdm

from benchmarks import ATTENTION_CONFIGS, MLP_CONFIGS
from benchmarks.report import read_records
from compiler.errors import UserError, run_cli

RESULTS_DIR = Path(__file__).with_name("results")
DEFAULT_MODELS = ("vit_2_4_8",)  # the digits config; vit_7_4_32 / vit_9_12_64 on request
TEMPLATE_SETS = {"mpcvit": None, "ml_baseline": "ml_baseline"}


@dataclass(frozen=True)
class Cell:
    model: str
    attention: str
    mlp: str
    protocol: str
    network: str
    templates: str = "mpcvit"
    weights: str = "random"
    batch: int = 1
    overrides: tuple[tuple[str, Any], ...] = ()
    online_only: bool = False

    @property
    def key(self) -> str:
        extra = "".join(f",{k}={v}" for k, v in self.overrides)
        mode = "/online" if self.online_only else ""
        return (f"{self.model}{extra}/{self.weights}/{self.attention}/{self.mlp}/{self.protocol}{mode}/"
                f"{self.network}/{self.templates}/b{self.batch}")

    @property
    def build_key(self) -> tuple:  # cells differing only in network share one compiled program and one real run
        return (self.model, self.overrides, self.weights, self.attention, self.mlp, self.protocol, self.templates,
                self.batch, self.online_only)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS), help="registered model configs")
    p.add_argument("--vary", nargs="+", default=[], metavar="KEY=V1,V2",
                   help="model config overrides to sweep, e.g. heads=1,2,4,8 img_size=8,16 (cartesian product)")
    p.add_argument("--weights", default="random", help="'random' (seeded), 'train:<epochs>' (train each config on "
                                                       "digits, cached) or a checkpoint file of mpcvit train")
    p.add_argument("--attention", nargs="+", default=["softmax", "relu_softmax", "scaling", "mu0.1", "mu0.5"],
                   help=f"attention configs ({', '.join(ATTENTION_CONFIGS)})")
    p.add_argument("--mlp", nargs="+", default=["gelu"], help=f"MLP configs ({', '.join(MLP_CONFIGS)})")
    p.add_argument("--protocols", nargs="+", default=["semi2k", "dealer", "replicated-ring"])
    p.add_argument("--networks", nargs="+", default=["lan", "wan"])
    p.add_argument("--baseline", action="store_true", help="also the naive MP-SPDZ `ml` baseline templates")
    p.add_argument("--online-only", action="store_true", help="semi2k cells also with preprocessing from files")
    p.add_argument("--real", action="store_true", help="run every cell under MP-SPDZ (else cost model only)")
    p.add_argument("--images", type=int, help="real runs over N test images (top-1 agreement with plaintext)")
    p.add_argument("--batch", type=int, default=1, help="images per MPC program run")
    p.add_argument("--repeats", type=int, default=1, help="real runs per cell (medians reported)")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds per real run")
    p.add_argument("--results", type=Path, default=RESULTS_DIR / "matrix.jsonl", help="JSON-lines results file")
    p.add_argument("--report", type=Path, help="write the markdown table and PNG plots into this folder")
    p.add_argument("--peer", nargs="+", default=[], choices=["spu"],
                   help="also run each model under SecretFlow SPU (ABY3, SEMI2K) in its own environment "
                        "(benchmarks/peer/requirements-spu.txt) and print one table beside MP-SPDZ")
    p.add_argument("--no-progress", action="store_true")


def cells(args: argparse.Namespace) -> list[Cell]:
    sets = ["mpcvit", "ml_baseline"] if args.baseline else ["mpcvit"]
    modes = [False, True] if args.online_only else [False]
    return [Cell(model, attention, mlp, protocol, network, templates, args.weights, args.batch, overrides, online)
            for model in args.models for overrides in sweep(args.vary) for attention in args.attention
            for mlp in args.mlp
            for protocol in args.protocols for templates in sets for online in modes
            if not online or protocol == "semi2k" for network in args.networks]


def sweep(vary: list[str]) -> list[tuple[tuple[str, Any], ...]]:
    """`["heads=1,2", "img_size=8,16"]` → every combination as a tuple of (key, int value) pairs."""
    axes = []
    for item in vary:
        key, sep, values = item.partition("=")
        if not sep or not values:
            raise UserError(f"--vary {item!r}: write KEY=V1,V2 (e.g. heads=1,2,4)")
        try:
            axes.append([(key, int(v)) for v in values.split(",")])
        except ValueError:
            raise UserError(f"--vary {item!r}: values must be integers (e.g. heads=1,2,4)") from None
    return [tuple(combo) for combo in itertools.product(*axes)]


def done_keys(results: Path, real: bool = False, images: int | None = None) -> set[str]:
    """Keys of the cells already measured as asked: with `real`, only records of a real run (over `images`
    images when given), so that `--real` after a cost-model-only pass measures the cells instead of skipping them."""
    if not results.is_file():
        return set()

    def enough(record: dict[str, Any]) -> bool:
        measured = record.get("real")
        return not real or (measured is not None and (images is None or measured.get("images") == images))

    return {record["key"] for record in read_records(results) if enough(record)}


def append_record(results: Path, record: dict[str, Any]) -> None:
    """One line per cell, written with a single call so that an interrupted run leaves whole lines only."""
    results.parent.mkdir(parents=True, exist_ok=True)
    with open(results, "a") as sink:
        sink.write(json.dumps(record, default=float) + "\n")


def run_matrix(todo: list[Cell], args: argparse.Namespace, progress: bool = True) -> Iterator[dict[str, Any]]:
    """Measure `todo`; cells sharing a build (all networks of one program) are compiled and run once."""
    groups: dict[tuple, list[Cell]] = {}
    for cell in todo:
        groups.setdefault(cell.build_key, []).append(cell)
    with tempfile.TemporaryDirectory(prefix="mpcvit-bench-") as tmp:
        for members in tqdm(list(groups.values()), desc="bench", disable=not progress):
            yield from measure_group(members, Path(tmp), args)


@lru_cache(maxsize=4)
def _calibration(onnx_path: Path, batch: int):
    """One calibration per exported model and batch, shared by its protocols (ranges do not depend on them)."""
    from benchmarks.pipeline import calibrate_model

    return calibrate_model(onnx_path, batch)


def measure_group(members: list[Cell], tmp: Path, args: argparse.Namespace) -> Iterator[dict[str, Any]]:
    from benchmarks.models import ModelSpec, export_spec
    from benchmarks.pipeline import compile_model
    from compiler.runtime.network import network_profile

    cell = members[0]
    spec = ModelSpec(cell.model, cell.attention, cell.mlp, overrides=cell.overrides)
    name = f"{abs(hash(cell.build_key)):x}"
    weights = _weights(spec, cell.weights, args.results.parent / "checkpoints")
    # one export per model and weights, shared by every protocol, batch and template set
    onnx_path = tmp / f"{abs(hash((spec, cell.weights))):x}.onnx"
    if not onnx_path.is_file():
        export_spec(spec, onnx_path, weights=weights)
    out_dir = tmp / name
    # mpcvit's plans calibrated as `mpcvit-compile` does by default (the ml baseline has no calibrated plans)
    calibration = _calibration(onnx_path, cell.batch) if cell.templates == "mpcvit" else None
    compiled = compile_model(onnx_path, cell.protocol, cell.batch, out_dir, TEMPLATE_SETS[cell.templates],
                             calibration=calibration)
    total = compiled.cost.total
    base = {"model": cell.model, "overrides": dict(cell.overrides), "weights": cell.weights,
            "attention": cell.attention, "mlp": cell.mlp, "protocol": cell.protocol, "templates": cell.templates,
            "batch": cell.batch, "online_only": cell.online_only,
            "head_kinds": compiled.program.graph.metadata.get("mpcvit.head_kinds"),
            "security": compiled.program.profile.spec.security.as_dict(),
            # the cost model prices mpcvit's plans; the ml baseline is only measured
            "cost": None if cell.templates != "mpcvit" else {"bytes_p0": total.bytes_p0, "bytes_all": total.bytes_all, "rounds": total.rounds,
                     "online_rounds": total.online_rounds, "online_bytes_all": total.online_bytes_all,
                     "offline_rounds": total.rounds - total.online_rounds,
                     "offline_bytes_all": total.bytes_all - total.online_bytes_all,
                     "compute_s": total.seconds},
            "cost_by_op": None if cell.templates != "mpcvit" else {
                op: {"bytes_all": c.bytes_all, "rounds": c.rounds, "latency_lan_s": c.latency("lan"),
                     "latency_wan_s": c.latency("wan")} for op, c in compiled.cost.by_op().items()},
            "compile_s": compiled.compile_s,
            "plaintext_accuracy": _plaintext_accuracy(onnx_path, weights)}
    real = _real_runs(out_dir, cell, args) if args.real else None
    if "spu" in args.peer:
        base["peer"] = _spu_runs(onnx_path, out_dir, args)
    for member in members:
        record = {"key": member.key, **base, "network": member.network,
                  "cost_latency_s": compiled.cost.latency(member.network) if base["cost"] else None}
        if real is not None:
            profile = network_profile(member.network)
            record["real"] = real
            record["real_latency_s"] = real["time_s"] + profile.time_s(real["rounds"], real["bytes_party0"])
            record["network_emulation"] = "model"
        yield record


def _real_runs(out_dir: Path, cell: Cell, args: argparse.Namespace) -> dict[str, Any]:
    from compiler.runtime import run

    runs = [run(out_dir, cell.protocol, images=args.images, online_only=cell.online_only, timeout_s=args.timeout,
                log=lambda m: tqdm.write(m, file=sys.stderr)) for _ in range(max(1, args.repeats))]
    first = runs[0].to_json()
    return {"time_s": statistics.median(r.time_s for r in runs), "times_s": [r.time_s for r in runs],
            "bytes_party0": first["bytes_party0"], "global_bytes": first["global_bytes"], "rounds": first["rounds"],
            "online": first["online"], "offline": first["offline"], "images": first["images"],
            "runs": first["batches"],  # batches of the program (the cost model prices one); bytes/rounds: their sums
            "top1_agreement": first["top1_agreement"], "max_logit_error": first["max_logit_error"],
            "accuracy": first["accuracy"], "mpspdz_compile_s": first["mpspdz_compile_s"],
            "mpspdz": first["mpspdz"], "machine": first["machine"]}


_SPU_CACHE: dict[tuple, dict[str, Any]] = {}


def _spu_runs(onnx_path: Path, out_dir: Path, args: argparse.Namespace) -> dict[str, Any]:
    """SPU's figures for this ONNX file (once per file: every protocol cell of a model shares them), on the
    images the MP-SPDZ runs use: ``--images N`` test images, else the compile-time sample image."""
    key = (onnx_path, args.images)
    if key not in _SPU_CACHE:
        import numpy as np

        from benchmarks.peer.spu_peer import run_spu
        from compiler.api import sample_images
        from compiler.runtime.datasets import eval_images
        from compiler.runtime.runner import load_manifest

        manifest = load_manifest(out_dir)
        metadata = manifest.get("onnx", {}).get("metadata", {})
        if args.images:
            x, _ = eval_images(metadata, args.images)
        else:
            x, _ = sample_images(metadata, tuple(manifest["input_shape"]), 1)
        _SPU_CACHE[key] = run_spu(onnx_path, np.asarray(x), timeout_s=args.timeout)
    return _SPU_CACHE[key]


def _weights(spec, weights: str, cache: Path):
    """'random' → None; 'train:<epochs>' → trained on digits (cached); else an `mpcvit train` checkpoint file."""
    from benchmarks.models import Weights, trained_weights

    if weights == "random":
        return None
    if weights.startswith("train:"):
        return trained_weights(spec, training_epochs(weights), cache)
    from mpcvit.train import load_checkpoint

    checkpoint = load_checkpoint(weights)
    return Weights(checkpoint["state_dict"], checkpoint["dataset"])


def training_epochs(weights: str) -> int:
    """The epochs of a `train:<epochs>` weights option."""
    epochs = weights.split(":", 1)[1]
    if not epochs.isdigit() or int(epochs) < 1:
        raise UserError(f"--weights {weights!r}: write train:<epochs> with a positive whole number, e.g. train:30")
    return int(epochs)


def check_arguments(args: argparse.Namespace) -> None:
    """Reject every bad axis value before the first cell is measured (not after hours of real runs)."""
    from benchmarks.models import ModelSpec, model_cfg
    from compiler.cost.network import get_network
    from compiler.lowering.profiles import protocol_spec
    from compiler.runtime.runner import check_writable_file

    check_writable_file(args.results, "--results")
    if args.report is not None and args.report.exists() and not args.report.is_dir():
        raise UserError(f"--report {args.report} is a file; give a folder for the report")
    if args.report is not None:
        check_writable_file(args.report / "results.md", "--report")
    for flag in ("batch", "repeats", "images"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise UserError(f"--{flag} {value}: give a positive number")
    for model, overrides, attention, mlp in itertools.product(args.models, sweep(args.vary), args.attention,
                                                              args.mlp):
        model_cfg(ModelSpec(model, attention, mlp, overrides=overrides))
    for protocol in args.protocols:
        protocol_spec(protocol, "--protocols")
    for network in args.networks:
        get_network(network)
    if "spu" in args.peer:
        from benchmarks.peer.spu_peer import spu_python

        spu_python()
    if args.weights.startswith("train:"):
        training_epochs(args.weights)
    elif args.weights != "random" and not Path(args.weights).is_file():
        raise UserError(f"--weights {args.weights}: no such checkpoint; give 'random', 'train:<epochs>' or "
                        "a file written by mpcvit train")


def _plaintext_accuracy(onnx_path: Path, weights) -> float | None:
    """Test accuracy of the float model on its digits test set (trained weights only)."""
    if weights is None or weights.dataset.get("name") != "digits":
        return None
    import numpy as np

    from compiler.runtime.datasets import digits_test_set, normalise
    from compiler.api import onnxruntime_logits

    x, y = digits_test_set()
    metadata = {"mpcvit.input_mean": json.dumps(weights.dataset["mean"]),
                "mpcvit.input_std": json.dumps(weights.dataset["std"])}
    return float(np.mean(onnxruntime_logits(onnx_path, normalise(x, metadata)).argmax(-1) == y))


def main_from_args(args: argparse.Namespace) -> int:
    check_arguments(args)
    done = done_keys(args.results, args.real, args.images)
    todo = [c for c in cells(args) if c.key not in done]
    print(f"{len(todo)} cell(s) to measure, results in {args.results}", file=sys.stderr)
    measured = []
    for record in run_matrix(todo, args, progress=not args.no_progress):
        append_record(args.results, record)
        measured.append(record)
    if measured and not args.peer:  # this invocation's cells, one row each (the whole file: --report)
        from benchmarks.report import flat, markdown_table

        print(markdown_table([flat(r) for r in measured]))
    if args.peer:
        from benchmarks.report import load, markdown_table, peer_rows

        print(markdown_table(peer_rows([r for r in load(args.results) if r.get("peer")])))
    if args.report:
        from benchmarks.report import write_report

        print(write_report(args.results, args.report))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.matrix", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    args = parser.parse_args(argv)
    return run_cli(lambda: main_from_args(args))


if __name__ == "__main__":
    sys.exit(main())
