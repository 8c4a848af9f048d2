"""ONNX file -> generic IR: read and check the model, fix the batch, fold constant nodes (onnx's reference evaluator,
see :mod:`compiler.frontend.context`) and run the converters on the others, in graph order.

Memory: external weights are read once, tensor by tensor, straight from their file into numpy. The ONNX checker
runs on the file and strict shape inference on the graph with its weights left out: either, given the model in
memory, serialises every weight (ViT-B/16: two 344 MB copies and 8 s; protobuf refuses beyond 2 GB).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx.external_data_helper import ExternalDataInfo, load_external_data_for_tensor, uses_external_data

from compiler.errors import CompileError, UserError
from compiler.frontend import ops  # noqa: F401  (registers the converters)
from compiler.frontend.context import ConvertContext, node_label, reads
from compiler.frontend.registry import find_converter
from compiler.ir import Graph, Node, Value

MIN_OPSET, MAX_OPSET = 13, 20
FLOAT_INPUTS = (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16)


def load_onnx(path: str | Path, batch: int = 1) -> Graph:
    """Convert an ONNX ViT into generic IR with every dimension static (the batch set to ``batch``)."""
    path = Path(path)
    if batch < 1:
        raise UserError(f"--batch must be at least 1, got {batch}")
    model = _read(path)
    opset = _opset(model, path)
    input_shapes = _resolve_inputs(model, batch)
    try:
        onnx.checker.check_model(str(path))
        onnx.shape_inference.infer_shapes(_without_weights(model), strict_mode=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError,
            UnicodeDecodeError) as exc:  # a corrupted name or string attribute fails to decode in the checker
        # the whole message on one line: the checker names the node on its second line
        message = " ".join(line.strip() for line in str(exc).splitlines() if line.strip()) or type(exc).__name__
        raise CompileError(f"ONNX file {str(path)!r} fails the ONNX checker: {message}") from None

    graph = Graph(metadata={p.key: p.value for p in model.metadata_props})
    ctx = ConvertContext(graph, opset)
    for init in model.graph.initializer:
        try:
            array = _initializer(init, path)
        except (KeyError, ValueError) as exc:  # an unknown data type or a size that disagrees with the dims
            raise CompileError(f"ONNX file {str(path)!r}: initializer {init.name!r} cannot be read "
                               f"({type(exc).__name__}: {exc}); re-export the model") from None
        ctx.set_const(init.name, array)
        if array.size > 1:  # a weight; scalars (eps, scales, shape pieces) are hyperparameters: public
            ctx.from_initializer.add(init.name)
    for name, shape in input_shapes.items():
        graph.add_value(Value(name, shape))
        graph.add_node(Node("input", [], [name], {"owner": 1}, name=name))
        graph.inputs.append(name)
    for node in model.graph.node:
        if node.domain not in ("", "ai.onnx"):
            raise CompileError(f"ONNX node {node.name or node.output[0]!r}: op {node.domain}.{node.op_type} is "
                               f"outside the default ONNX domain and not supported")
        if all(ctx.is_const(i) for i in reads(node)):  # Constant, shape arithmetic, masks, folded weights
            ctx.fold(node)
            continue
        convert = find_converter(node, opset)
        try:
            convert(ctx, node)
        except ValueError as exc:  # numpy refuses what shape inference let through, e.g. Reshape 4 values to 1x5
            raise CompileError(f"{node_label(node)}: {str(exc).strip().splitlines()[0]}; the model is inconsistent "
                               f"here: re-export it") from None
    for output in model.graph.output:
        name = ctx.resolve(output.name)
        if ctx.is_const(name):
            raise CompileError(f"graph output {output.name!r} does not depend on the input image")
        graph.add_node(Node("output", [name], [], name=output.name))
        graph.outputs.append(name)
    return graph


def require_one_input(graph: Graph, path: str | Path) -> Graph:
    """``graph`` if it has one input, the client's image (what compiling needs; the float IR takes any number).
    Raises CompileError naming the inputs otherwise."""
    if len(graph.inputs) != 1:
        names = ", ".join(map(repr, graph.inputs))
        raise CompileError(f"ONNX file {str(path)!r} has {len(graph.inputs)} inputs ({names}); only one image input "
                           f"(the client's) is supported: fold the others into the model as constants (initializers) "
                           f"and re-export")
    return graph


def _read(path: Path) -> onnx.ModelProto:
    if path.is_dir():
        raise UserError(f"ONNX file {str(path)!r} is a directory; pass the path of an exported .onnx model")
    if not path.is_file():
        raise UserError(f"ONNX file {str(path)!r} not found; pass the path of an exported .onnx model")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf raises DecodeError, RuntimeWarning-derived or ValueError by version
        raise UserError(f"ONNX file {str(path)!r} cannot be read ({type(exc).__name__}): the file is truncated or "
                        f"not an ONNX model; re-export it") from None
    locations = {entry.value for tensor in model.graph.initializer if uses_external_data(tensor)
                 for entry in tensor.external_data if entry.key == "location"}
    missing = sorted(name for name in locations if not (path.parent / name).is_file())
    if missing:
        raise UserError(f"ONNX file {str(path)!r} keeps its weights in {missing[0]!r}, which is not next to it; "
                        f"copy that file beside the model or re-export it as one file")
    return model


# weight types whose external bytes are the little-endian numpy array itself (others, e.g. packed 4-bit or
# bfloat16, go through onnx's converter)
PLAIN_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16, onnx.TensorProto.INT8,
               onnx.TensorProto.INT16, onnx.TensorProto.INT32, onnx.TensorProto.INT64, onnx.TensorProto.UINT8,
               onnx.TensorProto.BOOL}
SMALL_INITIALIZER = 64  # values: shape inference keeps the data of smaller initializers (shapes, axes, scalars)


def _initializer(tensor: onnx.TensorProto, path: Path) -> np.ndarray:
    """The initializer as numpy: external data read straight from its file (one copy, nothing kept in the proto).
    Raises UserError when the data file is short (truncated or from another export)."""
    if not uses_external_data(tensor):
        return onnx.numpy_helper.to_array(tensor)
    try:
        if tensor.data_type not in PLAIN_TYPES:
            load_external_data_for_tensor(tensor, str(path.parent))
            array = onnx.numpy_helper.to_array(tensor)
            tensor.ClearField("raw_data")
            return array
        info = ExternalDataInfo(tensor)
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type)).newbyteorder("<")
        count = int(np.prod(tensor.dims, dtype=np.int64))
        with open(path.parent / info.location, "rb") as source:
            source.seek(info.offset or 0)
            array = np.fromfile(source, dtype=dtype, count=count)
        if array.size != count:
            raise ValueError(f"external data of {tensor.name!r}: {array.size * dtype.itemsize} bytes, "
                             f"{count * dtype.itemsize} expected")
        return array.reshape(tuple(tensor.dims))
    except (OSError, ValueError) as exc:  # e.g. "External data length (2304) exceeds available data"
        raise UserError(f"ONNX file {str(path)!r}: its external weights cannot be read ({exc}); the data file "
                        f"is truncated or not the one exported with it: re-export the model") from None


def _without_weights(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` for shape inference: each initializer of more than SMALL_INITIALIZER values becomes a graph input
    of its type and shape (all shape inference needs of a weight), so no weight bytes are copied or serialised."""
    graph = model.graph
    declared = {i.name for i in graph.input}
    big = [t for t in graph.initializer if int(np.prod(t.dims, dtype=np.int64)) > SMALL_INITIALIZER]
    names = {t.name for t in big}
    inputs = list(graph.input) + [onnx.helper.make_tensor_value_info(t.name, t.data_type, list(t.dims))
                                  for t in big if t.name not in declared]
    skeleton = onnx.helper.make_graph(graph.node, graph.name, inputs, graph.output,
                                      [t for t in graph.initializer if t.name not in names],
                                      value_info=graph.value_info, sparse_initializer=graph.sparse_initializer)
    return onnx.helper.make_model(skeleton, opset_imports=model.opset_import, ir_version=model.ir_version,
                                  functions=model.functions)


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
        elem_type = tensor.type.tensor_type.elem_type
        if elem_type not in FLOAT_INPUTS:
            raise CompileError(f"input {tensor.name!r} has type {onnx.TensorProto.DataType.Name(elem_type)}; the "
                               f"image input must be FLOAT, DOUBLE or FLOAT16")
        if not tensor.type.tensor_type.HasField("shape"):
            raise CompileError(f"input {tensor.name!r} has no shape (not even a rank); export the model with a fixed "
                               f"image shape (only the batch may be dynamic)")
        dims = tensor.type.tensor_type.shape.dim
        if not dims:
            raise CompileError(f"input {tensor.name!r} is a scalar; the image input needs a batch dimension first")
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
