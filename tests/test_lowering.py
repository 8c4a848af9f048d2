"""Profiles and lowering: protocol configs, cost-based approximation choice, per-node plans."""
from __future__ import annotations

import numpy as np
import pytest

import tiny_vit_ir
from compiler.approx import REGISTRY
from compiler.cost import estimate, steps_cost
from compiler.errors import CompileError, UserError
from compiler.ir import Node
from compiler.lowering import get_profile, lower, parse_approx_flags
from compiler.lowering.profiles import PROTOCOLS


@pytest.mark.parametrize("protocol, e_name, binary, parties", [
    ("semi2k", "semi2k", "semi2k-party.x", 2), ("dealer", "dealer-ring", "dealer-ring-party.x", 3),
    ("replicated-ring", "replicated-ring", "replicated-ring-party.x", 3)])
def test_profiles_name_mpspdz_protocol_binary_and_flags(protocol, e_name, binary, parties):
    prof = get_profile(protocol)
    assert (prof.mpspdz_protocol, prof.binary, prof.n_parties, prof.f, prof.k, prof.ring_bits) == \
        (e_name, binary, parties, 16, 31, 64)
    flags = prof.compile_flags
    assert flags[flags.index("-E") + 1] == e_name and flags[flags.index("-b") + 1] == "100000" and "-M" in flags
    assert prof.compile_command("m") == "./compile.py " + " ".join(flags) + " m"
    assert get_profile(protocol, frac_bits=20).fx.f == 20


def test_bad_profile_requests_are_user_errors_listing_the_choices():
    with pytest.raises(UserError, match="--protocol 'spdz'.*semi2k, dealer, replicated-ring"):
        get_profile("spdz")
    with pytest.raises(UserError, match="--approx softmax=x: unknown op"):
        get_profile("semi2k", approx={"softmax": "x"})
    with pytest.raises(UserError, match=f"--approx gelu=cubic: unknown choice; choose one of {', '.join(sorted(REGISTRY['gelu']))}"):
        get_profile("semi2k", approx={"gelu": "cubic"})
    with pytest.raises(UserError, match="--frac-bits 40"):
        get_profile("semi2k", frac_bits=40)
    with pytest.raises(UserError, match=r"--frac-bits 14 is out of range; use 15\.\.22"):
        get_profile("semi2k", frac_bits=14)
    with pytest.raises(UserError, match="malformed"):
        parse_approx_flags(["gelu"])
    assert parse_approx_flags(["gelu=poly", "exp = limit", "gelu=poly"]) == {"gelu": "poly", "exp": "limit"}
    with pytest.raises(UserError, match="--approx gelu=poly and --approx gelu=mpspdz contradict"):
        parse_approx_flags(["gelu=poly", "gelu=mpspdz"])  # was: the last one silently won


@pytest.mark.parametrize("protocol", ["semi2k", "replicated-ring"])
def test_default_choice_is_the_cheapest_accurate_candidate(protocol):
    prof = get_profile(protocol)
    for op, why in prof.justification.items():
        table = why["candidates"]
        ok = {c: row for c, row in table.items() if row["max_abs_error"] <= why["tolerance"]}
        ok = {c: row for c, row in ok.items() if not any(_dominates(other, row) for other in ok.values())}
        assert prof.approx[op] == min(ok, key=lambda c: ok[c]["lan_s"])
        for choice, row in table.items():  # the recorded figures are the cost model's
            cost = REGISTRY[op][choice].cost(why["n"], prof)
            assert row["bytes_all"] == int(cost.bytes_all) and row["rounds"] == int(cost.rounds)
    forced = get_profile(protocol, approx={"gelu": "mpspdz"})
    assert forced.approx["gelu"] == "mpspdz" and forced.justification["gelu"]["overridden_by_user"]


def _dominates(a, b):
    keys = ("bytes_all", "rounds", "max_abs_error")
    return all(a[k] <= b[k] for k in keys) and any(a[k] < b[k] for k in keys)


@pytest.mark.parametrize("protocol", sorted(PROTOCOLS))
def test_no_protocol_chooses_a_dominated_candidate(protocol):
    """lan_s holds measured compute seconds (noisy); it must never pick a candidate that another accurate one
    beats on bytes, rounds and error together (trio/astra once chose gelu=mpspdz over the cheaper poly)."""
    for op, why in get_profile(protocol).justification.items():
        table, chosen = why["candidates"], why["chosen"]
        rivals = [row for c, row in table.items() if c != chosen and row["accurate_enough"]]
        assert not any(_dominates(row, table[chosen]) for row in rivals), (protocol, op, chosen)


def _attention_plan(program):
    return next(p for p in program.node_plans if p.node.op == "attention")


def test_attention_plan_batches_heads_of_each_kind():
    g = tiny_vit_ir.build(batch=3)
    prog = lower(g, get_profile("replicated-ring", approx={"reciprocal": "mpspdz"}))
    p = _attention_plan(prog)
    n_tok = 5
    prims = [(s.prim, s.n, s.instances) for s in p.steps]
    # scores and probabilities x V of the three non-scaling heads, three images
    assert prims[0] == ("matmul", n_tok * n_tok, 3 * 3) and prims[-1] == ("matmul", n_tok * 4, 3 * 3)
    softmax_rows = 2 * 3 * n_tok  # two softmax heads, three images
    assert ("reciprocal:mpspdz", softmax_rows, 1) in prims  # ONE reciprocal per row (the built-in: one fitted step)
    rowmax = REGISTRY["rowmax"]["tree"].call_steps(softmax_rows * n_tok, prog.profile,
                                                  **p.approx["softmax.rowmax"].kwargs)
    assert (rowmax[0].prim, rowmax[0].n, 1) == prims[1]  # the tournament's first level: one call over all rows
    # the scaling head: 1/N folded into V (N·d truncations per image, d = 4, not N·N), then Q·(Kᵀ·V'): no scores
    assert ("relu", 3 * n_tok * n_tok, 1) in prims and ("trunc", 3 * n_tok * 4, 1) in prims
    assert ("matmul", 4 * 4, 3) in prims and ("matmul", n_tok * 4, 3) in prims
    assert p.approx["softmax.reciprocal"].kwargs == {"lo": 1.0, "hi": float(n_tok), "shift": 1}  # 2^1 ~ sqrt(2·5)
    assert p.approx["relu_softmax.reciprocal"].kwargs["lo"] == pytest.approx(round(1e-3 * 2 ** 16) / 2 ** 16)
    assert prog.plans[p.node.name] == p.steps  # what compiler.cost.estimate prices


def test_attention_rounds_do_not_grow_with_heads_or_images():
    def rounds(batch, kinds):
        prog = lower(tiny_vit_ir.build(batch=batch, kinds=kinds, dim=8 * len(kinds)), get_profile("replicated-ring"))
        return steps_cost(_attention_plan(prog).steps, prog.profile).online_rounds

    base = rounds(1, ("softmax", "relu_softmax"))
    assert rounds(8, ("softmax", "relu_softmax") * 4) == base
    assert rounds(1, ("softmax", "relu_softmax", "scaling")) > base  # a third kind adds its own (few) rounds


def test_relu_softmax_eps_below_one_lsb_is_raised_and_recorded():
    prog = lower(tiny_vit_ir.build(eps=1e-9), get_profile("semi2k"))
    assert any("rounds to 0" in w for w in prog.warnings)
    assert _attention_plan(prog).approx["relu_softmax.reciprocal"].kwargs["lo"] == 2.0 ** -16


def test_unsupported_op_and_reveal_are_compile_errors():
    g = tiny_vit_ir.build()
    g.add_node(Node("argmax", ["h0"], ["h0"], name="odd_argmax"))  # every other kind has a general lowering
    with pytest.raises(CompileError, match="node 'odd_argmax': op 'argmax' is not supported.*--reveal argmax"):
        lower(g, get_profile("semi2k"))
    with pytest.raises(CompileError, match="--reveal 'probs'"):
        lower(tiny_vit_ir.build(), get_profile("semi2k"), reveal="probs")


def test_cost_estimate_of_a_lowered_program_covers_every_node():
    prog = lower(tiny_vit_ir.build(), get_profile("dealer"), reveal="argmax")
    report = estimate(prog)
    assert [r.name for r in report.rows] == [n.name for n in prog.graph.nodes]
    out = next(p for p in prog.node_plans if p.node.op == "output")
    assert [s.prim for s in out.steps].count("ltz") == int(np.ceil(np.log2(10)))  # tree argmax over 10 logits
    assert report.total.bytes_all > 0


def test_an_approximations_own_error_names_the_node(monkeypatch):
    """The reciprocal's domain check knows no node; lowering adds it (here a forced empty softmax domain)."""
    import compiler.lowering.plans as plans

    monkeypatch.setattr(plans, "softmax_sum_top", lambda tokens: 1.0)
    with pytest.raises(CompileError, match=r"^node 'attn' \(attention\): reciprocal range \[1.0, 1.0\] is empty"):
        lower(tiny_vit_ir.build(batch=1), get_profile("semi2k", approx={"reciprocal": "newton"}))
