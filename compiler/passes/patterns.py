"""Elementwise patterns: the decomposed LayerNorm, the erf and tanh GeLUs in their exporter variants, and means
(global average pooling) as a local sum and a public scale."""
from __future__ import annotations

import math

import numpy as np

from compiler.ir import Graph, Node, Value
from compiler.passes.graph_tools import (consumers, fresh_name, new_constant, only_use, producer_op, producers,
                                         public_scalar, remove_dead)


def _last_axis_mean(graph: Graph, node: Node | None) -> str | None:
    """The input of a keepdims mean over the last axis."""
    if node is None or not node.attrs["keepdims"]:
        return None
    rank = len(graph.values[node.inputs[0]].shape)
    return node.inputs[0] if list(node.attrs["axes"]) == [rank - 1] else None


def _scalar_operand(graph: Graph, node: Node) -> tuple[str, float] | tuple[None, None]:
    """For add(x, c) / add(c, x) with c a public scalar: (x, c)."""
    for x, c in (node.inputs, node.inputs[::-1]):
        value = public_scalar(graph, c)
        if value is not None:
            return x, value
    return None, None


def fuse_layernorm(graph: Graph) -> Graph:
    """(x - mean(x)) / sqrt(mean((x - mean(x))^2) + eps) [* gamma] [+ beta] -> layernorm(x, gamma, beta)."""
    prod, uses = producers(graph), consumers(graph)
    for div in [n for n in graph.nodes if n.op == "div"]:
        centered, root = div.inputs
        sub = producer_op(prod, centered, "sub")
        sqrt = producer_op(prod, root, "sqrt")
        add_eps = producer_op(prod, sqrt.inputs[0], "add") if sqrt else None
        variance, eps = _scalar_operand(graph, add_eps) if add_eps else (None, None)
        square = producer_op(prod, _last_axis_mean(graph, producer_op(prod, variance, "reduce_mean")) or "", "mul")
        if sub is None or square is None or square.inputs != [centered, centered]:
            continue
        x = sub.inputs[0]
        if _last_axis_mean(graph, producer_op(prod, sub.inputs[1], "reduce_mean")) != x:
            continue
        width = graph.values[x].shape[-1]
        out, gamma, beta = div.outputs[0], None, None
        for role in ("mul", "add"):
            user = only_use(uses, graph, out)
            if user is None or user.op != role:
                break
            other = user.inputs[1] if user.inputs[0] == out else user.inputs[0]
            data = graph.values[other].data
            if data is None or data.size != width:
                break
            out = user.outputs[0]
            if role == "mul":
                gamma = other
            else:
                beta = other
        gamma = _vector(graph, gamma, width, 1.0, x + "_gamma")
        beta = _vector(graph, beta, width, 0.0, x + "_beta")
        last = graph.producer(out)
        last.op, last.inputs, last.outputs = "layernorm", [x, gamma, beta], [out]
        last.attrs = {"eps": eps}
        prod, uses = producers(graph), consumers(graph)
    return remove_dead(graph)


def _vector(graph: Graph, name: str | None, width: int, default: float, base: str) -> str:
    if name is None:
        return new_constant(graph, base, np.full(width, default))
    data = graph.values[name].data
    return name if data.shape == (width,) else new_constant(graph, name, data.reshape(width))


def fuse_gelu(graph: Graph) -> Graph:
    """x * 0.5 * (1 + erf(x / sqrt(2))) in any association of the product -> gelu(x)."""
    prod, uses = producers(graph), consumers(graph)
    for erf in [n for n in graph.nodes if n.op == "erf"]:
        pre = producer_op(prod, erf.inputs[0], "scale")
        plus_one = only_use(uses, graph, erf.outputs[0])
        if pre is None or not math.isclose(pre.attrs["factor"], 1 / math.sqrt(2), rel_tol=1e-6) or plus_one is None \
                or plus_one.op != "add" or _scalar_operand(graph, plus_one)[1] != 1.0:
            continue
        x = pre.inputs[0]
        last = _product_with_half_x(graph, prod, uses, plus_one.outputs[0], x)
        if last is not None:
            last.op, last.inputs, last.attrs = "gelu", [x], {}
            prod, uses = producers(graph), consumers(graph)
    return remove_dead(graph)


TANH_GELU_GAP = 4.8e-4  # max over x of |erf GeLU - tanh GeLU| (4.73e-4, at |x| = 2.70)


def fuse_gelu_tanh(graph: Graph) -> Graph:
    """x * 0.5 * (1 + tanh(sqrt(2/pi) * (x + 0.044715 x^3))) -> gelu(x, approximate='tanh'), the cube as the
    frontend writes Pow 3: mul(mul(x, x), x) in either operand order.

    The node's float semantic is the tanh formula (``compiler.ir_eval``); the fixed-point GeLU approximations
    target the erf GeLU, so their error against it is their stated bound plus :data:`TANH_GELU_GAP`."""
    prod, uses = producers(graph), consumers(graph)
    for tanh in [n for n in graph.nodes if n.op == "tanh"]:
        pre = producer_op(prod, tanh.inputs[0], "scale")
        inner = producer_op(prod, pre.inputs[0], "add") if pre is not None and \
            math.isclose(pre.attrs["factor"], math.sqrt(2 / math.pi), rel_tol=1e-6) else None
        plus_one = only_use(uses, graph, tanh.outputs[0])
        if inner is None or plus_one is None or plus_one.op != "add" or _scalar_operand(graph, plus_one)[1] != 1.0:
            continue
        for x, cubic in (inner.inputs, inner.inputs[::-1]):
            term = producer_op(prod, cubic, "scale")
            if term is not None and math.isclose(term.attrs["factor"], 0.044715, rel_tol=1e-6) and \
                    _is_cube(prod, term.inputs[0], x):
                break
        else:
            continue
        last = _product_with_half_x(graph, prod, uses, plus_one.outputs[0], x)
        if last is not None:
            last.op, last.inputs, last.attrs = "gelu", [x], {"approximate": "tanh"}
            prod, uses = producers(graph), consumers(graph)
    return remove_dead(graph)


def _is_cube(prod: dict[str, Node], name: str, x: str) -> bool:
    """``name`` = mul(mul(x, x), x) or mul(x, mul(x, x))."""
    cube = producer_op(prod, name, "mul")
    if cube is None or x not in cube.inputs:
        return False
    square = producer_op(prod, cube.inputs[1] if cube.inputs[0] == x else cube.inputs[0], "mul")
    return square is not None and square.inputs == [x, x]


def _product_with_half_x(graph: Graph, prod: dict[str, Node], uses: dict[str, list[Node]], start: str,
                         x: str) -> Node | None:
    """Follow single-use scale/mul nodes from ``start`` until the product is start * x * 0.5; its last node."""
    current, factor, has_x = start, 1.0, False
    while True:
        node = only_use(uses, graph, current)
        if node is None:
            return None
        if node.op == "scale":
            factor *= node.attrs["factor"]
        elif node.op == "mul" and not has_x:
            other = node.inputs[1] if node.inputs[0] == current else node.inputs[0]
            pre = producer_op(prod, other, "scale")
            if other == x:
                has_x = True
            elif pre is not None and pre.inputs[0] == x and only_use(uses, graph, other) is node:
                has_x, factor = True, factor * pre.attrs["factor"]
            else:
                return None
        else:
            return None
        if has_x and math.isclose(factor, 0.5, rel_tol=1e-6):
            return node
        current = node.outputs[0]


def mean_as_sum(graph: Graph) -> Graph:
    """reduce_mean(x) feeding a linear (global average pooling before the head) -> scale(reduce_sum(x) / 2^q,
    2^q / count), whose public scale :func:`compiler.passes.linear.fold_scales` then folds into the linear's
    weights: the mean costs a local sum and one truncation. The pre-scale q = ⌈log2 count⌉ puts the sum at the
    mean's magnitude (in range wherever the mean is, which the sum of many tokens need not be) and keeps the
    folded weights at the weights' own precision (W/count at f bits would lose log2(count) bits of each: 0.7 % of
    the logits with 197 tokens). Elsewhere a mean stays (its lowering, :func:`compiler.lowering.plans.mean_scale`,
    picks its constants from the calibrated range). Runs after :func:`fuse_layernorm`, whose pattern reads the
    means."""
    uses = consumers(graph)
    for node in [n for n in graph.nodes if n.op == "reduce_mean"]:
        head = only_use(uses, graph, node.outputs[0])
        if head is None or head.op != "linear" or head.inputs[0] != node.outputs[0]:
            continue
        shape = graph.values[node.inputs[0]].shape
        count = int(np.prod([shape[a] for a in node.attrs["axes"]]))
        shift = math.ceil(math.log2(count)) if count > 1 else 0
        total = fresh_name(graph, node.outputs[0] + "_sum")
        graph.add_value(Value(total, graph.values[node.outputs[0]].shape))
        position = graph.nodes.index(node)
        graph.nodes[position:position + 1] = [
            Node("reduce_sum", node.inputs, [total], {**node.attrs, "shift": shift}, name=node.name),
            Node("scale", [total], node.outputs, {"factor": 2.0 ** shift / count}, name=node.name)]
    return graph
