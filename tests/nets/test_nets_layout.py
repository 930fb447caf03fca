"""Flat parameter layout and the functional student (spec §3.8, §5.2, §8.8-8.9)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from padistill.errors import PadistillError
from padistill.nets import ParamLayout, build, list_nets, param_layout

NETS = list_nets()

# spec §5.2, ConvNetD3 on CIFAR-10: (name, shape, start, end)
CONVNET3_CIFAR10 = [
    ("features.0.weight", (128, 3, 3, 3), 0, 3_456),
    ("features.0.bias", (128,), 3_456, 3_584),
    ("features.1.weight", (128,), 3_584, 3_712),
    ("features.1.bias", (128,), 3_712, 3_840),
    ("features.4.weight", (128, 128, 3, 3), 3_840, 151_296),
    ("features.4.bias", (128,), 151_296, 151_424),
    ("features.5.weight", (128,), 151_424, 151_552),
    ("features.5.bias", (128,), 151_552, 151_680),
    ("features.8.weight", (128, 128, 3, 3), 151_680, 299_136),
    ("features.8.bias", (128,), 299_136, 299_264),
    ("features.9.weight", (128,), 299_264, 299_392),
    ("features.9.bias", (128,), 299_392, 299_520),
    ("classifier.weight", (10, 2048), 299_520, 320_000),
    ("classifier.bias", (10,), 320_000, 320_010),
]


def _x(channels: int, size: int, batch: int = 2, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, channels, size, size, generator=torch.Generator().manual_seed(seed))


def _flat(model) -> torch.Tensor:
    return param_layout(model).flatten([p.detach() for p in model.parameters()])


def test_convnet3_cifar10_offsets_table(cached_net):
    layout = param_layout(cached_net("convnet", 3, 32))
    rows = zip(layout.names, layout.shapes, layout.offsets, layout.numels)
    got = [(n, tuple(s), o, o + k) for n, s, o, k in rows]
    assert got == CONVNET3_CIFAR10
    assert layout.total == 320_010


@pytest.mark.parametrize("size, classes, depth, cuts", [
    # spec §5.2: alpha -> (tensor, offset inside it) of the first kept entry floor(alpha * P)
    (32, 10, 3, {0.25: ("features.4.weight", 76_162), 0.5: ("features.8.weight", 8_325),
                 0.75: ("features.8.weight", 88_327)}),
    (32, 100, 3, {0.25: ("features.4.weight", 122_265), 0.5: ("features.8.weight", 100_530),
                  0.75: ("classifier.weight", 78_795)}),
    (64, 200, 4, {0.25: ("features.8.weight", 62_610), 0.5: ("features.12.weight", 129_060),
                  0.75: ("classifier.weight", 195_510)}),
])
def test_depth_cuts_land_where_the_spec_says(size, classes, depth, cuts):
    layout = param_layout(build(f"convnet-{depth}", classes, 3, size))
    for alpha, where in cuts.items():
        assert layout.index_of(math.floor(alpha * layout.total)) == where


def test_index_of_bounds_and_boundaries(cached_net):
    layout = param_layout(cached_net("convnet", 3, 32))
    assert layout.index_of(0) == ("features.0.weight", 0)
    assert layout.index_of(3_456) == ("features.0.bias", 0)
    assert layout.index_of(320_009) == ("classifier.bias", 9)
    for bad in (-1, 320_010, 1.5):
        with pytest.raises(PadistillError):
            layout.index_of(bad)


def test_layer_and_stage_ranges(cached_net):
    layout = param_layout(cached_net("convnet", 3, 32))
    assert layout.layer_ranges() == [
        ("features.0", 0, 3_584), ("features.1", 3_584, 3_840), ("features.4", 3_840, 151_424),
        ("features.5", 151_424, 151_680), ("features.8", 151_680, 299_264), ("features.9", 299_264, 299_520),
        ("classifier", 299_520, 320_010)]
    assert layout.stage_ranges(cached_net("convnet", 3, 32)) == [
        ("block1", 0, 3_840), ("block2", 3_840, 151_680), ("block3", 151_680, 299_520),
        ("classifier", 299_520, 320_010)]


@pytest.mark.parametrize("name", NETS)
def test_ranges_tile_the_flat_vector(name, cached_net, smallest_size):
    model = cached_net(name, 3, smallest_size(name))
    layout = param_layout(model)
    for ranges in (layout.layer_ranges(), layout.stage_ranges(model)):
        assert ranges[0][1] == 0 and ranges[-1][2] == layout.total
        assert all(a[2] == b[1] for a, b in zip(ranges, ranges[1:]))
    assert len(layout.stage_ranges(model)) == len(model.stages)


@pytest.mark.parametrize("name", NETS)
def test_flatten_unflatten_round_trip(name, cached_net, smallest_size):
    model = cached_net(name, 3, smallest_size(name))
    layout = param_layout(model)
    params = dict(model.named_parameters())
    flat = layout.flatten(list(params.values()))
    assert flat.shape == (layout.total,) and layout.total == sum(p.numel() for p in params.values())
    torch.testing.assert_close(layout.flatten(model.state_dict()), flat.detach(), rtol=0, atol=0)
    back = layout.unflatten(flat.detach())
    assert list(back) == list(params)
    assert all(torch.equal(back[n], p.detach()) for n, p in params.items())
    assert [t.shape for t in layout.split(flat)] == list(layout.shapes)


def test_unflatten_gives_views_of_flat():
    layout = param_layout(build("mlp", 10, 1, 8))
    flat = torch.zeros(layout.total)
    views = layout.unflatten(flat)
    views["classifier.bias"][3] = 5.0
    assert flat[layout.offsets[-1] + 3] == 5.0
    flat2 = torch.zeros(layout.total, requires_grad=True)
    sum(v.sum() * (i + 1) for i, v in enumerate(layout.unflatten(flat2).values())).backward()
    expected = torch.cat([torch.full((n,), float(i + 1)) for i, n in enumerate(layout.numels)])
    assert torch.equal(flat2.grad, expected)


def test_layout_errors():
    layout = param_layout(build("mlp", 10, 1, 8))
    with pytest.raises(PadistillError, match="length"):
        layout.split(torch.zeros(layout.total + 1))
    with pytest.raises(PadistillError, match="length"):
        layout.split(torch.zeros(2, layout.total))
    with pytest.raises(PadistillError, match="expected 4 tensors"):
        layout.flatten([torch.zeros(1)])
    with pytest.raises(PadistillError, match="shape"):
        layout.flatten([torch.zeros(s).T if len(s) == 2 else torch.zeros(s) for s in layout.shapes])
    with pytest.raises(PadistillError, match="missing"):
        layout.flatten({"features.0.weight": torch.zeros(128, 64)})


def test_layout_equality_and_from_names():
    a, b = param_layout(build("convnet", 10, 3, 8)), param_layout(build("convnet", 10, 3, 8))
    assert a == b and hash(a) == hash(b)
    assert a != param_layout(build("convnet", 100, 3, 8))
    c = ParamLayout(a.names, a.shapes)
    assert c == a and c.offsets == a.offsets and c.total == a.total


@pytest.mark.parametrize("name", NETS)
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_functional_forward_reproduces_model(name, mode, cached_net, smallest_size):
    size = smallest_size(name)
    model = cached_net(name, 3, size)
    model.train(mode == "train")
    x = _x(3, size)
    layout = param_layout(model)
    with torch.no_grad():
        expected = model(x)
        got = layout.functional_forward(model, _flat(model), x)
    assert (got - expected).abs().max().item() < 1e-5
    model.eval()


def test_functional_forward_uses_flat_not_the_model_parameters():
    model = build("mlp", 10, 1, 8, seed=0)
    layout = param_layout(model)
    flat = torch.zeros(layout.total)
    flat[layout.offsets[-1]:] = torch.arange(10.0)  # classifier.bias; all weights zero
    out = layout.functional_forward(model, flat, _x(1, 8))
    assert torch.equal(out, torch.arange(10.0).expand(2, 10))
    assert not torch.equal(model.classifier.bias.detach(), torch.arange(10.0))


def test_functional_forward_uses_model_buffers_like_model():
    model = build("convnet-bn", 10, 3, 8, seed=0)
    layout = param_layout(model)
    flat, x = _flat(model), _x(3, 8, batch=4)
    bn = model.features[1]
    before = bn.running_mean.clone()
    layout.functional_forward(model.train(), flat, x)
    after_train = bn.running_mean.clone()
    assert not torch.equal(before, after_train)  # train mode updates the running stats
    layout.functional_forward(model.eval(), flat, x)
    assert torch.equal(bn.running_mean, after_train)  # eval mode reads them only


@pytest.mark.parametrize("name", NETS)
def test_gradients_and_double_backward_through_flat(name, cached_net, smallest_size):
    """The unrolled student needs d/d(flat), d/dx, and the gradient of a function of the gradient."""
    size = smallest_size(name)
    model = cached_net(name, 3, size).train()
    layout = param_layout(model)
    flat = _flat(model).requires_grad_(True)
    x = _x(3, size).requires_grad_(True)
    y = torch.tensor([1, 2])
    loss = F.cross_entropy(layout.functional_forward(model, flat, x), y)
    g_flat, = torch.autograd.grad(loss, flat, create_graph=True)
    assert g_flat.shape == flat.shape and torch.isfinite(g_flat).all() and g_flat.abs().sum() > 0
    # One SGD step of the student, then a loss on the stepped parameters: needs double backward.
    stepped = flat - 0.01 * g_flat
    outer = F.cross_entropy(layout.functional_forward(model, stepped, _x(3, size, seed=2)), y)
    g_x, g_flat0 = torch.autograd.grad(outer, (x, flat))
    assert torch.isfinite(g_x).all() and g_x.abs().sum() > 0
    assert torch.isfinite(g_flat0).all() and g_flat0.abs().sum() > 0
    model.eval()
