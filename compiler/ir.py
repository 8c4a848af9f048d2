"""The compiler's intermediate representation: a small typed dataflow graph with static shapes.

Every tensor has a static shape (batch included as the leading dimension) and a role:
  * ``secret`` — computed under MPC (sfix in MP-SPDZ);
  * ``param``  — a model weight: a private input of party 0 (the model owner), value held in ``Value.data``;
  * ``public`` — a compile-time constant known to every party (small: epsilons, scales, index maps).

A ``Node`` has an ``op`` from :data:`NODE_KINDS`, named inputs/outputs and plain-data ``attrs``. The frontend
emits generic nodes; the passes fuse them into the ViT-level kinds (``linear``, ``attention``, ``layernorm``,
``gelu`` …) that lowering, the reference executor, the cost model and the backend all understand.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np

ROLES = ("secret", "param", "public")

# op -> one-line meaning; inputs are listed in order. Shapes broadcast like numpy where noted.
NODE_KINDS: dict[str, str] = {
    "input": "() -> x: the client's private image (party 1); attrs: owner=1, and after the patch-embedding pass "
             "image_shape (the client's image) + layout_index (int64, x's shape): x = image.reshape(-1)[layout_index]",
    "linear": "(x[..., K], W[K, N] param, b[N] param?) -> x @ W + b",
    "matmul": "(a[..., M, K], b[..., K, N]) -> a @ b, batched over the leading dims with numpy broadcasting; "
              "either operand may be secret, param or public",
    "add": "(a, b) -> a + b (numpy broadcasting)",
    "sub": "(a, b) -> a - b (numpy broadcasting)",
    "mul": "(a, b) -> a * b elementwise (numpy broadcasting; a public scalar operand is a local multiply)",
    "scale": "(x) -> x * attrs['factor'] (public scalar)",
    "layout": "(x0, x1, ...) -> concat(flat(x_i))[attrs['index']] reshaped to the output shape: "
              "every Reshape/Transpose/Slice/Split/Concat/Gather/Squeeze/Unsqueeze/Flatten/Expand",
    "neg": "(x) -> -x",
    "abs": "(x) -> |x|",
    "relu": "(x) -> max(x, 0)",
    "gelu": "(x) -> x * Phi(x); attrs: approximate 'none' (default: erf GeLU) | 'tanh' "
            "(0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))))",
    "exp": "(x) -> e^x",
    "sigmoid": "(x) -> 1 / (1 + e^-x)",
    "tanh": "(x) -> tanh(x)",
    "reciprocal": "(x) -> 1 / x (x secret, any sign and range)",
    "hardsigmoid": "(x) -> max(0, min(1, alpha x + beta)); attrs: alpha, beta (ONNX defaults 0.2, 0.5)",
    "hardswish": "(x) -> x * max(0, min(1, x / 6 + 1 / 2))",
    "clip": "(x) -> min(max(x, attrs['min']), attrs['max']); either bound may be None (public floats)",
    "where": "(cond public bool, a, b) -> cond ? a : b (numpy broadcasting; cond is a compile-time constant)",
    "softmax": "(x) -> softmax over attrs['axis'] (generic, outside attention)",
    "reduce_sum": "(x) -> sum over attrs['axes'], keepdims=attrs['keepdims']",
    "reduce_mean": "(x) -> mean over attrs['axes'], keepdims=attrs['keepdims']",
    "reduce_max": "(x) -> max over attrs['axes'], keepdims=attrs['keepdims']",
    "div": "(a, b) -> a / b element-wise with numpy broadcasting; 1/b is computed under MPC (b of any sign)",
    "rsqrt": "(x) -> 1/sqrt(x)",
    "sqrt": "(x) -> sqrt(x) (generic, before the layernorm pattern fuses it)",
    "erf": "(x) -> erf(x) (generic, before the gelu pattern fuses it)",
    "layernorm": "(x[..., C], gamma[C] param, beta[C] param) -> layer norm over the last axis; attrs: eps",
    "attention": "(q_src[B, N, Cq], k_src[B, N, Ck], v_src[B, N, Cv], bias[b, H, N, N] param/public?) -> "
                 "[B, N, H*d]; attrs: heads=[{kind, q_cols, k_cols, v_cols}], scale, eps (relu_softmax), tokens N, "
                 "head_dim d (of v; q/k may have fewer columns per head, e.g. LeViT). Per head S = (q kᵀ)·scale "
                 "(+ bias[:, h]: relative-position bias, mask; b is 1 or B), "
                 "then softmax(S) | relu(S)/(Σrelu(S)+eps) | S/N; head h writes output columns h*d..h*d+d-1",
    "argmax": "(x[B, C]) -> index of the largest logit (revealed instead of logits by option)",
    "output": "(x) -> revealed to the client (party 1); any shape, one node per graph output (graph.outputs order)",
}

HEAD_KINDS = ("softmax", "relu_softmax", "scaling")


@dataclass
class Value:
    name: str
    shape: tuple[int, ...]
    role: str = "secret"
    data: np.ndarray | None = None  # for param/public values

    def __post_init__(self) -> None:
        self.shape = tuple(int(d) for d in self.shape)
        if self.role not in ROLES:
            raise ValueError(f"value {self.name!r}: role {self.role!r} is not one of {ROLES}")

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))


@dataclass
class Node:
    op: str
    inputs: list[str]
    outputs: list[str]
    attrs: dict[str, Any] = field(default_factory=dict)
    name: str = ""  # the ONNX node (or pattern) it came from, for messages

    def __post_init__(self) -> None:
        if self.op not in NODE_KINDS:
            raise ValueError(f"node {self.name!r}: unknown IR op {self.op!r}; known: {', '.join(NODE_KINDS)}")


@dataclass
class Graph:
    values: dict[str, Value] = field(default_factory=dict)
    nodes: list[Node] = field(default_factory=list)
    inputs: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    metadata: dict[str, str] = field(default_factory=dict)  # ONNX metadata_props (model config, head kinds)

    def add_value(self, value: Value) -> Value:
        self.values[value.name] = value
        return value

    def add_node(self, node: Node) -> Node:
        self.nodes.append(node)
        return node

    def producer(self, name: str) -> Node | None:
        for node in self.nodes:
            if name in node.outputs:
                return node
        return None

    def consumers(self, name: str) -> list[Node]:
        return [n for n in self.nodes if name in n.inputs]

    def params(self) -> Iterable[Value]:
        return (v for v in self.values.values() if v.role == "param")

    def op_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for node in self.nodes:
            counts[node.op] = counts.get(node.op, 0) + 1
        return counts

    def dump(self) -> str:
        """Readable listing, one node a line (``mpcvit-compile --dump-ir``)."""

        def fmt(name: str) -> str:
            v = self.values.get(name)
            if v is None:
                return f"{name}:?"
            tag = {"secret": "", "param": " param", "public": " public"}[v.role]
            return f"{name}:{'x'.join(map(str, v.shape)) or 'scalar'}{tag}"

        lines = [f"inputs: {', '.join(fmt(n) for n in self.inputs)}"]
        for node in self.nodes:
            shown = {k: _short(v) for k, v in node.attrs.items()}
            attrs = " ".join(f"{k}={v}" for k, v in shown.items())
            target = f"{', '.join(fmt(o) for o in node.outputs)} = " if node.outputs else ""
            lines.append(f"{target}{node.op}({', '.join(fmt(i) for i in node.inputs)})" + (f"  {attrs}" if attrs else ""))
        lines.append(f"outputs: {', '.join(fmt(n) for n in self.outputs)}")
        return "\n".join(lines)


def _short(value: Any) -> str:
    if isinstance(value, np.ndarray):
        return f"<{value.dtype} {'x'.join(map(str, value.shape))}>"
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):  # attention heads
        return "[" + ", ".join("{" + " ".join(f"{k}={_short(v)}" for k, v in d.items()) + "}" for d in value) + "]"
    if isinstance(value, list) and len(value) > 1 and value == list(range(value[0], value[0] + len(value))):
        return f"{value[0]}..{value[-1]}"
    if isinstance(value, (list, tuple)) and len(value) > 8:
        return f"[{len(value)} items]"
    return repr(value)
