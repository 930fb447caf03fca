"""The fast 2x2 average pool (nets/fast_pool.py) and the convolution with the explicit double backward
(nets/fast_conv.py) against nn.AvgPool2d / nn.Conv2d: values, gradients to third order, gradcheck,
fallbacks, the environment switches, and the student's double backward through a whole ConvNet."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.autograd import gradcheck, gradgradcheck

from helpers import student_double_backward
from padistill.nets import build, fast_conv, fast_pool, param_layout
from padistill.nets.fast_conv import Conv2d, conv2d
from padistill.nets.fast_pool import AvgPool2x2, avg_pool_2x2


@pytest.fixture(autouse=True)
def _fast_paths_for_small_tensors(monkeypatch):
    """The tests use small tensors; the size thresholds would send them to the native layers."""
    monkeypatch.setattr(fast_pool, "MIN_NUMEL", 0)
    monkeypatch.setattr(fast_conv, "MIN_NUMEL", 0)


def test_small_tensors_take_the_native_route(monkeypatch):
    monkeypatch.setattr(fast_pool, "MIN_NUMEL", 1000)
    monkeypatch.setattr(fast_conv, "MIN_NUMEL", 1000)
    small = torch.randn(2, 3, 8, 8, requires_grad=True)
    assert avg_pool_2x2(small).grad_fn.name() == "AvgPool2DBackward0"
    assert conv2d(small, torch.randn(4, 3, 3, 3), None, (1, 1), (1, 1), (1, 1)).grad_fn.name() == "ConvolutionBackward0"
    wide = conv2d(small, torch.randn(64, 3, 3, 3), None, (1, 1), (1, 1), (1, 1))  # large output: fast
    assert wide.grad_fn.name() != "ConvolutionBackward0"
    big = torch.randn(2, 8, 16, 16, requires_grad=True)
    assert "Pool2" in avg_pool_2x2(big).grad_fn.name()
    assert "Conv" in conv2d(big, torch.randn(4, 8, 3, 3), None, (1, 1), (1, 1), (1, 1)).grad_fn.name()
    assert avg_pool_2x2(big).grad_fn.name() != "AvgPool2DBackward0"

# ---------------------------------------------------------------- pool


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 3), c=st.integers(1, 5), h=st.integers(1, 6), w=st.integers(1, 6),
       dtype=st.sampled_from([torch.float32, torch.float64]))
def test_pool_matches_avg_pool2d(n, c, h, w, dtype):
    x = torch.randn(n, c, 2 * h, 2 * w, dtype=dtype)
    tol = dict(rtol=1e-6, atol=1e-6) if dtype == torch.float32 else dict(rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(avg_pool_2x2(x), F.avg_pool2d(x, 2, 2), **tol)
    # The backward spreads g / 4 exactly (a product with 0.25 and zeros): equal bits.
    xr = x.clone().requires_grad_(True)
    g = torch.randn(n, c, h, w, dtype=dtype)
    (got,) = torch.autograd.grad(avg_pool_2x2(xr), xr, g)
    (want,) = torch.autograd.grad(F.avg_pool2d(xr, 2, 2), xr, g)
    assert torch.equal(got, want)


def test_pool_gradcheck_to_third_order():
    x = torch.randn(2, 3, 6, 4, dtype=torch.float64, requires_grad=True)
    assert gradcheck(avg_pool_2x2, (x,))
    assert gradgradcheck(avg_pool_2x2, (x,))
    # Third order: pool is linear, so d^3 of sum(pool(x)^2 * r) ... compare with the native pool.
    r = torch.randn(2, 3, 3, 2, dtype=torch.float64)

    def third(pool):
        (g1,) = torch.autograd.grad((pool(x) ** 3 * r).sum(), x, create_graph=True)
        (g2,) = torch.autograd.grad((g1 ** 2).sum(), x, create_graph=True)
        return torch.autograd.grad(g2.sum(), x)[0]

    torch.testing.assert_close(third(avg_pool_2x2), third(lambda t: F.avg_pool2d(t, 2, 2)))


def test_pool_fallbacks_are_the_native_pool():
    for x in (torch.randn(2, 3, 5, 4),  # odd height: floor semantics of avg_pool2d
              torch.randn(2, 3, 4, 4).contiguous(memory_format=torch.channels_last),
              torch.randn(2, 3, 4, 4).to(torch.bfloat16),
              torch.randn(3, 4, 4)):  # unbatched
        assert torch.equal(avg_pool_2x2(x), F.avg_pool2d(x, 2, 2))


def test_pool_module_is_an_avgpool2d():
    m = AvgPool2x2()
    assert isinstance(m, nn.AvgPool2d) and m.kernel_size == 2 and m.stride == 2
    assert list(m.parameters()) == [] and m.state_dict() == {}


# ---------------------------------------------------------------- conv

CONF = [((1, 1), (1, 1), (1, 1)), ((2, 2), (0, 1), (1, 1)), ((1, 2), (2, 2), (2, 1))]


def _conv_inputs(dtype, bias=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 3, 7, 6, generator=g, dtype=dtype, requires_grad=True)
    w = torch.randn(4, 3, 3, 3, generator=g, dtype=dtype, requires_grad=True)
    b = torch.randn(4, generator=g, dtype=dtype, requires_grad=True) if bias else None
    return x, w, b


@pytest.mark.parametrize("stride,padding,dilation", CONF)
@pytest.mark.parametrize("bias", [True, False])
def test_conv_gradcheck_and_gradgradcheck(stride, padding, dilation, bias):
    x, w, b = _conv_inputs(torch.float64, bias)
    args = (x, w, b) if bias else (x, w)

    def f(x, w, b=None):
        return conv2d(x, w, b, stride, padding, dilation)

    assert gradcheck(f, args)
    assert gradgradcheck(f, args)


@pytest.mark.parametrize("stride,padding,dilation", CONF)
def test_conv_matches_native_to_third_order(stride, padding, dilation):
    x, w, b = _conv_inputs(torch.float64)

    def derivatives(conv):
        y = conv(x, w, b, stride, padding, dilation)
        g1 = torch.autograd.grad((y ** 2).sum(), [x, w, b], create_graph=True)
        g2 = torch.autograd.grad(sum((t ** 2).sum() for t in g1), [x, w, b], create_graph=True)
        g3 = torch.autograd.grad(sum((t ** 2).sum() for t in g2), [x, w, b])
        return [y, *g1, *g2, *g3]

    for got, want in zip(derivatives(conv2d), derivatives(F.conv2d)):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


def test_conv_forward_and_first_backward_are_the_native_kernels():
    """Training (experts, evaluation) must be unchanged: same forward and first backward bits."""
    x, w, b = _conv_inputs(torch.float32)
    y = conv2d(x, w, b, (1, 1), (1, 1), (1, 1))
    y_ref = F.conv2d(x, w, b, 1, 1)
    assert torch.equal(y, y_ref)
    g = torch.randn_like(y)
    for got, want in zip(torch.autograd.grad(y, [x, w, b], g), torch.autograd.grad(y_ref, [x, w, b], g)):
        assert torch.equal(got, want)


def test_conv_partial_requires_grad():
    """Only some inputs need gradients (frozen images, frozen weights): the same values as native."""
    for need in ("x", "w", "xw", "b"):
        x, w, b = _conv_inputs(torch.float64)
        x.requires_grad_("x" in need)
        w.requires_grad_("w" in need)
        b.requires_grad_("b" in need)
        wrt = [t for t, k in ((x, "x"), (w, "w"), (b, "b")) if k in need]

        def second(conv, x=x, w=w, b=b, wrt=wrt):
            y = conv(x, w, b, (1, 1), (1, 1), (1, 1))
            g1 = torch.autograd.grad((y ** 2).sum(), wrt, create_graph=True)
            return torch.autograd.grad(sum((t ** 2).sum() for t in g1), wrt, allow_unused=True)

        for got, want in zip(second(conv2d), second(F.conv2d)):
            torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


def test_conv_module_and_fallbacks():
    m = Conv2d(3, 4, 3, padding=1)
    ref = nn.Conv2d(3, 4, 3, padding=1)
    ref.load_state_dict(m.state_dict())
    x = torch.randn(2, 3, 5, 5)
    assert isinstance(m, nn.Conv2d) and torch.equal(m(x), ref(x))
    grouped = Conv2d(4, 4, 3, padding="same", groups=2, padding_mode="reflect")
    assert grouped(torch.randn(1, 4, 5, 5)).shape == (1, 4, 5, 5)  # nn.Conv2d's own path
    with torch.no_grad():
        assert torch.equal(m(x), ref(x))


def test_switches_build_the_native_layers(monkeypatch):
    net = build("convnet", 10, 3, 8)
    assert type(net.features[0]) is Conv2d and type(net.features[3]) is AvgPool2x2
    monkeypatch.setenv("PADISTILL_NATIVE_CONV", "1")
    monkeypatch.setenv("PADISTILL_NATIVE_POOL", "1")
    net = build("convnet", 10, 3, 8)
    assert type(net.features[0]) is nn.Conv2d and type(net.features[3]) is nn.AvgPool2d


def test_student_double_backward_matches_native_layers(monkeypatch):
    """What match/trajectory.py computes for one micro-batch, fast layers vs nn.Conv2d + nn.AvgPool2d,
    in float64 on the flat layout (state_dicts, hence flat layouts, are interchangeable)."""
    fast = build("convnet", 10, 3, 16, seed=0).double()
    monkeypatch.setenv("PADISTILL_NATIVE_CONV", "1")
    monkeypatch.setenv("PADISTILL_NATIVE_POOL", "1")
    ref = build("convnet", 10, 3, 16, seed=0).double()
    assert type(ref.features[0]) is nn.Conv2d
    layout = param_layout(fast)
    assert layout == param_layout(ref)
    theta0 = layout.flatten([p.detach() for p in fast.parameters()])
    g = torch.Generator().manual_seed(3)
    x0 = torch.randn(4, 3, 16, 16, generator=g, dtype=torch.float64)
    y0 = torch.randn(4, 10, generator=g, dtype=torch.float64)
    v = torch.randn(layout.total, generator=g, dtype=torch.float64)

    got_all = student_double_backward(fast, layout, theta0, x0, y0, v)
    want_all = student_double_backward(ref, layout, theta0, x0, y0, v)
    assert len(got_all) == 4
    for got, want in zip(got_all, want_all):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_unused_input_gradient_is_not_computed(monkeypatch):
    """The student's inner step differentiates w.r.t. the weights only, through a first convolution whose
    input requires grad: its input gradient (a backward-data pass) is skipped, and nothing else changes."""
    masks = []
    real = fast_conv._conv_backward

    def spy(g, x, w, has_bias, stride, padding, dilation, mask):
        masks.append(list(mask))
        return real(g, x, w, has_bias, stride, padding, dilation, mask)

    monkeypatch.setattr(fast_conv, "_conv_backward", spy)
    x0, w, b = _conv_inputs(torch.float64)
    leaf = x0.detach().requires_grad_(True)
    x = leaf * 1.5  # a non-leaf input, as DSA's output is
    y = conv2d(x, w, b, (1, 1), (1, 1), (1, 1))
    (gw,) = torch.autograd.grad((y ** 2).sum(), w, create_graph=True)
    assert masks == [[False, True, True]]
    # The outer gradient through the inner one still reaches the input, and equals native's.
    got = torch.autograd.grad((gw ** 2).sum(), [leaf, w])
    y_ref = F.conv2d(leaf * 1.5, w, b, 1, 1)
    (gw_ref,) = torch.autograd.grad((y_ref ** 2).sum(), w, create_graph=True)
    want = torch.autograd.grad((gw_ref ** 2).sum(), [leaf, w])
    for a, c in zip(got, want):
        torch.testing.assert_close(a, c, rtol=1e-10, atol=1e-10)
    # Asked for (non-leaf or leaf input, autograd.grad or .backward): computed; a leaf not asked for: skipped.
    masks.clear()
    y = conv2d(leaf * 1.5, w, b, (1, 1), (1, 1), (1, 1))
    torch.autograd.grad((y ** 2).sum(), [leaf, w])
    y = conv2d(leaf, w, b, (1, 1), (1, 1), (1, 1))
    torch.autograd.grad((y ** 2).sum(), [leaf, w])
    y = conv2d(leaf, w, b, (1, 1), (1, 1), (1, 1))
    (y ** 2).sum().backward()
    y = conv2d(leaf, w, b, (1, 1), (1, 1), (1, 1))
    torch.autograd.grad((y ** 2).sum(), w)
    assert [m[0] for m in masks] == [True, True, True, False]


@pytest.mark.parametrize("stride,padding,dilation", CONF)
def test_few_channel_input_gradient_by_gemm(stride, padding, dilation, monkeypatch):
    """The first conv's input gradient (3 input channels, many outputs) is a product plus col2im: equal to
    the native backward-data kernel up to rounding, and the double backward through it is still exact."""
    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, 3, 9, 8, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(64, 3, 3, 3, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(64, generator=g, dtype=torch.float64, requires_grad=True)
    assert fast_conv._few_input_rows(w) and not fast_conv._few_input_rows(torch.empty(4, 3, 3, 3))
    y = F.conv2d(x, w, b, stride, padding, dilation)
    go = torch.randn(y.shape, generator=g, dtype=torch.float64)
    got = fast_conv._conv_backward(go, x, w, True, list(stride), list(padding), list(dilation), [True, True, True])
    want = torch.ops.aten.convolution_backward(go, x, w, [64], list(stride), list(padding), list(dilation), False,
                                               [0, 0], 1, [True, True, True])
    for a, c in zip(got, want):
        torch.testing.assert_close(a, c, rtol=1e-12, atol=1e-12)
    assert fast_conv._conv_backward(go, x, w, True, list(stride), list(padding), list(dilation),
                                    [True, False, False])[1:] == (None, None)

    def f(x, w, b):
        return conv2d(x, w, b, stride, padding, dilation)

    calls = []
    real = fast_conv._input_grad_by_gemm
    monkeypatch.setattr(fast_conv, "_input_grad_by_gemm", lambda *a: calls.append(1) or real(*a))
    # 1 input channel, 2x2 kernel, 8 outputs: also few rows, and cheap to check numerically
    small = [torch.randn(*shape, generator=g, dtype=torch.float64, requires_grad=True)
             for shape in ((2, 1, 6, 5), (8, 1, 2, 2), (8,))]
    assert fast_conv._few_input_rows(small[1])
    assert gradcheck(f, small) and gradgradcheck(f, small)
    assert calls  # the double backward went through the product route
