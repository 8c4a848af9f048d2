"""The stages behind the CLI and the demo: train (teacher or fixed kinds), search, binarise + KD retrain."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from compiler.errors import UserError
from mpcvit.config import ModelConfig, TrainConfig
from mpcvit.data import DatasetSplits
from mpcvit.models import MPCViT, model_config
from mpcvit.search import CostTable, binarize, contiguous_kinds, head_scores
from mpcvit.train import (FitResult, check_same_shape, checkpoint_config, fit, load_checkpoint, load_weights,
                          model_from_checkpoint)


def build_model_config(name: str, data: DatasetSplits, overrides: dict[str, Any] | None = None) -> ModelConfig:
    """The named model for ``data`` (class count taken from the dataset unless overridden)."""
    overrides = {"num_classes": data.num_classes, **(overrides or {})}
    cfg = model_config(name, **overrides)
    check_dataset_fits(cfg, data)
    return cfg


def check_dataset_fits(cfg: ModelConfig, data: DatasetSplits) -> None:
    model_shape = (cfg.in_chans, cfg.img_size, cfg.img_size, cfg.num_classes)
    data_shape = (data.in_chans, data.img_size, data.img_size, data.num_classes)
    if model_shape != data_shape:
        raise UserError(f"model {cfg.name} takes {cfg.in_chans}x{cfg.img_size}x{cfg.img_size} images into "
                        f"{cfg.num_classes} classes but dataset {data.name} has {data.in_chans}x{data.img_size}x"
                        f"{data.img_size} into {data.num_classes}; pick a matching --model or --data")


def train_stage(cfg: ModelConfig, data: DatasetSplits, train_cfg: TrainConfig, out: str | Path, *,
                teacher: MPCViT | None = None, cost_table: CostTable | None = None,
                resume: str | Path | None = None, progress: bool = True, desc: str = "train"
                ) -> tuple[MPCViT, FitResult]:
    """Train a fresh model of ``cfg`` (or continue ``resume``), checkpointing to ``out`` after every epoch."""
    torch.manual_seed(train_cfg.seed)
    model = MPCViT(cfg)
    state = None
    if resume is not None:
        ckpt = load_checkpoint(resume)
        check_same_shape(ckpt, cfg)
        saved = checkpoint_config(ckpt)
        if (saved.head_kinds, saved.mlp_kinds) != (cfg.head_kinds, cfg.mlp_kinds) or \
                ckpt["dataset"].get("name") != data.name:
            raise UserError(f"checkpoint {resume} was trained with other head/MLP kinds or dataset "
                            f"({ckpt['dataset'].get('name')}); resume with the same --model/--data/kinds")
        if ckpt["resume"] is None:
            raise UserError(f"checkpoint {resume} holds no optimiser state to resume from; start a new run")
        load_weights(model, ckpt)
        state = ckpt["resume"]
    result = fit(model, data, train_cfg, teacher=teacher, cost_table=cost_table, checkpoint=out, resume=state,
                 progress=progress, desc=desc)
    return model.eval(), result


def retrain_config(search_ckpt: dict[str, Any], mu: float, mlp_mu: float | None = None) -> ModelConfig:
    """Fixed-kind config from a search checkpoint: top-μ heads ReLU-softmax, same-kind heads made contiguous."""
    searched = model_from_checkpoint(search_ckpt)
    if not searched.cfg.search:
        raise UserError(f"checkpoint {search_ckpt['path']} is not a search checkpoint; run `mpcvit search` first")
    head_kinds, mlp_kinds = binarize(searched, mu, mlp_mu)
    return searched.cfg.replace(search=False, search_softmax=False, search_mlp=False,
                                head_kinds=contiguous_kinds(head_kinds), mlp_kinds=mlp_kinds)


def load_teacher(path: str | Path, cfg: ModelConfig) -> MPCViT:
    ckpt = load_checkpoint(path)
    check_same_shape(ckpt, cfg)  # token-level KD compares tokens one to one
    teacher = model_from_checkpoint(ckpt)
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


def search_summary(model: MPCViT) -> list[list[float]]:
    return [[round(float(a), 4) for a in layer] for layer in head_scores(model)]


__all__ = ["build_model_config", "check_dataset_fits", "train_stage", "retrain_config", "load_teacher",
           "search_summary"]
