"""Network model for runs on one host: `tc netem` is unavailable here, so LAN/WAN latency is modelled, not emulated.

model time = rounds × one-way latency + bytes sent by party 0 / bandwidth (parties send concurrently, so one
party's bytes bound the transfer time). Results say so with ``"network_emulation": "model"``.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

from compiler.errors import UserError


@dataclass(frozen=True)
class NetworkProfile:
    name: str
    latency_s: float      # one way
    bandwidth_Bps: float  # bytes per second

    def time_s(self, rounds: int, bytes_sent: int) -> float:
        return rounds * self.latency_s + bytes_sent / self.bandwidth_Bps

    def to_dict(self) -> dict:
        return asdict(self)


# The settings of the MPCViT paper's evaluation: LAN 3 Gbit/s with 0.8 ms round trip; WAN 200 Mbit/s, 80 ms.
DEFAULT_PROFILES = {
    "lan": NetworkProfile("lan", 0.4e-3, 3e9 / 8),
    "wan": NetworkProfile("wan", 40e-3, 200e6 / 8),
}


def network_profile(name: str) -> NetworkProfile:
    """The cost model's profile of that name when `compiler.cost` defines one, else the defaults above."""
    try:
        from compiler.cost import network_profile as cost_profile  # type: ignore[attr-defined]
    except ImportError:
        cost_profile = None
    if cost_profile is not None:
        profile = cost_profile(name)
        return NetworkProfile(name, float(profile.latency_s), float(profile.bandwidth_Bps))
    if name not in DEFAULT_PROFILES:
        raise UserError(f"unknown network profile {name!r}: use one of {', '.join(DEFAULT_PROFILES)}")
    return DEFAULT_PROFILES[name]
