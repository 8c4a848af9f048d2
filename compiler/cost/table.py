"""Latency tables for the MPC-aware search: one attention head of each kind, one MLP of each kind."""
from __future__ import annotations

from typing import Any

from compiler.cost.primitives import Step, normalise_protocol, steps_cost

DEFAULT_APPROX = {"exp": "limit", "reciprocal": "newton", "gelu": "poly", "rsqrt": "newton"}


def search_profile(protocol: str) -> Any:
    """The lowering's default profile of ``protocol`` (its approximation choices and budget)."""
    from compiler.lowering.profiles import get_profile  # lowering imports the cost model: import when called

    return get_profile(protocol)


def _approx_steps(op: str, n: int, profile: Any, **params: Any) -> list[Step]:
    from compiler.approx import get

    choice = (getattr(profile, "approx", None) or {}).get(op, DEFAULT_APPROX[op])
    approx = get(op, choice)
    return approx.call_steps(n, profile, **params)


def head_steps(kind: str, tokens: int, head_dim: int, profile: Any) -> list[Step]:
    """One head's own work: Q·Kᵀ, its normalisation, and A·V (projections are shared by all heads)."""
    n, d = tokens, head_dim
    scores = [Step("matmul", n * n, (n, d, n))]
    values = [Step("matmul", n * d, (n, n, d))]
    if kind == "softmax":  # as lowering prices an uncalibrated row: max-subtraction, exp, reciprocal, multiply
        from compiler.lowering.plans import softmax_uses  # lowering imports the cost model: import when called

        norm = softmax_uses(profile, None, n, n).steps(n, n, profile)
    elif kind == "relu_softmax":  # row sums in [ε, comparison range], ε rounded up to 1 LSB (as lowering does)
        f, k = int(getattr(profile, "f", 16)), int(getattr(profile, "k", 31))
        norm = ([Step("relu", n * n)] + _approx_steps("reciprocal", n, profile, lo=2.0 ** -f, hi=2.0 ** (k - f - 1))
                + [Step("mul", n * n)])
    elif kind == "scaling":
        norm = [Step("trunc", n * n)]
    else:
        raise ValueError(f"unknown head kind {kind!r}")
    return scores + norm + values


def mlp_steps(kind: str, tokens: int, dim: int, hidden: int, profile: Any) -> list[Step]:
    act = {"gelu": lambda: _approx_steps("gelu", tokens * hidden, profile),
           "relu": lambda: [Step("relu", tokens * hidden)],
           "linear": lambda: []}[kind]()
    return [Step("matmul", tokens * hidden, (tokens, dim, hidden))] + act + [
        Step("matmul", tokens * dim, (tokens, hidden, dim))]


def cost_table(depth: int, heads: int, dim: int, tokens: int, mlp_ratio: float, protocol: str,
               network: str = "lan", profile: Any = None) -> dict[str, Any]:
    """Seconds of one head of each attention kind and of one MLP of each kind (JSON layout in DESIGN.md).
    ``profile``: a lowering :class:`~compiler.lowering.profiles.Profile` (default: ``protocol``'s own)."""
    profile = profile if profile is not None else search_profile(protocol)
    head_dim, hidden = dim // heads, int(round(dim * mlp_ratio))
    return {
        "protocol": normalise_protocol(protocol), "network": network, "unit": "seconds",
        "model": {"depth": depth, "heads": heads, "dim": dim, "tokens": tokens, "mlp_ratio": mlp_ratio},
        "attention": {kind: steps_cost(head_steps(kind, tokens, head_dim, profile), profile).latency(network)
                      for kind in ("softmax", "relu_softmax", "scaling")},
        "mlp": {kind: steps_cost(mlp_steps(kind, tokens, dim, hidden, profile), profile).latency(network)
                for kind in ("gelu", "relu", "linear")},
    }
