"""Products with weights: MatMul/Gemm -> ``linear`` (+ bias), Mul by a public scalar -> ``scale``, and exact
algebraic folds into the weights (scales, per-channel affines, LayerNorm's γ and β, MPCViT+ linear MLPs)."""
from __future__ import annotations

import numpy as np

from compiler.ir import Graph, Node
from compiler.passes.graph_tools import (consumers, new_constant, only_use, producer_op, producers, public_scalar,
                                         remove_dead, rename_uses)


def scale_from_mul(graph: Graph) -> Graph:
    """mul(x, c) / mul(c, x) with c a public scalar -> scale(x, factor=c)."""
    for node in graph.nodes:
        if node.op != "mul":
            continue
        for secret, const in (node.inputs, node.inputs[::-1]):
            factor = public_scalar(graph, const)
            if factor is not None and graph.values[secret].role == "secret":
                node.op, node.inputs, node.attrs = "scale", [secret], {"factor": factor}
                break
    return remove_dead(graph)


def _weight(graph: Graph, name: str) -> np.ndarray | None:
    value = graph.values[name]
    return value.data if value.role in ("param", "public") and value.data is not None else None


def linear_from_matmul(graph: Graph) -> Graph:
    """matmul(x, W) with W a 2-D weight -> linear(x, W); a following add of a bias vector folds in."""
    for node in graph.nodes:
        weight = _weight(graph, node.inputs[1]) if node.op == "matmul" else None
        if weight is not None and weight.ndim == 2 and graph.values[node.inputs[0]].role == "secret":
            node.op = "linear"
    uses, prod = consumers(graph), producers(graph)
    folded: list[Node] = []
    for add in graph.nodes:
        if add.op != "add":
            continue
        for product, bias in (add.inputs, add.inputs[::-1]):
            linear = producer_op(prod, product, "linear")
            data = _weight(graph, bias)
            if (linear is None or len(linear.inputs) != 2 or data is None or only_use(uses, graph, product) is None
                    or data.size != graph.values[linear.inputs[1]].shape[1]
                    or graph.values[add.outputs[0]].shape != graph.values[product].shape):
                continue
            linear.inputs.append(bias if data.ndim == 1 else new_constant(graph, bias, data.reshape(-1)))
            linear.outputs = add.outputs
            folded.append(add)
            break
    graph.nodes = [n for n in graph.nodes if all(n is not f for f in folded)]
    return remove_dead(graph)


def linear_parts(graph: Graph, node: Node) -> tuple[np.ndarray, np.ndarray]:
    weight = graph.values[node.inputs[1]].data
    bias = graph.values[node.inputs[2]].data if len(node.inputs) > 2 else np.zeros(weight.shape[1])
    return weight.astype(np.float64), bias.astype(np.float64)


def set_linear_parts(graph: Graph, node: Node, weight: np.ndarray, bias: np.ndarray) -> None:
    """Give ``node`` new (private copies of) weights: shared weight values stay untouched."""
    node.inputs = [node.inputs[0], new_constant(graph, node.inputs[1], weight),
                   new_constant(graph, node.inputs[2] if len(node.inputs) > 2 else node.inputs[1] + "_bias", bias)]
    graph.values[node.outputs[0]].shape = (*graph.values[node.inputs[0]].shape[:-1], weight.shape[1])


def fold_channel_affine(graph: Graph) -> Graph:
    """Per-channel mul/add by a weight (LayerScale ``x * gamma``, a BatchNormalization's scale and shift) next to a
    linear folds into its weights, exactly:

    * after the linear (its only use): mul by c -> W[:, j] * c_j, b_j * c_j; add of c -> b + c;
    * the same through a layout between them (a Conv's tokens laid back out as [B, C, H, W], then BatchNorm's
      [C, 1, 1] weights): c read back through the layout's index must be one value per column of the linear;
    * before the linear (the mul/add's only use): mul by c -> W[j, :] * c_j; add of c -> b + c @ W.
    A per-channel op with no linear next to it stays a generic ``mul``/``add``."""
    changed = True
    while changed:
        changed = False
        uses, prod = consumers(graph), producers(graph)
        for node in graph.nodes:
            operands = _weighted_operands(graph, node)
            if operands is None:
                continue
            secret, data = operands
            out = node.outputs[0]
            neutral = 1.0 if node.op == "mul" else 0.0
            between = producer_op(prod, secret, "layout")
            if between is not None and (len(between.inputs) != 1 or only_use(uses, graph, secret) is not node):
                between = None
            before = producer_op(prod, between.inputs[0] if between is not None else secret, "linear")
            if before is not None and only_use(uses, graph, before.outputs[0]) is (between or node):
                vector = _columns_through(graph, between, data, neutral, before.outputs[0]) if between is not None \
                    else channel_vector(data, graph.values[secret].shape[-1])
            else:
                before, vector = None, None
            after = only_use(uses, graph, out)
            if vector is not None:
                weight, bias = linear_parts(graph, before)
                if node.op == "mul":
                    set_linear_parts(graph, before, weight * vector, bias * vector)
                else:
                    set_linear_parts(graph, before, weight, bias + vector)
            elif after is not None and after.op == "linear" and after.inputs[0] == out and \
                    (vector := channel_vector(data, graph.values[secret].shape[-1])) is not None:
                weight, bias = linear_parts(graph, after)
                if node.op == "mul":
                    set_linear_parts(graph, after, weight * vector[:, None], bias)
                else:
                    set_linear_parts(graph, after, weight, bias + vector @ weight)
            else:
                continue
            node.inputs = [secret]
            _bypass(graph, node)
            remove_dead(graph)
            changed = True
            break
    return graph


def fold_layernorm_affine(graph: Graph) -> Graph:
    """A LayerNorm's γ and β fold into the linears that take its output (every use): W[j, :]·γ_j and b + β @ W,
    exactly; the LayerNorm keeps γ = 1, β = 0, which the MPC LayerNorm skips (one ring product and truncation
    fewer per element). Where another op uses the output, or γ/β are not per-channel, nothing changes."""
    uses = consumers(graph)
    for node in graph.nodes:
        out = node.outputs[0] if node.op == "layernorm" else None
        if out is None or out in graph.outputs or not uses.get(out) or \
                any(user.op != "linear" or user.inputs[1:].count(out) or user.inputs[0] != out for user in uses[out]):
            continue
        width = graph.values[out].shape[-1]
        gamma, beta = (None if graph.values[n].data is None else channel_vector(graph.values[n].data, width)
                       for n in node.inputs[1:3])
        if gamma is None or beta is None or (np.all(gamma == 1) and np.all(beta == 0)):
            continue
        for user in uses[out]:
            weight, bias = linear_parts(graph, user)
            set_linear_parts(graph, user, weight * gamma[:, None], bias + beta @ weight)
        node.inputs = [node.inputs[0], new_constant(graph, node.inputs[1], np.ones(width)),
                       new_constant(graph, node.inputs[2], np.zeros(width))]
    return remove_dead(graph)


def _weighted_operands(graph: Graph, node: Node) -> tuple[str, np.ndarray] | None:
    """For mul/add(x, c) either way round, x secret and c a weight that broadcasts to x's shape: (x, c)."""
    if node.op not in ("mul", "add") or len(node.inputs) != 2:
        return None
    for secret, other in (node.inputs, node.inputs[::-1]):
        data = _weight(graph, other)
        shape = graph.values[secret].shape
        if graph.values[secret].role == "secret" and data is not None and shape and \
                graph.values[node.outputs[0]].shape == shape and data.ndim <= len(shape) and \
                all(d in (1, s) for d, s in zip(data.shape[::-1], shape[::-1])):
            return secret, data.astype(np.float64)
    return None


def channel_vector(data: np.ndarray, width: int) -> np.ndarray | None:
    """The per-channel vector [width] of a weight that broadcasts along the last axis only (shape (), (1,),
    (width,) or (1, ..., 1, width)), else None."""
    if any(d != 1 for d in data.shape[:-1]):
        return None
    return np.broadcast_to(data.reshape(-1), (width,)) if data.size in (1, width) else None


def _columns_through(graph: Graph, layout: Node, data: np.ndarray, neutral: float, source: str) -> np.ndarray | None:
    """The weight ``data`` (broadcast to the layout's output) carried back onto ``source`` through the layout's
    index: one value per column of ``source`` (elements the layout does not read get ``neutral``), else None."""
    index = np.asarray(layout.attrs["index"]).reshape(-1)
    per_out = np.broadcast_to(data, layout.attrs["index"].shape).reshape(-1)
    shape = graph.values[source].shape
    carried = np.full(int(np.prod(shape)), np.nan)
    carried[index] = per_out
    if not np.array_equal(carried[index], per_out):  # an element read twice with two different weights
        return None
    rows = carried.reshape(-1, shape[-1])
    read = ~np.isnan(rows)
    columns = np.where(read.any(axis=0), np.where(read, rows, -np.inf).max(axis=0), neutral)
    return columns if np.all(~read | (rows == columns)) else None


def fold_scales(graph: Graph) -> Graph:
    """scale(scale(x)) merges; scale after a linear (its only use) or before one folds into W and b; scale 1 goes."""
    changed = True
    while changed:
        changed = False
        uses, prod = consumers(graph), producers(graph)
        for node in graph.nodes:
            if node.op != "scale":
                continue
            factor, source, out = node.attrs["factor"], node.inputs[0], node.outputs[0]
            before = producer_op(prod, source, "linear", "scale")
            after = only_use(uses, graph, out)
            if before is not None and only_use(uses, graph, source) is node:
                if before.op == "scale":
                    before.attrs["factor"] *= factor
                else:
                    weight, bias = linear_parts(graph, before)
                    set_linear_parts(graph, before, weight * factor, bias * factor)
            elif after is not None and after.op == "linear" and after.inputs[0] == out:
                weight, bias = linear_parts(graph, after)
                set_linear_parts(graph, after, weight * factor, bias)
            elif factor != 1.0 or out in graph.outputs:
                continue
            _bypass(graph, node)
            remove_dead(graph)
            changed = True
            break
    return graph


def _bypass(graph: Graph, node: Node) -> None:
    """Remove a node whose output now equals its input, rewiring consumers (and graph outputs) to the input."""
    graph.nodes.remove(node)
    rename_uses(graph, node.outputs[0], node.inputs[0])


def fuse_linear_chains(graph: Graph) -> Graph:
    """MPCViT+ linear MLP: linear2(linear1(x)) with nothing between -> one linear (W1 @ W2, b1 @ W2 + b2), unless
    the hidden width is a bottleneck that makes the product matrix costlier than the two factors."""
    changed = True
    while changed:
        changed = False
        uses = consumers(graph)
        for first in graph.nodes:
            second = only_use(uses, graph, first.outputs[0]) if first.op == "linear" else None
            if second is None or second.op != "linear" or second.inputs[0] != first.outputs[0]:
                continue
            w1, b1 = linear_parts(graph, first)
            w2, b2 = linear_parts(graph, second)
            if w1.shape[0] * w2.shape[1] > w1.size + w2.size:
                continue
            second.inputs[0] = first.inputs[0]
            set_linear_parts(graph, second, w1 @ w2, b1 @ w2 + b2)
            graph.nodes.remove(first)
            changed = True
            break
    return remove_dead(graph)
