"""Run an ONNX model under SecretFlow SPU, one OS process per party over loopback brpc (SPU's own venv only).

Runs inside the SPU virtual environment (Python ≤ 3.11, numpy < 2, jax ≤ 0.4.34; see ``requirements-spu.txt``),
never in the project's main environment, so it imports nothing from the project. The ONNX file must have static
shapes and folded constants (``benchmarks.peer.spu_peer`` prepares it with onnxruntime's basic graph optimisation);
``jaxonnxruntime`` turns it into a JAX function, which SPU compiles. Party 0 owns the weights, party 1 the image
(``make_shares(..., owner_rank)``), as in the mpcvit programs.

Measured per image, per party: wall time of ``Runtime.run`` (seconds), and from SPU's own link statistics
(``enable_pphlo_profile``: its "Link details" log line) bytes sent and send actions (SPU's closest figure to rounds).

    python spu_worker.py --onnx model.onnx --images x.npy --protocol ABY3 --out result.json
"""
from __future__ import annotations

import argparse
import json
import os
import pickle
import re
import socket
import subprocess
import sys
import tempfile
import time

import jax.numpy as jnp
import numpy as np
import onnx
from jaxonnxruntime import call_onnx
from jaxonnxruntime.core import handler, onnx_node

import spu.api as spu_api
import spu.libspu as libspu
import spu.utils.frontend as spu_fe

PARTIES = {"ABY3": 3, "SEMI2K": 2}
LINK_DETAILS = re.compile(r"Link details: total send bytes (\d+), recv bytes (\d+), send actions (\d+), "
                          r"recv actions (\d+)")


@handler.register_op("LayerNormalization")
class LayerNormalization(handler.Handler):
    """ONNX LayerNormalization (opset 17), which jaxonnxruntime 0.3.0 lacks: normalised over axis..-1."""

    @classmethod
    def version_17(cls, node: onnx_node.OnnxNode, inputs):
        axis, eps = node.attrs.get("axis", -1), node.attrs.get("epsilon", 1e-5)

        def layernorm(x, scale, bias=None):
            axes = tuple(range(axis % x.ndim, x.ndim))
            centred = x - x.mean(axis=axes, keepdims=True)
            y = centred / jnp.sqrt((centred ** 2).mean(axis=axes, keepdims=True) + eps) * scale
            return y if bias is None else y + bias

        return layernorm


def runtime_config(protocol: str) -> libspu.RuntimeConfig:
    config = libspu.RuntimeConfig(protocol=getattr(libspu.ProtocolKind, protocol), field=libspu.FieldType.FM64)
    config.enable_pphlo_profile = True  # prints the link statistics after each run
    if protocol == "SEMI2K":  # party 0 generates the Beaver triples (SPU's trusted-first-party SEMI2K)
        config.beaver_type = libspu.RuntimeConfig.BeaverType.TrustedFirstParty
    return config


def free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def party(job_path: str, rank: int, result_path: str) -> None:
    """One party in its own process (started by :func:`run_image`; SPU's C++ log goes to its stdout)."""
    with open(job_path, "rb") as source:
        job = pickle.load(source)
    config = libspu.RuntimeConfig()
    config.ParseFromString(job["config"])
    executable = libspu.Executable()
    executable.ParseFromString(job["executable"])
    desc = libspu.link.Desc()
    desc.recv_timeout_ms = 600_000
    for r, port in enumerate(job["ports"]):
        desc.add_party(f"P{r}", f"127.0.0.1:{port}")
    link = libspu.link.create_brpc(desc, rank)
    runtime = spu_api.Runtime(link, config)
    for name, (meta, chunks) in zip(executable.input_names, job["shares"][rank]):
        share = libspu.Share()
        share.meta, share.share_chunks = meta, chunks
        runtime.set_var(name, share)
    link.barrier()  # time the protocol, not the connection set-up
    start = time.perf_counter()
    runtime.run(executable)
    seconds = time.perf_counter() - start
    out = runtime.get_var(executable.output_names[0])
    with open(result_path, "wb") as sink:
        pickle.dump((seconds, out.meta, list(out.share_chunks)), sink)
    link.stop_link()  # the peers may still be receiving this party's last messages


def run_image(executable, params: list, image: np.ndarray, protocol: str, workdir: str, timeout_s: float) -> dict:
    """One SPU execution on ``image``: n party processes over loopback; their figures and the revealed logits."""
    config = runtime_config(protocol)
    n = PARTIES[protocol]
    io = spu_api.Io(n, config)
    inputs = [io.make_shares(np.asarray(p), libspu.Visibility.VIS_SECRET, 0) for p in params]
    inputs.append(io.make_shares(image, libspu.Visibility.VIS_SECRET, 1 % n))
    job = os.path.join(workdir, "job.pkl")
    with open(job, "wb") as sink:
        pickle.dump({"config": config.SerializeToString(), "executable": executable.SerializeToString(),
                     "ports": free_ports(n),
                     "shares": [[(x[r].meta, list(x[r].share_chunks)) for x in inputs] for r in range(n)]}, sink)
    logs = [os.path.join(workdir, f"party{r}.log") for r in range(n)]
    results = [os.path.join(workdir, f"party{r}.pkl") for r in range(n)]
    procs = []
    for r in range(n):
        with open(logs[r], "w") as log:
            procs.append(subprocess.Popen([sys.executable, __file__, "--party", str(r), "--job", job,
                                           "--out", results[r]], stdout=log, stderr=subprocess.STDOUT))
    try:
        codes = [p.wait(timeout=timeout_s) for p in procs]
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"SPU execution did not finish within {timeout_s:.0f} s") from None
    finally:
        for p in procs:  # only the processes started here
            if p.poll() is None:
                p.kill()
                p.wait()
    for r, code in enumerate(codes):
        if code:
            tail = open(logs[r]).read().strip().splitlines()
            raise RuntimeError(f"SPU party {r} failed: {tail[-1] if tail else 'no output'}")
    outputs = []
    for path in results:
        with open(path, "rb") as source:
            outputs.append(pickle.load(source))
    shares = []
    for _, meta, chunks in outputs:
        share = libspu.Share()
        share.meta, share.share_chunks = meta, chunks
        shares.append(share)
    stats = []
    for log in logs:
        found = LINK_DETAILS.findall(open(log).read())
        if not found:
            raise RuntimeError(f"SPU printed no link statistics into {log}")
        sent, _, actions, _ = map(int, found[-1])
        stats.append({"bytes_sent": sent, "send_actions": actions})
    return {"time_s": max(o[0] for o in outputs), "parties": stats,
            "logits": np.asarray(io.reconstruct(shares)).tolist()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--onnx")
    parser.add_argument("--images", help=".npy array [n, *input shape], float32")
    parser.add_argument("--protocol", choices=sorted(PARTIES))
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds per execution")
    parser.add_argument("--party", type=int, help=argparse.SUPPRESS)  # internal: one party of run_image
    parser.add_argument("--job", help=argparse.SUPPRESS)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    if args.party is not None:
        party(args.job, args.party, args.out)
        return  # a normal exit: it flushes SPU's C++ log, which holds the link statistics
    model = onnx.load(args.onnx)
    images = np.load(args.images).astype(np.float32)
    model_fn, model_params = call_onnx.call_onnx_model(model, [images[:1]])
    names = sorted(model_params)

    def fn(params, image):
        return model_fn(dict(zip(names, params)), [image])[0]

    params = [np.asarray(model_params[k]) for k in names]
    inputs = [f"w{i}" for i in range(len(params))] + ["image"]
    executable, _ = spu_fe.compile(spu_fe.Kind.JAX, fn, [params, images[:1]], {}, inputs,
                                   [libspu.Visibility.VIS_SECRET] * len(inputs), lambda outs: ["logits"])
    runs = []
    with tempfile.TemporaryDirectory(prefix="mpcvit-spu-") as workdir:
        for image in images:
            runs.append(run_image(executable, params, image[None], args.protocol, workdir, args.timeout))
    with open(args.out, "w") as sink:
        json.dump({"protocol": args.protocol, "parties": PARTIES[args.protocol], "runs": runs,
                   "spu": __import__("spu").__version__}, sink)


if __name__ == "__main__":
    main()
