"""Multi-head self-attention with a kind per head: softmax, ReLU-softmax or scaling (MPCViT).

With fixed kinds, heads of one kind are computed together: a contiguous slice of the head axis when the kind's heads
are adjacent, else ``index_select`` with a constant index. Each group is a plain chain the compiler can pattern-match:
``S = (q @ kᵀ) * scale``; ``kind(S)``; ``@ v``. Group outputs are concatenated on the head axis (and put back into
head order with one constant ``index_select`` when the groups interleave).

In search mode every head mixes the kinds of the search space with learnable weights (the paper's α).
"""
from __future__ import annotations

import torch
from torch import nn

from mpcvit.config import HEAD_KINDS


def relu_softmax(scores: torch.Tensor, eps: float) -> torch.Tensor:
    """ReLU(S) / (Σ ReLU(S) + ε) over the last axis — written exactly so for the compiler's pattern."""
    r = torch.relu(scores)
    return r / (r.sum(-1, keepdim=True) + eps)


def scaling(scores: torch.Tensor) -> torch.Tensor:
    """S / N with N the number of tokens (a constant under static shapes)."""
    return scores / scores.shape[-1]


def apply_kind(kind: str, scores: torch.Tensor, eps: float) -> torch.Tensor:
    if kind == "softmax":
        return scores.softmax(-1)
    if kind == "relu_softmax":
        return relu_softmax(scores, eps)
    if kind == "scaling":
        return scaling(scores)
    raise ValueError(f"unknown head kind {kind!r}; valid: {', '.join(HEAD_KINDS)}")


def group_heads(kinds: list[str]) -> list[tuple[str, list[int]]]:
    """Heads grouped by kind, groups in order of first appearance."""
    groups: dict[str, list[int]] = {}
    for head, kind in enumerate(kinds):
        groups.setdefault(kind, []).append(head)
    return list(groups.items())


class HeteroAttention(nn.Module):
    """Self-attention whose heads each use their own kind (fixed) or a learnable mix of kinds (search)."""

    def __init__(self, dim: int, head_kinds: list[str], eps: float = 1e-6, attn_drop: float = 0.0,
                 proj_drop: float = 0.0, search: bool = False, search_softmax: bool = False) -> None:
        super().__init__()
        self.heads = len(head_kinds)
        self.head_dim = dim // self.heads
        self.scale = self.head_dim ** -0.5
        self.eps = eps
        self.head_kinds = list(head_kinds)
        self.qkv = nn.Linear(dim, dim * 3, bias=False)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        self.search = search
        if search:
            self.search_kinds = ("softmax", "relu_softmax", "scaling") if search_softmax else ("relu_softmax", "scaling")
            # 2-way space: the paper's α ∈ [0,1] (init 1 = ReLU-softmax); 3-way: logits of a softmax over kinds.
            init = torch.ones(self.heads) if not search_softmax else torch.zeros(self.heads, 3)
            self.alpha = nn.Parameter(init)
        else:
            self._build_groups()

    def _build_groups(self) -> None:
        self.groups: list[tuple[str, slice | None]] = []
        order: list[int] = []
        for i, (kind, heads) in enumerate(group_heads(self.head_kinds)):
            contiguous = heads == list(range(heads[0], heads[-1] + 1))
            if contiguous:
                self.groups.append((kind, slice(heads[0], heads[-1] + 1)))
            else:
                self.register_buffer(f"group_index_{i}", torch.tensor(heads), persistent=False)
                self.groups.append((kind, None))
            order += heads
        self.reorder = order != sorted(order)
        if self.reorder:
            inverse = torch.empty(len(order), dtype=torch.long)
            inverse[torch.tensor(order)] = torch.arange(len(order))
            self.register_buffer("head_order", inverse, persistent=False)

    def mixing_weights(self) -> torch.Tensor:
        """[H, K] weights of the search kinds (``self.search_kinds`` order) per head."""
        if self.alpha.dim() == 1:  # kept in [0, 1] by projection after each step (a clamp here would zero its grad)
            return torch.stack([self.alpha, 1.0 - self.alpha], dim=-1)
        return self.alpha.softmax(-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # [B, H, N, d]
        out = self._search_heads(q, k, v) if self.search else self._fixed_heads(q, k, v)
        out = out.transpose(1, 2).reshape(B, N, C)
        return self.proj_drop(self.proj(out))

    def _fixed_heads(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        outputs = []
        for i, (kind, sl) in enumerate(self.groups):
            if sl is None:
                index = getattr(self, f"group_index_{i}")
                qg, kg, vg = (t.index_select(1, index) for t in (q, k, v))
            elif len(self.groups) == 1:
                qg, kg, vg = q, k, v
            else:
                qg, kg, vg = q[:, sl], k[:, sl], v[:, sl]
            scores = (qg @ kg.transpose(-2, -1)) * self.scale
            outputs.append(self.attn_drop(apply_kind(kind, scores, self.eps)) @ vg)
        out = outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=1)
        return out.index_select(1, self.head_order) if self.reorder else out

    def _search_heads(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        scores = (q @ k.transpose(-2, -1)) * self.scale
        weights = self.mixing_weights()  # [H, K]
        attn = sum(weights[:, i].view(1, -1, 1, 1) * apply_kind(kind, scores, self.eps)
                   for i, kind in enumerate(self.search_kinds))
        return self.attn_drop(attn) @ v
