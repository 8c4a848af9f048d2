"""`mpcvit run` and `mpcvit bench` sub-commands (registered into the `mpcvit` CLI)."""
from __future__ import annotations

import argparse
import json
import sys

from compiler.errors import UserError
from compiler.runtime.mpspdz import PROTOCOLS


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the runtime sub-commands to the `mpcvit` command line."""
    p = subparsers.add_parser("run", help="run a compiled program (mpcvit-compile output) under MP-SPDZ")
    p.add_argument("out", help="the compiler's output folder (with manifest.json)")
    p.add_argument("--protocol", help="the protocol the folder was compiled for (the default); any other is refused: "
                                      f"recompile with mpcvit-compile --protocol ({', '.join(PROTOCOLS)})")
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
    p.add_argument("--weights", choices=("input", "shared"), default="input",
                   help="input: party 0 inputs the weights in every execution (default); shared: the model is "
                        "secret-shared once (kept in OUT/weight-shares) and each execution reads its shares, "
                        "without weight traffic")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds before all parties are stopped (default 600)")
    p.add_argument("--party", type=int, help="run only this party, on this host (needs --hosts): 0 model owner, "
                                             "1 client (--images/--data; receives the outputs), 2 no input")
    p.add_argument("--hosts", help="MP-SPDZ host file: one host[:port] line per party, in party order")
    p.add_argument("--batches", type=int, help="with --party: the number of batches party 1 sends, the same on every "
                                               "host (compiled in, so that the dealer and semi2k generate only the "
                                               "preprocessing needed; default: read at run time)")
    p.add_argument("--certs", help="with --party: this party's folder from `mpcvit certs` (default: the MP-SPDZ "
                                   "tree's Player-Data)")
    p.set_defaults(run=cmd_run)

    c = subparsers.add_parser("certs", help="make every party's TLS key and certificate (MP-SPDZ's setup-ssl.sh "
                                            "conventions) and say which files go to which host")
    c.add_argument("out", help="folder to write party0/, party1/, ... into")
    c.add_argument("--parties", type=int, default=3, help="number of parties (default 3)")
    c.add_argument("--days", type=int, default=365, help="validity of the certificates (default 365)")
    c.set_defaults(run=cmd_certs)

    from benchmarks.matrix import add_arguments

    b = subparsers.add_parser("bench", help="benchmark matrix (cost model, or real MP-SPDZ runs), tables and plots")
    add_arguments(b)
    b.set_defaults(run=cmd_bench)


def cmd_run(args: argparse.Namespace) -> int:
    from compiler.runtime.runner import run

    if (args.party is None) != (args.hosts is None):
        raise UserError("--party and --hosts go together: run one party on this host, its peers in the host file")
    if args.party is not None:
        return cmd_run_party(args)
    if args.certs is not None or args.batches is not None:
        raise UserError("--certs and --batches apply to one party on its own host (--party, --hosts)")
    result = run(args.out, args.protocol, images=args.images, data=args.data, network=args.network,
                 online_only=args.online_only, timeout_s=args.timeout, json_path=args.json,
                 per_execution=args.per_execution, retries=args.retries, resume=args.resume, weights=args.weights)
    summary = {k: v for k, v in result.to_json().items()
               if k in ("protocol", "online_only", "time_s", "bytes_party0", "global_bytes", "rounds", "images",
                        "top1_agreement", "max_logit_error", "network_model", "online", "offline", "security",
                        "throughput")}
    summary["weights"] = result.details["weights"]
    summary["outputs"] = [{"name": out["name"], "shape": out["shape"]} for out in result.details["outputs"]]
    summary["predicted_class"] = result.details["predicted_class"]  # the values themselves are in --json
    json.dump(summary, sys.stdout, indent=2)
    print()
    return 0


def cmd_run_party(args: argparse.Namespace) -> int:
    from compiler.runtime.hosts import run_party

    if args.online_only or args.resume or args.per_execution is not None or args.weights != "input":
        raise UserError("--online-only, --resume, --per-execution and --weights shared apply to runs of all parties "
                        "on this host; drop them with --party")
    result = run_party(args.out, args.party, args.hosts, args.protocol, images=args.images, data=args.data,
                       certs=args.certs, batches=args.batches, timeout_s=args.timeout, json_path=args.json)
    summary = {k: v for k, v in result.items() if k != "outputs"}  # party 1's values are in --json
    if "outputs" in result:
        summary["outputs"] = [{"name": out["name"], "shape": out["shape"]} for out in result["outputs"]]
    json.dump(summary, sys.stdout, indent=2)
    print()
    return 0


def cmd_certs(args: argparse.Namespace) -> int:
    from pathlib import Path

    from compiler.runtime.hosts import make_certificates

    for index, folder in enumerate(make_certificates(Path(args.out), args.parties, args.days)):
        files = sorted(path.name for path in folder.iterdir() if not path.name.endswith(".0"))
        print(f"party {index}'s host: copy {folder}/ ({', '.join(files)} and their c_rehash links) and run "
              f"mpcvit run OUT --party {index} --hosts HOSTS --certs FOLDER")
    print("each key P<i>.key stays on party i's host only")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from benchmarks.matrix import main_from_args

    return main_from_args(args)

