"""Row maximum for softmax max-subtraction: ``tree`` — pairwise max over the last axis in ⌈log2 cols⌉ levels.

Level: the first ⌊c/2⌋ columns against the next ⌊c/2⌋ (one vectorised comparison over all rows of all heads,
so rounds do not depend on rows or heads), an odd last column carried over. Exact in fixed point (comparisons and
selections only); the inputs' differences must stay in the comparison range (checked by the executor).
"""
from __future__ import annotations

import numpy as np

from compiler.approx import Approximation, register
from compiler.cost.primitives import Step
from compiler.fixedpoint import FixedPoint


def tree_levels(cols: int) -> list[int]:
    """Comparisons per row at each level."""
    levels = []
    while cols > 1:
        levels.append(cols // 2)
        cols = cols - cols // 2
    return levels


def rowmax_tree_reference(x_int: np.ndarray, fx: FixedPoint, cols: int | None = None) -> np.ndarray:
    x = np.asarray(x_int, dtype=np.int64)
    while x.shape[-1] > 1:
        half = x.shape[-1] // 2
        a, b = x[..., :half], x[..., half:2 * half]
        x = np.concatenate([np.where(a < b, b, a), x[..., 2 * half:]], axis=-1)
    return x[..., 0]


def rowmax_tree_steps(size: int, profile: object, cols: int | None = None) -> list[Step]:
    cols = cols or size
    rows = size // cols
    return [s for per_row in tree_levels(cols) for s in (Step("ltz", rows * per_row), Step("mul_int", rows * per_row))]


register(Approximation(
    op="rowmax", choice="tree", reference=rowmax_tree_reference, template="approx/rowmax_tree.mpc.j2",
    steps=rowmax_tree_steps, exact=lambda x: np.max(x, axis=-1), bounds=lambda cols=None: ((-8000.0, 8000.0), 0.0),
    params={"cols": None}, compared=lambda cols=None: 0.0, doc="pairwise tree max, one comparison per level"))
