"""Start MPC party processes on free ports and make sure none outlives the run.

Every party runs in its own session (process group), with stdout+stderr going to a log file (no pipes that could
fill up and block a party). The first party to fail, or the timeout, or Ctrl-C stops all groups; the error shows the
failing party's last lines.
"""
from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import threading
import time
from contextlib import ExitStack, contextmanager
from typing import Iterator
from dataclasses import dataclass
from pathlib import Path

from compiler.errors import MPSPDZError
from compiler.runtime.parser import last_lines

POLL_S = 0.02
KILL_GRACE_S = 1.0
# What MP-SPDZ (3a0a7b1d) prints when a peer vanished or was too slow: Networking/ServerSocket.cpp ("Timed out
# waiting for peer"), sockets.cpp ("cannot connect from"), Tools/Exceptions.h closed_connection ("Connection
# closed down"), and the OS's ECONNRESET / EPIPE texts. A run failing so may succeed when repeated.
TRANSIENT = re.compile(r"Timed out waiting for peer|cannot connect from|Connection closed down|"
                       r"[Cc]onnection reset|Broken pipe")


class PartyFailure(MPSPDZError):
    """A party failed; ``transient`` when it was killed by a signal or lost a peer (see ``TRANSIENT``)."""

    def __init__(self, message: str, transient: bool) -> None:
        super().__init__(message)
        self.transient = transient


def free_port_base(count: int, attempts: int = 50) -> int:
    """A port p such that p … p+count-1 are all free right now (MP-SPDZ uses base + party number).

    The kernel picks p (bind to port 0); the following ports are checked by binding them all at once.
    """
    for _ in range(attempts):
        with ExitStack() as stack:
            first = stack.enter_context(socket.socket())
            first.bind(("127.0.0.1", 0))
            base = first.getsockname()[1]
            if base + count > 65535:
                continue
            try:
                for port in range(base + 1, base + count):
                    stack.enter_context(socket.socket()).bind(("127.0.0.1", port))
            except OSError:
                continue
            return base
    raise MPSPDZError(f"no {count} consecutive free TCP ports found on localhost after {attempts} attempts")


@dataclass(frozen=True)
class PartyResult:
    index: int
    returncode: int
    log: Path
    seconds: float

    @property
    def output(self) -> str:
        return self.log.read_text(errors="replace")


def run_parties(commands: list[list[str]], cwd: Path, timeout_s: float, log_dir: Path,
                names: list[str] | None = None) -> list[PartyResult]:
    """Run `commands[i]` as party i concurrently; return when all exit 0, else stop all and raise PartyFailure
    (the first party to fail) or MPSPDZError (the timeout)."""
    names = names or [f"party {i}" for i in range(len(commands))]
    log_dir.mkdir(parents=True, exist_ok=True)
    logs = [log_dir / f"party{i}.log" for i in range(len(commands))]
    procs: list[subprocess.Popen] = []
    start = time.monotonic()
    with terminate_as_interrupt():
        try:
            for command, log in zip(commands, logs):
                with open(log, "wb") as sink:
                    procs.append(subprocess.Popen(command, cwd=cwd, stdout=sink, stderr=subprocess.STDOUT,
                                                  stdin=subprocess.DEVNULL, start_new_session=True))
            finished: dict[int, float] = {}
            while len(finished) < len(procs):
                for i, proc in enumerate(procs):
                    if i in finished or proc.poll() is None:
                        continue
                    finished[i] = time.monotonic() - start
                    if proc.returncode != 0:
                        stop_all(procs)
                        text = logs[i].read_text(errors="replace")
                        raise PartyFailure(f"{names[i]} failed (exit code {proc.returncode}); its last lines:\n"
                                           f"{last_lines(text)}", proc.returncode < 0 or bool(TRANSIENT.search(text)))
                if time.monotonic() - start > timeout_s:
                    stuck = [i for i in range(len(procs)) if i not in finished]
                    stop_all(procs)
                    raise MPSPDZError(f"timeout after {timeout_s:g} s: {', '.join(names[i] for i in stuck)} still running "
                                      f"(raise --timeout?); last lines of {names[stuck[0]]}:\n"
                                      f"{last_lines(logs[stuck[0]].read_text(errors='replace'))}")
                time.sleep(POLL_S)
            return [PartyResult(i, p.returncode, logs[i], finished[i]) for i, p in enumerate(procs)]
        finally:
            stop_all(procs)  # Ctrl-C or any error: no party survives the run


@contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM (`kill`, a job scheduler) unwinds like Ctrl-C, so that the parties are stopped too."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def stop_all(procs: list[subprocess.Popen]) -> None:
    """SIGTERM every party's process group, then SIGKILL what is left after a grace period."""
    alive = [p for p in procs if p.poll() is None]
    for proc in alive:
        _signal_group(proc, signal.SIGTERM)
    deadline = time.monotonic() + KILL_GRACE_S
    for proc in alive:
        try:
            proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            _signal_group(proc, signal.SIGKILL)
            proc.wait()
    for proc in procs:  # children a party left behind in its group
        _signal_group(proc, signal.SIGKILL)


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass
