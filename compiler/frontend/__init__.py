"""ONNX -> generic IR. Entry point: :func:`load_onnx`; one converter per op in :mod:`compiler.frontend.ops`."""
from compiler.frontend.loader import load_onnx, require_one_input
from compiler.frontend.registry import converter, supported_ops

__all__ = ["load_onnx", "require_one_input", "converter", "supported_ops"]
