"""ConvNet: the distillation network of DC/DM/MTT/DATM/PAD (spec §5.1; layout table §5.2).

Input [B, channels, H, W] -> logits [B, num_classes]. `depth` blocks of
[Conv2d(in, width, 3, padding 1, bias) -> norm -> act -> pool(2, 2)], flatten, Linear(width*h*w, C).
ConvNet-3 (default) is used for CIFAR, ConvNet-4 for Tiny ImageNet (64 px -> 4x4 map).

Module names reproduce the reference layout: one `nn.Sequential` called `features` holding exactly
four modules per block (conv, norm, act, pool), so block k's conv is `features.{4k}` and its norm
`features.{4k+1}`, then `classifier`. With norm='none' or pool='none' an `nn.Identity` keeps the
slot, so indices never shift between variants.
"""

from __future__ import annotations

from torch import nn

from padistill.errors import PadistillError
from padistill.nets.common import (
    StagedSequential,
    check_choice,
    check_int,
    check_norm,
    is_mnist_like,
    make_avg_pool,
    make_conv2d,
    make_norm,
)
from padistill.nets.registry import register_net

_ACTS = {"relu": nn.ReLU, "sigmoid": nn.Sigmoid, "leakyrelu": nn.LeakyReLU}
_POOLS = ("avg", "max", "none")
_NORMS = ("instance", "batch", "layer", "group", "none")


class ConvNet(StagedSequential):
    def __init__(self, num_classes: int, channels: int, im_size: tuple[int, int], width: int = 128,
                 depth: int = 3, norm: str = "instance", act: str = "relu", pool: str = "avg"):
        super().__init__()
        net = f"convnet-{depth}"
        h, w = im_size
        # MNIST convention of the field: a 1-channel 28x28 input is padded to a 32x32 map (padding 3).
        pad = 3 if is_mnist_like(channels, im_size) else 1
        layers: list[nn.Module] = []
        c_in = channels
        for k in range(depth):
            p = pad if k == 0 else 1
            h, w = h + 2 * p - 2, w + 2 * p - 2
            if pool != "none" and min(h, w) < 2:
                raise PadistillError(f"{net}: {channels}x{im_size[0]}x{im_size[1]} inputs are too small "
                                     f"(depth {depth} needs at least {2 ** depth}x{2 ** depth} px)")
            layers += [make_conv2d(c_in, width, 3, padding=p, bias=True), make_norm(norm, width, (h, w)),
                       _ACTS[act](), _pool(pool)]
            if pool != "none":
                h, w = h // 2, w // 2
            c_in = width
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(width * h * w, num_classes)
        self.depth = depth
        self._cuts = frozenset(4 * k + 3 for k in range(depth))  # after each block's pool
        # features_by_layer entry i comes from the modules listed here (used to map features to the
        # flat parameter ranges, see ParamLayout.stage_ranges).
        self.stages = tuple((f"block{k + 1}", tuple(f"features.{4 * k + j}" for j in range(4)))
                            for k in range(depth)) + (("classifier", ("classifier",)),)


def _pool(kind: str) -> nn.Module:
    if kind == "avg":
        return make_avg_pool()  # nn.AvgPool2d(2, 2) with fast CPU kernels (nets/fast_pool.py)
    if kind == "max":
        return nn.MaxPool2d(2, 2)
    return nn.Identity()


@register_net("convnet", variants=("convnet-bn", "convnet-ln", "convnet-nn"))
def convnet(num_classes: int, channels: int, im_size: tuple[int, int], width: int = 128, depth: int = 3,
            norm: str = "instance", act: str = "relu", pool: str = "avg") -> nn.Module:
    width = check_int("convnet", "width", width)
    depth = check_int("convnet", "depth", depth)
    norm = check_norm("convnet", norm, _NORMS)
    act = check_choice("convnet", "act", act, tuple(_ACTS))
    pool = check_choice("convnet", "pool", pool, _POOLS)
    if norm == "group" and width % 4:
        raise PadistillError("convnet: norm 'group' uses 4 groups, so option 'width' must be a multiple "
                             f"of 4; got {width}")
    return ConvNet(num_classes, channels, im_size, width=width, depth=depth, norm=norm, act=act, pool=pool)
