"""GSAM (spec §1.2 steps 1-6, invariant §8.7)."""

import copy

import pytest
import torch
import torch.nn.functional as F

from padistill.experts.gsam import GSAM
from padistill.nets import build
from padistill.training import train_epoch
from padistill.utils.rng import generator


def net(seed=0, norm="instance"):
    return build("convnet-2", num_classes=4, channels=3, im_size=8, seed=seed, width=8, norm=norm)


def batch(seed=0, n=16):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 8, 8, generator=g), torch.randint(0, 4, (n,), generator=g)


def grads_at(model, params, x, y):
    """Gradient of the batch-mean CE at `params` (list of tensors), without touching the model."""
    from torch.func import functional_call

    names = [n for n, _ in model.named_parameters()]
    ps = [p.detach().clone().requires_grad_(True) for p in params]
    loss = F.cross_entropy(functional_call(model, dict(zip(names, ps)), (x,)), y)
    return list(torch.autograd.grad(loss, ps))


def closure_for(opt, model, x, y):
    def closure():
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        return loss.detach()
    return closure


def flat(ts):
    return torch.cat([t.reshape(-1) for t in ts])


def test_rho_alpha_zero_is_exactly_sgd_through_the_training_loop(tiny_prepared):
    """§8.7: rho = alpha = 0 -> bit-identical to plain SGD (momentum, weight decay, DSA, micro-batches)."""
    from padistill.augment import DSA
    from padistill.context import build_net

    x, y = tiny_prepared.x_train[:400], tiny_prepared.y_train[:400]
    results = []
    for kind in ("sgd", "gsam"):
        model = build_net(tiny_prepared, seed=5)
        kw = dict(lr=0.05, momentum=0.9, weight_decay=5e-4)
        opt = (torch.optim.SGD(model.parameters(), **kw) if kind == "sgd"
               else GSAM(model.parameters(), rho=0.0, alpha=0.0, adaptive=True, model=model, **kw))
        g = generator(0, "gsam-test")
        for _ in range(2):
            train_epoch(model, opt, x, y, batch=64, generator=g, augment=DSA(), microbatch=32)
        results.append(flat([p.detach() for p in model.parameters()]))
    assert torch.equal(results[0], results[1])


@pytest.mark.parametrize("adaptive", [True, False])
def test_alpha_zero_is_sam_asam_at_the_perturbed_point(adaptive):
    """§8.7: alpha = 0 -> w - lr * grad L(w + e), e the (adaptive) SAM perturbation."""
    model = net(1)
    x, y = batch(1)
    w = [p.detach().clone() for p in model.parameters()]
    rho, lr = 0.05, 0.1
    g = grads_at(model, w, x, y)
    if adaptive:
        norm = flat([wi.abs() * gi for wi, gi in zip(w, g)]).norm()
        e = [rho * wi.square() * gi / (norm + 1e-12) for wi, gi in zip(w, g)]
    else:
        e = [rho * gi / (flat(g).norm() + 1e-12) for gi in g]
    g2 = grads_at(model, [wi + ei for wi, ei in zip(w, e)], x, y)
    expected = flat([wi - lr * gi for wi, gi in zip(w, g2)])
    opt = GSAM(model.parameters(), lr=lr, rho=rho, alpha=0.0, adaptive=adaptive, model=model)
    opt.step(closure_for(opt, model, x, y))
    got = flat([p.detach() for p in model.parameters()])
    assert (got - expected).abs().max() <= 1e-7
    assert not torch.allclose(expected, flat(w) - lr * flat(g), atol=1e-7)  # and it is not plain SGD


def test_full_gsam_update_matches_the_decomposition():
    """Steps 1-6 with alpha > 0: g* = g' - alpha (g - cos(g, g') ||g|| g' / ||g'||); w restored before the step."""
    model = net(2)
    x, y = batch(2)
    w = [p.detach().clone() for p in model.parameters()]
    rho, alpha, lr = 0.05, 0.3, 0.1
    g = flat(grads_at(model, w, x, y))
    wf = flat(w)
    e = rho * wf.square() * g / ((wf.abs() * g).norm() + 1e-12)
    shapes = [p.shape for p in w]
    parts = torch.split(wf + e, [s.numel() for s in shapes])
    g2 = flat(grads_at(model, [t.reshape(s) for t, s in zip(parts, shapes)], x, y))
    cos = (g @ g2) / (g.norm() * g2.norm())
    v = g - cos * g.norm() * g2 / g2.norm()
    expected = wf - lr * (g2 - alpha * v)
    opt = GSAM(model.parameters(), lr=lr, rho=rho, alpha=alpha, adaptive=True, model=model)
    loss = opt.step(closure_for(opt, model, x, y))
    with torch.no_grad():
        loss_at_w = float(F.cross_entropy(build_like(model, w)(x), y))
    got = flat([p.detach() for p in model.parameters()])
    assert (got - expected).abs().max() <= 1e-6
    assert float(loss) == pytest.approx(loss_at_w, rel=1e-6)  # the step reports the loss at w
    assert abs(float(v @ g2)) < 1e-5 * float(g.norm() * g2.norm())  # v is orthogonal to g'


def build_like(model, params):
    clone = net(0)
    with torch.no_grad():
        for p, q in zip(clone.parameters(), params):
            p.copy_(q)
    return clone


def test_batchnorm_momentum_is_zero_in_the_perturbed_pass_and_restored():
    model = net(3, norm="batch")
    model.train()
    x, y = batch(3)
    ref = net(3, norm="batch")
    ref.train()
    ref(x)  # one ordinary forward pass: what the running statistics should see
    opt = GSAM(model.parameters(), lr=0.1, rho=0.05, alpha=0.3, model=model)
    opt.step(closure_for(opt, model, x, y))
    bn = model.features[1]
    assert bn.momentum == ref.features[1].momentum == 0.1
    assert torch.allclose(bn.running_mean, ref.features[1].running_mean, atol=1e-7)
    assert torch.allclose(bn.running_var, ref.features[1].running_var, atol=1e-7)


def test_state_dict_round_trip_and_closure_required():
    model = net(4)
    x, y = batch(4)
    opt = GSAM(model.parameters(), lr=0.1, momentum=0.9, rho=0.05, alpha=0.3, model=model)
    opt.step(closure_for(opt, model, x, y))
    state = opt.state_dict()
    assert any("momentum_buffer" in s for s in state["state"].values())
    twin = net(4)
    with torch.no_grad():
        for p, q in zip(twin.parameters(), model.parameters()):
            p.copy_(q)
    opt2 = GSAM(twin.parameters(), lr=0.1, momentum=0.9, rho=0.05, alpha=0.3, model=twin)
    opt2.load_state_dict(copy.deepcopy(state))  # (a saved state is a copy; state_dict() returns live buffers)
    assert opt2.param_groups is opt2.base.param_groups
    opt.step(closure_for(opt, model, x, y))
    opt2.step(closure_for(opt2, twin, x, y))
    assert torch.equal(flat([p.detach() for p in model.parameters()]), flat([p.detach() for p in twin.parameters()]))
    with pytest.raises(RuntimeError, match="needs a closure"):
        opt.step()
    with pytest.raises(ValueError, match="rho and alpha"):
        GSAM(model.parameters(), lr=0.1, rho=-1.0)
    assert GSAM.needs_closure is True
