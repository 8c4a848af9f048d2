"""ONNX -> IR -> passes -> per-protocol lowering -> MP-SPDZ program (never imports torch)."""
__version__ = "0.1.0"
