"""Plain float evaluator of IR graphs (numpy, no fixed point): the semantics of every node kind in executable form.

Used to check that the frontend and every pass preserve numerics (against onnxruntime) and usable as the float
reference next to the fixed-point executor. ``evaluate(graph, {"x": image})`` returns the graph outputs.
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np
from scipy.special import erf, expit

from compiler.ir import Graph, Node

Array = np.ndarray


def apply_input_layout(node: Node, image: Array) -> Array:
    """What the input writer does: party 1 reorders its image (e.g. im2col patches) before secret-sharing."""
    index = node.attrs.get("layout_index")
    if index is None:
        return image
    expected = tuple(node.attrs["image_shape"])
    if image.shape != expected:
        raise ValueError(f"input {node.outputs[0]!r}: expected an image of shape {expected}, got {image.shape}")
    return image.reshape(-1)[index]


def _layout(node: Node, xs: list[Array]) -> Array:
    return np.concatenate([x.reshape(-1) for x in xs])[node.attrs["index"]]


def _layernorm(node: Node, xs: list[Array]) -> Array:
    x, gamma, beta = xs
    centered = x - x.mean(axis=-1, keepdims=True)
    return centered / np.sqrt((centered ** 2).mean(axis=-1, keepdims=True) + node.attrs["eps"]) * gamma + beta


def _softmax(x: Array, axis: int) -> Array:
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def attention_heads(node: Node, q_src: Array, k_src: Array, v_src: Array) -> tuple[Array, Array, Array]:
    """Per-head q, k, v of an ``attention`` node, each [..., H, N, d]."""
    def gather(src: Array, key: str) -> Array:
        cols = np.array([head[key] for head in node.attrs["heads"]], dtype=np.int64)  # [H, d]
        return np.moveaxis(src[..., cols], -2, -3)  # [..., N, H, d] -> [..., H, N, d]

    return gather(q_src, "q_cols"), gather(k_src, "k_cols"), gather(v_src, "v_cols")


def _attention(node: Node, xs: list[Array]) -> Array:
    q, k, v = attention_heads(node, *xs[:3])
    scores = (q * node.attrs["scale"]) @ np.swapaxes(k, -1, -2)
    if len(xs) > 3:  # bias [b, H, N, N], b 1 or B
        scores = scores + xs[3]
    kinds = np.array([head["kind"] for head in node.attrs["heads"]])
    probs = np.empty_like(scores)
    for kind, fn in _HEAD_KINDS.items():
        mask = kinds == kind
        if mask.any():
            probs[..., mask, :, :] = fn(node, scores[..., mask, :, :])
    out = probs @ v  # [..., H, N, d]
    return np.moveaxis(out, -3, -2).reshape(*out.shape[:-3], out.shape[-2], -1)


def _relu_softmax(node: Node, s: Array) -> Array:
    r = np.maximum(s, 0)
    return r / (r.sum(axis=-1, keepdims=True) + node.attrs["eps"])


_HEAD_KINDS: dict[str, Callable[[Node, Array], Array]] = {
    "softmax": lambda node, s: _softmax(s, -1),
    "relu_softmax": _relu_softmax,
    "scaling": lambda node, s: s / node.attrs["tokens"],
}


def _linear(node: Node, xs: list[Array]) -> Array:
    return xs[0] @ xs[1] + (xs[2] if len(xs) > 2 else 0)


def _gelu(node: Node, xs: list[Array]) -> Array:
    x = xs[0]
    if node.attrs.get("approximate", "none") == "tanh":
        return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))
    return 0.5 * x * (1 + erf(x / math.sqrt(2)))


def _clip(node: Node, xs: list[Array]) -> Array:
    lo, hi = node.attrs.get("min"), node.attrs.get("max")
    return np.clip(xs[0], -np.inf if lo is None else lo, np.inf if hi is None else hi)


def _hardsigmoid(node: Node, xs: list[Array]) -> Array:
    return np.clip(node.attrs.get("alpha", 0.2) * xs[0] + node.attrs.get("beta", 0.5), 0.0, 1.0)


def _reduce(fn: Callable[..., Array]) -> Callable[[Node, list[Array]], Array]:
    return lambda node, xs: fn(xs[0], axis=tuple(node.attrs["axes"]), keepdims=node.attrs["keepdims"])


KERNELS: dict[str, Callable[[Node, list[Array]], Array]] = {
    "linear": _linear,
    "matmul": lambda node, xs: xs[0] @ xs[1],
    "add": lambda node, xs: xs[0] + xs[1],
    "sub": lambda node, xs: xs[0] - xs[1],
    "mul": lambda node, xs: xs[0] * xs[1],
    "div": lambda node, xs: xs[0] / xs[1],
    "scale": lambda node, xs: xs[0] * node.attrs["factor"],
    "layout": _layout,
    "relu": lambda node, xs: np.maximum(xs[0], 0),
    "neg": lambda node, xs: -xs[0],
    "abs": lambda node, xs: np.abs(xs[0]),
    "gelu": _gelu,
    "erf": lambda node, xs: erf(xs[0]),
    "exp": lambda node, xs: np.exp(xs[0]),
    "sigmoid": lambda node, xs: expit(xs[0]),
    "tanh": lambda node, xs: np.tanh(xs[0]),
    "reciprocal": lambda node, xs: 1 / xs[0],
    "hardsigmoid": _hardsigmoid,
    "hardswish": lambda node, xs: xs[0] * np.clip(xs[0] / 6 + 0.5, 0.0, 1.0),
    "clip": _clip,
    "where": lambda node, xs: np.where(xs[0].astype(bool), xs[1], xs[2]),
    "softmax": lambda node, xs: _softmax(xs[0], node.attrs["axis"]),
    # a pooled sum may be pre-scaled by 2^-shift (passes.mean_as_sum)
    "reduce_sum": lambda node, xs: _reduce(np.sum)(node, xs) * 2.0 ** -int(node.attrs.get("shift", 0)),
    "reduce_mean": _reduce(np.mean),
    "reduce_max": _reduce(np.max),
    "rsqrt": lambda node, xs: 1 / np.sqrt(xs[0]),
    "sqrt": lambda node, xs: np.sqrt(xs[0]),
    "layernorm": _layernorm,
    "attention": _attention,
    "argmax": lambda node, xs: np.argmax(xs[0], axis=-1),
}


def float_constants(graph: Graph, dtype: type = np.float64) -> dict[str, Array]:
    """The graph's constants as :func:`evaluate` uses them: float ones as ``dtype`` (float64 in place: astype
    would copy every weight), the others as they are."""
    return {name: np.asarray(v.data, dtype=dtype) if v.data.dtype.kind == "f" else v.data
            for name, v in graph.values.items() if v.data is not None}


def evaluate(graph: Graph, inputs: dict[str, Array], keep_all: bool = False,
             constants: dict[str, Array] | None = None) -> dict[str, Array]:
    """Run ``graph`` on ``inputs`` (graph input name -> array); return its outputs (or every value).

    In float64, or in the float type of ``constants`` (:func:`float_constants`, made once for many calls). Ops
    outside their domain give NaN/inf as onnxruntime does, silently: :func:`compiler.calibrate.domain_warnings`
    names such nodes once."""
    env: dict[str, Array] = dict(constants if constants is not None else float_constants(graph))
    dtype = next((a.dtype for a in env.values() if a.dtype.kind == "f"), np.dtype(np.float64))
    with np.errstate(invalid="ignore", divide="ignore"):
        _run_nodes(graph, inputs, env, dtype)
    return env if keep_all else {name: env[name] for name in graph.outputs}


def _run_nodes(graph: Graph, inputs: dict[str, Array], env: dict[str, Array], dtype: np.dtype) -> None:
    for node in graph.nodes:
        if node.op == "input":
            env[node.outputs[0]] = apply_input_layout(node, np.asarray(inputs[node.outputs[0]], dtype=dtype))
        elif node.op != "output":
            result = KERNELS[node.op](node, [env[name] for name in node.inputs])
            expected = graph.values[node.outputs[0]].shape
            if result.shape != expected:
                raise AssertionError(f"node {node.name!r} ({node.op}) produced shape {result.shape}, IR says {expected}")
            env[node.outputs[0]] = result
