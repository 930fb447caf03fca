"""The unrolled student and its exact gradients (spec §3.6, §8.13, §8.15, §8.16).

Tolerance of the bounded-memory (recompute) gradient against the full-graph (plain) one: relative
L2 error < 1e-5 per tensor (observed ~6e-7 in float32): both compute the same sums in a different order.
"""

import math

import pytest
import torch

from padistill.augment import DSA
from padistill.filters.params import param_cut
from padistill.losses import soft_cross_entropy
from padistill.match.trajectory import Student, make_plan, match_trajectory
from padistill.nets import build, param_layout
from padistill.utils.rng import generator

RTOL = 1e-5


def setup(seed=0, n=20, classes=10, norm=None, width=16):
    name = "convnet-2-bn" if norm == "batch" else "convnet-2"
    m = build(name, num_classes=classes, channels=3, im_size=(16, 16), seed=seed, width=width)
    L = param_layout(m)
    g = torch.Generator().manual_seed(seed + 1)
    theta0 = L.flatten([p.detach() for p in m.parameters()])
    target = theta0 + 0.02 * torch.randn(theta0.shape, generator=g)
    images = torch.randn(n, 3, 16, 16, generator=g)
    labels = torch.randn(n, classes, generator=g)
    return m, L, theta0, target, images, labels


def rel(a, b):
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("n,batch,steps", [(20, 8, 7), (10, 10, 4), (7, 3, 5)])
def test_plan_visits_every_index_once_per_pass(n, batch, steps):  # §8.16
    plan = make_plan(n, batch, steps, None, (16, 16), generator(0, "plan"))
    per_pass = math.ceil(n / batch)
    assert len(plan.batches) == steps
    for p in range(steps // per_pass):
        seen = torch.cat(plan.batches[p * per_pass:(p + 1) * per_pass])
        assert sorted(seen.tolist()) == list(range(n))
    assert all(len(b) <= batch for b in plan.batches)


def test_one_step_equals_hand_computation():  # §8.15
    m, L, theta0, target, images, labels = setup()
    lr = torch.tensor(0.05)
    plan = make_plan(len(images), None, 1, None, (16, 16), generator(0, "p"))
    st = Student(m, L, augment=None, microbatch=None)
    res = match_trajectory(st, theta0, target, images, labels, lr, plan, None, mode="plain")
    th = theta0.clone().requires_grad_(True)
    loss = soft_cross_entropy(L.functional_forward(m, th, images[plan.batches[0]]), labels[plan.batches[0]])
    (g,) = torch.autograd.grad(loss, th)
    expected = theta0 - 0.05 * g
    assert torch.allclose(res.final, expected, atol=1e-7, rtol=1e-6)
    for k in ("images", "labels", "lr"):
        assert torch.isfinite(res.grads[k]).all() and res.grads[k].abs().sum() > 0


@pytest.mark.parametrize("alpha,mode", [(0.0, "depth"), (0.25, "depth"), (0.5, "layer"), (0.3, "loss")])
@pytest.mark.parametrize("microbatch", [None, 6])
def test_recompute_equals_plain(alpha, mode, microbatch):
    m, L, theta0, target, images, labels = setup(seed=3)
    lr = torch.tensor(0.02)
    aug = DSA()
    cut = param_cut(L.total, alpha, mode, boundaries=[a for _, a, _ in L.layer_ranges()])
    st = Student(m, L, aug, microbatch=microbatch)
    plan = make_plan(len(images), 8, 6, aug, (16, 16), generator(1, "p"))
    a = match_trajectory(st, theta0, target, images, labels, lr, plan, cut, mode="plain")
    b = match_trajectory(st, theta0, target, images, labels, lr, plan, cut, mode="recompute")
    assert a.loss == pytest.approx(b.loss, rel=1e-6)
    assert rel(b.final, a.final) < 1e-6
    for k in ("images", "labels", "lr"):
        assert rel(b.grads[k], a.grads[k]) < RTOL, k


def test_microbatching_does_not_change_the_gradient():
    m, L, theta0, target, images, labels = setup(seed=4)
    lr = torch.tensor(0.02)
    plan = make_plan(len(images), None, 4, None, (16, 16), generator(2, "p"))
    whole = match_trajectory(Student(m, L, None, None), theta0, target, images, labels, lr, plan, None)
    split = match_trajectory(Student(m, L, None, 3), theta0, target, images, labels, lr, plan, None)
    for k in ("images", "labels", "lr"):
        assert rel(split.grads[k], whole.grads[k]) < RTOL


def test_batchnorm_student_never_microbatches():
    m, L, *_ = setup(norm="batch")
    assert Student(m, L, None, microbatch=4).chunks(20) == [(0, 20)]


def test_threshold_gates_the_update():  # §8.13
    m, L, theta0, target, images, labels = setup(seed=5)
    plan = make_plan(len(images), None, 3, None, (16, 16), generator(3, "p"))
    st = Student(m, L, None, None)
    zero_lr = torch.tensor(0.0)
    r = match_trajectory(st, theta0, target, images, labels, zero_lr, plan, param_cut(L.total, 0.5),
                         threshold=1.0)
    assert r.loss == 1.0 and r.grads is not None  # <= threshold: applied
    r = match_trajectory(st, theta0, target, images, labels, zero_lr, plan, None, threshold=0.99)
    assert r.loss == 1.0 and r.grads is None  # > threshold: skipped, no gradient computed


def test_hard_labels_are_not_learned():
    m, L, theta0, target, images, _ = setup(seed=6)
    y = torch.arange(10).repeat_interleave(2)
    plan = make_plan(len(images), None, 2, None, (16, 16), generator(4, "p"))
    r = match_trajectory(Student(m, L, None, None), theta0, target, images, y, torch.tensor(0.01), plan, None)
    assert set(r.grads) == {"images", "lr"}


def _matcher(m, L, unroll, budget, steps=5):
    from types import SimpleNamespace

    from padistill.match.trajectory import TrajectoryMatcher

    d = SimpleNamespace(unroll=unroll, unroll_budget_gib=budget, syn_steps=steps)
    messages = []
    tm = TrajectoryMatcher(d, None, Student(m, L, DSA(), microbatch=6), None, 0, 20, (16, 16), log=messages.append)
    return tm, messages


def test_step_graph_bytes_counts_what_one_step_keeps():
    m, L, theta0, _, images, labels = setup(seed=7)
    st = Student(m, L, DSA(), microbatch=6)
    plan = make_plan(len(images), None, 1, st.augment, (16, 16), generator(5, "p"))
    lr = torch.tensor(0.01)
    full = st.step_graph_bytes(theta0, images, labels, lr, plan.batches[0], plan.draws[0])
    half_idx = plan.batches[0][:10]
    half = st.step_graph_bytes(theta0, images, labels, lr, half_idx, plan.draws[0].take(0, 10))
    # at least the first conv's output (width 16, 16x16) for every image, kept by norm and conv backward
    assert full >= 20 * 16 * 16 * 16 * 4
    # activations dominate: half the batch keeps about half the bytes (the parameters are a fixed part)
    assert 1.6 < full / half < 2.1
    assert st.step_graph_bytes(theta0, images, labels, lr, plan.batches[0], plan.draws[0]) == full  # shapes only
    one = st.step_graph_bytes(theta0, images, labels, lr, plan.batches[0][:1], plan.draws[0].take(0, 1))
    assert theta0.numel() * 4 <= one < half  # the step's parameters are kept once, whatever the batch


def test_auto_unroll_picks_plain_within_budget_else_recompute():
    m, L, theta0, _, images, labels = setup(seed=8)
    syn = type("Syn", (), {"images": images, "labels": labels, "syn_lr": torch.tensor(0.01)})()
    plan = make_plan(len(images), None, 5, DSA(), (16, 16), generator(6, "p"))
    big, msg = _matcher(m, L, "auto", 4.0)
    assert big.unroll_mode(theta0, syn, plan) == "plain"
    assert "auto -> plain" in msg[0] and "unroll_budget_gib = 4" in msg[0]
    assert big.unroll_mode(theta0, syn, plan) == "plain" and len(msg) == 1  # resolved once
    tiny, msg = _matcher(m, L, "auto", 0.001)  # ~1 MiB: a 5-step graph of 20 images does not fit
    assert tiny.unroll_mode(theta0, syn, plan) == "recompute" and "auto -> recompute" in msg[0]
    for mode in ("plain", "recompute"):  # explicit modes are taken as they are, nothing measured
        tm, msg = _matcher(m, L, mode, 0.0)
        assert tm.unroll_mode(theta0, syn, plan) == mode and msg == []


def test_unroll_config_choices_and_budget_are_validated():
    from padistill.config import Config, validate
    from padistill.errors import PadistillError

    cfg = Config()
    assert cfg.distill.unroll == "auto"
    cfg.distill.unroll = "full"
    with pytest.raises(PadistillError, match="distill.unroll"):
        validate(cfg)
    cfg = Config()
    cfg.distill.unroll_budget_gib = -1.0
    with pytest.raises(PadistillError, match="distill.unroll_budget_gib"):
        validate(cfg)


def test_auto_unroll_with_hard_labels():  # MTT: class indices, nothing to learn in the labels
    m, L, theta0, _, images, _ = setup(seed=9)
    hard = torch.arange(10).repeat_interleave(2)
    syn = type("Syn", (), {"images": images, "labels": hard, "syn_lr": torch.tensor(0.01)})()
    plan = make_plan(len(images), None, 5, DSA(), (16, 16), generator(7, "p"))
    tm, msg = _matcher(m, L, "auto", 4.0)
    assert tm.unroll_mode(theta0, syn, plan) == "plain" and len(msg) == 1
    r = match_trajectory(tm.student, theta0, theta0 + 0.01, images, hard, torch.tensor(0.01), plan, None,
                         mode=tm.unroll_mode(theta0, syn, plan))
    assert set(r.grads) == {"images", "lr"}
