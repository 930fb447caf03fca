"""DC / DM matchers and PAD's filters on them (issue 6; paper App. A.1)."""

import pytest
import torch

from helpers import tiny_config
from padistill.filters.params import param_cut
from padistill.match.feature import _ClassPools, build_feature_matcher, dc_distance
from padistill.nets import build, param_layout


def grads_of(net, x, y):
    return list(torch.autograd.grad(torch.nn.functional.cross_entropy(net(x), y), list(net.parameters())))


@pytest.mark.parametrize("alpha", [0.0, 0.25, 0.5])
def test_dc_distance_ignores_masked_parameters(alpha):
    net = build("convnet-2", num_classes=4, channels=3, im_size=(8, 8), seed=0, width=8)
    L = param_layout(net)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(6, 3, 8, 8, generator=g), torch.randint(0, 4, (6,), generator=g)
    g_real = grads_of(net, x, y)
    g_syn = [t.clone().requires_grad_(True) for t in grads_of(net, x.flip(0), y)]
    cut = param_cut(L.total, alpha)
    dist = dc_distance(g_syn, g_real, L.offsets, cut)
    dist.backward()
    flat_grad = torch.cat([t.grad.reshape(-1) if t.grad is not None else torch.zeros(t.numel()) for t in g_syn])
    assert torch.count_nonzero(flat_grad[:cut.start]) == 0  # masked (shallow) entries get no gradient
    assert torch.count_nonzero(flat_grad[cut.start:]) > 0
    # changing masked entries of either gradient leaves the distance unchanged
    bumped = [t.detach().clone() for t in g_real]
    flat = torch.cat([t.reshape(-1) for t in bumped])
    flat[:cut.start] += 1.0
    bumped = list(L.split(flat))
    assert torch.allclose(dc_distance([t.detach() for t in g_syn], bumped, L.offsets, cut), dist.detach())


def test_dc_distance_matches_cosine_formula_without_cut():
    a = [torch.randn(5, 3, 3, 3), torch.randn(5), torch.randn(2, 20)]
    b = [torch.randn(5, 3, 3, 3), torch.randn(5), torch.randn(2, 20)]
    offsets = [0, 135, 140]
    expected = 0.0
    for ga, gb in ((a[0].reshape(5, -1), b[0].reshape(5, -1)), (a[2], b[2])):
        expected += (1 - (ga * gb).sum(1) / (ga.norm(dim=1) * gb.norm(dim=1) + 1e-6)).sum()
    assert torch.allclose(dc_distance(a, b, offsets, None), expected)


def test_pruned_samples_are_never_drawn(tiny_prepared):
    p = tiny_prepared
    from padistill.filters.schedule import prune_ordering

    n = min(len(i) for i in p.class_indices())
    ordering = torch.stack([idx[:n] for idx in p.class_indices()])
    kept = prune_ordering(ordering, "hard", 0.5)
    pools = _ClassPools(p, kept)
    g = torch.Generator().manual_seed(0)
    allowed = set(kept.reshape(-1).tolist())
    for c in range(p.num_classes):
        for _ in range(5):
            batch = pools.batch(c, 40, g)
            # identify drawn rows by exact image equality with the training set
            idx = [int((p.x_train == b).flatten(1).all(1).nonzero()[0]) for b in batch]
            assert set(idx) <= allowed


@pytest.mark.parametrize("method", ["dc", "dm"])
def test_feature_matchers_produce_image_gradients(tiny_prepared, method):
    cfg = tiny_config(f"distill.method={method}", "distill.outer_loop=2", "distill.inner_loop=1",
                      "distill.batch_real=16", "distill.select.ratio=0.3", "distill.image_init=real",
                      "distill.label_init=hard", "distill.learn_labels=false", "distill.learn_lr=false")
    from padistill.augment import DSA
    from padistill.context import build_net
    from padistill.distill.init import init_images, init_labels
    from padistill.distill.synset import SyntheticSet

    net = build_net(tiny_prepared, seed=0)
    cut = param_cut(param_layout(net).total, 0.3)
    matcher = build_feature_matcher(cfg, tiny_prepared, DSA(), cut, log=lambda *_: None)
    images, _ = init_images(tiny_prepared, 2, "real", 0, log=lambda *_: None)
    syn = SyntheticSet(images, init_labels(tiny_prepared, images, 2, "hard"), 0.01, 10, cfg.distill)
    seen = []
    info = matcher.step(0, syn, lambda grads: seen.append(grads) or "applied")
    assert len(seen) == (2 if method == "dc" else 1)
    assert all(torch.isfinite(s["images"]).all() and s["images"].abs().sum() > 0 for s in seen)
    assert info["loss"] > 0
    if method == "dm":
        assert matcher.layer_names and "block1" not in matcher.layer_names  # 30% masks all of block 1


@pytest.mark.parametrize("shape", [(10, 32), (100, 32), (200, 64)], ids=["cifar10", "cifar100", "tiny"])
def test_dm_alphas_give_four_different_image_gradients_on_convnet_d3(shape):
    """Table 7b's ratios are four different objectives; alpha 0 is plain DM's embedding distance, bit for bit."""
    from padistill.filters.params import dm_feature_selection
    from padistill.match.feature import distribution_distance

    classes, size = shape
    net = build("convnet", num_classes=classes, channels=3, im_size=(size, size), seed=0)
    for p in net.parameters():
        p.requires_grad_(False)
    g = torch.Generator().manual_seed(0)
    real = torch.randn(4, 3, size, size, generator=g)
    syn0 = torch.randn(2, 3, size, size, generator=g)
    grads = []
    for alpha in (0.0, 0.25, 0.5, 0.75):
        syn = syn0.clone().requires_grad_(True)
        loss = distribution_distance(net, real, syn, dm_feature_selection(net, "depth", alpha))
        (gi,) = torch.autograd.grad(loss, syn)
        assert torch.isfinite(gi).all() and gi.abs().sum() > 0
        grads.append(gi)
    for i in range(4):
        for j in range(i + 1, 4):
            assert not torch.equal(grads[i], grads[j]), (i, j)
    # plain DM as the published code computes it
    syn = syn0.clone().requires_grad_(True)
    with torch.no_grad():
        er = net.embed(real).mean(0)
    (plain,) = torch.autograd.grad(((er - net.embed(syn).mean(0)) ** 2).sum(), syn)
    assert torch.equal(grads[0], plain)


def test_dm_matcher_alphas_differ_end_to_end(tiny_prepared):
    """The matcher on a 3-block ConvNet: alpha 0.5 and 0.75 are not plain DM (before issue 15 they were)."""
    import dataclasses

    from padistill.distill.init import init_images, init_labels
    from padistill.distill.synset import SyntheticSet

    grads = {}
    for alpha in (0.0, 0.25, 0.5, 0.75):
        cfg = tiny_config("distill.method=dm", "net.name=convnet", "net.options={width: 16}",
                          "distill.batch_real=16", f"distill.select.ratio={alpha}", "distill.image_init=real",
                          "distill.label_init=hard", "distill.learn_labels=false", "distill.learn_lr=false")
        prepared = dataclasses.replace(tiny_prepared, config=cfg)
        from padistill.context import build_net

        cut = param_cut(param_layout(build_net(prepared, seed=0)).total, alpha)
        matcher = build_feature_matcher(cfg, prepared, None, cut, log=lambda *_: None)
        images, _ = init_images(prepared, 2, "real", 0, log=lambda *_: None)
        syn = SyntheticSet(images, init_labels(prepared, images, 2, "hard"), 0.01, 10, cfg.distill)
        seen = []
        matcher.step(0, syn, lambda g, seen=seen: seen.append(g["images"]) or "applied")
        grads[alpha] = seen[0]
    values = list(grads.values())
    assert all(not torch.equal(values[i], values[j]) for i in range(4) for j in range(i + 1, 4))


def test_dc_inner_network_uses_plain_sgd_at_net_lr_by_default(tiny_prepared, monkeypatch):
    """The official DC code trains the inner network with SGD(lr_net), no momentum; momentum is an option."""
    from padistill.distill.init import init_images, init_labels
    from padistill.distill.synset import SyntheticSet

    made = []
    real_sgd = torch.optim.SGD

    class RecordingSGD(real_sgd):
        def __init__(self, params, lr, momentum=0.0, **kw):
            made.append((lr, momentum))
            super().__init__(params, lr=lr, momentum=momentum, **kw)

    monkeypatch.setattr(torch.optim, "SGD", RecordingSGD)
    for extra, expected in (((), (0.02, 0.0)), (("distill.net_momentum=0.5",), (0.02, 0.5))):
        made.clear()
        cfg = tiny_config("distill.method=dc", "distill.outer_loop=2", "distill.inner_loop=1", "distill.net_lr=0.02",
                          "distill.batch_real=8", "distill.image_init=real", "distill.label_init=hard",
                          "distill.learn_labels=false", "distill.learn_lr=false", *extra)
        cut = param_cut(param_layout(build("convnet-2", num_classes=10, channels=1, im_size=(8, 8), width=8)).total, 0)
        matcher = build_feature_matcher(cfg, tiny_prepared, None, cut, log=lambda *_: None)
        images, _ = init_images(tiny_prepared, 2, "real", 0, log=lambda *_: None)
        syn = SyntheticSet(images, init_labels(tiny_prepared, images, 2, "hard"), 0.01, 10, cfg.distill)
        made.clear()  # the synthetic set's own optimisers
        matcher.step(0, syn, lambda g: "applied")
        assert made == [expected]
