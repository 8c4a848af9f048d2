"""Network profiles for latency estimates.

Values follow the settings common in MPC inference papers (CrypTen/MPCFormer/MPCViT-style evaluations):
LAN 1 Gbit/s with 0.5 ms round-trip time, WAN 100 Mbit/s with 40 ms round-trip time. A round of MP-SPDZ (every
party sends, then waits for what it needs) is charged one RTT; bytes of all parties go through one link of the
given bandwidth (conservative: parties' links are not assumed to run in parallel).
"""
from __future__ import annotations

from dataclasses import dataclass

from compiler.errors import UserError


@dataclass(frozen=True)
class Network:
    name: str
    bandwidth_bps: float
    rtt_s: float


NETWORKS: dict[str, Network] = {
    "lan": Network("lan", 1e9, 0.5e-3),
    "wan": Network("wan", 100e6, 40e-3),
}


def get_network(name: str) -> Network:
    try:
        return NETWORKS[name]
    except KeyError:
        raise UserError(f"unknown network {name!r}; use one of {', '.join(NETWORKS)}") from None
