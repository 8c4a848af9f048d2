"""Small ONNX models for the frontend/passes tests, exported with torch into a directory the caller gives.

* :func:`timm_vit` — timm's ``VisionTransformer(img_size=32, patch_size=4, embed_dim=64, depth=2, num_heads=4)``
  (pre-norm blocks, class token, erf GeLU) by either torch exporter;
* :class:`TinyMPCViT` — mirrors the export structure of MPCViT models: qkv Linear -> reshape/permute -> q, k, v;
  heads grouped by kind through contiguous slices or ``index_select`` either on the scores ``S`` (one ``@ v``) or
  on q, k, v (one chain per kind group, outputs concatenated and put back in head order); MLP gelu/relu/linear;
* :func:`onnx_graph` — a hand-written ONNX graph of a few nodes (onnx.helper), for single-op checks.
"""
from __future__ import annotations

import contextlib
import io
import logging
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper
from torch import nn


def export(model: nn.Module, sample: torch.Tensor, path: Path, dynamo: bool, opset: int | None = None,
           dynamic_batch: bool = False) -> Path:
    """torch.onnx.export, quietly; ``dynamic_batch`` marks dimension 0 of the input dynamic (TorchScript only).
    File names encode every builder argument, so an existing file is reused (the directory lives one session)."""
    if path.exists():
        return path
    kwargs: dict = {"dynamo": dynamo, "input_names": ["image"], "output_names": ["logits"]}
    if opset is not None:
        kwargs["opset_version"] = opset
    if dynamic_batch:
        kwargs["dynamic_axes"] = {"image": {0: "batch"}, "logits": {0: "batch"}}
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.onnx.export(model.eval(), (sample,), str(path), **kwargs)
    return path


def shared_dir(factory: pytest.TempPathFactory) -> Path:
    """One export directory per test session, so test modules share their (cached) exports."""
    path = factory.getbasetemp() / "onnx-exports"
    path.mkdir(exist_ok=True)
    return path


def run_onnxruntime(path: Path, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x.astype(np.float32)})[0]


def timm_vit(out_dir: Path, dynamo: bool, opset: int | None = None, dynamic_batch: bool = False,
             img_size: int = 32, embed_dim: int = 64, depth: int = 2, num_heads: int = 4,
             mlp_ratio: float = 4.0, num_classes: int = 10, fused_attn: bool = False) -> Path:
    import timm
    from timm.models.vision_transformer import VisionTransformer

    timm.layers.set_fused_attn(fused_attn)  # fused: scaled_dot_product_attention, exported with q and k scaled
    torch.manual_seed(0)
    model = VisionTransformer(img_size=img_size, patch_size=4, embed_dim=embed_dim, depth=depth,
                              num_heads=num_heads, num_classes=num_classes, mlp_ratio=mlp_ratio)
    _randomise(model)
    name = f"timm_{img_size}_{depth}_{num_heads}_{embed_dim}_{'dynamo' if dynamo else 'ts'}_{opset}_{dynamic_batch}" \
        f"_{fused_attn}"
    return export(model, torch.randn(1, 3, img_size, img_size), out_dir / f"{name}.onnx", dynamo, opset,
                  dynamic_batch)


def _randomise(model: nn.Module) -> None:
    """Non-trivial biases, norms, class token and position embedding (timm zero-initialises several)."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() <= 1 or p.shape[0] == 1:
                p.copy_(p + 0.1 * torch.randn(p.shape, generator=generator))


def relu_softmax(s: torch.Tensor, eps: float) -> torch.Tensor:
    return torch.relu(s) / (torch.relu(s).sum(-1, keepdim=True) + eps)


def apply_kind(kind: str, s: torch.Tensor, eps: float) -> torch.Tensor:
    if kind == "softmax":
        return s.softmax(-1)
    if kind == "relu_softmax":
        return relu_softmax(s, eps)
    return s / s.shape[-1]


class GroupedAttention(nn.Module):
    """Attention with a kind per head; ``split``: "scores" (group S, one @ v) or "qkv" (one chain per group)."""

    def __init__(self, dim: int, kinds: Sequence[str], grouping: str, split: str, eps: float) -> None:
        super().__init__()
        self.heads, self.head_dim, self.eps = len(kinds), dim // len(kinds), eps
        self.scale = self.head_dim ** -0.5
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.grouping, self.split = grouping, split
        groups: dict[str, list[int]] = {}
        for head, kind in enumerate(kinds):
            groups.setdefault(kind, []).append(head)
        self.groups = list(groups.items())
        order = [h for _, heads in self.groups for h in heads]
        self.register_buffer("inverse", torch.argsort(torch.tensor(order)), persistent=False)
        for i, (_, heads) in enumerate(self.groups):
            self.register_buffer(f"index_{i}", torch.tensor(heads), persistent=False)

    def select(self, t: torch.Tensor, i: int) -> torch.Tensor:
        heads = self.groups[i][1]
        if self.grouping == "slice":  # the kinds' heads must be contiguous
            assert heads == list(range(heads[0], heads[-1] + 1)), heads
            return t[:, heads[0]:heads[-1] + 1]
        return t.index_select(1, getattr(self, f"index_{i}"))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        if self.split == "scores":
            s = (q @ k.transpose(-2, -1)) * self.scale
            p = torch.cat([apply_kind(kind, self.select(s, i), self.eps) for i, (kind, _) in enumerate(self.groups)], 1)
            out = p.index_select(1, self.inverse) @ v
        else:
            parts = [apply_kind(kind, (self.select(q, i) @ self.select(k, i).transpose(-2, -1)) * self.scale, self.eps)
                     @ self.select(v, i) for i, (kind, _) in enumerate(self.groups)]
            out = torch.cat(parts, 1).index_select(1, self.inverse)
        return self.proj(out.transpose(1, 2).reshape(B, N, C))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, kind: str) -> None:
        super().__init__()
        self.fc1, self.fc2, self.kind = nn.Linear(dim, hidden), nn.Linear(hidden, dim), kind

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc1(x)
        if self.kind == "linear":  # MPCViT+: no activation between fc1 and fc2, ReLU after
            return torch.relu(self.fc2(h))
        return self.fc2(nn.functional.gelu(h) if self.kind == "gelu" else torch.relu(h))


class TinyMPCViT(nn.Module):
    def __init__(self, kinds: Sequence[Sequence[str]], mlp_kinds: Sequence[str], grouping: str = "slice",
                 split: str = "scores", dim: int = 32, img_size: int = 16, eps: float = 1e-2) -> None:
        super().__init__()
        tokens = (img_size // 4) ** 2 + 1
        self.patch = nn.Conv2d(3, dim, 4, 4)
        self.cls = nn.Parameter(torch.randn(1, 1, dim))
        self.pos = nn.Parameter(0.1 * torch.randn(1, tokens, dim))
        self.norms1 = nn.ModuleList(nn.LayerNorm(dim, eps=1e-5) for _ in kinds)
        self.attns = nn.ModuleList(GroupedAttention(dim, k, grouping, split, eps) for k in kinds)
        self.norms2 = nn.ModuleList(nn.LayerNorm(dim, eps=1e-3) for _ in kinds)
        self.mlps = nn.ModuleList(Mlp(dim, 2 * dim, m) for m in mlp_kinds)
        self.norm, self.head = nn.LayerNorm(dim), nn.Linear(dim, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1) + self.pos
        for norm1, attn, norm2, mlp in zip(self.norms1, self.attns, self.norms2, self.mlps):
            x = x + attn(norm1(x))
            x = x + mlp(norm2(x))
        return self.head(self.norm(x)[:, 0])


def tiny_mpcvit(out_dir: Path, kinds: tuple[tuple[str, ...], ...], mlp_kinds: tuple[str, ...],
                grouping: str = "slice", split: str = "scores", dynamo: bool = False,
                opset: int | None = 17) -> Path:
    torch.manual_seed(0)
    model = TinyMPCViT(kinds, mlp_kinds, grouping, split)
    _randomise(model)
    name = "_".join(["tiny", *("-".join(k) for k in kinds), *mlp_kinds, grouping, split, str(dynamo), str(opset)])
    return export(model, torch.randn(1, 3, 16, 16), out_dir / f"{name}.onnx", dynamo, opset)


class SeparateProjections(nn.Module):
    """Softmax attention over tokens [B, N, C] with q, k, v from three Linears and 1/sqrt(d) as a Div on S."""

    def __init__(self, dim: int = 16, heads: int = 2) -> None:
        super().__init__()
        self.q, self.k, self.v, self.out = (nn.Linear(dim, dim) for _ in range(4))
        self.heads = heads

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        q, k, v = (f(x).reshape(B, N, self.heads, -1).transpose(1, 2) for f in (self.q, self.k, self.v))
        attn = (q @ k.transpose(-1, -2) / (C // self.heads) ** 0.5).softmax(-1)
        return self.out((attn @ v).transpose(1, 2).reshape(B, N, C))


def separate_projections(out_dir: Path, dynamo: bool) -> Path:
    torch.manual_seed(0)
    return export(SeparateProjections(), torch.randn(2, 5, 16), out_dir / f"separate_{dynamo}.onnx", dynamo,
                  18 if dynamo else 17)


def onnx_graph(path: Path, nodes: list[onnx.NodeProto], input_shape: Sequence[int | str], output: str,
               output_shape: Sequence[int | str], initializers: Sequence[tuple[str, np.ndarray]] = (),
               opset: int = 17) -> Path:
    """A one-input ONNX model of ``nodes`` (input ``x``, output ``output``); initializers as (name, array)."""
    inits = [onnx.numpy_helper.from_array(array, name) for name, array in initializers]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(input_shape))],
                              [helper.make_tensor_value_info(output, TensorProto.FLOAT, list(output_shape))], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    onnx.save(model, str(path))
    return path
