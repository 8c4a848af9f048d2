"""One converter per ONNX op type (and opset), for nodes with at least one secret input. A node whose inputs are all
compile-time constants never reaches a converter: the loader folds it with onnx's reference evaluator
(:meth:`ConvertContext.fold`), so shape arithmetic (Shape, Gather, Mod, Range, Where, ScatterND, Equal, Cast ...) needs
no converter at all.

Data-movement ops (Reshape, Transpose, Slice, Split, Concat, Gather, GatherElements, Squeeze, Unsqueeze, Flatten,
Expand, Tile, Pad, ScatterElements, ScatterND, DepthToSpace, SpaceToDepth, and the windows of Conv and the pools)
share one mechanism: the op is applied to an index array (:meth:`ConvertContext.emit_layout`), which yields the
``layout`` node's static index map — no runtime work in MPC. Padding values are read from a public constant passed
as one more layout input.
"""
from __future__ import annotations

import string
from typing import Callable, Sequence

import numpy as np
import onnx

from compiler.errors import CompileError
from compiler.frontend.context import ConvertContext, evaluate, node_label, onnx_attrs
from compiler.frontend.registry import converter

FLOAT_TYPES = (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16)


def _axis(axis: int, rank: int) -> int:
    return int(axis) + rank if axis < 0 else int(axis)


def _axes(axes: np.ndarray | list[int] | None, rank: int) -> list[int]:
    return sorted(_axis(int(a), rank) for a in np.asarray(axes).reshape(-1)) if axes is not None else []


def _size(shape: Sequence[int]) -> int:
    return int(np.prod(shape, dtype=np.int64))


# --- shapes and aliases ---------------------------------------------------------------------------------------

@converter("Shape", since=13)
def shape(ctx: ConvertContext, node: onnx.NodeProto) -> None:
    """The static shape of a secret tensor is a public constant."""
    attrs = onnx_attrs(node)
    dims = np.asarray(ctx.shape(node.input[0]), dtype=np.int64)
    ctx.set_const(node.output[0], dims[attrs.get("start", 0):attrs.get("end", len(dims))])


@converter("Size", since=13)
def size(ctx: ConvertContext, node: onnx.NodeProto) -> None:
    ctx.set_const(node.output[0], np.array(_size(ctx.shape(node.input[0])), dtype=np.int64))


@converter("Cast", since=13)
def cast(ctx: ConvertContext, node: onnx.NodeProto) -> None:
    if onnx_attrs(node)["to"] not in FLOAT_TYPES:
        raise CompileError(f"{node_label(node)}: Cast of a secret tensor to a non-float type is not supported; only "
                           f"compile-time constants (masks, indices) may be integers or booleans")
    ctx.set_alias(node.output[0], node.input[0])  # secrets are fixed point whatever the float width


@converter("CastLike", since=15)
def cast_like(ctx: ConvertContext, node: onnx.NodeProto) -> None:
    target = ctx.const(node.input[1])  # None: a secret, hence float
    if target is not None and target.dtype.kind != "f":
        raise CompileError(f"{node_label(node)}: CastLike of a secret tensor to {target.dtype} is not supported; "
                           f"only compile-time constants (masks, indices) may be integers or booleans")
    ctx.set_alias(node.output[0], node.input[0])


@converter("Identity", since=13)
def identity(ctx: ConvertContext, node: onnx.NodeProto) -> None:
    ctx.set_alias(node.output[0], node.input[0])


@converter("Dropout", since=13)
def dropout(ctx: ConvertContext, node: onnx.NodeProto) -> None:
    """Inference: the identity (a constant ``training_mode`` input that is true is refused)."""
    training = ctx.optional_const(node, 2)
    if (training is not None and bool(training)) or (len(node.output) > 1 and node.output[1]):
        raise CompileError(f"{node_label(node)}: Dropout in training mode (or its mask output) is not supported; "
                           f"export the model in eval mode")
    ctx.set_alias(node.output[0], node.input[0])


# --- data movement: layouts -----------------------------------------------------------------------------------

@converter("Reshape", since=13)
def reshape(ctx: ConvertContext, node: onnx.NodeProto) -> None:
    in_shape = ctx.shape(node.input[0])
    target = [int(d) for d in ctx.require_const(node, 1, "target shape")]
    if not onnx_attrs(node).get("allowzero", 0):
        target = [in_shape[i] if d == 0 else d for i, d in enumerate(target)]
    ctx.emit_layout(node, node.input[:1], node.output[0], lambda x: x[0].reshape(target))


@converter("Flatten", since=13)
def flatten(ctx: ConvertContext, node: onnx.NodeProto) -> None:
    in_shape = ctx.shape(node.input[0])
    axis = _axis(onnx_attrs(node).get("axis", 1), len(in_shape))
    outer = _size(in_shape[:axis])
    ctx.emit_layout(node, node.input[:1], node.output[0], lambda x: x[0].reshape(outer, -1))


@converter("Transpose", since=13)
def transpose(ctx: ConvertContext, node: onnx.NodeProto) -> None:
    perm = onnx_attrs(node).get("perm")
    ctx.emit_layout(node, node.input[:1], node.output[0], lambda x: np.transpose(x[0], perm))


@converter("Squeeze", since=13)
def squeeze(ctx: ConvertContext, node: onnx.NodeProto) -> None:
    rank = len(ctx.shape(node.input[0]))
    axes = ctx.optional_const(node, 1)
    ctx.emit_layout(node, node.input[:1], node.output[0],
                    lambda x: np.squeeze(x[0], tuple(_axes(axes, rank))) if axes is not None else np.squeeze(x[0]))


@converter("Unsqueeze", since=13)
def unsqueeze(ctx: ConvertContext, node: onnx.NodeProto) -> None:
    axes = ctx.require_const(node, 1, "axes")
    rank = len(ctx.shape(node.input[0])) + axes.size
    ctx.emit_layout(node, node.input[:1], node.output[0], lambda x: np.expand_dims(x[0], tuple(_axes(axes, rank))))


@converter("Concat", since=13)
def concat(ctx: ConvertContext, node: onnx.NodeProto) -> None:
    axis = onnx_attrs(node)["axis"]
    inputs = [i for i in node.input if i and _size(ctx.shape(i)) > 0]  # torch emits empty shape pieces
    ctx.emit_layout(node, inputs, node.output[0], lambda xs: np.concatenate(xs, axis=axis))


def _indices(ctx: ConvertContext, node: onnx.NodeProto, index: int, dim: int) -> np.ndarray:
    """Constant indices with ONNX's negative values (counted from the end of a dimension of size ``dim``) resolved."""
    indices = ctx.require_const(node, index, "indices").astype(np.int64)
    return np.where(indices < 0, indices + dim, indices)


@converter("Gather", since=13)
def gather(ctx: ConvertContext, node: onnx.NodeProto) -> None:
    in_shape = ctx.shape(node.input[0])
    axis = _axis(onnx_attrs(node).get("axis", 0), len(in_shape))
    indices = _indices(ctx, node, 1, in_shape[axis])
    ctx.emit_layout(node, node.input[:1], node.output[0], lambda x: np.take(x[0], indices, axis=axis))


@converter("GatherElements", since=13)
def gather_elements(ctx: ConvertContext, node: onnx.NodeProto) -> None:
    in_shape = ctx.shape(node.input[0])
    axis = _axis(onnx_attrs(node).get("axis", 0), len(in_shape))
    indices = _indices(ctx, node, 1, in_shape[axis])
    ctx.emit_layout(node, node.input[:1], node.output[0], lambda x: np.take_along_axis(x[0], indices, axis=axis))


@converter("ScatterElements", since=13)
def scatter_elements(ctx: ConvertContext, node: onnx.NodeProto) -> None:
    """data with updates written at constant indices: a layout over the concatenation of data and updates."""
    _no_reduction(node)
    in_shape = ctx.shape(node.input[0])
    axis = _axis(onnx_attrs(node).get("axis", 0), len(in_shape))
    indices = _indices(ctx, node, 1, in_shape[axis])

    def build(xs: list[np.ndarray]) -> np.ndarray:
        out = xs[0].copy()
        np.put_along_axis(out, indices, xs[1], axis=axis)
        return out

    ctx.emit_layout(node, [node.input[0], node.input[2]], node.output[0], build)


@converter("ScatterND", since=13)
def scatter_nd(ctx: ConvertContext, node: onnx.NodeProto) -> None:
    _no_reduction(node)
    indices = ctx.require_const(node, 1, "indices").astype(np.int64)

    def build(xs: list[np.ndarray]) -> np.ndarray:
        out = xs[0].copy()
        out[tuple(np.moveaxis(indices, -1, 0))] = xs[1]  # numpy resolves negative indices as ONNX does
        return out

    ctx.emit_layout(node, [node.input[0], node.input[2]], node.output[0], build)


def _no_reduction(node: onnx.NodeProto) -> None:
    reduction = onnx_attrs(node).get("reduction", "none")
    if reduction != "none":
        raise CompileError(f"{node_label(node)}: {node.op_type} with reduction={reduction!r} onto a secret tensor "
                           f"is not supported (only reduction='none', a plain write); write the updates and then "
                           f"Add/Mul them")


@converter("Expand", since=13)
def expand(ctx: ConvertContext, node: onnx.NodeProto) -> None:
    dims = tuple(int(d) for d in ctx.require_const(node, 1, "shape"))
    ctx.emit_layout(node, node.input[:1], node.output[0],
                    lambda x: np.broadcast_to(x[0], np.broadcast_shapes(x[0].shape, dims)))


@converter("Tile", since=13)
def tile(ctx: ConvertContext, node: onnx.NodeProto) -> None:
    repeats = [int(r) for r in ctx.require_const(node, 1, "repeats")]
    ctx.emit_layout(node, node.input[:1], node.output[0], lambda x: np.tile(x[0], repeats))


@converter("Slice", since=13)
def slice_(ctx: ConvertContext, node: onnx.NodeProto) -> None:
    rank = len(ctx.shape(node.input[0]))
    starts = ctx.require_const(node, 1, "starts")
    ends = ctx.require_const(node, 2, "ends")
    axes = ctx.optional_const(node, 3)
    steps = ctx.optional_const(node, 4)
    axes = np.arange(len(starts)) if axes is None else axes
    steps = np.ones(len(starts), np.int64) if steps is None else steps
    index: list[slice] = [slice(None)] * rank
    for start, end, axis, step in zip(starts, ends, axes, steps):
        # numpy clamps out-of-range bounds exactly as ONNX does; INT64 sentinels just need to fit a Python int
        index[_axis(int(axis), rank)] = slice(int(start), int(end), int(step))
    ctx.emit_layout(node, node.input[:1], node.output[0], lambda x: x[0][tuple(index)])


def _split_sizes(ctx: ConvertContext, node: onnx.NodeProto, length: int) -> list[int]:
    attrs = onnx_attrs(node)
    if len(node.input) > 1 and node.input[1]:
        return [int(s) for s in ctx.require_const(node, 1, "split")]
    if "split" in attrs:
        return list(attrs["split"])
    parts = attrs.get("num_outputs", len(node.output))
    chunk = -(-length // parts)  # opset 18: the last chunk may be smaller
    return [min(chunk, length - i * chunk) for i in range(parts)]


@converter("Split", since=13)
def split(ctx: ConvertContext, node: onnx.NodeProto) -> None:
    in_shape = ctx.shape(node.input[0])
    axis = _axis(onnx_attrs(node).get("axis", 0), len(in_shape))
    bounds = np.cumsum([0] + _split_sizes(ctx, node, in_shape[axis]))
    for output, lo, hi in zip(node.output, bounds[:-1], bounds[1:]):
        ctx.emit_layout(node, node.input[:1], output,
                        lambda x, lo=lo, hi=hi: np.take(x[0], np.arange(lo, hi), axis=axis))


@converter("DepthToSpace", since=13)
def depth_to_space(ctx: ConvertContext, node: onnx.NodeProto) -> None:
    attrs = onnx_attrs(node)
    block, crd = int(attrs["blocksize"]), attrs.get("mode", "DCR") == "CRD"
    b, c, h, w = ctx.shape(node.input[0])
    depth = c // block ** 2

    def build(x: list[np.ndarray]) -> np.ndarray:
        if crd:
            blocks = x[0].reshape(b, depth, block, block, h, w).transpose(0, 1, 4, 2, 5, 3)
        else:
            blocks = x[0].reshape(b, block, block, depth, h, w).transpose(0, 3, 4, 1, 5, 2)
        return blocks.reshape(b, depth, h * block, w * block)

    ctx.emit_layout(node, node.input[:1], node.output[0], build)


@converter("SpaceToDepth", since=13)
def space_to_depth(ctx: ConvertContext, node: onnx.NodeProto) -> None:
    block = int(onnx_attrs(node)["blocksize"])
    b, c, h, w = ctx.shape(node.input[0])
    ctx.emit_layout(node, node.input[:1], node.output[0],
                    lambda x: x[0].reshape(b, c, h // block, block, w // block, block).transpose(0, 3, 5, 1, 2, 4)
                    .reshape(b, c * block ** 2, h // block, w // block))


_INDEX_PAD_MODES = ("reflect", "edge", "wrap")  # numpy.pad spells them as ONNX does


@converter("Pad", since=13)
def pad(ctx: ConvertContext, node: onnx.NodeProto) -> None:
    """constant mode: a layout reading the pad value from a public constant input (0 when absent); reflect, edge
    and wrap: pure index maps. Negative pads crop."""
    x, out = node.input[0], node.output[0]
    in_shape = ctx.shape(x)
    rank = len(in_shape)
    mode = onnx_attrs(node).get("mode", "constant")
    if mode != "constant" and mode not in _INDEX_PAD_MODES:
        raise CompileError(f"{node_label(node)}: Pad mode {mode!r} is not supported (constant, reflect, edge, wrap)")
    pads = [int(p) for p in ctx.require_const(node, 1, "pads")]
    axes = ctx.optional_const(node, 3)
    axes = list(range(rank)) if axes is None else [_axis(int(a), rank) for a in axes.reshape(-1)]
    begin, end = [0] * rank, [0] * rank
    for i, axis in enumerate(axes):
        begin[axis], end[axis] = pads[i], pads[len(axes) + i]
    widths = [(max(b, 0), max(e, 0)) for b, e in zip(begin, end)]
    crop = tuple(slice(max(-b, 0), d + max(b, 0) + max(e, 0) - max(-e, 0)) for d, b, e in zip(in_shape, begin, end))
    inputs = [x]
    if mode == "constant" and any(b > 0 or e > 0 for b, e in widths):
        value = node.input[2] if len(node.input) > 2 and node.input[2] else None
        if value is None:
            value = out + "__pad_value"
            ctx.set_const(value, np.zeros(1, np.float32))
        elif ctx.const(value) is None:
            raise CompileError(f"{node_label(node)}: the pad value must be a compile-time constant")
        inputs.append(value)
    fill = _size(in_shape)  # the index of the pad value: the first element after x in the layout's inputs

    def build(xs: list[np.ndarray]) -> np.ndarray:
        if mode == "constant":
            padded = np.pad(xs[0], widths, mode="constant", constant_values=fill)
        else:
            padded = np.pad(xs[0], widths, mode=mode)
        return padded[crop]

    ctx.emit_layout(node, inputs, out, build)


@converter("Resize", since=13)
def resize(ctx: ConvertContext, node: onnx.NodeProto) -> None:
    """Resize is linear in x and acts on each axis separately: per resized axis, onnx's reference evaluator runs the
    node itself on an identity basis along that axis, which yields the axis's [out, in] weights. One-hot weights
    (nearest, or an integer upscale that lands on samples) are a layout; others a ``matmul`` with the public
    weights on that axis, between layouts moving it last and back."""
    x, out = node.input[0], node.output[0]
    in_shape = ctx.shape(x)
    rank = len(in_shape)
    attrs = onnx_attrs(node)
    if attrs.get("coordinate_transformation_mode") == "tf_crop_and_resize" or "axes" in attrs \
            or attrs.get("keep_aspect_ratio_policy", "stretch") != "stretch":
        raise CompileError(f"{node_label(node)}: Resize with tf_crop_and_resize, axes or keep_aspect_ratio_policy is "
                           f"not supported; export an interpolation over the whole tensor (torch's F.interpolate)")
    roi, scales, sizes = (ctx.optional_const(node, i) for i in (1, 2, 3))
    scales = None if scales is None or scales.size == 0 else [float(v) for v in scales]
    sizes = None if sizes is None or sizes.size == 0 else [int(v) for v in sizes]
    resized = [a for a in range(rank) if (sizes[a] != in_shape[a] if sizes is not None else scales[a] != 1.0)]
    if not resized:
        ctx.set_alias(out, x)
    elif resized[0] == 0:
        raise CompileError(f"{node_label(node)}: Resize of the batch axis is not supported")
    current = x
    for axis in resized:
        weights = _resize_weights(node, in_shape, axis, roi, scales, sizes, ctx.opset)  # [out, in]
        current = _apply_on_axis(ctx, node, current, axis, weights, out if axis == resized[-1] else f"{out}__{axis}")


def _resize_weights(node: onnx.NodeProto, in_shape: Sequence[int], axis: int, roi: np.ndarray | None,
                    scales: list[float] | None, sizes: list[int] | None, opset: int) -> np.ndarray:
    """The node run on the identity along ``axis`` (basis index on axis 0): its [out, in] weights for that axis."""
    n = in_shape[axis]
    basis_shape = [1] * len(in_shape)
    basis_shape[0], basis_shape[axis] = n, n
    basis = np.moveaxis(np.eye(n).reshape(n, n, *[1] * (len(in_shape) - 2)), 1, axis).reshape(basis_shape)
    feeds = {"x": basis, "roi": roi if roi is not None else np.zeros(0, np.float32)}
    single = onnx.NodeProto()
    single.CopyFrom(node)
    del single.input[:]
    del single.output[:]
    if sizes is not None:
        target = list(basis_shape)
        target[axis] = sizes[axis]
        feeds["sizes"] = np.asarray(target, np.int64)
        single.input.extend(["x", "roi", "", "sizes"])
    else:
        factors = [1.0] * len(in_shape)
        factors[axis] = scales[axis]
        feeds["scales"] = np.asarray(factors, np.float32)
        single.input.extend(["x", "roi", "scales"])
    single.output.append("y")
    result = evaluate([single], [i for i in single.input if i], ["y"], feeds, opset)[0]
    return np.moveaxis(result, axis, 1).reshape(n, -1).T  # [out, in]


def _apply_on_axis(ctx: ConvertContext, node: onnx.NodeProto, x: str, axis: int, weights: np.ndarray,
                   out: str) -> str:
    """``x`` with ``weights`` [out, in] applied along ``axis``: a layout when they only pick elements."""
    one_hot = np.isin(weights, (0.0, 1.0)).all() and (weights.sum(axis=1) == 1).all()
    if one_hot:
        ctx.emit_layout(node, [x], out, lambda i: np.take(i[0], weights.argmax(axis=1), axis=axis))
        return out
    last = f"{out}__last"
    ctx.emit_layout(node, [x], last, lambda i: np.moveaxis(i[0], axis, -1))
    ctx.set_const(f"{out}__weights", weights.T)
    shape = (*ctx.shape(last)[:-1], weights.shape[0])
    product = ctx.emit("matmul", [last, f"{out}__weights"], f"{out}__resized", shape, node)
    ctx.emit_layout(node, [product], out, lambda i: np.moveaxis(i[0], -1, axis))
    return out


# --- elementwise arithmetic -----------------------------------------------------------------------------------

def _broadcast(ctx: ConvertContext, *names: str) -> tuple[int, ...]:
    return np.broadcast_shapes(*(ctx.shape(n) for n in names))


def _binary(op: str) -> Callable[[ConvertContext, onnx.NodeProto], None]:
    def convert(ctx: ConvertContext, node: onnx.NodeProto) -> None:
        a, b = node.input[:2]
        if op == "div" and ctx.is_const(b):
            # x / c is a public/param multiplication: x * (1/c); only a secret divisor needs MPC division
            reciprocal = node.output[0] + "__reciprocal"
            with np.errstate(divide="ignore"):  # a zero divisor is reported by name when the constant is used
                ctx.set_const(reciprocal, 1.0 / ctx.const(b).astype(np.float64), [b])
            ctx.emit("mul", [a, reciprocal], node.output[0], _broadcast(ctx, a, b), node)
        else:
            ctx.emit(op, [a, b], node.output[0], _broadcast(ctx, a, b), node)

    return convert


for _op in ("Add", "Sub", "Mul", "Div"):
    converter(_op, since=13)(_binary(_op.lower()))


@converter("Pow", since=13)
def pow_(ctx: ConvertContext, node: onnx.NodeProto) -> None:
    """x^2 -> mul(x, x); x^3 -> mul(mul(x, x), x) (GeLU-tanh's cube); x^0.5 -> sqrt; x^1 -> x."""
    x, out = node.input[0], node.output[0]
    if not ctx.is_const(node.input[1]):
        raise CompileError(f"{node_label(node)}: Pow with a secret exponent is not supported; the exponent must be "
                           f"a compile-time constant (0.5, 1, 2 or 3)")
    exponent = ctx.const(node.input[1]).reshape(-1)
    value = float(exponent[0]) if exponent.size == 1 else None
    if value == 2.0:
        ctx.emit("mul", [x, x], out, ctx.shape(x), node)
    elif value == 3.0:
        ctx.emit("mul", [ctx.emit("mul", [x, x], out + "__square", ctx.shape(x), node), x], out, ctx.shape(x), node)
    elif value == 0.5:
        ctx.emit("sqrt", [x], out, ctx.shape(x), node)
    elif value == 1.0:
        ctx.set_alias(out, x)
    else:
        raise CompileError(f"{node_label(node)}: Pow of a secret tensor supports exponents 0.5, 1, 2 and 3 only, got "
                           f"{exponent[:4].tolist()}: rewrite the model with Mul/Sqrt")


def _unary(op: str) -> Callable[[ConvertContext, onnx.NodeProto], None]:
    def convert(ctx: ConvertContext, node: onnx.NodeProto) -> None:
        x = node.input[0]
        ctx.emit(op, [x], node.output[0], ctx.shape(x), node)

    return convert


for _op, _kind in {"Relu": "relu", "Sqrt": "sqrt", "Erf": "erf", "Sigmoid": "sigmoid", "Tanh": "tanh", "Exp": "exp",
                   "Neg": "neg", "Abs": "abs", "Reciprocal": "reciprocal", "HardSwish": "hardswish"}.items():
    converter(_op, since=13)(_unary(_kind))


@converter("HardSigmoid", since=13)
def hard_sigmoid(ctx: ConvertContext, node: onnx.NodeProto) -> None:
    attrs = onnx_attrs(node)
    ctx.emit("hardsigmoid", [node.input[0]], node.output[0], ctx.shape(node.input[0]), node,
             alpha=float(attrs.get("alpha", 0.2)), beta=float(attrs.get("beta", 0.5)))


def _leaky(ctx: ConvertContext, node: onnx.NodeProto, slope: str) -> None:
    """x for x > 0, slope·x below: slope·x + (1 - slope)·relu(x) (one comparison; slope public or param)."""
    x, out = node.input[0], node.output[0]
    shape = _broadcast(ctx, x, slope)
    ctx.set_const(out + "__relu_weight", 1.0 - ctx.const(slope).astype(np.float64), [slope])
    positive = ctx.emit("relu", [x], out + "__relu", ctx.shape(x), node)
    weighted = ctx.emit("mul", [positive, out + "__relu_weight"], out + "__weighted", shape, node)
    sloped = ctx.emit("mul", [x, slope], out + "__sloped", shape, node)
    ctx.emit("add", [weighted, sloped], out, shape, node)


@converter("LeakyRelu", since=13)
def leaky_relu(ctx: ConvertContext, node: onnx.NodeProto) -> None:
    ctx.set_const(node.output[0] + "__slope", np.float64(onnx_attrs(node).get("alpha", 0.01)))
    _leaky(ctx, node, node.output[0] + "__slope")


@converter("PRelu", since=13)
def prelu(ctx: ConvertContext, node: onnx.NodeProto) -> None:
    ctx.require_const(node, 1, "slope")
    _leaky(ctx, node, node.input[1])


@converter("Gelu", since=20)
def gelu(ctx: ConvertContext, node: onnx.NodeProto) -> None:
    approximate = onnx_attrs(node).get("approximate", "none")
    if approximate not in ("none", "tanh"):
        raise CompileError(f"{node_label(node)}: Gelu(approximate={approximate!r}) is not an ONNX value ('none' or "
                           f"'tanh'); re-export the model")
    # the default stays implicit, as in the gelu nodes the GeLU pattern pass builds from Erf
    extra = {"approximate": approximate} if approximate != "none" else {}
    ctx.emit("gelu", [node.input[0]], node.output[0], ctx.shape(node.input[0]), node, **extra)


def _bound(ctx: ConvertContext, node: onnx.NodeProto, index: int, what: str) -> float | None:
    if index >= len(node.input) or not node.input[index]:
        return None
    value = ctx.require_const(node, index, what)
    if value.size != 1:
        raise CompileError(f"{node_label(node)}: the {what} must be a scalar, got shape {value.shape}")
    return float(value.reshape(-1)[0])


@converter("Clip", since=13)
def clip(ctx: ConvertContext, node: onnx.NodeProto) -> None:
    """Constant bounds (ReLU6 is Clip 0..6)."""
    x = node.input[0]
    ctx.emit("clip", [x], node.output[0], ctx.shape(x), node, min=_bound(ctx, node, 1, "min"),
             max=_bound(ctx, node, 2, "max"))


def _extremum(largest: bool) -> Callable[[ConvertContext, onnx.NodeProto], None]:
    """Max/Min: against a constant scalar a ``clip``; otherwise max(a, b) = b + relu(a - b), min(a, b) =
    a - relu(a - b) (one comparison), pairwise from the left for more than two operands."""
    def convert(ctx: ConvertContext, node: onnx.NodeProto) -> None:
        operands = [i for i in node.input if i]
        out = node.output[0]
        acc = operands[0]
        for step, other in enumerate(operands[1:]):
            target = out if step == len(operands) - 2 else f"{out}__{step}"
            a, b = (acc, other) if not ctx.is_const(acc) else (other, acc)  # a secret, b either
            shape = _broadcast(ctx, a, b)
            if ctx.is_const(b) and ctx.const(b).size == 1 and shape == ctx.shape(a):
                bound = float(ctx.const(b).reshape(-1)[0])
                ctx.emit("clip", [a], target, shape, node, min=bound if largest else None,
                         max=None if largest else bound)
            else:
                diff = ctx.emit("sub", [a, b], f"{target}__diff", shape, node)
                positive = ctx.emit("relu", [diff], f"{target}__relu", shape, node)
                if largest:
                    ctx.emit("add", [b, positive], target, shape, node)
                else:
                    ctx.emit("sub", [a, positive], target, shape, node)
            acc = target
        if len(operands) == 1:
            ctx.set_alias(out, acc)

    return convert


converter("Max", since=13)(_extremum(largest=True))
converter("Min", since=13)(_extremum(largest=False))


@converter("Where", since=13)
def where(ctx: ConvertContext, node: onnx.NodeProto) -> None:
    """A constant condition (a mask) selects locally between two tensors, secret or constant."""
    cond, a, b = node.input
    if not ctx.is_const(cond):
        raise CompileError(f"{node_label(node)}: Where with a condition computed from the secret input is not "
                           f"supported; the condition must be a compile-time constant (a mask)")
    ctx.emit("where", [cond, a, b], node.output[0], _broadcast(ctx, cond, a, b), node)


@converter("Softmax", since=13)
def softmax(ctx: ConvertContext, node: onnx.NodeProto) -> None:
    x = node.input[0]
    rank = len(ctx.shape(x))
    ctx.emit("softmax", [x], node.output[0], ctx.shape(x), node, axis=_axis(onnx_attrs(node).get("axis", -1), rank))


# ONNX reduction -> (elementwise op before, IR reduction, elementwise op after); "square" is mul(x, x)
_REDUCTIONS: dict[str, tuple[str | None, str, str | None]] = {
    "ReduceSum": (None, "reduce_sum", None), "ReduceMean": (None, "reduce_mean", None),
    "ReduceMax": (None, "reduce_max", None), "ReduceMin": ("neg", "reduce_max", "neg"),
    "ReduceL1": ("abs", "reduce_sum", None), "ReduceL2": ("square", "reduce_sum", "sqrt"),
    "ReduceSumSquare": ("square", "reduce_sum", None)}


def _elementwise(ctx: ConvertContext, node: onnx.NodeProto, op: str, x: str, out: str) -> str:
    return ctx.emit("mul" if op == "square" else op, [x, x] if op == "square" else [x], out, ctx.shape(x), node)


def _reduce(onnx_op: str, axes_from_input: bool) -> Callable[[ConvertContext, onnx.NodeProto], None]:
    """Any axes, keepdims, noop_with_empty_axes; min = -max(-x), L1 = sum |x|, L2 = sqrt(sum x²)."""
    before, op, after = _REDUCTIONS[onnx_op]

    def convert(ctx: ConvertContext, node: onnx.NodeProto) -> None:
        x, out = node.input[0], node.output[0]
        in_shape = ctx.shape(x)
        attrs = onnx_attrs(node)
        raw_axes = ctx.optional_const(node, 1) if axes_from_input else attrs.get("axes")
        axes = _axes(raw_axes, len(in_shape))
        if not axes and attrs.get("noop_with_empty_axes", 0):
            _no_reduction_applied(ctx, node, [op for op in (before, after) if op is not None])
            return
        axes = axes or list(range(len(in_shape)))
        keepdims = bool(attrs.get("keepdims", 1))
        out_shape = [1 if i in axes else d for i, d in enumerate(in_shape) if keepdims or i not in axes]
        if before is not None:
            x = _elementwise(ctx, node, before, x, f"{out}__{before}")
        reduced = ctx.emit(op, [x], out if after is None else f"{out}__{op}", out_shape, node, axes=axes,
                           keepdims=keepdims)
        if after is not None:
            _elementwise(ctx, node, after, reduced, out)

    return convert


def _no_reduction_applied(ctx: ConvertContext, node: onnx.NodeProto, steps: list[str]) -> None:
    """noop_with_empty_axes and no axes: no reduction, but the elementwise parts apply (ReduceL1 is |x|)."""
    x, out = node.input[0], node.output[0]
    if not steps:
        ctx.set_alias(out, x)
    for i, op in enumerate(steps):
        x = _elementwise(ctx, node, op, x, out if i == len(steps) - 1 else f"{out}__{op}")


converter("ReduceSum", since=13)(_reduce("ReduceSum", axes_from_input=True))
for _op in _REDUCTIONS:
    if _op != "ReduceSum":
        converter(_op, since=13)(_reduce(_op, axes_from_input=False))
        converter(_op, since=18)(_reduce(_op, axes_from_input=True))


def _normalise(ctx: ConvertContext, node: onnx.NodeProto, x: str, axes: list[int], eps: float, out: str) -> str:
    """(x - mean) / sqrt(var + eps) over ``axes`` in generic kinds (reduce_mean, sub, mul, add, rsqrt)."""
    shape = ctx.shape(x)
    reduced = [1 if i in axes else d for i, d in enumerate(shape)]
    mean = ctx.emit("reduce_mean", [x], out + "__mean", reduced, node, axes=axes, keepdims=True)
    centred = ctx.emit("sub", [x, mean], out + "__centred", shape, node)
    squares = ctx.emit("mul", [centred, centred], out + "__squares", shape, node)
    variance = ctx.emit("reduce_mean", [squares], out + "__variance", reduced, node, axes=axes, keepdims=True)
    ctx.set_const(out + "__eps", np.float64(eps))
    shifted = ctx.emit("add", [variance, out + "__eps"], out + "__shifted", reduced, node)
    inverse = ctx.emit("rsqrt", [shifted], out + "__rsqrt", reduced, node)
    return ctx.emit("mul", [centred, inverse], out + "__normalised", shape, node)


@converter("LayerNormalization", since=17)
def layer_normalization(ctx: ConvertContext, node: onnx.NodeProto) -> None:
    """Over the last axis: one ``layernorm`` node. Over the axes from ``axis`` on (more than one): mean, variance and
    rsqrt in generic kinds, then times gamma plus beta (both shaped like those axes)."""
    x, out = node.input[0], node.output[0]
    in_shape = ctx.shape(x)
    attrs = onnx_attrs(node)
    axis = _axis(attrs.get("axis", -1), len(in_shape))
    eps = float(attrs.get("epsilon", 1e-5))
    if len(node.output) > 1 and any(node.output[1:]):
        raise CompileError(f"{node_label(node)}: the Mean/InvStdDev outputs of LayerNormalization are not "
                           f"supported; use only its first output")
    gamma = node.input[1]
    beta = node.input[2] if len(node.input) > 2 and node.input[2] else None
    if axis != len(in_shape) - 1:
        normalised = _normalise(ctx, node, x, list(range(axis, len(in_shape))), eps, out)
        scaled = ctx.emit("mul", [normalised, gamma], out if beta is None else out + "__scaled", in_shape, node)
        if beta is not None:
            ctx.emit("add", [scaled, beta], out, in_shape, node)
        return
    if beta is None:
        beta = out + "__zero_bias"
        ctx.set_const(beta, np.zeros(in_shape[-1], np.float32), [gamma])
    ctx.emit("layernorm", [x, gamma, beta], out, in_shape, node, eps=eps)


@converter("BatchNormalization", since=13)
def batch_normalization(ctx: ConvertContext, node: onnx.NodeProto) -> None:
    """Inference: x * scale + shift per channel (axis 1), scale = γ / sqrt(var + ε), shift = β - mean * scale,
    both params of shape [C, 1, ...] broadcasting over [B, C, ...]."""
    x, out = node.input[0], node.output[0]
    in_shape = ctx.shape(x)
    if onnx_attrs(node).get("training_mode", 0) or any(node.output[1:]):
        raise CompileError(f"{node_label(node)}: BatchNormalization in training mode (or its running-statistics "
                           f"outputs) is not supported; export the model in eval mode")
    gamma, beta, mean, var = (ctx.require_const(node, i, what).astype(np.float64)
                              for i, what in enumerate(("scale", "B", "input_mean", "input_var"), start=1))
    scale = gamma / np.sqrt(var + float(onnx_attrs(node).get("epsilon", 1e-5)))
    per_channel = (in_shape[1],) + (1,) * (len(in_shape) - 2)
    ctx.set_const(out + "__scale", scale.reshape(per_channel), node.input[1:5])
    ctx.set_const(out + "__shift", (beta - mean * scale).reshape(per_channel), node.input[1:5])
    scaled = ctx.emit("mul", [x, out + "__scale"], out + "__scaled", in_shape, node)
    ctx.emit("add", [scaled, out + "__shift"], out, in_shape, node)


def _channel_affine(ctx: ConvertContext, node: onnx.NodeProto, x: str, scale: np.ndarray, bias: np.ndarray) -> None:
    """x * scale + bias with per-channel (axis 1) params [C, 1, ...] derived from the node's inputs 1 and 2."""
    out, shape = node.output[0], ctx.shape(x)
    per_channel = (shape[1],) + (1,) * (len(shape) - 2)
    ctx.set_const(out + "__scale", scale.reshape(per_channel), node.input[1:3])
    ctx.set_const(out + "__shift", bias.reshape(per_channel), node.input[1:3])
    scaled = ctx.emit("mul", [x, out + "__scale"], out + "__scaled", shape, node)
    ctx.emit("add", [scaled, out + "__shift"], out, shape, node)


@converter("InstanceNormalization", since=13)
def instance_normalization(ctx: ConvertContext, node: onnx.NodeProto) -> None:
    """Per image and channel over the spatial axes, then a per-channel affine."""
    x = node.input[0]
    axes = list(range(2, len(ctx.shape(x))))
    normalised = _normalise(ctx, node, x, axes, float(onnx_attrs(node).get("epsilon", 1e-5)), node.output[0])
    _channel_affine(ctx, node, normalised, ctx.require_const(node, 1, "scale").astype(np.float64),
                    ctx.require_const(node, 2, "B").astype(np.float64))


# --- products -------------------------------------------------------------------------------------------------

@converter("MatMul", since=13)
def matmul(ctx: ConvertContext, node: onnx.NodeProto) -> None:
    """Any operand secret or constant; a 1-D operand is made a row (a) or column (b) and that axis dropped after."""
    a, b = node.input
    out = node.output[0]
    vector_a, vector_b = len(ctx.shape(a)) == 1, len(ctx.shape(b)) == 1
    if vector_a:
        a = out + "__row"
        ctx.emit_layout(node, node.input[:1], a, lambda x: x[0].reshape(1, -1))
    if vector_b:
        b = out + "__column"
        ctx.emit_layout(node, node.input[1:], b, lambda x: x[0].reshape(-1, 1))
    shape_a, shape_b = ctx.shape(a), ctx.shape(b)
    full = (*np.broadcast_shapes(shape_a[:-2], shape_b[:-2]), shape_a[-2], shape_b[-1])
    if not (vector_a or vector_b):
        ctx.emit("matmul", [a, b], out, full, node)
        return
    final = full[:-2] + full[-2:-1] * (not vector_a) + full[-1:] * (not vector_b)
    product = ctx.emit("matmul", [a, b], out + "__2d", full, node)
    ctx.emit_layout(node, [product], out, lambda x: x[0].reshape(final))


@converter("Gemm", since=13)
def gemm(ctx: ConvertContext, node: onnx.NodeProto) -> None:
    """alpha * A' @ B' + beta * C with A' = Aᵀ if transA, B' = Bᵀ if transB; any operand secret or constant.
    alpha and beta are folded into a constant operand where there is one (the weight, usually)."""
    attrs = onnx_attrs(node)
    out = node.output[0]
    alpha, beta = float(attrs.get("alpha", 1.0)), float(attrs.get("beta", 1.0))
    operands = []
    for index, key, suffix in ((0, "transA", "__a"), (1, "transB", "__weight")):
        name = node.input[index]
        if ctx.is_const(name):
            data = ctx.const(name).astype(np.float64)
            ctx.set_const(out + suffix, data.T if attrs.get(key, 0) else data, [name])
            name = out + suffix
        elif attrs.get(key, 0):
            ctx.emit_layout(node, [name], out + suffix, lambda x: x[0].T)
            name = out + suffix
        operands.append(name)
    a, b = operands
    if alpha != 1.0:
        constant = b if ctx.is_const(b) else a if ctx.is_const(a) else None
        if constant is not None:
            ctx.set_const(constant, ctx.const(constant) * alpha, [constant])
        else:
            scaled = out + "__alpha_a"
            ctx.set_const(out + "__alpha", np.float64(alpha))
            a = ctx.emit("mul", [a, out + "__alpha"], scaled, ctx.shape(a), node)
    shape = (ctx.shape(a)[0], ctx.shape(b)[1])
    if len(node.input) < 3 or not node.input[2]:
        ctx.emit("matmul", [a, b], out, shape, node)
        return
    product = ctx.emit("matmul", [a, b], out + "__matmul", shape, node)
    c = node.input[2]
    if ctx.is_const(c):
        ctx.set_const(out + "__bias", ctx.const(c).astype(np.float64) * beta, [c])
        c = out + "__bias"
    elif beta != 1.0:
        ctx.set_const(out + "__beta", np.float64(beta))
        c = ctx.emit("mul", [c, out + "__beta"], out + "__beta_c", ctx.shape(c), node)
    ctx.emit("add", [product, c], out, np.broadcast_shapes(shape, ctx.shape(c)), node)


def _conv_pads(node: onnx.NodeProto, spatial: Sequence[int], kernel: Sequence[int], strides: Sequence[int],
               dilations: Sequence[int]) -> list[int]:
    """ONNX ``pads`` (all begins, then all ends), from ``auto_pad`` when it is set."""
    attrs = onnx_attrs(node)
    auto = attrs.get("auto_pad", "NOTSET")
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        begin, end = [], []
        for n, k, s, d in zip(spatial, kernel, strides, dilations):
            total = max((-(-n // s) - 1) * s + (k - 1) * d + 1 - n, 0)
            first = total // 2 if auto == "SAME_UPPER" else total - total // 2
            begin.append(first)
            end.append(total - first)
        return begin + end
    if auto == "VALID":
        return [0] * (2 * len(spatial))
    return [int(p) for p in attrs.get("pads", [0] * (2 * len(spatial)))]


def _windows(in_shape: Sequence[int], kernel: Sequence[int], strides: Sequence[int], dilations: Sequence[int],
             pads: Sequence[int], fill: int, ceil_mode: bool = False) -> tuple[np.ndarray, list[int]]:
    """The index map of every sliding window of x [B, C, *spatial]: [B, C, *out_spatial, *kernel], indices into x
    flattened, ``fill`` where a window reads padding (``pads``: begins then ends). ``ceil_mode`` keeps a last
    partial window when it starts inside the input or the begin padding (as torch and onnxruntime do)."""
    nd = len(kernel)
    extents = [(k - 1) * d + 1 for k, d in zip(kernel, dilations)]
    out_spatial, extra = [], []
    for n, b, e, ext, s in zip(in_shape[2:], pads[:nd], pads[nd:], extents, strides):
        padded = n + b + e
        steps = (padded - ext) // s + 1
        if ceil_mode and (padded - ext) % s and (steps * s < n + b):
            steps += 1
        out_spatial.append(steps)
        extra.append(max((steps - 1) * s + ext - padded, 0))
    padded = np.pad(np.arange(_size(in_shape)).reshape(in_shape),
                    [(0, 0), (0, 0)] + [(b, e + x) for b, e, x in zip(pads[:nd], pads[nd:], extra)],
                    constant_values=fill)
    grids = []
    for i, (steps, k, s, d) in enumerate(zip(out_spatial, kernel, strides, dilations)):
        grid = np.arange(steps)[:, None] * s + np.arange(k)[None, :] * d  # [out, k]: padded position read
        shape = [1] * (2 * nd)
        shape[i], shape[nd + i] = steps, k
        grids.append(grid.reshape(shape))
    return padded[(slice(None), slice(None), *grids)], out_spatial


@converter("Conv", since=13)
def conv(ctx: ConvertContext, node: onnx.NodeProto) -> None:
    """Any Conv with a constant kernel W [Cout, C/G, *k] on x [B, C, *spatial] (any kernel, stride, padding,
    dilation, groups G):

    1. an im2col ``layout`` to patches [B, L, C·K] (K = prod(k), L = prod(out_spatial); columns channel-major, then
       kernel offsets row-major), padding read from a public zero passed as a second layout input;
    2. ``linear`` with W as [C·K, Cout] (G = 1), or a batched ``matmul`` [B, G, L, C/G·K] @ [G, C/G·K, Cout/G] param
       plus a [G, 1, Cout/G] bias (G > 1);
    3. a ``layout`` back to [B, Cout, *out_spatial].

    A patch embedding (kernel == stride, no padding) reads no zero: the patch-embedding pass folds its step-1 layout
    into the client's im2col."""
    attrs = onnx_attrs(node)
    x, out = node.input[0], node.output[0]
    weight = ctx.require_const(node, 1, "W (the kernel)")
    in_shape = ctx.shape(x)
    batch, channels, spatial = in_shape[0], in_shape[1], in_shape[2:]
    out_ch, group_in, kernel = weight.shape[0], weight.shape[1], weight.shape[2:]
    nd, groups = len(spatial), int(attrs.get("group", 1))
    strides = list(attrs.get("strides", [1] * nd))
    dilations = list(attrs.get("dilations", [1] * nd))
    if group_in * groups != channels or out_ch % groups:
        raise CompileError(f"{node_label(node)}: kernel {weight.shape} with group {groups} does not fit an input of "
                           f"{channels} channels; the model is inconsistent: re-export it")
    pads = _conv_pads(node, spatial, kernel, strides, dilations)
    zero_at = _size(in_shape)  # index of the public zero: the first element after x in the layout's inputs
    windows, out_spatial = _windows(in_shape, kernel, strides, dilations, pads, zero_at)
    order = [0, *range(2, 2 + nd), 1, *range(2 + nd, 2 + 2 * nd)]  # [B, o1, o2, ..., C, k1, k2, ...]
    tokens, taps = _size(out_spatial), _size(kernel)
    patches = windows.transpose(order).reshape(batch, tokens, channels * taps)
    inputs = [x]
    if (patches == zero_at).any():
        ctx.set_const(out + "__zero", np.zeros(1, np.float32))
        inputs.append(out + "__zero")
    bias = node.input[2] if len(node.input) > 2 and node.input[2] else None
    to_nchw = [0, 1 + nd, *range(1, 1 + nd)]
    if groups == 1:
        ctx.emit_layout(node, inputs, out + "__patches", lambda _: patches)
        ctx.set_const(out + "__weight", weight.reshape(out_ch, -1).T, node.input[1:2])
        ctx.emit("linear", [out + "__patches", out + "__weight", *([bias] if bias else [])], out + "__tokens",
                 (batch, tokens, out_ch), node)
        ctx.emit_layout(node, [out + "__tokens"], out,
                        lambda t: t[0].reshape(batch, *out_spatial, out_ch).transpose(to_nchw))
        return
    per_group = group_in * taps
    grouped = patches.reshape(batch, tokens, groups, per_group).transpose(0, 2, 1, 3)
    ctx.emit_layout(node, inputs, out + "__patches", lambda _: grouped)
    ctx.set_const(out + "__weight", weight.reshape(groups, out_ch // groups, per_group).transpose(0, 2, 1),
                  node.input[1:2])
    product = ctx.emit("matmul", [out + "__patches", out + "__weight"], out + "__groups",
                       (batch, groups, tokens, out_ch // groups), node)
    if bias:
        ctx.set_const(out + "__bias", ctx.const(bias).reshape(groups, 1, out_ch // groups), [bias])
        product = ctx.emit("add", [product, out + "__bias"], out + "__biased", (batch, groups, tokens,
                                                                                 out_ch // groups), node)
    ctx.emit_layout(node, [product], out,
                    lambda t: t[0].transpose(0, 1, 3, 2).reshape(batch, out_ch, *out_spatial))


def _pool_geometry(node: onnx.NodeProto, in_shape: Sequence[int]) -> tuple[list[int], list[int], list[int],
                                                                             list[int]]:
    attrs = onnx_attrs(node)
    kernel = list(attrs["kernel_shape"])
    nd = len(kernel)
    strides = list(attrs.get("strides", [1] * nd))
    dilations = list(attrs.get("dilations", [1] * nd))
    return kernel, strides, dilations, _conv_pads(node, in_shape[2:], kernel, strides, dilations)


@converter("MaxPool", since=13)
def max_pool(ctx: ConvertContext, node: onnx.NodeProto) -> None:
    """A layout to the windows [B, C, *out_spatial, K], then ``reduce_max`` over K. A padded position reads another
    element of its own window instead (a duplicate leaves the maximum unchanged; -inf has no fixed-point code)."""
    x, out = node.input[0], node.output[0]
    if len(node.output) > 1 and node.output[1]:
        raise CompileError(f"{node_label(node)}: the Indices output of MaxPool is not supported; export with "
                           f"return_indices=False")
    in_shape = ctx.shape(x)
    kernel, strides, dilations, pads = _pool_geometry(node, in_shape)
    fill = _size(in_shape)
    windows, out_spatial = _windows(in_shape, kernel, strides, dilations, pads, fill,
                                    bool(onnx_attrs(node).get("ceil_mode", 0)))
    flat = windows.reshape(*windows.shape[:2 + len(kernel)], -1)
    first = np.take_along_axis(flat, np.argmax(flat != fill, axis=-1)[..., None], axis=-1)  # ONNX: pads < kernel
    ctx.emit_layout(node, [x], out + "__windows", lambda _: np.where(flat == fill, first, flat))
    ctx.emit("reduce_max", [out + "__windows"], out, flat.shape[:-1], node, axes=[flat.ndim - 1], keepdims=False)


@converter("AveragePool", since=13)
def average_pool(ctx: ConvertContext, node: onnx.NodeProto) -> None:
    """A layout to the windows [B, C, *out_spatial, K] (padding reads a public zero), then ``reduce_mean`` over K
    where every window counts K elements, else ``reduce_sum`` times a public 1/count per output position: the input
    elements (count_include_pad=0, the default), or those and the padding but not a ceil_mode overhang
    (count_include_pad=1, as torch and onnxruntime count)."""
    x, out = node.input[0], node.output[0]
    attrs = onnx_attrs(node)
    in_shape = ctx.shape(x)
    kernel, strides, dilations, pads = _pool_geometry(node, in_shape)
    fill = _size(in_shape)
    windows, out_spatial = _windows(in_shape, kernel, strides, dilations, pads, fill, bool(attrs.get("ceil_mode", 0)))
    flat = windows.reshape(*windows.shape[:2 + len(kernel)], -1)
    inputs = [x]
    if (flat == fill).any():
        ctx.set_const(out + "__zero", np.zeros(1, np.float32))
        inputs.append(out + "__zero")
    ctx.emit_layout(node, inputs, out + "__windows", lambda _: flat)
    axes, shape = [flat.ndim - 1], flat.shape[:-1]
    nd = len(kernel)
    counts = np.ones(out_spatial, dtype=np.int64)
    for i, (n, k, s, d, begin, end) in enumerate(zip(in_shape[2:], kernel, strides, dilations, pads[:nd], pads[nd:])):
        position = np.arange(out_spatial[i])[:, None] * s + np.arange(k)[None, :] * d  # in padded coordinates
        lo, hi = (0, begin + n + end) if attrs.get("count_include_pad", 0) else (begin, begin + n)
        counted = ((position >= lo) & (position < hi)).sum(axis=1)
        counts = counts * counted.reshape([-1 if j == i else 1 for j in range(nd)])
    if (counts == flat.shape[-1]).all():
        ctx.emit("reduce_mean", [out + "__windows"], out, shape, node, axes=axes, keepdims=False)
        return
    ctx.set_const(out + "__inverse_count", 1.0 / counts)
    total = ctx.emit("reduce_sum", [out + "__windows"], out + "__sum", shape, node, axes=axes, keepdims=False)
    ctx.emit("mul", [total, out + "__inverse_count"], out, shape, node)


def _global_pool(op: str) -> Callable[[ConvertContext, onnx.NodeProto], None]:
    def convert(ctx: ConvertContext, node: onnx.NodeProto) -> None:
        in_shape = ctx.shape(node.input[0])
        axes = list(range(2, len(in_shape)))
        ctx.emit(op, [node.input[0]], node.output[0], (*in_shape[:2], *[1] * len(axes)), node, axes=axes,
                 keepdims=True)

    return convert


converter("GlobalAveragePool", since=13)(_global_pool("reduce_mean"))
converter("GlobalMaxPool", since=13)(_global_pool("reduce_max"))


def _variadic(mean: bool) -> Callable[[ConvertContext, onnx.NodeProto], None]:
    """Sum (and Mean: the sum times 1/n) of any number of operands with broadcasting: a chain of ``add``."""
    def convert(ctx: ConvertContext, node: onnx.NodeProto) -> None:
        operands = [i for i in node.input if i]
        out = node.output[0]
        if len(operands) == 1:
            ctx.set_alias(out, operands[0])
            return
        acc = operands[0]
        for step, other in enumerate(operands[1:]):
            last = step == len(operands) - 2 and not mean
            acc = ctx.emit("add", [acc, other], out if last else f"{out}__{step}", _broadcast(ctx, acc, other), node)
        if mean:
            ctx.set_const(out + "__inverse_count", np.float64(1.0 / len(operands)))
            ctx.emit("mul", [acc, out + "__inverse_count"], out, ctx.shape(acc), node)

    return convert


converter("Sum", since=13)(_variadic(mean=False))
converter("Mean", since=13)(_variadic(mean=True))


@converter("Einsum", since=12)
def einsum(ctx: ConvertContext, node: onnx.NodeProto) -> None:
    """An Einsum of one or two operands without diagonals: letters only one operand has and the output lacks are
    summed first (``reduce_sum``); then one operand is a transpose (a layout), two are a batched ``matmul`` between
    layouts to [*batch, M, K] and [*batch, K, N] (batch letters broadcast where one side is 1) and a layout to the
    output's order."""
    terms, output = _einsum_terms(node, [len(ctx.shape(i)) for i in node.input])
    equation = onnx_attrs(node)["equation"]
    if len(terms) > 2 or any(len(set(t)) != len(t) for t in (*terms, output)):
        raise CompileError(f"{node_label(node)}: Einsum {equation!r} (more than two operands or a repeated letter, "
                           f"a diagonal) is not supported; rewrite it with MatMul/Transpose/ReduceSum")
    out = node.output[0]
    names = list(node.input)
    for i, term in enumerate(terms):
        others = "".join(t for j, t in enumerate(terms) if j != i) + output
        summed = [term.index(c) for c in term if c not in others]
        if summed:
            shape = [d for axis, d in enumerate(ctx.shape(names[i])) if axis not in summed]
            names[i] = ctx.emit("reduce_sum", [names[i]], f"{out}__sum{i}", shape, node, axes=summed, keepdims=False)
            terms[i] = "".join(c for c in term if c in others)
    if len(terms) == 1:
        ctx.emit_layout(node, names, out, lambda x: np.transpose(x[0], [terms[0].index(c) for c in output]))
        return
    (ta, tb), (name_a, name_b) = terms, names
    size_a, size_b = dict(zip(ta, ctx.shape(name_a))), dict(zip(tb, ctx.shape(name_b)))
    batch = [c for c in output if c in ta and c in tb]
    contract = [c for c in ta if c in tb and c not in output]
    free_a, free_b = [c for c in ta if c not in tb], [c for c in tb if c not in ta]
    for c in batch + contract:
        if size_a[c] != size_b[c] and (c in contract or 1 not in (size_a[c], size_b[c])):
            raise CompileError(f"{node_label(node)}: Einsum {equation!r}: {c!r} is {size_a[c]} in one operand and "
                               f"{size_b[c]} in the other; the model is inconsistent: re-export it")
    dims = {**size_a, **size_b, **{c: max(size_a[c], size_b[c]) for c in batch}}
    size_of = lambda letters, sizes: _size([sizes[c] for c in letters])  # noqa: E731
    rows, inner, cols = size_of(free_a, size_a), size_of(contract, size_a), size_of(free_b, size_b)
    left, right = out + "__left", out + "__right"
    ctx.emit_layout(node, [name_a], left, lambda x: np.transpose(x[0], [ta.index(c) for c in batch + free_a
                                                                        + contract])
                    .reshape(*[size_a[c] for c in batch], rows, inner))
    ctx.emit_layout(node, [name_b], right, lambda x: np.transpose(x[0], [tb.index(c) for c in batch + contract
                                                                         + free_b])
                    .reshape(*[size_b[c] for c in batch], inner, cols))
    product = ctx.emit("matmul", [left, right], out + "__product", (*[dims[c] for c in batch], rows, cols), node)
    produced = batch + free_a + free_b
    ctx.emit_layout(node, [product], out, lambda x: x[0].reshape([dims[c] for c in produced])
                    .transpose([produced.index(c) for c in output]))


def _einsum_terms(node: onnx.NodeProto, ranks: list[int]) -> tuple[list[str], str]:
    """The equation's operand terms and output term, with ``...`` spelled out as letters it does not use."""
    equation = onnx_attrs(node)["equation"].replace(" ", "")
    lhs, arrow, rhs = equation.partition("->")
    spare = [c for c in string.ascii_letters if c not in equation]
    ellipsis = max((rank - len(term.replace("...", "")) for term, rank in zip(lhs.split(","), ranks)
                    if "..." in term), default=0)
    fill = "".join(spare[:ellipsis])
    terms = [term.replace("...", fill[len(fill) - (rank - len(term.replace("...", ""))):])
             for term, rank in zip(lhs.split(","), ranks)]
    if arrow:
        return terms, rhs.replace("...", fill)
    once = sorted(c for c in set("".join(terms)) if "".join(terms).count(c) == 1 and c not in fill)
    return terms, fill + "".join(once)
