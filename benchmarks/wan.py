"""Measured vs modelled latency under an emulated network: every party in its own namespace, bandwidth by tbf and
latency by a delay relay (`compiler.runtime.emulation`), next to the two models of it.

    python -m benchmarks.wan --models vit_7_4_32 --protocols replicated-ring dealer --report benchmarks/results/wan.md

Per (model, protocol): the program (seeded weights, batch 1) runs once on the bare veth links and once under the
profile. Figures: party 0's `Time =` (MP-SPDZ) in each; the runtime model (`compiler.runtime.network`: bare
time + rounds × one-way latency + party-0 bytes / bandwidth); the cost model's estimate (`compiler.cost`,
manifest `expected.latency_<net>_s`: rounds × RTT + all parties' bytes / bandwidth + compute). Needs root, iproute2
and MP-SPDZ. Times depend on the machine's load; rounds and bytes do not.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from benchmarks.models import ModelSpec, export_spec
from benchmarks.pipeline import compile_model
from compiler.runtime.emulation import run_emulated
from compiler.runtime.network import network_profile


def measure(model: str, attention: str, protocol: str, network: str, work: Path) -> dict:
    onnx_path = export_spec(ModelSpec(model, attention), work / f"{model}.onnx")
    out = work / f"{model}-{protocol}"
    compiled = compile_model(onnx_path, protocol, 1, out)
    bare = run_emulated(out, None)[0]  # the compiled-in image (random weights: any image costs the same)
    emulated = run_emulated(out, network)[0]
    profile = network_profile(network)
    runtime_model = bare["time_s"] + profile.time_s(emulated["rounds"], emulated["bytes_sent"])
    cost_model = compiled.cost.latency(network)
    return {"model": model, "attention": attention, "protocol": protocol, "network": network,
            "rounds_party0": emulated["rounds"], "bytes_party0": emulated["bytes_sent"],
            "global_bytes": emulated["global_bytes"], "bare_time_s": bare["time_s"],
            "measured_time_s": emulated["time_s"], "measured_wall_s": emulated["wall_s"],
            "runtime_model_s": runtime_model, "cost_model_s": cost_model,
            "cost_model_rounds": compiled.cost.total.rounds, "cost_model_bytes_party0": compiled.cost.total.bytes_p0}


def table(rows: list[dict]) -> str:
    lines = ["| model | protocol | network | rounds (P0) | MB (P0) | bare s | measured s | runtime model s "
             "| cost model s |", "|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['model']} {r['attention']} | {r['protocol']} | {r['network']} | {r['rounds_party0']:,} | "
                     f"{r['bytes_party0'] / 1e6:.1f} | {r['bare_time_s']:.2f} | {r['measured_time_s']:.2f} | "
                     f"{r['runtime_model_s']:.2f} | {r['cost_model_s']:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["vit_7_4_32"])
    parser.add_argument("--attention", default="mu0.1")
    parser.add_argument("--protocols", nargs="+", default=["replicated-ring", "dealer"])
    parser.add_argument("--network", default="wan", choices=("lan", "wan"))
    parser.add_argument("--report", type=Path, help="write the table (Markdown) here, and the rows beside it (.json)")
    args = parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory(prefix="mpcvit-wan-") as tmp:
        for model in args.models:
            for protocol in args.protocols:
                rows.append(measure(model, args.attention, protocol, args.network, Path(tmp)))
                print(table(rows[-1:]).splitlines()[-1], flush=True)
    text = table(rows)
    print(text)
    if args.report:
        args.report.parent.mkdir(parents=True, exist_ok=True)
        args.report.write_text(f"# Emulated {args.network} vs its models\n\n{__doc__.split(chr(10) + chr(10), 2)[2]}\n"
                               + text)
        args.report.with_suffix(".json").write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
