"""The delay relay that emulates a network's latency (`tc netem` is not in this kernel): every byte arrives late by
the one-way delay, in both directions, in order."""
from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time

from compiler.runtime.processes import free_port_base


def echo_server(sock: socket.socket) -> None:
    conn, _ = sock.accept()
    with conn:
        while data := conn.recv(1 << 16):
            conn.sendall(data)


def test_relay_delays_each_direction() -> None:
    base = free_port_base(2)
    server = socket.socket()
    server.bind(("127.0.0.1", base))
    server.listen()
    threading.Thread(target=echo_server, args=(server,), daemon=True).start()
    delay = 0.1
    relay = subprocess.Popen([sys.executable, "-m", "compiler.runtime.relay", str(delay),
                              f"127.0.0.1:{base + 1}=127.0.0.1:{base}"], stdout=subprocess.PIPE, text=True)
    try:
        assert relay.stdout.readline().strip() == "ready"
        with socket.create_connection(("127.0.0.1", base + 1)) as client:
            payload = bytes(range(256)) * 4096  # 1 MB, more than one chunk: order is kept
            start = time.monotonic()
            client.sendall(payload)
            received = b""
            while len(received) < len(payload):
                received += client.recv(1 << 16)
            elapsed = time.monotonic() - start
        assert received == payload
        # there and back: twice the one-way delay at least; the upper bound leaves room for a loaded machine
        assert 2 * delay <= elapsed < 2 * delay + 2.0
    finally:
        relay.terminate()
        relay.wait()
        server.close()
