"""Default training recipes per dataset (overridable by a JSON config's "train" section and CLI flags)."""
from __future__ import annotations

from typing import Any

from mpcvit.config import TrainConfig, from_dict

_IMAGES = dict(epochs=300, batch_size=128, lr=5.5e-4, min_lr=1e-5, weight_decay=0.05, warmup_epochs=10,
               label_smoothing=0.1, mixup=0.8, cutmix=1.0, mixup_prob=1.0, rand_augment="rand-m9-n2-mstd0.5",
               num_workers=2)

RECIPES: dict[str, dict[str, Any]] = {
    # tuned for the ≤5-minute CPU demo: ~0.5 s an epoch on 2 cores
    "digits": dict(epochs=100, batch_size=32, lr=3e-3, min_lr=1e-5, weight_decay=0.05, warmup_epochs=2,
                   label_smoothing=0.1),
    "cifar10": _IMAGES,
    "cifar100": _IMAGES,
    "tiny-imagenet": dict(_IMAGES, batch_size=64),
}

DEFAULT_MODELS = {"digits": "vit_2_4_8", "cifar10": "vit_7_4_32", "cifar100": "vit_7_4_32",
                  "tiny-imagenet": "vit_9_12_64"}


def recipe(dataset: str, **overrides: Any) -> TrainConfig:
    return from_dict(TrainConfig, {**RECIPES.get(dataset, {}), **overrides}, f"train config ({dataset})")
