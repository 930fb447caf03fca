"""VGG-11 for small images (spec §5.1; paper Appendix B "Network" for 64 px inputs).

Input [B, channels, H, W] -> logits [B, num_classes]. Configuration
[64, M, 128, M, 256, 256, M, 512, 512, M, 512, 512, M]: each number is Conv2d(3x3, padding 1) -> norm
-> ReLU, each M a 2x2 max-pool; then a final kernel-1 pool with stride 1, or 2 for inputs of 64 px and
larger (the paper: "adjust the stride of its final max pooling layer from 1 to 2"), so both 32 px and
64 px end in a 1x1 map and Linear(512, C). A kernel-1 pool only subsamples, so max (paper) and avg
(reference code) pooling are the same operation here.

Like the reference, a 1-channel 28x28 input (MNIST) gets padding 3 in the first conv (28 -> 32);
without it five 2x2 pools would shrink the map to zero. The classifier input size is taken from a
dummy forward, so any size the pools allow works; smaller inputs raise a PadistillError.
Norm: 'instance' (GroupNorm per channel, default) or 'batch' (VGG11-BN).
"""

from __future__ import annotations

from torch import nn

from padistill.nets.common import StagedSequential, check_norm, check_stride, infer_shape, is_mnist_like, make_norm
from padistill.nets.registry import register_net

_CFG = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")
_NORMS = ("instance", "batch", "group", "none")


class VGG11(StagedSequential):
    def __init__(self, num_classes: int, channels: int, im_size: tuple[int, int], norm: str = "instance",
                 final_stride: int = 1):
        super().__init__()
        layers: list[nn.Module] = []
        stages: list[tuple[str, tuple[str, ...]]] = []
        # Index (into `features`) after which each stage's output is taken: the conv block, plus the
        # max-pool that follows it, if any.
        cuts: list[int] = []
        c_in = channels
        for v in _CFG:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
                cuts[-1] = len(layers) - 1
                continue
            pad = 3 if (not layers and is_mnist_like(channels, im_size)) else 1
            first = len(layers)
            layers += [nn.Conv2d(c_in, v, 3, padding=pad), make_norm(norm, v), nn.ReLU()]
            stages.append((f"conv{len(stages) + 1}", tuple(f"features.{first + j}" for j in range(3))))
            cuts.append(len(layers) - 1)
            c_in = v
        layers.append(nn.MaxPool2d(1, final_stride))
        cuts[-1] = len(layers) - 1
        self.features = nn.Sequential(*layers)
        self._cuts = frozenset(cuts)
        n_feat = infer_shape("vgg11", self.features, channels, im_size).numel()
        self.classifier = nn.Linear(n_feat, num_classes)
        self.stages = (*stages, ("classifier", ("classifier",)))


@register_net("vgg11", variants=("vgg11-bn",))
def vgg11(num_classes: int, channels: int, im_size: tuple[int, int], norm: str = "instance",
          final_stride: int | None = None) -> nn.Module:
    norm = check_norm("vgg11", norm, _NORMS)
    final_stride = check_stride("vgg11", "final_stride", final_stride, im_size)
    return VGG11(num_classes, channels, im_size, norm=norm, final_stride=final_stride)
