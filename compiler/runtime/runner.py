"""`run(OUT, protocol)`: compile a backend output with MP-SPDZ's compiler, run the parties, measure, check logits.

The program runs in a private overlay directory (see `overlay.py`), compiled once. It loops over batches of B
images (the compiled batch) read from party 1's input, so one MP-SPDZ execution (one process start, TLS set-up
and weight input) serves many images; the run is split into executions of `images_per_execution` images, each
recorded in the results file as it completes. The revealed logits are compared with the plain float model
(onnxruntime) on the images party 1 actually input, the compiled-in ones included.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import shutil
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
from compiler.backend.inputs import input_files, read_client_input
from compiler.calibrate import check_client_images
from compiler.errors import MPSPDZError, UserError
from compiler.runtime import datasets
from compiler.runtime.mpspdz import (MPSPDZ, ProtocolSpec, check_protocol_ready, find_mpspdz, mpspdz_version,
                                     protocol_spec)
from compiler.runtime.network import network_profile
from compiler.runtime.overlay import install_inputs, make_overlay
from compiler.runtime.parser import OUTPUT_MARKER, PartyStats, Phase, parse_party_output, revealed_outputs
from compiler.runtime.prep import MAX_TUPLES, generate_fake_preprocessing, tuples_needed
from compiler.runtime.processes import PartyFailure, free_port_base, run_parties

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


def read_json_object(path: Path, what: str, remedy: str) -> dict[str, Any]:
    """The JSON object in ``path``; UserError naming ``what`` and the ``remedy`` when it is not one."""
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{what}: not valid JSON ({exc}); {remedy}") from None
    if not isinstance(data, dict):
        raise UserError(f"{what}: not a JSON object; {remedy}")
    return data


def load_manifest(out_dir: Path) -> dict[str, Any]:
    path = out_dir / "manifest.json"
    if not path.is_file():
        if out_dir.is_file():  # e.g. the .onnx model itself
            raise UserError(f"{out_dir} is a file, not a compiled program's folder: compile it first "
                            f"(mpcvit-compile {out_dir} -o DIR), then run DIR")
        raise UserError(f"{out_dir}: no manifest.json; compile a model into it first (mpcvit-compile MODEL.onnx -o {out_dir})")
    manifest = read_json_object(path, str(path), f"recompile into {out_dir} with mpcvit-compile")
    required = ["name", "protocol", "compile_flags", "batch", "output_shape"]
    if "input_files" in manifest:  # written by mpcvit-compile (hand-written test programs name fewer keys)
        required += ["input_shape", "f", "k"]
    missing = [k for k in required if k not in manifest]
    if missing:
        raise UserError(f"{path}: lacks {', '.join(missing)}; recompile with this version of mpcvit-compile")
    return manifest


def load_program(out_dir: Path, protocol: str | None) -> tuple[dict[str, Any], ProtocolSpec]:
    """The manifest of the compiled program in ``out_dir`` and its protocol; UserError when ``protocol`` is not the
    one it was compiled for."""
    manifest = load_manifest(out_dir)
    spec = protocol_spec(protocol or manifest["protocol"])
    if protocol_spec(manifest["protocol"]).name != spec.name:
        raise UserError(f"{out_dir} was compiled for {manifest['protocol']}: recompile it with --protocol {spec.name}")
    return manifest, spec


def run(out_dir: str | Path, protocol: str | None = None, *, images: int | None = None, data: str | Path | None = None,
        network: str = "lan", online_only: bool = False, timeout_s: float = 600.0, json_path: str | Path | None = None,
        mpspdz: MPSPDZ | None = None, client_input_writer: ClientInputWriter | None = None,
        reference: Reference | None = None, log: Callable[[str], None] | None = None,
        per_execution: int | None = None, retries: int = 1, resume: bool = False, weights: str = "input") -> RunResult:
    """Run the program in `out_dir` under MP-SPDZ; see module doc.

    ``weights``: ``"input"`` (party 0 inputs the weights in every execution) or ``"shared"`` (a model served over
    many executions: each party reads its shares of the weights, made once by :func:`_shared_weights` and kept in
    ``out_dir/weight-shares``; the executions carry no weight traffic, and the sharing's own figures are reported
    in ``details["weights"]`` when this run made them).

    ``per_execution``: images per MP-SPDZ execution (rounded up to whole batches; default
    :func:`images_per_execution`). ``json_path`` is rewritten after every execution with ``"complete": false`` and
    the executions done so far, and with the whole result and ``"complete": true`` at the end; ``resume`` continues
    the run recorded there. An execution that fails transiently (a lost peer, a killed party) is repeated up to
    ``retries`` times. Raises UserError (bad input), MPSPDZError (a party failed; what is done stays in json_path)."""
    out_dir = Path(out_dir)
    log = log or (lambda message: print(message, file=sys.stderr))
    manifest, spec = load_program(out_dir, protocol)
    if not timeout_s > 0:
        raise UserError(f"--timeout {timeout_s:g}: give a positive number of seconds")
    if online_only and spec.name != "semi2k":
        raise UserError(f"--online-only applies to semi2k (preprocessing from files), not {spec.name}")
    if per_execution is not None and per_execution < 1:
        raise UserError(f"--per-execution {per_execution}: give a positive number of images")
    if retries < 0:
        raise UserError(f"--retries {retries}: give 0 or more")
    if resume and json_path is None:
        raise UserError("--resume continues the run recorded in its --json file: give --json RESULTS.json")
    if weights not in WEIGHT_MODES:
        raise UserError(f"--weights {weights!r}: choose {' or '.join(WEIGHT_MODES)}")
    mpspdz = mpspdz or find_mpspdz()
    check_protocol_ready(mpspdz, spec, manifest.get("expected"))
    profile = network_profile(network)
    if json_path is not None:
        json_path = Path(json_path)
        check_writable_file(json_path, "--json")

    batch = int(manifest["batch"])
    x, y = _select_images(manifest, images, data)
    if x is not None:  # party 1's guard on all its images, before any party starts (compiler.calibrate)
        check_client_images(manifest, x, f"--data {data}" if data is not None else "the images")
    files = input_files(manifest)
    client_file = out_dir / files[1]
    needed = [out_dir / f"{manifest['name']}.mpc", out_dir / files[0]]
    if x is None:  # no other images: the client input compiled in
        needed.append(client_file)
    missing = [str(path.relative_to(out_dir)) for path in needed if not path.is_file()]
    if missing:
        raise UserError(f"{out_dir} lacks {', '.join(missing)}: it is not a complete compiled program; recompile "
                        f"the model into it with mpcvit-compile")
    compiled_in = x is None
    if compiled_in and "input_shape" in manifest:  # compare with the float model on the images the file holds
        x = read_client_input(manifest, client_file)
    count = len(x) if x is not None else batch
    looped = bool(manifest.get("batch_loop"))
    if not looped:
        per_batch = batch  # an older program: one batch per execution
    elif compiled_in:
        per_batch = -(-count // batch) * batch  # the compiled-in file is one execution's input
    elif per_execution is None:
        per_batch = images_per_execution(manifest, count)
    else:
        per_batch = -(-per_execution // batch) * batch
    plan = [(start, min(per_batch, count - start)) for start in range(0, count, per_batch)]
    _warn_if_too_big(manifest, spec, online_only, -(-count // batch) if looped else len(plan), log)
    plain = _plain_logits(manifest, x, reference, out_dir, compiled_in, log)  # before the MPC run: fails fast
    key = {**_run_key(out_dir, manifest, spec, x, per_batch, online_only, compiled_in), "weights": weights}
    journal = _load_journal(json_path, key) if resume else []
    if resume:
        log(f"resuming: {len(journal)} of {len(plan)} executions done in {json_path}")
    with tempfile.TemporaryDirectory(prefix="mpcvit-run-") as tmp:
        root = make_overlay(mpspdz, Path(tmp) / "mpspdz", spec, out_dir / f"{manifest['name']}.mpc")
        # each execution's batch count fixed at compile time (at most two sizes: the full executions and the last):
        # MP-SPDZ then knows the preprocessing an execution needs, and sizes the dealer's and semi2k's batches of
        # it (a run-time count made them generate whole default batches, 2-3x the bytes) and --online-only's files
        sizes = sorted({-(-size // batch) for _, size in plan}, reverse=True) if looped else [None]
        mode = ("shared-weights",) if weights == "shared" else ()
        sharing = _shared_weights(root, out_dir, manifest, spec, timeout_s, Path(tmp) / "logs" / "share", log) \
            if mode else None
        compiled = {n: _compile(root, manifest, spec, n, mode) for n in sizes}
        compile_s, compile_output = sum(c[0] for c in compiled.values()), compiled[sizes[0]][1]
        extra: tuple[str, ...] = ("-v",)
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
        for index, (first, size) in enumerate(plan):
            if index < len(journal):
                continue
            program = "-".join([manifest["name"], *mode] + ([f"batches={-(-size // batch)}"] if looped else []))
            inputs = {Path(files[0]).name: out_dir / files[0], Path(files[1]).name: client_file}
            rows = count
            if not compiled_in:  # party 1's images of this execution, whole batches
                chunk = _padded(x[first:first + size], -(-size // batch) * batch)
                staged, rows = Path(tmp) / "client-input", len(chunk)
                (client_input_writer or write_client_input)(manifest, chunk, staged)
                inputs[Path(files[1]).name] = staged
            install_inputs(root, inputs)
            try:
                entry = _execute(root, spec, manifest, program, extra, timeout_s, Path(tmp) / "logs" / str(index),
                                 rows, retries, log)
            except MPSPDZError as exc:
                if json_path is None or not journal:
                    raise
                raise MPSPDZError(f"{exc}\n{len(journal)} of {len(plan)} executions are kept in {json_path}: finish "
                                  f"the run with the same command and --resume") from None
            journal.append({"index": index, "first": first, "images": size, **entry,
                            "outputs": [part[:size].tolist() for part in entry["outputs"]]})
            if json_path is not None:
                write_json_atomic(json_path, {"complete": False, "run": key, "executions_planned": len(plan),
                                              "executions": journal})
    stats = [_stats_from_dict(entry["party0"]) for entry in journal]
    mpc_outputs = [np.concatenate([np.asarray(entry["outputs"][j]) for entry in journal])
                   for j in range(len(journal[0]["outputs"]))]
    result = _result(manifest, spec, preprocessing, stats, mpc_outputs, x, y, plain, profile, mpspdz, compile_s)
    result.batches = sum(-(-entry["images"] // batch) for entry in journal)  # batches of B, several per execution
    wall = sum(entry["wall_s"] for entry in journal)
    result.details["throughput"] = {
        "images_per_execution": per_batch, "executions": len(journal), "wall_s": wall,
        "images_per_s": result.images / wall if wall > 0 else None,
        "bytes_party0_per_image": result.bytes_party0 / result.images, "rounds_per_image": result.rounds / result.images,
        "retried_executions": sum(entry["attempts"] > 1 for entry in journal)}
    result.details["compiled_in_input"] = compiled_in
    result.details["weights"] = {"mode": weights, "sharing": sharing}
    if weights == "shared" and "shared_weights" in (manifest.get("expected") or {}):  # without the weight input
        result.details["expected"] = {**manifest["expected"], **manifest["expected"]["shared_weights"]}
    if json_path is not None:
        write_json_atomic(json_path, {**result.to_json(), "complete": True, "run": key,
                                      "executions": [{k: v for k, v in entry.items() if k != "outputs"}
                                                     for entry in journal]})
    return result


# Per-execution cost that a loop over batches pays once: process start, TLS set-up between 3 parties and reading
# the program. benchmarks/throughput.py prints it (wall minus MP-SPDZ's `Time =`): 0.2-0.3 s on this 2-core machine
# when lightly loaded, about 1 s under load (the figure used: a longer execution costs little); and the share of an
# execution's time it may take when images are many.
STARTUP_S = 1.0
STARTUP_SHARE = 0.05
MAX_EXECUTION_S = 120.0  # a lost (retried or resumed) execution costs at most about this much


def images_per_execution(manifest: dict, images: int) -> int:
    """Images per MP-SPDZ execution (a multiple of the batch B): enough batches that the start-up (``STARTUP_S``)
    is at most ``STARTUP_SHARE`` of an execution, by the cost model's time per batch (``expected.time_s``, LAN),
    without passing ``MAX_EXECUTION_S``; then spread evenly over the executions ``images`` needs."""
    batch = int(manifest["batch"])
    per_batch_s = float((manifest.get("expected") or {}).get("time_s") or 0) or STARTUP_S
    wanted = max(1, min(math.ceil(STARTUP_S / STARTUP_SHARE / per_batch_s), int(MAX_EXECUTION_S // per_batch_s)))
    batches = -(-images // batch)
    executions = -(-batches // wanted)
    return -(-batches // executions) * batch


def _padded(images: np.ndarray, size: int) -> np.ndarray:
    """``images`` padded to ``size`` by repeating the first (the extra rows are dropped from the outputs)."""
    if len(images) >= size:
        return images
    return np.concatenate([images, np.repeat(images[:1], size - len(images), axis=0)])


def _run_key(out_dir: Path, manifest: dict, spec: ProtocolSpec, x: np.ndarray | None, per_batch: int,
             online_only: bool, compiled_in: bool) -> dict[str, Any]:
    """What a resumed run must share with the interrupted one: the program, weights, images and their split."""
    files = [out_dir / f"{manifest['name']}.mpc"] + ([out_dir / input_files(manifest)[1]] if compiled_in else [])
    return {"protocol": spec.name, "online_only": online_only, "images_per_execution": per_batch,
            "program_sha256": hashlib.sha256(b"".join(path.read_bytes() for path in files)).hexdigest(),
            "weight_sha256": manifest.get("weight_sha256"),
            "images_sha256": None if x is None else hashlib.sha256(np.ascontiguousarray(x).tobytes()).hexdigest(),
            "images": None if x is None else len(x)}


def _load_journal(json_path: Path, key: dict[str, Any]) -> list[dict[str, Any]]:
    """The executions an interrupted run recorded in ``json_path``; UserError when it is not this run's."""
    if not json_path.is_file():
        raise UserError(f"--resume: {json_path} does not exist; run without --resume to start the run")
    saved = read_json_object(json_path, f"--resume: {json_path}", "run without --resume to start over")
    if not isinstance(saved.get("run"), dict):
        raise UserError(f"--resume: {json_path} is not an mpcvit run's results file; run without --resume")
    if saved.get("complete"):
        raise UserError(f"--resume: the run in {json_path} is already complete; run without --resume to repeat it")
    differs = [name for name in key if saved["run"].get(name) != key[name]]
    if differs:
        raise UserError(f"--resume: {json_path} records another run (its {', '.join(differs)} differ); give the "
                        f"same program, images and --per-execution, or run without --resume to start over")
    return list(saved.get("executions", []))


def _execute(root: Path, spec: ProtocolSpec, manifest: dict, program: str, extra: tuple[str, ...], timeout_s: float,
             log_dir: Path, rows: int, retries: int, log: Callable[[str], None]) -> dict[str, Any]:
    """One execution, repeated on a transient failure (``PartyFailure.transient``) up to ``retries`` times."""
    for attempt in range(1, retries + 2):
        start = time.monotonic()
        try:
            party0, outputs = _run_once(root, spec, manifest, program, extra, timeout_s, log_dir / str(attempt), rows)
        except PartyFailure as exc:
            if not exc.transient or attempt > retries:
                raise
            lines = str(exc).splitlines()
            log(f"note: {lines[0].removesuffix('; its last lines:')}: {lines[-1]}; repeating the execution")
            continue
        return {"party0": asdict(party0), "outputs": outputs, "wall_s": time.monotonic() - start,
                "attempts": attempt}
    raise AssertionError("unreachable")


def _stats_from_dict(data: dict[str, Any]) -> PartyStats:
    phase = (lambda value: None if value is None else Phase(**value))
    return PartyStats(**{**data, "timers": {int(t): Phase(**v) for t, v in data["timers"].items()},
                         "online": phase(data["online"]), "offline": phase(data["offline"])})


def _select_images(manifest: dict, images: int | None, data: str | Path | None):
    if images is None and data is None:
        return None, None
    metadata = manifest.get("onnx", {}).get("metadata", {})
    if images is None:
        x, y = datasets.load_npz(Path(data))
    else:
        x, y = datasets.eval_images(metadata, images, Path(data) if data else None)
    image_shape = manifest.get("input_shape")  # [B, C, H, W] of the compiled program
    if image_shape and y is None and list(x.shape) == list(image_shape[1:]):
        x = x[None]  # one image without its batch axis, as --check takes it
    datasets.check_image_shape(x, image_shape[1:] if image_shape else None, f"--data {data}" if data else "--images")
    classes = manifest["output_shape"][-1] if manifest.get("reveal") != "argmax" else None
    if y is not None and classes and len(manifest["output_shape"]) == 2 and y.max() >= classes:
        raise UserError(f"--data {data}: label {y.max()} is not a class of this model's {classes} outputs; "
                        f"give labels 0..{classes - 1}")
    return x, y


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


def _compile(root: Path, manifest: dict, spec: ProtocolSpec, batches: int | None = None,
             mode: tuple[str, ...] = ()) -> tuple[float, str]:
    """Run MP-SPDZ's compile.py in the overlay (``batches``: a compile-time loop count; ``mode``: the weights'
    ``share-weights`` / ``shared-weights``, see program.mpc.j2); returns its duration and output."""
    flags = [str(f) for f in manifest["compile_flags"]]
    if "-E" not in flags:
        flags = ["-E", spec.compile_name, *flags]
    args = [*mode] + ([f"batches={batches}"] if batches else [])
    start = time.monotonic()
    try:
        done = subprocess.run([sys.executable, "compile.py", *flags, manifest["name"], *args], cwd=root,
                              capture_output=True, text=True, timeout=COMPILE_TIMEOUT_S)
    except subprocess.TimeoutExpired as exc:
        raise MPSPDZError(f"MP-SPDZ compile.py {manifest['name']} took over {COMPILE_TIMEOUT_S} s") from exc
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).rstrip().splitlines()[-12:])
        raise MPSPDZError(f"MP-SPDZ compile.py {' '.join(flags)} {manifest['name']} failed:\n{tail}")
    return time.monotonic() - start, done.stdout + done.stderr


WEIGHT_MODES = ("input", "shared")
SHARES_DIR = "weight-shares"  # in the compiled program's folder: Transactions-P<i>.data per party, and a stamp


def _shared_weights(root: Path, out_dir: Path, manifest: dict, spec: ProtocolSpec, timeout_s: float,
                    log_dir: Path, log: Callable[[str], None]) -> dict[str, float] | None:
    """Point the overlay's ``Persistence/`` (where MP-SPDZ's ``sint.read_from_file`` looks, relative to the
    working directory: ``Processor/Binary_File_IO.hpp``) at the program's stored weight shares, making them first
    when they are missing or of other weights or another protocol: one execution of the program compiled with
    ``share-weights``, in which party 0 inputs the weights and every party stores its shares. Returns that
    execution's party-0 figures (bytes, rounds, seconds), None when the stored shares were used.
    Each party's file holds only its own shares (on one host they sit side by side, as its input files do)."""
    store, made = out_dir / SHARES_DIR, None
    stamp = {"protocol": spec.name, "weight_sha256": manifest.get("weight_sha256"), "f": manifest.get("f"),
             "k": manifest.get("k")}
    stamp_file = store / "stamp.json"
    if _stored_shares(store) != stamp:
        _compile(root, manifest, spec, mode=("share-weights",))
        weights_file = input_files(manifest)[0]
        install_inputs(root, {Path(weights_file).name: out_dir / weights_file})
        commands = spec.launch_commands(free_port_base(spec.processes + 1), f"{manifest['name']}-share-weights",
                                        ("-v",))
        names = spec.process_names()
        party0 = parse_party_output(run_parties(commands, root, timeout_s, log_dir, names)[0].output, names[0])
        if store.is_dir() and not store.is_symlink():
            shutil.rmtree(store)
        elif store.exists() or store.is_symlink():
            store.unlink()
        shutil.copytree(root / "Persistence", store)
        # each party's file and its hash: a damaged or swapped file is found before it gives wrong logits
        files = {path.name: _sha256_file(path) for path in sorted(store.glob("Transactions-P*.data"))}
        stamp_file.write_text(json.dumps({**stamp, "files": files}) + "\n")
        made = {"bytes_party0": party0.bytes_sent, "rounds": party0.rounds, "time_s": party0.time_s}
        log(f"weights shared once ({party0.bytes_sent / 1e6:.1f} MB from party 0, {party0.rounds} rounds); each "
            f"party's shares are kept in {store}")
    shutil.rmtree(root / "Persistence", ignore_errors=True)
    (root / "Persistence").symlink_to(store.resolve(), target_is_directory=True)
    return made


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as source:
        for chunk in iter(lambda: source.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _stored_shares(store: Path) -> dict[str, Any] | None:
    """What the shares in ``store`` were made for (its stamp less the file hashes), or None when the stamp is
    missing or unreadable, or any party's file is missing or not the file that was stored."""
    try:
        stamp = json.loads((store / "stamp.json").read_text())
        files = stamp.pop("files")
        if not files or any(_sha256_file(store / name) != digest for name, digest in files.items()):
            return None
    except (OSError, ValueError, AttributeError, KeyError, TypeError):
        return None
    return stamp


def output_shapes(manifest: dict) -> list[tuple[int, ...]]:
    """Per graph output, the shape party 1's lines fill: output 0 as ``output_shape`` ([B, values per image], or
    [B, 1] for --reveal argmax), the others as ``outputs[j].shape`` (older manifests: output 0 only)."""
    first = tuple(int(v) for v in manifest["output_shape"][-2:])
    return [first] + [tuple(int(v) for v in out["shape"]) for out in manifest.get("outputs", [])[1:]]


def _run_once(root: Path, spec: ProtocolSpec, manifest: dict, program: str, extra: tuple[str, ...], timeout_s: float,
              log_dir: Path, rows: int) -> tuple[PartyStats, list[np.ndarray]]:
    """Party 0's figures and party 1's outputs, each ``[rows, ...]`` (the images party 1 sent)."""
    base = free_port_base(spec.processes + 1)
    commands = spec.launch_commands(base, program, extra)
    names = spec.process_names()
    parties = run_parties(commands, root, timeout_s, log_dir, names)
    party0 = parse_party_output(parties[0].output, names[0])
    shapes = [(rows, *shape[1:]) for shape in output_shapes(manifest)]
    outputs = revealed_outputs(parties[1].output, shapes, manifest.get("output_marker", OUTPUT_MARKER), names[1])
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
        "predicted_class": predicted_classes(logits, manifest.get("reveal") == "argmax"),
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


def _plain_logits(manifest: dict, x: np.ndarray | None, reference: Reference | None, out_dir: Path,
                  compiled_in: bool, log: Callable[[str], None]) -> np.ndarray | None:
    """The float model's outputs on ``x``; UserError when the ONNX model is missing for images the user chose
    (a run on the compiled-in input then only says so: a program compiled from an IR graph has no model)."""
    if x is None:  # a program without input_shape in its manifest: its images are unknown
        return None
    if reference is not None:
        return reference(x)
    onnx_path = Path(manifest.get("onnx", {}).get("path") or "")
    if not onnx_path.is_file() and compiled_in:
        log(f"note: {out_dir} records no ONNX model to compare with (onnx.path {str(onnx_path)!r}); errors are null")
        return None
    if not onnx_path.is_file():
        raise UserError(f"{out_dir}/manifest.json: ONNX model {onnx_path} not found for the plaintext comparison")
    return onnxruntime_logits(onnx_path, x)


def predicted_classes(logits: np.ndarray, argmax: bool) -> list[int]:
    """Each image's class as party 1 learnt it: the revealed index (``--reveal argmax``, [B, 1]) or the position
    of its largest revealed logit ([B, classes])."""
    classes = logits[:, 0] if argmax else np.asarray(logits).reshape(len(logits), -1).argmax(axis=1)
    return [int(c) for c in classes]


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
    try:  # a real file: permissions alone miss read-only and pseudo file systems (/proc) and root's rights
        with tempfile.NamedTemporaryFile(dir=existing, prefix=".mpcvit-probe-"):
            pass
    except OSError:
        raise UserError(f"{flag} {path}: cannot create it under {existing}; give a path in a writable folder") from None


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
