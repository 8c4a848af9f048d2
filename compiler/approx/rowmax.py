"""Row maximum for softmax max-subtraction: ``tree`` — a tournament over the last axis, one comparison call per level.

Level with group g (``groups``: one g per level, then pairwise, g = 2, until one column is left): the columns are
cut into g contiguous blocks of ⌊c/g⌋ columns (the last c mod g columns carried over); ONE vectorised comparison
over all rows of all heads compares every pair of blocks (g(g−1)/2 of them, so rounds do not depend on rows or
heads); block i wins where it beats every other block (ties: the lower index wins, so exactly one wins), its
indicator the product of g − 1 comparison bits, and the level's result is m_last + Σ_(i<last) win_i·(m_i − m_last):
(g − 1)² bit × value products, ⌈log2 g⌉ rounds deep. g = 2 is the pairwise max (one product, one round); a larger
g cuts the levels (65 columns: 7 pairwise levels, 4 with groups (2, 4, 4, 3)) for more comparisons and products.
Exact in fixed point (comparisons and selections only) whatever the groups; the inputs' differences must stay in
the comparison range (checked by the executor).

``drop`` t > 0 (softmax's row max, where any shift m with max ≤ m ≤ max + 2^(t+1) LSB serves: softmax is invariant
to it): the tournament runs on the inputs truncated by t bits, c = trunc(x, t), and returns m = (max c + 1)·2^t.
MP-SPDZ's probabilistic truncation gives c ∈ (x/2^t − 1, x/2^t + 1) (the reference's nearest rounding lies inside),
so max x < m ≤ max x + 2^(t+1) LSB. Its comparisons need t bits fewer (``bits`` is theirs: the inputs may reach
2^(bits + t − 1) LSB), which cuts their bytes and, per halving of the bits, a round (replicated-ring; two under
dealer). The truncation is told the inputs' bit length bits + t: at most 24 bits, MP-SPDZ's replicated-ring
truncates with one message between parties 1 and 2 (a large gap to the 64-bit ring, eprint 2018/403) instead
of 2 rounds (compiler.cost.primitives, ``trunc`` with bits).
"""
from __future__ import annotations

import numpy as np

from compiler.approx import Approximation, register
from compiler.cost.primitives import Step
from compiler.fixedpoint import FixedPoint

GROUPS = (2, 3, 4, 8)  # the group sizes :func:`best_groups` weighs per level


def tree_levels(cols: int, groups: tuple[int, ...] = ()) -> list[tuple[int, int]]:
    """(group g, block width ⌊c/g⌋) of each level."""
    levels = []
    while cols > 1:
        g = min(groups[len(levels)] if len(levels) < len(groups) else 2, cols)
        levels.append((g, cols // g))
        cols -= (g - 1) * (cols // g)
    return levels


def product_rounds(g: int) -> list[int]:
    """Bit × value products per output of each product round of a group-g level: each of the g − 1 candidates
    multiplies g factors (g − 1 bits, its difference) pairwise, ⌈log2 g⌉ rounds."""
    rounds, factors = [], g
    while factors > 1:
        rounds.append((g - 1) * (factors // 2))
        factors -= factors // 2
    return rounds


def rowmax_tree_reference(x_int: np.ndarray, fx: FixedPoint, cols: int | None = None,
                          groups: tuple[int, ...] = (), drop: int = 0) -> np.ndarray:
    x = np.asarray(x_int, dtype=np.int64)
    if drop:
        return (fx.trunc(x, drop).max(axis=-1) + 1) << drop
    return x.max(axis=-1)  # every tournament selects the maximum itself


def level_steps(rows: int, g: int, width: int) -> list[Step]:
    n = rows * width
    return [Step("ltz", n * g * (g - 1) // 2)] + [Step("mul_int", n * count) for count in product_rounds(g)]


def rowmax_tree_steps(size: int, profile: object, cols: int | None = None, groups: tuple[int, ...] = (),
                      drop: int = 0) -> list[Step]:
    """The steps; with ``drop`` first the truncation (priced at the inputs' bit length, see
    :meth:`compiler.approx.Approximation.call_steps`)."""
    cols = cols or size
    rows = size // cols
    truncation = [Step("trunc", size)] if drop else []
    return truncation + [s for g, width in tree_levels(cols, tuple(groups)) for s in level_steps(rows, g, width)]



def best_groups(cols: int, rows: int, profile: object, bits: int | None, network: str) -> tuple[int, ...]:
    """The per-level groups (from :data:`GROUPS`) with the least estimated latency on ``network`` (rounds × RTT +
    bytes / bandwidth, compiler.cost) for ``rows`` rows of ``cols`` columns, comparisons at ``bits``: a dynamic
    programme over the remaining width. Pairwise trailing levels are left implicit."""
    from dataclasses import replace

    from compiler.cost.primitives import steps_cost

    best: dict[int, tuple[float, tuple[int, ...]]] = {1: (0.0, ())}
    for width in range(2, cols + 1):
        options = []
        for g in (g for g in GROUPS if g <= width):
            steps = [replace(s, bits=bits) if s.prim == "ltz" else s for s in level_steps(rows, g, width // g)]
            rest = width - (g - 1) * (width // g)
            options.append((steps_cost(steps, profile).latency(network) + best[rest][0], (g, *best[rest][1])))
        best[width] = min(options)
    groups = list(best[cols][1])
    while groups and groups[-1] == 2:
        groups.pop()
    return tuple(groups)


register(Approximation(
    op="rowmax", choice="tree", reference=rowmax_tree_reference, template="approx/rowmax_tree.mpc.j2",
    steps=rowmax_tree_steps, exact=lambda x: np.max(x, axis=-1),
    bounds=lambda cols=None, groups=(), drop=0: ((-8000.0, 8000.0), 2.0 ** (drop + 1 - 16) if drop else 0.0),
    params={"cols": None, "groups": (), "drop": 0},
    compared=lambda cols=None, groups=(), drop=0: 0.0, doc="tournament max, one comparison call per level"))
