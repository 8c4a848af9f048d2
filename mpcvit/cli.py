"""`mpcvit train | search | retrain | eval | export | demo` (+ `run`, `bench` from compiler.runtime.cli)."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, Callable

# Idle OpenMP threads sleep instead of spinning: on a shared 2-core machine spinning threads made training of these
# tiny models ~10x slower. Must be set before torch loads its OpenMP runtime.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from compiler.errors import OneLineParser, UserError, run_cli  # noqa: E402
from mpcvit.catalog import DATASETS, MODEL_CONFIGS  # noqa: E402
from mpcvit.config import HEAD_KINDS, MLP_KINDS, RunConfig, TrainConfig, load_json_config  # noqa: E402
from mpcvit.recipes import DEFAULT_MODELS, recipe  # noqa: E402

# torch, timm and torchvision are imported inside the commands: `mpcvit --help` and bad flags answer at once

# CLI flag -> TrainConfig field (flags left unset keep the recipe/config-file value)
_TRAIN_FLAGS = {"epochs": "epochs", "batch_size": "batch_size", "lr": "lr", "seed": "seed",
                "search_lambda": "search_lambda", "kd_logit_weight": "kd_logit_weight",
                "kd_token_weight": "kd_token_weight", "kd_temperature": "kd_temperature"}


def _protocol(name: str) -> str:
    """argparse type: a protocol the compiler's cost model knows, checked before any training."""
    from compiler.lowering.profiles import ALIASES, PROTOCOLS

    if ALIASES.get(name, name) not in PROTOCOLS:
        raise argparse.ArgumentTypeError(f"unknown protocol {name!r}; choose one of {', '.join([*PROTOCOLS, *ALIASES])}")
    return name


def _threads_count(text: str) -> int:
    """argparse type: torch CPU threads, 0 for torch's default."""
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"expected 0 (torch's default) or a positive number of threads, got {text!r}")
    return int(text)


def _add_data_args(p: argparse.ArgumentParser, default: str | None = "digits",
                   default_help: str | None = None) -> None:
    p.add_argument("--data", choices=DATASETS, default=default, help=f"dataset (default: {default_help or default})")
    p.add_argument("--data-root", help="folder holding CIFAR (cifar-10-batches-py/...) or Tiny-ImageNet (train/, val/)")


def _add_train_args(p: argparse.ArgumentParser, from_checkpoint: str | None = None) -> None:
    """``from_checkpoint``: the flag whose checkpoint decides the model and, by default, the dataset."""
    if from_checkpoint:
        _add_data_args(p, default=None, default_help=f"the dataset of the {from_checkpoint} checkpoint")
        p.add_argument("--model", choices=list(MODEL_CONFIGS), help=f"fail unless {from_checkpoint} is this model")
    else:
        _add_data_args(p)
        p.add_argument("--model", choices=list(MODEL_CONFIGS), help="model (default: the dataset's paper model)")
    p.add_argument("--config", help='JSON file {"model": {...ModelConfig keys}, "train": {...TrainConfig keys}}')
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--seed", type=int)
    p.add_argument("--threads", type=_threads_count, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--no-progress", action="store_true", help="no tqdm progress bars")
    p.add_argument("--out", required=True, help="checkpoint file to write (after every epoch)")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="mpcvit", description=__doc__)
    sub = parser.commands = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a model with fixed attention kinds (e.g. the softmax teacher)")
    _add_train_args(p)
    p.add_argument("--head-kind", choices=HEAD_KINDS, help="one kind for every head (default: config or softmax)")
    p.add_argument("--mlp-kind", choices=MLP_KINDS, help="one MLP kind for every layer (default: config or gelu)")
    p.add_argument("--resume", help="checkpoint to continue (same model, kinds and data)")
    p.set_defaults(run=cmd_train)

    p = sub.add_parser("search", help="MPC-aware differentiable search of per-head attention kinds")
    _add_train_args(p)
    cost = p.add_mutually_exclusive_group()
    cost.add_argument("--cost-table", help="cost table JSON (DESIGN.md); default: the paper's L1 on alpha")
    cost.add_argument("--cost-protocol", type=_protocol, help="price heads with the compiler's cost model for this protocol "
                                              "(e.g. replicated-ring, semi2k, dealer-ring)")
    p.add_argument("--network", choices=("lan", "wan"), default="lan", help="network of --cost-protocol (default lan)")
    p.add_argument("--lambda", dest="search_lambda", type=float, help="weight of the normalised expected cost")
    p.add_argument("--search-softmax", action="store_true", help="allow softmax heads in the search space")
    p.add_argument("--search-mlp", action="store_true", help="also search GeLU vs linear MLPs (token-wise gates)")
    p.set_defaults(run=cmd_search)

    p = sub.add_parser("retrain", help="binarise a search (top-mu heads ReLU-softmax) and retrain with KD")
    _add_train_args(p, from_checkpoint="--search")
    p.add_argument("--search", required=True, help="checkpoint written by `mpcvit search`")
    p.add_argument("--mu", type=float, required=True, help="fraction of heads kept ReLU-softmax, in [0, 1]")
    p.add_argument("--mlp-mu", type=float, help="fraction of searched MLPs kept GeLU, in [0, 1] (default 1)")
    p.add_argument("--teacher", help="softmax teacher checkpoint for knowledge distillation")
    p.add_argument("--kd-logit-weight", type=float, help="weight of the soft cross-entropy on logits")
    p.add_argument("--kd-token-weight", type=float, help="weight of the MSE over final-norm tokens")
    p.add_argument("--kd-temperature", type=float)
    p.set_defaults(run=cmd_retrain)

    p = sub.add_parser("eval", help="test accuracy of a checkpoint")
    _add_data_args(p, default=None)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--model", choices=list(MODEL_CONFIGS), help="fail unless the checkpoint is this model")
    p.set_defaults(run=cmd_eval)

    p = sub.add_parser("export", help="export a checkpoint to ONNX (opset 18) and check it against onnxruntime")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--out", required=True, help="ONNX file to write")
    p.add_argument("--data-root", help="dataset root (for a real sample image; default: random images)")
    p.add_argument("--tolerance", type=float, default=1e-4, help="largest allowed |onnxruntime - torch|")
    p.set_defaults(run=cmd_export)

    p = sub.add_parser("demo", help="digits: teacher, search (mu=0.5), KD retrain, export, compile + check")
    p.add_argument("--out", required=True, help="output folder (checkpoints, ONNX, compiled program, report.json)")
    p.add_argument("--threads", type=_threads_count, default=2, help="torch CPU threads (default 2)")
    p.add_argument("--mu", type=float, default=0.5)
    p.add_argument("--protocol", type=_protocol, default="replicated-ring", help="protocol of the compile check")
    p.add_argument("--no-compile", action="store_true", help="stop after the ONNX export")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(run=cmd_demo)

    from compiler.runtime import cli as runtime_cli

    runtime_cli.register(sub)
    return parser


def _threads(args: argparse.Namespace) -> None:
    if getattr(args, "threads", 0):
        import torch

        torch.set_num_threads(args.threads)


def _check_output(path: str, folder: bool = False) -> None:
    """Reject an unwritable --out before any training, rather than at the first checkpoint write."""
    out = Path(path)
    if not folder and out.is_dir():
        raise UserError(f"--out {path} is a folder; pass a file path")
    if folder and out.exists() and not out.is_dir():
        raise UserError(f"--out {path} is a file; pass a folder (it is created if missing)")
    nearest = next(p for p in out.parents if p.exists())
    if not nearest.is_dir():
        raise UserError(f"--out {path}: {nearest} is a file, not a folder; pick another path")
    from compiler.runtime.runner import check_writable_file

    # a real file probe: read-only and pseudo file systems (/proc) pass the checks above
    check_writable_file(out / "report.json" if folder else out, "--out")


def _file_config(args: argparse.Namespace) -> RunConfig:
    return load_json_config(args.config) if getattr(args, "config", None) else RunConfig()


def _train_config(args: argparse.Namespace, file_cfg: RunConfig, dataset: str) -> TrainConfig:
    flags = {field: getattr(args, flag) for flag, field in _TRAIN_FLAGS.items() if getattr(args, flag, None) is not None}
    for flag in ("epochs", "batch_size", "lr"):
        if flag in flags and not flags[flag] > 0:
            raise UserError(f"--{flag.replace('_', '-')} {flags[flag]:g}: give a positive value")
    return recipe(dataset, **{**file_cfg.train, **flags})


def _setup(args: argparse.Namespace, **model_overrides: Any) -> tuple[Any, Any, TrainConfig]:
    from mpcvit.data import load_dataset
    from mpcvit.pipeline import build_model_config

    _check_output(args.out)
    _threads(args)
    file_cfg = _file_config(args)
    train_cfg = _train_config(args, file_cfg, args.data)
    data = load_dataset(args.data, args.data_root, train_cfg.rand_augment)
    name = args.model or DEFAULT_MODELS[args.data]
    cfg = build_model_config(name, data, {**file_cfg.model, **model_overrides})
    return data, cfg, train_cfg


def _print(record: dict[str, Any]) -> None:
    print(json.dumps(record))


def cmd_train(args: argparse.Namespace) -> None:
    from mpcvit.pipeline import train_stage

    overrides: dict[str, Any] = {}
    data, cfg, train_cfg = _setup(args)
    if args.head_kind:
        overrides["head_kinds"] = [[args.head_kind] * cfg.heads for _ in range(cfg.depth)]
    if args.mlp_kind:
        overrides["mlp_kinds"] = [args.mlp_kind] * cfg.depth
    cfg = cfg.replace(**overrides) if overrides else cfg
    _, result = train_stage(cfg, data, train_cfg, args.out, resume=args.resume, progress=not args.no_progress)
    _print({"checkpoint": args.out, "test_accuracy": result.test_accuracy, "epochs": len(result.history)})


def cmd_search(args: argparse.Namespace) -> None:
    from mpcvit.pipeline import search_summary, train_stage
    from mpcvit.search import check_table_shape, compiler_cost_table, load_cost_table

    table = load_cost_table(args.cost_table)
    data, cfg, train_cfg = _setup(args, search=True, search_softmax=args.search_softmax, search_mlp=args.search_mlp)
    if args.cost_protocol:
        table = compiler_cost_table(cfg, args.cost_protocol, args.network)
    if table is not None:
        check_table_shape(table, cfg)
    model, result = train_stage(cfg, data, train_cfg, args.out, cost_table=table, progress=not args.no_progress,
                                desc="search")
    _print({"checkpoint": args.out, "test_accuracy": result.test_accuracy,
            "expected_cost": result.history[-1].get("expected_cost") if result.history else None,
            "alpha": search_summary(model), "cost": table.describe() if table else "L1 on alpha"})


def cmd_retrain(args: argparse.Namespace) -> None:
    from mpcvit.models import model_config
    from mpcvit.pipeline import check_dataset_fits, load_teacher, retrain_config, train_stage
    from mpcvit.train import check_same_shape, load_checkpoint

    _check_output(args.out)
    _threads(args)
    search_ckpt = load_checkpoint(args.search)
    cfg = retrain_config(search_ckpt, args.mu, args.mlp_mu)
    if args.model:
        check_same_shape(search_ckpt, model_config(args.model, num_classes=cfg.num_classes))
    file_cfg = _file_config(args)
    if file_cfg.model:
        raise UserError(f"config file {args.config}: retrain takes its model from --search; drop the 'model' section")
    dataset = args.data or _checkpoint_dataset(search_ckpt)
    train_cfg = _train_config(args, file_cfg, dataset)
    if args.teacher and not (train_cfg.kd_logit_weight or train_cfg.kd_token_weight):
        train_cfg = train_cfg.replace(kd_logit_weight=1.0, kd_token_weight=1.0)
    teacher = load_teacher(args.teacher, cfg) if args.teacher else None
    from mpcvit.data import load_dataset

    data = load_dataset(dataset, args.data_root, train_cfg.rand_augment)
    check_dataset_fits(cfg, data)
    _, result = train_stage(cfg, data, train_cfg, args.out, teacher=teacher, progress=not args.no_progress,
                            desc="retrain")
    _print({"checkpoint": args.out, "test_accuracy": result.test_accuracy, "mu": args.mu,
            "head_kinds": cfg.head_kinds, "mlp_kinds": cfg.mlp_kinds})


def _checkpoint_dataset(ckpt: dict[str, Any]) -> str:
    return ckpt["dataset"].get("name", "digits")


def _checkpoint_data(ckpt: dict[str, Any], name: str | None, root: str | None) -> Any:
    from mpcvit.data import load_dataset

    return load_dataset(name or _checkpoint_dataset(ckpt), root)


def cmd_eval(args: argparse.Namespace) -> None:
    from mpcvit.models import model_config
    from mpcvit.pipeline import check_dataset_fits
    from mpcvit.train import check_same_shape, evaluate, load_checkpoint, model_from_checkpoint

    ckpt = load_checkpoint(args.checkpoint)
    if args.model:
        check_same_shape(ckpt, model_config(args.model, num_classes=ckpt["model_config"]["num_classes"]))
    model = model_from_checkpoint(ckpt)
    data = _checkpoint_data(ckpt, args.data, args.data_root)
    check_dataset_fits(model.cfg, data)
    _print({"checkpoint": args.checkpoint, "model": model.cfg.name, "dataset": data.name,
            "test_accuracy": evaluate(model, data), "head_kinds": model.cfg.head_kinds})


def cmd_export(args: argparse.Namespace) -> None:
    from mpcvit.export import export_onnx
    from mpcvit.train import load_checkpoint, model_from_checkpoint

    _check_output(args.out)
    ckpt = load_checkpoint(args.checkpoint)
    model = model_from_checkpoint(ckpt)
    name = ckpt["dataset"].get("name")
    sample = None
    if name == "digits" or args.data_root:
        sample = _checkpoint_data(ckpt, name, args.data_root).sample_input()
    result = export_onnx(model, args.out, ckpt["dataset"], sample, tolerance=args.tolerance)
    print(f"onnxruntime max abs error {result.max_abs_error:.3g} (tolerance {args.tolerance:g})")
    _print({"onnx": str(result.path), "max_abs_error": result.max_abs_error, "head_kinds": model.cfg.head_kinds})


def cmd_demo(args: argparse.Namespace) -> None:
    from mpcvit.demo import run_demo

    _check_output(args.out, folder=True)
    _threads(args)
    run_demo(args.out, mu=args.mu, protocol=args.protocol, compile_check=not args.no_compile,
             progress=not args.no_progress)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()

    def body() -> int:
        args, unknown = parser.parse_known_args(argv)
        if unknown:  # named by the sub-command's parser: its --help lists the flags it takes
            parser.commands.choices[args.command].error(f"unrecognized arguments: {' '.join(unknown)}")
        run: Callable[[argparse.Namespace], int | None] = args.run if hasattr(args, "run") else args.func
        return int(run(args) or 0)

    return run_cli(body)


if __name__ == "__main__":
    sys.exit(main())
