"""MP-SPDZ input files: the weights of party 0 and the image(s) of party 1, in MP-SPDZ's binary input format.

MP-SPDZ reads binary inputs from ``<-IF prefix>-Binary-P<player>-0`` (``fixinput`` in ``Processor/Processor.hpp``
at 3a0a7b1d; the same code for every protocol). Party 0's weights are int64 values, each weight's fixed-point
integer q = ``FixedPoint.encode(w)`` (round to nearest, the reference executor's integers), read as is by
``sint.get_input_from(0, size=n, binary=True)`` (``fixinput_int``): no conversion, and MP-SPDZ inputs every weight
tensor of the program in one round, where one ``sfix`` ``input_from`` per tensor took a round each (vit_7_4_32:
42 rounds). Party 1's image is float64 (``sfix`` ``input_from(1, binary=2)``: the client writes its own values
v = q/2^f, which MP-SPDZ turns back into round(v·2^f) = q exactly), after the int64 number of batches it sends
when the program loops over batches. Byte order is little-endian, that of every machine MP-SPDZ builds on (x86-64,
ARM64).

Writing streams: one chunk of ``CHUNK_VALUES`` values of one tensor at a time, hashed as it goes, so that the
weights of a large model are never copied whole.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, BinaryIO, Iterable

import numpy as np

from compiler.errors import UserError
from compiler.fixedpoint import FixedPoint
from compiler.lowering.plans import batch_images

CLIENT_CODE = 2  # MP-SPDZ's `binary=` code of sfix.input_from for float64: the image has no bound at compile time
CLIENT_DTYPE = np.dtype("<f8")
WEIGHT_DTYPE = np.dtype("<i8")  # `fixinput` reads int64 for binary sint inputs: the weights' integers q
CHUNK_VALUES = 1 << 20  # values converted at a time: 8 MB of temporaries
COUNT_DTYPE = np.dtype("<i8")  # a looped program's batch count, read like the weights


def input_file(party: int) -> str:
    """Party ``party``'s input file, relative to the compiled program's directory (MP-SPDZ's name for thread 0)."""
    return f"Player-Data/Input-Binary-P{party}-0"


def input_files(manifest: dict[str, Any]) -> dict[int, str]:
    """Each party's input file, relative to the program's directory: the manifest's ``input_files``, else (a
    hand-written program without it) MP-SPDZ's text input files ``Player-Data/Input-P<i>-0``."""
    files = manifest.get("input_files") or {party: f"Player-Data/Input-P{party}-0" for party in (0, 1)}
    return {int(party): path for party, path in files.items()}


def write_values(sink: BinaryIO, data: np.ndarray, fx: FixedPoint, dtype: np.dtype, digest: Any = None) -> None:
    """Append ``data`` (row-major), quantised by ``fx``, chunk by chunk: as the integers q (WEIGHT_DTYPE) or as the
    floats q/2^f (CLIENT_DTYPE)."""
    flat = np.asarray(data).reshape(-1)
    for start in range(0, flat.size, CHUNK_VALUES):
        q = fx.encode(flat[start:start + CHUNK_VALUES])
        chunk = (q if dtype == WEIGHT_DTYPE else q / fx.scale).astype(dtype).tobytes()
        sink.write(chunk)
        if digest is not None:
            digest.update(chunk)


def write_weights(path: Path, tensors: Iterable[np.ndarray], fx: FixedPoint) -> str:
    """Write party 0's weight tensors one after another to ``path`` (int64 q each); returns the sha256 of the
    bytes written."""
    digest = hashlib.sha256()
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as sink:
        for data in tensors:
            write_values(sink, data, fx, WEIGHT_DTYPE, digest)
    return digest.hexdigest()


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


def client_batches(manifest: dict[str, Any], images: np.ndarray) -> list[np.ndarray]:
    """``images`` ([n·B, C, H, W], normalised; n >= 1 batches of the compiled batch B) as party 1 inputs them:
    one array of values per batch. A looped program (``manifest["batch_loop"]``) takes any n, an older one exactly
    one batch. Raises UserError when the images are not whole batches of the compiled shape."""
    image_shape = tuple(manifest["input_shape"])
    batch, layout = int(image_shape[0]), manifest.get("client_layout")
    images = np.asarray(images, dtype=np.float64)
    if images.shape == image_shape[1:]:
        images = images[None]
    batches = len(images) // batch if images.ndim == len(image_shape) and len(images) % batch == 0 else 0
    if not batches or (batches > 1 and not manifest.get("batch_loop")):
        return [client_values(images, image_shape, layout)]  # raises the one-batch shape error
    return [client_values(images[i * batch:(i + 1) * batch], image_shape, layout) for i in range(batches)]


def read_client_input(manifest: dict[str, Any], path: str | Path) -> np.ndarray:
    """The images ([n·B, C, H, W]) that party 1's input file ``path`` holds: the inverse of
    :func:`write_client_input` (MP-SPDZ's binary format; a text file ``Input-P1-0`` of a hand-written program is
    read as whitespace-separated numbers). A looped program's file starts with the batch count.

    Image positions the layout never reads (none in a patch embedding that covers the image) come back as 0;
    they cannot change the model's outputs. Raises UserError when the file does not hold whole batches."""
    path = Path(path)
    image_shape = tuple(manifest["input_shape"])
    looped = bool(manifest.get("batch_loop"))
    try:
        if "-Binary-" in path.name:  # MP-SPDZ names its binary input files so
            raw = path.read_bytes()
            values = np.frombuffer(raw, dtype=CLIENT_DTYPE, offset=COUNT_DTYPE.itemsize if looped else 0)
        else:
            values = np.array(path.read_text().split(), dtype=np.float64)[1 if looped else 0:]
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: not party 1's input file ({exc}); recompile the model or rewrite it with "
                        f"write_client_input") from None
    batch, image_size = int(image_shape[0]), int(np.prod(image_shape[1:], dtype=np.int64))
    layout = manifest.get("client_layout")
    per_image = len(layout) if layout is not None else image_size
    if values.size == 0 or values.size % (per_image * batch):
        raise UserError(f"{path} holds {values.size} values, not whole batches of {batch} images of {per_image}: "
                        f"rewrite it with write_client_input")
    rows = values.reshape(-1, per_image)
    if layout is None:
        return rows.reshape(-1, *image_shape[1:]).copy()
    images = np.zeros((len(rows), image_size))
    images[:, np.asarray(layout, dtype=np.int64)] = rows
    return images.reshape(-1, *image_shape[1:])


def write_client_input(manifest: Any, images: np.ndarray, path: str | Path | None = None) -> Path:
    """Write ``images`` (the model's input tensor, normalised, [n·B, C, H, W]) as party 1's input file: n batches
    of the compiled batch B (:func:`client_batches`), after their count n as int64 in a looped program (read by
    ``sint.get_input_from(1, binary=True)``: every party runs that many iterations of one execution).

    ``manifest``: a :class:`~compiler.backend.manifest.Manifest`, its dict (manifest.json loaded), or the
    directory / manifest.json of a compiled program. ``path`` defaults to ``<dir>/`` + :func:`input_file` (1).
    Raises UserError when the images are not whole batches of the compiled shape or no path is known.
    """
    from compiler.backend.manifest import Manifest

    directory = None
    if isinstance(manifest, (str, Path)):
        manifest = Manifest.load(manifest)
    if isinstance(manifest, Manifest):
        directory, manifest = manifest.directory, manifest.as_dict()
    if path is None and directory is None:
        raise UserError("write_client_input: give the output path (the manifest does not say where it lives)")
    batches = client_batches(manifest, images)
    target = Path(path) if path is not None else Path(directory) / input_file(1)
    target.parent.mkdir(parents=True, exist_ok=True)
    fx = FixedPoint(int(manifest["f"]), int(manifest["k"]))
    with open(target, "wb") as sink:
        if manifest.get("batch_loop"):
            sink.write(np.array(len(batches), dtype=COUNT_DTYPE).tobytes())
        for values in batches:
            write_values(sink, values, fx, CLIENT_DTYPE)
    return target
