"""The MP-SPDZ output parser on outputs recorded from real runs (tests/data/mpspdz_outputs/, program tiny.mpc)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from compiler.errors import MPSPDZError
from compiler.runtime.parser import Phase, parse_party_output, parse_revealed, revealed_matrix

RECORDED = Path(__file__).parent / "data" / "mpspdz_outputs"
# tiny.mpc: z = x*y (timer 1), w = z*z (timer 2), party 1 gets both; x = [1, 2, 3, 4], y = [0.5, 0.25, 2, -1]
Z = np.array([0.5, 0.5, 6, -4])


def recorded(name: str) -> str:
    return (RECORDED / f"{name}.log").read_text()


@pytest.mark.parametrize("protocol, parties", [("semi2k", 2), ("dealer-ring", 3), ("replicated-ring", 3)])
@pytest.mark.parametrize("verbose", [False, True])
def test_every_party_report_parses(protocol: str, parties: int, verbose: bool) -> None:
    for party in range(parties):
        stats = parse_party_output(recorded(f"{protocol}{'-v' if verbose else ''}-p{party}"))
        assert stats.party == party
        assert stats.time_s > 0 and stats.rounds > 0 and stats.bytes_sent > 0
        assert stats.global_bytes >= stats.bytes_sent
        assert set(stats.timers) == {1, 2}
        assert (stats.online is not None) == verbose  # the phase split needs -v
        if verbose:
            assert stats.online.bytes + stats.offline.bytes == stats.bytes_sent


def test_replicated_ring_verbose_figures_exact() -> None:
    stats = parse_party_output(recorded("replicated-ring-v-p0"))
    assert stats.time_s == pytest.approx(0.00362779)
    assert (stats.bytes_sent, stats.rounds, stats.global_bytes) == (160, 7, 576)
    assert stats.timers[1] == Phase(0.000462537, 64, 3)
    assert stats.online == Phase(0.00129035, 160, 7)
    assert stats.offline == Phase(0.0, 0, 0)  # MP-SPDZ printed -4.407e-06 s (its timer subtraction): clamped to 0
    assert stats.includes_preprocessing


def test_phase_without_communication_and_excluded_preprocessing() -> None:
    """semi2k -F (files): the offline phase sent nothing and is printed without '(MB, rounds)'."""
    stats = parse_party_output(recorded("semi2k-F-v-p0"))
    assert not stats.includes_preprocessing
    assert stats.offline == Phase(5.2176e-05, 0, 0)
    assert stats.online.bytes == stats.bytes_sent == 256 and stats.online.rounds == stats.rounds == 10


def test_dealer_figures_exact() -> None:
    stats = parse_party_output(recorded("dealer-ring-v-p0"))
    assert (stats.bytes_sent, stats.rounds, stats.global_bytes) == (288, 17, 2168)
    assert stats.online == Phase(0.00162635, 256, 11) and stats.offline == Phase(0.00205447, 32, 6)


@pytest.mark.parametrize("protocol", ["semi2k", "dealer-ring-v", "replicated-ring"])
def test_revealed_outputs_of_party1(protocol: str) -> None:
    values = revealed_matrix(recorded(f"{protocol}-p1"), rows=2, cols=4)
    np.testing.assert_allclose(values, np.stack([Z, Z * Z]), atol=2 ** -14)


def test_failed_party_report_names_the_source_and_last_line() -> None:
    with pytest.raises(MPSPDZError, match=r"party 0: no 'Time = \.\.\.' line.*not enough inputs"):
        parse_party_output(recorded("replicated-ring-bad-input-p0"), "party 0")


def test_missing_or_short_output_lines_are_errors() -> None:
    text = "MPCVIT_OUT 0 [1, 2.5e-3, -inf]\nMPCVIT_OUT 2 [1, 2, 3]\n"
    assert parse_revealed(text)[0].tolist() == [1, 2.5e-3, -np.inf]
    with pytest.raises(MPSPDZError, match=r"no 'MPCVIT_OUT 1 \.\.\.' output line \(2 of 3 found\)"):
        revealed_matrix(text, rows=3, cols=3)
    with pytest.raises(MPSPDZError, match="output line 0 has 3 values, expected 4"):
        revealed_matrix(text, rows=1, cols=4)
