"""Transformer MLP with a kind per layer: GeLU (exact erf), ReLU, or MPCViT+'s linear MLP.

``linear``: fc2(fc1(x)) with no activation between them (so fc2·fc1 fuses into one matrix) and ReLU after fc2.
In search mode a learnable token-wise gate g ∈ [0,1]^N (init 1) mixes g·GeLU-MLP + (1−g)·linear-MLP sharing weights.
"""
from __future__ import annotations

import torch
from torch import nn

from mpcvit.config import MLP_KINDS


class KindMlp(nn.Module):
    def __init__(self, dim: int, hidden: int, kind: str, drop: float = 0.0, gate_tokens: int = 0) -> None:
        super().__init__()
        if kind not in MLP_KINDS:
            raise ValueError(f"unknown MLP kind {kind!r}; valid: {', '.join(MLP_KINDS)}")
        self.kind = kind
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU() if kind == "gelu" else nn.ReLU() if kind == "relu" else nn.Identity()
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(drop)
        self.gate = nn.Parameter(torch.ones(gate_tokens, 1)) if gate_tokens else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc1(x)
        if self.gate is not None:
            nonlinear = self.fc2(self.drop(nn.functional.gelu(h)))
            linear = torch.relu(self.fc2(h))
            g = self.gate  # kept in [0, 1] by projection after each step
            return self.drop(g * nonlinear + (1.0 - g) * linear)
        if self.kind == "linear":
            return self.drop(torch.relu(self.fc2(h)))
        return self.drop(self.fc2(self.drop(self.act(h))))
