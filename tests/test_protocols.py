"""The protocols beyond the semi-honest three, without MP-SPDZ: security models, lowering per profile, how the
runtime starts each protocol's processes, and the clear refusal of protocols a USE_KOS build cannot run."""
from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

import tiny_vit_ir
from compiler.backend import emit
from compiler.cost import estimate
from compiler.errors import MPSPDZError
from compiler.lowering import get_profile, lower
from compiler.lowering.profiles import PROTOCOLS
from compiler.runtime.mpspdz import MPSPDZ, check_protocol_ready, kos_build, make_fifos, protocol_spec

NEW = ("rep4-ring", "sy-rep-ring", "ps-rep-ring", "trio", "astra", "spdz2k", "hemi")
SECURITY = {  # protocol: (adversary, majority, parties of the binary, preprocessing processes)
    "semi2k": ("semi-honest", "dishonest", 2, 0), "dealer": ("semi-honest", "honest", 3, 0),
    "replicated-ring": ("semi-honest", "honest", 3, 0), "rep4-ring": ("malicious", "honest", 4, 0),
    "sy-rep-ring": ("malicious", "honest", 3, 0), "ps-rep-ring": ("malicious", "honest", 3, 0),
    "trio": ("semi-honest", "honest", 2, 3), "astra": ("semi-honest", "honest", 2, 3),
    "spdz2k": ("malicious", "dishonest", 2, 0), "hemi": ("semi-honest", "dishonest", 2, 0)}


def test_every_profile_states_its_security_model():
    assert set(PROTOCOLS) == set(SECURITY)
    for name, (adversary, majority, parties, prep) in SECURITY.items():
        spec = PROTOCOLS[name]
        model = get_profile(name).as_dict()["security"]
        assert (model["adversary"], model["majority"], spec.n_parties, spec.prep_parties) == \
            (adversary, majority, parties, prep), name
        assert model["corrupt"] == 1 and "party 0 (model owner)" in model["inputs"] and \
            "party 1 (client)" in model["inputs"] and model["learns"].startswith("party 1 learns")


@pytest.mark.parametrize("protocol", NEW)
def test_lowering_per_profile_truncation_flags_and_manifest(protocol, tmp_path):
    """The malicious 3PCs and spdz2k have no trunc_pr instruction (TRUNC_PR fails at run time): their programs
    must not ask for it; rep4-ring, trio and astra use it (one round, probabilistic), hemi too (local in its 128-bit
    field), which compiles for a prime field (no -R) with edaBits (-Y)."""
    profile = get_profile(protocol)
    program = lower(tiny_vit_ir.build(batch=1), profile, name="tiny")
    manifest = emit(program, tmp_path / "out")
    text = (tmp_path / "out" / "tiny.mpc").read_text()
    trunc_pr = protocol in ("rep4-ring", "trio", "astra", "hemi")
    assert ("program.use_trunc_pr = True" in text) is trunc_pr
    assert manifest.truncation == ("trunc_pr" if trunc_pr else "generic")
    flags = manifest.compile_flags
    assert flags[flags.index("-E") + 1] == PROTOCOLS[protocol].mpspdz and "-M" in flags
    assert ("-R" in flags, "-Y" in flags) == ((False, True) if protocol == "hemi" else (True, False))
    assert manifest.ring_bits == (128 if protocol == "hemi" else 64)
    assert f"Security ({protocol}): {PROTOCOLS[protocol].security.summary()}" in text
    saved = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert saved["security"] == PROTOCOLS[protocol].security.as_dict() and saved["protocol"] == protocol
    cost = estimate(program).total
    assert cost.bytes_all > cost.bytes_p0 > 0 and cost.rounds > 0


def test_cost_model_ranks_the_protocols_as_measured():
    """Fitted to measurements (compiler/cost/data/protocol_costs.csv): on the same program the malicious 3PCs send
    more than replicated-ring, spdz2k (compile-time estimate) far more; trio moves work into preprocessing."""
    graph = tiny_vit_ir.build(batch=1)
    totals = {p: estimate(lower(graph, get_profile(p))).total for p in SECURITY}
    assert totals["replicated-ring"].bytes_all < totals["rep4-ring"].bytes_all < totals["sy-rep-ring"].bytes_all
    assert totals["sy-rep-ring"].bytes_all < totals["spdz2k"].bytes_all / 10
    assert totals["trio"].offline_bytes_all > 0 and totals["trio"].online_rounds < totals["trio"].rounds
    # the two dishonest-majority semi-honest 2PCs: hemi's HE triples and local truncation cost a fraction of
    # semi2k's OT triples (measured 4.9x fewer bytes on vit_1_4_8, 6.5x on vit_2_4_32); on this tiny program
    # hemi's first HE batch of each kind (~3 MB) dominates: 2.3x
    assert totals["hemi"].bytes_all < totals["semi2k"].bytes_all / 2


def test_trio_and_astra_start_two_online_and_three_preprocessing_parties(tmp_path):
    spec = protocol_spec("trio")
    commands = spec.launch_commands(5000, "prog", ("-v",))
    assert [c[0] for c in commands] == ["./trio-party.x"] * 2 + ["./trio-prep-party.x"] * 3
    ports = [int(c[c.index("-pn") + 1]) for c in commands]
    assert ports == [5000, 5000, 5003, 5003, 5003]  # each group on its own range: online 5000-5001, prep 5003-5005
    assert [c[-2] for c in commands] == ["0", "1", "0", "1", "2"] and spec.processes == 5
    assert len(spec.process_names()) == 5 and spec.binaries == ("trio-party.x", "trio-prep-party.x")
    make_fifos(tmp_path, spec)  # what Scripts/astra-common.sh makes with mkfifo
    fifo = tmp_path / "Player-Data" / "3-trio-R-64" / "Protocol-edaBits-P2-T100"
    assert stat.S_ISFIFO(fifo.stat().st_mode)
    rep4 = protocol_spec("rep4-ring").launch_commands(6000, "prog")
    assert len(rep4) == 4 and all("-N" not in c for c in rep4)  # rep4-ring-party.x has no -N option
    hemi = protocol_spec("hemi").launch_commands(7000, "prog")
    assert [c[:3] for c in hemi] == [["./hemi-party.x", "-N", "2"]] * 2 and not protocol_spec("hemi").needs_ssl


def test_dealer_parties_open_directly_in_large_preprocessing_batches():
    """Every dealer process (the dealer too) gets the profile's -d -b 100000, and the cost model its batch."""
    commands = protocol_spec("dealer").launch_commands(5000, "prog", ("-v",))
    assert len(commands) == 3 and all(c[c.index("-OF") + 2:-2] == ["-d", "-b", "100000", "-v"] for c in commands)
    assert get_profile("dealer").batch == 100000 and get_profile("replicated-ring").batch == 1000


def fake_tree(tmp_path: Path, config: str) -> MPSPDZ:
    home = tmp_path / "mp-spdz"
    (home / "Player-Data").mkdir(parents=True)
    (home / "compile.py").write_text("")
    (home / "CONFIG.mine").write_text(config)
    return MPSPDZ(home)


def test_a_kos_build_refuses_spdz2k_up_front_with_the_cost_models_estimate(tmp_path):
    tree = fake_tree(tmp_path, "USE_KOS = 1\nMY_CFLAGS += -DINSECURE\n")
    assert kos_build(tree) and not kos_build(fake_tree(tmp_path / "b", "# USE_KOS = 1\n"))
    expected = {"bytes_all": 5.7e13, "offline_bytes_all": 5.6e13, "rounds": 1234, "latency_lan_s": 456789}
    with pytest.raises(MPSPDZError, match=r"USE_KOS = 1 in CONFIG.mine.*Case not implemented.*57,000\.0 GB sent"):
        check_protocol_ready(tree, protocol_spec("spdz2k"), expected)
    with pytest.raises(MPSPDZError, match="lacks rep4-ring-party.x"):  # other protocols: only what is missing
        check_protocol_ready(tree, protocol_spec("rep4-ring"))
    with pytest.raises(MPSPDZError, match=r"lacks hemi-party.x \(needed for hemi\).*run `make hemi-party.x` there"):
        check_protocol_ready(tree, protocol_spec("hemi"))


def test_mpcvit_run_of_spdz2k_in_a_kos_build_is_one_line_and_exit_code_2(tmp_path, capsys, monkeypatch):
    from mpcvit.cli import main

    emit(lower(tiny_vit_ir.build(batch=1), get_profile("spdz2k"), name="tiny"), tmp_path / "out")
    monkeypatch.setenv("MP_SPDZ_HOME", str(fake_tree(tmp_path, "USE_KOS = 1\n").home))
    with pytest.raises(SystemExit) as exit_info:
        main(["run", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and len(err.splitlines()) == 1
    assert "USE_KOS = 1 in CONFIG.mine" in err and "the cost model expects" in err and os.sep not in err[:6]


def test_protocol_table_puts_measured_and_cost_model_figures_side_by_side():
    from benchmarks.report import protocol_table

    cost = {"bytes_p0": 2e6, "bytes_all": 5e6, "rounds": 700, "online_bytes_all": 3e6, "offline_bytes_all": 2e6}
    real = {"time_s": 1.5, "bytes_party0": 2.1e6, "global_bytes": 5.2e6, "rounds": 690, "top1_agreement": 1.0,
            "online": {"bytes": 1e6, "rounds": 500, "seconds": 1.0}, "offline": {"bytes": 1.1e6, "rounds": 190}}
    base = {"model": "m", "attention": "softmax", "templates": "mpcvit", "cost": cost, "cost_latency_s": 0.2,
            "security": PROTOCOLS["trio"].security.as_dict()}
    rows = protocol_table([{**base, "protocol": "trio", "network": "lan", "real": real},
                           {**base, "protocol": "trio", "network": "wan", "real": real},  # LAN rows only
                           {**base, "protocol": "semi2k", "network": "lan", "real": None}])  # cost model only
    assert [r["protocol"] for r in rows] == ["semi2k", "trio"]
    assert rows[1]["MB_all"] == 5.2 and rows[1]["cost_MB_all"] == 5.0 and rows[1]["offline_MB_p0"] == 1.1
    assert rows[1]["security"] == "semi-honest, honest majority" and rows[0]["MB_all"] is None
    # a run of 2 executions: its totals halved, per execution as the cost model prices one
    rows = protocol_table([{**base, "protocol": "trio", "network": "lan", "real": {**real, "runs": 2}}])
    assert rows[0]["MB_all"] == 2.6 and rows[0]["rounds"] == 345 and rows[0]["offline_MB_p0"] == 0.55
