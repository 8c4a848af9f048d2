"""CIFAR-10/100 (python pickle batches) and Tiny-ImageNet (standard folder layout) from a local root; never downloads."""
from __future__ import annotations

import pickle
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from compiler.errors import UserError
from mpcvit.data.common import DatasetSplits

CIFAR_MEAN, CIFAR_STD = [0.4914, 0.4822, 0.4465], [0.2470, 0.2435, 0.2616]
IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]

_CIFAR = {
    "cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], b"labels", 10),
    "cifar100": ("cifar-100-python", ["train"], ["test"], b"fine_labels", 100),
}


def _missing(name: str, root: Path, expected: str) -> UserError:
    return UserError(f"{name}: {expected} not found under data root {root}; place the extracted dataset there "
                     f"(mpcvit never downloads) or pass --data-root")


class ArrayImages(Dataset):
    """uint8 HWC images in memory + labels, through a torchvision transform."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform: Callable) -> None:
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.transform(Image.fromarray(self.images[i])), int(self.labels[i])


class FileImages(Dataset):
    def __init__(self, files: list[Path], labels: list[int], transform: Callable) -> None:
        self.files, self.labels, self.transform = files, labels, transform

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        with Image.open(self.files[i]) as image:
            return self.transform(image.convert("RGB")), self.labels[i]


def _transforms(img_size: int, mean: list[float], std: list[float], rand_augment: str
                ) -> tuple[Callable, Callable]:
    from timm.data.auto_augment import rand_augment_transform
    from torchvision import transforms  # imported here: torchvision takes seconds to load

    train = [transforms.RandomCrop(img_size, padding=img_size // 8), transforms.RandomHorizontalFlip()]
    if rand_augment:
        hparams = dict(translate_const=int(img_size * 0.45), img_mean=tuple(round(255 * m) for m in mean))
        train.append(rand_augment_transform(rand_augment, hparams))
    tail = [transforms.ToTensor(), transforms.Normalize(mean, std)]
    return transforms.Compose(train + tail), transforms.Compose(tail)


def _read_cifar_batches(folder: Path, names: list[str], label_key: bytes) -> tuple[np.ndarray, np.ndarray]:
    images, labels = [], []
    for name in names:
        try:
            with open(folder / name, "rb") as fh:
                batch = pickle.load(fh, encoding="bytes")
            images.append(np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
            labels.append(np.asarray(batch[label_key], dtype=np.int64))
        except (pickle.UnpicklingError, EOFError, KeyError, TypeError, ValueError) as exc:
            raise UserError(f"{folder / name} is not a CIFAR python batch ({type(exc).__name__}: {exc}); "
                            "re-extract the dataset's python version there") from None
    return np.concatenate(images), np.concatenate(labels)


def cifar(name: str, root: str | Path, rand_augment: str = "") -> DatasetSplits:
    root = Path(root)
    folder_name, train_names, test_names, label_key, classes = _CIFAR[name]
    folder = root / folder_name
    missing = [n for n in train_names + test_names if not (folder / n).is_file()]
    if missing:
        raise _missing(name, root, f"{folder_name}/{missing[0]}")
    train_tf, test_tf = _transforms(32, CIFAR_MEAN, CIFAR_STD, rand_augment)
    train = ArrayImages(*_read_cifar_batches(folder, train_names, label_key), train_tf)
    test = ArrayImages(*_read_cifar_batches(folder, test_names, label_key), test_tf)
    return DatasetSplits(name, None, None, None, None, classes, 32, 3, CIFAR_MEAN, CIFAR_STD, train, test)


def tiny_imagenet(root: str | Path, rand_augment: str = "") -> DatasetSplits:
    """``root/train/<wnid>/images/*.JPEG`` and ``root/val/images`` labelled by ``root/val/val_annotations.txt``."""
    root = Path(root)
    train_dir, annotations = root / "train", root / "val" / "val_annotations.txt"
    if not train_dir.is_dir():
        raise _missing("tiny-imagenet", root, "train/<wnid>/images/")
    if not annotations.is_file():
        raise _missing("tiny-imagenet", root, "val/val_annotations.txt")
    wnids = sorted(p.name for p in train_dir.iterdir() if (p / "images").is_dir())
    if not wnids:
        raise _missing("tiny-imagenet", root, "train/<wnid>/images/")
    label_of = {w: i for i, w in enumerate(wnids)}
    train_files = [(f, label_of[w]) for w in wnids for f in sorted((train_dir / w / "images").iterdir())
                   if f.suffix.lower() in (".jpeg", ".jpg", ".png")]
    val_files = []
    for line in annotations.read_text().splitlines():
        fields = line.split("\t")
        if len(fields) < 2:
            continue
        if fields[1] not in label_of:
            raise UserError(f"tiny-imagenet: {annotations} names class {fields[1]} that has no train/{fields[1]}/images")
        val_files.append((root / "val" / "images" / fields[0], label_of[fields[1]]))
    train_tf, test_tf = _transforms(64, IMAGENET_MEAN, IMAGENET_STD, rand_augment)
    train = FileImages([f for f, _ in train_files], [y for _, y in train_files], train_tf)
    test = FileImages([f for f, _ in val_files], [y for _, y in val_files], test_tf)
    return DatasetSplits("tiny-imagenet", None, None, None, None, len(wnids), 64, 3, IMAGENET_MEAN, IMAGENET_STD,
                         train, test)
