"""ONNX export + onnxruntime check + metadata."""
from mpcvit.export.onnx_export import OPSET, TOLERANCE, ExportResult, export_metadata, export_onnx, read_metadata

__all__ = ["export_onnx", "export_metadata", "read_metadata", "ExportResult", "OPSET", "TOLERANCE"]
