"""The fast instance norm (nets/fast_norm.py) against nn.GroupNorm(C, C): forward, backward and the
hand-written double backward, gradcheck / gradgradcheck, state_dict interchange, the switch back to
GroupNorm, and the student's double backward through a whole ConvNet."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from helpers import student_double_backward
from padistill.nets import build, param_layout
from padistill.nets.common import NATIVE_NORM_ENV, make_norm
from padistill.nets.fast_norm import InstanceNorm, instance_norm

# Shapes: 2-D maps, a 1x1 map (rstd = 1/sqrt(eps)), a single sample, 1-D and 3-D spatial dims.
SHAPES = [(3, 4, 5, 5), (2, 3, 1, 1), (1, 4, 3, 3), (2, 3, 7), (2, 2, 3, 2, 2)]
TOL = {torch.float64: dict(rtol=1e-9, atol=1e-10), torch.float32: dict(rtol=1e-5, atol=1e-5)}


def _pair(c: int, dtype, seed: int = 0):
    """An InstanceNorm and a GroupNorm with the same random (non-trivial) affine parameters."""
    g = torch.Generator().manual_seed(seed)
    fast, ref = InstanceNorm(c).to(dtype), nn.GroupNorm(c, c).to(dtype)
    with torch.no_grad():
        fast.weight.copy_(torch.randn(c, generator=g, dtype=dtype))
        fast.bias.copy_(torch.randn(c, generator=g, dtype=dtype))
    ref.load_state_dict(fast.state_dict())
    return fast, ref


def _inputs(shape, dtype, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    # A per-channel offset and scale, so that the statistics matter.
    x = torch.randn(shape, generator=g, dtype=dtype) * 3 + torch.randn(shape[:2], generator=g, dtype=dtype).view(
        *shape[:2], *[1] * (len(shape) - 2))
    return [x] + [torch.randn(shape, generator=g, dtype=dtype) for _ in range(2)]


def _second_order(norm: nn.Module, x0, r0, vx0, wrt_first: str = "xwb"):
    """First gradient with create_graph (of sum(y * r)), then the gradient of a random linear function
    of it w.r.t. x, the parameters and r (r plays dy: it makes the first backward's input a variable)."""
    x = x0.clone().requires_grad_(True)
    r = r0.clone().requires_grad_(True)
    y = norm(x)
    first = {"x": x, "w": norm.weight, "b": norm.bias}
    wrt = [first[k] for k in wrt_first]
    grads = torch.autograd.grad((y * r).sum(), wrt, create_graph=True)
    g = torch.Generator().manual_seed(7)
    s = sum((gr * (vx0 if gr.shape == x0.shape else torch.randn(gr.shape, generator=g, dtype=gr.dtype))).sum()
             for gr in grads)
    second = torch.autograd.grad(s, [x, norm.weight, norm.bias, r], allow_unused=True)
    return [y.detach()] + [gr.detach() for gr in grads] + [
        torch.zeros_like(t) if s_ is None else s_ for s_, t in zip(second, [x, norm.weight, norm.bias, r])]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("shape", SHAPES)
def test_matches_groupnorm_to_second_order(shape, dtype):
    if dtype == torch.float32 and shape[2:] == (1, 1):
        # 1x1 maps: the exact x-derivatives are 0 and both sides return float32 rounding noise scaled
        # by rstd^2 = 1/eps; float64 checks this case.
        pytest.skip("float32 rounding noise only")
    fast, ref = _pair(shape[1], dtype)
    x, r, vx = _inputs(shape, dtype)
    for got, want in zip(_second_order(fast, x, r, vx), _second_order(ref, x, r, vx)):
        scale = want.abs().max().clamp_min(1.0)  # relative to the tensor's own magnitude
        torch.testing.assert_close(got / scale, want / scale, **TOL[dtype])


@pytest.mark.parametrize("wrt", ["x", "w", "b", "wb", "xb"])
def test_partial_first_gradients(wrt):
    """Cotangents of some backward outputs are absent (None, not zero tensors) in the double backward."""
    fast, ref = _pair(4, torch.float64)
    x, r, vx = _inputs((2, 4, 3, 5), torch.float64)
    for got, want in zip(_second_order(fast, x, r, vx, wrt), _second_order(ref, x, r, vx, wrt)):
        torch.testing.assert_close(got, want, **TOL[torch.float64])


@pytest.mark.parametrize("wrt", ["xwb", "x", "wb"])
def test_first_order_without_create_graph(wrt):
    """Plain backward (training steps) runs GroupNorm's own kernel: same numbers, partial masks."""
    fast, ref = _pair(4, torch.float32)
    x0, r, _ = _inputs((3, 4, 6, 6), torch.float32)
    out = []
    for norm in (fast, ref):
        x = x0.clone().requires_grad_("x" in wrt)
        for name, p in (("w", norm.weight), ("b", norm.bias)):
            p.requires_grad_(name in wrt)
        inputs = [t for t in (x, norm.weight, norm.bias) if t.requires_grad]
        out.append(torch.autograd.grad((norm(x) * r).sum(), inputs))
    for got, want in zip(*out):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)


def test_gradcheck_and_gradgradcheck_float64():
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(2, 3, 3, 4, generator=g, dtype=torch.float64) * 2 + 1).requires_grad_(True)
    w = torch.randn(3, generator=g, dtype=torch.float64).requires_grad_(True)
    b = torch.randn(3, generator=g, dtype=torch.float64).requires_grad_(True)
    assert torch.autograd.gradcheck(instance_norm, (x, w, b))
    assert torch.autograd.gradgradcheck(instance_norm, (x, w, b))
    # A 1x1 map: the output is the bias, every derivative w.r.t. x vanishes.
    x1 = torch.randn(2, 3, 1, 1, generator=g, dtype=torch.float64).requires_grad_(True)
    assert torch.autograd.gradgradcheck(instance_norm, (x1, w, b))


def test_non_contiguous_input_keeps_the_graph():
    """A channels-last / transposed input is made contiguous outside the Function, so the second
    derivative still reaches the original tensor."""
    fast, ref = _pair(4, torch.float64)
    x, r, vx = _inputs((2, 4, 5, 6), torch.float64)
    x_t = x.transpose(2, 3).contiguous().transpose(2, 3)  # same values, non-contiguous strides
    assert not x_t.is_contiguous()
    for got, want in zip(_second_order(fast, x_t, r, vx), _second_order(ref, x, r, vx)):
        torch.testing.assert_close(got, want, **TOL[torch.float64])


def test_state_dict_is_groupnorms():
    fast, ref = _pair(5, torch.float32)
    assert isinstance(fast, nn.GroupNorm) and fast.num_groups == fast.num_channels == 5 and fast.eps == 1e-5
    assert list(fast.state_dict()) == list(ref.state_dict()) == ["weight", "bias"]
    back = InstanceNorm(5)
    back.load_state_dict(ref.state_dict())
    x = _inputs((2, 5, 4, 4), torch.float32)[0]
    with torch.no_grad():
        torch.testing.assert_close(back(x), ref(x), rtol=1e-6, atol=1e-6)
    with torch.no_grad():  # non-default affine values, so that loading them is visible in the output
        fast.weight.copy_(torch.linspace(0.5, 1.5, 5))
        fast.bias.copy_(torch.linspace(-1.0, 1.0, 5))
    plain = nn.GroupNorm(5, 5)
    plain.load_state_dict(fast.state_dict())  # strict: raises on a missing or extra key
    assert torch.equal(plain.weight, fast.weight) and torch.equal(plain.bias, fast.bias)
    with torch.no_grad():
        torch.testing.assert_close(plain(x), fast(x), rtol=1e-6, atol=1e-6)
        assert not torch.allclose(plain(x), ref(x), atol=1e-3)  # the loaded affine parameters took effect


def test_switch_and_fallbacks(monkeypatch):
    assert type(make_norm("instance", 8)) is InstanceNorm
    assert type(make_norm("instance", 8, native=True)) is nn.GroupNorm
    monkeypatch.setenv(NATIVE_NORM_ENV, "1")
    assert type(make_norm("instance", 8)) is nn.GroupNorm
    assert type(build("convnet", 10, 3, 8).features[1]) is nn.GroupNorm
    assert type(make_norm("instance", 8, native=False)) is InstanceNorm
    monkeypatch.delenv(NATIVE_NORM_ENV)
    fast, ref = _pair(3, torch.float32)
    # bfloat16 takes GroupNorm's own path (same numbers, its own autograd).
    x = _inputs((2, 3, 4, 4), torch.float32)[0].requires_grad_(True)
    torch.testing.assert_close(fast.to(torch.bfloat16)(x.bfloat16()), ref.to(torch.bfloat16)(x.bfloat16()))
    # GroupNorm's size check (one value per channel) and shape errors are GroupNorm's.
    with pytest.raises(ValueError):
        InstanceNorm(3)(torch.randn(1, 3, 1, 1, requires_grad=True))
    with pytest.raises(RuntimeError):
        InstanceNorm(3)(torch.randn(2, 4, 3, 3, requires_grad=True))


def test_torch_func_transforms_fall_back_to_groupnorm():
    fast, ref = _pair(3, torch.float64)
    x = _inputs((2, 3, 4, 4), torch.float64)[0]
    torch.testing.assert_close(torch.func.grad(lambda t: fast(t).pow(3).sum())(x),
                               torch.func.grad(lambda t: ref(t).pow(3).sum())(x))


def test_third_order_takes_the_composite_route():
    """A double backward with create_graph=True must stay differentiable (the fast formulas are not)."""
    fast, ref = _pair(3, torch.float64)
    x0, r, _ = _inputs((2, 3, 4, 4), torch.float64)

    def third(norm):
        x = x0.clone().requires_grad_(True)
        gx, gw = torch.autograd.grad((norm(x) * r).pow(2).sum(), [x, norm.weight], create_graph=True)
        gxx, gxw = torch.autograd.grad(gx.pow(2).sum() + gw.pow(2).sum(), [x, norm.weight], create_graph=True)
        return [gxx, gxw, *torch.autograd.grad((gxx * r).sum() + gxw.sum(), [x, norm.weight])]

    for got, want in zip(third(fast), third(ref)):
        torch.testing.assert_close(got, want, **TOL[torch.float64])


def test_student_double_backward_through_convnet():
    """What match/trajectory.py computes for one micro-batch (g = dL/dtheta with create_graph, then
    d(g . v)/d(theta, x, labels)), with the fast norm vs GroupNorm, on the flat parameter layout."""
    torch.manual_seed(0)
    fast = build("convnet", 10, 3, 16, seed=0)
    ref = build("convnet", 10, 3, 16, seed=0, norm="instance")
    for i, m in enumerate(ref.features):  # the same net with plain GroupNorm layers
        if isinstance(m, InstanceNorm):
            gn = nn.GroupNorm(m.num_groups, m.num_channels)
            gn.load_state_dict(m.state_dict())
            ref.features[i] = gn
    layout = param_layout(fast)
    assert layout == param_layout(ref) and layout.names[2] == "features.1.weight"
    theta0 = layout.flatten([p.detach() for p in fast.parameters()])
    g = torch.Generator().manual_seed(3)
    x0, y0 = torch.randn(4, 3, 16, 16, generator=g), torch.randn(4, 10, generator=g)
    v = torch.randn(layout.total, generator=g)

    got_all = student_double_backward(fast, layout, theta0, x0, y0, v)
    want_all = student_double_backward(ref, layout, theta0, x0, y0, v)
    assert len(got_all) == 4
    for got, want in zip(got_all, want_all):
        assert float((got - want).norm() / want.norm()) < 1e-5


def test_convnet3_cifar_layout_unchanged():
    model = build("convnet", num_classes=10, channels=3, im_size=(32, 32), seed=0)
    layout = param_layout(model)
    assert layout.total == 320_010
    assert layout.names[2:4] == ("features.1.weight", "features.1.bias")
    assert all(type(model.features[i]) is InstanceNorm for i in (1, 5, 9))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_groupnorm():
    fast, ref = _pair(4, torch.float64)
    fast, ref = fast.cuda(), ref.cuda()
    x, r, vx = (t.cuda() for t in _inputs((3, 4, 6, 6), torch.float64))
    for got, want in zip(_second_order(fast, x, r, vx), _second_order(ref, x, r, vx)):
        torch.testing.assert_close(got, want, **TOL[torch.float64])
