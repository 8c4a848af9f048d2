"""Cost model: primitive formulas per protocol (fitted to MP-SPDZ measurements), per-node reports, latency,
and the latency tables of the MPC-aware search."""
from compiler.cost.network import NETWORKS, Network, get_network
from compiler.cost.primitives import Cost, CostProfile, Step, step_cost, steps_cost
from compiler.cost.report import CostReport, CostRow, estimate, estimate_steps
from compiler.cost.table import cost_table, head_steps, mlp_steps

__all__ = ["Cost", "CostProfile", "CostReport", "CostRow", "NETWORKS", "Network", "Step", "cost_table",
           "estimate", "estimate_steps", "get_network", "head_steps", "mlp_steps", "step_cost", "steps_cost"]
