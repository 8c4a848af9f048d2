"""The fitted cost formulas reproduce every measured MP-SPDZ row (bytes of party 0 / all parties, rounds)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from compiler.approx import get
from compiler.cost import Cost, CostProfile, Step, cost_table, estimate_steps, step_cost, steps_cost
from compiler.cost.fit import PROTOCOL_COSTS, current_rows, default_costs_csv, fit, load_rows
from compiler.cost.fitted import FITS
from compiler.errors import CompileError
from compiler.lowering import get_profile

CSV = default_costs_csv()  # <repo>/../shared or $MPCVIT_SHARED
REAL_PROGRAMS = Path(__file__).parent / "data" / "real_program_costs.json"
TOLERANCE = 0.25
ELEMENTWISE = {"mul_sfix": "mul", "mul_sint": "mul_int", "ltz": "ltz", "relu": "relu", "trunc": "trunc",
               "exp": "exp:mpspdz", "recip_div": "reciprocal:mpspdz", "recip_nearest": "fpdiv_nearest",
               "recip_apprcr": "apprcr", "invsqrt": "rsqrt:mpspdz", "gelu": "gelu:mpspdz"}


def predict(row: dict) -> Cost:
    profile = CostProfile(protocol=row["protocol"], budget=row["budget"], batch=row["batch"])
    n, prim = row["n"], row["primitive"]
    if prim == "matmul":
        m, k, p = row["shape"]
        return step_cost(Step("matmul", m * p, (m, k, p)), profile)
    if prim == "exp_limit":  # the measured program: one truncation by 8 bits, then 8 squarings
        return steps_cost([Step("trunc", n)] + [Step("mul", n)] * 8, profile)
    if prim == "rowmax":  # R x 64 rows, 6 tree levels of (a < b).if_else(b, a)
        return get("rowmax", "tree").cost(n, profile, cols=64)
    return step_cost(Step(ELEMENTWISE[prim], n), profile)


@pytest.mark.parametrize("path, least", [(CSV, 200), (PROTOCOL_COSTS, 190)], ids=["shared", "protocols"])
def test_every_measured_row_within_25_percent(path, least):
    """The shared calibration (semi2k/replicated-ring; its dealer rows ran without the profile's -d -b) and this
    repository's (the other protocols and dealer): every row the fit uses."""
    if not path.is_file():
        pytest.skip(f"measurements not present: {path}")
    rows = [row for row in current_rows([CSV, PROTOCOL_COSTS] if CSV.is_file() else [PROTOCOL_COSTS])
            if row["source"] == path.name]
    assert len(rows) > least
    deviations = []
    for row in rows:
        cost = predict(row)
        for key, predicted in (("bytes_all", cost.bytes_all), ("bytes_p0", cost.bytes_p0), ("rounds", cost.rounds)):
            # hemi's truncation is local (0 bytes, 0 rounds measured): the model must predict less than one
            rel = abs(predicted - row[key]) / row[key] if row[key] else float(abs(predicted) >= 1)
            deviations.append((rel, key, row["protocol"], row["variant"], row["primitive"], row["n"],
                               row[key], predicted))
    deviations.sort(reverse=True)
    print("\nworst deviations (rel, quantity, protocol, variant, primitive, n, measured, predicted):")
    for dev in deviations[:12]:
        print(f"  {dev[0]:6.1%} {dev[1]:9} {dev[2]:15} {dev[3]:4} {dev[4]:13} {dev[5]:6} {dev[6]:12.6g} {dev[7]:12.6g}")
    failing = [d for d in deviations if d[0] > TOLERANCE]
    assert not failing, f"{len(failing)} of {len(deviations)} figures off by more than 25%: {failing[:5]}"


@pytest.mark.skipif(not CSV.is_file(), reason="measurements not present")
def test_stored_coefficients_are_what_the_fit_produces():
    """fitted.py is the fit's output. The least squares run through LAPACK/BLAS, whose rounding differs by build
    (a coefficient that is 0.0 here is 2.7e-15 elsewhere), and fitted.py keeps 6 significant digits: so each
    coefficient may differ by 1e-5 relative (one unit in the 6th digit) plus 1e-6 absolute (a millionth of a
    byte, round or second: far below anything the model predicts). Keys and the coefficient count are exact."""
    fits = fit(current_rows([CSV, PROTOCOL_COSTS]))
    assert sorted(fits) == sorted(FITS)
    for key, stored in FITS.items():
        assert sorted(fits[key]) == sorted(stored), key
        for name, value in stored.items():
            np.testing.assert_allclose(fits[key][name], value, rtol=1e-5, atol=1e-6, err_msg=f"{key} {name}")


def test_costs_add_and_setup_is_paid_once_per_primitive():
    one = step_cost(Step("mul", 100), "semi2k")
    two = one + one
    assert two.online_rounds == 2 * one.online_rounds
    assert two.variable_bytes_all == pytest.approx(2 * one.variable_bytes_all)
    assert two.setup_rounds == one.setup_rounds  # the first preprocessing batch is shared
    assert sum([one, one]) == two
    mixed = one + step_cost(Step("trunc", 100), "semi2k")
    assert mixed.setup_rounds > one.setup_rounds  # different correlated randomness: both setups


def test_budget_chunks_rounds_and_large_budget_flattens_them():
    small, large = CostProfile(budget=1000), CostProfile(budget=100000)
    assert step_cost(Step("ltz", 65536), small).rounds == 8 * 66  # measured rep3: 528
    assert step_cost(Step("ltz", 65536), large).rounds == 8
    # instances multiply the volume of the one vectorised call
    assert step_cost(Step("ltz", 1000, instances=4), large).bytes_all == pytest.approx(
        step_cost(Step("ltz", 4000), large).bytes_all)


def test_semi2k_matmul_pays_per_scalar_product():
    cost = step_cost(Step("matmul", 65 * 65, (65, 64, 65)), "semi2k")
    assert cost.bytes_all / (65 * 64 * 65) == pytest.approx(3140, rel=0.1)
    rep3 = step_cost(Step("matmul", 65 * 65, (65, 64, 65)), "replicated-ring")
    assert rep3.bytes_all / (65 * 65) == pytest.approx(56, rel=0.1)


def test_short_truncation_under_replicated_ring_is_one_message_between_the_others():
    """Inputs of at most 24 bits: MP-SPDZ's replicated-ring truncates them with a large gap (party 2 sends party 1
    one value each; measured 16,900 values of 19 and 24 bits: 0 bytes and 0 rounds at party 0, 16 B per value all
    parties); 25 bits take the fitted two rounds; the dealer's truncation does not depend on the bits."""
    rep3, dealer = CostProfile(protocol="replicated-ring", budget=100000), CostProfile(protocol="dealer")
    short = step_cost(Step("trunc", 16900, bits=24), rep3)
    assert (short.bytes_p0, short.rounds, short.bytes_all) == (0.0, 0.0, 16.0 * 16900)
    assert step_cost(Step("trunc", 16900, bits=25), rep3) == step_cost(Step("trunc", 16900), rep3)
    assert step_cost(Step("trunc", 16900, bits=25), rep3).rounds == 2
    assert step_cost(Step("trunc", 16900, bits=19), dealer) == step_cost(Step("trunc", 16900), dealer)


def test_latency_uses_rounds_rtt_and_bandwidth():
    cost = step_cost(Step("ltz", 1), "replicated-ring")
    assert cost.latency("wan") - cost.latency("lan") == pytest.approx(
        cost.rounds * (0.040 - 0.0005) + cost.bytes_all * 8 * (1 / 100e6 - 1 / 1e9))


def test_report_rows_totals_table_and_json():
    report = estimate_steps([("layer0.attn", "attention", [Step("matmul", 65 * 65, (65, 16, 65)), Step("relu", 4225)]),
                             ("layer0.mlp", "gelu", [Step("gelu:poly", 8320)])], CostProfile())
    assert [r.name for r in report.rows] == ["layer0.attn", "layer0.mlp"]
    assert report.total.bytes_all == pytest.approx(sum(r.cost.bytes_all for r in report.rows), rel=0.01)
    assert "TOTAL" in report.table() and "layer0.mlp" in report.table()
    data = json.loads(report.to_json())
    assert data["nodes"][1]["op"] == "gelu" and data["total"]["latency_wan_s"] > data["total"]["latency_lan_s"]


def test_cost_table_orders_head_and_mlp_kinds():
    table = cost_table(depth=7, heads=4, dim=256, tokens=65, mlp_ratio=2, protocol="replicated-ring", network="lan",
                       profile=get_profile("replicated-ring",
                                           approx={"exp": "limit", "reciprocal": "newton", "gelu": "poly"}))
    att, mlp = table["attention"], table["mlp"]
    assert att["softmax"] > att["relu_softmax"] > att["scaling"] > 0
    assert mlp["gelu"] > mlp["relu"] > mlp["linear"] > 0
    assert table["unit"] == "seconds" and table["model"]["tokens"] == 65
    json.dumps(table)


def test_unknown_protocol_and_primitive_are_user_errors():
    with pytest.raises(CompileError, match="protocol"):
        step_cost(Step("mul", 1), "mascot")
    with pytest.raises(CompileError, match="primitive"):
        step_cost(Step("frobnicate", 1), "semi2k")


def test_input_and_reveal_messages():
    rep3 = CostProfile(protocol="replicated-ring")
    given = step_cost(Step("input", 10, party=0), rep3)
    assert (given.bytes_all, given.bytes_p0, given.rounds) == (80, 80, 1)  # one share sent, the other a PRG's
    assert step_cost(Step("input", 10, party=0), "semi2k").bytes_all == 0  # measured: PRG-derived shares only
    assert step_cost(Step("input", 10, party=1), rep3).bytes_p0 == 0
    to_client = step_cost(Step("reveal", 10, party=1), rep3)
    assert (to_client.bytes_all, to_client.bytes_p0) == (160, 80)  # parties 0 and 2 send their shares
    assert step_cost(Step("reveal", 10), rep3) == to_client  # the client is the default recipient
    assert step_cost(Step("reveal", 10, party=1), "semi2k").bytes_all == 80


def _compiled_cost(spec_fields: dict, protocol: str, batch: int, folder: Path, out_dir: Path | None = None):
    """The cost model's total for a benchmark program (weights do not change costs: seeded ones are used)."""
    from benchmarks.models import ModelSpec, export_spec
    from benchmarks.pipeline import compile_model

    spec = ModelSpec(spec_fields["model"], spec_fields["attention"], spec_fields["mlp"])
    onnx_path = folder / f"{spec.model}_{spec.attention}_{spec.mlp}.onnx"
    if not onnx_path.is_file():
        export_spec(spec, onnx_path)
    return compile_model(onnx_path, protocol, batch, out_dir).cost.total


def _deviations(cost: Cost, measured: dict) -> dict[str, float]:
    predicted = {"bytes_p0": cost.bytes_p0, "bytes_all": cost.bytes_all, "rounds": cost.rounds}
    return {key: predicted[key] / measured[key] - 1 for key in predicted}


def test_whole_programs_within_25_percent_of_recorded_real_runs(tmp_path):
    """Per-node sums of the fitted formulas against real MP-SPDZ runs of benchmark programs (recorded figures)."""
    programs = json.loads(REAL_PROGRAMS.read_text())["programs"]
    assert {p["protocol"] for p in programs} == {"semi2k", "dealer", "replicated-ring"}
    failing = []
    for measured in programs:
        cost = _compiled_cost(measured, measured["protocol"], measured["batch"], tmp_path)
        deviations = _deviations(cost, measured)
        if measured["online_rounds"]:  # the -v online split: semi2k's online rounds once were twice too many
            deviations["online_rounds"] = cost.online_rounds / measured["online_rounds"] - 1
        name = f"{measured['model']}/{measured['attention']}/{measured['mlp']}/{measured['protocol']}/b{measured['batch']}"
        print(name, {key: f"{value:+.1%}" for key, value in deviations.items()})
        failing += [(name, key, value) for key, value in deviations.items() if abs(value) > TOLERANCE]
    assert not failing, failing


@pytest.mark.parametrize("protocol", ["semi2k", "dealer", "replicated-ring", "rep4-ring", "sy-rep-ring",
                                      "ps-rep-ring", "trio", "astra", "hemi"])
def test_live_program_within_25_percent(mpspdz, tmp_path, protocol):
    """Re-measure one small benchmark program (one layer, all three head kinds) under MP-SPDZ now."""
    from compiler.errors import MPSPDZError
    from compiler.runtime import run
    from compiler.runtime.mpspdz import check_protocol_ready, protocol_spec

    try:
        check_protocol_ready(mpspdz, protocol_spec(protocol))
    except MPSPDZError as exc:
        pytest.skip(str(exc))

    program = {"model": "vit_1_4_8", "attention": "mu0.5", "mlp": "gelu"}
    cost = _compiled_cost(program, protocol, 1, tmp_path, tmp_path / protocol)
    result = run(tmp_path / protocol, protocol, mpspdz=mpspdz, log=lambda message: None)
    deviations = _deviations(cost, {"bytes_p0": result.bytes_party0, "bytes_all": result.global_bytes,
                                    "rounds": result.rounds})
    # trio/astra: the calibration counts each call's rounds by its timers (online party + preprocessing party), a
    # whole run by `Data sent ... rounds`; since their gelu/reciprocal choices changed (poly, newton) this program
    # measures +12% rounds, bytes -7%/-8% (MP-SPDZ 3a0a7b1d): the same 25% as every protocol
    assert all(abs(value) <= TOLERANCE for value in deviations.values()), deviations


# not ps-rep-ring: its per-primitive preprocessing (~100 kB at party 0 per kind) outweighs the 56 kB in question
@pytest.mark.parametrize("protocol", ["replicated-ring", "rep4-ring", "trio", "astra", "sy-rep-ring", "dealer",
                                      "semi2k"])
def test_layernorm_dot_product_is_priced_as_the_engine_pays(mpspdz, tmp_path, protocol):
    """A calibrated LayerNorm forms C·Σx² − (Σx)² as one dot product per row (spdz_templates/nodes/layernorm.mpc.j2):
    replicated-ring, rep4-ring and trio reshare it once per row, the dealer's Beaver products pay per term
    (compiler.cost.primitives.DOT_PER_OUTPUT). Party 0's bytes are within 25 % of the model, and off it by under a
    quarter of what pricing the dot product the other way would change (17 rows of 256: 35 kB under
    replicated-ring)."""
    import torch

    from compiler.api import compile_onnx
    from compiler.cost.primitives import DOT_PER_OUTPUT
    from compiler.runtime import run

    class Norm(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.norm = torch.nn.LayerNorm(256, elementwise_affine=False)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.norm(x).mean(1)

    onnx_path = tmp_path / "norm.onnx"
    torch.onnx.export(Norm().eval(), torch.randn(1, 17, 256), onnx_path, input_names=["x"], output_names=["y"],
                      opset_version=17, dynamo=False)
    compiled = compile_onnx(onnx_path, tmp_path / "out", protocol=protocol)
    dots = [s for p in compiled.program.node_plans for s in p.steps if s.prim == "dot"]
    assert dots == [Step("dot", 17, (257,))]
    # the rows' scaling as one diag(r)·X matrix product where Beaver matrix triples make it cheaper (plans._row_scaling)
    norm = next(p for p in compiled.program.node_plans if p.node.op == "layernorm")
    assert norm.params["diagonal_scaling"] == (protocol == "dealer")
    result = run(tmp_path / "out", protocol, mpspdz=mpspdz, log=lambda message: None)
    # against float LayerNorm: the mean of 17 normalised values, a few LSB (2^-16) of fixed-point rounding each
    assert result.max_logit_error is not None and result.max_logit_error < 1e-3, result.max_logit_error
    profile = compiled.program.profile
    per_output, per_term = (step_cost(Step("mul_int", n), profile).bytes_p0 for n in (17, 17 * 257))
    other = compiled.cost.total.bytes_p0 + (per_term - per_output if protocol in DOT_PER_OUTPUT
                                            else per_output - per_term)
    measured = result.bytes_party0
    assert abs(compiled.cost.total.bytes_p0 / measured - 1) <= TOLERANCE, (compiled.cost.total.bytes_p0, measured)
    # the measurement follows the model's pricing: off it by under a quarter of what the other pricing changes
    assert abs(compiled.cost.total.bytes_p0 - measured) < abs(other - compiled.cost.total.bytes_p0) / 4, \
        (compiled.cost.total.bytes_p0, other, measured)


def test_shared_weights_leave_party_0s_weight_input_out_of_the_estimate():
    """`mpcvit run --weights shared` reads each party's weight shares: the estimate drops party 0's weight input,
    8 B a weight under replicated-ring (one ring element to one party) and its one round; nothing else changes."""
    import tiny_vit_ir
    from compiler.cost.report import estimate
    from compiler.lowering import get_profile, lower

    program = lower(tiny_vit_ir.build(batch=1), get_profile("replicated-ring"))
    full, shared = estimate(program).total, estimate(program, shared_weights=True).total
    weights = sum(s.n for steps in program.plans.values() for s in steps if s.prim == "weights")
    assert weights == sum(v.size for v in program.graph.values.values() if v.role == "param" and v.data is not None
                          and any(v.name in p.node.inputs for p in program.node_plans))
    # the totals are float sums of every step's bytes: equal up to their rounding (~1e-11 here)
    assert full.bytes_p0 - shared.bytes_p0 == pytest.approx(8 * weights, abs=1e-6)
    assert full.bytes_all - shared.bytes_all == pytest.approx(8 * weights, abs=1e-6)
    assert full.rounds - shared.rounds == 1


def test_layernorm_row_scaling_is_one_matrix_product_where_beaver_triples_make_it_cheaper(tmp_path):
    """diag(r)·X opens rows² + rows·cols values of a Beaver matrix triple against 2·rows·cols for element-wise
    products: the dealer takes it (party 0 pays fewer bytes in fewer rounds), replicated-ring and trio, whose
    products reshare each output once either way, keep the element-wise form (plans._row_scaling)."""
    import torch

    from compiler.api import compile_onnx

    onnx_path = tmp_path / "norm.onnx"
    torch.onnx.export(torch.nn.Sequential(torch.nn.LayerNorm(64, elementwise_affine=False), torch.nn.Linear(64, 8)),
                      torch.randn(1, 17, 64), onnx_path, input_names=["x"], output_names=["y"], opset_version=17,
                      dynamo=False)
    for protocol, diagonal in (("dealer", True), ("replicated-ring", False), ("trio", False)):
        program = compile_onnx(onnx_path, tmp_path / protocol, protocol=protocol).program
        norm = next(p for p in program.node_plans if p.node.op == "layernorm")
        scaling = norm.steps[-1]
        assert norm.params["diagonal_scaling"] == diagonal and scaling.prim == ("matmul_int" if diagonal else "mul_int")
        if diagonal:  # party 0 opens 17² + 17·64 values instead of 2·17·64, 8 B each
            elementwise = Step("mul_int", scaling.n)
            saved = step_cost(elementwise, program.profile).variable_bytes_p0 - \
                step_cost(scaling, program.profile).variable_bytes_p0
            assert saved == pytest.approx(8 * (17 * 64 - 17 * 17), rel=0.05)


def test_comparisons_against_several_thresholds_share_one_mask_where_the_protocol_opens_one():
    """An ltz step of shape (J,) compares each value with J thresholds through one masked opening (helpers'
    mpcvit_below): under the dealer each value's further J − 1 comparisons skip their ring element from each
    computing party (8 B at party 0, measured); protocols whose comparisons split shares (-Z, MP-SPDZ's default for
    replicated-ring, semi2k, ...) open no mask and pay as before."""
    from compiler.cost.primitives import SHARED_MASK_SAVING

    assert set(SHARED_MASK_SAVING) == {"dealer"}
    for protocol in ("dealer", "replicated-ring", "semi2k"):
        separate, shared = (step_cost(Step("ltz", 71 * 65, shape, bits=26), protocol) for shape in ((), (71,)))
        saved = SHARED_MASK_SAVING.get(protocol, (0.0, 0.0))
        assert separate.bytes_p0 - shared.bytes_p0 == pytest.approx(saved[0] * 70 * 65)
        assert separate.bytes_all - shared.bytes_all == pytest.approx(saved[1] * 70 * 65)
        assert separate.rounds == shared.rounds
