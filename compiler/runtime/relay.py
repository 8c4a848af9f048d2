"""A user-space TCP relay that delays every byte by a fixed one-way latency (this kernel has no `tc netem`).

    python -m compiler.runtime.relay DELAY_S LISTEN_HOST:PORT=TARGET_HOST:PORT [...]

Each listener accepts connections and opens one to its target; in both directions, data read at time t is written
on at t + DELAY_S, in order, so a message's one-way latency grows by DELAY_S and a request/response by 2·DELAY_S,
whatever the amount in flight (no window is imposed; bandwidth is limited elsewhere, by `tc ... tbf` on the
parties' links). Runs until SIGTERM; prints ``ready`` once every listener is bound.
"""
from __future__ import annotations

import asyncio
import signal
import sys
import time

CHUNK = 1 << 16
CONNECT_TIMEOUT_S = 60.0  # MP-SPDZ's own CONNECTION_TIMEOUT (Networking/sockets.h)


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay_s: float) -> None:
    """Copy reader to writer, each chunk written ``delay_s`` after it was read."""
    queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

    async def forward() -> None:
        while True:
            due, data = await queue.get()
            if not data:
                break
            wait = due - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            writer.write(data)
            await writer.drain()
        writer.close()

    sender = asyncio.ensure_future(forward())
    try:
        while True:
            data = await reader.read(CHUNK)
            await queue.put((time.monotonic() + delay_s, data))
            if not data:
                break
        await sender
    except (ConnectionError, OSError):
        sender.cancel()
        writer.close()


async def _serve(listen: tuple[str, int], target: tuple[str, int], delay_s: float) -> asyncio.base_events.Server:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # the caller believes itself connected (MP-SPDZ does not reconnect): wait for a peer not yet listening
        deadline = time.monotonic() + CONNECT_TIMEOUT_S
        while True:
            try:
                target_reader, target_writer = await asyncio.open_connection(*target)
                break
            except OSError:
                if time.monotonic() > deadline:
                    writer.close()
                    return
                await asyncio.sleep(0.05)
        for sock in (writer, target_writer):
            raw = sock.get_extra_info("socket")
            if raw is not None:
                raw.setsockopt(6, 1, 1)  # TCP_NODELAY: MP-SPDZ's small messages must not wait for more
        await asyncio.gather(_pump(reader, target_writer, delay_s), _pump(target_reader, writer, delay_s))

    return await asyncio.start_server(handle, *listen)


def _address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


async def main(argv: list[str]) -> None:
    delay_s = float(argv[0])
    servers = [await _serve(_address(a), _address(b), delay_s) for a, b in (arg.split("=") for arg in argv[1:])]
    print("ready", flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    for server in servers:
        server.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
