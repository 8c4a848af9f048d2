"""ViT-Lite shapes and parameter counts of the paper, timm registry, block layout, MLP kinds, strict configs."""
from __future__ import annotations

import math
import subprocess
import sys

import pytest
import timm
import torch

import mpcvit  # noqa: F401  (registers mpcvit_* with timm)
from compiler.errors import UserError
from mpcvit.models import MPCViT, model_config
from mpcvit.models.mlp import KindMlp


def test_importing_the_package_registers_the_models_with_timm() -> None:
    """A fresh interpreter: ``import mpcvit`` alone (not mpcvit.models) makes ``timm.create_model`` know them."""
    code = "import timm, mpcvit; m = timm.create_model('mpcvit_vit_1_4_8'); print(type(m).__name__)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "MPCViT", done.stderr[-2000:]


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name, params, tokens, depth, heads, dim, classes", [
    ("mpcvit_vit_7_4_32", 3.7e6, 65, 7, 4, 256, 10),
    ("mpcvit_vit_9_12_64", 2.8e6, 257, 9, 12, 192, 200),
])
def test_paper_models(name: str, params: float, tokens: int, depth: int, heads: int, dim: int, classes: int) -> None:
    model = timm.create_model(name)
    assert abs(n_params(model) - params) / params < 0.02
    assert model.pos_embed.shape == (1, tokens, dim) and len(model.blocks) == depth
    assert model.blocks[0].attn.heads == heads and model.blocks[0].mlp.fc1.out_features == 2 * dim
    assert model.patch_embed.kernel_size == (4, 4) and model.patch_embed.stride == (4, 4)
    assert model.patch_embed.bias is not None and model.blocks[0].attn.qkv.bias is None
    assert model.head.out_features == classes


def test_digits_model_runs_through_timm_with_overrides() -> None:
    model = timm.create_model("mpcvit_vit_2_4_8", head_kinds=[["scaling"] * 4, ["relu_softmax"] * 4])
    assert model.cfg.tokens == 17 and model.cfg.in_chans == 1
    assert model(torch.randn(3, 1, 8, 8)).shape == (3, 10)
    assert model.blocks[1].attn.head_kinds == ["relu_softmax"] * 4


def test_block_layout_is_post_attention_norm() -> None:
    torch.manual_seed(0)
    model = MPCViT(model_config("vit_1_4_8")).eval()
    block, x = model.blocks[0], torch.randn(2, 17, 16)
    with torch.no_grad():
        y = x + block.attn(block.norm0(x))
        y = block.norm1(y)
        torch.testing.assert_close(block(x), y + block.mlp(y))
        tokens = model.forward_features(torch.randn(1, 1, 8, 8))
    assert tokens.shape == (1, 17, 16)
    # final LayerNorm: per-token mean 0 up to float32 rounding of 16 values of order 1 (~1e-7), beta = 0 at init
    torch.testing.assert_close(tokens.mean(-1), torch.zeros(1, 17), atol=1e-5, rtol=0)


def test_mlp_kinds() -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 5, 8)
    gelu, relu, linear = (KindMlp(8, 16, kind).eval() for kind in ("gelu", "relu", "linear"))
    for m in (relu, linear):
        m.load_state_dict(gelu.state_dict())
    w1, b1, w2, b2 = gelu.fc1.weight, gelu.fc1.bias, gelu.fc2.weight, gelu.fc2.bias
    with torch.no_grad():
        h = x @ w1.T + b1
        exact_gelu = h * 0.5 * (1 + torch.erf(h / math.sqrt(2)))
        torch.testing.assert_close(gelu(x), exact_gelu @ w2.T + b2)
        torch.testing.assert_close(relu(x), torch.relu(h) @ w2.T + b2)
        fused_w, fused_b = w2 @ w1, w2 @ b1 + b2  # MPCViT+: fc2·fc1 is one matrix
        # w2·w1 fused in another float32 summation order: a few ulps of float32
    torch.testing.assert_close(linear(x), torch.relu(x @ fused_w.T + fused_b), rtol=1e-5, atol=1e-6)


def test_token_gate_mixes_gelu_and_linear_mlp() -> None:
    torch.manual_seed(0)
    gated, gelu, linear = KindMlp(8, 16, "gelu", gate_tokens=5), KindMlp(8, 16, "gelu"), KindMlp(8, 16, "linear")
    gelu.load_state_dict(gated.state_dict(), strict=False)
    linear.load_state_dict(gated.state_dict(), strict=False)
    x = torch.randn(2, 5, 8)
    g = torch.tensor([1.0, 0.0, 0.5, 0.2, 0.9]).view(5, 1)
    with torch.no_grad():
        gated.gate.copy_(g)
        torch.testing.assert_close(gated(x), g * gelu(x) + (1 - g) * linear(x))
    gated(x).sum().backward()
    assert gated.gate.grad.shape == (5, 1) and gated.gate.grad.abs().sum() > 0


def test_unknown_config_key_lists_valid_ones() -> None:
    with pytest.raises(UserError, match=r"unknown key\(s\) depht; valid keys: name, img_size"):
        model_config("vit_2_4_8", depht=3)
    with pytest.raises(UserError, match="unknown model 'vit_3'"):
        model_config("vit_3")
    with pytest.raises(UserError, match="unknown head kind"):
        model_config("vit_1_4_8", head_kinds=[["softmax", "gelu", "scaling", "scaling"]])


def test_config_values_of_the_wrong_type_or_range_are_one_line_errors() -> None:
    from mpcvit.config import RunConfig, from_dict
    from mpcvit.recipes import recipe

    with pytest.raises(UserError, match=r"^model vit_1_4_8: dim must be int, got 'abc'$"):
        model_config("vit_1_4_8", dim="abc")
    with pytest.raises(UserError, match=r"^model vit_1_4_8: search must be bool, got 1$"):
        model_config("vit_1_4_8", search=1)
    with pytest.raises(UserError, match=r"^config file c.json: model must be dict\[str, Any\], got \[1\]$"):
        from_dict(RunConfig, {"model": [1]}, "config file c.json")
    with pytest.raises(UserError, match=r"^train config \(digits\): epochs must be int, got True$"):
        recipe("digits", epochs=True)
    with pytest.raises(UserError, match=r"^train config: lr must be > 0, got -0.001$"):
        recipe("digits", lr=-1e-3)
    with pytest.raises(UserError, match=r"^train config: weight_decay must be >= 0, got -1$"):
        recipe("digits", weight_decay=-1)
    cfg = model_config("vit_1_4_8", mlp_ratio=3, head_kinds=None)  # a JSON integer is a valid float
    assert cfg.mlp_ratio == 3 and recipe("digits", lr=1).lr == 1
