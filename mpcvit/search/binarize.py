"""Turn a searched model into fixed kinds: the global top-μ fraction of heads keep ReLU-softmax, the rest scale."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from compiler.errors import UserError
from mpcvit.config import HEAD_KINDS
from mpcvit.search.cost import searched_modules


def head_scores(model: nn.Module) -> np.ndarray:
    """[L, H]: how strongly each head wants a non-scaling kind (α in the paper's 2-way space)."""
    attns, _ = searched_modules(model)
    if not attns:
        raise UserError("the checkpoint is not a search checkpoint (no α); run `mpcvit search` first")
    with torch.no_grad():
        return np.stack([1.0 - a.mixing_weights()[:, a.search_kinds.index("scaling")].numpy() for a in attns])


def gate_scores(model: nn.Module) -> np.ndarray:
    """[L]: mean token gate of each layer's MLP (1 = GeLU MLP, 0 = linear MLP)."""
    _, mlps = searched_modules(model)
    with torch.no_grad():
        return np.array([m.gate.clamp(0.0, 1.0).mean().item() for m in mlps])


def check_fraction(value: float, flag: str) -> None:
    if not 0.0 <= value <= 1.0:
        raise UserError(f"{flag} must lie in [0, 1] (the fraction of heads/layers kept non-linear), got {value}")


def top_fraction(scores: np.ndarray, mu: float) -> np.ndarray:
    """Boolean mask of exactly round(μ·size) entries with the largest scores (ties: earlier index first)."""
    keep = round(mu * scores.size)
    order = np.argsort(-scores.ravel(), kind="stable")
    mask = np.zeros(scores.size, dtype=bool)
    mask[order[:keep]] = True
    return mask.reshape(scores.shape)


def binarize(model: nn.Module, mu: float, mlp_mu: float | None = None) -> tuple[list[list[str]], list[str]]:
    """Head kinds [L][H] and MLP kinds [L] of the searched ``model`` at ReLU-softmax ratio ``mu``.

    Kept heads take ReLU-softmax (or, with softmax in the space, whichever of the two has the larger weight).
    With searched MLP gates, the top ``mlp_mu`` fraction of layers keep the GeLU MLP, the rest become linear.
    """
    check_fraction(mu, "--mu")
    gates = gate_scores(model)
    if mlp_mu is not None:
        check_fraction(mlp_mu, "--mlp-mu")
        if not gates.size:
            raise UserError("--mlp-mu applies to a search of MLP kinds; drop it or search with --search-mlp")
    keep = top_fraction(head_scores(model), mu)
    attns, _ = searched_modules(model)
    kinds = []
    for layer, attn in enumerate(attns):
        with torch.no_grad():
            w = attn.mixing_weights()
        best = ["relu_softmax"] * attn.heads
        if "softmax" in attn.search_kinds:
            soft, relu = attn.search_kinds.index("softmax"), attn.search_kinds.index("relu_softmax")
            best = ["softmax" if w[h, soft] > w[h, relu] else "relu_softmax" for h in range(attn.heads)]
        kinds.append([best[h] if keep[layer, h] else "scaling" for h in range(attn.heads)])
    mlp_kinds = list(model.cfg.mlp_kinds)
    if gates.size:
        keep_mlp = top_fraction(gates, 1.0 if mlp_mu is None else mlp_mu)
        mlp_kinds = ["gelu" if k else "linear" for k in keep_mlp]
    return kinds, mlp_kinds


def contiguous_kinds(head_kinds: list[list[str]]) -> list[list[str]]:
    """Each layer's kinds sorted so same-kind heads are adjacent (free for a freshly initialised model)."""
    return [sorted(layer, key=HEAD_KINDS.index) for layer in head_kinds]
