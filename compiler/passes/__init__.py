"""Pattern passes: generic IR from the frontend -> the ViT-level kinds (DESIGN.md). Entry point: :func:`run_passes`.

Each pass is a function ``Graph -> Graph`` (rewriting in place) that preserves the float semantics
(:mod:`compiler.ir_eval`); :data:`PIPELINE` lists them in order.
"""
from __future__ import annotations

from typing import Callable

from compiler.ir import Graph
from compiler.passes.attention import fold_attention_scale, fuse_attention, merge_attention, norm_heads_on_tokens
from compiler.passes.layouts import (compose_layouts, fold_layouts_into_linear, layout_into_input,
                                     permutations_after_linear, scales_after_layouts, weights_before_layouts)
from compiler.passes.linear import (fold_channel_affine, fold_layernorm_affine, fold_scales, fuse_linear_chains,
                                    linear_from_matmul, scale_from_mul)
from compiler.passes.patterns import fuse_gelu, fuse_gelu_tanh, fuse_layernorm, mean_as_sum

Pass = Callable[[Graph], Graph]

PIPELINE: list[Pass] = [
    scale_from_mul,
    linear_from_matmul,
    fold_channel_affine,  # LayerScale / BatchNormalization next to a linear -> its weights
    permutations_after_linear,  # sequence-first transposes move past linears to meet the head split
    scales_after_layouts,
    compose_layouts,
    fuse_layernorm,
    fuse_gelu,
    fuse_gelu_tanh,
    norm_heads_on_tokens,  # qk_norm: the per-head LayerNorm of q/k on token rows, so that q/k are head columns
    weights_before_layouts,  # Swin's mask, added on a reshaped view of the scores, moves onto the scores
    compose_layouts,
    fuse_attention,
    compose_layouts,  # the attention's head-major output meets the exporter's transpose/reshape: identity
    merge_attention,  # per-kind groups concatenated on the head axis -> one attention per layer
    permutations_after_linear,  # the attention output's way back to sequence-first and again: identity
    compose_layouts,
    fold_attention_scale,
    fold_layouts_into_linear,
    mean_as_sum,  # global average pooling: a local sum, its 1/N folded into the head when it follows
    fold_scales,
    fold_layernorm_affine,  # γ, β of a LayerNorm whose output only feeds linears -> their weights
    fuse_linear_chains,
    layout_into_input,
]


def run_passes(graph: Graph) -> Graph:
    for step in PIPELINE:
        graph = step(graph)
    return graph


__all__ = ["run_passes", "PIPELINE", "compose_layouts", "fold_layouts_into_linear", "layout_into_input",
           "scales_after_layouts", "fuse_attention", "merge_attention", "norm_heads_on_tokens", "fold_attention_scale",
           "fold_scales", "fold_channel_affine", "fuse_linear_chains", "permutations_after_linear",
           "weights_before_layouts", "fold_layernorm_affine",
           "linear_from_matmul", "scale_from_mul", "fuse_gelu", "fuse_gelu_tanh", "fuse_layernorm", "mean_as_sum"]
