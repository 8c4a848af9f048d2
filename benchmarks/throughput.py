"""Images per second of `mpcvit run`: one MP-SPDZ execution per batch (the runner before batch loops) vs executions
of many batches (the default, sized by the cost model), on the same compiled program, in the same session.

    python -m benchmarks.throughput --images 200 --batch 1 --json benchmarks/results/throughput.json

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
    parser.add_argument("--batch", type=int, default=1, help="the compiled batch B (images per loop iteration)")
    parser.add_argument("--protocol", default="replicated-ring")
    parser.add_argument("--json", type=Path, help="write both measurements here")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="mpcvit-throughput-") as tmp:
        onnx_path = export_spec(ModelSpec("vit_2_4_8", "mu0.5"), Path(tmp) / "digits.onnx")
        compile_model(onnx_path, args.protocol, args.batch, Path(tmp) / "out")
        per_batch = measure(Path(tmp) / "out", args.images, args.batch, args.protocol)
        looped = measure(Path(tmp) / "out", args.images, None, args.protocol)
    speedup = looped["images_per_s"] / per_batch["images_per_s"]
    for name, m in (("one batch per execution", per_batch), ("batches looped (cost model)", looped)):
        print(f"{name:>28}: {m['executions']:4d} executions of {m['images_per_execution']:3d} images, "
              f"{m['images_per_s']:6.2f} images/s, {m['bytes_party0_per_image'] / 1e6:.3f} MB and "
              f"{m['rounds_per_image']:.1f} rounds per image (party 0), start-up {m['startup_s_per_execution']:.2f} s "
              f"per execution, top-1 agreement {m['top1_agreement']:.3f}")
    print(f"speed-up: {speedup:.1f}x images/s ({args.images} digits images, {args.protocol}, batch {args.batch})")
    if args.json:
        write_json_atomic(args.json, {"images": args.images, "batch": args.batch, "protocol": args.protocol,
                                      "one_batch_per_execution": per_batch, "looped": looped, "speedup": speedup})
    return 0


if __name__ == "__main__":
    sys.exit(main())
