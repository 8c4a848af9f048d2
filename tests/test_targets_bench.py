"""benchmarks.targets (issue 12's before/after table): verdicts and its bad-input line."""
import pytest

from benchmarks.targets import TARGETS, main, table

FIGURES = {"cost_bytes_p0": 90e6, "cost_rounds": 1300, "reference_error": 0.002,
           "bytes_p0": 79e6, "rounds": 1250, "time_s": 2.0}


def test_table_judges_each_target_against_its_limit():
    target = TARGETS[0]  # vit_7_4_32 rep3: <= 80 MB, <= 1,200 rounds, time <= 2/3
    lines = table(target, {"before": {**FIGURES, "time_s": 3.1}, "after": FIGURES}, real=True)
    by_name = {line.split("  ")[1].strip(): line for line in lines[2:]}
    assert by_name["P0 MB"].endswith("met")  # 79 MB <= 80 MB
    assert by_name["rounds"].endswith("MISSED")  # 1,250 > 1,200
    assert by_name["time after/before"].endswith("met")  # 2.0 / 3.1 = 0.645 <= 0.667
    cost_only = table(target, {"before": FIGURES, "after": FIGURES}, real=False)
    assert any("P0 MB (cost model)" in line and line.endswith("MISSED") for line in cost_only)  # 90 MB > 80 MB


def test_unknown_target_is_one_line_exit_2(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--only", "vit_7_4_32/softmax/semi2k", "--no-real"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "vit_7_4_32/softmax/replicated-ring" in err[0]
