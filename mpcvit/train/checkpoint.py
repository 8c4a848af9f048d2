"""One-file checkpoints: weights + full model/train config + head/MLP kinds + dataset normalisation + resume state."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from compiler.errors import UserError
from mpcvit.config import ModelConfig, TrainConfig, from_dict
from mpcvit.models import MPCViT

FORMAT = "mpcvit-checkpoint-1"


def save_checkpoint(path: str | Path, model: MPCViT, train_cfg: TrainConfig | None, dataset: dict[str, Any],
                    epoch: int = 0, history: list[dict[str, Any]] | None = None,
                    resume_state: dict[str, Any] | None = None) -> Path:
    """Write atomically (temp file + rename) so an interrupted run never leaves a truncated checkpoint."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": FORMAT,
        "model_config": model.cfg.to_dict(),
        "train_config": train_cfg.to_dict() if train_cfg else None,
        "head_kinds": model.cfg.head_kinds,
        "mlp_kinds": model.cfg.mlp_kinds,
        "dataset": dataset,
        "epoch": epoch,
        "history": history or [],
        "state_dict": model.state_dict(),
        "resume": resume_state,
    }
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)
    return path


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist; train one with `mpcvit train --out {path}`")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a corrupt or foreign file
        raise UserError(f"checkpoint {path} cannot be read ({type(exc).__name__}); pass a file written by mpcvit") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise UserError(f"checkpoint {path} is not an mpcvit checkpoint ({FORMAT}); pass a file written by mpcvit")
    payload["path"] = str(path)
    return payload


def checkpoint_config(ckpt: dict[str, Any]) -> ModelConfig:
    return from_dict(ModelConfig, ckpt["model_config"], f"checkpoint {ckpt['path']} model config")


def check_same_shape(ckpt: dict[str, Any], cfg: ModelConfig) -> None:
    """Raise a one-line error when ``ckpt`` was trained for another model shape than ``cfg``."""
    saved = checkpoint_config(ckpt)
    if saved.shape_key() != cfg.shape_key():
        diff = ", ".join(f"{k}={v} (not {cfg.shape_key()[k]})" for k, v in saved.shape_key().items()
                         if cfg.shape_key()[k] != v)
        raise UserError(f"checkpoint {ckpt['path']} is for model {saved.name} ({diff}), not {cfg.name}; "
                        "pass a checkpoint of the same model or the matching --model")


def load_weights(model: MPCViT, ckpt: dict[str, Any], strict: bool = True) -> None:
    check_same_shape(ckpt, model.cfg)
    state = ckpt["state_dict"]
    if not strict:  # search checkpoints carry α/gates that a fixed-kind model does not have
        own = model.state_dict()
        state = {k: v for k, v in state.items() if k in own}
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise UserError(f"checkpoint {ckpt['path']} does not fit the model ({first}); pass a matching checkpoint") from None


def model_from_checkpoint(ckpt: dict[str, Any]) -> MPCViT:
    model = MPCViT(checkpoint_config(ckpt))
    load_weights(model, ckpt)
    return model.eval()
