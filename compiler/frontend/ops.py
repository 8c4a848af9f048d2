"""One converter per ONNX op. Ops on compile-time constants fold with numpy; ops on secrets emit generic IR nodes.

Data-movement ops (Reshape, Transpose, Slice, Split, Concat, Gather, Squeeze, Unsqueeze, Flatten, Expand, Identity)
share one mechanism: the op is applied to an index array (:meth:`ConvertContext.emit_layout`), which yields the
``layout`` node's static index map — no runtime work in MPC.
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np
import onnx

from compiler.errors import CompileError
from compiler.frontend.context import ConvertContext, node_label, onnx_attrs
from compiler.frontend.registry import converter


def _axis(axis: int, rank: int) -> int:
    return int(axis) + rank if axis < 0 else int(axis)


def _axes(axes: np.ndarray | list[int] | None, rank: int) -> list[int]:
    return sorted(_axis(int(a), rank) for a in np.asarray(axes).reshape(-1)) if axes is not None else []


def _const_only(node: onnx.NodeProto, ctx: ConvertContext) -> list[np.ndarray]:
    """Inputs of an op that only makes sense at compile time (shape arithmetic, masks)."""
    if not all(ctx.is_const(i) for i in node.input if i):
        raise CompileError(f"{node_label(node)}: {node.op_type} on a secret tensor is not supported; only shape/"
                           f"constant subgraphs may use it")
    return [ctx.const(i) if i else None for i in node.input]


# --- constants and shape arithmetic ---------------------------------------------------------------------------

@converter("Constant", since=13)
def constant(ctx: ConvertContext, node: onnx.NodeProto) -> None:
    attr = node.attribute[0]
    if attr.name == "value":
        value = onnx.numpy_helper.to_array(attr.t)
    elif attr.name in ("value_float", "value_int", "value_floats", "value_ints"):
        value = np.asarray(onnx.helper.get_attribute_value(attr),
                           dtype=np.float32 if "float" in attr.name else np.int64)
    else:
        raise CompileError(f"{node_label(node)}: Constant with attribute {attr.name!r} is not supported")
    ctx.set_const(node.output[0], value)


@converter("Shape", since=13)
def shape(ctx: ConvertContext, node: onnx.NodeProto) -> None:
    attrs = onnx_attrs(node)
    dims = np.asarray(ctx.shape(node.input[0]), dtype=np.int64)
    ctx.set_const(node.output[0], dims[attrs.get("start", 0):attrs.get("end", len(dims))])


@converter("ConstantOfShape", since=13)
def constant_of_shape(ctx: ConvertContext, node: onnx.NodeProto) -> None:
    dims = ctx.require_const(node, 0, "shape")
    attrs = {a.name: a for a in node.attribute}
    fill = onnx.numpy_helper.to_array(attrs["value"].t).reshape(-1) if "value" in attrs else np.zeros(1, np.float32)
    ctx.set_const(node.output[0], np.full(tuple(int(d) for d in dims), fill[0], dtype=fill.dtype))


@converter("Range", since=13)
def range_(ctx: ConvertContext, node: onnx.NodeProto) -> None:
    start, limit, delta = _const_only(node, ctx)
    ctx.set_const(node.output[0], np.arange(start, limit, delta).astype(np.asarray(start).dtype))


def _fold_only(fn: Callable[..., np.ndarray]) -> Callable[[ConvertContext, onnx.NodeProto], None]:
    def convert(ctx: ConvertContext, node: onnx.NodeProto) -> None:
        ctx.set_const(node.output[0], fn(*_const_only(node, ctx)), node.input)

    return convert


for _op, _fn in {"Equal": np.equal, "Less": np.less, "Greater": np.greater, "Not": np.logical_not,
                 "Where": np.where, "Floor": np.floor, "Ceil": np.ceil, "Neg": np.negative, "Abs": np.abs}.items():
    converter(_op, since=13)(_fold_only(_fn))


_ONNX_TO_NUMPY = {onnx.TensorProto.FLOAT: np.float32, onnx.TensorProto.DOUBLE: np.float64,
                  onnx.TensorProto.FLOAT16: np.float16, onnx.TensorProto.INT64: np.int64,
                  onnx.TensorProto.INT32: np.int32, onnx.TensorProto.BOOL: np.bool_, onnx.TensorProto.INT8: np.int8,
                  onnx.TensorProto.UINT8: np.uint8}


@converter("Cast", since=13)
def cast(ctx: ConvertContext, node: onnx.NodeProto) -> None:
    to = onnx_attrs(node)["to"]
    if ctx.is_const(node.input[0]):
        if to not in _ONNX_TO_NUMPY:
            raise CompileError(f"{node_label(node)}: Cast to {onnx.TensorProto.DataType.Name(to)} is not supported")
        ctx.set_const(node.output[0], ctx.const(node.input[0]).astype(_ONNX_TO_NUMPY[to]), node.input)
    elif to in (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16):
        ctx.set_alias(node.output[0], node.input[0])  # secrets are fixed point whatever the float width
    else:
        raise CompileError(f"{node_label(node)}: Cast of a secret tensor to a non-float type is not supported")


@converter("Identity", since=13)
def identity(ctx: ConvertContext, node: onnx.NodeProto) -> None:
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
    outer = int(np.prod(in_shape[:axis], dtype=np.int64))
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
    inputs = [i for i in node.input if i and int(np.prod(ctx.shape(i))) > 0]  # torch emits empty shape pieces
    ctx.emit_layout(node, inputs, node.output[0], lambda xs: np.concatenate(xs, axis=axis))


@converter("Gather", since=13)
def gather(ctx: ConvertContext, node: onnx.NodeProto) -> None:
    indices = ctx.require_const(node, 1, "indices").astype(np.int64)
    axis = onnx_attrs(node).get("axis", 0)
    ctx.emit_layout(node, node.input[:1], node.output[0], lambda x: np.take(x[0], indices, axis=axis))


@converter("Expand", since=13)
def expand(ctx: ConvertContext, node: onnx.NodeProto) -> None:
    dims = tuple(int(d) for d in ctx.require_const(node, 1, "shape"))
    ctx.emit_layout(node, node.input[:1], node.output[0],
                    lambda x: np.broadcast_to(x[0], np.broadcast_shapes(x[0].shape, dims)))


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


# --- arithmetic -----------------------------------------------------------------------------------------------

def _broadcast(ctx: ConvertContext, a: str, b: str) -> tuple[int, ...]:
    return np.broadcast_shapes(ctx.shape(a), ctx.shape(b))


def _binary(op: str, fold: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> Callable[..., None]:
    def convert(ctx: ConvertContext, node: onnx.NodeProto) -> None:
        a, b = node.input[:2]
        if ctx.is_const(a) and ctx.is_const(b):
            ctx.set_const(node.output[0], fold(ctx.const(a), ctx.const(b)), node.input)
        elif op == "div" and ctx.is_const(b):
            # x / c is a public/param multiplication: x * (1/c); only a secret divisor needs MPC division
            reciprocal = node.output[0] + "__reciprocal"
            with np.errstate(divide="ignore"):  # a zero divisor is reported by name when the constant is used
                ctx.set_const(reciprocal, 1.0 / ctx.const(b).astype(np.float64), [b])
            ctx.emit("mul", [a, reciprocal], node.output[0], _broadcast(ctx, a, b), node)
        else:
            ctx.emit(op, [a, b], node.output[0], _broadcast(ctx, a, b), node)

    return convert


converter("Add", since=13)(_binary("add", np.add))
converter("Sub", since=13)(_binary("sub", np.subtract))
converter("Mul", since=13)(_binary("mul", np.multiply))
converter("Div", since=13)(_binary("div", lambda a, b: a // b if a.dtype.kind in "iu" else a / b))


@converter("Pow", since=13)
def pow_(ctx: ConvertContext, node: onnx.NodeProto) -> None:
    x, out = node.input[0], node.output[0]
    exponent = ctx.require_const(node, 1, "exponent")
    if ctx.is_const(x):
        ctx.set_const(out, np.power(ctx.const(x), exponent), node.input)
    elif exponent.size == 1 and float(exponent) == 2.0:
        ctx.emit("mul", [x, x], out, ctx.shape(x), node)
    elif exponent.size == 1 and float(exponent) == 0.5:
        ctx.emit("sqrt", [x], out, ctx.shape(x), node)
    elif exponent.size == 1 and float(exponent) == 1.0:
        ctx.set_alias(out, x)
    else:
        raise CompileError(f"{node_label(node)}: Pow of a secret tensor supports exponents 0.5, 1 and 2 only, "
                           f"got {exponent.reshape(-1)[:4].tolist()}")


def _unary(op: str, fold: Callable[[np.ndarray], np.ndarray]) -> Callable[..., None]:
    def convert(ctx: ConvertContext, node: onnx.NodeProto) -> None:
        x = node.input[0]
        if ctx.is_const(x):
            ctx.set_const(node.output[0], fold(ctx.const(x)), node.input)
        else:
            ctx.emit(op, [x], node.output[0], ctx.shape(x), node)

    return convert


converter("Relu", since=13)(_unary("relu", lambda x: np.maximum(x, 0)))
converter("Sqrt", since=13)(_unary("sqrt", np.sqrt))


converter("Erf", since=13)(_unary("erf", np.vectorize(math.erf, otypes=[np.float64])))  # folds tiny constants only


@converter("Gelu", since=20)
def gelu(ctx: ConvertContext, node: onnx.NodeProto) -> None:
    approximate = onnx_attrs(node).get("approximate", "none")
    if approximate != "none":
        raise CompileError(f"{node_label(node)}: Gelu(approximate={approximate!r}) is not supported; export the "
                           f"exact erf GeLU (approximate='none')")
    ctx.emit("gelu", [node.input[0]], node.output[0], ctx.shape(node.input[0]), node)


@converter("Softmax", since=13)
def softmax(ctx: ConvertContext, node: onnx.NodeProto) -> None:
    x = node.input[0]
    rank = len(ctx.shape(x))
    ctx.emit("softmax", [x], node.output[0], ctx.shape(x), node, axis=_axis(onnx_attrs(node).get("axis", -1), rank))


def _reduce(op: str, axes_from_input: bool) -> Callable[..., None]:
    def convert(ctx: ConvertContext, node: onnx.NodeProto) -> None:
        x = node.input[0]
        in_shape = ctx.shape(x)
        attrs = onnx_attrs(node)
        raw_axes = ctx.optional_const(node, 1) if axes_from_input else attrs.get("axes")
        axes = _axes(raw_axes, len(in_shape))
        if not axes and attrs.get("noop_with_empty_axes", 0):
            ctx.set_alias(node.output[0], x)
            return
        axes = axes or list(range(len(in_shape)))
        keepdims = bool(attrs.get("keepdims", 1))
        if ctx.is_const(x):
            fold = np.sum if op == "reduce_sum" else np.mean
            ctx.set_const(node.output[0], fold(ctx.const(x), axis=tuple(axes), keepdims=keepdims), node.input)
            return
        out_shape = [1 if i in axes else d for i, d in enumerate(in_shape) if keepdims or i not in axes]
        ctx.emit(op, [x], node.output[0], out_shape, node, axes=axes, keepdims=keepdims)

    return convert


converter("ReduceSum", since=13)(_reduce("reduce_sum", axes_from_input=True))
converter("ReduceMean", since=13)(_reduce("reduce_mean", axes_from_input=False))
converter("ReduceMean", since=18)(_reduce("reduce_mean", axes_from_input=True))


@converter("LayerNormalization", since=17)
def layer_normalization(ctx: ConvertContext, node: onnx.NodeProto) -> None:
    x = node.input[0]
    in_shape = ctx.shape(x)
    attrs = onnx_attrs(node)
    if _axis(attrs.get("axis", -1), len(in_shape)) != len(in_shape) - 1:
        raise CompileError(f"{node_label(node)}: LayerNormalization over more than the last axis is not supported")
    gamma = node.input[1]
    beta = node.input[2] if len(node.input) > 2 and node.input[2] else None
    if beta is None:
        beta = node.output[0] + "__zero_bias"
        ctx.set_const(beta, np.zeros(in_shape[-1], np.float32), [gamma])
    if len(node.output) > 1 and any(node.output[1:]):
        raise CompileError(f"{node_label(node)}: the Mean/InvStdDev outputs of LayerNormalization are not supported")
    ctx.emit("layernorm", [x, gamma, beta], node.output[0], in_shape, node, eps=float(attrs.get("epsilon", 1e-5)))


# --- products -------------------------------------------------------------------------------------------------

@converter("MatMul", since=13)
def matmul(ctx: ConvertContext, node: onnx.NodeProto) -> None:
    a, b = node.input
    if ctx.is_const(a) and ctx.is_const(b):
        ctx.set_const(node.output[0], np.matmul(ctx.const(a), ctx.const(b)), node.input)
        return
    shape_a, shape_b = ctx.shape(a), ctx.shape(b)
    if len(shape_a) < 2 or len(shape_b) < 2:
        raise CompileError(f"{node_label(node)}: MatMul with a 1-D operand is not supported")
    out = (*np.broadcast_shapes(shape_a[:-2], shape_b[:-2]), shape_a[-2], shape_b[-1])
    ctx.emit("matmul", [a, b], node.output[0], out, node)


@converter("Gemm", since=13)
def gemm(ctx: ConvertContext, node: onnx.NodeProto) -> None:
    attrs = onnx_attrs(node)
    a = node.input[0]
    if attrs.get("transA", 0):
        raise CompileError(f"{node_label(node)}: Gemm with transA=1 is not supported")
    weight = ctx.require_const(node, 1, "B (the weight)").astype(np.float64)
    weight = (weight.T if attrs.get("transB", 0) else weight) * attrs.get("alpha", 1.0)
    out = node.output[0]
    ctx.set_const(out + "__weight", weight, node.input[1:2])
    product = out + "__matmul" if len(node.input) > 2 and node.input[2] else out
    ctx.emit("matmul", [a, out + "__weight"], product, (ctx.shape(a)[0], weight.shape[1]), node)
    if product != out:
        bias = ctx.require_const(node, 2, "C (the bias)").astype(np.float64) * attrs.get("beta", 1.0)
        ctx.set_const(out + "__bias", bias, node.input[2:3])
        ctx.emit("add", [product, out + "__bias"], out, (ctx.shape(a)[0], weight.shape[1]), node)


@converter("Conv", since=13)
def conv(ctx: ConvertContext, node: onnx.NodeProto) -> None:
    """Patch embedding only (kernel == stride, no padding): im2col layout + linear, patch-major output."""
    attrs = onnx_attrs(node)
    x = node.input[0]
    weight = ctx.require_const(node, 1, "W (the kernel)")
    batch, channels, height, width = ctx.shape(x)
    out_ch, in_ch, kh, kw = weight.shape
    kernel = list(attrs.get("kernel_shape", [kh, kw]))
    ok = (list(attrs.get("strides", [1, 1])) == kernel and not any(attrs.get("pads", [0] * 4))
          and attrs.get("group", 1) == 1 and list(attrs.get("dilations", [1, 1])) == [1, 1]
          and attrs.get("auto_pad", "NOTSET") in ("NOTSET", "VALID") and height % kh == 0 and width % kw == 0)
    if not ok or in_ch != channels:
        raise CompileError(f"{node_label(node)}: only a patch-embedding Conv (kernel_shape == strides, no padding, "
                           f"group 1, image size divisible by the kernel) is supported")
    ph, pw = height // kh, width // kw
    out = node.output[0]
    patches, tokens = out + "__patches", out + "__tokens"
    ctx.emit_layout(node, [x], patches, lambda i: i[0].reshape(batch, channels, ph, kh, pw, kw)
                    .transpose(0, 2, 4, 1, 3, 5).reshape(batch, ph * pw, channels * kh * kw))
    ctx.set_const(out + "__weight", weight.reshape(out_ch, -1).T, node.input[1:2])
    inputs = [patches, out + "__weight"]
    if len(node.input) > 2 and node.input[2]:
        inputs.append(node.input[2])
    ctx.emit("linear", inputs, tokens, (batch, ph * pw, out_ch), node)
    ctx.emit_layout(node, [tokens], out, lambda i: i[0].reshape(batch, ph, pw, out_ch).transpose(0, 3, 1, 2))
