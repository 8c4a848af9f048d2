"""CI regression benchmark: fixed small models, compared with the committed `benchmarks/baseline.json`.

Per model and protocol it records the cost model's bytes (party 0, all parties) and rounds, the fixed-point reference
executor's largest logit error against onnxruntime, and our compile time; with MP-SPDZ present also a real run's
bytes, rounds and time. The paper's models (``vit_7_4_32``, ``vit_9_12_64``; softmax and μ=0.1) add their
cost-model counts, compiled through the calibrated path (``mpcvit-compile``'s default: fixed-point parameters,
segments and comparison bit lengths from the ranges on its default calibration samples, once per model). The small
models stay uncalibrated: on digits the calibrated path raises f to 20 and adds truncation lengths (LayerNorm's
extra bits), each its own kind of dealer/semi2k preprocessing, +2 to +4 real rounds against 3-12 % fewer bytes.
Rules (a change in the good direction never fails; it is shown as "improved"):

* deterministic counts (cost-model and measured bytes/rounds): any increase fails;
* reference error: fails above 1.25 × baseline + 1e-6 (float summation order may differ across machines);
* times (our compile time, a real run's time): fail above 3 × baseline + 1 s (machines and load differ; a
  0.035 s compile read 0.77 s on the loaded shared machine with nothing changed): only gross slowdowns fail.

    python -m benchmarks.regression            # compare and print the table (exit 1 on a regression)
    python -m benchmarks.regression --update   # record the current figures as the new baseline
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from compiler.errors import MPSPDZError, UserError, run_cli
from compiler.runtime.runner import check_writable_file, write_json_atomic

BASELINE = Path(__file__).with_name("baseline.json")
PROTOCOLS = ("semi2k", "dealer", "replicated-ring")
BATCH = 1
EXACT = ("cost_bytes_p0", "cost_bytes_all", "cost_rounds", "real_bytes_p0", "real_global_bytes", "real_rounds")
ERROR = ("reference_max_error",)
TIMES = ("compile_s", "real_time_s")
ERROR_RATIO, ERROR_SLACK, TIME_RATIO, TIME_SLACK_S = 1.25, 1e-6, 3.0, 1.0


@dataclass(frozen=True)
class Check:
    key: str       # "<model>/<protocol>"
    metric: str
    baseline: float | None
    current: float | None
    status: str    # ok | improved | REGRESSION | new | skipped

    @property
    def failed(self) -> bool:
        return self.status == "REGRESSION"


def regression_models():
    from benchmarks.models import ModelSpec

    # one layer, 4 heads of all three kinds, GeLU MLP; and the MPCViT+ variant with a linear MLP
    return {"mixed": ModelSpec("vit_1_4_8", "mu0.5"), "mixed_linear_mlp": ModelSpec("vit_1_4_8", "mu0.5", "mpcvit+")}


def paper_models():
    """The paper's CIFAR and Tiny-ImageNet models, all-softmax and μ=0.1: cost-model counts only (their reference
    run and real execution take minutes; the counts are what a compiler change moves)."""
    from benchmarks.models import ModelSpec

    return {f"{model}_{attention}": ModelSpec(model, attention) for model in ("vit_7_4_32", "vit_9_12_64")
            for attention in ("softmax", "mu0.1")}


def measure(real: bool, log=print) -> dict[str, dict[str, float]]:
    """Current figures, keyed "<model>/<protocol>"."""
    from benchmarks.models import export_spec
    from benchmarks.pipeline import calibrate_model, compile_model, reference_error

    records: dict[str, dict[str, float]] = {}
    mpspdz = _mpspdz_or_none() if real else None
    with tempfile.TemporaryDirectory(prefix="mpcvit-regression-") as tmp:
        for name, spec in regression_models().items():
            onnx_path = export_spec(spec, Path(tmp) / f"{name}.onnx")
            for protocol in PROTOCOLS:
                out_dir = Path(tmp) / f"{name}-{protocol}"
                compiled = compile_model(onnx_path, protocol, BATCH, out_dir)
                total = compiled.cost.total
                record = {"cost_bytes_p0": round(total.bytes_p0), "cost_bytes_all": round(total.bytes_all),
                          "cost_rounds": round(total.rounds), "compile_s": round(compiled.compile_s, 4),
                          "reference_max_error": reference_error(compiled, onnx_path)}
                if mpspdz is not None:
                    from compiler.runtime import run

                    result = run(out_dir, protocol, mpspdz=mpspdz, log=log)
                    record.update(real_bytes_p0=result.bytes_party0, real_global_bytes=result.global_bytes,
                                  real_rounds=result.rounds, real_time_s=round(result.time_s, 4))
                records[f"{name}/{protocol}"] = record
                log(f"measured {name}/{protocol}")
        for name, spec in paper_models().items():
            onnx_path = export_spec(spec, Path(tmp) / f"{name}.onnx")
            calibration = calibrate_model(onnx_path, BATCH)
            for protocol in PROTOCOLS:
                total = compile_model(onnx_path, protocol, BATCH, calibration=calibration).cost.total
                records[f"{name}/{protocol}"] = {"cost_bytes_p0": round(total.bytes_p0),
                                                 "cost_bytes_all": round(total.bytes_all),
                                                 "cost_rounds": round(total.rounds)}
                log(f"measured {name}/{protocol} (cost model)")
    return records


def _mpspdz_or_none():
    from compiler.runtime.mpspdz import find_mpspdz

    try:
        return find_mpspdz()
    except MPSPDZError:
        return None


def compare(current: dict[str, dict[str, float]], baseline: dict[str, dict[str, float]]) -> list[Check]:
    checks = []
    for key in sorted(set(current) | set(baseline)):
        now, then = current.get(key, {}), baseline.get(key, {})
        for metric in sorted(set(now) | set(then)):
            checks.append(Check(key, metric, then.get(metric), now.get(metric), _status(metric, then.get(metric),
                                                                                          now.get(metric))))
    return checks


def _status(metric: str, baseline: float | None, current: float | None) -> str:
    if current is None:
        return "skipped"  # e.g. real runs recorded in the baseline, but no MP-SPDZ here
    if baseline is None:
        return "new"
    if metric in EXACT:
        limit = baseline
    elif metric in ERROR:
        limit = baseline * ERROR_RATIO + ERROR_SLACK
    elif metric in TIMES:
        limit = baseline * TIME_RATIO + TIME_SLACK_S
    else:
        raise ValueError(f"metric {metric!r} has no regression rule")
    if current > limit:
        return "REGRESSION"
    return "improved" if current < baseline and metric not in TIMES else "ok"


def table(checks: list[Check]) -> str:
    def fmt(value: float | None) -> str:
        return "-" if value is None else f"{value:.4g}" if isinstance(value, float) else f"{value:,}"

    head = f"{'model/protocol':<32} {'metric':<22} {'baseline':>14} {'current':>14}  status"
    lines = [head, "-" * len(head)]
    lines += [f"{c.key:<32} {c.metric:<22} {fmt(c.baseline):>14} {fmt(c.current):>14}  {c.status}" for c in checks]
    failed = [c for c in checks if c.failed]
    rules = (f"rules: counts may not grow; reference error ≤ {ERROR_RATIO} × baseline + {ERROR_SLACK:g}; "
             f"times ≤ {TIME_RATIO:g} × baseline + {TIME_SLACK_S:g} s")
    lines += ["", rules, f"{len(failed)} regression(s)" if failed else "no regression"]
    return "\n".join(lines)


def load_baseline(path: Path) -> dict[str, dict[str, float]]:
    from mpcvit.config import read_json_file

    baseline = read_json_file(path, "--baseline", "record one with --update")
    if not isinstance(baseline, dict) or not all(isinstance(v, dict) for v in baseline.values()):
        raise UserError(f"--baseline {path}: not a baseline (an object of <model>/<protocol>: metrics); "
                        "re-record it with --update")
    return baseline


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.regression", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--update", action="store_true", help="write the current figures to the baseline file")
    parser.add_argument("--baseline", type=Path, default=BASELINE)
    parser.add_argument("--no-real", action="store_true", help="skip real MP-SPDZ runs even when it is available")
    args = parser.parse_args(argv)

    def body() -> int:
        if args.update:  # checked before the minute of measuring
            check_writable_file(args.baseline, "--baseline")
        baseline = None if args.update else load_baseline(args.baseline)
        current = measure(real=not args.no_real, log=lambda m: print(m, file=sys.stderr))
        if baseline is None:
            write_json_atomic(args.baseline, current)
            print(f"baseline written: {args.baseline} ({len(current)} entries)")
            return 0
        checks = compare(current, baseline)
        print(table(checks))
        return 1 if any(c.failed for c in checks) else 0

    return run_cli(body)


if __name__ == "__main__":
    sys.exit(main())
