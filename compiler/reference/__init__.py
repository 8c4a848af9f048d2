"""Numpy fixed-point executor of a lowered program (same approximations, precision and truncations as MPC)."""
from compiler.reference.executor import ExecResult, NodeRecord, execute, exact_int_matmul

__all__ = ["ExecResult", "NodeRecord", "execute", "exact_int_matmul"]
