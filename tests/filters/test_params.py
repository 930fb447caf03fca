"""FIEM (paper §3.3 eq. 4, spec §3.9, §8.10-8.12): the parameter cut, checked against the paper's numbers written
out here: depth drops the first floor(alpha * P) entries, layer snaps that cut down to a layer start, loss keeps
the P - floor(beta * P) entries with the largest error."""

import math

import pytest
import torch

from padistill.errors import PadistillError
from padistill.filters.params import ParamCut, kept_layers, param_cut, select_by_loss

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
    with pytest.raises(PadistillError, match="select.mode must be depth, layer or loss; got 'deep'"):
        param_cut(P, 0.1, "deep")
    with pytest.raises(PadistillError, match="^select.mode 'layer' needs the layer boundaries of the network$"):
        param_cut(P, 0.1, "layer")


def test_layer_kept_is_the_part_of_a_tensor_past_the_cut():
    cut = ParamCut("depth", 0.25, 100, 25)
    assert cut.layer_kept(0, 10) == (10, 10)  # wholly before the cut: empty
    assert cut.layer_kept(20, 40) == (25, 40)  # the cut falls inside
    assert cut.layer_kept(25, 30) == (25, 30)  # starts at the cut: whole
    assert cut.layer_kept(50, 60) == (50, 60)  # wholly after: whole


def test_kept_layers_are_those_with_a_parameter_past_the_cut():
    ranges = [(0, 10), (10, 25), (25, 40), (40, 100)]
    assert kept_layers(ParamCut("depth", 0.25, 100, 25), ranges) == [2, 3]  # (10, 25) ends at the cut: dropped
    assert kept_layers(ParamCut("depth", 0.24, 100, 24), ranges) == [1, 2, 3]
    assert kept_layers(ParamCut("depth", 0.0, 100, 0), ranges) == [0, 1, 2, 3]


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
