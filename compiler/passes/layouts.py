"""Layout passes: compose chains of ``layout`` nodes into one index map, drop identities, fold column
permutations/selections into neighbouring linear weights, and move the image's layout into the input writer."""
from __future__ import annotations

import numpy as np

from compiler.ir import Graph, Node, Value
from compiler.passes.graph_tools import (consumers, fresh_name, new_constant, only_use, producer_op, producers,
                                         remove_dead, rename_uses)
from compiler.passes.linear import linear_parts, set_linear_parts


def scales_after_layouts(graph: Graph) -> Graph:
    """layout(scale(x)) -> scale(layout(x)) (exact: a scalar commutes with data movement), so that layouts meet
    and compose — e.g. the sqrt(1/sqrt(d)) torch's fused attention puts on q and k between its transposes."""
    changed = True
    while changed:
        changed = False
        uses, prod = consumers(graph), producers(graph)
        for layout in graph.nodes:
            scale = producer_op(prod, layout.inputs[0], "scale") if layout.op == "layout" else None
            if scale is None or len(layout.inputs) != 1 or only_use(uses, graph, scale.outputs[0]) is not layout:
                continue
            moved = fresh_name(graph, layout.outputs[0] + "_unscaled")
            graph.add_value(Value(moved, graph.values[layout.outputs[0]].shape))
            factor = scale.attrs["factor"]
            scale.op, scale.outputs, scale.attrs = "layout", [moved], layout.attrs  # x is defined before scale
            layout.op, layout.inputs, layout.attrs = "scale", [moved], {"factor": factor}
            changed = True
    return remove_dead(graph)


def weights_before_layouts(graph: Graph) -> Graph:
    """add/mul(layout(x), c), c a weight, the layout a bijection of x's elements (a reshape or transpose) read
    only by this op, whose own output goes to a layout: -> layout(add/mul(x, c')), c' = c carried back through the
    index. Exact; the two layouts then meet and compose (Swin's shifted-window mask, added to the scores on a
    [B, windows, H, N, N] view between two reshapes)."""
    changed = True
    while changed:
        changed = False
        uses, prod = consumers(graph), producers(graph)
        for node in graph.nodes:
            if node.op not in ("add", "mul") or len(node.inputs) != 2:
                continue
            after = only_use(uses, graph, node.outputs[0])
            for position, (secret, other) in enumerate((node.inputs, node.inputs[::-1])):
                layout = producer_op(prod, secret, "layout")
                weight = graph.values[other]
                if layout is not None and weight.role != "secret" and weight.data is not None and \
                        after is not None and after.op == "layout" and len(layout.inputs) == 1 and \
                        only_use(uses, graph, secret) is node and _bijective(graph, layout) and \
                        graph.values[node.outputs[0]].shape == graph.values[secret].shape:
                    break
            else:
                continue
            index = np.asarray(layout.attrs["index"]).reshape(-1)
            source_shape = graph.values[layout.inputs[0]].shape
            carried = np.empty(index.size)
            carried[index] = np.broadcast_to(weight.data, graph.values[secret].shape).reshape(-1)
            moved_weight = new_constant(graph, other + "_carried", carried.reshape(source_shape), weight.role)
            moved = fresh_name(graph, node.outputs[0] + "_before_layout")
            graph.add_value(Value(moved, source_shape))
            out = node.outputs[0]
            node.inputs = [layout.inputs[0], moved_weight] if position == 0 else [moved_weight, layout.inputs[0]]
            node.outputs = [moved]
            layout.inputs, layout.outputs = [moved], [out]
            a, b = graph.nodes.index(layout), graph.nodes.index(node)
            graph.nodes[a], graph.nodes[b] = node, layout  # x is defined before the layout, so before node now
            changed = True
            break
    return remove_dead(graph)


def _bijective(graph: Graph, layout: Node) -> bool:
    index = np.asarray(layout.attrs["index"]).reshape(-1)
    return index.size == graph.values[layout.inputs[0]].size and np.array_equal(np.sort(index), np.arange(index.size))


def row_permutation(index: np.ndarray, in_shape: tuple[int, ...]) -> np.ndarray | None:
    """If ``index`` (output [..., K]) moves whole rows of an input [..., K], every row exactly once: the input row
    of each output row."""
    width = in_shape[-1] if in_shape else 0
    if not width or index.shape[-1] != width or index.size != int(np.prod(in_shape)):
        return None
    rows = index.reshape(-1, width)
    source = rows[:, 0] // width
    ok = np.array_equal(rows, source[:, None] * width + np.arange(width)) and \
        np.array_equal(np.sort(source), np.arange(len(source)))
    return source if ok else None


def permutations_after_linear(graph: Graph) -> Graph:
    """linear(layout(x)) where the layout only permutes whole rows (nn.MultiheadAttention's sequence-first
    transposes [B, N, C] <-> [N, B, C]) -> layout(linear(x)): the same work, and the layout moves on to meet the
    next layouts (the head split) and compose with them. Row selections stay before the linear (cheaper there)."""
    changed = True
    while changed:
        changed = False
        uses, prod = consumers(graph), producers(graph)
        for linear in graph.nodes:
            layout = producer_op(prod, linear.inputs[0], "layout") if linear.op == "linear" else None
            if layout is None or len(layout.inputs) != 1 or only_use(uses, graph, layout.outputs[0]) is not linear:
                continue
            source = layout.inputs[0]
            rows = row_permutation(layout.attrs["index"], graph.values[source].shape)
            if rows is None:
                continue
            out_shape = graph.values[linear.outputs[0]].shape
            width = out_shape[-1]
            moved = fresh_name(graph, linear.outputs[0] + "_rows")
            graph.add_value(Value(moved, (*graph.values[source].shape[:-1], width)))
            index = (rows[:, None] * width + np.arange(width)).reshape(out_shape)
            position = graph.nodes.index(linear)
            graph.nodes[position:position + 1] = [
                Node("linear", [source, *linear.inputs[1:]], [moved], dict(linear.attrs), name=linear.name),
                Node("layout", [moved], linear.outputs, {"index": index}, name=layout.name)]
            changed = True
            break
    return remove_dead(graph)


def compose_layouts(graph: Graph) -> Graph:
    """Every layout reads non-layout tensors only: a layout of a layout becomes one index map (vectorised)."""
    prod = producers(graph)
    for node in graph.nodes:
        if node.op == "layout" and any(producer_op(prod, name, "layout") for name in node.inputs):
            node.inputs, node.attrs["index"] = _substitute(graph, prod, node)
    remove_identity_layouts(graph)
    return remove_dead(graph)


def _substitute(graph: Graph, prod: dict[str, Node], node: Node) -> tuple[list[str], np.ndarray]:
    """Re-express ``node``'s index over the inputs of the layouts feeding it (each source tensor once)."""
    sources: list[str] = []
    offsets: dict[str, int] = {}
    segments: list[np.ndarray] = []
    for name in node.inputs:
        inner = producer_op(prod, name, "layout")
        names = inner.inputs if inner is not None else [name]
        for source in names:
            if source not in offsets:
                offsets[source] = sum(graph.values[s].size for s in sources)
                sources.append(source)
        # position in concat(names) -> position in concat(sources)
        remap = np.concatenate([offsets[s] + np.arange(graph.values[s].size) for s in names])
        segments.append(remap[inner.attrs["index"].reshape(-1)] if inner is not None else remap)
    return sources, np.concatenate(segments)[node.attrs["index"]]


def is_identity(graph: Graph, node: Node) -> bool:
    index = node.attrs["index"]
    return (len(node.inputs) == 1 and graph.values[node.inputs[0]].shape == index.shape
            and np.array_equal(index.reshape(-1), np.arange(index.size)))


def remove_identity_layouts(graph: Graph) -> Graph:
    """A layout that copies its single input unchanged (same shape, arange index) is dropped."""
    for node in [n for n in graph.nodes if n.op == "layout" and is_identity(graph, n)]:
        if node.outputs[0] in graph.outputs and graph.producer(node.inputs[0]) is None:
            continue  # keep an output that would otherwise be a bare input/param
        graph.nodes.remove(node)
        rename_uses(graph, node.outputs[0], node.inputs[0])
    return remove_dead(graph)


def column_selection(index: np.ndarray, in_shape: tuple[int, ...]) -> np.ndarray | None:
    """If ``index`` keeps every row of an input [..., K] and picks the same columns in each, those columns."""
    if index.shape[:-1] != tuple(in_shape[:-1]):
        return None
    width = in_shape[-1]
    rows = index.reshape(-1, index.shape[-1])
    cols = rows[0]
    expected = np.arange(rows.shape[0])[:, None] * width + cols[None, :]
    return cols if rows.size and np.array_equal(rows, expected) and cols.min() >= 0 and cols.max() < width else None


def fold_layouts_into_linear(graph: Graph) -> Graph:
    """layout(linear(x)) picking columns -> linear with W[:, cols]; linear(layout(x)) picking columns of x ->
    linear with the rows of W scattered (summed) onto x's columns. Exact; removes the layout."""
    changed = True
    while changed:
        changed = False
        uses, prod = consumers(graph), producers(graph)
        for node in graph.nodes:
            if node.op != "layout" or len(node.inputs) != 1:
                continue
            source, out = node.inputs[0], node.outputs[0]
            cols = column_selection(node.attrs["index"], graph.values[source].shape)
            if cols is None:
                continue
            before = producer_op(prod, source, "linear")
            after = only_use(uses, graph, out)
            if before is not None and only_use(uses, graph, source) is node:
                weight, bias = linear_parts(graph, before)
                set_linear_parts(graph, before, weight[:, cols], bias[cols])
                graph.values[source].shape = graph.values[out].shape
            elif after is not None and after.op == "linear" and after.inputs[0] == out:
                weight, bias = linear_parts(graph, after)
                scattered = np.zeros((graph.values[source].shape[-1], weight.shape[1]))
                np.add.at(scattered, cols, weight)
                after.inputs[0] = source
                set_linear_parts(graph, after, scattered, bias)
                graph.nodes.remove(node)
                changed = True
                break
            else:
                continue
            graph.nodes.remove(node)
            rename_uses(graph, out, source)
            changed = True
            break
    return remove_dead(graph)


def layout_into_input(graph: Graph) -> Graph:
    """The image's only consumer is a layout (the patch embedding's im2col): party 1 applies it in plaintext.

    The ``input`` node then gets ``layout_index`` (int64, the patch-ordered shape, indexing the flattened image in
    C order) and ``image_shape`` (the shape the client's image has); its value takes the patch-ordered shape:
    the input writer secret-shares ``image.reshape(-1)[layout_index]``.
    """
    uses = consumers(graph)
    for node in graph.nodes:
        if node.op != "input" or "layout_index" in node.attrs:
            continue
        name = node.outputs[0]
        layout = only_use(uses, graph, name)
        if layout is None or layout.op != "layout" or layout.inputs != [name]:
            continue
        node.attrs.update(layout_index=layout.attrs["index"], image_shape=graph.values[name].shape)
        graph.values[name].shape = graph.values[layout.outputs[0]].shape
        graph.nodes.remove(layout)
        rename_uses(graph, layout.outputs[0], name)
    return remove_dead(graph)
