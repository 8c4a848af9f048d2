"""MPC cost tables (DESIGN.md format) and the differentiable expected cost of a searchable model.

Without a table the regulariser is the paper's L1 on α (mean α). With a table the expected cost is
Σ_heads Σ_kinds w·c_kind (+ Σ_layers mean-gate mix of the MLP costs when MLPs are searched), normalised by the cost
of the most expensive choice everywhere, so λ has the same scale either way.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from compiler.errors import UserError
from mpcvit.config import HEAD_KINDS, MLP_KINDS, read_json_file
from mpcvit.models.attention import HeteroAttention
from mpcvit.models.mlp import KindMlp


@dataclass(frozen=True)
class CostTable:
    attention: dict[str, float]  # latency of ONE head of a kind in one layer
    mlp: dict[str, float]  # latency of one layer's MLP of a kind
    protocol: str = "?"
    network: str = "?"
    model: dict[str, Any] | None = None

    def describe(self) -> str:
        heads = ", ".join(f"{k}={v:.4g}" for k, v in self.attention.items())
        return f"cost table {self.protocol}/{self.network}: {heads}"


def load_cost_table(source: dict[str, Any] | str | Path | None) -> CostTable | None:
    """A cost table from a dict or a JSON file (``None`` stays ``None``: the L1 fallback)."""
    if source is None:
        return None
    name = "cost table"
    if not isinstance(source, dict):
        name = f"cost table {source}"
        source = read_json_file(source, "cost table",
                                "write one with compiler.cost.cost_table(...) or omit --cost-table")
    if not isinstance(source, dict) or not isinstance(source.get("model", {}), dict):
        raise UserError(f"{name}: expected a JSON object with 'attention', 'mlp' and optional 'model' objects")
    for section, kinds in (("attention", ("relu_softmax", "scaling")), ("mlp", ())):
        entries = source.get(section)
        if not isinstance(entries, dict) or any(k not in entries for k in kinds):
            raise UserError(f"{name}: needs a '{section}' object with costs for {', '.join(kinds) or 'the MLP kinds'}")
        if any(not isinstance(v, (int, float)) or v < 0 for v in entries.values()):
            raise UserError(f"{name}: '{section}' costs must be non-negative numbers")
    return CostTable({k: float(v) for k, v in source["attention"].items() if k in HEAD_KINDS},
                     {k: float(v) for k, v in source["mlp"].items() if k in MLP_KINDS},
                     source.get("protocol", "?"), source.get("network", "?"), source.get("model"))


def check_table_shape(table: CostTable, cfg: Any) -> None:
    """A table priced for another model shape would steer the search with wrong costs."""
    if not table.model:
        return
    ours = {"depth": cfg.depth, "heads": cfg.heads, "dim": cfg.dim, "tokens": cfg.tokens}
    diff = [f"{k}={table.model[k]} (model: {v})" for k, v in ours.items() if k in table.model and table.model[k] != v]
    if diff:
        raise UserError(f"cost table is for another model shape ({', '.join(diff)}); regenerate it for {cfg.name} "
                        "or use --cost-protocol")


def compiler_cost_table(cfg: Any, protocol: str, network: str = "lan") -> CostTable:
    """The compiler's cost model priced for ``cfg``'s shape (``compiler.cost.cost_table``)."""
    from compiler.cost import cost_table

    return load_cost_table(cost_table(cfg.depth, cfg.heads, cfg.dim, cfg.tokens, cfg.mlp_ratio, protocol, network))


def searched_modules(model: nn.Module) -> tuple[list[HeteroAttention], list[KindMlp]]:
    attns = [m for m in model.modules() if isinstance(m, HeteroAttention) and m.search]
    mlps = [m for m in model.modules() if isinstance(m, KindMlp) and m.gate is not None]
    return attns, mlps


def expected_cost(model: nn.Module, table: CostTable | None) -> torch.Tensor:
    """Normalised expected MPC cost in [0, 1] of the current search parameters (differentiable)."""
    attns, mlps = searched_modules(model)
    if not attns and not mlps:
        raise UserError("the model has no search parameters; build it with search=True to run a search")
    if table is None:  # the paper's L1 on α (ReLU-softmax share), plus the MLP gates
        terms = [a.mixing_weights()[:, list(a.search_kinds).index("relu_softmax")] for a in attns]
        terms += [m.gate.mean().view(1) for m in mlps]
        return torch.cat([t.flatten() for t in terms]).mean()
    total = torch.zeros(())
    worst = 0.0
    for attn in attns:
        missing = [k for k in attn.search_kinds if k not in table.attention]
        if missing:
            raise UserError(f"cost table has no attention cost for {', '.join(missing)}; add it or drop softmax "
                            "from the search space")
        costs = torch.tensor([table.attention[k] for k in attn.search_kinds])
        total = total + (attn.mixing_weights() * costs).sum()
        worst += float(costs.max()) * attn.heads
    for mlp in mlps:
        if "gelu" not in table.mlp or "linear" not in table.mlp:
            raise UserError("cost table has no MLP cost for gelu and linear; add them to search MLPs")
        g = mlp.gate.mean()
        total = total + g * table.mlp["gelu"] + (1 - g) * table.mlp["linear"]
        worst += max(table.mlp["gelu"], table.mlp["linear"])
    return total / max(worst, 1e-12)


def clamp_search_parameters(model: nn.Module) -> None:
    """Project α (2-way space) and the MLP gates back onto [0, 1] after an optimiser step."""
    attns, mlps = searched_modules(model)
    with torch.no_grad():
        for attn in attns:
            if attn.alpha.dim() == 1:
                attn.alpha.clamp_(0.0, 1.0)
        for mlp in mlps:
            mlp.gate.clamp_(0.0, 1.0)


def search_parameters(model: nn.Module) -> list[nn.Parameter]:
    attns, mlps = searched_modules(model)
    return [a.alpha for a in attns] + [m.gate for m in mlps]
