"""Every registered net: shapes, per-stage features, seeded init, layer order, exact parameter counts and
the 64 px stride rules (spec §5.1, paper Appendix B "Network")."""

from __future__ import annotations

import pytest
import torch

from padistill.errors import PadistillError
from padistill.nets import build, count_params, depth_order, list_nets, param_layout, parse_net_name

NETS = list_nets()


def _x(channels: int, size: int, batch: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, channels, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", NETS)
@pytest.mark.parametrize("channels, size", [(3, 32), (3, 64), (1, 28)])
def test_forward_shape(name, channels, size, cached_net):
    model = cached_net(name, channels, size)
    assert model(_x(channels, size)).shape == (2, 10)


@pytest.mark.parametrize("name", NETS)
def test_8px_inputs(name):
    family = parse_net_name(name)[0]
    if family in ("convnet", "mlp", "alexnet") or name == "resnet18-bn":
        model = build(name, 10, 3, 8, seed=0)
        assert model(_x(3, 8)).shape == (2, 10)
    elif family in ("vgg11", "lenet", "resnet18"):  # resnet18: instance norm of a 1x1 map
        with pytest.raises(PadistillError, match="too small|1x1"):
            build(name, 10, 3, 8)
    else:  # a newly registered net: either works or says why not
        try:
            model = build(name, 10, 3, 8)
        except PadistillError:
            return
        assert model(_x(3, 8)).shape == (2, 10)


@pytest.mark.parametrize("name", NETS)
def test_features_by_layer_and_embed(name, cached_net, smallest_size):
    size = smallest_size(name)
    model = cached_net(name, 3, size).eval()
    x = _x(3, size)
    with torch.no_grad():
        feats = model.features_by_layer(x)
        logits = model(x)
        emb = model.embed(x)
    assert len(feats) == len(model.stages) >= 2
    assert all(f.dim() == 2 and f.shape[0] == 2 for f in feats)
    torch.testing.assert_close(feats[-1], logits, rtol=0, atol=1e-6)
    torch.testing.assert_close(feats[-2], emb, rtol=0, atol=1e-6)
    # The classifier's input is the embedding: last Linear's in_features equals embed width.
    last = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]
    assert last.in_features == emb.shape[1]


@pytest.mark.parametrize("name", NETS)
def test_seeded_init_is_bit_identical_and_seed_dependent(name, cached_net, smallest_size):
    size = smallest_size(name)
    state = torch.get_rng_state()
    a = cached_net(name, 3, size)  # built with seed 0, earlier, from another global RNG state
    b = build(name, 10, 3, size, seed=0)
    c = build(name, 10, 3, size, seed=1)
    assert torch.equal(torch.get_rng_state(), state)
    pa, pb, pc = list(a.parameters()), list(b.parameters()), list(c.parameters())
    assert all(torch.equal(u, v) for u, v in zip(pa, pb))
    assert not all(torch.equal(u, v) for u, v in zip(pa, pc))


@pytest.mark.parametrize("name", NETS)
def test_depth_order_is_forward_order(name, cached_net, smallest_size):
    """named_parameters() order == the order forward runs the parameter-owning modules (shallow -> deep)."""
    model = cached_net(name, 3, smallest_size(name)).eval()
    names = depth_order(model)
    assert names == [n for n, _ in model.named_parameters()]
    assert len(names) == len(set(names))
    owners = {id(m): n for n, m in model.named_modules() if list(m.parameters(recurse=False))}
    called: list[str] = []
    hooks = [m.register_forward_hook(lambda mod, *_: called.append(owners[id(mod)]))
             for m in model.modules() if id(m) in owners]
    try:
        with torch.no_grad():
            model(_x(3, smallest_size(name)))
    finally:
        for h in hooks:
            h.remove()
    registered = list(dict.fromkeys(n.rpartition(".")[0] for n in names))
    assert list(dict.fromkeys(called)) == registered


# (name, channels, size, classes, options, P): counts derivable by hand.
COUNTS = [
    ("convnet", 3, 32, 10, {}, 320_010),               # spec §5.2
    ("convnet", 3, 32, 100, {}, 504_420),
    ("convnet-4", 3, 64, 200, {}, 857_160),
    ("convnet-nn", 3, 32, 10, {}, 320_010 - 3 * 256),  # no norm: minus 3 x (128 scale + 128 shift)
    ("convnet", 1, 28, 10, {}, 1152 + 128 + 256 + 2 * 147_840 + 2048 * 10 + 10),  # MNIST padded to 32
    ("mlp", 3, 32, 10, {}, 3072 * 128 + 128 + 128 * 10 + 10),
    ("mlp", 3, 32, 10, {"hidden_layers": 2}, 3072 * 128 + 128 + 128 * 128 + 128 + 128 * 10 + 10),
    ("resnet18", 3, 32, 10, {}, 11_173_962),           # the well-known CIFAR ResNet-18 count
    ("resnet18-bn", 3, 32, 10, {}, 11_173_962),
    ("vgg11-bn", 3, 32, 10, {}, 9_231_114),
    ("alexnet", 3, 32, 10, {}, 9728 + 614_592 + 442_624 + 442_560 + 331_968 + 192 * 16 * 10 + 10),
    ("lenet", 3, 32, 10, {}, 456 + 2416 + 48_120 + 10_164 + 850),
    ("lenet", 1, 28, 10, {}, 156 + 2416 + 48_120 + 10_164 + 850),
]


@pytest.mark.parametrize("name, channels, size, classes, options, expected", COUNTS)
def test_exact_parameter_counts(name, channels, size, classes, options, expected):
    model = build(name, classes, channels, size, **options)
    assert count_params(model) == expected == param_layout(model).total


def test_convnet_reference_module_names():
    model = build("convnet", 10, 3, 32)
    assert depth_order(model) == [
        "features.0.weight", "features.0.bias", "features.1.weight", "features.1.bias",
        "features.4.weight", "features.4.bias", "features.5.weight", "features.5.bias",
        "features.8.weight", "features.8.bias", "features.9.weight", "features.9.bias",
        "classifier.weight", "classifier.bias"]
    gn = model.features[1]
    assert isinstance(gn, torch.nn.GroupNorm) and gn.num_groups == gn.num_channels == 128 and gn.eps == 1e-5
    # Without a norm the slot is an Identity, so conv indices do not move.
    assert depth_order(build("convnet-nn", 10, 3, 32))[2:4] == ["features.4.weight", "features.4.bias"]


def test_convnet_mnist_padding():
    model = build("convnet", 10, 1, 28)
    assert model.features[0].padding == (3, 3)
    assert build("convnet", 10, 3, 28).features[0].padding == (1, 1)


def _shapes(model, channels, size):
    with torch.no_grad():
        return [f.shape for f in model.eval().features_by_layer(_x(channels, size))]


@pytest.mark.parametrize("name", ["resnet18", "resnet18-bn", "alexnet", "lenet", "vgg11"])
def test_64px_stride_rule_reaches_the_32px_features(name, cached_net):
    """Paper Appendix B: stride 2 in the first conv (ResNet, AlexNet, LeNet) or the final pool (VGG)."""
    small, large = cached_net(name, 3, 32), cached_net(name, 3, 64)
    assert count_params(small) == count_params(large)
    s32, s64 = _shapes(small, 3, 32), _shapes(large, 3, 64)
    assert s64[-2:] == s32[-2:]  # same embedding and logits
    family = parse_net_name(name)[0]
    if family in ("resnet18", "alexnet"):  # the strided first conv brings 64 px to the 32 px maps
        assert s64 == s32
    elif family == "lenet":  # first map 30 vs 28 px (pooled 15 vs 14), the rest agrees
        assert s64[1:] == s32[1:]
    else:  # vgg11: only the final kernel-1 pool changes (2x2 -> 1x1 at 64 px)
        assert all(a[1] == 4 * b[1] for a, b in zip(s64[:-2], s32[:-2]))


def test_stride_options_are_explicit_and_override_the_rule():
    assert build("resnet18", 10, 3, 64).conv1.stride == (2, 2)
    assert build("resnet18", 10, 3, 32).conv1.stride == (1, 1)
    assert build("resnet18", 10, 3, 64, stem_stride=1).conv1.stride == (1, 1)
    assert build("alexnet", 10, 3, 64).features[0].stride == (2, 2)
    assert build("lenet", 10, 3, 64).features[0].stride == (2, 2)
    assert build("lenet", 10, 3, 64).classifier[0].in_features == 400
    vgg = build("vgg11", 10, 3, 64)
    assert vgg.features[-1].stride == 2 and vgg.classifier.in_features == 512
    assert build("vgg11", 10, 3, 64, final_stride=1).classifier.in_features == 512 * 2 * 2
    assert build("vgg11", 10, 3, 32).features[-1].stride == 1


def test_norm_variants():
    assert isinstance(build("resnet18-bn", 10, 3, 8).norm1, torch.nn.BatchNorm2d)
    gn = build("resnet18", 10, 3, 16).norm1
    assert isinstance(gn, torch.nn.GroupNorm) and gn.num_groups == 64
    assert isinstance(build("vgg11-bn", 10, 3, 32).features[1], torch.nn.BatchNorm2d)
    ln = build("convnet-ln", 10, 3, 32).features[5]
    assert isinstance(ln, torch.nn.LayerNorm) and ln.normalized_shape == (128, 16, 16)
    assert build("convnet-gn", 10, 3, 32).features[1].num_groups == 4
    assert all(not isinstance(m, torch.nn.modules.batchnorm._BatchNorm | torch.nn.GroupNorm)
               for n in ("alexnet", "lenet", "mlp") for m in build(n, 10, 3, 32).modules())
