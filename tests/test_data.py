"""Loaders: digits split/normalisation, CIFAR-format pickles and a Tiny-ImageNet folder tree built in tmp_path."""
from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from compiler.errors import UserError
from mpcvit.data import load_dataset, random_shift
from mpcvit.data.images import CIFAR_MEAN, CIFAR_STD, IMAGENET_MEAN, IMAGENET_STD


def test_digits_split_is_fixed_and_normalised() -> None:
    a, b = load_dataset("digits"), load_dataset("digits")
    assert a.train_x.shape == (1437, 1, 8, 8) and a.test_x.shape == (360, 1, 8, 8)
    assert torch.equal(a.test_x, b.test_x) and torch.equal(a.train_y, b.train_y)
    assert abs(a.train_x.mean().item()) < 1e-5 and a.train_x.std().item() == pytest.approx(1.0, abs=1e-3)
    assert np.bincount(a.test_y.numpy()).min() >= 35  # stratified
    # the compiler's runtime rebuilds the same split without torch: same images after the recorded normalisation
    from compiler.runtime.datasets import digits_test_set

    x, y = digits_test_set()
    # torch normalises in float32: values of |v| < 4 carry ~4e-7 rounding
    np.testing.assert_allclose((x - a.mean[0]) / a.std[0], a.test_x.numpy(), atol=1e-6)
    assert np.array_equal(y, a.test_y.numpy())


def _cifar_batch(path, n: int, label_key: str, seed: int) -> tuple[np.ndarray, list[int]]:
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
    labels = rng.integers(0, 10, n).tolist()
    with open(path, "wb") as fh:
        pickle.dump({b"data": data, label_key.encode(): labels}, fh)
    return data, labels


def test_cifar10_from_pickles(tmp_path) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for i in range(1, 6):
        _cifar_batch(folder / f"data_batch_{i}", 2, "labels", i)
    test_data, test_labels = _cifar_batch(folder / "test_batch", 3, "labels", 9)
    data = load_dataset("cifar10", tmp_path)
    assert len(data.train_set) == 10 and len(data.test_set) == 3 and data.num_classes == 10
    x, y = data.test_set[1]
    assert x.shape == (3, 32, 32) and y == test_labels[1]
    # pixel (channel 2, row 5, col 7) of the CHW-flattened record, normalised with the CIFAR statistics
    raw = test_data[1].reshape(3, 32, 32)[2, 5, 7] / 255.0
    assert x[2, 5, 7].item() == pytest.approx((raw - CIFAR_MEAN[2]) / CIFAR_STD[2], abs=1e-5)
    xb, yb = next(iter(data.loader(train=True, batch_size=4, seed=0)))
    assert xb.shape == (4, 3, 32, 32) and yb.shape == (4,)


def test_cifar100_uses_fine_labels(tmp_path) -> None:
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    _cifar_batch(folder / "train", 4, "fine_labels", 0)
    _, labels = _cifar_batch(folder / "test", 2, "fine_labels", 1)
    data = load_dataset("cifar100", tmp_path)
    assert data.num_classes == 100 and [data.test_set[i][1] for i in range(2)] == labels


def test_tiny_imagenet_folder_layout(tmp_path) -> None:
    colours = {"n01443537": (255, 0, 0), "n01629819": (0, 0, 255)}
    for wnid, colour in colours.items():
        images = tmp_path / "train" / wnid / "images"
        images.mkdir(parents=True)
        for i in range(2):
            Image.new("RGB", (64, 64), colour).save(images / f"{wnid}_{i}.JPEG", format="PNG")
        (tmp_path / "train" / wnid / f"{wnid}_boxes.txt").write_text("")
    (tmp_path / "val" / "images").mkdir(parents=True)
    Image.new("RGB", (64, 64), colours["n01629819"]).save(tmp_path / "val" / "images" / "val_0.JPEG", format="PNG")
    (tmp_path / "val" / "val_annotations.txt").write_text("val_0.JPEG\tn01629819\t0\t0\t63\t63\n")
    data = load_dataset("tiny-imagenet", tmp_path)
    assert data.num_classes == 2 and len(data.train_set) == 4 and len(data.test_set) == 1
    x, y = data.test_set[0]
    assert y == 1 and x.shape == (3, 64, 64)
    expected = [(c / 255 - m) / s for c, m, s in zip(colours["n01629819"], IMAGENET_MEAN, IMAGENET_STD)]
    # a float32 mean of 4096 equal pixels: accumulated rounding ~4096 · 6e-8 · |v| ≲ 1e-5 for |v| < 2.7
    torch.testing.assert_close(x.mean((1, 2)), torch.tensor(expected), atol=1e-5, rtol=0)


@pytest.mark.parametrize("name, expected", [("cifar10", "cifar-10-batches-py/data_batch_1 not found"),
                                            ("cifar100", "cifar-100-python/train not found"),
                                            ("tiny-imagenet", "train/<wnid>/images/ not found")])
def test_missing_data_says_what_to_place_where(tmp_path, name: str, expected: str) -> None:
    with pytest.raises(UserError, match=expected.replace("<", ".").replace(">", ".")):
        load_dataset(name, tmp_path)
    with pytest.raises(UserError, match=f"data root {tmp_path / 'nope'} does not exist"):
        load_dataset(name, tmp_path / "nope")


def test_random_shift_translates_each_image() -> None:
    x = torch.arange(2 * 1 * 4 * 4, dtype=torch.float32).view(2, 1, 4, 4)
    gen = torch.Generator().manual_seed(0)
    shifted = random_shift(x, 1, gen, fill=-1.0)
    dy, dx = torch.randint(0, 3, (2, 2), generator=torch.Generator().manual_seed(0))
    for i in range(2):
        padded = torch.nn.functional.pad(x[i], (1, 1, 1, 1), value=-1.0)
        torch.testing.assert_close(shifted[i], padded[:, dy[i]:dy[i] + 4, dx[i]:dx[i] + 4])


def test_corrupt_cifar_batch_names_the_file(tmp_path) -> None:
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    _cifar_batch(folder / "train", 2, "fine_labels", 0)
    (folder / "test").write_bytes((folder / "train").read_bytes()[:100])  # truncated copy
    with pytest.raises(UserError, match=f"^{folder / 'test'} is not a CIFAR python batch \\(UnpicklingError: "):
        load_dataset("cifar100", tmp_path)
    _cifar_batch(folder / "test", 2, "labels", 0)  # CIFAR-10's label key in a CIFAR-100 batch
    with pytest.raises(UserError, match=f"^{folder / 'test'} is not a CIFAR python batch \\(KeyError: b'fine_labels'"):
        load_dataset("cifar100", tmp_path)
