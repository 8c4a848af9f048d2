"""What every dataset provides: train/test data (tensors or torch Datasets) plus its shape and normalisation."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator

import torch
from torch.utils.data import DataLoader, Dataset


@dataclass
class DatasetSplits:
    name: str
    train_x: Any  # torch.Tensor [N, C, H, W] (in-memory sets) or None when train is a Dataset
    train_y: Any
    test_x: Any
    test_y: Any
    num_classes: int
    img_size: int
    in_chans: int
    mean: list[float]
    std: list[float]
    train_set: Dataset | None = None
    test_set: Dataset | None = None

    @property
    def in_memory(self) -> bool:
        return self.train_set is None

    def loader(self, train: bool, batch_size: int, seed: int, num_workers: int = 0) -> "BatchIterable":
        if self.in_memory:
            x, y = (self.train_x, self.train_y) if train else (self.test_x, self.test_y)
            return TensorBatches(x, y, batch_size, shuffle=train, seed=seed)
        dataset = self.train_set if train else self.test_set
        generator = torch.Generator().manual_seed(seed)
        return DataLoader(dataset, batch_size=batch_size, shuffle=train, drop_last=train, generator=generator,
                          num_workers=num_workers)

    def sample_input(self) -> torch.Tensor:
        """One normalised test image [1, C, H, W] (for export checks)."""
        if self.in_memory:
            return self.test_x[:1].clone()
        return self.test_set[0][0][None]


BatchIterable = Any  # an iterable of (x, y) batches with len()


class TensorBatches:
    """Shuffled mini-batches over in-memory tensors, reproducible per epoch (no worker/collate overhead)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int, shuffle: bool, seed: int) -> None:
        self.x, self.y, self.batch_size, self.shuffle = x, y, batch_size, shuffle
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        n = len(self.x)
        return n // self.batch_size if self.shuffle else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = len(self.x)
        order = torch.randperm(n, generator=self.generator) if self.shuffle else torch.arange(n)
        for i in range(len(self)):
            idx = order[i * self.batch_size:(i + 1) * self.batch_size]
            yield self.x[idx], self.y[idx]


def random_shift(x: torch.Tensor, max_shift: int, generator: torch.Generator, fill: float = 0.0) -> torch.Tensor:
    """Translate every image by its own random (dy, dx) ∈ [-max_shift, max_shift]², uncovered pixels = ``fill``
    (the normalised background), vectorised."""
    if max_shift <= 0:
        return x
    B, C, H, W = x.shape
    padded = torch.nn.functional.pad(x, (max_shift,) * 4, value=fill)
    dy, dx = torch.randint(0, 2 * max_shift + 1, (2, B), generator=generator)
    rows = (dy[:, None] + torch.arange(H)[None]).view(B, 1, H, 1).expand(B, C, H, W)
    cols = (dx[:, None] + torch.arange(W)[None]).view(B, 1, 1, W).expand(B, C, H, W)
    flat = padded.flatten(2)
    index = (rows * (W + 2 * max_shift) + cols).flatten(2)
    return flat.gather(2, index).view(B, C, H, W)
