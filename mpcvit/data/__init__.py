"""Datasets: digits (offline, the demo's), CIFAR-10/100 and Tiny-ImageNet from a local root."""
from __future__ import annotations

from pathlib import Path

from compiler.errors import UserError
from mpcvit.catalog import DATASETS
from mpcvit.data.common import DatasetSplits, TensorBatches, random_shift
from mpcvit.data.digits import digits
from mpcvit.data.images import cifar, tiny_imagenet

def load_dataset(name: str, root: str | Path | None = None, rand_augment: str = "") -> DatasetSplits:
    if name == "digits":
        return digits()
    if name not in DATASETS:
        raise UserError(f"unknown dataset {name!r}; valid: {', '.join(DATASETS)}")
    if root is None:
        raise UserError(f"{name}: no data root given; pass --data-root DIR holding the extracted dataset")
    if not Path(root).is_dir():
        raise UserError(f"{name}: data root {root} does not exist; create it and place the extracted dataset there")
    if name == "tiny-imagenet":
        return tiny_imagenet(root, rand_augment)
    return cifar(name, root, rand_augment)


__all__ = ["DATASETS", "DatasetSplits", "TensorBatches", "load_dataset", "digits", "cifar", "tiny_imagenet",
           "random_shift"]
