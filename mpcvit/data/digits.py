"""scikit-learn's 8×8 digits (offline): a fixed stratified split, normalised with the training set's statistics."""
from __future__ import annotations

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from mpcvit.data.common import DatasetSplits

DIGITS_TEST_FRACTION = 0.2
DIGITS_SPLIT_SEED = 0


def digits() -> DatasetSplits:
    data = load_digits()
    images = (data.images / 16.0).astype(np.float32)  # [1797, 8, 8] in [0, 1]
    x_train, x_test, y_train, y_test = train_test_split(
        images, data.target, test_size=DIGITS_TEST_FRACTION, random_state=DIGITS_SPLIT_SEED, stratify=data.target)
    mean, std = float(x_train.mean()), float(x_train.std())

    def tensors(x: np.ndarray, y: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.from_numpy((x[:, None] - mean) / std), torch.from_numpy(y.astype(np.int64))

    return DatasetSplits("digits", *tensors(x_train, y_train), *tensors(x_test, y_test),
                         num_classes=10, img_size=8, in_chans=1, mean=[mean], std=[std])
