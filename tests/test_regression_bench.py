"""The CI regression benchmark: its comparison rules, and the real check against benchmarks/baseline.json."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import regression
from benchmarks.regression import compare, table

BASE = {"m/semi2k": {"cost_rounds": 100, "cost_bytes_p0": 5000, "reference_max_error": 1e-4, "compile_s": 0.5,
                     "real_rounds": 90, "real_time_s": 1.0}}


def statuses(current: dict) -> dict[str, str]:
    return {c.metric: c.status for c in compare(current, BASE)}


def test_identical_figures_pass() -> None:
    assert set(statuses(BASE).values()) == {"ok"}


def test_any_growth_of_a_count_fails_and_a_drop_is_an_improvement() -> None:
    now = {"m/semi2k": {**BASE["m/semi2k"], "cost_rounds": 101, "cost_bytes_p0": 4999}}
    got = statuses(now)
    assert got["cost_rounds"] == "REGRESSION" and got["cost_bytes_p0"] == "improved"


@pytest.mark.parametrize("metric, value, status", [
    ("compile_s", 2.49, "ok"), ("compile_s", 2.51, "REGRESSION"),            # times: 3x + 1 s
    ("real_time_s", 0.1, "ok"),                                               # faster time: not a change to record
    ("reference_max_error", 1.25e-4, "ok"), ("reference_max_error", 1.3e-4, "REGRESSION")])
def test_tolerances(metric: str, value: float, status: str) -> None:
    assert statuses({"m/semi2k": {**BASE["m/semi2k"], metric: value}})[metric] == status


def test_real_runs_missing_here_are_skipped_and_new_entries_flagged() -> None:
    now = {"m/semi2k": {k: v for k, v in BASE["m/semi2k"].items() if not k.startswith("real_")},
           "n/dealer": {"cost_rounds": 7}}
    checks = compare(now, BASE)
    got = {(c.key, c.metric): c.status for c in checks}
    assert got[("m/semi2k", "real_rounds")] == "skipped" and got[("n/dealer", "cost_rounds")] == "new"
    assert not any(c.failed for c in checks)
    assert table(checks).endswith("no regression")


def test_table_counts_regressions() -> None:
    text = table(compare({"m/semi2k": {**BASE["m/semi2k"], "real_rounds": 91}}, BASE))
    assert "real_rounds" in text and text.endswith("1 regression(s)")


@pytest.mark.slow
def test_current_compiler_matches_committed_baseline(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """The CI check itself (with real MP-SPDZ runs when MP_SPDZ_HOME points to a build)."""
    assert json.loads(regression.BASELINE.read_text()), "benchmarks/baseline.json is empty"
    code = regression.main([])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "no regression" in out


def test_pareto_front_keeps_only_undominated_points() -> None:
    from benchmarks.report import pareto_front

    points = [(1.0, 0.90), (2.0, 0.95), (1.5, 0.85), (3.0, 0.95), (0.5, 0.80)]
    assert pareto_front(points) == [(0.5, 0.80), (1.0, 0.90), (2.0, 0.95)]


def test_cost_model_error_is_per_execution() -> None:
    from benchmarks.report import cost_model_errors

    record = {"key": "m/r/a/g/rep3/lan/mpcvit/b5", "network": "lan", "cost": {"bytes_p0": 100, "bytes_all": 300,
              "rounds": 10}, "real": {"bytes_party0": 400, "global_bytes": 1200, "rounds": 50, "runs": 4}}
    wan = {**record, "key": record["key"].replace("/lan/", "/wan/"), "network": "wan"}
    rows = cost_model_errors([record, wan])  # one row per program, whatever the network model
    assert len(rows) == 1
    assert rows[0]["bytes_p0"] == 0 and rows[0]["rounds"] == pytest.approx(-0.2) and rows[0]["within"]


def test_softmax_ratio_uses_the_same_protocol_and_network() -> None:
    from benchmarks.report import softmax_ratios

    def record(attention: str, network: str, latency: float) -> dict:
        return {"model": "m", "weights": "random", "protocol": "rep3", "network": network, "batch": 1,
                "templates": "mpcvit", "attention": attention, "mlp": "gelu", "cost_latency_s": latency}

    rows = softmax_ratios([record("softmax", "lan", 2.3), record("mu0.1", "lan", 1.0), record("mu0.1", "wan", 9.0)])
    assert [(r["network"], r["speedup"]) for r in rows] == [("lan", pytest.approx(2.3))]


def _write_records(path: Path, *records: dict) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_real_runs_are_not_skipped_after_a_cost_model_pass(tmp_path: Path) -> None:
    from benchmarks.matrix import done_keys

    results = _write_records(tmp_path / "r.jsonl", {"key": "cost-only", "real": None},
                             {"key": "real-5", "real": {"images": 5}})
    assert done_keys(results) == {"cost-only", "real-5"}
    assert done_keys(results, real=True) == {"real-5"}
    assert done_keys(results, real=True, images=200) == set()  # 5 images measured, 200 asked


def test_report_keeps_the_latest_record_of_a_cell(tmp_path: Path) -> None:
    from benchmarks.report import load

    results = _write_records(tmp_path / "r.jsonl", {"key": "a", "real": None}, {"key": "b"},
                             {"key": "a", "real": {"images": 5}})
    assert load(results) == [{"key": "a", "real": {"images": 5}}, {"key": "b"}]


def test_damaged_results_and_empty_reports_are_one_line_errors(tmp_path: Path) -> None:
    from benchmarks.report import read_records, write_report
    from compiler.errors import UserError

    damaged = tmp_path / "r.jsonl"
    damaged.write_text('{"key": "a"}\n\n{"key": "b", "cost"\n')  # a run killed mid-line
    with pytest.raises(UserError, match=rf"^{damaged}:3: not a benchmark record; delete that line"):
        read_records(damaged)
    with pytest.raises(UserError, match="no benchmark records to report"):
        write_report(_write_records(tmp_path / "empty.jsonl"), tmp_path / "report")


@pytest.mark.parametrize("flags, message", [
    (["--vary", "heads=a"], r"--vary 'heads=a': values must be integers"),
    (["--weights", "train:abc"], r"--weights 'train:abc': write train:<epochs>"),
    (["--weights", "missing.pt"], r"--weights missing.pt: no such checkpoint"),
    (["--attention", "softmax", "mu-1"], r"attention config 'mu-1'"),  # would keep all heads but one
    (["--attention", "mu1.5"], r"attention config 'mu1.5'"),
    (["--attention", "mufoo"], r"attention config 'mufoo'"),
    (["--mlp", "gelu", "swish"], r"MLP config 'swish'"),
    (["--protocols", "semi2k", "spdz"], r"--protocols 'spdz' is unknown"),
    (["--networks", "lan", "5g"], r"unknown network '5g'"),
    (["--models", "vit_1_4_8", "vit_x"], r"unknown model 'vit_x'"),
    (["--repeats", "0"], r"--repeats 0: give a positive number"),
    (["--results", "."], r"--results \. is a folder"),
    (["--report", __file__], r"--report .* is a file; give a folder"),
])
def test_bad_matrix_arguments_fail_before_the_first_cell(tmp_path: Path, flags: list[str], message: str) -> None:
    import argparse

    from benchmarks.matrix import add_arguments, main_from_args
    from compiler.errors import UserError

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    results = tmp_path / "r.jsonl"
    args = parser.parse_args(["--models", "vit_1_4_8", "--results", str(results), "--no-progress", *flags])
    with pytest.raises(UserError, match=message):
        main_from_args(args)
    assert not results.exists()  # nothing was measured


def test_update_into_a_folder_fails_before_measuring(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setattr(regression, "measure", lambda **kwargs: pytest.fail("measured before checking --baseline"))
    with pytest.raises(SystemExit):
        regression.main(["--update", "--baseline", str(tmp_path)])
    assert f"--baseline {tmp_path} is a folder" in capsys.readouterr().err


@pytest.mark.parametrize("text, message", [(None, "does not exist; record one with --update"),
                                           ("{trunc", "invalid JSON"), ("[1, 2]", "not a baseline")])
def test_bad_baseline_fails_before_measuring(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture, text: str | None, message: str) -> None:
    path = tmp_path / "baseline.json"
    if text is not None:
        path.write_text(text)
    monkeypatch.setattr(regression, "measure", lambda **kwargs: pytest.fail("measured before reading the baseline"))
    with pytest.raises(SystemExit) as exit_info:
        regression.main(["--baseline", str(path)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: --baseline {path}") and message in err and err.count("\n") == 1
