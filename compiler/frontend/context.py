"""State shared by the converters while one ONNX graph is turned into IR.

Every ONNX tensor is either *known at compile time* (``consts``: initializers, Constant nodes and everything folded
from them — shapes, the attention scale, the expanded class token) or a *secret* IR value computed under MPC.
A constant becomes an IR value only when a secret computation consumes it: ``param`` when it derives from a
non-scalar initializer (a model weight, private to party 0), ``public`` otherwise (eps, scales).

Folding: a node whose inputs are all constants is not converted but queued (:meth:`ConvertContext.fold`); the queue
is evaluated by ``onnx.reference.ReferenceEvaluator`` as one function, at the model's opset, when a converter first
reads one of its outputs: one evaluation per chain of shape arithmetic (Shape -> Gather -> Unsqueeze -> Concat ->
Reshape) instead of one per node, whose set-up dominates. Measured (CPU time of the whole load, best of 7) on
TorchScript exports of timm models: Swin (527 nodes) 24 evaluations and 19 ms against 180 and 22 ms node by node; a
12-block ViT (979 nodes) 26 and 34 ms against 108 and 39 ms.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
import onnx
from onnx.reference import ReferenceEvaluator

from compiler.errors import CompileError
from compiler.ir import Graph, Node, Value


def node_label(node: onnx.NodeProto) -> str:
    return f"ONNX node {node.name or node.output[0]!r} ({node.op_type})"


def reads(node: onnx.NodeProto) -> list[str]:
    """Every tensor ``node`` reads: its inputs and what its subgraphs (If/Loop/Scan bodies) take from outer scopes."""
    names = [i for i in node.input if i]
    for attr in node.attribute:
        for body in ([attr.g] if attr.type == onnx.AttributeProto.GRAPH else attr.graphs):
            local = {o for n in body.node for o in n.output} | {v.name for v in body.input} \
                | {t.name for t in body.initializer}
            names += [name for inner in body.node for name in reads(inner) if name not in local]
    return list(dict.fromkeys(names))


def onnx_attrs(node: onnx.NodeProto) -> dict[str, Any]:
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    return {k: (v.decode() if isinstance(v, bytes) else v) for k, v in attrs.items()}


class ConvertContext:
    def __init__(self, graph: Graph, opset: int) -> None:
        self.graph = graph
        self.opset = opset
        self.consts: dict[str, np.ndarray] = {}
        self.from_initializer: set[str] = set()
        self.alias: dict[str, str] = {}
        self.pending: list[onnx.NodeProto] = []  # constant nodes queued for the evaluator, in graph order
        self.pending_outputs: set[str] = set()

    # --- looking tensors up -------------------------------------------------------------------------------
    def resolve(self, name: str) -> str:
        return self.alias.get(name, name)

    def is_const(self, name: str) -> bool:
        resolved = self.resolve(name)
        return resolved in self.consts or resolved in self.pending_outputs

    def const(self, name: str) -> np.ndarray | None:
        resolved = self.resolve(name)
        if resolved in self.pending_outputs:
            self.flush()
        return self.consts.get(resolved)

    def require_const(self, node: onnx.NodeProto, index: int, what: str) -> np.ndarray:
        if index >= len(node.input) or not node.input[index]:
            raise CompileError(f"{node_label(node)}: missing input {index} ({what})")
        value = self.const(node.input[index])
        if value is None:
            raise CompileError(f"{node_label(node)}: {what} (input {node.input[index]!r}) must be a compile-time "
                               f"constant, not computed from the secret input")
        return value

    def optional_const(self, node: onnx.NodeProto, index: int) -> np.ndarray | None:
        if index >= len(node.input) or not node.input[index]:
            return None
        return self.require_const(node, index, f"input {index}")

    def shape(self, name: str) -> tuple[int, ...]:
        resolved = self.resolve(name)
        if self.is_const(resolved):
            return tuple(self.const(resolved).shape)
        if resolved not in self.graph.values:
            raise CompileError(f"ONNX tensor {name!r} is used before it is produced (graph not topologically sorted)")
        return self.graph.values[resolved].shape

    # --- folding ------------------------------------------------------------------------------------------
    def fold(self, node: onnx.NodeProto) -> None:
        """Queue ``node`` (every input a constant) for the evaluator; its outputs are constants from now on.
        A Constant holding a tensor is a literal, read at once (TorchScript writes one before nearly every Reshape:
        an evaluation each would cost more than the rest of the load)."""
        if node.op_type == "Constant" and [a.name for a in node.attribute] == ["value"]:
            self.consts[node.output[0]] = onnx.numpy_helper.to_array(node.attribute[0].t)
            return
        self.pending.append(node)
        outputs = [o for o in node.output if o]
        self.pending_outputs.update(outputs)
        if any(self.resolve(i) in self.from_initializer for i in reads(node)):
            self.from_initializer.update(outputs)

    def flush(self) -> None:
        """Evaluate the queued constant nodes at once (see the module doc)."""
        if not self.pending:
            return
        nodes, self.pending = self.pending, []
        produced = {o for n in nodes for o in n.output}
        needed = list(dict.fromkeys(i for n in nodes for i in reads(n) if i not in produced))
        outputs = [o for n in nodes for o in n.output if o]
        self.pending_outputs.difference_update(outputs)
        try:
            results = evaluate(nodes, needed, outputs, {i: self.consts[i] for i in needed}, self.opset)
        except Exception:  # the evaluator raises whatever numpy or its kernels raise: find the node and name it
            self._fold_one_by_one(nodes)
        else:
            self.consts.update((name, np.asarray(value)) for name, value in zip(outputs, results))

    def _fold_one_by_one(self, nodes: Sequence[onnx.NodeProto]) -> None:
        for node in nodes:
            inputs = reads(node)
            outputs = [o for o in node.output if o]
            try:
                results = evaluate([node], inputs, outputs, {i: self.consts[i] for i in inputs}, self.opset)
            except Exception as exc:
                message = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                raise CompileError(f"{node_label(node)}: evaluating it on its compile-time constant inputs failed "
                                   f"({type(exc).__name__}: {message}); the model is inconsistent here: re-export "
                                   f"it") from None
            self.consts.update((name, np.asarray(value)) for name, value in zip(outputs, results))

    # --- producing tensors --------------------------------------------------------------------------------
    def set_const(self, name: str, array: np.ndarray, sources: Sequence[str] = ()) -> None:
        self.consts[name] = np.asarray(array)
        if any(self.resolve(s) in self.from_initializer for s in sources):
            self.from_initializer.add(name)

    def set_alias(self, name: str, target: str) -> None:
        self.alias[name] = self.resolve(target)

    def value(self, name: str) -> str:
        """The IR value name for an ONNX tensor, materialising a constant as a param/public value on first use."""
        resolved = self.resolve(name)
        if self.is_const(resolved) and resolved not in self.graph.values:
            data = self.const(resolved)
            if data.dtype.kind == "f":
                data = data.astype(np.float64)
                bad = int(np.count_nonzero(~np.isfinite(data)))
                if bad:  # would be secret-shared as garbage: encoding NaN/inf to fixed point is undefined
                    raise CompileError(f"ONNX tensor {resolved!r} has {bad} NaN/infinite value(s) and is used by "
                                       f"the secret computation; fixed point has no infinities: an attention mask "
                                       f"of -inf (SDPA's is_causal=True exports one) needs a finite value instead (e.g. -100, as timm's Swin uses), "
                                       f"other weights a fix (or a division by zero) and a re-export")
            # integer/boolean constants are structure (masks, like the index maps layouts make public anyway)
            weight = data.dtype.kind == "f" and resolved in self.from_initializer and data.size > 1
            role = "param" if weight else "public"
            self.graph.add_value(Value(resolved, data.shape, role, data))
        return resolved

    def emit(self, op: str, inputs: Sequence[str], output: str, shape: Sequence[int], node: onnx.NodeProto,
             **attrs: Any) -> str:
        self.graph.add_value(Value(output, tuple(shape)))
        self.graph.add_node(Node(op, [self.value(i) for i in inputs], [output], attrs,
                                 name=node.name or node.output[0]))
        return output

    def emit_layout(self, node: onnx.NodeProto, inputs: Sequence[str], output: str,
                    build: Callable[[list[np.ndarray]], np.ndarray]) -> None:
        """A data-movement op: ``build`` applies the op to index arrays of the inputs (numbered across the
        concatenation of their flattened contents); it becomes a ``layout`` node, or a constant when every input is
        one (converters reshape their constant operands this way too, e.g. a 1-D MatMul operand)."""
        shapes = [self.shape(i) for i in inputs]
        sizes = [int(np.prod(s, dtype=np.int64)) for s in shapes]
        offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        index = np.asarray(build([np.arange(offsets[i], offsets[i + 1]).reshape(s) for i, s in enumerate(shapes)]))
        if all(self.is_const(i) for i in inputs):
            flat = np.concatenate([self.const(i).reshape(-1) for i in inputs]) if inputs else np.zeros(0)
            self.set_const(output, flat[index], inputs)
        else:
            self.emit("layout", inputs, output, index.shape, node, index=index.astype(np.int64))


def evaluate(nodes: Sequence[onnx.NodeProto], inputs: list[str], outputs: list[str], feeds: dict[str, np.ndarray],
             opset: int) -> list[np.ndarray]:
    """Run ``nodes`` with onnx's reference evaluator as one function (a function keeps the model's opset; a bare
    NodeProto would run at the newest one, where e.g. ReduceMean reads its axes from an input)."""
    function = onnx.helper.make_function("mpcvit.fold", "fold", inputs, outputs, list(nodes),
                                         [onnx.helper.make_opsetid("", opset)])
    return ReferenceEvaluator(function).run(None, feeds, attributes={})
