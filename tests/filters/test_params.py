"""FIEM (paper §3.3 eq. 4, spec §3.9, §8.10-8.12): the parameter cut, checked against the paper's numbers written
out here: depth drops the first floor(alpha * P) entries, layer snaps that cut down to a layer start, loss keeps
the P - floor(beta * P) entries with the largest error. Then the same cut read on the network's layer outputs for
DM (paper App. A.1, Table 7b; issue 15)."""

import math

import pytest
import torch

from padistill.errors import PadistillError
from padistill.filters.params import (
    ParamCut,
    dm_feature_selection,
    kept_channels,
    param_cut,
    select_by_loss,
)
from padistill.nets import build, param_layout

# ConvNetD3 (width 128, CIFAR-10) layer starts and total: conv1 w/b, norm1 w/b, conv2 ..., classifier w/b
SIZES = [3456, 128, 128, 128, 147456, 128, 128, 128, 147456, 128, 128, 128, 20480, 10]
STARTS = [sum(SIZES[:i]) for i in range(len(SIZES))]
P = sum(SIZES)  # 320010


@pytest.mark.parametrize("alpha", [0.0, 0.1, 0.25, 0.5, 0.75])
def test_depth_cut_drops_floor_alpha_p_from_the_shallow_end(alpha):
    cut = param_cut(P, alpha, "depth", boundaries=STARTS)
    assert cut == ParamCut("depth", alpha, P, math.floor(alpha * P))
    assert cut.kept == P - math.floor(alpha * P)
    # alpha = 0.25: 80002 dropped, i.e. inside conv2 (the paper's cut falls inside a tensor)
    if alpha == 0.25:
        assert cut.start == 80002 and STARTS[4] < cut.start < STARTS[5]


# floor(alpha * P): 0 / 3200 (inside conv1) / 80002 (inside conv2) / 160005 (inside conv3) / 304009 (classifier w)
@pytest.mark.parametrize("alpha, expected", [(0.0, 0), (0.01, 0), (0.25, STARTS[4]), (0.5, STARTS[8]),
                                             (0.95, STARTS[12])])
def test_layer_cut_snaps_down_to_a_layer_start(alpha, expected):
    cut = param_cut(P, alpha, "layer", boundaries=STARTS)
    assert cut == ParamCut("layer", alpha, P, expected) and cut.kept == P - expected


def test_layer_cut_exactly_on_a_boundary_keeps_that_layer():
    sizes = [10, 30, 60]  # P = 100, starts 0, 10, 40
    assert param_cut(100, 0.4, "layer", boundaries=[0, 10, 40]).start == 40  # floor(0.4 * 100) = 40 is a start
    assert param_cut(100, 0.39, "layer", boundaries=[0, 10, 40]).start == 10
    assert param_cut(100, 0.05, "layer", boundaries=[5, 10, 40]).start == 5  # first boundary 5 <= 5
    assert param_cut(100, 0.04, "layer", boundaries=[5, 10, 40]).start == 0  # no boundary <= 4: nothing dropped
    assert sum(sizes) == 100


def test_loss_cut_keeps_p_minus_floor_beta_p():
    cut = param_cut(P, 0.3, "loss")
    assert cut == ParamCut("loss", 0.3, P, 0) and cut.kept == P - math.floor(0.3 * P)


@pytest.mark.parametrize("ratio", [-0.1, 1.0, 1.5])
def test_ratio_outside_zero_one_is_refused(ratio):
    with pytest.raises(PadistillError, match=r"select.ratio must be in \[0, 1\)"):
        param_cut(P, ratio)


def test_unknown_mode_and_layer_without_boundaries_are_refused():
    with pytest.raises(PadistillError, match="select.mode must be depth, layer, loss or deep; got 'shallow'"):
        param_cut(P, 0.1, "shallow")
    with pytest.raises(PadistillError, match="^select.mode 'layer' needs the layer boundaries of the network$"):
        param_cut(P, 0.1, "layer")


def test_layer_kept_is_the_part_of_a_tensor_past_the_cut():
    cut = ParamCut("depth", 0.25, 100, 25)
    assert cut.layer_kept(0, 10) == (10, 10)  # wholly before the cut: empty
    assert cut.layer_kept(20, 40) == (25, 40)  # the cut falls inside
    assert cut.layer_kept(25, 30) == (25, 30)  # starts at the cut: whole
    assert cut.layer_kept(50, 60) == (50, 60)  # wholly after: whole


def test_select_by_loss_keeps_the_largest_errors():
    d = torch.tensor([0.5, 3.0, 0.1, 2.0, 9.0, 0.0, 1.0, 4.0, 0.2, 0.3])
    got = select_by_loss(d, 0.3)  # keep 10 - 3 = 7: all but the three smallest (0.0, 0.1, 0.2)
    assert sorted(got.tolist()) == [0, 1, 3, 4, 6, 7, 9]
    assert sorted(select_by_loss(d, 0.0).tolist()) == list(range(10))
    assert sorted(select_by_loss(d, 0.95).tolist()) == [4]  # floor(9.5) = 9 dropped


def test_select_by_loss_stays_on_the_device_of_its_input():
    d = torch.empty(12, device="meta")  # a device that is not the CPU default
    assert select_by_loss(d, 0.0).device == d.device
    assert len(select_by_loss(d, 0.0)) == 12


# ----------------------------------------------------------------------------- DM: the cut on layer outputs

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
