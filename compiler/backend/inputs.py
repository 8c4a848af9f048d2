"""MP-SPDZ input files: the weights of party 0 and the image(s) of party 1 (text, whitespace-separated decimals).

Values are written already quantised to f fractional bits (k/2^f has an exact, round-tripping decimal), so that
MP-SPDZ's conversion to fixed point reproduces exactly the integers of the reference executor.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np

from compiler.errors import UserError
from compiler.fixedpoint import FixedPoint
from compiler.lowering.plans import batch_images


def quantised_text(values: list[np.ndarray], fx: FixedPoint) -> str:
    """Whitespace-separated decimals of round(v·2^f)/2^f, row-major, one tensor after another."""
    if not values:
        return ""
    flat = np.concatenate([np.asarray(v, dtype=np.float64).reshape(-1) for v in values])
    return exact_decimals(fx.encode(flat), fx.f)


_FOUR_DIGITS = np.array([list(f"{i:04d}".encode()) for i in range(10000)], dtype=np.uint8)


def _digits(values: np.ndarray, count: int) -> np.ndarray:
    """Zero-padded decimal digits of non-negative int64 ``values`` (count a multiple of 4), as uint8 rows."""
    chunks = []
    for _ in range(count // 4):
        values, low = np.divmod(values, 10000)
        chunks.append(_FOUR_DIGITS[low])
    return np.concatenate(chunks[::-1], axis=1)


def exact_decimals(x_int: np.ndarray, f: int) -> str:
    """The exact decimal of every x/2^f, by vectorised digit arithmetic (50 MB of weights in well under a second,
    where Python's float repr takes seconds): x/2^f = q + r/2^f and r/2^f = r·5^f/10^f has exactly f digits."""
    x_int = np.asarray(x_int, dtype=np.int64).reshape(-1)
    frac_digits = -(-f // 4) * 4
    if frac_digits > 18 or not x_int.size:  # r·5^f·10^(frac_digits-f) < 10^frac_digits must fit int64 (f <= 16)
        # float64 holds x/2^f exactly (|x| < 2^53) and repr round-trips it: exact too, only slower
        return " ".join(map(repr, (x_int / 2.0 ** f).tolist())) + "\n"
    a = np.abs(x_int)
    q, r = a >> f, (a & ((1 << f) - 1)) * 5 ** f
    int_digits = -(-len(str(int(q.max()))) // 4) * 4
    r = r * 10 ** (frac_digits - f)
    sign = np.where(x_int < 0, ord("-"), ord(" ")).astype(np.uint8)[:, None]
    point = np.full((a.size, 1), ord("."), dtype=np.uint8)
    space = np.full((a.size, 1), ord(" "), dtype=np.uint8)
    text = np.concatenate([sign, _digits(q, int_digits), point, _digits(r, frac_digits), space], axis=1)
    text[-1, -1] = ord("\n")
    return text.tobytes().decode("ascii")


def write_text(path: Path, text: str) -> str:
    """Write and return the sha256 of the bytes written."""
    data = text.encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def per_image_layout(index: np.ndarray | None, batch: int, image_size: int) -> list[int] | None:
    """The client's layout of ONE image, when the batch layout repeats it image after image."""
    if index is None:
        return None
    rows = np.asarray(index, dtype=np.int64).reshape(batch, -1)
    one = rows[0]
    if not np.array_equal(rows, one[None] + image_size * np.arange(batch)[:, None]):
        raise UserError("the input layout mixes images of the batch; export the model with a per-image patch "
                        "embedding")
    return one.tolist()


def client_values(images: np.ndarray, image_shape: tuple[int, ...], layout: list[int] | None) -> np.ndarray:
    """The batch of model inputs [B, ...] as party 1 inputs it: each image laid out patch-wise (im2col)."""
    flat = batch_images(images, image_shape).reshape(image_shape[0], -1)
    return flat.reshape(-1) if layout is None else flat[:, np.asarray(layout, dtype=np.int64)].reshape(-1)


def client_text(manifest: dict[str, Any], images: np.ndarray) -> str:
    """Party 1's input file for ``images`` ([n·B, C, H, W], normalised; n >= 1 batches of the compiled batch B).

    A looped program (``manifest["batch_loop"]``) reads the number of batches n first, then n batches; an older
    one reads exactly one batch (n must be 1). Raises UserError when the images are not whole batches."""
    image_shape = tuple(manifest["input_shape"])
    batch = int(image_shape[0])
    images = np.asarray(images, dtype=np.float64)
    if images.shape == image_shape[1:]:
        images = images[None]
    batches = len(images) // batch if images.ndim == len(image_shape) and len(images) % batch == 0 else 0
    if not batches or (batches > 1 and not manifest.get("batch_loop")):
        return quantised_text([client_values(images, image_shape, manifest.get("client_layout"))],
                              _fixed_point(manifest))  # raises the one-batch shape error
    values = [client_values(images[i * batch:(i + 1) * batch], image_shape, manifest.get("client_layout"))
              for i in range(batches)]
    text = quantised_text(values, _fixed_point(manifest))
    return f"{batches}\n{text}" if manifest.get("batch_loop") else text


def read_client_input(manifest: dict[str, Any], path: str | Path) -> np.ndarray:
    """The images ([n·B, C, H, W]) that party 1's input file ``path`` holds: the inverse of :func:`client_text`.

    Image positions the layout never reads (none in a patch embedding that covers the image) come back as 0;
    they cannot change the model's outputs. Raises UserError when the file does not hold whole batches."""
    image_shape = tuple(manifest["input_shape"])
    try:
        values = np.array(Path(path).read_text().split(), dtype=np.float64)
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: not party 1's input file ({exc}); recompile the model or rewrite it with "
                        f"write_client_input") from None
    if manifest.get("batch_loop"):
        values = values[1:]
    batch, image_size = int(image_shape[0]), int(np.prod(image_shape[1:], dtype=np.int64))
    layout = manifest.get("client_layout")
    per_image = len(layout) if layout is not None else image_size
    if values.size == 0 or values.size % (per_image * batch):
        raise UserError(f"{path} holds {values.size} values, not whole batches of {batch} images of {per_image}: "
                        f"rewrite it with write_client_input")
    rows = values.reshape(-1, per_image)
    if layout is None:
        return rows.reshape(-1, *image_shape[1:])
    images = np.zeros((len(rows), image_size))
    images[:, np.asarray(layout, dtype=np.int64)] = rows
    return images.reshape(-1, *image_shape[1:])


def _fixed_point(manifest: dict[str, Any]) -> FixedPoint:
    return FixedPoint(int(manifest["f"]), int(manifest["k"]))


def write_client_input(manifest: Any, images: np.ndarray, path: str | Path | None = None) -> Path:
    """Write ``images`` (the model's input tensor, normalised, [n·B, C, H, W]) as party 1's input file
    (:func:`client_text`: n batches of the compiled batch B in one execution of a looped program).

    ``manifest``: a :class:`~compiler.backend.manifest.Manifest`, its dict (manifest.json loaded), or the
    directory / manifest.json of a compiled program. ``path`` defaults to ``<dir>/Player-Data/Input-P1-0``.
    """
    from compiler.backend.manifest import Manifest

    directory = None
    if isinstance(manifest, (str, Path)):
        manifest = Manifest.load(manifest)
    if isinstance(manifest, Manifest):
        directory, manifest = manifest.directory, manifest.as_dict()
    if path is None and directory is None:
        raise UserError("write_client_input: give the output path (the manifest does not say where it lives)")
    target = Path(path) if path is not None else Path(directory) / "Player-Data" / "Input-P1-0"
    write_text(target, client_text(manifest, images))
    return target
