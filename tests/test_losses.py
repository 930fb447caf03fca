"""Classification losses shared by training, evaluation and the matchers (padistill.losses)."""

import pytest
import torch
import torch.nn.functional as F

from padistill.losses import kd_loss, label_loss, soft_cross_entropy


def test_soft_ce_matches_hard_ce_for_peaked_targets():  # §8.20
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(16, 10, generator=g)
    y = torch.randint(0, 10, (16,), generator=g)
    peaked = F.one_hot(y, 10).float() * 1e4
    assert torch.allclose(soft_cross_entropy(logits, peaked), F.cross_entropy(logits, y), atol=1e-6)
    t = torch.randn(16, 10, generator=g, requires_grad=True)
    soft_cross_entropy(logits, t).backward()
    assert torch.isfinite(t.grad).all() and t.grad.abs().sum() > 0


def test_kd_loss_is_zero_at_the_teacher_and_scaled_by_t_squared():
    t = torch.randn(5, 4)
    assert float(kd_loss(4.0)(t, t)) == pytest.approx(0.0, abs=1e-6)
    s = torch.randn(5, 4)
    # KL at temperature 1 equals the loss with T = 1; at T the value carries T^2
    p, q = torch.softmax(t, 1), torch.log_softmax(s, 1)
    kl = (p * (p.log() - q)).sum(1).mean()
    assert float(kd_loss(1.0)(s, t)) == pytest.approx(float(kl), rel=1e-5)
    pt, qt = torch.softmax(t / 2, 1), torch.log_softmax(s / 2, 1)
    assert float(kd_loss(2.0)(s, t, reduction="sum")) == pytest.approx(float(4 * (pt * (pt.log() - qt)).sum()),
                                                                       rel=1e-5)


@pytest.mark.parametrize("loss", [soft_cross_entropy, label_loss, kd_loss(3.0)])
def test_one_reduction_switch(loss):
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(6, 5, generator=g), torch.randn(6, 5, generator=g)
    per = loss(s, t, reduction="none")
    assert per.shape == (6,)
    assert torch.allclose(loss(s, t, reduction="sum"), per.sum())
    assert torch.allclose(loss(s, t), per.mean())


def test_label_loss_is_hard_ce_for_class_targets():
    s, y = torch.randn(4, 3), torch.tensor([0, 2, 1, 1])
    assert torch.equal(label_loss(s, y, reduction="sum"), F.cross_entropy(s, y, reduction="sum"))
