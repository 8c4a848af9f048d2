"""Benchmark models built deterministically (seeded weights, no training), exported to ONNX with a fixed batch.

Attention configurations: `softmax`, `relu_softmax`, `scaling` (every head that kind) or `mu<μ>` (MPCViT: the top-μ
fraction of heads by a seeded random α keep ReLU-softmax, the rest use scaling attention — what the search's
binarisation does with a trained α). MLP: `gelu`, or `mpcvit+` (the top half of layers by a seeded gate keep the GeLU
MLP, the rest become linear, as MPCViT+).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from benchmarks import ATTENTION_CONFIGS, MLP_CONFIGS
from compiler.errors import UserError
from mpcvit.config import ModelConfig
from mpcvit.export.onnx_export import export_metadata, write_onnx
from mpcvit.models.registry import create, model_config
from mpcvit.search.binarize import contiguous_kinds, top_fraction

# input normalisation recorded in the metadata (digits statistics; random-weight models only need *some* values)
DATASETS = {"digits": {"name": "digits", "mean": [0.3], "std": [0.4]},
            "cifar10": {"name": "cifar10", "mean": [0.4914, 0.4822, 0.4465], "std": [0.247, 0.2435, 0.2616]},
            "tiny-imagenet": {"name": "tiny-imagenet", "mean": [0.48, 0.448, 0.398], "std": [0.277, 0.269, 0.282]}}
MODEL_DATASET = {"vit_7_4_32": "cifar10", "vit_9_12_64": "tiny-imagenet", "vit_2_4_32": "cifar10"}


@dataclass(frozen=True)
class ModelSpec:
    model: str              # a registered config name (mpcvit.models.registry.MODEL_CONFIGS)
    attention: str = "softmax"
    mlp: str = "gelu"
    seed: int = 0
    overrides: tuple[tuple[str, object], ...] = ()  # e.g. (("heads", 2), ("depth", 1))

    @property
    def key(self) -> str:
        extra = "".join(f"_{k}{v}" for k, v in self.overrides)
        return f"{self.model}{extra}/{self.attention}/{self.mlp}"


def head_kinds(depth: int, heads: int, attention: str, seed: int) -> list[list[str]]:
    if attention in ("softmax", "relu_softmax", "scaling"):
        return [[attention] * heads for _ in range(depth)]
    alpha = np.random.default_rng(seed).uniform(size=(depth, heads))
    keep = top_fraction(alpha, relu_softmax_fraction(attention))
    return contiguous_kinds(np.where(keep, "relu_softmax", "scaling").tolist())


def relu_softmax_fraction(attention: str) -> float:
    """μ of an `mu<μ>` config, 0 ≤ μ ≤ 1 (a negative μ would keep all heads but a few, μ > 1 all of them)."""
    try:
        mu = float(attention[2:]) if attention.startswith("mu") else None
    except ValueError:
        mu = None
    if mu is None or not 0.0 <= mu <= 1.0:
        raise UserError(f"attention config {attention!r}: use one of {', '.join(ATTENTION_CONFIGS)} "
                        "(or mu<fraction> with 0 <= fraction <= 1)")
    return mu


def mlp_kinds(depth: int, mlp: str, seed: int) -> list[str]:
    if mlp == "gelu":
        return ["gelu"] * depth
    if mlp != "mpcvit+":
        raise UserError(f"MLP config {mlp!r}: use one of {', '.join(MLP_CONFIGS)}")
    gates = np.random.default_rng(seed + 1).uniform(size=depth)
    return ["gelu" if keep else "linear" for keep in top_fraction(gates, 0.5)]


def model_cfg(spec: ModelSpec) -> ModelConfig:
    base = model_config(spec.model, **dict(spec.overrides))
    return base.replace(head_kinds=head_kinds(base.depth, base.heads, spec.attention, spec.seed),
                        mlp_kinds=mlp_kinds(base.depth, spec.mlp, spec.seed))


@dataclass(frozen=True)
class Weights:
    state_dict: dict | None  # None: seeded random initialisation
    dataset: dict            # name, mean, std: the ONNX metadata's normalisation


def trained_weights(spec: ModelSpec, epochs: int, cache: Path) -> Weights:
    """Train `spec` (its own head/MLP kinds) on digits with the PyTorch side's recipe; cached per spec and epochs."""
    from mpcvit.data import load_dataset
    from mpcvit.pipeline import train_stage
    from mpcvit.recipes import recipe
    from mpcvit.train import load_checkpoint

    path = cache / f"{spec.key.replace('/', '_')}_e{epochs}_s{spec.seed}.pt"
    if not path.is_file():
        data = load_dataset("digits")
        train_stage(model_cfg(spec), data, recipe("digits", epochs=epochs, seed=spec.seed), path, progress=False)
    checkpoint = load_checkpoint(path)
    return Weights(checkpoint["state_dict"], checkpoint["dataset"])


def export_spec(spec: ModelSpec, path: Path, weights: Weights | None = None) -> Path:
    """Seeded (or given) weights exported (dynamic batch) with the DESIGN.md metadata."""
    cfg = model_cfg(spec)
    torch.manual_seed(spec.seed)
    model = create(cfg).eval()
    if weights is not None and weights.state_dict is not None:
        model.load_state_dict(weights.state_dict)
    path.parent.mkdir(parents=True, exist_ok=True)
    dataset = weights.dataset if weights is not None else DATASETS[MODEL_DATASET.get(spec.model, "digits")]
    write_onnx(model, path, export_metadata(model, dataset))
    return path
