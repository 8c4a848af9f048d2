"""Evaluation images for accuracy under MPC: the dataset named in the ONNX metadata, or arrays from a `.npz`."""
from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from compiler.errors import UserError

# The digits split of the PyTorch side (mpcvit/data/digits.py, which imports torch): sklearn's 1797 8x8 images
# scaled to [0, 1], a stratified 80/20 split with seed 0, normalised with the mean/std in the ONNX metadata.
DIGITS_SEED = 0
DIGITS_TEST_FRACTION = 0.2


def image_array(names: list[str], input_name: str | None = None) -> str | None:
    """Which array of an .npz holds the images: the one named like the model input, else ``x``, else the first
    that is not the labels ``y`` (the same rule for ``mpcvit run --data`` and ``mpcvit-compile --check --data``)."""
    for key in (input_name, "x"):
        if key is not None and key in names:
            return key
    return next((name for name in names if name != "y"), None)


PICKLED = ("--data {path}: holds pickled Python objects, which are not loaded (unpickling can run code); save "
           "numeric arrays: numpy.savez(path, x=images, y=labels)")


def load_npz(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """The images (float; see :func:`image_array`) and optionally the labels `y` from `path`."""
    if not path.is_file():
        raise UserError(f"--data {path}: no such file; give an .npz with an array x (images) and optionally "
                        "y (labels)")
    try:
        archive = np.load(path)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        if "allow_pickle" in str(exc):
            raise UserError(PICKLED.format(path=path)) from None
        raise UserError(f"--data {path}: not a readable .npz archive ({exc}); "
                        "write one with numpy.savez(path, x=images, y=labels)") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):  # a bare .npy array
        raise UserError(f"--data {path}: a single .npy array, not an .npz archive; "
                        "write one with numpy.savez(path, x=images, y=labels)")
    with archive:
        key = image_array(archive.files)
        if key is None:
            raise UserError(f"--data {path}: no image array (found {', '.join(archive.files) or 'none'}); "
                            "save images as x and labels as y")
        try:
            x = archive[key].astype(np.float32)
            labels = archive["y"] if "y" in archive else None
        except ValueError as exc:
            if "allow_pickle" not in str(exc):
                raise UserError(f"--data {path}: arrays x/y are unreadable or not numeric ({exc}); "
                                "save float images as x and integer labels as y") from None
            raise UserError(PICKLED.format(path=path)) from None
        except (TypeError, OSError, EOFError, zipfile.BadZipFile) as exc:
            raise UserError(f"--data {path}: arrays x/y are unreadable or not numeric ({exc}); "
                            "save float images as x and integer labels as y") from None
    if x.ndim < 2 or len(x) == 0:
        raise UserError(f"--data {path}: x has shape {list(x.shape)}; give at least one image as x[N, ...]")
    y = None if labels is None else class_labels(labels, len(x), f"--data {path}")
    return x, y


def class_labels(labels: np.ndarray, count: int, source: str) -> np.ndarray:
    """``labels`` as int64 class indices, one per image: whole numbers from 0 (else UserError)."""
    labels = np.asarray(labels)
    if labels.shape != (count,):
        raise UserError(f"{source}: labels y have shape {list(labels.shape)}, expected [{count}] (one per image)")
    if labels.dtype.kind not in "iuf" or (labels.dtype.kind == "f" and not np.all(labels == np.round(labels))):
        raise UserError(f"{source}: labels y must be whole class indices (found dtype {labels.dtype}, e.g. "
                        f"{labels.flat[0]}); save integer labels")
    if labels.size and labels.min() < 0:
        raise UserError(f"{source}: labels y must be class indices from 0 (found {labels.min():g})")
    return labels.astype(np.int64)


def check_image_shape(x: np.ndarray, image_shape: list[int] | None, source: str) -> None:
    """Images must have the compiled model's shape (checked before any MPC run, not after it)."""
    if image_shape is not None and list(x.shape[1:]) != list(image_shape):
        raise UserError(f"{source}: images of shape {list(x.shape[1:])}, but the program was compiled for "
                        f"{list(image_shape)}; give x as [N, {', '.join(map(str, image_shape))}]")


def digits_test_set() -> tuple[np.ndarray, np.ndarray]:
    """The digits test images `[N, 1, 8, 8]` in [0, 1] (before normalisation) and labels."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    _, x, _, y = train_test_split((digits.images / 16.0).astype(np.float32), digits.target,
                                  test_size=DIGITS_TEST_FRACTION, random_state=DIGITS_SEED, stratify=digits.target)
    return x[:, None], y.astype(np.int64)


def _metadata_numbers(metadata: dict[str, str], key: str, default: str) -> np.ndarray:
    """The JSON number or flat list of numbers of ONNX metadata ``key``; UserError naming the key otherwise."""
    import json

    text = metadata.get(key, default)
    try:
        value = np.asarray(json.loads(text), dtype=np.float32)
    except (ValueError, TypeError):  # not JSON, or JSON that is not numbers (a string, a dict, nested lists)
        value = None
    if value is None or value.ndim > 1:
        raise UserError(f"ONNX metadata {key}={text!r} is malformed: give a JSON number or a per-channel list of "
                        f"numbers, e.g. 0.5 or [0.485, 0.456, 0.406] (re-export the model, or edit its "
                        f"metadata_props)")
    return value


def normalise(x: np.ndarray, metadata: dict[str, str]) -> np.ndarray:
    """Apply the ONNX metadata's `mpcvit.input_mean` / `input_std` (scalars or per-channel JSON lists). Raises
    UserError naming the key when one is not such JSON."""
    mean = _metadata_numbers(metadata, "mpcvit.input_mean", "0")
    std = _metadata_numbers(metadata, "mpcvit.input_std", "1")
    shape = (1, -1) + (1,) * (x.ndim - 2) if mean.ndim else ()
    return ((x - mean.reshape(shape)) / std.reshape(shape)).astype(np.float32)


def eval_images(metadata: dict[str, str], count: int, data: Path | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """`count` model-ready (normalised) images and labels: from `data`, else the metadata's dataset."""
    if count < 1:
        raise UserError(f"--images {count}: give a positive number of images")
    if data is not None:
        x, y = load_npz(data)
    else:
        dataset = metadata.get("mpcvit.dataset")
        if dataset != "digits":
            named = f"for dataset {dataset!r} (ONNX metadata mpcvit.dataset)" if dataset else \
                "(the model's ONNX metadata names no dataset)"
            raise UserError(f"--images: no built-in test set {named}: pass --data FILE.npz with an array x "
                            "(normalised images) and optionally y (labels)")
        x, y = digits_test_set()
        x = normalise(x, metadata)
    if count > len(x):
        raise UserError(f"--images {count}: the test set has only {len(x)} images; ask for at most {len(x)}")
    return x[:count], (y[:count] if y is not None else None)
