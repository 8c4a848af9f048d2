"""`mpcvit run` and `mpcvit bench` sub-commands (registered into the `mpcvit` CLI)."""
from __future__ import annotations

import argparse
import json
import sys

from compiler.runtime.mpspdz import PROTOCOLS


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the runtime sub-commands to the `mpcvit` command line."""
    p = subparsers.add_parser("run", help="run a compiled program (mpcvit-compile output) under MP-SPDZ")
    p.add_argument("out", help="the compiler's output folder (with manifest.json)")
    p.add_argument("--protocol", help=f"{', '.join(PROTOCOLS)} (default: the one it was compiled for)")
    p.add_argument("--images", type=int, help="run N test images of the model's dataset, in batches of the program's "
                                              "batch size, and report top-1 agreement with the plaintext model")
    p.add_argument("--per-execution", type=int, metavar="N",
                   help="images per MP-SPDZ execution (whole batches; default: from the cost model, so that process "
                        "start-up and TLS set-up are a small share)")
    p.add_argument("--data", help="images from an .npz instead: model-ready images (the array named like the model "
                                  "input, else x, else the first) and optional labels y")
    p.add_argument("--json", help="write the results JSON here: updated after every execution, \"complete\": true "
                                  "only when the whole run succeeded")
    p.add_argument("--resume", action="store_true",
                   help="continue the interrupted run recorded in --json (same program, images and --per-execution)")
    p.add_argument("--retries", type=int, default=1,
                   help="repeat an execution that failed transiently (lost peer, killed party) this often (default 1)")
    p.add_argument("--network", choices=("lan", "wan"), default="lan",
                   help="network profile of the modelled latency (default: lan)")
    p.add_argument("--online-only", action="store_true",
                   help="semi2k: preprocessing from files (Fake-Offline.x, -F); times exclude it")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds before all parties are stopped (default 600)")
    p.set_defaults(run=cmd_run)

    from benchmarks.matrix import add_arguments

    b = subparsers.add_parser("bench", help="benchmark matrix (cost model, or real MP-SPDZ runs), tables and plots")
    add_arguments(b)
    b.set_defaults(run=cmd_bench)


def cmd_run(args: argparse.Namespace) -> int:
    from compiler.runtime.runner import run

    result = run(args.out, args.protocol, images=args.images, data=args.data, network=args.network,
                 online_only=args.online_only, timeout_s=args.timeout, json_path=args.json,
                 per_execution=args.per_execution, retries=args.retries, resume=args.resume)
    summary = {k: v for k, v in result.to_json().items()
               if k in ("protocol", "online_only", "time_s", "bytes_party0", "global_bytes", "rounds", "images",
                        "top1_agreement", "max_logit_error", "network_model", "throughput")}
    summary["outputs"] = [{"name": out["name"], "shape": out["shape"]} for out in result.details["outputs"]]
    json.dump(summary, sys.stdout, indent=2)
    print()
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from benchmarks.matrix import main_from_args

    return main_from_args(args)

