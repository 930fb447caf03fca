"""DC / DSA gradient matching and PAD's FIEM on it (paper App. A.1)."""

import pytest
import torch

from helpers import tiny_config
from padistill.filters.params import param_cut
from padistill.match.gradient import dc_distance
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


@pytest.mark.parametrize("method", ["dc", "dm"])
def test_feature_matchers_produce_image_gradients(tiny_prepared, method):
    cfg = tiny_config(f"distill.method={method}", "distill.outer_loop=2", "distill.inner_loop=1",
                      "distill.batch_real=16", "distill.select.ratio=0.3", "distill.image_init=real",
                      "distill.label_init=hard", "distill.learn_labels=false", "distill.learn_lr=false")
    import dataclasses

    from padistill.distill.init import init_images, init_labels
    from padistill.distill.loop import build_step
    from padistill.distill.synset import SyntheticSet

    prepared = dataclasses.replace(tiny_prepared, config=cfg)
    step = build_step(cfg, prepared, log=lambda *_: None)[0]
    images, _ = init_images(tiny_prepared, 2, "real", 0, log=lambda *_: None)
    syn = SyntheticSet(images, init_labels(tiny_prepared, images, 2, "hard"), 0.01, 10, cfg.distill)
    seen = []
    info = step(0, syn, lambda grads: seen.append(grads) or "applied")
    assert len(seen) == (2 if method == "dc" else 1)
    assert all(torch.isfinite(s["images"]).all() and s["images"].abs().sum() > 0 for s in seen)
    assert info["loss"] > 0
    if method == "dm":  # 30 % masks all of block 1 of the 2-block net: block 2's kept channels and the logits
        selection = step.keywords["selection"]
        assert [s.name for s in selection] == ["block2", "classifier"] and selection[0].first > 0


def test_dc_inner_network_uses_plain_sgd_at_net_lr_by_default(tiny_prepared, monkeypatch):
    """The official DC code trains the inner network with SGD(lr_net), no momentum; momentum is an option."""
    from padistill.distill.init import init_images, init_labels
    from padistill.distill.loop import build_step
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
        step = build_step(cfg, tiny_prepared, log=lambda *_: None)[0]
        images, _ = init_images(tiny_prepared, 2, "real", 0, log=lambda *_: None)
        syn = SyntheticSet(images, init_labels(tiny_prepared, images, 2, "hard"), 0.01, 10, cfg.distill)
        made.clear()  # the synthetic set's own optimisers
        step(0, syn, lambda g: "applied")
        assert made == [expected]


def test_dc_trains_its_inner_network_between_outer_loops(tiny_prepared):
    """DC alternates: an image update, then `inner_loop` epochs of the network on the synthetic set. The first outer
    loop cannot depend on inner_loop; the second must (a DC that never trains its network would give the same)."""
    from padistill.distill.init import init_images, init_labels
    from padistill.distill.loop import build_step
    from padistill.distill.synset import SyntheticSet

    def grads(inner):
        cfg = tiny_config("distill.method=dc", "distill.outer_loop=2", f"distill.inner_loop={inner}",
                          "distill.batch_real=8", "distill.image_init=real", "distill.label_init=hard",
                          "distill.learn_labels=false", "distill.learn_lr=false")
        step = build_step(cfg, tiny_prepared, log=lambda *_: None)[0]
        images, _ = init_images(tiny_prepared, 2, "real", 0, log=lambda *_: None)
        syn = SyntheticSet(images, init_labels(tiny_prepared, images, 2, "hard"), 0.01, 10, cfg.distill)
        seen = []
        step(0, syn, lambda g: seen.append(g["images"].clone()) or "applied")
        return seen

    untrained, trained = grads(0), grads(3)
    assert torch.equal(untrained[0], trained[0])
    assert not torch.allclose(untrained[1], trained[1])
