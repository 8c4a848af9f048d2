"""The `mpcvit` command line: every sub-command's --help, a tiny train → search → retrain → eval → export chain,
and bad input (missing data root, unknown config keys, μ outside [0, 1], checkpoint of another config) → exit 2."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from mpcvit.cli import main

TINY = ["--model", "vit_1_4_8", "--epochs", "1", "--no-progress"]


def run(capsys, *argv: str) -> tuple[int, str, str]:
    try:
        code = main(list(argv))
    except SystemExit as exc:  # argparse (--help, bad choices) and run_cli's error path
        code = exc.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize("command", ["train", "search", "retrain", "eval", "export", "demo", "run", "bench"])
def test_every_subcommand_has_help(capsys, command: str) -> None:
    code, out, _ = run(capsys, command, "--help")
    assert code == 0 and out.startswith("usage: mpcvit " + command)


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    """teacher, search and retrained checkpoints of the tiny model on digits (one epoch each)."""
    tmp = tmp_path_factory.mktemp("cli")
    paths = {k: tmp / f"{k}.pt" for k in ("teacher", "search", "student")}
    assert main(["train", *TINY, "--out", str(paths["teacher"])]) == 0
    assert main(["search", *TINY, "--lambda", "1.0", "--cost-protocol", "replicated-ring",
                 "--out", str(paths["search"])]) == 0
    assert main(["retrain", "--epochs", "1", "--no-progress", "--search", str(paths["search"]), "--mu", "0.5",
                 "--teacher", str(paths["teacher"]), "--out", str(paths["student"])]) == 0
    return tmp, paths


def test_train_search_retrain_eval_export(capsys, chain) -> None:
    tmp, paths = chain
    code, out, _ = run(capsys, "eval", "--checkpoint", str(paths["student"]))
    record = json.loads(out)
    assert code == 0 and 0 <= record["test_accuracy"] <= 1
    kinds = record["head_kinds"][0]
    assert sorted(kinds) == ["relu_softmax", "relu_softmax", "scaling", "scaling"] and kinds == sorted(kinds)
    code, out, _ = run(capsys, "export", "--checkpoint", str(paths["student"]), "--out", str(tmp / "s.onnx"))
    assert code == 0 and "onnxruntime max abs error" in out
    assert json.loads(out.splitlines()[-1])["max_abs_error"] <= 1e-4 and (tmp / "s.onnx").is_file()


def test_missing_data_root(capsys, tmp_path) -> None:
    code, _, err = run(capsys, "train", "--data", "cifar10", "--data-root", str(tmp_path / "none"),
                       "--out", str(tmp_path / "x.pt"))
    assert code == 2 and err == f"error: cifar10: data root {tmp_path / 'none'} does not exist; create it and " \
                                "place the extracted dataset there\n"
    code, _, err = run(capsys, "train", "--data", "cifar100", "--data-root", str(tmp_path), "--out", "x.pt")
    assert code == 2 and "cifar-100-python/train not found under data root" in err and err.count("\n") == 1


def test_unknown_config_keys_list_valid_ones(capsys, tmp_path) -> None:
    config = tmp_path / "cfg.json"
    config.write_text(json.dumps({"train": {"epochz": 3}}))
    code, _, err = run(capsys, "train", *TINY, "--config", str(config), "--out", str(tmp_path / "x.pt"))
    assert code == 2 and err.startswith("error: train config (digits): unknown key(s) epochz; valid keys: epochs,")
    config.write_text(json.dumps({"model": {"dim": 32}, "optimizer": {}}))
    code, _, err = run(capsys, "train", *TINY, "--config", str(config), "--out", str(tmp_path / "x.pt"))
    assert code == 2 and "unknown key(s) optimizer; valid keys: model, train" in err


@pytest.mark.parametrize("mu", ["1.5", "-0.2"])
def test_mu_outside_unit_interval(capsys, chain, tmp_path, mu: str) -> None:
    _, paths = chain
    code, _, err = run(capsys, "retrain", "--search", str(paths["search"]), "--mu", mu, "--out", str(tmp_path / "x"))
    assert code == 2 and err == f"error: --mu must lie in [0, 1] (the fraction of heads/layers kept non-linear), got {float(mu)}\n"


def test_checkpoint_from_another_config(capsys, chain, tmp_path) -> None:
    _, paths = chain
    code, _, err = run(capsys, "eval", "--checkpoint", str(paths["teacher"]), "--model", "vit_2_4_8")
    assert code == 2 and "is for model vit_1_4_8 (depth=1 (not 2), dim=16 (not 64)), not vit_2_4_8" in err
    code, _, err = run(capsys, "train", "--model", "vit_2_4_8", "--epochs", "1", "--resume", str(paths["teacher"]),
                       "--out", str(tmp_path / "x.pt"))
    assert code == 2 and err.startswith(f"error: checkpoint {paths['teacher']} is for model vit_1_4_8")
    code, _, err = run(capsys, "train", *TINY, "--mlp-kind", "relu", "--resume", str(paths["teacher"]),
                       "--out", str(tmp_path / "x.pt"))
    assert code == 2 and "was trained with other head/MLP kinds or dataset (digits)" in err
    code, _, err = run(capsys, "retrain", "--search", str(paths["teacher"]), "--mu", "0.5", "--out", "x.pt")
    assert code == 2 and "not a search checkpoint" in err


def test_console_entry_exits_2_with_one_line(tmp_path) -> None:
    proc = subprocess.run([sys.executable, "-m", "mpcvit.cli", "eval", "--checkpoint", str(tmp_path / "none.pt")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr == f"error: checkpoint {tmp_path / 'none.pt'} does not exist; train one with " \
                          f"`mpcvit train --out {tmp_path / 'none.pt'}`\n"


def test_batch_larger_than_the_training_set(capsys, tmp_path) -> None:
    code, _, err = run(capsys, "train", *TINY, "--batch-size", "5000", "--out", str(tmp_path / "x.pt"))
    assert code == 2 and err == "error: dataset digits has fewer training images than one batch (5000); " \
                                "lower --batch-size\n"


def test_retrain_takes_data_and_model_from_the_search_checkpoint(capsys, chain, tmp_path) -> None:
    from mpcvit.models import MPCViT, model_config
    from mpcvit.train import save_checkpoint

    _, paths = chain
    code, _, err = run(capsys, "retrain", "--search", str(paths["search"]), "--mu", "0.5", "--model", "vit_2_4_8",
                       "--out", str(tmp_path / "x.pt"))
    assert code == 2 and f"checkpoint {paths['search']} is for model vit_1_4_8" in err and "not vit_2_4_8" in err
    # a CIFAR-shaped search: retrain defaults to its dataset (not digits) and rejects data of another shape
    cifar_search = save_checkpoint(tmp_path / "cifar_search.pt", MPCViT(model_config("vit_2_4_32", search=True)),
                                   None, {"name": "cifar10", "mean": [0.5] * 3, "std": [0.25] * 3})
    code, _, err = run(capsys, "retrain", "--search", str(cifar_search), "--mu", "0.5", "--out", str(tmp_path / "x.pt"))
    assert code == 2 and err == "error: cifar10: no data root given; pass --data-root DIR holding the extracted dataset\n"
    code, _, err = run(capsys, "retrain", "--search", str(cifar_search), "--mu", "0.5", "--data", "digits",
                       "--out", str(tmp_path / "x.pt"))
    assert code == 2 and "model vit_2_4_32 takes 3x32x32 images into 10 classes but dataset digits has 1x8x8" in err
    assert not (tmp_path / "x.pt").exists()


@pytest.mark.parametrize("command, wrong_kind, expected", [
    (["train", *TINY], "", "is a folder; pass a file path"),
    (["export", "--checkpoint", "missing.pt"], "", "is a folder; pass a file path"),
    (["demo"], "file", "is a file; pass a folder (it is created if missing)"),
])
def test_unwritable_out_is_rejected_before_any_work(capsys, tmp_path, command: list[str], wrong_kind: str,
                                                    expected: str) -> None:
    (tmp_path / "file").write_text("")
    code, _, err = run(capsys, *command, "--out", str(tmp_path / "file" / "x"))
    assert code == 2 and err == f"error: --out {tmp_path / 'file' / 'x'}: {tmp_path / 'file'} is a file, " \
                                "not a folder; pick another path\n"
    code, _, err = run(capsys, *command, "--out", str(tmp_path / wrong_kind))
    assert code == 2 and err == f"error: --out {tmp_path / wrong_kind} {expected}\n"
    # a folder no file can be created in (a pseudo file system): refused before any training or export
    code, _, err = run(capsys, *command, "--out", "/proc/mpcvit-out")
    assert code == 2 and err.startswith("error: --out /proc/mpcvit-out") and "cannot create it under /proc" in err


def test_non_positive_training_flags(capsys, tmp_path) -> None:
    for flag in ("--epochs", "--batch-size", "--lr"):
        code, _, err = run(capsys, "train", *TINY, flag, "0", "--out", str(tmp_path / "x.pt"))
        assert code == 2 and err == f"error: {flag} 0: give a positive value\n"
    assert not (tmp_path / "x.pt").exists()


@pytest.mark.parametrize("argv, flag, message", [
    (["search", "--cost-protocol", "spdz"], "--cost-protocol", "unknown protocol 'spdz'; choose one of semi2k,"),
    (["demo", "--protocol", "rep"], "--protocol", "unknown protocol 'rep'; choose one of semi2k,"),
    (["train", "--threads", "-3"], "--threads", "expected 0 (torch's default) or a positive number of threads"),
])
def test_bad_protocol_and_threads_fail_at_parse_time(capsys, tmp_path, argv: list[str], flag: str, message: str
                                                     ) -> None:
    code, _, err = run(capsys, *argv, "--out", str(tmp_path / "x"))
    assert code == 2 and f"error: argument {flag}: {message}" in err and not (tmp_path / "x").exists()


def test_demo_checks_mu_before_training(capsys, tmp_path) -> None:
    code, _, err = run(capsys, "demo", "--mu", "1.5", "--out", str(tmp_path / "demo"))
    assert code == 2 and err == "error: --mu must lie in [0, 1] (the fraction of heads/layers kept non-linear), got 1.5\n"
    assert not (tmp_path / "demo").exists()


def test_run_with_shared_weights_is_for_all_parties_on_one_host(tmp_path, capsys):
    code, _, err = run(capsys, "run", str(tmp_path), "--party", "0", "--hosts", str(tmp_path / "hosts"),
                       "--weights", "shared")
    assert code == 2 and "--weights shared" in err and err.count("\n") == 1


@pytest.mark.parametrize("argv, message", [
    (["run", "{tmp}", "--images", "abc"], "argument --images: invalid int value: 'abc' (see mpcvit run --help)"),
    (["run", "{tmp}", "--bogus"], "unrecognized arguments: --bogus (see mpcvit run --help)"),
    (["frobnicate"], "argument command: invalid choice: 'frobnicate'"),
    (["run", "{tmp}/model.onnx"], "{tmp}/model.onnx is a file, not a compiled program's folder: compile it first "
                                  "(mpcvit-compile {tmp}/model.onnx -o DIR), then run DIR"),
])
def test_bad_flags_and_paths_are_one_line(capsys, tmp_path, argv: list[str], message: str) -> None:
    """Like mpcvit-compile's: one `error:` line naming the flag (and the sub-command's --help), exit 2."""
    (tmp_path / "model.onnx").write_bytes(b"onnx")
    code, out, err = run(capsys, *(a.format(tmp=tmp_path) for a in argv))
    assert code == 2 and out == "" and err.count("\n") == 1 and message.format(tmp=tmp_path) in err, err
