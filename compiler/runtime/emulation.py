"""Networks emulated for real on one machine: every party in its own network namespace, with its own address.

Each party's namespace is joined to a private bridge by a veth pair. A profile (``compiler.cost.network``) is
applied for real: its bandwidth with ``tc qdisc ... tbf`` on every party's outgoing link (each party sends at that
rate, concurrently), its latency by :mod:`compiler.runtime.relay` in the root namespace, which delays every byte
between two parties by the one-way latency RTT/2 (``tc netem`` is not in this kernel). Each party then connects to
its peers through the relay: it gets its own host file whose other lines name the relay's ports for it.

Needs root and ``ip``/``tc`` (iproute2); :func:`namespaces_available` says why not otherwise.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from compiler.cost.network import get_network
from compiler.errors import MPSPDZError, UserError
from compiler.runtime.processes import terminate_as_interrupt

PORT_BASE = 6000  # party i listens on PORT_BASE + i in its namespace
RELAY_PORT_BASE = 7000  # the relay's port for party i's link to party j: RELAY_PORT_BASE + 10·i + j


@dataclass(frozen=True)
class Emulated:
    namespaces: list[str]
    addresses: list[str]
    bridge_address: str  # the root namespace's address on the bridge (where the relay listens)


def namespaces_available() -> str | None:
    """None when namespaces, veth pairs and tbf can be made here, else why not (for a skip message)."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    probe = f"mpcvitprobe{os.getpid() % 100000}"
    done = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if done.returncode != 0:
        return f"ip netns add failed: {done.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def _ip(*args: str) -> None:
    done = subprocess.run(["ip", *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise MPSPDZError(f"ip {' '.join(args)} failed: {done.stderr.strip()}")


@contextmanager
def party_namespaces(parties: int, bandwidth_bps: float | None = None) -> Iterator[Emulated]:
    """``parties`` namespaces on one bridge (10.231.<n>.<i+1>/24, the root namespace at .254), each party's
    egress limited to ``bandwidth_bps`` (bits/s) by tbf when given; all removed on exit."""
    reason = namespaces_available()
    if reason:
        raise UserError(f"cannot emulate a network here: {reason}")
    tag = f"mpcv{os.getpid() % 100000}"
    subnet = os.getpid() % 200 + 20
    bridge = f"{tag}br"
    made: list[str] = []
    _ip("link", "add", bridge, "type", "bridge")
    try:
        _ip("addr", "add", f"10.231.{subnet}.254/24", "dev", bridge)
        _ip("link", "set", bridge, "up")
        addresses = []
        for i in range(parties):
            ns, host_end, ns_end, address = f"{tag}p{i}", f"{tag}h{i}", f"{tag}n{i}", f"10.231.{subnet}.{i + 1}"
            _ip("netns", "add", ns)
            made.append(ns)
            _ip("link", "add", host_end, "type", "veth", "peer", "name", ns_end)
            _ip("link", "set", ns_end, "netns", ns)
            _ip("link", "set", host_end, "master", bridge)
            _ip("link", "set", host_end, "up")
            _ip("netns", "exec", ns, "ip", "addr", "add", f"{address}/24", "dev", ns_end)
            _ip("netns", "exec", ns, "ip", "link", "set", ns_end, "up")
            _ip("netns", "exec", ns, "ip", "link", "set", "lo", "up")
            if bandwidth_bps:
                # burst: at least one timer tick's worth at this rate (HZ >= 250) and 64 KB; 1 s of queue
                burst = max(int(bandwidth_bps / 8 / 250), 1 << 16)
                _ip("netns", "exec", ns, "tc", "qdisc", "add", "dev", ns_end, "root", "tbf", "rate",
                    f"{int(bandwidth_bps)}bit", "burst", str(burst), "latency", "1s")
            addresses.append(address)
        yield Emulated(made, addresses, f"10.231.{subnet}.254")
    finally:
        for ns in made:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)  # also removes its veth pair
        subprocess.run(["ip", "link", "del", bridge], capture_output=True)


def run_emulated(out_dir: Path, network: str | None, images: int | None = None, timeout_s: float = 1800.0,
                 work: Path | None = None) -> list[dict]:
    """Run every party of the program in ``out_dir`` in its own namespace under ``network`` (a profile name of
    ``compiler.cost.network``, or None for the bare veth links); returns each party's result
    (:func:`compiler.runtime.hosts.run_party`), with ``wall_s`` the parties' execution time under that network.
    Raises MPSPDZError when a party fails (its error)."""
    with terminate_as_interrupt():  # SIGTERM unwinds too: no party, relay or namespace outlives the run
        return _run_emulated(out_dir, network, images, timeout_s, work)


def _run_emulated(out_dir: Path, network: str | None, images: int | None, timeout_s: float,
                  work: Path | None) -> list[dict]:
    from compiler.runtime.hosts import compile_cached
    from compiler.runtime.mpspdz import find_mpspdz, protocol_spec
    from compiler.backend.inputs import input_files, read_client_input
    from compiler.runtime.overlay import make_overlay
    from compiler.runtime.runner import load_manifest

    manifest = load_manifest(Path(out_dir))
    spec = protocol_spec(manifest["protocol"])
    parties = spec.parties
    batch = int(manifest["batch"])
    if images:
        batches = -(-images // batch)
    else:  # the compiled-in input: the batches its file holds
        batches = len(read_client_input(manifest, Path(out_dir) / input_files(manifest)[1])) // batch
    mpspdz = find_mpspdz()
    with tempfile.TemporaryDirectory(prefix="mpcvit-compile-") as warm:  # the parties then start together
        compile_cached(make_overlay(mpspdz, Path(warm) / "o", spec, Path(out_dir) / f"{manifest['name']}.mpc"),
                       manifest, spec, mpspdz, batches)
    profile = get_network(network) if network else None
    with tempfile.TemporaryDirectory(prefix="mpcvit-emulated-", dir=work) as tmp, \
            party_namespaces(parties, profile.bandwidth_bps if profile else None) as net:
        relay = None
        hosts = []
        if profile is None:
            direct = "".join(f"{a}:{PORT_BASE + i}\n" for i, a in enumerate(net.addresses))
            hosts = [direct] * parties
        else:
            links = [f"{net.bridge_address}:{RELAY_PORT_BASE + 10 * i + j}={net.addresses[j]}:{PORT_BASE + j}"
                     for i in range(parties) for j in range(parties) if i != j]
            relay = subprocess.Popen([sys.executable, "-m", "compiler.runtime.relay", str(profile.rtt_s / 2), *links],
                                     stdout=subprocess.PIPE, text=True, start_new_session=True)
            if relay.stdout.readline().strip() != "ready":
                relay.kill()
                raise MPSPDZError("the delay relay did not start")
            for i in range(parties):
                hosts.append("".join(f"{net.addresses[j]}:{PORT_BASE + j}\n" if j == i else
                                     f"{net.bridge_address}:{RELAY_PORT_BASE + 10 * i + j}\n" for j in range(parties)))
        procs = []
        try:
            for i in range(parties):
                (Path(tmp) / f"hosts{i}").write_text(hosts[i])
                command = ["ip", "netns", "exec", net.namespaces[i], sys.executable, "-m", "mpcvit.cli", "run",
                           str(out_dir), "--party", str(i), "--hosts", str(Path(tmp) / f"hosts{i}"), "--json",
                           str(Path(tmp) / f"party{i}.json"), "--timeout", str(timeout_s), "--batches", str(batches),
                           *(["--images", str(images)] if i == 1 and images else [])]
                procs.append(subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                              cwd=Path(__file__).resolve().parents[2]))
            errors = [proc.communicate(timeout=timeout_s + 120)[1] for proc in procs]
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.terminate()
                    proc.wait()
            if relay is not None:
                relay.terminate()
                relay.wait()
        failed = [i for i, proc in enumerate(procs) if proc.returncode != 0]
        if failed:  # every failing party's last line: the first to fail is not always the one that says why
            raise MPSPDZError(f"under the emulated {network or 'bare'} network: " + "; ".join(
                f"party {i}: {(errors[i].strip().splitlines() or ['no output'])[-1]}" for i in failed))
        return [json.loads((Path(tmp) / f"party{i}.json").read_text()) for i in range(parties)]
