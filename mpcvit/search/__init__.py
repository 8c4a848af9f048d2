"""MPC-aware differentiable search over per-head attention kinds (and MLP kinds) and its binarisation."""
from mpcvit.search.binarize import binarize, check_fraction, contiguous_kinds, gate_scores, head_scores, top_fraction
from mpcvit.search.cost import (CostTable, check_table_shape, clamp_search_parameters, compiler_cost_table,
                                expected_cost, load_cost_table, search_parameters)

__all__ = ["CostTable", "load_cost_table", "compiler_cost_table", "check_table_shape", "expected_cost", "clamp_search_parameters", "search_parameters",
           "binarize", "check_fraction", "contiguous_kinds", "head_scores", "gate_scores", "top_fraction"]
