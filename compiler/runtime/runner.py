"""`run(OUT, protocol)`: compile a backend output with MP-SPDZ's compiler, run the parties, measure, check logits.

The program runs in a private overlay directory (see `overlay.py`); images are fed in batches of the program's
batch size B (one MP-SPDZ execution per batch, compiled once), and the revealed logits are compared with the plain
float model (onnxruntime) on the same images.
"""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np

from compiler.api import onnxruntime_logits
from compiler.backend import write_client_input
from compiler.backend.inputs import input_files
from compiler.calibrate import check_client_images
from compiler.errors import MPSPDZError, UserError
from compiler.runtime import datasets
from compiler.runtime.mpspdz import (MPSPDZ, ProtocolSpec, check_protocol_ready, find_mpspdz, mpspdz_version,
                                     protocol_spec)
from compiler.runtime.network import network_profile
from compiler.runtime.overlay import install_inputs, make_overlay
from compiler.runtime.parser import OUTPUT_MARKER, PartyStats, Phase, parse_party_output, revealed_outputs
from compiler.runtime.prep import MAX_TUPLES, generate_fake_preprocessing, tuples_needed
from compiler.runtime.processes import free_port_base, run_parties

# Real semi2k pays one OT-based triple per scalar product (~3.1 KB all parties, ~8 µs here): warn above this.
SEMI2K_WARN_BYTES = 2e9
COMPILE_TIMEOUT_S = 1800

ClientInputWriter = Callable[[dict, np.ndarray, Path], None]
Reference = Callable[[np.ndarray], np.ndarray]


@dataclass
class RunResult:
    protocol: str
    online_only: bool
    time_s: float                # party 0's `Time =`, summed over batches (excludes preprocessing when online_only)
    bytes_party0: int
    global_bytes: int | None
    rounds: int
    top1_agreement: float | None
    max_logit_error: float | None
    images: int
    batches: int
    details: dict[str, Any] = field(default_factory=dict)
    logits: np.ndarray | None = field(default=None, repr=False)  # output 0, [images, values per image]
    outputs: list[np.ndarray] = field(default_factory=list, repr=False)  # every graph output, [images, ...]

    def to_json(self) -> dict[str, Any]:
        data = {k: v for k, v in asdict(self).items() if k not in ("details", "logits", "outputs")}
        return {**data, **self.details}


def load_manifest(out_dir: Path) -> dict[str, Any]:
    path = out_dir / "manifest.json"
    if not path.is_file():
        raise UserError(f"{out_dir}: no manifest.json; compile a model into it first (mpcvit-compile MODEL.onnx -o {out_dir})")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: not valid JSON ({exc}); recompile into {out_dir} with mpcvit-compile") from None
    if not isinstance(manifest, dict):
        raise UserError(f"{path}: not a JSON object; recompile into {out_dir} with mpcvit-compile")
    missing = [k for k in ("name", "protocol", "compile_flags", "batch", "output_shape") if k not in manifest]
    if missing:
        raise UserError(f"{path}: lacks {', '.join(missing)}; recompile with this version of mpcvit-compile")
    return manifest


def run(out_dir: str | Path, protocol: str | None = None, *, images: int | None = None, data: str | Path | None = None,
        network: str = "lan", online_only: bool = False, timeout_s: float = 600.0, json_path: str | Path | None = None,
        mpspdz: MPSPDZ | None = None, client_input_writer: ClientInputWriter | None = None,
        reference: Reference | None = None, log: Callable[[str], None] | None = None) -> RunResult:
    """Run the program in `out_dir` under MP-SPDZ; see module doc. Writes `json_path` only when the run succeeds."""
    out_dir = Path(out_dir)
    log = log or (lambda message: print(message, file=sys.stderr))
    manifest = load_manifest(out_dir)
    spec = protocol_spec(protocol or manifest["protocol"])
    if protocol_spec(manifest["protocol"]).name != spec.name:
        raise UserError(f"{out_dir} was compiled for {manifest['protocol']}: recompile it with --protocol {spec.name}")
    if not timeout_s > 0:
        raise UserError(f"--timeout {timeout_s:g}: give a positive number of seconds")
    if online_only and spec.name != "semi2k":
        raise UserError(f"--online-only applies to semi2k (preprocessing from files), not {spec.name}")
    mpspdz = mpspdz or find_mpspdz()
    check_protocol_ready(mpspdz, spec, manifest.get("expected"))
    profile = network_profile(network)
    if json_path is not None:
        check_writable_file(Path(json_path), "--json")

    batch = int(manifest["batch"])
    x, y = _select_images(manifest, images, data)
    if x is not None:  # party 1's guard on all its images, before any party starts (compiler.calibrate)
        check_client_images(manifest, x)
    files = input_files(manifest)
    needed = [out_dir / f"{manifest['name']}.mpc", out_dir / files[0]]
    if x is None:  # no other images: the client input compiled in
        needed.append(out_dir / files[1])
    missing = [str(path.relative_to(out_dir)) for path in needed if not path.is_file()]
    if missing:
        raise UserError(f"{out_dir} lacks {', '.join(missing)}: it is not a complete compiled program; recompile "
                        f"the model into it with mpcvit-compile")
    _warn_if_too_big(manifest, spec, online_only, -(-len(x) // batch) if x is not None else 1, log)
    plain = _plain_logits(manifest, x, reference, out_dir)  # before the MPC run: a missing model fails fast
    with tempfile.TemporaryDirectory(prefix="mpcvit-run-") as tmp:
        root = make_overlay(mpspdz, Path(tmp) / "mpspdz", spec, out_dir / f"{manifest['name']}.mpc")
        compile_s, compile_output = _compile(root, manifest, spec)
        extra = ("-v",)
        preprocessing = "live"
        if online_only and tuples_needed(compile_output) <= MAX_TUPLES:
            generate_fake_preprocessing(mpspdz, root, spec, compile_output)
            extra += ("-F",)
            preprocessing = "files"
        elif online_only:
            log(f"note: {manifest['name']} needs {tuples_needed(compile_output):,} preprocessing tuples of one type; "
                f"Fake-Offline.x files for that many exceed {MAX_TUPLES:,} per type, so preprocessing runs live and "
                "the online phase is read from MP-SPDZ's -v split")
            preprocessing = "split"
        stats, revealed = [], []
        for index, chunk in enumerate(_batches(x, batch) if x is not None else [None]):
            inputs = {Path(path).name: out_dir / path for path in files.values()}
            if chunk is not None:
                client_file = Path(tmp) / "client-input"
                (client_input_writer or write_client_input)(manifest, chunk, client_file)
                inputs[Path(files[1]).name] = client_file
            install_inputs(root, inputs)
            party0, outputs = _run_once(root, spec, manifest, extra, timeout_s, Path(tmp) / "logs" / str(index))
            stats.append(party0)
            revealed.append(outputs)
    count = len(x) if x is not None else None
    mpc_outputs = [np.concatenate(parts)[:count] for parts in zip(*revealed)]
    result = _result(manifest, spec, preprocessing, stats, mpc_outputs, x, y, plain, profile, mpspdz,
                     compile_s)
    if json_path is not None:
        write_json_atomic(Path(json_path), result.to_json())
    return result


def _select_images(manifest: dict, images: int | None, data: str | Path | None):
    if images is None and data is None:
        return None, None
    metadata = manifest.get("onnx", {}).get("metadata", {})
    if images is None:
        x, y = datasets.load_npz(Path(data))
    else:
        x, y = datasets.eval_images(metadata, images, Path(data) if data else None)
    image_shape = manifest.get("input_shape")  # [B, C, H, W] of the compiled program
    datasets.check_image_shape(x, image_shape[1:] if image_shape else None, f"--data {data}" if data else "--images")
    return x, y


def _batches(x: np.ndarray, batch: int):
    """Chunks of exactly `batch` images; the last is padded by repeating its first image (extra rows are dropped)."""
    for start in range(0, len(x), batch):
        chunk = x[start:start + batch]
        if len(chunk) < batch:
            chunk = np.concatenate([chunk, np.repeat(chunk[:1], batch - len(chunk), axis=0)])
        yield chunk


def _warn_if_too_big(manifest: dict, spec: ProtocolSpec, online_only: bool, executions: int,
                     log: Callable[[str], None]) -> None:
    """Real semi2k preprocessing of the whole run (every batch is one execution of the program) can take hours."""
    expected = manifest.get("expected", {})
    total = (expected.get("bytes_all") or 0) * executions
    if spec.name == "semi2k" and not online_only and total > SEMI2K_WARN_BYTES:
        seconds = (expected.get("time_s") or 0) * executions
        log(f"warning: semi2k generates every multiplication triple by OT: the cost model expects "
            f"{total / 1e9:.1f} GB" + (f" and ~{seconds:.0f} s" if seconds else "") +
            f" for {executions} execution(s) of this program; consider --online-only or replicated-ring/dealer")


def _compile(root: Path, manifest: dict, spec: ProtocolSpec) -> tuple[float, str]:
    """Run MP-SPDZ's compile.py in the overlay; returns its duration and output."""
    flags = [str(f) for f in manifest["compile_flags"]]
    if "-E" not in flags:
        flags = ["-E", spec.compile_name, *flags]
    start = time.monotonic()
    try:
        done = subprocess.run([sys.executable, "compile.py", *flags, manifest["name"]], cwd=root, capture_output=True,
                              text=True, timeout=COMPILE_TIMEOUT_S)
    except subprocess.TimeoutExpired as exc:
        raise MPSPDZError(f"MP-SPDZ compile.py {manifest['name']} took over {COMPILE_TIMEOUT_S} s") from exc
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).rstrip().splitlines()[-12:])
        raise MPSPDZError(f"MP-SPDZ compile.py {' '.join(flags)} {manifest['name']} failed:\n{tail}")
    return time.monotonic() - start, done.stdout + done.stderr


def output_shapes(manifest: dict) -> list[tuple[int, ...]]:
    """Per graph output, the shape party 1's lines fill: output 0 as ``output_shape`` ([B, values per image], or
    [B, 1] for --reveal argmax), the others as ``outputs[j].shape`` (older manifests: output 0 only)."""
    first = tuple(int(v) for v in manifest["output_shape"][-2:])
    return [first] + [tuple(int(v) for v in out["shape"]) for out in manifest.get("outputs", [])[1:]]


def _run_once(root: Path, spec: ProtocolSpec, manifest: dict, extra: tuple[str, ...], timeout_s: float,
              log_dir: Path) -> tuple[PartyStats, list[np.ndarray]]:
    base = free_port_base(spec.processes + 1)
    commands = spec.launch_commands(base, manifest["name"], extra)
    names = spec.process_names()
    parties = run_parties(commands, root, timeout_s, log_dir, names)
    party0 = parse_party_output(parties[0].output, names[0])
    outputs = revealed_outputs(parties[1].output, output_shapes(manifest),
                               manifest.get("output_marker", OUTPUT_MARKER), names[1])
    if spec.prep_parties:
        party0 = with_preprocessing(party0, parse_party_output(parties[spec.parties].output, names[spec.parties]))
    return party0, outputs


def with_preprocessing(online: PartyStats, prep: PartyStats) -> PartyStats:
    """trio/astra: party 0's figures with its preprocessing process's (the same organisation runs both, joined by
    FIFOs): the online party's `-v` split shows only the online phase, the preprocessing party all of its traffic.
    Global bytes add both groups' `Global data sent`, rounds both parties' rounds; seconds are the online
    party's (the preprocessing runs alongside, ahead of the online phase, and the online party waits for it)."""
    return replace(online, bytes_sent=online.bytes_sent + prep.bytes_sent, rounds=online.rounds + prep.rounds,
                   global_bytes=(online.global_bytes or 0) + (prep.global_bytes or 0),
                   online=online.online, offline=Phase(prep.time_s, prep.bytes_sent, prep.rounds))


PREPROCESSING = {"live": "live (included in the figures)", "files": "files (Fake-Offline.x, -F; excluded)",
                 "split": "live; figures are the online phase of MP-SPDZ's -v split"}


def _result(manifest: dict, spec: ProtocolSpec, preprocessing: str, stats: list[PartyStats], outputs: list[np.ndarray],
            x: np.ndarray | None, y: np.ndarray | None, plain: np.ndarray | None, profile,
            mpspdz: MPSPDZ, compile_s: float) -> RunResult:
    if preprocessing == "split":  # party 0's online phase; MP-SPDZ prints no all-party online figure
        time_s, bytes_p0, rounds = (sum(s.online.seconds for s in stats), sum(s.online.bytes for s in stats),
                                    sum(s.online.rounds for s in stats))
        global_bytes = None
    else:  # with -F, MP-SPDZ's totals already exclude preprocessing ("benchmarks are excluding preprocessing")
        time_s, bytes_p0, rounds = (sum(s.time_s for s in stats), sum(s.bytes_sent for s in stats),
                                    sum(s.rounds for s in stats))
        global_bytes = sum(s.global_bytes or 0 for s in stats)
    logits = outputs[0]
    meta = manifest.get("outputs") or [{}]
    if "shape" in meta[0] and manifest.get("reveal") != "argmax":  # output 0 in its own shape, as the others
        outputs = [logits.reshape(-1, *meta[0]["shape"][1:]), *outputs[1:]]
    accuracy = compare_logits(logits, plain, y, argmax=manifest.get("reveal") == "argmax")
    model_time = profile.time_s(rounds, bytes_p0)
    details = {
        "model": manifest.get("model", manifest["name"]),
        "onnx_sha256": manifest.get("onnx", {}).get("sha256"),
        "compile_flags": manifest["compile_flags"],
        "security": manifest.get("security"),
        "processes": spec.process_names(),
        "f": manifest.get("f"), "k": manifest.get("k"),
        "approximations": manifest.get("approximations"),
        "batch": manifest["batch"],
        "online": _phase_sum(stats, "online"), "offline": _phase_sum(stats, "offline"),
        "timers": {str(t): {"seconds": sum(s.timers[t].seconds for s in stats),
                            "bytes": sum(s.timers[t].bytes for s in stats),
                            "rounds": sum(s.timers[t].rounds for s in stats)} for t in stats[0].timers},
        "expected": manifest.get("expected"),
        "accuracy": accuracy,
        "network_emulation": "model",
        "network_model": {**profile.to_dict(), "model_time_s": model_time, "measured_plus_model_s": time_s + model_time},
        "mpspdz_compile_s": compile_s,
        "machine": {"host": platform.node(), "cpu": platform.processor() or platform.machine(),
                    "cores": os.cpu_count(), "python": platform.python_version()},
        "mpspdz": {"home": str(mpspdz.home), **mpspdz_version(mpspdz)},
        "preprocessing": PREPROCESSING[preprocessing],
        "outputs": [{"name": entry.get("name"), "shape": list(array.shape), "values": array.tolist()}
                    for entry, array in zip(meta, outputs)],
    }
    return RunResult(spec.name, preprocessing != "live", time_s, bytes_p0, global_bytes, rounds,
                     accuracy.get("top1_agreement"), accuracy.get("max_logit_error"),
                     len(logits), len(stats), details, logits, outputs)


def _phase_sum(stats: list[PartyStats], phase: str) -> dict[str, float] | None:
    phases = [getattr(s, phase) for s in stats]
    if any(p is None for p in phases):
        return None
    return {"seconds": sum(p.seconds for p in phases), "bytes": sum(p.bytes for p in phases),
            "rounds": sum(p.rounds for p in phases)}


def _plain_logits(manifest: dict, x: np.ndarray | None, reference: Reference | None, out_dir: Path) -> np.ndarray | None:
    if x is None:
        expected = manifest.get("reference_output")  # the float model's logits on the compiled-in input, if recorded
        return None if expected is None else np.asarray(expected, dtype=np.float64).reshape(int(manifest["batch"]), -1)
    if reference is not None:
        return reference(x)
    onnx_path = Path(manifest.get("onnx", {}).get("path") or "")
    if not onnx_path.is_file():
        raise UserError(f"{out_dir}/manifest.json: ONNX model {onnx_path} not found for the plaintext comparison")
    return onnxruntime_logits(onnx_path, x)


def compare_logits(mpc: np.ndarray, plain: np.ndarray | None, labels: np.ndarray | None,
                   argmax: bool = False) -> dict[str, Any]:
    """Top-1 agreement with the plaintext model, the logit error distribution and accuracies vs labels.

    ``argmax``: the program revealed each image's class index ([B, 1], ``--reveal argmax``), not its logits, so
    only the classes are compared (no logit error exists)."""
    report: dict[str, Any] = {"images": int(len(mpc))}
    predicted = np.rint(mpc.reshape(len(mpc), -1)[:, 0]).astype(np.int64) if argmax else mpc.argmax(-1)
    if plain is not None:
        plain = np.asarray(plain, dtype=np.float64).reshape(len(mpc), -1)
        report["top1_agreement"] = float(np.mean(predicted == plain.argmax(-1)))
        if not argmax:
            error = np.abs(mpc - plain.reshape(mpc.shape))
            report.update(max_logit_error=float(error.max()), mean_logit_error=float(error.mean()),
                          logit_error_percentiles={str(q): float(np.percentile(error, q)) for q in (50, 90, 99)})
        if labels is not None:
            report["plaintext_accuracy"] = float(np.mean(plain.argmax(-1) == labels))
    if labels is not None:
        report["mpc_accuracy"] = float(np.mean(predicted == labels))
    return report


def check_writable_file(path: Path, flag: str) -> None:
    """Fail before a long run, not after it, when `path` cannot become a file (it is a folder, or under a file)."""
    if path.is_dir():
        raise UserError(f"{flag} {path} is a folder; give a file path such as {path / 'result.json'}")
    existing = next(parent for parent in path.absolute().parents if parent.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK):
        raise UserError(f"{flag} {path}: cannot create it under {existing}; give a path in a writable folder")


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    """Write via a temp file in the same directory and rename, so a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as sink:
            json.dump(data, sink, indent=2, default=_json_default)
            sink.write("\n")
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
