"""Memory access patterns of the emitted program, as vectorised MP-SPDZ address vectors.

MP-SPDZ gathers/scatters a whole vector with one instruction from a ``regint`` address vector
(``sfix.load_mem(addresses)`` / ``v.store_in_mem(addresses)``). ``regint.inc(size, base, step, repeat, wrap)``
yields ``base + ((i // repeat) % wrap) * step``; a sum of a few of them expresses any affine index map (transposes,
broadcasts, column selections), so no layout ever needs a per-element Python loop in the program.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Affine:
    """index[i_0, …, i_n] = base + Σ_j step_j · i_j, as (step, repeat, wrap) terms over the flat position."""

    size: int
    base: int
    terms: tuple[tuple[int, int, int], ...]  # (step, repeat, wrap)

    def expr(self, origin: str) -> str:
        """MP-SPDZ expression of the address vector, ``origin`` (e.g. ``t3.address``) added to the base."""
        start = f"{origin} + {self.base}" if self.base else origin
        if not self.terms:
            return f"regint.inc({self.size}, {start}, 0)"
        parts = [f"regint.inc({self.size}, {start if i == 0 else 0}, {step}, {repeat}, {wrap})"
                 for i, (step, repeat, wrap) in enumerate(self.terms)]
        return " + ".join(parts)


def affine(index: np.ndarray) -> Affine | None:
    """The affine form of an integer index array (any shape), or None when it is not affine."""
    index = np.asarray(index, dtype=np.int64)
    if index.size == 0:
        return None
    shape = index.shape
    base = int(index.reshape(-1)[0])
    dims: list[tuple[int, int]] = []  # (size, stride) of the non-trivial dims, outermost first
    expected = np.full(shape, base, dtype=np.int64)
    for axis, size in enumerate(shape):
        if size > 1:
            unit = tuple(1 if a == axis else 0 for a in range(len(shape)))
            stride = int(index[unit]) - base
            dims.append((size, stride))
            expected = expected + stride * np.arange(size).reshape([-1 if a == axis else 1 for a in range(len(shape))])
    if not np.array_equal(expected, index):
        return None
    merged: list[tuple[int, int]] = []
    for size, stride in dims:  # an outer dim of stride s·b over an inner one of size b, stride s: one dim
        if merged and merged[-1][1] == stride * size:
            prev_size, _ = merged.pop()
            merged.append((prev_size * size, stride))
        else:
            merged.append((size, stride))
    terms = []
    repeat = index.size
    for size, stride in merged:
        repeat //= size
        if stride:
            terms.append((stride, repeat, size))
    return Affine(int(index.size), base, tuple(terms))


@dataclass(frozen=True)
class Run:
    source: int  # which input
    src_start: int
    out_start: int
    length: int


def runs(index: np.ndarray, input_sizes: list[int]) -> list[Run]:
    """Maximal copies of consecutive elements: output positions and source positions both increase by one."""
    flat = np.asarray(index, dtype=np.int64).reshape(-1)
    if flat.size == 0:
        return []
    offsets = np.cumsum([0] + list(input_sizes))
    source = np.searchsorted(offsets, flat, side="right") - 1
    breaks = np.flatnonzero((np.diff(flat) != 1) | (np.diff(source) != 0)) + 1
    starts = np.concatenate([[0], breaks])
    ends = np.concatenate([breaks, [flat.size]])
    return [Run(int(source[s]), int(flat[s] - offsets[source[s]]), int(s), int(e - s)) for s, e in zip(starts, ends)]


def broadcast_index(shape: tuple[int, ...], out_shape: tuple[int, ...]) -> np.ndarray:
    """Flat positions in a tensor of ``shape`` read by each element of its numpy broadcast to ``out_shape``."""
    size = int(np.prod(shape, dtype=np.int64))
    return np.broadcast_to(np.arange(size, dtype=np.int64).reshape(shape), out_shape)


def column_pattern(cols: list[int]) -> tuple[int, int] | None:
    """(start, step) when the column list is an arithmetic progression."""
    cols = [int(c) for c in cols]
    if len(cols) == 1:
        return cols[0], 1
    step = cols[1] - cols[0]
    if step > 0 and all(b - a == step for a, b in zip(cols, cols[1:])):
        return cols[0], step
    return None
