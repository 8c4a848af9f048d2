"""Each attention kind against its formula (numpy), grouping of heads, and the search mix with α gradients."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from mpcvit.models import HeteroAttention
from mpcvit.models.attention import group_heads
from mpcvit.search import expected_cost

DIM, HEADS, TOKENS, EPS = 16, 4, 5, 1e-6


def reference_attention(attn: HeteroAttention, x: np.ndarray, kinds: list[str]) -> np.ndarray:
    """Plain numpy multi-head attention with a formula per head."""
    B, N, C = x.shape
    d = C // HEADS
    qkv = x @ attn.qkv.weight.detach().numpy().T
    q, k, v = (qkv[..., i * C:(i + 1) * C].reshape(B, N, HEADS, d).transpose(0, 2, 1, 3) for i in range(3))
    out = np.zeros_like(q)
    for h, kind in enumerate(kinds):
        s = q[:, h] @ k[:, h].transpose(0, 2, 1) / np.sqrt(d)
        if kind == "softmax":
            e = np.exp(s - s.max(-1, keepdims=True))
            a = e / e.sum(-1, keepdims=True)
        elif kind == "relu_softmax":
            r = np.maximum(s, 0)
            a = r / (r.sum(-1, keepdims=True) + EPS)
        else:
            a = s / N
        out[:, h] = a @ v[:, h]
    merged = out.transpose(0, 2, 1, 3).reshape(B, N, C)
    return merged @ attn.proj.weight.detach().numpy().T + attn.proj.bias.detach().numpy()


@pytest.mark.parametrize("kinds", [
    ["softmax"] * 4, ["relu_softmax"] * 4, ["scaling"] * 4,
    ["relu_softmax", "relu_softmax", "scaling", "scaling"],  # contiguous groups
    ["scaling", "relu_softmax", "scaling", "softmax"],  # interleaved: index_select + reorder
])
def test_each_kind_equals_its_formula(kinds: list[str]) -> None:
    torch.manual_seed(0)
    attn = HeteroAttention(DIM, kinds, eps=EPS).eval()
    x = torch.randn(2, TOKENS, DIM) * 3  # large enough that ReLU zeroes a good part of S
    with torch.no_grad():
        got = attn(x).numpy()
    # float32 torch vs a float64 numpy reference: scores of |x|~3·3 summed over DIM lose ~1e-6 relative each, and
    # the ReLU-softmax division amplifies that where row sums are small: 1e-4 relative covers it with margin
    np.testing.assert_allclose(got, reference_attention(attn, x.double().numpy(), kinds), rtol=1e-4, atol=1e-5)


def test_heads_are_grouped_by_kind() -> None:
    assert group_heads(["scaling", "relu_softmax", "scaling"]) == [("scaling", [0, 2]), ("relu_softmax", [1])]
    contiguous = HeteroAttention(DIM, ["relu_softmax", "relu_softmax", "scaling", "scaling"])
    assert [sl for _, sl in contiguous.groups] == [slice(0, 2), slice(2, 4)] and not contiguous.reorder
    interleaved = HeteroAttention(DIM, ["scaling", "relu_softmax", "scaling", "softmax"])
    assert interleaved.reorder and interleaved.head_order.tolist() == [0, 2, 1, 3]


def test_search_mix_is_alpha_relu_softmax_plus_one_minus_alpha_scaling() -> None:
    torch.manual_seed(1)
    search = HeteroAttention(DIM, ["softmax"] * HEADS, eps=EPS, search=True).eval()
    alpha = torch.tensor([0.0, 0.3, 0.8, 1.0])
    with torch.no_grad():
        search.alpha.copy_(alpha)
    relu = HeteroAttention(DIM, ["relu_softmax"] * HEADS, eps=EPS).eval()
    scal = HeteroAttention(DIM, ["scaling"] * HEADS, eps=EPS).eval()
    relu.load_state_dict(search.state_dict(), strict=False)
    scal.load_state_dict(search.state_dict(), strict=False)
    # mixing happens per head before "@ v" and the projection is linear, so compare the pre-projection outputs
    x = torch.randn(2, TOKENS, DIM)
    with torch.no_grad():
        q, k, v = search.qkv(x).reshape(2, TOKENS, 3, HEADS, DIM // HEADS).permute(2, 0, 3, 1, 4).unbind(0)
        mixed = search._search_heads(q, k, v)
        expected = (alpha.view(1, -1, 1, 1) * relu._fixed_heads(q, k, v)
                    + (1 - alpha).view(1, -1, 1, 1) * scal._fixed_heads(q, k, v))
    # the same float32 kernels combined in another order: a few float32 ulps (1.2e-7 relative each)
    torch.testing.assert_close(mixed, expected, rtol=1e-5, atol=1e-6)


def test_alpha_gets_gradients_from_task_and_cost() -> None:
    torch.manual_seed(2)
    attn = HeteroAttention(DIM, ["softmax"] * HEADS, search=True)
    assert attn.alpha.tolist() == [1.0] * HEADS  # the paper's init: all ReLU-softmax
    attn(torch.randn(2, TOKENS, DIM)).square().sum().backward()
    task_grad = attn.alpha.grad.clone()
    assert torch.isfinite(task_grad).all() and (task_grad != 0).all()
    attn.zero_grad()
    expected_cost(attn, None).backward()  # L1 on α: d mean(α) / dα = 1/H
    torch.testing.assert_close(attn.alpha.grad, torch.full((HEADS,), 1.0 / HEADS))


def test_softmax_in_search_space_mixes_three_kinds() -> None:
    attn = HeteroAttention(DIM, ["softmax"] * HEADS, search=True, search_softmax=True)
    assert attn.search_kinds == ("softmax", "relu_softmax", "scaling")
    weights = attn.mixing_weights()
    torch.testing.assert_close(weights.sum(-1), torch.ones(HEADS))
    attn(torch.randn(1, TOKENS, DIM)).sum().backward()
    assert attn.alpha.grad.shape == (HEADS, 3) and attn.alpha.grad.abs().sum() > 0
