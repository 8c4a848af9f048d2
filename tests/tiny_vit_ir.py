"""A hand-built IR graph of a 1-layer ViT (what frontend + passes produce) and an independent numpy forward pass.

Used by the lowering/reference/backend tests so that they exercise those stages without the ONNX frontend.
"""
from __future__ import annotations

import numpy as np
from math import erf

from compiler.ir import Graph, Node, Value

KINDS = ("softmax", "relu_softmax", "scaling", "softmax")


def build(batch: int = 2, kinds: tuple[str, ...] = KINDS, seed: int = 0, image: int = 8, patch: int = 4,
          dim: int = 16, hidden: int = 32, classes: int = 10, eps: float = 1e-3) -> Graph:
    rng = np.random.default_rng(seed)
    d = dim // len(kinds)
    grid = image // patch
    n_patch = grid * grid
    tokens = n_patch + 1
    g = Graph(metadata={"mpcvit.dataset": "digits", "mpcvit.head_kinds": str([list(kinds)]).replace("'", '"')})

    def param(name: str, shape: tuple[int, ...], scale: float | None = None) -> str:
        std = scale if scale is not None else (1.2 / np.sqrt(shape[0]) if len(shape) == 2 else 0.3)
        g.add_value(Value(name, shape, "param", rng.normal(0, std, shape)))
        return name

    def secret(name: str, shape: tuple[int, ...]) -> str:
        g.add_value(Value(name, shape))
        return name

    def node(op: str, ins: list[str], out: str, shape: tuple[int, ...], **attrs) -> str:
        secret(out, shape)
        g.add_node(Node(op, ins, [out], attrs, name=out))
        return out

    im2col = np.arange(batch * image * image).reshape(batch, 1, grid, patch, grid, patch) \
        .transpose(0, 2, 4, 1, 3, 5).reshape(batch, n_patch, patch * patch)
    patches = secret("image", im2col.shape)  # the im2col folded into the input, as compiler.passes does
    g.add_node(Node("input", [], [patches], {"owner": 1, "layout_index": im2col,
                                             "image_shape": (batch, 1, image, image)}, name="image"))
    g.inputs.append(patches)
    emb = node("linear", [patches, param("w_patch", (patch * patch, dim)), param("b_patch", (dim,))], "embed",
               (batch, n_patch, dim))
    cls = param("cls", (1, 1, dim))
    concat = np.concatenate([np.broadcast_to(np.arange(dim), (batch, 1, dim)),
                             dim + np.arange(batch * n_patch * dim).reshape(batch, n_patch, dim)], axis=1)
    h0 = node("add", [node("layout", [cls, emb], "tokens", concat.shape, index=concat),
                      param("pos", (1, tokens, dim))], "h0", (batch, tokens, dim))

    def layernorm(x: str, name: str) -> str:
        gamma = g.add_value(Value(name + "_g", (dim,), "param", 1 + 0.1 * rng.normal(size=dim))).name
        return node("layernorm", [x, gamma, param(name + "_b", (dim,), 0.1)], name, (batch, tokens, dim), eps=1e-5)

    n1 = layernorm(h0, "ln1")
    wqkv = rng.normal(0, 1.6 / np.sqrt(dim), (dim, 3 * dim))
    wqkv[:, :dim] /= np.sqrt(d)  # the attention scale, folded into q as the passes do
    g.add_value(Value("w_qkv", wqkv.shape, "param", wqkv))
    qkv = node("linear", [n1, "w_qkv", param("b_qkv", (3 * dim,), 0.1)], "qkv", (batch, tokens, 3 * dim))
    head_attrs = [{"kind": k, "q_cols": list(range(h * d, h * d + d)), "k_cols": list(range(dim + h * d, dim + h * d + d)),
                   "v_cols": list(range(2 * dim + h * d, 2 * dim + h * d + d))} for h, k in enumerate(kinds)]
    att = node("attention", [qkv, qkv, qkv], "attn", (batch, tokens, dim), heads=head_attrs, scale=1.0, eps=eps,
               tokens=tokens, head_dim=d)
    proj = node("linear", [att, param("w_o", (dim, dim)), param("b_o", (dim,), 0.1)], "proj", (batch, tokens, dim))
    h1 = node("add", [h0, proj], "h1", (batch, tokens, dim))
    n2 = layernorm(h1, "ln2")
    m1 = node("linear", [n2, param("w_1", (dim, hidden)), param("b_1", (hidden,), 0.1)], "fc1", (batch, tokens, hidden))
    m2 = node("gelu", [m1], "act", (batch, tokens, hidden))
    m3 = node("linear", [m2, param("w_2", (hidden, dim)), param("b_2", (dim,), 0.1)], "fc2", (batch, tokens, dim))
    h2 = node("add", [h1, m3], "h2", (batch, tokens, dim))
    n3 = layernorm(h2, "ln3")
    select = (np.arange(batch)[:, None] * tokens * dim + np.arange(dim)[None]).reshape(batch, dim)
    pooled = node("layout", [n3], "pooled", (batch, dim), index=select)
    logits = node("linear", [pooled, param("w_head", (dim, classes)), param("b_head", (classes,), 0.1)], "logits",
                  (batch, classes))
    g.add_node(Node("output", [logits], [], name="output"))
    g.outputs.append(logits)
    return g


def forward(g: Graph, image: np.ndarray) -> np.ndarray:
    """Independent float64 forward pass of :func:`build`'s model (per head, per image loops: clarity over speed)."""
    p = {v.name: v.data for v in g.params()}
    attn = g.nodes[[n.op for n in g.nodes].index("attention")].attrs
    batch, _, size, _ = image.shape
    patch = int(np.sqrt(p["w_patch"].shape[0]))
    grid = size // patch
    patches = image.reshape(batch, grid, patch, grid, patch).transpose(0, 1, 3, 2, 4).reshape(batch, grid * grid, -1)
    x = patches @ p["w_patch"] + p["b_patch"]
    x = np.concatenate([np.broadcast_to(p["cls"], (batch, 1, x.shape[-1])), x], axis=1) + p["pos"]

    def ln(x: np.ndarray, name: str) -> np.ndarray:
        mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
        return (x - mu) / np.sqrt(var + 1e-5) * p[name + "_g"] + p[name + "_b"]

    qkv = ln(x, "ln1") @ p["w_qkv"] + p["b_qkv"]
    tokens, out = x.shape[1], []
    for head in attn["heads"]:
        q, k, v = (qkv[..., head[c]] for c in ("q_cols", "k_cols", "v_cols"))
        s = q @ np.swapaxes(k, -1, -2)
        if head["kind"] == "softmax":
            e = np.exp(s - s.max(-1, keepdims=True))
            a = e / e.sum(-1, keepdims=True)
        elif head["kind"] == "relu_softmax":
            r = np.maximum(s, 0)
            a = r / (r.sum(-1, keepdims=True) + attn["eps"])
        else:
            a = s / tokens
        out.append(a @ v)
    x = x + np.concatenate(out, -1) @ p["w_o"] + p["b_o"]
    m = ln(x, "ln2") @ p["w_1"] + p["b_1"]
    m = m * 0.5 * (1 + np.vectorize(erf)(m / np.sqrt(2)))
    x = x + m @ p["w_2"] + p["b_2"]
    return ln(x, "ln3")[:, 0] @ p["w_head"] + p["b_head"]
