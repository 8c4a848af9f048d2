"""Tiny one-op IR graphs for the generic lowerings (what the frontend emits for a graph no pattern matches).

``one_op(op, operands, attrs)`` builds ``input x [B, S]`` -> one ``layout`` per secret operand (carving it out of
x, so the graph keeps its single client input) -> the op -> ``output``; ``many_ops`` puts several side by side. Operands are ``("secret", shape)`` (the
shape leads with the batch B) or ``("param"|"public", array)``. Values are multiples of 2^-16 so that the fixed-
point encoding of inputs is exact and test tolerances only cover what the lowering itself does.
"""
from __future__ import annotations

import numpy as np

from compiler.ir import Graph, Node, Value
from compiler.ir_eval import KERNELS

F = 16


def quantised(x: np.ndarray) -> np.ndarray:
    return np.round(np.asarray(x, dtype=np.float64) * 2 ** F) / 2 ** F


def one_op(op: str, operands: list[tuple[str, object]], attrs: dict | None = None,
           extra_outputs: int = 0) -> Graph:
    """One ``op`` node with output ``y``; ``extra_outputs`` further outputs (the first operand, negated)."""
    g = many_ops([(op, operands, attrs or {})], names=["y"])
    for j in range(extra_outputs):
        name = f"extra{j}"
        g.add_value(Value(name, g.values["in0_0"].shape))
        g.add_node(Node("neg", ["in0_0"], [name], name=name))
        g.add_node(Node("output", [name], [], name=f"output{j + 1}"))
        g.outputs.append(name)
    return g


def many_ops(ops: list[tuple[str, list[tuple[str, object]], dict]], names: list[str] | None = None) -> Graph:
    """One graph holding every op of ``ops`` side by side, each node's result a graph output (``names``, default
    ``y<i>``): one MP-SPDZ program checks them all. Secret operands of every op are carved out of one input."""
    secrets = [shape for _, operands, _ in ops for role, shape in operands if role == "secret"]
    batch = secrets[0][0]
    width = sum(int(np.prod(shape[1:], dtype=np.int64)) for shape in secrets)
    g = Graph()
    g.add_value(Value("x", (batch, width)))
    g.add_node(Node("input", [], ["x"], {"owner": 1}, name="x"))
    g.inputs.append("x")
    offset = 0
    for k, (op, operands, attrs) in enumerate(ops):
        inputs, floats = [], []
        for i, (role, spec) in enumerate(operands):
            name = f"in{k}_{i}"
            if role == "secret":
                shape = tuple(spec)
                per = int(np.prod(shape[1:], dtype=np.int64))
                index = (np.arange(batch)[:, None] * width + offset + np.arange(per)[None]).reshape(shape)
                offset += per
                g.add_value(Value(name, shape))
                g.add_node(Node("layout", ["x"], [name], {"index": index}, name=f"carve{k}_{i}"))
                floats.append(np.ones(shape))  # only the output shape is taken from the kernel
            else:
                data = np.asarray(spec) if np.asarray(spec).dtype == bool else quantised(spec)
                g.add_value(Value(name, data.shape, role, data))
                floats.append(data.astype(np.float64))
            inputs.append(name)
        out = names[k] if names else f"y{k}"
        node = Node(op, inputs, [out], dict(attrs), name=f"the_{op}" if names else f"the_{op}_{k}")
        g.add_value(Value(out, KERNELS[op](node, floats).shape))
        g.add_node(node)
        g.add_node(Node("output", [out], [], name=f"output_{out}"))
        g.outputs.append(out)
    return g


def op_columns(ops: list[tuple[str, list[tuple[str, object]], dict]]) -> list[slice]:
    """Per op of ``many_ops(ops)``, the columns of x its secret operands are carved from."""
    columns, offset = [], 0
    for _, operands, _ in ops:
        width = sum(int(np.prod(shape[1:], dtype=np.int64)) for role, shape in operands if role == "secret")
        columns.append(slice(offset, offset + width))
        offset += width
    return columns


def client_input(g: Graph, rng: np.random.Generator, lo: float = -3.0, hi: float = 3.0,
                 away_from_zero: float = 0.0) -> np.ndarray:
    """Random x for ``one_op``'s graph, exactly representable; |x| >= away_from_zero when asked (divisors)."""
    x = rng.uniform(lo, hi, g.values["x"].shape)
    if away_from_zero:
        x = np.sign(x + (x == 0)) * np.maximum(np.abs(x), away_from_zero)
    return quantised(x)
