"""One party per host: `mpcvit run OUT --party N --hosts hosts.txt` and `mpcvit certs`.

Roles: party 0 is the model owner (inputs the weights, ``Player-Data/Input-Binary-P0-0``), party 1 the client (inputs the
images, and alone receives the outputs), any further party (replicated-ring's third party, the dealer) inputs
nothing. Each host needs the compiled program folder (``manifest.json`` and the ``.mpc``) and only its own input.

``hosts.txt`` is MP-SPDZ's host file (``-ip``, Networking/Player.cpp ``Names::init`` at 3a0a7b1d): one line per
party in party order, ``host`` or ``host:port`` (default port 5000 + party number); empty lines and lines starting
with ``#`` are skipped. Every party compiles the same ``.mpc`` and prints the sha256 of its bytecode; MP-SPDZ
itself compares the parties' program hashes when they connect (``Machine::check_program``) and stops on a
mismatch, which is reported here as one line with that hash.

TLS follows MP-SPDZ's ``Scripts/setup-ssl.sh``: party i holds ``P<i>.key`` and every party's ``P<j>.pem`` (CN
``P<j>``) in its ``Player-Data`` with ``c_rehash`` links; :func:`make_certificates` writes one such folder per party.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from compiler.api import onnxruntime_logits
from compiler.backend import write_client_input
from compiler.backend.inputs import input_files, read_client_input
from compiler.calibrate import check_client_images
from compiler.errors import MPSPDZError, UserError
from compiler.runtime.mpspdz import MPSPDZ, check_protocol_ready, find_mpspdz, mpspdz_version
from compiler.runtime.overlay import install_inputs, make_overlay
from compiler.runtime.parser import OUTPUT_MARKER, parse_party_output, revealed_outputs
from compiler.runtime.processes import PartyFailure, run_parties
from compiler.runtime.runner import (_compile, _padded, _select_images, check_writable_file, compare_logits,
                                     load_program, output_shapes, predicted_classes, write_json_atomic)

DEFAULT_PORT_BASE = 5000  # MP-SPDZ's default port base (Networking/Player.h)


def read_hosts(path: Path, parties: int) -> list[tuple[str, int]]:
    """(host, port) of every party from an MP-SPDZ host file; UserError (one line) when it does not fit."""
    try:
        lines = Path(path).read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"--hosts {path}: cannot read it ({exc}); give MP-SPDZ's host file, one host[:port] line "
                        f"per party") from None
    hosts = []
    for number, line in enumerate(lines, 1):
        if not line or line.startswith("#"):
            continue
        host, _, port = line.strip().partition(":")
        if not host or (port and not port.isdigit()) or (port and not 0 < int(port) < 65536):
            raise UserError(f"--hosts {path}: line {number} {line!r} is not host or host:port")
        hosts.append((host, int(port) if port else DEFAULT_PORT_BASE + len(hosts)))
    if len(hosts) < parties:
        raise UserError(f"--hosts {path}: {len(hosts)} host line(s), the protocol needs {parties} (one per party, "
                        f"in party order)")
    return hosts[:parties]


def bytecode_sha256(root: Path, program: str) -> str:
    """sha256 over the compiled program's schedule and bytecode files (what MP-SPDZ loads), in name order."""
    digest = hashlib.sha256()
    files = [root / "Programs" / "Schedules" / f"{program}.sch",
             *sorted((root / "Programs" / "Bytecode").glob(f"{program}-*.bc"))]
    for path in files:
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def explain_failure(exc: PartyFailure, party: int, hosts: list[tuple[str, int]], program_hash: str,
                    certs: Path) -> MPSPDZError:
    """One line for what a party on its own host most often meets: a missing peer, a port in use, a certificate
    that does not match, a different program; else the error as it is."""
    text = str(exc)
    unreachable = re.search(r"cannot connect from \S+ to (\S+):(\d+)", text)
    if unreachable:
        host, port = unreachable.groups()
        peer = next((i for i, h in enumerate(hosts) if h == (host, int(port))), "?")
        return MPSPDZError(f"party {party}: no answer from party {peer} at {host}:{port}; start `mpcvit run --party "
                           f"{peer}` on that host with the same --hosts file, and open that port")
    if "set_up_socket:bind" in text or "Binding to socket on" in text:
        host, port = hosts[party]
        return MPSPDZError(f"party {party}: port {port} on this host is in use; stop what holds it or give party "
                           f"{party} another port in the --hosts file (line {host}:PORT) on every host")
    handshake = re.search(r"(Client|Server)-side handshake with (P\d+) failed", text)
    if handshake:
        return MPSPDZError(f"party {party}: TLS handshake with {handshake.group(2)} failed: the certificates differ; "
                           f"make them once with `mpcvit certs` and give each host its own folder ({certs} here)")
    if "program differs between parties" in text:
        return MPSPDZError(f"party {party}: the parties run different programs (bytecode sha256 here "
                           f"{program_hash[:16]}…); give every host the same compiled folder")
    return exc


def check_port_free(port: int, party: int, hosts_path: str | Path) -> None:
    """UserError now, when this party's port is taken (MP-SPDZ would retry binding it for 10 minutes). Probed as
    MP-SPDZ's listener binds it (SO_REUSEADDR, Networking/ServerSocket.cpp): sockets of a finished run lingering
    in TIME_WAIT do not block a rerun."""
    probe = socket.socket()
    probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        probe.bind(("", port))
    except OSError as exc:
        raise UserError(f"party {party}: port {port} on this host is in use ({exc.strerror}); stop what holds it or "
                        f"give party {party} another port in {hosts_path} on every host") from None
    finally:
        probe.close()


def compile_cached(root: Path, manifest: dict[str, Any], spec: Any, mpspdz: MPSPDZ, batches: int | None = None) -> float:
    """Compile the program in the overlay ``root``, or copy its bytecode from the cache of an earlier compile of
    the same source, flags and MP-SPDZ (``$XDG_CACHE_HOME/mpcvit/bytecode``, else ``~/.cache/...``): parties start
    MP-SPDZ within its 60 s connection timeout of each other even when compiling a large program takes longer.
    ``batches``: the loop count compiled in (``compile.py ... batches=N``). Returns the seconds spent compiling
    (0 from the cache)."""
    source = (root / "Programs" / "Source" / f"{manifest['name']}.mpc").read_bytes()
    key = hashlib.sha256(b"\0".join([source, json.dumps(manifest["compile_flags"]).encode(), spec.name.encode(),
                                      str(mpspdz.home.resolve()).encode(), str(batches).encode(),
                                      str(mpspdz_version(mpspdz)["version"]).encode()])).hexdigest()[:32]
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "mpcvit" / "bytecode" / key
    if not cache.is_dir():
        compile_s, _ = _compile(root, manifest, spec, batches)
        staging = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=_made(cache.parent)))
        for sub in ("Bytecode", "Schedules"):
            shutil.copytree(root / "Programs" / sub, staging / sub)
        try:
            os.rename(staging, cache)
        except OSError:  # another party cached it first
            shutil.rmtree(staging, ignore_errors=True)
        return compile_s
    for sub in ("Bytecode", "Schedules"):
        shutil.copytree(cache / sub, root / "Programs" / sub, dirs_exist_ok=True)
    return 0.0


def _made(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def certificate_files(certs: Path, party: int, parties: int) -> list[Path]:
    """The files party ``party`` needs from ``certs``; UserError naming what is missing."""
    needed = [certs / f"P{party}.key"] + [certs / f"P{i}.pem" for i in range(parties)]
    missing = [path.name for path in needed if not path.is_file()]
    if missing:
        raise UserError(f"--certs {certs}: lacks {', '.join(missing)}; make the parties' certificates with "
                        f"`mpcvit certs DIR --parties {parties}` and give party {party} its folder DIR/party{party}")
    return needed


def make_certificates(out: Path, parties: int, days: int = 365) -> list[Path]:
    """Write ``out/party<i>/`` for every party: its key ``P<i>.key``, all parties' certificates ``P<j>.pem``
    (self-signed, CN ``P<j>``, as Scripts/setup-ssl.sh makes them) and their ``c_rehash`` links. Returns the
    folders; UserError when openssl is missing or fails."""
    if parties < 2:
        raise UserError(f"--parties {parties}: give the protocol's number of parties (2 or more)")
    if days < 1:
        raise UserError(f"--days {days}: certificates must stay valid for at least 1 day")
    if shutil.which("openssl") is None:
        raise UserError("mpcvit certs needs the openssl command line tool; install openssl")
    keys = out / "keys"
    try:
        keys.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"mpcvit certs: cannot make the folder {out} ({exc.strerror}); give a new or existing "
                        f"writable folder") from None
    for i in range(parties):
        done = subprocess.run(["openssl", "req", "-newkey", "rsa:2048", "-nodes", "-x509", "-days", str(days),
                               "-out", str(keys / f"P{i}.pem"), "-keyout", str(keys / f"P{i}.key"), "-subj",
                               f"/CN=P{i}"], capture_output=True, text=True)
        if done.returncode != 0:
            raise UserError(f"openssl could not make P{i}'s certificate: {done.stderr.strip().splitlines()[-1:]}")
    folders = []
    for i in range(parties):
        folder = out / f"party{i}"
        folder.mkdir(exist_ok=True)
        for path in [keys / f"P{i}.key"] + [keys / f"P{j}.pem" for j in range(parties)]:
            shutil.copy(path, folder / path.name)
        rehash(folder)
        folders.append(folder)
    shutil.rmtree(keys)  # every key now lives only in its party's folder
    return folders


def rehash(folder: Path) -> None:
    """The ``<hash>.0`` links OpenSSL looks certificates up by (``c_rehash``, as MP-SPDZ asks)."""
    done = subprocess.run(["openssl", "rehash", str(folder)], capture_output=True, text=True)
    if done.returncode != 0:
        raise UserError(f"openssl rehash {folder} failed: {done.stderr.strip()}")


def run_party(out_dir: str | Path, party: int, hosts_path: str | Path, protocol: str | None = None, *,
              images: int | None = None, data: str | Path | None = None, certs: str | Path | None = None,
              batches: int | None = None,
              timeout_s: float = 600.0, json_path: str | Path | None = None, mpspdz: MPSPDZ | None = None,
              log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run party ``party`` of the program in ``out_dir`` on this host, its peers at ``hosts_path``; one execution
    for all the client's images. ``batches``: the number of batches party 1 sends, compiled in on every host
    (then the dealer and semi2k generate only the preprocessing it needs; else the count is read at run time and
    they generate whole default batches). Returns (and writes to ``json_path``) this party's figures; party 1's also hold
    the outputs and their comparison with onnxruntime when the ONNX model is on its host (else ``None``).
    Raises UserError for bad input, MPSPDZError with one line for a missing peer, a port in use, a certificate
    or program mismatch."""
    out_dir = Path(out_dir)
    log = log or (lambda message: print(message, file=sys.stderr))
    manifest, spec = load_program(out_dir, protocol)
    if not 0 <= party < spec.parties:
        raise UserError(f"--party {party}: {spec.name} has parties 0 to {spec.parties - 1}")
    if spec.prep_parties:
        raise UserError(f"--party/--hosts: {spec.name} also needs its {spec.prep_parties} preprocessing processes, "
                        f"which a separate-host run does not start; run {spec.name} on one host (without --party)")
    if not manifest.get("batch_loop"):
        raise UserError(f"{out_dir}: compiled by an older mpcvit-compile; recompile it to run parties on separate hosts")
    if party != 1 and (images is not None or data is not None):
        raise UserError("--images/--data are the client's: give them to party 1 only")
    if not timeout_s > 0:
        raise UserError(f"--timeout {timeout_s:g}: give a positive number of seconds")
    hosts = read_hosts(Path(hosts_path), spec.parties)
    mpspdz = mpspdz or find_mpspdz()
    if not mpspdz.binary(spec.binary).is_file():
        check_protocol_ready(mpspdz, spec)  # names the missing binary
    certs = Path(certs) if certs is not None else mpspdz.home / "Player-Data"
    cert_files = certificate_files(certs, party, spec.parties) if spec.needs_ssl else []
    if json_path is not None:
        json_path = Path(json_path)
        check_writable_file(json_path, "--json")
    files = input_files(manifest)
    client_file = out_dir / files[1]
    needed = [out_dir / f"{manifest['name']}.mpc"] + ([out_dir / files[0]] if party == 0 else [])
    x = y = None
    if party == 1:
        x, y = _select_images(manifest, images, data)
        if x is None:
            needed.append(client_file)
    missing = [str(path.relative_to(out_dir)) for path in needed if not path.is_file()]
    if missing:
        raise UserError(f"{out_dir} lacks {', '.join(missing)}, which party {party} needs; copy the compiled folder "
                        f"(party 0 with its {Path(files[0]).name}) to this host")
    compiled_in = party == 1 and x is None
    if compiled_in:
        x = read_client_input(manifest, client_file)
    if x is not None:
        check_client_images(manifest, x, f"--data {data}" if data is not None else
                            "the compiled-in images" if compiled_in else "the images")
        if batches is not None and batches != -(-len(x) // int(manifest["batch"])):
            raise UserError(f"--batches {batches}: party 1's {len(x)} images are {-(-len(x) // int(manifest['batch']))} "
                            f"batches of {manifest['batch']}; give that number on every host")
    if batches is not None and batches < 1:
        raise UserError(f"--batches {batches}: give a positive number")
    check_port_free(hosts[party][1], party, hosts_path)
    with tempfile.TemporaryDirectory(prefix="mpcvit-party-") as tmp:
        root = make_overlay(mpspdz, Path(tmp) / "mpspdz", spec, out_dir / f"{manifest['name']}.mpc")
        for link in (root / "Player-Data").iterdir():  # only this party's key and the parties' certificates
            link.unlink()
        for path in cert_files:
            (root / "Player-Data" / path.name).symlink_to(path.resolve())
        if cert_files:
            rehash(root / "Player-Data")
        shutil.copy(hosts_path, root / "HOSTS")
        compile_s = compile_cached(root, manifest, spec, mpspdz, batches)
        program = manifest["name"] + (f"-batches={batches}" if batches else "")
        program_hash = bytecode_sha256(root, program)
        log(f"party {party}: {manifest['name']} bytecode sha256 {program_hash}")
        inputs = {Path(files[0]).name: out_dir / files[0]} if party == 0 else {}
        rows = 0
        if party == 1:
            inputs[Path(files[1]).name] = client_file
            rows = len(x)
            if not compiled_in:
                batch = int(manifest["batch"])
                chunk = _padded(x, -(-len(x) // batch) * batch)
                staged, rows = write_client_input(manifest, chunk, Path(tmp) / "client-input"), len(chunk)
                inputs[Path(files[1]).name] = staged
        install_inputs(root, inputs)
        count = ["-N", str(spec.parties)] if spec.pass_n else []
        command = [f"./{spec.binary}", *count, "-ip", "HOSTS", "-OF", ".", *spec.run_extra, "-v", str(party), program]
        name = f"{spec.binary} party {party}"
        start = time.monotonic()
        try:
            done = run_parties([command], root, timeout_s, Path(tmp) / "logs", [name])[0]
        except PartyFailure as exc:
            raise explain_failure(exc, party, hosts, program_hash, certs) from None
        wall = time.monotonic() - start
        stats = parse_party_output(done.output, name)
        result: dict[str, Any] = {
            "party": party, "role": ROLES.get(party, "no input"), "protocol": spec.name,
            "hosts": [f"{h}:{p}" for h, p in hosts], "bytecode_sha256": program_hash, "wall_s": wall,
            "mpspdz_compile_s": compile_s, "time_s": stats.time_s, "bytes_sent": stats.bytes_sent,
            "rounds": stats.rounds, "global_bytes": stats.global_bytes}
        if party == 1:
            shapes = [(rows, *shape[1:]) for shape in output_shapes(manifest)]
            outputs = [part[:len(x)] for part in
                       revealed_outputs(done.output, shapes, manifest.get("output_marker", OUTPUT_MARKER), name)]
            onnx_path = Path(manifest.get("onnx", {}).get("path") or "")
            plain = onnxruntime_logits(onnx_path, x) if onnx_path.is_file() else None
            if plain is None:
                log(f"note: the ONNX model {onnx_path} is not on this host: no comparison with the float model")
            accuracy = compare_logits(outputs[0], plain, y, argmax=manifest.get("reveal") == "argmax")
            result.update(images=len(x), compiled_in_input=compiled_in, accuracy=accuracy,
                          max_logit_error=accuracy.get("max_logit_error"),
                          top1_agreement=accuracy.get("top1_agreement"),
                          predicted_class=predicted_classes(outputs[0], manifest.get("reveal") == "argmax"),
                          outputs=[{"name": entry.get("name"), "shape": list(array.shape), "values": array.tolist()}
                                   for entry, array in zip(manifest.get("outputs") or [{}], outputs)])
    if json_path is not None:
        write_json_atomic(json_path, result)
    return result


ROLES = {0: "model owner (weights)", 1: "client (images; receives the outputs)"}
