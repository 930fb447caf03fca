"""FIEM on DM: the depth cut read on the network's layer outputs (paper App. A.1, Table 7b; issue 15)."""

import pytest

from padistill.errors import PadistillError
from padistill.filters.params import dm_feature_selection, kept_channels, param_cut
from padistill.nets import build, param_layout

# (classes, image size) of CIFAR-10, CIFAR-100 and Tiny ImageNet
SHAPES = {"cifar10": (10, 32), "cifar100": (100, 32), "tiny": (200, 64)}


def convnet_d3(classes, size):
    return build("convnet", num_classes=classes, channels=3, im_size=(size, size), seed=0)


def selection(net, ratio):
    return [(s.name, s.first, s.channels) for s in dm_feature_selection(net, "depth", ratio) or []]


def test_convnet_d3_cifar10_selections_are_the_documented_ones():
    # spec §5.2 cuts: 0.25 -> conv2 weight offset 76,162; 0.5 -> conv3 offset 8,325; 0.75 -> conv3 offset 88,327;
    # one conv filter row = 128 * 3 * 3 = 1,152 values: first kept channel = ceil(offset / 1,152)
    net = convnet_d3(10, 32)
    assert selection(net, 0.0) == []  # plain DM: the embedding only (None)
    assert dm_feature_selection(net, "depth", 0.0) is None
    assert selection(net, 0.25) == [("block2", 67, 128), ("block3", 0, 128), ("classifier", 0, 10)]
    assert selection(net, 0.5) == [("block3", 8, 128), ("classifier", 0, 10)]
    assert selection(net, 0.75) == [("block3", 77, 128), ("classifier", 0, 10)]


def test_cifar100_alpha_075_keeps_part_of_the_logits():
    # spec: 0.75 -> 378,315, inside the classifier weight at offset 78,795; a logit row = 2,048 values
    assert selection(convnet_d3(100, 32), 0.75) == [("classifier", 39, 100)]


@pytest.mark.parametrize("shape", SHAPES)
def test_larger_ratio_keeps_a_strict_subset(shape):
    net = convnet_d3(*SHAPES[shape])

    def kept(r):
        return {(name, c) for name, first, n in selection(net, r) for c in range(first, n)}

    sets = [kept(r) for r in (0.25, 0.5, 0.75)]
    assert all(sets) and sets[0] > sets[1] > sets[2]


@pytest.mark.parametrize("shape", SHAPES)
def test_a_ratio_that_keeps_nothing_is_refused_with_the_largest_valid_one(shape):
    net = convnet_d3(*SHAPES[shape])
    with pytest.raises(PadistillError, match="largest ratio that keeps one is") as err:
        dm_feature_selection(net, "depth", 0.9999)
    largest = float(str(err.value).rsplit(" ", 1)[1])
    assert selection(net, largest)[-1][0] == "classifier"  # still something: the last logit(s)
    with pytest.raises(PadistillError):
        dm_feature_selection(net, "depth", round(largest + 1e-4, 4))


def test_kept_channel_rows_lie_wholly_after_the_cut():
    net = build("lenet", num_classes=10, channels=1, im_size=(28, 28), seed=0)
    layout = param_layout(net)
    stages = layout.stage_ranges(net)
    for ratio in (0.1, 0.3, 0.6, 0.9):
        cut = param_cut(layout.total, ratio)
        for s in kept_channels(cut, layout, stages):
            a = stages[s.stage][1]
            row = layout.numels[layout.offsets.index(a)] // s.channels
            assert a + s.first * row >= cut.start  # the first kept row is not masked ...
            assert s.first == 0 or a + (s.first - 1) * row < cut.start  # ... and the row before it is


def test_layer_mode_keeps_whole_layers():
    net = convnet_d3(10, 32)
    sel = dm_feature_selection(net, "layer", 0.5)
    assert all(s.first == 0 for s in sel)
    assert [s.name for s in sel] == ["block3", "classifier"]  # the cut snaps down to conv3's start


def test_config_validation_refuses_an_empty_dm_selection():
    from padistill.config import load_config

    with pytest.raises(PadistillError, match="distill.select.ratio.*largest ratio that keeps one is 0.99"):
        load_config(preset="dm/cifar10-ipc10", overrides=["data.name=cifar100", "distill.select.ratio=0.9995"])
    load_config(preset="dm/cifar10-ipc10", overrides=["data.name=cifar100", "distill.select.ratio=0.75"])
