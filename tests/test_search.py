"""Cost tables, expected MPC cost, binarisation (exactly round(μ·L·H) ReLU-softmax heads), contiguous kinds."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from compiler.errors import UserError
from mpcvit.models import MPCViT, model_config
from mpcvit.search import (binarize, check_table_shape, compiler_cost_table, contiguous_kinds, expected_cost,
                           load_cost_table, top_fraction)

TABLE = {"protocol": "replicated-ring", "network": "lan", "unit": "seconds",
         "model": {"depth": 3, "heads": 4, "dim": 16, "tokens": 17, "mlp_ratio": 2},
         "attention": {"softmax": 0.0123, "relu_softmax": 0.004, "scaling": 0.0008},
         "mlp": {"gelu": 0.02, "relu": 0.01, "linear": 0.002}}


def searched_model(alpha: np.ndarray, **overrides: object) -> MPCViT:
    depth, heads = alpha.shape
    model = MPCViT(model_config("vit_1_4_8", depth=depth, search=True, **overrides))
    with torch.no_grad():
        for block, a in zip(model.blocks, alpha):
            block.attn.alpha.copy_(torch.as_tensor(a, dtype=torch.float32))
    return model


@pytest.mark.parametrize("mu", [0.0, 0.25, 0.5, 0.7, 0.9, 1.0])
def test_binarize_keeps_exactly_round_mu_heads_with_largest_alpha(mu: float) -> None:
    alpha = np.random.default_rng(3).random((3, 4))
    kinds, mlp_kinds = binarize(searched_model(alpha), mu)
    kept = np.array(kinds) == "relu_softmax"
    assert kept.sum() == round(mu * 12)
    assert set(np.array(kinds)[~kept]) <= {"scaling"} and mlp_kinds == ["gelu"] * 3
    if 0 < kept.sum() < 12:
        assert alpha[kept].min() > alpha[~kept].max()


def test_top_fraction_breaks_ties_by_index() -> None:
    assert top_fraction(np.array([0.5, 0.5, 0.5, 0.5]), 0.5).tolist() == [True, True, False, False]


@pytest.mark.parametrize("mu", [-0.1, 1.5])
def test_mu_outside_unit_interval_is_rejected(mu: float) -> None:
    with pytest.raises(UserError, match=r"--mu must lie in \[0, 1\]"):
        binarize(searched_model(np.ones((1, 4))), mu)


def test_expected_cost_with_table_and_l1_fallback() -> None:
    alpha = np.array([[0.0, 0.2, 0.9, 1.0], [0.5, 0.5, 0.1, 0.3], [1.0, 1.0, 1.0, 0.0]])
    model = searched_model(alpha)
    c_rs, c_sc = TABLE["attention"]["relu_softmax"], TABLE["attention"]["scaling"]
    expected = (alpha * c_rs + (1 - alpha) * c_sc).sum() / (12 * c_rs)
    cost = expected_cost(model, load_cost_table(TABLE))
    assert cost.item() == pytest.approx(expected, rel=1e-6)
    cost.backward()
    # float32 autograd of a 12-term sum: a few float32 ulps (1.2e-7 relative each)
    np.testing.assert_allclose(model.blocks[0].attn.alpha.grad.numpy(), (c_rs - c_sc) / (12 * c_rs), rtol=1e-6)
    assert expected_cost(model, None).item() == pytest.approx(alpha.mean(), rel=1e-6)  # the paper's L1


def test_expected_cost_includes_searched_mlps() -> None:
    model = searched_model(np.ones((2, 4)), search_mlp=True)
    with torch.no_grad():
        model.blocks[0].mlp.gate.fill_(0.25)
    c = TABLE["attention"]["relu_softmax"] * 8 + 0.25 * 0.02 + 0.75 * 0.002 + 0.02
    worst = TABLE["attention"]["relu_softmax"] * 8 + 2 * 0.02
    assert expected_cost(model, load_cost_table(TABLE)).item() == pytest.approx(c / worst, rel=1e-6)
    _, mlp_kinds = binarize(model, 0.5, mlp_mu=0.5)
    assert mlp_kinds == ["linear", "gelu"]


def test_cost_table_from_json_file_and_bad_tables(tmp_path) -> None:
    path = tmp_path / "table.json"
    path.write_text(json.dumps(TABLE))
    table = load_cost_table(path)
    assert table.attention["scaling"] == 0.0008 and table.mlp["linear"] == 0.002 and table.protocol == "replicated-ring"
    assert load_cost_table(None) is None
    with pytest.raises(UserError, match="does not exist"):
        load_cost_table(tmp_path / "missing.json")
    with pytest.raises(UserError, match="needs a 'attention' object with costs for relu_softmax, scaling"):
        load_cost_table({"attention": {"softmax": 1.0}, "mlp": {}})
    path.write_text("[1]")
    with pytest.raises(UserError, match=f"^cost table {path}: expected a JSON object with 'attention', 'mlp'"):
        load_cost_table(path)
    with pytest.raises(UserError, match="expected a JSON object"):
        load_cost_table({**TABLE, "model": [3, 4]})  # a shape that check_table_shape could not compare


def test_three_way_search_keeps_the_stronger_non_scaling_kind() -> None:
    model = MPCViT(model_config("vit_1_4_8", search=True, search_softmax=True))
    logits = torch.tensor([[5.0, 0.0, 0.0], [0.0, 5.0, 0.0], [0.0, 0.0, 5.0], [0.0, 1.0, 4.0]])  # soft, relu, scal
    with torch.no_grad():
        model.blocks[0].attn.alpha.copy_(logits)
    kinds, _ = binarize(model, 0.5)
    assert kinds == [["softmax", "relu_softmax", "scaling", "scaling"]]


def test_contiguous_kinds_groups_same_kind_heads() -> None:
    assert contiguous_kinds([["scaling", "relu_softmax", "softmax", "relu_softmax"]]) == \
        [["softmax", "relu_softmax", "relu_softmax", "scaling"]]


def test_table_for_another_shape_is_rejected() -> None:
    cfg = model_config("vit_1_4_8", depth=3)  # tokens 17, dim 16, heads 4: TABLE's shape
    check_table_shape(load_cost_table(TABLE), cfg)
    with pytest.raises(UserError, match=r"another model shape \(depth=3 \(model: 1\)\)"):
        check_table_shape(load_cost_table(TABLE), model_config("vit_1_4_8"))


def test_compiler_cost_model_prices_heads_in_the_paper_order() -> None:
    pytest.importorskip("compiler.cost")
    cfg = model_config("vit_2_4_8")
    table = compiler_cost_table(cfg, "replicated-ring")
    assert table.model["tokens"] == 17 and table.protocol == "replicated-ring"
    assert table.attention["softmax"] > table.attention["relu_softmax"] > table.attention["scaling"] > 0
    assert table.mlp["gelu"] > table.mlp["linear"] > 0


def test_mlp_mu_is_checked_even_without_searched_mlps() -> None:
    heads_only, with_mlps = searched_model(np.ones((2, 4))), searched_model(np.ones((2, 4)), search_mlp=True)
    with pytest.raises(UserError, match=r"^--mlp-mu applies to a search of MLP kinds; drop it or search with "):
        binarize(heads_only, 0.5, mlp_mu=0.5)
    with pytest.raises(UserError, match=r"^--mlp-mu must lie in \[0, 1\]"):
        binarize(with_mlps, 0.5, mlp_mu=2.0)
    assert binarize(heads_only, 0.5)[1] == ["gelu", "gelu"] and binarize(with_mlps, 0.5)[1] == ["gelu", "gelu"]
