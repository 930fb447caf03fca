"""ResNet-18, CIFAR style (spec §5.1; paper Appendix B "Network" for 64 px inputs).

Input [B, channels, H, W] -> logits [B, num_classes]. Stem: 3x3 conv to 64 channels (no bias) -> norm
-> ReLU, no max-pool; stride 1, or 2 for inputs of 64 px and larger (the paper's Tiny ImageNet rule,
so 64 px inputs reach the same 4x4 final map as 32 px ones). Then BasicBlocks [2, 2, 2, 2] with 64 /
128 / 256 / 512 channels and strides 1 / 2 / 2 / 2, a global average pool and Linear(512, C).

The reference pools with avg_pool2d(4); here the pool is adaptive to 1x1, which is the same at
32 px (4x4 final map) and also works for other input sizes. Norm: 'instance' (GroupNorm with one
group per channel, the default of the field) or 'batch' (ResNet18-BN).

Parameter order: modules are registered in forward order (stem, layer1..4, classifier; inside a block
conv1, norm1, conv2, norm2, then the shortcut, which forward also runs last), so `named_parameters()`
goes from shallow to deep as PAD's depth mask assumes.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from padistill.errors import PadistillError
from padistill.nets.common import check_norm, check_stride, make_norm
from padistill.nets.registry import register_net

_NORMS = ("instance", "batch", "group", "none")


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int, norm: str):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.norm1 = make_norm(norm, c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, stride=1, padding=1, bias=False)
        self.norm2 = make_norm(norm, c_out)
        if stride != 1 or c_in != c_out:
            # 1x1 projection so the residual has the block's output shape.
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False),
                                          make_norm(norm, c_out))
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.norm1(self.conv1(x)))
        out = self.norm2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet18(nn.Module):
    def __init__(self, num_classes: int, channels: int, norm: str = "instance", stem_stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, 64, 3, stride=stem_stride, padding=1, bias=False)
        self.norm1 = make_norm(norm, 64)
        c_in = 64
        for i, (c_out, stride) in enumerate([(64, 1), (128, 2), (256, 2), (512, 2)]):
            blocks = [BasicBlock(c_in, c_out, stride, norm), BasicBlock(c_out, c_out, 1, norm)]
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
            c_in = c_out
        self.classifier = nn.Linear(512, num_classes)
        self.stages = (("stem", ("conv1", "norm1")), ("layer1", ("layer1",)), ("layer2", ("layer2",)),
                       ("layer3", ("layer3",)), ("layer4", ("layer4",)), ("classifier", ("classifier",)))

    def _trunk(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = F.relu(self.norm1(self.conv1(x)))
        outs = [x]
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            outs.append(layer(outs[-1]))
        return outs

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features: the globally pooled 512-d output of layer4."""
        x = F.relu(self.norm1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return F.adaptive_avg_pool2d(x, 1).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.embed(x))

    def features_by_layer(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Stem and layer1..3 outputs flattened, layer4 globally pooled (= embed), logits last."""
        outs = self._trunk(x)
        feats = [o.flatten(1) for o in outs[:-1]]
        feats.append(F.adaptive_avg_pool2d(outs[-1], 1).flatten(1))
        feats.append(self.classifier(feats[-1]))
        return feats


@register_net("resnet18", variants=("resnet18-bn",))
def resnet18(num_classes: int, channels: int, im_size: tuple[int, int], norm: str = "instance",
             stem_stride: int | None = None) -> nn.Module:
    norm = check_norm("resnet18", norm, _NORMS)
    stem_stride = check_stride("resnet18", "stem_stride", stem_stride, im_size)
    # Each stride-2 conv (3x3, padding 1) maps n px to ceil(n / 2); layer4 sees the stem size / 8.
    final = [math.ceil(math.ceil(n / stem_stride) / 8) for n in im_size]
    if norm == "instance" and min(final) == 1:
        # Instance norm of a 1x1 map normalises a single value: layer4 would output its bias for every
        # input, so the net could not learn. Refuse instead of training a constant.
        raise PadistillError(f"resnet18: {im_size[0]}x{im_size[1]} inputs leave a 1x1 map in layer4, where "
                             "instance norm is degenerate; use >= 16 px (or norm 'batch')")
    return ResNet18(num_classes, channels, norm=norm, stem_stride=stem_stride)
