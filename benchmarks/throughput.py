"""Images per second of `mpcvit run`: one MP-SPDZ execution per batch (the runner before batch loops) vs executions
of many batches (the default, sized by the cost model), on the same compiled program and on a wider batch, in the
same session.

    python -m benchmarks.throughput --images 200 --batch 1 8 --json benchmarks/results/throughput.json

The model is the digits `vit_2_4_8` (μ=0.5, seeded weights) that the runtime tests build. Both runs go through
`compiler.runtime.run`; images/s counts the executions' wall time (start to the last party's exit), not the one
MP-SPDZ compile or the onnxruntime comparison. Bytes and rounds are deterministic; times depend on the machine's load.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from benchmarks.models import ModelSpec, export_spec
from benchmarks.pipeline import compile_model
from compiler.runtime.runner import run, write_json_atomic


def measure(out: Path, images: int, per_execution: int | None, protocol: str) -> dict:
    result = run(out, protocol, images=images, per_execution=per_execution, log=lambda message: None)
    throughput = result.details["throughput"]
    return {**throughput, "images": result.images, "bytes_party0": result.bytes_party0, "rounds": result.rounds,
            "top1_agreement": result.top1_agreement, "max_logit_error": result.max_logit_error,
            "startup_s_per_execution": (throughput["wall_s"] - result.time_s) / throughput["executions"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8],
                        help="compiled batches B (images per loop iteration), each run one batch per execution (the "
                             "runner's way before batch loops) and looped; speed-ups are against the first's "
                             "one batch per execution (default: 1 8)")
    parser.add_argument("--protocol", default="replicated-ring")
    parser.add_argument("--json", type=Path, help="write every measurement here")
    args = parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory(prefix="mpcvit-throughput-") as tmp:
        onnx_path = export_spec(ModelSpec("vit_2_4_8", "mu0.5"), Path(tmp) / "digits.onnx")
        for batch in args.batch:
            out = Path(tmp) / f"b{batch}"
            compile_model(onnx_path, args.protocol, batch, out)
            rows.append((f"B={batch}, one batch per execution", measure(out, args.images, batch, args.protocol)))
            rows.append((f"B={batch}, batches looped", measure(out, args.images, None, args.protocol)))
    base = rows[0][1]["images_per_s"]
    for name, m in rows:
        print(f"{name:>34}: {m['executions']:4d} executions of {m['images_per_execution']:3d} images, "
              f"{m['images_per_s']:6.2f} images/s ({m['images_per_s'] / base:4.1f}x), "
              f"{m['bytes_party0_per_image'] / 1e6:.3f} MB and {m['rounds_per_image']:.1f} rounds per image (party 0), "
              f"start-up {m['startup_s_per_execution']:.2f} s per execution, top-1 agreement {m['top1_agreement']:.3f}")
    print(f"{args.images} digits images (vit_2_4_8), {args.protocol}; times are wall clock on a shared machine")
    if args.json:
        write_json_atomic(args.json, {"images": args.images, "protocol": args.protocol,
                                      "runs": [{"name": name, **m, "speedup": m["images_per_s"] / base}
                                               for name, m in rows]})
    return 0


if __name__ == "__main__":
    sys.exit(main())
