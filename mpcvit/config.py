"""Configuration as plain dataclasses built from JSON-like dicts with strict key checking.

A config travels inside every checkpoint and every exported ONNX file, so it must round-trip through JSON exactly.
"""
from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from compiler.errors import UserError

HEAD_KINDS = ("softmax", "relu_softmax", "scaling")
MLP_KINDS = ("gelu", "relu", "linear")

T = TypeVar("T")


def from_dict(cls: type[T], data: dict[str, Any], what: str) -> T:
    """Build dataclass ``cls`` from ``data``, rejecting unknown keys with the list of valid ones."""
    if not isinstance(data, dict):
        raise UserError(f"{what}: expected a JSON object, got {type(data).__name__}")
    valid = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(data) - set(valid))
    if unknown:
        raise UserError(f"{what}: unknown key(s) {', '.join(unknown)}; valid keys: {', '.join(valid)}")
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in data and not _has_type(data[f.name], hints[f.name]):
            raise UserError(f"{what}: {f.name} must be {f.type}, got {data[f.name]!r}")
    return cls(**data)


def _has_type(value: Any, hint: Any) -> bool:
    """JSON value against a field annotation; containers by their outer type (their items are checked later)."""
    if typing.get_origin(hint) in (types.UnionType, typing.Union):
        return any(_has_type(value, h) for h in typing.get_args(hint))
    if hint is Any:
        return True
    if typing.get_origin(hint) is not None:
        return isinstance(value, typing.get_origin(hint))
    if isinstance(value, bool) and hint is not bool:  # JSON true is not a number
        return False
    return isinstance(value, (int, float) if hint is float else hint)


class _ConfigData:
    """What both configs offer: plain-dict form (checkpoints, ONNX metadata) and copies with changes."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any):
        return dataclasses.replace(self, **changes)


@dataclass
class ModelConfig(_ConfigData):
    """A ViT-Lite shape plus the attention kind of every head and the MLP kind of every layer."""

    name: str = "vit_2_4_8"
    img_size: int = 8
    in_chans: int = 1
    patch_size: int = 2
    num_classes: int = 10
    depth: int = 2
    heads: int = 4
    dim: int = 64
    mlp_ratio: float = 2.0
    drop_rate: float = 0.0
    attn_drop_rate: float = 0.0
    drop_path_rate: float = 0.0
    eps: float = 1e-6  # ReLU-softmax: relu(S) / (sum relu(S) + eps)
    head_kinds: list[list[str]] | None = None  # [depth][heads]; None = all softmax
    mlp_kinds: list[str] | None = None  # [depth]; None = all gelu
    search: bool = False  # searchable: learnable alpha per head (and MLP gates if search_mlp)
    search_softmax: bool = False  # put softmax into the search space (3-way mix per head)
    search_mlp: bool = False  # learnable token-wise gate GeLU-MLP vs linear MLP per layer

    def __post_init__(self) -> None:
        for key in ("img_size", "in_chans", "patch_size", "num_classes", "depth", "heads", "dim"):
            if int(getattr(self, key)) <= 0:
                raise UserError(f"model config: {key} must be a positive integer, got {getattr(self, key)!r}")
        if self.img_size % self.patch_size:
            raise UserError(f"model config: img_size {self.img_size} is not a multiple of patch_size {self.patch_size}")
        if self.dim % self.heads:
            raise UserError(f"model config: dim {self.dim} is not divisible by heads {self.heads}")
        if self.head_kinds is None:
            self.head_kinds = [["softmax"] * self.heads for _ in range(self.depth)]
        if self.mlp_kinds is None:
            self.mlp_kinds = ["gelu"] * self.depth
        self.head_kinds = [list(layer) for layer in self.head_kinds]
        self.mlp_kinds = list(self.mlp_kinds)
        if len(self.head_kinds) != self.depth or any(len(layer) != self.heads for layer in self.head_kinds):
            raise UserError(f"model config: head_kinds must be {self.depth} lists of {self.heads} kinds")
        bad = sorted({k for layer in self.head_kinds for k in layer} - set(HEAD_KINDS))
        if bad:
            raise UserError(f"model config: unknown head kind(s) {', '.join(bad)}; valid: {', '.join(HEAD_KINDS)}")
        if len(self.mlp_kinds) != self.depth:
            raise UserError(f"model config: mlp_kinds must list {self.depth} kinds, got {len(self.mlp_kinds)}")
        bad = sorted(set(self.mlp_kinds) - set(MLP_KINDS))
        if bad:
            raise UserError(f"model config: unknown MLP kind(s) {', '.join(bad)}; valid: {', '.join(MLP_KINDS)}")

    @property
    def tokens(self) -> int:
        return (self.img_size // self.patch_size) ** 2 + 1

    @property
    def head_dim(self) -> int:
        return self.dim // self.heads

    def shape_key(self) -> dict[str, Any]:
        """What must agree for weights to be interchangeable (kinds and search flags may differ)."""
        keys = ("img_size", "in_chans", "patch_size", "num_classes", "depth", "heads", "dim", "mlp_ratio")
        return {k: getattr(self, k) for k in keys}



@dataclass
class TrainConfig(_ConfigData):
    """The training recipe (AdamW + cosine with warm-up, timm's augmentations and losses), as data."""

    epochs: int = 30
    batch_size: int = 64
    lr: float = 2e-3
    min_lr: float = 1e-5
    weight_decay: float = 0.05
    warmup_epochs: float = 2.0
    label_smoothing: float = 0.0
    mixup: float = 0.0  # timm Mixup alpha (0 = off)
    cutmix: float = 0.0  # timm CutMix alpha (0 = off)
    mixup_prob: float = 1.0
    rand_augment: str = ""  # timm RandAugment spec, e.g. "rand-m9-n2-mstd0.5" (image datasets only)
    random_shift: int = 0  # pixels of random translation (tensor datasets such as digits)
    grad_clip: float = 0.0
    seed: int = 0
    # search
    search_lambda: float = 0.0  # weight of the (normalised) expected MPC cost
    alpha_lr: float = 1e-2
    # knowledge distillation
    kd_ce_weight: float = 1.0
    kd_logit_weight: float = 0.0
    kd_token_weight: float = 0.0
    kd_temperature: float = 1.0
    num_workers: int = 0

    def __post_init__(self) -> None:
        positive = ("batch_size", "lr", "alpha_lr", "kd_temperature")
        for key in positive + ("epochs", "min_lr", "weight_decay", "warmup_epochs", "label_smoothing", "mixup",
                               "cutmix", "mixup_prob", "random_shift", "grad_clip", "search_lambda", "kd_ce_weight",
                               "kd_logit_weight", "kd_token_weight", "num_workers"):
            value = getattr(self, key)
            if value < 0 or (key in positive and value == 0):
                raise UserError(f"train config: {key} must be {'> 0' if key in positive else '>= 0'}, got {value}")



@dataclass
class RunConfig:
    """A JSON config file: ``{"model": {...}, "train": {...}}`` — both sections optional."""

    model: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)


def read_json_file(path: str | Path, what: str, hint: str) -> Any:
    """The parsed JSON at ``path``; a missing file or bad JSON is one line naming ``what`` (and ``hint``)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{what} {path} does not exist; {hint}")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise UserError(f"{what} {path}: invalid JSON ({exc.msg} at line {exc.lineno})") from None


def load_json_config(path: str | Path) -> RunConfig:
    data = read_json_file(path, "config file", "pass a JSON file with optional 'model' and 'train' sections")
    return from_dict(RunConfig, data, f"config file {path}")
