"""Run compiled programs under MP-SPDZ and measure them."""
from compiler.runtime.mpspdz import find_mpspdz
from compiler.runtime.parser import PartyStats, parse_party_output
from compiler.runtime.runner import RunResult, run

__all__ = ["find_mpspdz", "run", "RunResult", "parse_party_output", "PartyStats"]
