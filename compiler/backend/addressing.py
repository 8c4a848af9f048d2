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


@dataclass(frozen=True)
class StridedRun:
    """A 2-D affine copy: ``count`` runs of ``length`` elements; element i of run r is read from input ``source``
    at src_start + r·src_jump + i·src_step and written at out_start + r·out_jump + i·out_step."""

    source: int
    src_start: int
    src_step: int
    out_start: int
    out_step: int
    length: int
    count: int = 1
    src_jump: int = 0
    out_jump: int = 0

    @property
    def size(self) -> int:
        return self.length * self.count

    def expr(self, origin: str, start: int, step: int, jump: int) -> str:
        """MP-SPDZ address vector of one side (``origin`` + its start, step and jump)."""
        inner = f"regint.inc({self.size}, {origin} + {start}, {step}, 1, {self.length})"
        return inner if self.count == 1 else f"{inner} + regint.inc({self.size}, 0, {jump}, {self.length})"

    def reads(self, origin: str) -> str:
        return self.expr(origin, self.src_start, self.src_step, self.src_jump)

    def writes(self, origin: str) -> str:
        return self.expr(origin, self.out_start, self.out_step, self.out_jump)


def strided_runs(index: np.ndarray, input_sizes: list[int]) -> list[StridedRun]:
    """The fewest runs of constant source stride along one output axis (the axis that gives the fewest).

    An index map that is neither affine nor a few contiguous copies is often affine along one axis in pieces:
    an im2col with padding reads each (channel, kernel offset) row with the convolution's stride, broken only
    where the window leaves the image (the padding reads a zero constant, a run of source step 0). One gather and
    one scatter per run, whatever the run's length. Runs of the same shape whose starts advance by constant jumps
    (the same kernel offset in consecutive output rows) merge into one 2-D run."""
    index = np.asarray(index, dtype=np.int64)
    if index.size == 0:
        return []
    offsets = np.cumsum([0] + list(input_sizes))
    positions = np.arange(index.size, dtype=np.int64).reshape(index.shape)
    best: list[StridedRun] | None = None
    for axis in range(index.ndim):
        rows = np.moveaxis(index, axis, -1).reshape(-1, index.shape[axis])
        outs = np.moveaxis(positions, axis, -1).reshape(-1, index.shape[axis])
        out_step = int(outs[0, 1] - outs[0, 0]) if rows.shape[1] > 1 else 1
        found = _merge_runs(_row_runs(rows, outs, offsets, out_step))
        if best is None or len(found) < len(best):
            best = found
    assert best is not None
    return best


def _row_runs(rows: np.ndarray, outs: np.ndarray, offsets: np.ndarray, out_step: int) -> list[StridedRun]:
    """Greedy maximal runs of each row: a run goes on while it stays in one input and keeps its first step."""
    found = []
    length = rows.shape[1]
    for row, out, src in zip(rows, outs, np.searchsorted(offsets, rows, side="right") - 1):
        steps, moved = np.diff(row), np.diff(src) != 0
        # j cannot extend to j+1 once its step differs from the previous one or the input changes there
        stops = np.flatnonzero((steps[1:] != steps[:-1]) | moved[1:]) + 1
        i = 0
        while i < length:
            if i == length - 1 or moved[i]:
                j, step = i, 0
            else:
                k = np.searchsorted(stops, i, side="right")
                j, step = (int(stops[k]) if k < stops.size else length - 1), int(steps[i])
            found.append(StridedRun(int(src[i]), int(row[i] - offsets[src[i]]), step, int(out[i]), out_step,
                                    j - i + 1))
            i = j + 1
    return found


def _merge_runs(found: list[StridedRun]) -> list[StridedRun]:
    """Merge runs of one shape (input, length, steps) whose starts advance by constant jumps into 2-D runs."""
    merged: list[StridedRun] = []
    open_block: dict[tuple[int, int, int, int], int] = {}  # run shape -> index in `merged` of its last block
    for run in found:
        key = (run.source, run.length, run.src_step, run.out_step)
        at = open_block.get(key)
        if at is not None:
            block = merged[at]
            src_jump, out_jump = run.src_start - block.src_start, run.out_start - block.out_start
            if block.count > 1:
                src_jump, out_jump = src_jump // block.count, out_jump // block.count
            if (block.count == 1 or (src_jump, out_jump) == (block.src_jump, block.out_jump)) and \
                    run.src_start == block.src_start + block.count * src_jump and \
                    run.out_start == block.out_start + block.count * out_jump and out_jump != 0:
                merged[at] = StridedRun(block.source, block.src_start, block.src_step, block.out_start,
                                        block.out_step, block.length, block.count + 1, src_jump, out_jump)
                continue
        open_block[key] = len(merged)
        merged.append(run)
    return merged


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
