"""Converter registry keyed by ONNX op type and opset (like onnx2torch): ``@converter("Softmax", since=13)``.

A converter turns one ONNX node with a secret input into IR nodes through a :class:`ConvertContext`; nodes on
constants only are folded by the loader and need none.
Several converters may exist for one op type; the one with the largest ``since`` not above the model's opset wins.
"""
from __future__ import annotations

from typing import Callable

import onnx

from compiler.errors import CompileError
from compiler.frontend.context import ConvertContext

Converter = Callable[[ConvertContext, onnx.NodeProto], None]

REGISTRY: dict[str, list[tuple[int, Converter]]] = {}


def converter(op_type: str, since: int = 1) -> Callable[[Converter], Converter]:
    def register(fn: Converter) -> Converter:
        REGISTRY.setdefault(op_type, []).append((since, fn))
        REGISTRY[op_type].sort(key=lambda entry: entry[0])
        return fn

    return register


def supported_ops() -> list[str]:
    return sorted(REGISTRY)


def find_converter(node: onnx.NodeProto, opset: int) -> Converter:
    candidates = [fn for since, fn in REGISTRY.get(node.op_type, []) if since <= opset]
    if not candidates:
        raise CompileError(
            f"ONNX node {node.name or node.output[0]!r}: op {node.op_type} (opset {opset}) is not supported; "
            f"supported ops: {', '.join(supported_ops())}; any other op folds only when all its inputs are "
            f"compile-time constants, and this node's depend on the secret input"
            + ({"ArgMax": "; to reveal only the class, export the logits and compile with --reveal argmax",
                "LogSoftmax": "; a classifier's final log_softmax keeps the logits' order: export the logits without "
                              "it (or end in Softmax)"}.get(node.op_type, "")))
    return candidates[-1]
