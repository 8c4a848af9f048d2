"""``mpcvit-compile``: ONNX ViT -> MP-SPDZ program for one protocol, with a cost summary and an optional check."""
from __future__ import annotations

import argparse
import sys

from compiler.errors import OneLineParser, run_cli
from compiler.lowering import parse_approx_flags
from compiler.lowering.profiles import PROTOCOLS


def parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="mpcvit-compile", description=__doc__)
    p.add_argument("model", help="the exported .onnx model")
    p.add_argument("--protocol", default="replicated-ring", help=f"one of {', '.join(PROTOCOLS)} (default "
                   "replicated-ring)")
    p.add_argument("-o", "--out", default=None, help="output directory (default: <model>-<protocol>/)")
    p.add_argument("--batch", type=int, default=1, help="images per MPC run (default 1)")
    p.add_argument("--frac-bits", type=int, default=None, help="fixed-point fractional bits f (default 16)")
    p.add_argument("--approx", action="append", metavar="OP=CHOICE", help="force an approximation, e.g. gelu=poly")
    p.add_argument("--check", action="store_true", help="compare the fixed-point reference with onnxruntime")
    p.add_argument("--check-samples", type=int, default=None, help="inputs for --check (default 200)")
    p.add_argument("--data", metavar="FILE.npz", default=None, help="your own inputs for --check: the array named "
                   "like the model input, else the first one, shaped [N, ...input shape without the batch] "
                   "(default: the digits test set when the model was trained on it, else random N(0, 1) inputs)")
    p.add_argument("--calibrate", metavar="FILE.npz", default=None,
                   help="normalised images (array x: [n, C, H, W]) whose float ranges choose the fixed-point "
                        "parameters (default: the check samples: the digits test set, else N(0, 1) images)")
    p.add_argument("--dump-ir", action="store_true", help="print the IR after the passes")
    p.add_argument("--reveal", choices=("logits", "argmax"), default="logits", help="what the client learns")
    p.add_argument("--template-set", default=None, help="alternative templates under spdz_templates/ "
                   "(e.g. ml_baseline)")
    return p


def summary(result) -> str:
    m, cost = result.manifest, result.cost
    total = cost.total
    counts = ", ".join(f"{op} {n}" for op, n in sorted(m.op_counts.items()))
    approx = ", ".join(f"{op}={choice}" for op, choice in result.program.profile.approx.items())
    lines = [f"compiled {m.name} for {m.protocol} (MP-SPDZ -E {m.mpspdz_protocol}, f={m.f}, k={m.k}, batch {m.batch})"
             f" in {result.timings['total_s']:.2f} s -> {m.directory}",
             f"layers: {m.op_counts.get('attention', 0)} attention; ops: {counts}",
             f"approximations: {approx}",
             f"estimated: {total.bytes_p0 / 1e6:.2f} MB party 0, {total.bytes_all / 1e6:.2f} MB all parties, "
             f"{total.rounds:.0f} rounds; latency LAN {cost.latency('lan'):.3f} s, WAN {cost.latency('wan'):.2f} s"]
    if result.calibration is not None:
        c = result.calibration
        lo, hi = c.input_range
        lines.append(f"calibrated on {c.samples} inputs ({c.source}): input range [{lo:.3g}, {hi:.3g}]; the client "
                     f"refuses images beyond |v| {c.input_bound:.3g}")
    lines += [f"warning: {w}" for w in m.warnings]
    lines += ["", cost.table()]
    if result.check is not None:
        lines += ["", result.check.table()]
    lines += ["", f"run: {m.directory}/run.sh (MP_SPDZ_HOME=<built MP-SPDZ>)"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from pathlib import Path

    args = parser().parse_args(argv)

    def body() -> int:
        from compiler.api import compile_onnx
        from compiler.errors import UserError

        if args.check_samples is not None and not args.check:
            raise UserError(f"--check-samples {args.check_samples} counts the inputs of --check; add --check")
        out = args.out or f"{Path(args.model).with_suffix('')}-{args.protocol}"
        dump = (lambda g: print(g.dump())) if args.dump_ir else None
        result = compile_onnx(args.model, out, protocol=args.protocol, batch=args.batch, frac_bits=args.frac_bits,
                              approx=parse_approx_flags(args.approx), check=args.check,
                              check_samples=200 if args.check_samples is None else args.check_samples,
                              reveal=args.reveal, template_set=args.template_set,
                              on_graph=dump, check_data=args.data,
                              calibration=args.calibrate)
        print(summary(result))  # a check beyond its tolerance is one of its warnings
        return 0

    return run_cli(body)


if __name__ == "__main__":
    sys.exit(main())
