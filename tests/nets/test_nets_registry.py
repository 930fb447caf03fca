"""Registry: name parsing, options, seeded construction and one-line errors (padistill.nets.registry)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from padistill.errors import PadistillError
from padistill.nets import build, count_params, list_nets, parse_net_name, register_net
from padistill.nets import registry as registry_module


def test_list_nets_canonical_names():
    assert list_nets() == ["convnet", "convnet-bn", "convnet-ln", "convnet-nn", "resnet18", "resnet18-bn",
                           "vgg11", "vgg11-bn", "alexnet", "lenet", "mlp"]


@pytest.mark.parametrize("name, family, options", [
    ("convnet", "convnet", {}),
    ("convnet-3", "convnet", {"depth": 3}),
    ("ConvNet-4", "convnet", {"depth": 4}),
    ("convnetd4", "convnet", {"depth": 4}),
    ("ConvNetD4", "convnet", {"depth": 4}),
    ("convnet-bn", "convnet", {"norm": "batch"}),
    ("ConvNetBN", "convnet", {"norm": "batch"}),
    ("convnet-4-bn", "convnet", {"depth": 4, "norm": "batch"}),
    ("convnet-ln", "convnet", {"norm": "layer"}),
    ("convnet-nn", "convnet", {"norm": "none"}),
    ("convnet-gn", "convnet", {"norm": "group"}),
    ("convnet-in", "convnet", {"norm": "instance"}),
    ("convnet-w64-d2", "convnet", {"width": 64, "depth": 2}),
    ("convnet-mp", "convnet", {"pool": "max"}),
    ("convnetnp", "convnet", {"pool": "none"}),
    ("resnet18", "resnet18", {}),
    ("resnet-18", "resnet18", {}),
    ("resnet18-bn", "resnet18", {"norm": "batch"}),
    ("ResNet-18-BN", "resnet18", {"norm": "batch"}),
    ("  VGG11 ", "vgg11", {}),
    ("vgg-11-bn", "vgg11", {"norm": "batch"}),
    ("alexnet", "alexnet", {}),
    ("LeNet", "lenet", {}),
    ("mlp", "mlp", {}),
])
def test_parse_net_name(name, family, options):
    assert parse_net_name(name) == (family, options)


@pytest.mark.parametrize("name", ["foonet", "convnet-xyz", "convnet-", "resnet", "resnet-34", "", "vgg16"])
def test_unknown_net_is_one_line_error_listing_known(name):
    with pytest.raises(PadistillError) as err:
        build(name, 10, 3, 32)
    msg = str(err.value)
    assert "\n" not in msg
    if name.strip():
        assert "convnet" in msg and "resnet18" in msg


def test_name_setting_an_option_twice():
    with pytest.raises(PadistillError, match="twice"):
        parse_net_name("convnet-bn-ln")


@pytest.mark.parametrize("name, options, word", [
    ("convnet", {"foo": 1}, "foo"),
    ("convnet", {"width": -1}, "width"),
    ("convnet", {"width": 2.5}, "width"),
    ("convnet", {"depth": 0}, "depth"),
    ("convnet", {"depth": True}, "depth"),
    ("convnet", {"norm": "foo"}, "norm"),
    ("convnet", {"act": "gelu"}, "act"),
    ("convnet", {"pool": "sum"}, "pool"),
    ("convnet-gn", {"width": 30}, "width"),
    ("resnet18", {"depth": 3}, "depth"),
    ("resnet-18-4", {}, "depth"),
    ("resnet18", {"norm": "layer"}, "norm"),
    ("vgg11", {"final_stride": 0}, "final_stride"),
    ("alexnet", {"norm": "batch"}, "norm"),
    ("lenet-bn", {}, "norm"),
    ("mlp", {"hidden_layers": 0}, "hidden_layers"),
])
def test_bad_option_names_the_option(name, options, word):
    with pytest.raises(PadistillError) as err:
        build(name, 10, 3, 32, **options)
    assert word in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("name, channels, size, word", [
    ("convnet-4", 3, 8, "16x16"),       # depth 4 needs 2^4 px
    ("convnet-3", 3, 4, "8x8"),
    ("vgg11", 3, 16, "too small"),
    ("lenet", 3, 8, "too small"),
])
def test_too_small_input(name, channels, size, word):
    with pytest.raises(PadistillError) as err:
        build(name, 10, channels, size)
    assert word in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("kwargs", [
    {"num_classes": 0}, {"channels": -1}, {"im_size": (32,)}, {"im_size": (0, 32)}, {"im_size": "32"},
    {"seed": 1.5},
])
def test_bad_build_arguments(kwargs):
    args = {"num_classes": 10, "channels": 3, "im_size": 32, **kwargs}
    with pytest.raises(PadistillError):
        build("mlp", **args)


def test_explicit_options_override_the_name():
    model = build("convnet-4-bn", 10, 3, 32, depth=2)
    assert model.depth == 2
    assert isinstance(model.features[1], nn.BatchNorm2d)
    assert model.net_spec == {"family": "convnet", "options": {"depth": 2, "norm": "batch"},
                              "num_classes": 10, "channels": 3, "im_size": (32, 32)}


def test_norm_spellings_of_the_reference_are_accepted():
    assert isinstance(build("convnet", 10, 3, 8, norm="instancenorm").features[1], nn.GroupNorm)
    assert isinstance(build("convnet", 10, 3, 8, norm="BatchNorm").features[1], nn.BatchNorm2d)


def test_im_size_int_or_pair_and_non_square():
    a = build("convnet", 10, 3, 16, seed=0)
    b = build("convnet", 10, 3, (16, 16), seed=0)
    assert count_params(a) == count_params(b)
    c = build("convnet", 10, 3, (16, 32), seed=0)
    assert c(torch.zeros(2, 3, 16, 32)).shape == (2, 10)
    assert c.classifier.in_features == 128 * 2 * 4


def test_seeded_build_is_deterministic_and_leaves_global_rng_alone():
    torch.manual_seed(123)
    state = torch.get_rng_state()
    a = build("convnet", 10, 3, 8, seed=7)
    assert torch.equal(torch.get_rng_state(), state)
    b = build("convnet", 10, 3, 8, seed=7)
    for (na, pa), (nb, pb) in zip(a.named_parameters(), b.named_parameters()):
        assert na == nb and torch.equal(pa, pb)
    # Unseeded builds draw from (and advance) the global RNG, as plain PyTorch does.
    build("convnet", 10, 3, 8)
    assert not torch.equal(torch.get_rng_state(), state)


def test_build_is_on_cpu_even_with_another_default_device():
    with torch.device("meta"):
        model = build("mlp", 10, 1, 8, seed=0)
    assert all(p.device.type == "cpu" for p in model.parameters())


def test_register_net_adds_a_buildable_family(monkeypatch):
    monkeypatch.setattr(registry_module, "_REGISTRY", dict(registry_module._REGISTRY))

    @register_net("tinynet", variants=("tinynet-bn",))
    def tinynet(num_classes, channels, im_size, norm="instance"):
        return nn.Sequential(nn.Flatten(), nn.Linear(channels * im_size[0] * im_size[1], num_classes))

    assert list_nets()[-2:] == ["tinynet", "tinynet-bn"]
    assert parse_net_name("TinyNet-BN") == ("tinynet", {"norm": "batch"})
    assert build("tinynet", 3, 1, 4)(torch.zeros(1, 1, 4, 4)).shape == (1, 3)
    with pytest.raises(PadistillError, match="already registered"):
        register_net("tinynet")(tinynet)
    with pytest.raises(PadistillError):
        register_net("bad-name")
