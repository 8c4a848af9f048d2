"""Per-node cost reports of a lowered program: rows, totals, a printable table and JSON."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from compiler.cost.network import NETWORKS
from compiler.cost.primitives import Cost, Step, normalise_protocol, steps_cost


@dataclass(frozen=True)
class CostRow:
    name: str
    op: str
    cost: Cost

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "op": self.op, **self.cost.as_dict(),
                **{f"latency_{net}_s": self.cost.latency(net) for net in NETWORKS}}


@dataclass
class CostReport:
    protocol: str
    rows: list[CostRow] = field(default_factory=list)

    @property
    def total(self) -> Cost:
        return sum((r.cost for r in self.rows), Cost())

    def latency(self, network: str) -> float:
        return self.total.latency(network)

    def by_op(self) -> dict[str, Cost]:
        out: dict[str, Cost] = {}
        for row in self.rows:
            out[row.op] = out.get(row.op, Cost()) + row.cost
        return out

    def table(self) -> str:
        head = f"{'node':<32} {'op':<12} {'MB p0':>9} {'MB all':>9} {'rounds':>8} {'on MB':>9} {'LAN s':>9} {'WAN s':>9}"
        lines = [f"cost estimate ({self.protocol})", head, "-" * len(head)]
        for row in self.rows + [CostRow("TOTAL", "", self.total)]:
            c = row.cost
            lines.append(f"{row.name[:32]:<32} {row.op[:12]:<12} {c.bytes_p0 / 1e6:>9.3f} {c.bytes_all / 1e6:>9.3f} "
                         f"{c.rounds:>8.0f} {c.online_bytes_all / 1e6:>9.3f} {c.latency('lan'):>9.4f} "
                         f"{c.latency('wan'):>9.3f}")
        return "\n".join(lines)

    def to_json(self) -> str:
        return json.dumps({"protocol": self.protocol, "nodes": [r.as_dict() for r in self.rows],
                           "total": CostRow("TOTAL", "", self.total).as_dict()}, indent=1)


def estimate_steps(named_plans: list[tuple[str, str, list[Step]]], profile: Any) -> CostReport:
    """Report of ``(node name, op, plan steps)`` triples priced under ``profile``."""
    protocol = normalise_protocol(getattr(profile, "protocol", profile))
    return CostReport(protocol, [CostRow(name, op, steps_cost(steps, profile)) for name, op, steps in named_plans])


def estimate(program: Any, shared_weights: bool = False) -> CostReport:
    """Report of a lowered program (``program.graph``, ``program.profile``): each node's plan priced.

    Plans come from ``program.plans`` (node name -> steps) when lowering stored them, else from
    ``compiler.lowering.plan(node, profile)``. ``shared_weights``: an execution that reads its shares of the weights
    (``mpcvit run --weights shared``): party 0's weight input (its bytes and its round) is not part of it.
    """
    stored = getattr(program, "plans", None)
    if stored is None:
        from compiler.lowering import plan  # lowering imports the cost model: import when called

        stored = {node.name: plan(node, program.profile) for node in program.graph.nodes}
    named = [(node.name, node.op, [s for s in stored.get(node.name, []) if not (shared_weights and s.party == 0)])
             for node in program.graph.nodes]
    return estimate_steps(named, program.profile)
