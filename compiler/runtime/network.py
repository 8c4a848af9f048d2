"""Network model for runs on one host: `tc netem` is unavailable here, so LAN/WAN latency is modelled, not emulated.

model time = rounds × one-way latency + bytes sent by party 0 / bandwidth (parties send concurrently, so one
party's bytes bound the transfer time). Results say so with ``"network_emulation": "model"``.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

from compiler.cost.network import get_network


@dataclass(frozen=True)
class NetworkProfile:
    name: str
    latency_s: float      # one way
    bandwidth_Bps: float  # bytes per second

    def time_s(self, rounds: int, bytes_sent: int) -> float:
        return rounds * self.latency_s + bytes_sent / self.bandwidth_Bps

    def to_dict(self) -> dict:
        return asdict(self)


def network_profile(name: str) -> NetworkProfile:
    """The cost model's network of that name (`compiler.cost.network`), with one-way latency = RTT / 2."""
    network = get_network(name)
    return NetworkProfile(name, network.rtt_s / 2, network.bandwidth_bps / 8)
