"""ONNX file -> generic IR: read and check the model, fix the batch, run the converters in graph order."""
from __future__ import annotations

from pathlib import Path

import onnx

from compiler.errors import CompileError, UserError
from compiler.frontend import ops  # noqa: F401  (registers the converters)
from compiler.frontend.context import ConvertContext
from compiler.frontend.registry import find_converter
from compiler.ir import Graph, Node, Value

MIN_OPSET, MAX_OPSET = 13, 20


def load_onnx(path: str | Path, batch: int = 1) -> Graph:
    """Convert an ONNX ViT into generic IR with every dimension static (the batch set to ``batch``)."""
    path = Path(path)
    if batch < 1:
        raise UserError(f"--batch must be at least 1, got {batch}")
    model = _read(path)
    opset = _opset(model, path)
    input_shapes = _resolve_inputs(model, batch)
    try:
        onnx.checker.check_model(model)
        model = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CompileError(f"ONNX file {str(path)!r} fails the ONNX checker: {first_line}") from None

    graph = Graph(metadata={p.key: p.value for p in model.metadata_props})
    ctx = ConvertContext(graph, opset)
    for init in model.graph.initializer:
        ctx.set_const(init.name, onnx.numpy_helper.to_array(init))
        ctx.from_initializer.add(init.name)
    for name, shape in input_shapes.items():
        graph.add_value(Value(name, shape))
        graph.add_node(Node("input", [], [name], {"owner": 1}, name=name))
        graph.inputs.append(name)
    for node in model.graph.node:
        if node.domain not in ("", "ai.onnx"):
            raise CompileError(f"ONNX node {node.name or node.output[0]!r}: op {node.domain}.{node.op_type} is "
                               f"outside the default ONNX domain and not supported")
        find_converter(node, opset)(ctx, node)
    for output in model.graph.output:
        name = ctx.resolve(output.name)
        if ctx.is_const(name):
            raise CompileError(f"graph output {output.name!r} does not depend on the input image")
        graph.add_node(Node("output", [name], [], name=output.name))
        graph.outputs.append(name)
    return graph


def _read(path: Path) -> onnx.ModelProto:
    if not path.is_file():
        raise UserError(f"ONNX file {str(path)!r} not found; pass the path of an exported .onnx model")
    try:
        return onnx.load(str(path))
    except Exception as exc:  # protobuf raises DecodeError, RuntimeWarning-derived or ValueError by version
        raise UserError(f"ONNX file {str(path)!r} cannot be read ({type(exc).__name__}): the file is truncated or "
                        f"not an ONNX model; re-export it") from None


def _opset(model: onnx.ModelProto, path: Path) -> int:
    versions = [op.version for op in model.opset_import if op.domain in ("", "ai.onnx")]
    if not versions:
        raise UserError(f"ONNX file {str(path)!r} imports no default-domain opset; it is not an ONNX model")
    opset = versions[0]
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise CompileError(f"ONNX file {str(path)!r} uses opset {opset}; supported opsets are {MIN_OPSET}-"
                           f"{MAX_OPSET}: re-export with opset_version in that range")
    return opset


def _resolve_inputs(model: onnx.ModelProto, batch: int) -> dict[str, tuple[int, ...]]:
    """Set the batch dimension of every graph input (in place) and return the static input shapes."""
    initializers = {init.name for init in model.graph.initializer}
    shapes: dict[str, tuple[int, ...]] = {}
    for tensor in model.graph.input:
        if tensor.name in initializers:
            continue
        dims = tensor.type.tensor_type.shape.dim
        for axis, dim in enumerate(dims):
            static = dim.HasField("dim_value") and dim.dim_value > 0
            if axis == 0 and not static:
                dim.Clear()
                dim.dim_value = batch
            elif axis == 0 and dim.dim_value != batch:
                raise CompileError(f"input {tensor.name!r} has a fixed batch of {dim.dim_value} but --batch {batch} "
                                   f"was asked: use --batch {dim.dim_value} or export with a dynamic batch axis")
            elif not static:
                raise CompileError(f"input {tensor.name!r}: dimension {axis} ({dim.dim_param or '?'}) is dynamic; "
                                   f"only the batch (dimension 0, set with --batch) may be: export with a fixed "
                                   f"image size")
        shapes[tensor.name] = tuple(int(d.dim_value) for d in dims)
    if not shapes:
        raise CompileError("the ONNX graph has no input tensor")
    return shapes
