"""Parse what MP-SPDZ party processes print (commit 3a0a7b1d, `Processor/BaseMachine.cpp`, `ThreadQueues.cpp`).

Party 0 prints to stderr at the end of a run::

    Time = 0.00253306 seconds
    Time1 = 0.000506593 seconds (0.0016 MB, 4 rounds)
    Data sent = 0.001632 MB in ~5 rounds (party 0 only; use '-v' for more details)
    Global data sent = 0.004896 MB (all parties)

and with ``-v`` also the phase split::

    Spent 0.00062 seconds (9.6e-05 MB, 3 rounds) on the online phase and 0.00016 seconds (0.0015 MB, 2 rounds)
    on the preprocessing/offline phase.

MP-SPDZ prints megabytes as ``bytes / 1e6`` with six significant digits, so byte counts parsed here are exact to
that precision. Revealed outputs are lines ``<marker> <index> [v0, v1, ...]`` printed by party 1 (the backend's
program prints one line per image; see DESIGN.md "Run-time output").
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

from compiler.backend.manifest import OUTPUT_MARKER, output_marker
from compiler.errors import MPSPDZError

_NUM = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|[-+]?(?:inf|nan)"
_TIME = re.compile(rf"^Time = ({_NUM}) seconds", re.M)
_TIMER = re.compile(rf"^Time(\d+) = ({_NUM}) seconds \(({_NUM}) MB, (\d+) rounds\)", re.M)
_DATA_SENT = re.compile(rf"^Data sent = ({_NUM}) MB in ~(\d+) rounds \(party (\d+) only", re.M)
_GLOBAL = re.compile(rf"^Global data sent = ({_NUM}) MB \(all parties\)", re.M)
_PHASE = rf"({_NUM}) seconds(?: \(({_NUM}) MB, (\d+) rounds\))?"  # no parentheses when nothing was sent
_SPLIT = re.compile(rf"^Spent {_PHASE} on the online phase and {_PHASE} on the preprocessing/offline phase", re.M)
_PREP_INCLUDED = re.compile(r"^The following benchmarks are (in|ex)cluding preprocessing", re.M)


@dataclass(frozen=True)
class Phase:
    seconds: float
    bytes: int
    rounds: int


@dataclass
class PartyStats:
    """The figures one party printed; bytes/rounds are that party's own unless named global."""

    party: int
    time_s: float
    bytes_sent: int
    rounds: int
    global_bytes: int | None  # printed by every party of a protocol with real secret sharing
    timers: dict[int, Phase] = field(default_factory=dict)
    online: Phase | None = None  # only with `-v`
    offline: Phase | None = None
    includes_preprocessing: bool = True


def _mb_to_bytes(text: str) -> int:
    return int(round(float(text) * 1e6))


def _phase(groups: tuple[str | None, ...]) -> Phase:
    seconds, mb, rounds = groups
    # MP-SPDZ derives the offline seconds as total minus online, which timer jitter can leave at -1e-5
    return Phase(max(float(seconds), 0.0), _mb_to_bytes(mb) if mb else 0, int(rounds) if rounds else 0)


def parse_party_output(text: str, source: str = "party output") -> PartyStats:
    """Parse the end-of-run report of one MP-SPDZ party; MPSPDZError names `source` when it is incomplete."""
    time_match, sent_match = _TIME.search(text), _DATA_SENT.search(text)
    if time_match is None or sent_match is None:
        missing = "'Time = ...'" if time_match is None else "'Data sent = ...'"
        raise MPSPDZError(f"{source}: no {missing} line; the party did not finish (last line: {last_lines(text, 1)!r})")
    global_match = _GLOBAL.search(text)
    split = _SPLIT.search(text)
    prep = _PREP_INCLUDED.search(text)
    return PartyStats(
        party=int(sent_match.group(3)),
        time_s=float(time_match.group(1)),
        bytes_sent=_mb_to_bytes(sent_match.group(1)),
        rounds=int(sent_match.group(2)),
        global_bytes=_mb_to_bytes(global_match.group(1)) if global_match else None,
        timers={int(m.group(1)): Phase(float(m.group(2)), _mb_to_bytes(m.group(3)), int(m.group(4)))
                for m in _TIMER.finditer(text)},
        online=_phase(split.groups()[:3]) if split else None,
        offline=_phase(split.groups()[3:]) if split else None,
        includes_preprocessing=prep is None or prep.group(1) == "in",
    )


def parse_revealed(text: str, marker: str = OUTPUT_MARKER) -> dict[int, np.ndarray]:
    """`{index: values}` from the lines ``<marker> <index> <numbers...>`` (brackets and commas are ignored)."""
    pattern = re.compile(rf"^{re.escape(marker)} (\d+) (.*)$", re.M)
    number = re.compile(_NUM)
    return {int(m.group(1)): np.array([float(v) for v in number.findall(m.group(2))]) for m in pattern.finditer(text)}


def revealed_matrix(text: str, rows: int, cols: int, marker: str = OUTPUT_MARKER, source: str = "party 1") -> np.ndarray:
    """The revealed outputs as a `[rows, cols]` array; MPSPDZError when lines are missing or have the wrong size."""
    found = parse_revealed(text, marker)
    missing = sorted(set(range(rows)) - set(found))
    if missing:
        raise MPSPDZError(f"{source}: no '{marker} {missing[0]} ...' output line ({len(found)} of {rows} found); "
                          f"last line: {last_lines(text, 1)!r}")
    bad = [i for i in range(rows) if found[i].size != cols]
    if bad:
        raise MPSPDZError(f"{source}: output line {bad[0]} has {found[bad[0]].size} values, expected {cols}")
    return np.stack([found[i] for i in range(rows)])


def revealed_outputs(text: str, shapes: list[tuple[int, ...]], marker: str = OUTPUT_MARKER,
                     source: str = "party 1") -> list[np.ndarray]:
    """Every graph output j as an array of its shape ``[B, ...]``, from the lines ``<marker><j> <b> [...]``
    (output 0: ``<marker> <b> [...]``, each image's slice flattened); MPSPDZError as :func:`revealed_matrix`."""
    arrays = []
    for index, shape in enumerate(shapes):
        rows, cols = int(shape[0]), int(np.prod(shape[1:], dtype=np.int64))
        arrays.append(revealed_matrix(text, rows, cols, output_marker(index, marker), source).reshape(shape))
    return arrays


def last_lines(text: str, n: int = 12) -> str:
    return "\n".join(text.rstrip().splitlines()[-n:])
