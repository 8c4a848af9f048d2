"""The paper's ViT-Lite: conv patch tokenizer, class token, learned positions, post-attention-norm blocks."""
from __future__ import annotations

import torch
from timm.layers import DropPath, trunc_normal_
from torch import nn

from mpcvit.config import ModelConfig
from mpcvit.models.attention import HeteroAttention
from mpcvit.models.mlp import KindMlp


class Block(nn.Module):
    """``x = x + drop_path(attn(norm0(x))); x = norm1(x); x = x + drop_path(mlp(x))`` (ViT-Lite/CCT layout)."""

    def __init__(self, cfg: ModelConfig, layer: int, drop_path: float) -> None:
        super().__init__()
        self.norm0 = nn.LayerNorm(cfg.dim)
        self.attn = HeteroAttention(cfg.dim, cfg.head_kinds[layer], cfg.eps, cfg.attn_drop_rate, cfg.drop_rate,
                                    search=cfg.search, search_softmax=cfg.search_softmax)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm1 = nn.LayerNorm(cfg.dim)
        gate_tokens = cfg.tokens if cfg.search and cfg.search_mlp else 0
        self.mlp = KindMlp(cfg.dim, int(cfg.dim * cfg.mlp_ratio), cfg.mlp_kinds[layer], cfg.drop_rate, gate_tokens)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm0(x)))
        x = self.norm1(x)
        return x + self.drop_path(self.mlp(x))


class MPCViT(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.num_classes = cfg.num_classes
        self.patch_embed = nn.Conv2d(cfg.in_chans, cfg.dim, kernel_size=cfg.patch_size, stride=cfg.patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg.tokens, cfg.dim))
        self.pos_drop = nn.Dropout(cfg.drop_rate)
        rates = torch.linspace(0, cfg.drop_path_rate, cfg.depth).tolist()
        self.blocks = nn.Sequential(*(Block(cfg, i, rates[i]) for i in range(cfg.depth)))
        self.norm = nn.LayerNorm(cfg.dim)
        self.head = nn.Linear(cfg.dim, cfg.num_classes)
        trunc_normal_(self.pos_embed, std=0.02)
        trunc_normal_(self.cls_token, std=0.02)
        self.apply(_init_weights)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Final-norm tokens [B, N, C] (class token first): the token-level KD target."""
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        return self.norm(self.blocks(self.pos_drop(x)))

    def forward_head(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(tokens[:, 0])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
