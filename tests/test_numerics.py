"""Numerics that adapt to the model (issue 9): calibrated ranges, scale-aware LayerNorm, the client's input guard."""
from __future__ import annotations

import re
import sys

import numpy as np
import pytest

from benchmarks.fidelity import attention_graph, equal_scores, layernorm_graph, relu_rows, tokens
from compiler.calibrate import calibrate, check_client_images
from compiler.cost import Step
from compiler.cost.report import estimate
from compiler.errors import FixedPointRangeError, UserError
from compiler.ir import Graph, Node, Value
from compiler.lowering import get_profile, lower
from compiler.lowering.plans import LayerNormScale
from compiler.lowering.profiles import SEMI_HONEST_CORE

# the three semi-honest protocols cover both truncations (generic, trunc_pr); the others share them
PROTOCOLS = SEMI_HONEST_CORE
from compiler.reference import execute


def torch_layernorm(x: np.ndarray, g: Graph, eps: float) -> np.ndarray:
    torch = pytest.importorskip("torch")
    ln = torch.nn.LayerNorm(x.shape[-1], eps=eps, dtype=torch.float64)
    with torch.no_grad():
        ln.weight.copy_(torch.from_numpy(g.values["gamma"].data))
        ln.bias.copy_(torch.from_numpy(g.values["beta"].data))
        return ln(torch.from_numpy(x)).numpy()


@pytest.mark.parametrize("protocol", list(PROTOCOLS))
@pytest.mark.parametrize("std", [100.0, 0.01])
def test_layernorm_is_scale_aware_on_every_protocol(protocol, std):
    """LayerNorm(192, eps=1e-6) within 1e-2 of torch for tokens of std 100 (variance 1e4, beyond the comparison
    range 2^14 unscaled) and std 0.01 (variance 1e-4: 6.5 LSB unscaled). The 1e-2 is the issue's bar; the scaled
    computation's own error is ~1e-3 (relative precision of the rsqrt ~1e-4, times |y| up to ~5·|γ|)."""
    eps = 1e-6
    g = layernorm_graph(4, 17, 192, eps)
    calib = calibrate(g, tokens(std, 32, seed=1), "tokens")
    program = lower(calib.annotate(g), get_profile(protocol))
    x = tokens(std, 4, seed=2)  # other tokens than the calibration ones
    ours = execute(program, {"x": x}).outputs["y"]
    err = float(np.abs(ours - torch_layernorm(x, g, eps)).max())
    assert err < 1e-2, err
    scale = next(p.params["scale"] for p in program.node_plans if p.node.op == "layernorm")
    assert (scale.sigma < 1) == (std > 1)  # scaled down to stay in range, up to keep the small variance's bits
    # C²·var of std-100 rows (2^32.5 at 2f bits) leaves no room in the ring for the exact moments
    assert scale.moments == (std < 1)


def plain(g: Graph) -> Graph:
    """γ = 1, β = 0, as after :func:`compiler.passes.fold_layernorm_affine`."""
    for name, value in (("gamma", 1.0), ("beta", 0.0)):
        g.values[name].data = np.full_like(g.values[name].data, value)
    return g


@pytest.mark.parametrize("affine", [True, False])
def test_layernorm_moments_are_exact_though_their_terms_wrap(affine):
    """Tokens of mean 5000: x² (2^56 at 2f bits) summed and times C wrap mod 2^64, C·Σx² − (Σx)² = C²·var does not,
    so the variance needs no mean. Within 1e-3 of torch: the rsqrt's relative precision ~1e-5 times |y| ≤ 5, plus
    one LSB of σ²·var (σ = C/2^g puts the variance near 2^8: 4e-3 % of it) and of σ·(x − mean)·γ. Without γ, β
    (folded into the next linears) one product: trunc((C·x − Σx)·rsqrt, f + g)."""
    g = layernorm_graph(2, 17, 192, 1e-6) if affine else plain(layernorm_graph(2, 17, 192, 1e-6))
    rng = np.random.default_rng(5)
    make = lambda n: 5000 + rng.standard_normal((n, 17, 192))  # noqa: E731
    program = lower(calibrate(g, make(8), "tokens").annotate(g), get_profile("replicated-ring"))
    plan = next(p for p in program.node_plans if p.node.op == "layernorm")
    assert plan.params["scale"].moments and plan.steps[-1] == Step("mul", 2 * 17 * 192)
    # with γ: x², (Σx)² and (C·x − Σx)·γ in one call; without, C·Σx² − (Σx)² as one dot product per row
    products = next(s for s in plan.steps if s.prim in ("mul_int", "dot"))
    assert plan.params["affine"] == affine and products == (Step("mul_int", 2 * 2 * 17 * 192 + 2 * 17) if affine
                                                            else Step("dot", 2 * 17, (192 + 1,)))
    x = make(2)
    assert np.abs(execute(program, {"x": x}).outputs["y"] - torch_layernorm(x, g, 1e-6)).max() < 1e-3


def test_uncalibrated_layernorm_is_the_unscaled_computation():
    g = layernorm_graph(2, 17, 192, 1e-5)
    program = lower(g, get_profile("replicated-ring"))
    plan = next(p for p in program.node_plans if p.node.op == "layernorm")
    # 1/C = 341·2^-16, ε = 1 LSB
    assert plan.params["scale"] == LayerNormScale(centre_mul=341, var_mul=341, eps_int=1)
    assert plan.approx["rsqrt"].params == ()  # the rsqrt's default domain


def test_calibrated_layernorm_costs_no_more_on_normal_tokens():
    """Tokens of std ~1: no pre-scale truncation, and the rsqrt's calibrated domain needs fewer comparisons than
    the default one (its segments are log2(hi/lo))."""
    from compiler.cost import estimate

    g = layernorm_graph(1, 65, 256, 1e-6)
    plain = estimate(lower(g, get_profile("replicated-ring"))).total
    calib = calibrate(g, tokens(1.0, 8, seed=3, n=65, dim=256))
    scaled = estimate(lower(calib.annotate(g), get_profile("replicated-ring"))).total
    assert scaled.bytes_all <= plain.bytes_all and scaled.rounds <= plain.rounds


def test_client_refuses_unnormalised_images_in_one_line():
    g = layernorm_graph(1, 17, 192, 1e-6)
    calib = calibrate(g, tokens(1.0, 8, seed=4))
    manifest = {"calibration": calib.as_dict(), "model_config": {"mpcvit.input_mean": 0.5, "mpcvit.input_std": 0.25}}
    check_client_images(manifest, tokens(1.0, 1, seed=5))  # in range: nothing
    bound = calib.as_dict()["input_bound"]
    with pytest.raises(UserError, match=rf"^the images: image values reach 255, beyond the \|v\| <= {bound:.3g} the "
                                        r"program accepts \(calibrated on \[-\d.*\], with its margin\): normalise "
                                        r"them as in training \(mean 0.5, std 0.25 in the "
                                        r"model metadata\), or recompile calibrated on images like these"):
        check_client_images(manifest, np.full((1, 17, 192), 255.0))
    # without normalisation metadata the line names none
    with pytest.raises(UserError, match=r"^--data x.npz: .*normalise them as in training, or recompile"):
        check_client_images({"calibration": calib.as_dict()}, np.full((1, 17, 192), 255.0), "--data x.npz")


def test_vit_given_0_255_images_stops_before_any_party_starts(tmp_path, monkeypatch, capsys):
    """`mpcvit run --data` with raw [0, 255] pixels into a digits ViT compiled with the default calibration: one
    line, exit 2, and no party started (the fake parties would crash with another message)."""
    models = pytest.importorskip("benchmarks.models")
    fake = pytest.importorskip("test_runtime_processes")
    from compiler.api import compile_onnx
    from mpcvit.cli import main

    path = models.export_spec(models.ModelSpec("vit_1_4_8", attention="mu0.5"), tmp_path / "digits.onnx")
    out = tmp_path / "out"
    compile_onnx(path, out, protocol="replicated-ring", batch=1)
    home = tmp_path / "MP-SPDZ"  # the fake tree of test_runtime_processes: parties that print as MP-SPDZ's do
    (home / "Compiler").mkdir(parents=True)
    (home / "Player-Data").mkdir()
    for i in range(3):
        (home / "Player-Data" / f"P{i}.pem").write_text("cert")
    for name, text in [("compile.py", fake.FAKE_COMPILE), ("replicated-ring-party.x", fake.FAKE_PARTY)]:
        (home / name).write_text(text.replace("PYTHON", sys.executable))
        (home / name).chmod(0o755)
    monkeypatch.setenv("MP_SPDZ_HOME", str(home))
    monkeypatch.setenv("FAKE_MODE", "crash")
    raw = np.random.default_rng(0).integers(0, 256, (3, 1, 8, 8)).astype(np.float64)
    raw[0, 0, 0, 0] = 255
    np.savez(tmp_path / "raw.npz", x=raw, y=np.zeros(3, dtype=np.int64))
    with pytest.raises(SystemExit) as exc:
        main(["run", str(out), "--data", str(tmp_path / "raw.npz")])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: --data {tmp_path / 'raw.npz'}: image values reach 255, "
                                               f"beyond the |v| <= ")
    assert "with its margin): normalise them as in training (mean [0.3], std [0.4] in the model metadata), or recompile" in err[0]
    assert not (home / "compiled.txt").exists()  # not even compile.py ran


def test_check_reports_where_the_error_grows(tmp_path):
    models = pytest.importorskip("benchmarks.models")
    from compiler.api import compile_onnx

    path = models.export_spec(models.ModelSpec("vit_1_4_8", attention="mu0.5"), tmp_path / "digits.onnx")
    result = compile_onnx(path, tmp_path / "out", protocol="dealer", check=True, check_samples=8)
    report = result.check
    worst = report.worst_growth
    assert worst is not None and worst.growth == max(e.growth for e in report.layers) and worst.growth > 1
    assert f"error grows most at {worst.name} ({worst.op})" in report.table()
    assert report.as_dict()["error_grows_most_at"] == worst.name
    # a layer that only moves values (the cls/patch concatenation) adds no error: its growth is exactly 1
    assert next(e for e in report.layers if e.op == "layout").growth == 1.0
    manifest = result.manifest.as_dict()["calibration"]
    assert manifest["samples"] == 32 and manifest["margin"] == 4.0 and manifest["input_bound"] > 0
    ln = next(c for c in manifest["choices"].values() if "prescale" in c)
    assert ln["rsqrt"]["approx"] == "rsqrt:newton" and ln["rsqrt"]["eps"] < ln["rsqrt"]["hi"]


@pytest.mark.parametrize("protocol", list(PROTOCOLS))
def test_relu_softmax_rows_with_sums_up_to_1e4_sum_to_1(protocol):
    """Row sums of ReLU-softmax probabilities within 1e-3 of 1 (unscaled: 7.6e-2, as 1/10^4 keeps 6.5 LSBs)."""
    g = attention_graph("relu_softmax", 197)
    calib = calibrate(g, np.concatenate([relu_rows(s) for s in range(4)]))
    assert calib.sites["att"]["relu_sums"][1] > 1e4
    program = lower(calib.annotate(g), get_profile(protocol))
    sums = execute(program, {"x": relu_rows(9)}).outputs["y"]
    assert np.abs(sums - 1).max() < 1e-3
    scale = next(p for p in program.node_plans if p.node.op == "attention").params["relu_softmax.scale"]
    assert scale.trunc > 0 and scale.shift > 0  # sums·4 leave the comparison range: truncated, then shifted


@pytest.mark.parametrize("protocol", list(PROTOCOLS))
def test_softmax_rows_of_1024_equal_scores_sum_to_1(protocol):
    """1024 equal scores: every probability is 1/1024 (64 LSBs). The row sum is within 1e-3 of 1 when the
    reciprocal of 1024 is (its output 2^q/1024 keeps 2^q times the 64 LSBs of 1/1024). A row of N = 1000 would
    show the reference's nearest rounding of p itself: 65.54 LSBs -> 66, 0.7 % over 1000 equal terms (MPC's
    probabilistic truncation rounds each term up or down at random, so its sum stays near 1)."""
    g = attention_graph("softmax", 1024, d=2)
    x = equal_scores(1024)
    sums = execute(lower(g, get_profile(protocol)), {"x": x}).outputs["y"]
    assert np.abs(sums - 1).max() < 1e-3


def flat_output(g: Graph) -> None:
    """Reveal ``y`` as [1, size] (the backend reveals 2-D outputs) through a free reshape layout."""
    size = g.values["y"].size
    g.add_value(Value("flat", (1, size)))
    out = next(n for n in g.nodes if n.op == "output")
    g.nodes.insert(g.nodes.index(out), Node("layout", ["y"], ["flat"], {"index": np.arange(size).reshape(1, size)},
                                            name="flat"))
    out.inputs, g.outputs = ["flat"], ["flat"]


@pytest.mark.mpspdz
@pytest.mark.parametrize("protocol", list(PROTOCOLS))
def test_scaled_templates_match_the_reference_under_mp_spdz(mpspdz, tmp_path, protocol):
    """The scale-aware LayerNorm (exact centring scaled down for std 100; exact moments for std 0.01 and for
    mean-5000 tokens, whose terms wrap in the ring) and the shifted ReLU-softmax denominators under real MP-SPDZ,
    against the reference executor. 1e-2: the engine's probabilistic truncation differs by <= 1 LSB per truncation
    (DESIGN.md); one LSB of σ²·var or of the rsqrt's guess moves y by its relative size times |y| <= ~5 (measured
    before the moments: <= 3.9e-3 for std 0.01, <= 1.6e-4 for std 100, <= 3.6e-4 for the ReLU-softmax rows, on all
    three protocols). The cost model prices each LayerNorm within the project's ±25 %: its program's rounds and
    bytes less those of the same input revealed without it, measured and modelled alike."""
    from compiler.backend import emit
    from compiler.runtime.runner import run

    def measure(g: Graph, name: str, make):
        program = lower(calibrate(g, np.concatenate([make(s) for s in range(4)])).annotate(g), get_profile(protocol),
                        name=name)
        x = make(11)
        emit(program, tmp_path / f"{protocol}-{name}", client_images=x)
        return program, x, run(tmp_path / f"{protocol}-{name}", mpspdz=mpspdz, log=lambda _: None)

    def figures(result) -> np.ndarray:
        return np.array([result.rounds, result.bytes_party0, result.global_bytes], dtype=float)

    alone = Graph()  # the same input, revealed as the LayerNorm cases reveal theirs
    for value in (Value("x", (1, 17, 192)), Value("y", (1, 17, 192))):
        alone.add_value(value)
    alone.add_node(Node("input", [], ["x"], {"owner": 1}, name="x"))
    alone.add_node(Node("layout", ["x"], ["y"], {"index": np.arange(17 * 192).reshape(1, 17, 192)}, name="same"))
    alone.add_node(Node("output", ["y"], [], name="output"))
    alone.inputs, alone.outputs = ["x"], ["y"]
    flat_output(alone)
    base_program, _, base_result = measure(alone, "alone", lambda s: tokens(1.0, 1, s))
    base, base_model = figures(base_result), estimate(base_program).total

    cases = {"ln_big": (layernorm_graph(1, 17, 192, 1e-6), lambda s: tokens(100.0, 1, s)),
             "ln_small": (layernorm_graph(1, 17, 192, 1e-6), lambda s: tokens(0.01, 1, s)),
             # exact moments whose terms (x² of mean-5000 tokens, summed) wrap mod 2^64 in the engine's ring
             "ln_offset": (layernorm_graph(1, 17, 192, 1e-6), lambda s: 5000 + tokens(1.0, 1, s)),
             "ln_plain": (plain(layernorm_graph(1, 17, 192, 1e-6)), lambda s: tokens(1.0, 1, s)),  # γ, β folded
             "relu": (attention_graph("relu_softmax", 197), relu_rows)}
    for name, (g, make) in cases.items():
        flat_output(g)
        program, x, result = measure(g, name, make)
        expected = execute(program, {"x": x}).outputs["flat"]
        assert np.abs(result.logits.reshape(1, -1) - expected).max() <= 1e-2, name
        if name.startswith("ln"):
            # the program's model less the base's: the LayerNorm and the round in which party 0 inputs γ, β
            total = estimate(program).total
            model = np.array([total.rounds - base_model.rounds, total.bytes_p0 - base_model.bytes_p0,
                              total.bytes_all - base_model.bytes_all])
            measured = figures(result) - base
            print(f"{protocol} {name}: LayerNorm measured (rounds, P0 bytes, all bytes) {measured}, model {model}")
            assert np.all(np.abs(model / measured - 1) <= 0.25), (name, measured, model)


def test_fidelity_benchmark_fast_sections_meet_their_bars():
    """`python -m benchmarks.fidelity --only layernorm rows random` on a small random ViT: every row meets the
    issue's bar and the table prints them (the digits section trains models, minutes: the benchmark only)."""
    from benchmarks import fidelity

    args = fidelity.parser().parse_args(["--only", "layernorm", "rows", "random", "--shape", "vit_2_4_8",
                                         "--depths", "2", "3", "--random-images", "2"])
    rows = fidelity.run(args, lambda m: None)
    assert {r["section"] for r in rows} == {"layernorm", "rows", "random"}
    assert len(rows) == 3 * (2 + 2 + 2)  # per protocol: 2 LayerNorm cases, 2 row cases, 2 depths
    assert all(fidelity.passes(r) for r in rows), fidelity.table(rows)
    assert "LayerNorm(192) std 100" in fidelity.table(rows) and " NO" not in fidelity.table(rows)


def test_fidelity_benchmark_bad_flags_are_one_line(capsys):
    from benchmarks import fidelity

    with pytest.raises(SystemExit) as exc:
        fidelity.main(["--only", "rows", "--random-images", "0"])
    assert exc.value.code == 2
    assert capsys.readouterr().err.strip() == "error: --random-images 0: give a positive number"


def test_compile_cli_calibrates_on_a_given_file(tmp_path, capsys):
    models = pytest.importorskip("benchmarks.models")
    from compiler.cli import main

    path = models.export_spec(models.ModelSpec("vit_1_4_8", attention="mu0.5"), tmp_path / "digits.onnx")
    images = np.random.default_rng(0).uniform(-1, 2, (5, 1, 8, 8))
    np.savez(tmp_path / "calib.npz", x=images)
    assert main([str(path), "-o", str(tmp_path / "out"), "--calibrate", str(tmp_path / "calib.npz")]) == 0
    out = capsys.readouterr().out
    assert f"calibrated on 5 inputs (--calibrate {tmp_path / 'calib.npz'})" in out
    np.savez(tmp_path / "wrong.npz", x=images[:, :, :4])
    for bad, message in ((tmp_path / "missing.npz", "no such file"),
                         (tmp_path / "wrong.npz", r"calibration images have shape \(5, 1, 4, 8\); the model takes")):
        with pytest.raises(SystemExit) as exc:
            main([str(path), "-o", str(tmp_path / "out2"), "--calibrate", str(bad)])
        assert exc.value.code == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and re.search(message, err), err


def test_inputs_beyond_the_calibrated_layernorm_domain_fail_in_the_reference():
    """Tokens 100x beyond the calibration (variance 10^4 x, beyond the 16x margin): the reference refuses rather
    than let the rsqrt's Newton start diverge, and names the remedy."""
    g = layernorm_graph(1, 17, 192, 1e-6)
    program = lower(calibrate(g, tokens(1.0, 8, seed=6)).annotate(g), get_profile("replicated-ring"))
    execute(program, {"x": tokens(2.0, 1, seed=7)})  # within the margin
    with pytest.raises(FixedPointRangeError, match=r"tensor y \(layernorm variance scaled by .*\) reaches .* above "
                                                   r"the calibrated rsqrt domain top .*--calibrate"):
        execute(program, {"x": tokens(100.0, 1, seed=7)})


def test_calibration_names_ops_it_cannot_evaluate():
    from compiler.errors import CompileError

    g = layernorm_graph(1, 17, 192, 1e-6)
    next(n for n in g.nodes if n.op == "layernorm").op = "sin"  # no IR kind, no float kernel
    with pytest.raises(CompileError, match=r"^the model uses op\(s\) sin, which the float evaluator"):
        calibrate(g, tokens(1.0, 2, seed=0))


def pooled_graph(head: bool, n: int = 197, c: int = 64, classes: int = 10) -> Graph:
    """input x [1, N, C] -> token mean -> (a linear head with weights ~ N(0, 1/C) ->) output."""
    g = Graph()
    g.add_value(Value("x", (1, n, c)))
    g.add_node(Node("input", [], ["x"], {"owner": 1}, name="x"))
    g.inputs.append("x")
    g.add_value(Value("m", (1, c)))
    g.add_node(Node("reduce_mean", ["x"], ["m"], {"axes": [1], "keepdims": False}, name="pool"))
    out = "m"
    if head:
        w = np.random.default_rng(0).standard_normal((c, classes)) / np.sqrt(c)
        g.add_value(Value("w", (c, classes), "param", w))
        g.add_value(Value("y", (1, classes)))
        g.add_node(Node("linear", ["m", "w"], ["y"], {}, name="head"))
        out = "y"
    g.add_node(Node("output", [out], [], name="output"))
    g.outputs.append(out)
    return g


def pooled_tokens(batch: int, seed: int, mean: float = 100.0) -> np.ndarray:
    """197 tokens of 64 values around ``mean`` (std 10): a token sum of ~19,700, beyond the range 2^14 at f = 16."""
    return np.random.default_rng(seed).standard_normal((batch, 197, 64)) * 10 + mean


@pytest.mark.parametrize("head", [True, False], ids=["pooled-head", "mean"])
def test_token_mean_whose_sum_leaves_the_range_is_accurate(head):
    """Mean pooling of 197 tokens around 100: the sum (~19,700) leaves the range 2^14. It never overflowed (the
    ring holds it, and nothing compares it), but the 1/N was lost precision: folded into the head as W/197 at f
    bits the logits were 1.85 off on a scale of 254 (0.7 %), and a mean's 1/197 = 333·2^-16 put it 0.1 off. Now
    the pooled sum is pre-scaled by 2^-8 with 2^8/197 in the weights, and a mean takes its constant's extra bits
    and a pre-scale from the calibrated range: within 1e-2 of float (5e-3 measured), on every protocol."""
    from compiler.passes import run_passes

    g = run_passes(pooled_graph(head))
    assert [n.op for n in g.nodes] == ["input", "reduce_sum" if head else "reduce_mean", *(["linear"] * head),
                                       "output"]
    calib = calibrate(g, pooled_tokens(4, seed=0))
    x = pooled_tokens(1, seed=1)
    for protocol in PROTOCOLS:
        program = lower(calib.annotate(g), get_profile(protocol))
        result = execute(program, {"x": x})
        out = g.outputs[0]
        assert np.abs(result.outputs[out] - result.float_outputs[out]).max() < 1e-2
    mean = program.node_plans[1]
    if head:
        assert mean.node.attrs["shift"] == 8  # ⌈log2 197⌉: the pre-scaled sum has the mean's magnitude
    else:  # a mean's constant: extra bits and a pre-scale; the manifest records them
        scale = mean.params["mean.scale"]
        assert scale.shift == 8 and scale.bits > 0
        assert calib.as_dict(program)["choices"]["pool"]["mean_prescale"]["shift"] == 8


@pytest.mark.mpspdz
@pytest.mark.parametrize("protocol", list(PROTOCOLS))
def test_prescaled_means_match_the_reference_under_mp_spdz(mpspdz, tmp_path, protocol):
    """The pre-scaled pooled sum and the calibrated mean under real MP-SPDZ, against the reference: within 1e-3
    (each adds one or two probabilistic truncations, <= 1 LSB each, times the head's weights: measured 3e-5)."""
    from compiler.backend import emit
    from compiler.passes import run_passes
    from compiler.runtime.runner import run

    for head in (True, False):
        g = run_passes(pooled_graph(head))
        program = lower(calibrate(g, pooled_tokens(4, seed=0)).annotate(g), get_profile(protocol), name="pool")
        x = pooled_tokens(1, seed=1)
        expected = execute(program, {"x": x}).outputs[g.outputs[0]]
        emit(program, tmp_path / f"pool{head}", client_images=x)
        result = run(tmp_path / f"pool{head}", mpspdz=mpspdz, log=lambda _: None)
        assert np.abs(result.logits.reshape(expected.shape) - expected).max() < 1e-3


def test_ops_outside_their_domain_are_named_once(tmp_path, recwarn):
    """1/mean and sqrt(mean) of N(0, 1) images: the mean crosses zero, where onnxruntime gives inf and NaN; the
    compiler names each node in one warning line (manifest and CLI) instead of numpy's RuntimeWarnings."""
    torch = pytest.importorskip("torch")
    from compiler.api import compile_onnx

    class MeanOps(torch.nn.Module):
        def forward(self, x):
            m = x.flatten(1).mean(1)
            return torch.stack([1.0 / m, torch.sqrt(m), torch.sqrt(m * m + 1.0)], 1)

    path = tmp_path / "mean_ops.onnx"
    torch.onnx.export(MeanOps().eval(), (torch.randn(1, 3, 8, 8),), str(path), dynamo=False,
                      input_names=["image"], output_names=["logits"])
    warnings = compile_onnx(path, tmp_path / "out", check=True, check_samples=8).manifest.warnings
    flagged = [w for w in warnings if "the MPC result is meaningless" in w]
    assert len(flagged) == 2  # sqrt(m*m + 1) stays in its domain
    assert any("(reciprocal)" in w and "crosses zero" in w for w in flagged)
    assert any("(sqrt)" in w and "below zero" in w for w in flagged)
    assert not [w for w in recwarn if issubclass(w.category, RuntimeWarning)]


def test_calibration_without_a_range_and_check_inputs_the_client_refuses(tmp_path):
    torch = pytest.importorskip("torch")
    from compiler.api import compile_onnx

    path = tmp_path / "linear.onnx"
    torch.onnx.export(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(48, 4)).eval(), (torch.randn(1, 3, 4, 4),),
                      str(path), dynamo=False, input_names=["image"], output_names=["logits"],
                      dynamic_axes={"image": {0: "b"}, "logits": {0: "b"}})
    np.savez(tmp_path / "zeros.npz", x=np.zeros((8, 3, 4, 4)))
    with pytest.raises(UserError, match=r"calibration images \(--calibrate .*zeros.npz\) are all the same value \(0\)"):
        compile_onnx(path, tmp_path / "out", calibration=tmp_path / "zeros.npz")
    # calibrated on |v| <= 0.1 (the client then accepts |v| <= 0.4), checked on N(0, 1) inputs
    np.savez(tmp_path / "small.npz", x=np.random.default_rng(0).uniform(-0.1, 0.1, (8, 3, 4, 4)))
    result = compile_onnx(path, tmp_path / "out", calibration=tmp_path / "small.npz", check=True, check_samples=6)
    assert any(w.startswith("6 of the 6 --check inputs exceed |v| 0.4") and "`mpcvit run` refuses them" in w
               for w in result.manifest.warnings), result.manifest.warnings


def layernorm_linear_graph(residual: bool, dim: int = 192) -> Graph:
    """x [1, 17, C] -> LayerNorm (γ = 1, β = 0: folded) -> n -> linear(C, C) -> h, and with ``residual``
    y = n + h (MPCViT's blocks add the normalised value back) else y = h."""
    rng = np.random.default_rng(7)
    g = plain(layernorm_graph(1, 17, dim, 1e-6))
    g.values["n"] = g.values.pop("y")
    g.values["n"].name = "n"
    ln = next(node for node in g.nodes if node.op == "layernorm")
    ln.outputs = ["n"]
    g.add_value(Value("w", (dim, dim), "param", rng.standard_normal((dim, dim)) / np.sqrt(dim)))
    g.add_value(Value("b", (dim,), "param", 0.1 * rng.standard_normal(dim)))
    g.add_value(Value("h" if residual else "y", (1, 17, dim)))
    out = next(node for node in g.nodes if node.op == "output")
    g.nodes.insert(g.nodes.index(out), Node("linear", ["n", "w", "b"], ["h" if residual else "y"], name="fc"))
    if residual:
        g.add_value(Value("y", (1, 17, dim)))
        g.nodes.insert(g.nodes.index(out), Node("add", ["n", "h"], ["y"], name="residual"))
    g.outputs = ["y"]
    return g


@pytest.mark.parametrize("residual", [False, True])
def test_layernorm_hands_its_untruncated_output_to_the_next_linear(residual):
    """plans.RawInput: the LayerNorm's last product is local and the linear truncates once for both, by 2f + g.
    Against the same program without the fusion (the linear's calibrated product bound removed): the residual
    add sees the very same integers (R·2^f truncated by 2f + g is trunc(R, f + g)); the linear's output differs
    only by the LayerNorm's rounding it no longer makes, ≤ 0.5 LSB times Σ|w| per output (~11 LSB here) + 1."""
    g = layernorm_linear_graph(residual)
    calibrate(g, tokens(1.0, 4, seed=1), "tokens").annotate(g)
    fused = lower(g, get_profile("replicated-ring"))
    ln, fc = (next(p for p in fused.node_plans if p.node.op == op) for op in ("layernorm", "linear"))
    raw, fx = fc.params["raw_input"], fused.profile.fx
    assert ln.params["raw_output"] and ln.steps[-1] == Step("mul_int", 17 * 192)
    assert raw.shift == 2 * fx.f + ln.params["scale"].shift and raw.bits <= 62
    assert (raw.truncate is not None) == residual
    assert [s for s in fc.steps if s.parallel] == [Step("trunc", 17 * 192, parallel=True)] * residual
    fc.node.attrs["calibration"].pop("product_abs")
    alone = lower(g, get_profile("replicated-ring"))
    assert not any(p.params.get("raw_output") for p in alone.node_plans)
    assert estimate(fused).total.rounds == estimate(alone).total.rounds - 2  # the LayerNorm's truncation
    x = tokens(1.0, 1, seed=3)
    ours, theirs = execute(fused, {"x": x}), execute(alone, {"x": x})
    assert np.array_equal(ours.ints["n"], theirs.ints["n"])
    bound = 0.5 * np.abs(g.values["w"].data).sum(0).max() + 1
    assert np.abs(ours.ints["y" if not residual else "h"] - theirs.ints["y" if not residual else "h"]).max() <= bound
    assert np.abs(ours.outputs["y"] - ours.float_outputs["y"]).max() < 5e-3  # ~ the unfused program's error


def test_layernorm_keeps_its_truncation_when_the_product_would_leave_the_ring():
    """A linear whose products reach 2^12 would need 12 + 3f + g + 1 > 62 bits untruncated: no fusion."""
    g = layernorm_linear_graph(False)
    calibrate(g, tokens(1.0, 4, seed=1), "tokens").annotate(g)
    next(n for n in g.nodes if n.op == "linear").attrs["calibration"]["product_abs"] = 2.0 ** 12
    program = lower(g, get_profile("replicated-ring"))
    ln = next(p for p in program.node_plans if p.node.op == "layernorm")
    assert not ln.params["raw_output"] and ln.steps[-1] == Step("mul", 17 * 192)


@pytest.mark.mpspdz
@pytest.mark.parametrize("protocol", list(PROTOCOLS))
def test_fused_layernorm_linear_matches_the_reference_under_mp_spdz(mpspdz, tmp_path, protocol):
    """LayerNorm → linear (+ the residual add of the normalised value) with the fused truncation under real
    MP-SPDZ against the reference. 1e-2 as for the LayerNorm alone: the engine's probabilistic truncation differs
    by <= 1 LSB per truncation, moving y by a few LSB through the rsqrt (measured <= 3e-4)."""
    from compiler.backend import emit
    from compiler.runtime.runner import run

    g = layernorm_linear_graph(True)
    flat_output(g)
    program = lower(calibrate(g, tokens(1.0, 4, seed=1), "tokens").annotate(g), get_profile(protocol), name="lnfc")
    assert next(p for p in program.node_plans if p.node.op == "linear").params["raw_input"].truncate
    x = tokens(1.0, 1, seed=3)
    emit(program, tmp_path / "out", client_images=x)
    result = run(tmp_path / "out", mpspdz=mpspdz, log=lambda _: None)
    assert np.abs(result.logits.reshape(1, -1) - execute(program, {"x": x}).outputs["flat"]).max() <= 1e-2
