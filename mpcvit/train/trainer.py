"""The training loop shared by train, search and retrain: AdamW + cosine/warm-up (timm), timm's mixup/cutmix and
losses, optional MPC-cost regulariser (search) and knowledge distillation (retrain), per-epoch eval, checkpoints,
exact resume (every epoch reseeds its own RNG streams)."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from timm.data import Mixup
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.scheduler import CosineLRScheduler
from torch import nn
from tqdm import tqdm

from compiler.errors import UserError
from mpcvit.config import TrainConfig
from mpcvit.data import DatasetSplits, random_shift
from mpcvit.models import MPCViT
from mpcvit.search import CostTable, clamp_search_parameters, expected_cost, search_parameters
from mpcvit.train.checkpoint import save_checkpoint
from mpcvit.train.kd import distillation_loss


@dataclass
class FitResult:
    history: list[dict[str, Any]] = field(default_factory=list)

    @property
    def test_accuracy(self) -> float:
        return self.history[-1]["test_accuracy"] if self.history else float("nan")


def dataset_info(data: DatasetSplits) -> dict[str, Any]:
    return {"name": data.name, "mean": data.mean, "std": data.std, "num_classes": data.num_classes}


@torch.no_grad()
def evaluate(model: nn.Module, data: DatasetSplits, batch_size: int = 256) -> float:
    """Top-1 accuracy (fraction) on the test split."""
    model.eval()
    correct = total = 0
    for x, y in data.loader(train=False, batch_size=batch_size, seed=0):
        correct += int((model(x).argmax(-1) == y).sum())
        total += len(y)
    return correct / max(total, 1)


def _param_groups(model: nn.Module, cfg: TrainConfig) -> list[dict[str, Any]]:
    search = {id(p) for p in search_parameters(model)}
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if id(p) in search:
            continue
        (no_decay if p.ndim <= 1 or name in ("pos_embed", "cls_token") else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if search:
        groups.append({"params": search_parameters(model), "weight_decay": 0.0, "lr": cfg.alpha_lr})
    return groups


def _criterion(cfg: TrainConfig, mixing: bool) -> nn.Module:
    if mixing:
        return SoftTargetCrossEntropy()
    if cfg.label_smoothing > 0:
        return LabelSmoothingCrossEntropy(cfg.label_smoothing)
    return nn.CrossEntropyLoss()


def fit(model: MPCViT, data: DatasetSplits, cfg: TrainConfig, *, teacher: MPCViT | None = None,
        cost_table: CostTable | None = None, checkpoint: str | Path | None = None,
        resume: dict[str, Any] | None = None, progress: bool = True, desc: str = "train") -> FitResult:
    """Train ``model`` in place; returns the per-epoch history (train loss, test accuracy, expected cost)."""
    searching = bool(search_parameters(model))
    steps = len(data.loader(train=True, batch_size=cfg.batch_size, seed=0))
    if steps == 0:
        raise UserError(f"dataset {data.name} has fewer training images than one batch ({cfg.batch_size}); "
                        "lower --batch-size")
    optimizer = torch.optim.AdamW(_param_groups(model, cfg), lr=cfg.lr)
    scheduler = CosineLRScheduler(optimizer, t_initial=max(cfg.epochs * steps, 1), lr_min=cfg.min_lr,
                                  warmup_t=int(cfg.warmup_epochs * steps), warmup_lr_init=cfg.lr * 0.01,
                                  t_in_epochs=False)
    mixing = cfg.mixup > 0 or cfg.cutmix > 0
    mixup = Mixup(mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix, prob=cfg.mixup_prob,
                  label_smoothing=cfg.label_smoothing, num_classes=data.num_classes) if mixing else None
    criterion = _criterion(cfg, mixing)
    if teacher is not None:
        teacher.eval()
    result, start = FitResult(), 0
    if resume is not None:
        optimizer.load_state_dict(resume["optimizer"])
        scheduler.load_state_dict(resume["scheduler"])
        result.history, start = list(resume["history"]), int(resume["epoch"])
    fill = -data.mean[0] / data.std[0]  # the normalised black background of the digits
    # One bar per stage, advanced per epoch: readable in a terminal and in a CI log alike.
    bar = tqdm(total=cfg.epochs, initial=start, desc=desc, disable=not progress)
    for epoch in range(start, cfg.epochs):
        seed = cfg.seed * 100_003 + epoch
        torch.manual_seed(seed)
        np.random.seed(seed % 2**32)  # timm's Mixup draws from numpy's global RNG
        shift_rng = torch.Generator().manual_seed(seed)
        model.train()
        t0, total, count = time.time(), 0.0, 0
        batches = data.loader(train=True, batch_size=cfg.batch_size, seed=seed, num_workers=cfg.num_workers)
        for x, y in batches:
            x = random_shift(x, cfg.random_shift, shift_rng, fill)
            if mixup is not None and len(x) % 2 == 0:
                x, target = mixup(x, y)
            else:
                target = y if not mixing else nn.functional.one_hot(y, data.num_classes).float()
            tokens = model.forward_features(x)
            logits = model.forward_head(tokens)
            loss = criterion(logits, target) * (cfg.kd_ce_weight if teacher is not None else 1.0)
            if teacher is not None:
                with torch.no_grad():
                    t_tokens = teacher.forward_features(x)
                    t_logits = teacher.forward_head(t_tokens)
                loss = loss + distillation_loss(logits, tokens, t_logits, t_tokens, cfg.kd_logit_weight,
                                                cfg.kd_token_weight, cfg.kd_temperature)
            if searching and cfg.search_lambda:
                loss = loss + cfg.search_lambda * expected_cost(model, cost_table)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip > 0:
                nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
            clamp_search_parameters(model)
            scheduler.step_update(epoch * steps + count + 1)
            total += float(loss.detach())
            count += 1
        record = {"epoch": epoch + 1, "train_loss": total / max(count, 1), "test_accuracy": evaluate(model, data),
                  "lr": optimizer.param_groups[0]["lr"], "seconds": round(time.time() - t0, 3)}
        if searching:
            with torch.no_grad():
                record["expected_cost"] = float(expected_cost(model, cost_table))
        result.history.append(record)
        bar.set_postfix(loss=f"{record['train_loss']:.4f}", acc=f"{record['test_accuracy']:.4f}")
        bar.update(1)
        if checkpoint is not None:
            state = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                     "epoch": epoch + 1, "history": result.history}
            save_checkpoint(checkpoint, model, cfg, dataset_info(data), epoch + 1, result.history, state)
    bar.close()
    return result
