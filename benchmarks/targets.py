"""Issue 12's performance targets: the paper's models before and after, measured in one run.

Each target row (model, attention, protocol) is compiled by this checkout's compiler and by the code of git
revision ``--before`` (default :data:`BASELINE_REF`, the code the targets were set against), each in its own child
process, then run under real MP-SPDZ ``--repeats`` times, before and after interleaved so that machine load hits
both alike. Bytes and rounds are MP-SPDZ's own counts for party 0 (deterministic); time is the median of party 0's
``Time =`` (indicative unless the machine is idle), judged as the ratio after / before of the same run. Without
MP-SPDZ (or with ``--no-real``) the cost model's figures stand in for bytes and rounds, and time is not judged.
With real MP-SPDZ, "after" also runs each program with the model secret-shared once (``mpcvit run --weights
shared``): party 0's bytes per execution without its weight input, printed as their own row beside the default.
The reference executor's max logit error against onnxruntime (``--check-samples`` seeded images) is printed too:
accuracy must not pay for the speed.

    python -m benchmarks.targets                       # real MP-SPDZ when found (MP_SPDZ_HOME), 3 repeats
    python -m benchmarks.targets --no-real             # cost model only (seconds)
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.bigmodel import checkout
from compiler.errors import UserError, run_cli
from compiler.runtime.mpspdz import mpspdz_home

REPO = Path(__file__).resolve().parents[1]
BASELINE_REF = "a341018"  # main when issue 12's work started (its figures are the issue's "today")
MARKER = "MPCVIT_TARGETS"


@dataclass(frozen=True)
class Target:
    model: str
    attention: str
    protocol: str
    bytes_p0: float  # bytes sent by party 0, at most
    rounds: int  # party 0's rounds, at most
    time_ratio: float | None = None  # after / before, at most (None: not a target)

    @property
    def key(self) -> str:
        return f"{self.model}/{self.attention}/{self.protocol}"


TARGETS = (Target("vit_7_4_32", "softmax", "replicated-ring", 80e6, 1200, 2 / 3),
           Target("vit_7_4_32", "softmax", "dealer", 100e6, 2400),
           Target("vit_9_12_64", "mu0.1", "replicated-ring", 300e6, 1400, 0.6))

# the child: compile with one code version (compile_onnx's API is the same before and after), then run it
CHILD = f"""
import json, sys
from compiler.api import compile_onnx
onnx_path, out, protocol, samples, run = sys.argv[1:6]
result = compile_onnx(onnx_path, out, protocol=protocol, check=int(samples) > 0, check_samples=max(int(samples), 1))
total = result.cost.total
figures = {{"cost_bytes_p0": total.bytes_p0, "cost_rounds": total.rounds,
            "reference_error": result.check.max_logit_error if result.check else None}}
if run == "1":
    import numpy as np
    from compiler.runtime import run as run_program
    data = out + "/image.npz"  # one seeded N(0, 1) image: the paper's datasets are not built in
    np.savez(data, x=np.random.default_rng(0).standard_normal((1, *result.manifest.input_shape[1:])), y=[0])
    measured = run_program(out, protocol, images=1, data=data, log=lambda message: None)
    figures.update(bytes_p0=measured.bytes_party0, rounds=measured.rounds, time_s=measured.time_s)
    import inspect
    if "weights" in inspect.signature(run_program).parameters:  # the model shared once (mpcvit run --weights shared)
        shared = run_program(out, protocol, images=1, data=data, log=lambda message: None, weights="shared")
        figures.update(shared_bytes_p0=shared.bytes_party0, shared_rounds=shared.rounds,
                       cost_shared_bytes_p0=result.manifest.expected["shared_weights"]["bytes_p0"])
print("{MARKER}", json.dumps(figures))
"""


def in_child(code: Path, args: list[str]) -> dict[str, Any]:
    done = subprocess.run([sys.executable, "-c", CHILD, *args], cwd=code, env={**os.environ, "PYTHONPATH": str(code)},
                          capture_output=True, text=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith(MARKER)]
    if done.returncode != 0 or not lines:
        tail = "\n".join((done.stdout + done.stderr).rstrip().splitlines()[-5:])
        raise UserError(f"{args[0]} under {args[2]} with the code in {code} failed (exit {done.returncode}):\n{tail}")
    return json.loads(lines[-1][len(MARKER):])


def measure(target: Target, codes: dict[str, Path], work: Path, real: bool, repeats: int,
            samples: int) -> dict[str, dict[str, Any]]:
    """{"before"/"after": figures}: cost model, reference error and (``real``) MP-SPDZ's medians."""
    from benchmarks.models import ModelSpec, export_spec

    onnx_path = export_spec(ModelSpec(target.model, target.attention), work / f"{target.model}_{target.attention}.onnx")
    figures: dict[str, dict[str, Any]] = {}
    runs: dict[str, list[dict[str, Any]]] = {label: [] for label in codes}
    for repeat in range(max(repeats, 1) if real else 1):
        for label, code in codes.items():
            out = work / f"{target.key.replace('/', '_')}-{label}"
            # the first pass compiles (and checks); later ones only rerun the compiled program
            child = in_child(code, [str(onnx_path), str(out), target.protocol, str(samples if repeat == 0 else 0),
                                    "1" if real else "0"])
            figures.setdefault(label, child)
            runs[label].append(child)
    for label, records in runs.items():
        if real:
            figures[label]["time_s"] = statistics.median(r["time_s"] for r in records)
    return figures


def verdict(value: float | None, limit: float | None) -> str:
    if value is None or limit is None:
        return "-"
    return "met" if value <= limit else "MISSED"


def table(target: Target, figures: dict[str, dict[str, Any]], real: bool) -> list[str]:
    before, after = figures["before"], figures["after"]
    source = "" if real else " (cost model)"
    bytes_key, rounds_key = ("bytes_p0", "rounds") if real else ("cost_bytes_p0", "cost_rounds")
    rows = [(f"P0 MB{source}", before[bytes_key] / 1e6, after[bytes_key] / 1e6, target.bytes_p0 / 1e6,
             verdict(after[bytes_key], target.bytes_p0)),
            (f"rounds{source}", before[rounds_key], after[rounds_key], target.rounds,
             verdict(after[rounds_key], target.rounds))]
    if real and "shared_bytes_p0" in after:  # per execution when the model is shared once (--weights shared)
        rows.append(("P0 MB, weights shared once", before["bytes_p0"] / 1e6, after["shared_bytes_p0"] / 1e6,
                     target.bytes_p0 / 1e6, verdict(after["shared_bytes_p0"], target.bytes_p0)
                     + f" (cost model {after['cost_shared_bytes_p0'] / after['shared_bytes_p0'] - 1:+.0%})"))
    if real:
        ratio = after["time_s"] / before["time_s"]
        rows.append(("time s (median)", before["time_s"], after["time_s"], None, ""))
        if target.time_ratio is not None:
            rows.append(("time after/before", 1.0, ratio, target.time_ratio, verdict(ratio, target.time_ratio)))
        rows.append(("cost model P0 MB", before["cost_bytes_p0"] / 1e6, after["cost_bytes_p0"] / 1e6, None,
                     f"{after['cost_bytes_p0'] / after['bytes_p0'] - 1:+.0%} vs measured"))
        rows.append(("cost model rounds", before["cost_rounds"], after["cost_rounds"], None,
                     f"{after['cost_rounds'] / after['rounds'] - 1:+.0%} vs measured"))
    if before.get("reference_error") is not None:
        rows.append(("reference max |logit err|", before["reference_error"], after["reference_error"], None, ""))
    lines = [f"\n{target.key}", f"  {'figure':<27} {'before':>12} {'after':>12} {'target':>10}  verdict"]
    for name, b, a, limit, status in rows:
        lines.append(f"  {name:<27} {b:>12,.4g} {a:>12,.4g} {'' if limit is None else f'{limit:,.4g}':>10}  {status}")
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.targets", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--before", metavar="REF", default=BASELINE_REF,
                   help=f"git revision of the 'before' code (default {BASELINE_REF})")
    p.add_argument("--no-real", action="store_true", help="cost model only, even when MP-SPDZ is found")
    p.add_argument("--repeats", type=int, default=3, help="real runs per code version (median time; default 3)")
    p.add_argument("--check-samples", type=int, default=4,
                   help="seeded images for the reference error against onnxruntime (0: skip; default 4)")
    p.add_argument("--only", nargs="+", default=None, metavar="MODEL/ATTENTION/PROTOCOL",
                   help=f"some targets only, of: {', '.join(t.key for t in TARGETS)}")
    p.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = p.parse_args(argv)

    def body() -> int:
        targets = [t for t in TARGETS if args.only is None or t.key in args.only]
        if args.only and len(targets) != len(set(args.only)):
            raise UserError(f"--only {' '.join(args.only)}: choose among {', '.join(t.key for t in TARGETS)}")
        if args.repeats < 1:
            raise UserError(f"--repeats {args.repeats}: give 1 or more")
        real = not args.no_real and mpspdz_home() is not None
        results: dict[str, Any] = {}
        with tempfile.TemporaryDirectory(prefix="mpcvit-targets-") as tmp:
            work = Path(tmp)
            codes = {"before": checkout(args.before, work / "before"), "after": REPO}
            for target in targets:
                results[target.key] = measure(target, codes, work, real, args.repeats, args.check_samples)
                print("\n".join(table(target, results[target.key], real)), flush=True)
        print(f"\nbefore = {args.before}, after = this checkout; "
              + ("real MP-SPDZ, party 0's bytes and rounds, median time of "
                 f"{args.repeats} interleaved runs" if real else "cost model only (no MP-SPDZ run)"))
        if args.json:
            args.json.write_text(json.dumps(results, indent=1))
        return 0

    return run_cli(body)


if __name__ == "__main__":
    sys.exit(main())
