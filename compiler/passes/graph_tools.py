"""Small helpers the passes share: producer/consumer maps, rewiring, dead-code removal, new values."""
from __future__ import annotations

import numpy as np

from compiler.ir import Graph, Node, Value


def producers(graph: Graph) -> dict[str, Node]:
    return {out: node for node in graph.nodes for out in node.outputs}


def consumers(graph: Graph) -> dict[str, list[Node]]:
    uses: dict[str, list[Node]] = {}
    for node in graph.nodes:
        for name in dict.fromkeys(node.inputs):
            uses.setdefault(name, []).append(node)
    return uses


def producer_op(prod: dict[str, Node], name: str, *ops: str) -> Node | None:
    node = prod.get(name)
    return node if node is not None and node.op in ops else None


def only_use(uses: dict[str, list[Node]], graph: Graph, name: str) -> Node | None:
    """The single consumer of ``name`` (None if several, none, or it is a graph output)."""
    users = uses.get(name, [])
    return users[0] if len(users) == 1 and name not in graph.outputs else None


def public_scalar(graph: Graph, name: str) -> float | None:
    value = graph.values.get(name)
    if value is None or value.role != "public" or value.data is None or value.data.size != 1:
        return None
    return float(value.data.reshape(-1)[0])


def fresh_name(graph: Graph, base: str) -> str:
    name, i = base, 1
    while name in graph.values:
        name, i = f"{base}_{i}", i + 1
    return name


def new_constant(graph: Graph, base: str, data: np.ndarray, role: str = "param") -> str:
    name = fresh_name(graph, base)
    graph.add_value(Value(name, data.shape, role, np.asarray(data, dtype=np.float64)))
    return name


def rename_uses(graph: Graph, old: str, new: str) -> None:
    for node in graph.nodes:
        node.inputs = [new if name == old else name for name in node.inputs]
    graph.outputs = [new if name == old else name for name in graph.outputs]


def remove_dead(graph: Graph) -> Graph:
    """Drop nodes whose outputs nobody uses, then values nothing refers to."""
    live = set(graph.outputs)
    kept: list[Node] = []
    for node in reversed(graph.nodes):
        if node.op in ("input", "output") or any(out in live for out in node.outputs):
            kept.append(node)
            live.update(node.inputs)
    graph.nodes = kept[::-1]
    referenced = live | {out for node in graph.nodes for out in node.outputs} | set(graph.inputs)
    graph.values = {name: v for name, v in graph.values.items() if name in referenced}
    return graph
