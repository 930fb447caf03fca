"""Matching loss and FIEM selection (spec §8.10-8.14); soft cross-entropy: tests/test_losses.py."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from padistill.filters.params import param_cut, select_by_loss
from padistill.match.losses import trajectory_distance

P = 1000


def vectors(seed=0, n=P):
    g = torch.Generator().manual_seed(seed)
    start, target, final = (torch.randn(n, generator=g) for _ in range(3))
    return final, start, target


def test_ratio_zero_equals_unmasked_loss_exactly():  # §8.10
    final, start, target = vectors()
    full = ((final - target) ** 2).sum() / ((start - target) ** 2).sum()
    for mode in ("depth", "layer", "loss"):
        cut = param_cut(P, 0.0, mode, boundaries=[0, 100, 500])
        assert torch.equal(trajectory_distance(final, start, target, cut), full)
    assert torch.equal(trajectory_distance(final, start, target, None), full)


@pytest.mark.parametrize("alpha", [0.1, 0.25, 0.5, 0.75])
def test_depth_cut_masks_prefix(alpha):  # §8.11
    cut = param_cut(P, alpha, "depth")
    k = math.floor(alpha * P)
    assert cut.start == k and cut.kept == P - k
    final, start, target = vectors(1)
    ref = trajectory_distance(final, start, target, cut)
    # changing masked positions of any of the three vectors does not change the loss
    noise = torch.randn(k)
    for which in range(3):
        vs = [final.clone(), start.clone(), target.clone()]
        vs[which][:k] += noise
        assert torch.equal(trajectory_distance(vs[0], vs[1], vs[2], cut), ref)
    f = final.clone().requires_grad_(True)
    trajectory_distance(f, start, target, cut).backward()
    assert torch.count_nonzero(f.grad[:k]) == 0
    assert torch.count_nonzero(f.grad[k:]) == P - k


def test_layer_cut_snaps_to_boundary():
    cut = param_cut(P, 0.25, "layer", boundaries=[0, 100, 240, 600])
    assert cut.start == 240  # floor(0.25 * 1000) = 250 -> last boundary <= 250
    with pytest.raises(ValueError, match="boundaries"):
        param_cut(P, 0.25, "layer")


@given(st.floats(0.0, 0.95), st.integers(0, 50))
@settings(max_examples=40, deadline=None)
def test_loss_selection_keeps_largest(beta, seed):  # §8.12
    d = torch.rand(200, generator=torch.Generator().manual_seed(seed))
    keep = select_by_loss(d, beta)
    assert len(keep) == 200 - math.floor(beta * 200)
    dropped = torch.ones(200, dtype=torch.bool)
    dropped[keep] = False
    if dropped.any():
        assert d[keep].min() >= d[dropped].max()


def test_loss_invariant_to_normalisation():  # §8.14
    final, start, target = vectors(2)
    cut = param_cut(P, 0.5)
    a = trajectory_distance(final, start, target, cut)
    d, s = (final - target)[cut.start:] ** 2, (start - target)[cut.start:] ** 2
    assert torch.allclose(a, (d.sum() / P) / (s.sum() / P), rtol=1e-6)


def test_unmoved_student_gives_exactly_one():  # §8.13 (loss part)
    _, start, target = vectors(3)
    for mode, ratio in (("depth", 0.0), ("depth", 0.5), ("loss", 0.3)):
        assert trajectory_distance(start.clone(), start, target, param_cut(P, ratio, mode)).item() == 1.0


def test_deep_mode_drops_the_last_k_parameters():
    """Table 5b: distill.select.mode=deep matches the shallow P - floor(alpha * P) entries, the deep end dropped."""
    P, alpha = 1000, 0.25
    cut = param_cut(P, alpha, "deep")
    k = math.floor(alpha * P)
    assert (cut.start, cut.stop, cut.kept) == (0, P - k, P - k) and not cut.full
    assert param_cut(P, 0.0, "deep").full
    g = torch.Generator().manual_seed(0)
    final, start, target = (torch.randn(P, generator=g) for _ in range(3))
    want = ((final - target) ** 2)[: P - k].sum() / ((start - target) ** 2)[: P - k].sum()
    assert torch.allclose(trajectory_distance(final, start, target, cut), want)
    # the mirror image of depth: changing a dropped (deep) entry leaves the loss unchanged, a kept one does not
    moved = final.clone()
    moved[-1] += 5.0
    assert torch.equal(trajectory_distance(moved, start, target, cut), trajectory_distance(final, start, target, cut))
    moved = final.clone()
    moved[0] += 5.0
    assert not torch.equal(trajectory_distance(moved, start, target, cut),
                           trajectory_distance(final, start, target, cut))
