"""KD losses against their formulas; the trainer: search moves α, checkpoints, exact resume, mixup path."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from compiler.errors import UserError
from mpcvit.data import DatasetSplits, digits
from mpcvit.models import MPCViT, model_config
from mpcvit.recipes import recipe
from mpcvit.train import trainer
from mpcvit.train import (distillation_loss, evaluate, fit, load_checkpoint, load_weights, model_from_checkpoint,
                          soft_cross_entropy, token_mse)


@pytest.fixture(scope="module")
def small_digits() -> DatasetSplits:
    data = digits()
    data.train_x, data.train_y = data.train_x[:96], data.train_y[:96]
    data.test_x, data.test_y = data.test_x[:64], data.test_y[:64]
    return data


def test_kd_losses_match_formulas() -> None:
    torch.manual_seed(0)
    s, t = torch.randn(4, 10), torch.randn(4, 10)
    T = 2.0
    p = torch.softmax(t / T, -1)
    kl_plus_entropy = (F.kl_div(F.log_softmax(s / T, -1), p, reduction="batchmean") - (p * p.log()).sum(-1).mean())
    assert soft_cross_entropy(s, t, T).item() == pytest.approx((kl_plus_entropy * T * T).item(), rel=1e-5)
    assert soft_cross_entropy(s, t).item() == pytest.approx(-(torch.softmax(t, -1) * torch.log_softmax(s, -1)).sum(-1).mean().item(), rel=1e-6)
    st, tt = torch.randn(4, 17, 8), torch.randn(4, 17, 8)
    assert token_mse(st, tt).item() == pytest.approx(((st - tt) ** 2).mean().item(), rel=1e-6)
    combined = distillation_loss(s, st, t, tt, logit_weight=0.5, token_weight=3.0, temperature=T)
    expected = 0.5 * soft_cross_entropy(s, t, T) + 3.0 * token_mse(st, tt)
    assert combined.item() == pytest.approx(expected.item(), rel=1e-6)
    # float32 losses combined in another order: a few ulps (1.2e-7 relative each), hence rel=1e-6 here and above
    assert distillation_loss(s, st, s, st, 1.0, 1.0).item() == pytest.approx(soft_cross_entropy(s, s).item(), rel=1e-6)


def test_resume_continues_exactly(tmp_path, small_digits, monkeypatch) -> None:
    cfg = model_config("vit_1_4_8", drop_path_rate=0.1)
    train = recipe("digits", epochs=2, batch_size=32)
    torch.manual_seed(0)
    straight = MPCViT(cfg)
    fit(straight, small_digits, train, progress=False)

    # the same run interrupted in epoch 2 (after epoch 1's checkpoint was written) ...
    calls = iter(range(10))

    def evaluate_then_interrupt(model, data):
        if next(calls) == 1:
            raise KeyboardInterrupt
        return evaluate(model, data)

    monkeypatch.setattr(trainer, "evaluate", evaluate_then_interrupt)
    torch.manual_seed(0)
    with pytest.raises(KeyboardInterrupt):
        fit(MPCViT(cfg), small_digits, train, checkpoint=tmp_path / "run.pt", progress=False)
    monkeypatch.undo()
    ckpt = load_checkpoint(tmp_path / "run.pt")
    assert ckpt["epoch"] == 1 and ckpt["head_kinds"] == cfg.head_kinds and ckpt["dataset"]["name"] == "digits"
    assert ckpt["train_config"] == train.to_dict()

    # ... and resumed from that checkpoint ends with bit-identical weights (every epoch reseeds its RNG streams)
    resumed = MPCViT(cfg)
    load_weights(resumed, ckpt)
    result = fit(resumed, small_digits, train, resume=ckpt["resume"], progress=False)
    assert [h["epoch"] for h in result.history] == [1, 2]
    for a, b in zip(straight.state_dict().values(), resumed.state_dict().values()):
        # the same kernels on the same data in the same order give identical weights here; 1e-6 (float32
        # rounding of weights of order 0.1) only allows for a BLAS whose reductions follow thread timing,
        # while a wrong RNG stream or a repeated/skipped epoch moves weights by ~1e-2
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_search_moves_alpha_and_model_checkpoint_roundtrips(tmp_path, small_digits) -> None:
    torch.manual_seed(0)
    model = MPCViT(model_config("vit_1_4_8", search=True))
    result = fit(model, small_digits, recipe("digits", epochs=1, search_lambda=5.0, alpha_lr=0.05),
                 checkpoint=tmp_path / "s.pt", progress=False)
    alpha = model.blocks[0].attn.alpha.detach()
    assert (alpha < 1).all() and (alpha >= 0).all()  # pushed down by the cost, projected onto [0, 1]
    assert 0 <= result.history[-1]["expected_cost"] < 1
    restored = model_from_checkpoint(load_checkpoint(tmp_path / "s.pt"))
    torch.testing.assert_close(restored.blocks[0].attn.alpha, model.blocks[0].attn.alpha)
    assert evaluate(restored, small_digits) == result.test_accuracy


def test_checkpoint_of_another_config_is_rejected(tmp_path, small_digits) -> None:
    model = MPCViT(model_config("vit_1_4_8"))
    fit(model, small_digits, recipe("digits", epochs=1), checkpoint=tmp_path / "c.pt", progress=False)
    with pytest.raises(UserError, match=r"is for model vit_1_4_8 \(depth=1 \(not 2\).*not vit_2_4_8"):
        load_weights(MPCViT(model_config("vit_2_4_8")), load_checkpoint(tmp_path / "c.pt"))
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="cannot be read"):
        load_checkpoint(tmp_path / "junk.pt")


def test_mixup_cutmix_label_smoothing_and_kd_step(small_digits) -> None:
    torch.manual_seed(0)
    teacher = MPCViT(model_config("vit_1_4_8")).eval()
    student = MPCViT(model_config("vit_1_4_8", head_kinds=[["relu_softmax"] * 2 + ["scaling"] * 2]))
    before = student.head.weight.detach().clone()
    cfg = recipe("digits", epochs=1, mixup=0.8, cutmix=1.0, label_smoothing=0.1, random_shift=1,
                 kd_logit_weight=1.0, kd_token_weight=1.0)
    result = fit(student, small_digits, cfg, teacher=teacher, progress=False)
    assert torch.isfinite(torch.tensor(result.history[0]["train_loss"]))
    assert not torch.equal(before, student.head.weight)
