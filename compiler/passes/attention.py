"""Attention pattern: one ``attention`` node per layer with a kind per head.

Starting from each secret ``P @ V`` product, walk back: V, Q and K^T are layouts of [B, N, C] sources (their
composed index maps give each head's columns; rows read in another order, Swin's windows, get a row gather); P is
a head-axis concatenation (a layout) of groups, each one kind — softmax, ReLU-softmax relu(S)/(sum(relu(S)) + eps),
or scaling S * c — of a head selection of S = (Q * a) @ (K^T * a') * b. Models that run each kind group as its
own chain (slices/index_select of q, k, v, then a head-axis concat of the group outputs) give one attention per
group; :func:`merge_attention` joins them.
Per-head factors (1/sqrt(d), and c * N for scaling heads, whose kind means S / N) become the ``scale`` attr and
then fold into the q projection's columns when that linear feeds only this attention (:func:`fold_attention_scale`).
A param/public tensor added to the scores before the kind (BEiT's relative-position bias, a mask) becomes the
node's optional 4th input ``bias`` [b, H, N, N] (b: 1 or the batch): S = (q kᵀ)·scale + bias.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from compiler.ir import Graph, Node, Value
from compiler.passes.graph_tools import (consumers, fresh_name, new_constant, producer_op, producers, public_scalar,
                                         remove_dead)
from compiler.passes.linear import linear_parts, set_linear_parts


@dataclass
class _Group:
    kind: str
    s_heads: np.ndarray  # head of S feeding each head of this group
    factor: float  # multiplies S before the kind (scaling heads: relative to S / N)
    eps: float | None
    bias: np.ndarray | None = None  # [b, heads of this group, N, N] added after the factor (b: 1 or the batch)


@dataclass
class _Match:
    sources: tuple[str, str, str]
    rows: tuple[tuple[np.ndarray, int], ...]  # per source: (row read for [b, n] [B, N], row width)
    q_cols: np.ndarray  # [H_s, d] per head of S
    k_cols: np.ndarray
    v_cols: np.ndarray  # [H, d] per output head
    head_group: list[tuple[_Group, int]]  # per output head: its group and the S head it reads
    qk_factor: float  # scales found on the q and k paths
    nodes: list[Node] = field(default_factory=list)  # every node of the matched subgraph
    bias: np.ndarray | None = None  # [b, H, N, N] per output head, added to the scaled scores
    bias_role: str = "public"


def _rows_and_columns(index: np.ndarray, src_shape: tuple[int, ...],
                      transposed: bool) -> tuple[np.ndarray, np.ndarray, int] | None:
    """(rows [B, N], cols [H, d], width) if ``index`` ([B, H, N, d], or [B, H, d, N] when transposed) reads, for
    token n of image b, the columns cols[h] of one row of its source seen as a matrix of rows of ``width``
    (the last dims' product, the fewest that work): index[b, h, n, j] = rows[b, n] * width + cols[h, j].
    Usually rows[b, n] = b * N + n of a [B, N, C] source; Swin's windows read permuted rows, a per-head
    normalised q ([B, N, H, d], see :func:`norm_heads_on_tokens`) rows of width H * d."""
    if index.ndim != 4:
        return None
    index = np.swapaxes(index, -1, -2) if transposed else index
    for axis in range(len(src_shape) - 1, 0, -1):
        width = int(np.prod(src_shape[axis:]))
        rows, cols = np.divmod(index, width)
        row_map, col_map = rows[:, 0, :, 0], cols[0, :, 0, :]
        if np.array_equal(rows, np.broadcast_to(row_map[:, None, :, None], rows.shape)) and \
                np.array_equal(cols, np.broadcast_to(col_map[None, :, None, :], cols.shape)):
            return row_map, col_map, width
    return None


def _head_selection(index: np.ndarray, in_shapes: list[tuple[int, ...]]) -> list[tuple[int, int]] | None:
    """For a layout [B, H, R, S] over inputs [B, h_i, R, S] that copies whole heads: (input, head) per head."""
    if index.ndim != 4 or any(len(s) != 4 or s[0] != index.shape[0] or s[2:] != index.shape[2:] for s in in_shapes):
        return None
    batch, _, rows, cols = index.shape
    block = rows * cols
    sizes = np.array([s[1] for s in in_shapes])
    offsets = np.concatenate([[0], np.cumsum(batch * sizes * block)])
    first = index[0, :, 0, 0]
    which = np.searchsorted(offsets, first, side="right") - 1
    head = (first - offsets[which]) // block
    if np.any((first - offsets[which]) % block) or np.any(head >= sizes[which]):
        return None
    expected = (offsets[which] + head * block)[None, :, None, None] + \
        (np.arange(batch)[:, None] * sizes[which][None, :] * block)[:, :, None, None] + \
        np.arange(block).reshape(rows, cols)[None, None]
    return list(zip(which.tolist(), head.tolist())) if np.array_equal(index, expected) else None


class _Matcher:
    def __init__(self, graph: Graph) -> None:
        self.graph, self.prod = graph, producers(graph)
        self.bias_roles: set[str] = set()

    def node(self, name: str, *ops: str) -> Node | None:
        return producer_op(self.prod, name, *ops)

    def peel_scales(self, name: str, nodes: list[Node]) -> tuple[str, float]:
        factor = 1.0
        while (scale := self.node(name, "scale")) is not None:
            factor *= scale.attrs["factor"]
            nodes.append(scale)
            name = scale.inputs[0]
        return name, factor

    def columns(self, name: str, nodes: list[Node],
                transposed: bool = False) -> tuple[str, np.ndarray, np.ndarray, int] | None:
        """(source, rows [B, N], cols [H, d], row width) of the head split producing q, kᵀ or v."""
        layout = self.node(name, "layout")
        if layout is None or len(layout.inputs) != 1:
            return None
        nodes.append(layout)
        found = _rows_and_columns(layout.attrs["index"], self.graph.values[layout.inputs[0]].shape, transposed)
        return None if found is None else (layout.inputs[0], *found)

    def kind(self, name: str, tokens: int, nodes: list[Node]) -> tuple[str, str, float, float | None] | None:
        """(kind, S-side input, factor, eps) of the op producing a group of probabilities."""
        node = self.node(name, "softmax", "div", "scale")
        if node is None:
            return None
        nodes.append(node)
        if node.op == "softmax":
            return ("softmax", node.inputs[0], 1.0, None) if node.attrs["axis"] == 3 else None
        if node.op == "scale":
            return "scaling", node.inputs[0], node.attrs["factor"] * tokens, None
        relu, denominator = self.node(node.inputs[0], "relu"), node.inputs[1]
        eps, add = 0.0, self.node(denominator, "add")
        if add is not None:
            for total, constant in (add.inputs, add.inputs[::-1]):
                if public_scalar(self.graph, constant) is not None:
                    eps, denominator = public_scalar(self.graph, constant), total
                    nodes.append(add)
                    break
        summed = self.node(denominator, "reduce_sum")
        if relu is None or summed is None or list(summed.attrs["axes"]) != [3] or not summed.attrs["keepdims"]:
            return None
        other_relu = self.node(summed.inputs[0], "relu")
        if other_relu is None or other_relu.inputs != relu.inputs:
            return None
        nodes.extend([relu, summed, other_relu])
        return "relu_softmax", relu.inputs[0], 1.0, eps

    def score_bias(self, add: Node) -> tuple[str, np.ndarray] | None:
        """For add(S, c) on scores S [B, H, N, N] with c a param/public weight: (S, c as [b, H, N, N], b 1 or B)."""
        shape = self.graph.values[add.outputs[0]].shape
        for secret, other in (add.inputs, add.inputs[::-1]):
            value = self.graph.values[other]
            if value.role == "secret" or value.data is None or self.graph.values[secret].shape != shape \
                    or len(value.shape) > 4:
                continue
            data = value.data.reshape((1,) * (4 - value.data.ndim) + value.data.shape).astype(np.float64)
            self.bias_roles.add(value.role)
            return secret, np.broadcast_to(data, (data.shape[0], *shape[1:]))
        return None

    def group(self, name: str, tokens: int, nodes: list[Node]) -> tuple[_Group, Node] | None:
        """A group of heads: its kind and which heads of S (the Q @ K^T matmul) it reads."""
        found = self.kind(name, tokens, nodes)
        if found is None:
            return None
        kind, current, factor, eps = found
        heads = np.arange(self.graph.values[name].shape[1])
        bias: np.ndarray | None = None
        while True:
            node = self.node(current, "scale", "layout", "matmul", "add")
            if node is None:
                return None
            nodes.append(node)
            if node.op == "matmul":
                return _Group(kind, heads, factor, eps, bias), node
            if node.op == "scale":
                factor *= node.attrs["factor"]
            elif node.op == "add":
                # S_kind = (x + c) * factor + bias = x * factor + (c * factor + bias): the weight c (relative-position
                # bias, mask) joins the bias, on this group's heads
                found_bias = self.score_bias(node)
                if found_bias is None:
                    return None
                secret, weight = found_bias
                term = weight[:, heads] * factor
                bias = term if bias is None else np.broadcast_arrays(bias, term)[0] + term
                current = secret
                continue
            else:
                picked = _head_selection(node.attrs["index"], [self.graph.values[i].shape for i in node.inputs])
                if picked is None or len(node.inputs) != 1:
                    return None
                heads = np.array([h for _, h in picked])[heads]
            current = node.inputs[0]

    def match(self, pv: Node) -> _Match | None:
        probs, values = pv.inputs
        nodes: list[Node] = [pv]
        shape = self.graph.values[probs].shape
        if len(shape) != 4 or shape[2] != shape[3]:
            return None
        tokens = shape[3]
        v = self.columns(values, nodes)
        concat = self.node(probs, "layout")
        if concat is not None and (picked := _head_selection(concat.attrs["index"],
                                                             [self.graph.values[i].shape for i in concat.inputs])):
            nodes.append(concat)
            group_names = concat.inputs
        else:
            group_names, picked = [probs], [(0, h) for h in range(shape[1])]
        groups = [self.group(name, tokens, nodes) for name in group_names]
        if v is None or any(g is None for g in groups) or len({id(s) for _, s in groups}) != 1:
            return None
        scores = groups[0][1]
        q_name, q_factor = self.peel_scales(scores.inputs[0], nodes)
        k_name, k_factor = self.peel_scales(scores.inputs[1], nodes)  # torch's fused attention scales k too
        q, k = self.columns(q_name, nodes), self.columns(k_name, nodes, transposed=True)
        if q is None or k is None:
            return None
        head_group = [(groups[i][0], int(groups[i][0].s_heads[h])) for i, h in picked]
        biased = [(j, groups[i][0].bias, h) for j, (i, h) in enumerate(picked) if groups[i][0].bias is not None]
        bias = None
        if biased:
            bias = np.zeros((max(b.shape[0] for _, b, _ in biased), len(picked), tokens, tokens))
            for j, group_bias, h in biased:
                bias[:, j] = group_bias[:, h]
        return _Match((q[0], k[0], v[0]), tuple((x[1], x[3]) for x in (q, k, v)), q[2], k[2], v[2], head_group,
                      q_factor * k_factor, nodes, bias,
                      "param" if "param" in self.bias_roles else "public")


def _fold_into_q(graph: Graph, q_src: str, q_cols: np.ndarray, factors: np.ndarray, others: list[np.ndarray],
                 readers: set[int]) -> bool:
    """Multiply the q columns of each head (``q_cols`` [H, d]) of the linear producing ``q_src`` by the head's
    factor. Only when every reader of ``q_src`` is in ``readers`` (node ids) and no column of a head is also read
    as k/v (``others``) or by a head with another factor."""
    linear = graph.producer(q_src)
    if linear is None or linear.op != "linear" or any(id(n) not in readers for n in consumers(graph).get(q_src, [])):
        return False
    column_factor = np.ones(graph.values[q_src].shape[-1])
    column_factor[q_cols] = factors[:, None]
    if any(np.isin(q_cols, cols).any() for cols in others) or not np.allclose(column_factor[q_cols],
                                                                              factors[:, None]):
        return False
    weight, bias = linear_parts(graph, linear)
    set_linear_parts(graph, linear, weight * column_factor, bias * column_factor)
    return True


def _private_readers(graph: Graph, match: _Match) -> set[int]:
    """Ids of the matched nodes, if nothing outside the match reads any of their outputs (else empty)."""
    inside = {id(n) for n in match.nodes}
    uses = consumers(graph)
    leaks = any(id(user) not in inside for n in match.nodes[1:] for out in n.outputs for user in uses.get(out, []))
    return set() if leaks else inside


def _rewrite(graph: Graph, pv: Node, match: _Match) -> bool:
    factors = np.array([match.qk_factor * group.factor for group, _ in match.head_group])
    eps_values = {group.eps for group, _ in match.head_group if group.eps is not None}
    if len(eps_values) > 1:
        return False
    q_src, k_src, v_src = match.sources
    s_heads = np.array([s for _, s in match.head_group])
    if np.allclose(factors, factors[0]):
        scale = float(factors[0])  # folded into q later, once the layer's groups are merged
    elif _fold_into_q(graph, q_src, match.q_cols[s_heads], factors,
                      [c for src, c in ((k_src, match.k_cols), (v_src, match.v_cols)) if src == q_src],
                      _private_readers(graph, match)):
        scale = 1.0
    else:
        return False
    out_shape = graph.values[pv.outputs[0]].shape  # [B, H, N, d]
    batch, heads, tokens, dim = out_shape
    heads_attr = [{"kind": group.kind, "q_cols": match.q_cols[s].tolist(), "k_cols": match.k_cols[s].tolist(),
                   "v_cols": match.v_cols[h].tolist()} for h, (group, s) in enumerate(match.head_group)]
    fused = fresh_name(graph, pv.outputs[0] + "_attention")
    graph.add_value(Value(fused, (batch, tokens, heads * dim)))
    inputs = _row_sources(graph, pv, match)
    position = graph.nodes.index(pv)
    if match.bias is not None:
        inputs.append(new_constant(graph, fused + "_bias", match.bias, match.bias_role))
    attention = Node("attention", inputs, [fused], name=pv.name, attrs={
        "heads": heads_attr, "scale": scale, "eps": eps_values.pop() if eps_values else 0.0, "tokens": tokens,
        "head_dim": dim})
    back = np.arange(batch * tokens * heads * dim).reshape(batch, tokens, heads, dim).transpose(0, 2, 1, 3)
    graph.nodes[position:position + 1] = [attention, Node("layout", [fused], pv.outputs, {"index": back},
                                                           name=pv.name)]
    return True


def _row_sources(graph: Graph, before: Node, match: _Match) -> list[str]:
    """The [B, N, C] tensors the attention reads: a source as it is when its rows are b * N + n, else a layout
    gathering the rows (one per source and row map, shared by q/k/v; a free reshape for standard rows of a
    [B, N, ...] source), inserted before ``before``."""
    names: list[str] = []
    made: dict[tuple[str, bytes], str] = {}
    for name, (rows, width) in zip(match.sources, match.rows):
        batch, tokens = rows.shape
        standard = np.array_equal(rows, np.arange(batch * tokens).reshape(batch, tokens))
        if standard and graph.values[name].shape == (batch, tokens, width):
            names.append(name)
            continue
        key = (name, rows.tobytes())
        if key not in made:
            made[key] = fresh_name(graph, name + "_rows")
            graph.add_value(Value(made[key], (batch, tokens, width)))
            graph.nodes.insert(graph.nodes.index(before), Node(
                "layout", [name], [made[key]], {"index": rows[:, :, None] * width + np.arange(width)},
                name=before.name))
        names.append(made[key])
    return names


def _head_blocks(index: np.ndarray, in_shapes: list[tuple[int, ...]], dim: int) -> list[tuple[int, int]] | None:
    """For a layout [B, N, H*d] over attention outputs [B, N, h_i*d] that copies whole heads: (input, head) per
    output head, else None."""
    if index.ndim != 3 or index.shape[-1] % dim or any(s[:2] != index.shape[:2] or s[2] % dim for s in in_shapes):
        return None
    batch, tokens = index.shape[:2]
    sizes = np.array([s[2] // dim for s in in_shapes])
    offsets = np.concatenate([[0], np.cumsum(batch * tokens * sizes * dim)])
    first = index[0, 0, ::dim]
    which = np.searchsorted(offsets, first, side="right") - 1
    head, rest = np.divmod(first - offsets[which], dim)
    if rest.any() or np.any(head >= sizes[which]):
        return None
    rows = np.arange(batch * tokens).reshape(batch, tokens)
    expected = (offsets[which] + head * dim)[None, None, :, None] + \
        (rows[:, :, None] * sizes[which][None, None, :] * dim)[..., None] + np.arange(dim)
    ok = np.array_equal(index.reshape(batch, tokens, -1, dim), expected)
    return list(zip(which.tolist(), head.tolist())) if ok else None


def merge_attention(graph: Graph) -> Graph:
    """Per-kind attention groups whose outputs one layout concatenates head-wise -> one attention per layer."""
    prod, uses = producers(graph), consumers(graph)
    for layout in [n for n in graph.nodes if n.op == "layout"]:
        parts = [producer_op(prod, name, "attention") for name in layout.inputs]
        if not parts or any(p is None or len(uses.get(p.outputs[0], [])) != 1 for p in parts):
            continue
        same = {(tuple(p.inputs[:3]), p.attrs["tokens"], p.attrs["head_dim"], p.attrs["scale"]) for p in parts}
        eps = {p.attrs["eps"] for p in parts if any(h["kind"] == "relu_softmax" for h in p.attrs["heads"])}
        picked = _head_blocks(layout.attrs["index"], [graph.values[i].shape for i in layout.inputs],
                              parts[0].attrs["head_dim"])
        if len(same) != 1 or len(eps) > 1 or picked is None:
            continue
        merged = Node("attention", list(parts[0].inputs[:3]), layout.outputs, name=parts[0].name,
                      attrs={**parts[0].attrs, "heads": [parts[i].attrs["heads"][h] for i, h in picked],
                             "eps": eps.pop() if eps else 0.0})
        biases = [graph.values[p.inputs[3]] if len(p.inputs) > 3 else None for p in parts]
        if any(b is not None for b in biases):
            tokens = parts[0].attrs["tokens"]
            bias = np.zeros((max(b.shape[0] for b in biases if b is not None), len(picked), tokens, tokens))
            for j, (i, h) in enumerate(picked):
                if biases[i] is not None:
                    bias[:, j] = biases[i].data[:, h]
            role = "param" if any(b is not None and b.role == "param" for b in biases) else "public"
            merged.inputs.append(new_constant(graph, layout.outputs[0] + "_bias", bias, role))
        graph.nodes[graph.nodes.index(layout)] = merged
        prod, uses = producers(graph), consumers(graph)
    return remove_dead(graph)


def fold_attention_scale(graph: Graph) -> Graph:
    """attention(scale=a) with q from a linear read only by this attention: a goes into the q columns."""
    for node in [n for n in graph.nodes if n.op == "attention" and n.attrs["scale"] != 1.0]:
        q_src, k_src, v_src = node.inputs[:3]
        cols = {key: np.array([h[key] for h in node.attrs["heads"]]) for key in ("q_cols", "k_cols", "v_cols")}
        factors = np.full(len(node.attrs["heads"]), node.attrs["scale"])
        others = [cols[key] for src, key in ((k_src, "k_cols"), (v_src, "v_cols")) if src == q_src]
        readers = {id(node)}
        gather = graph.producer(q_src)
        if gather is not None and gather.op == "layout" and _copies_rows(graph, gather) and \
                all(user is node for user in consumers(graph)[q_src]):
            readers.add(id(gather))  # Swin's window rows of the qkv linear: its columns are still q's
            q_src = gather.inputs[0]
        if _fold_into_q(graph, q_src, cols["q_cols"], factors, others, readers) or \
                (not others and _fold_into_q_norm(graph, q_src, node.attrs["scale"], node)):
            node.attrs["scale"] = 1.0
    return graph


def _copies_rows(graph: Graph, layout: Node) -> bool:
    """The layout gathers whole rows of one input of the same width (a row map, as :func:`_row_sources` makes)."""
    if len(layout.inputs) != 1:
        return False
    width = graph.values[layout.inputs[0]].shape[-1]
    index = np.asarray(layout.attrs["index"])
    if index.shape[-1] != width:
        return False
    rows = index.reshape(-1, width)
    return bool(np.array_equal(rows, rows[:, :1] + np.arange(width)) and np.all(rows[:, 0] % width == 0))


def _fold_into_q_norm(graph: Graph, q_src: str, factor: float, attention: Node) -> bool:
    """qk_norm: q is (a free reshape of) a LayerNorm read only by ``attention``: the factor goes into its gamma
    and beta."""
    uses = consumers(graph)
    node = graph.producer(q_src)
    while node is not None and node.op == "layout" and len(node.inputs) == 1 and \
            np.array_equal(node.attrs["index"].reshape(-1), np.arange(node.attrs["index"].size)) and \
            [id(n) for n in uses.get(node.outputs[0], [])] == [id(attention)]:
        attention = node
        node = graph.producer(node.inputs[0])
    if node is None or node.op != "layernorm" or [id(n) for n in uses.get(node.outputs[0], [])] != [id(attention)]:
        return False
    gamma, beta = (graph.values[name].data * factor for name in node.inputs[1:3])
    node.inputs[1:3] = [new_constant(graph, name, data) for name, data in zip(node.inputs[1:3], (gamma, beta))]
    return True


def norm_heads_on_tokens(graph: Graph) -> Graph:
    """qk_norm: a LayerNorm over head_dim of q (or k) [B, H, N, d], a layout of head columns of a [B, N, C] source,
    runs on [B, N, H, d] instead (the same rows, normalised alike), followed by the layout to [B, H, N, d]: the
    head split then reads a [B, N, ...] tensor, as :func:`fuse_attention` expects of q, k and v."""
    prod = producers(graph)
    for norm in [n for n in graph.nodes if n.op == "layernorm"]:
        split = producer_op(prod, norm.inputs[0], "layout")
        if split is None or len(split.inputs) != 1:
            continue
        source = split.inputs[0]
        found = _rows_and_columns(split.attrs["index"], graph.values[source].shape, transposed=False)
        if found is None:
            continue
        row_map, cols, width = found
        batch, heads, tokens, dim = graph.values[norm.inputs[0]].shape
        rows = row_map * width  # [B, N]
        token_major = fresh_name(graph, norm.inputs[0] + "_tokens")
        normed = fresh_name(graph, norm.outputs[0] + "_tokens")
        for name in (token_major, normed):
            graph.add_value(Value(name, (batch, tokens, heads, dim)))
        back = np.arange(batch * tokens * heads * dim).reshape(batch, tokens, heads, dim).transpose(0, 2, 1, 3)
        position = graph.nodes.index(norm)
        graph.nodes[position:position + 1] = [
            Node("layout", [source], [token_major], {"index": rows[:, :, None, None] + cols[None, None]},
                 name=split.name),
            Node("layernorm", [token_major, *norm.inputs[1:]], [normed], dict(norm.attrs), name=norm.name),
            Node("layout", [normed], norm.outputs, {"index": back}, name=norm.name)]
    return remove_dead(graph)


def fuse_attention(graph: Graph) -> Graph:
    for pv in [n for n in graph.nodes if n.op == "matmul"]:
        if any(graph.values[i].role != "secret" for i in pv.inputs):
            continue
        match = _Matcher(graph).match(pv)
        if match is not None and _rewrite(graph, pv, match):
            remove_dead(graph)
    return graph
