"""LeNet-5, no norm layers (spec §5.1; paper Appendix B "Network" for 64 px inputs).

Input [B, channels, H, W] -> logits [B, num_classes]. conv5x5(->6) -> ReLU -> MaxPool2,
conv5x5(->16) -> ReLU -> MaxPool2, Linear(400, 120) -> ReLU -> Linear(120, 84) -> ReLU -> Linear(84, C).
The first conv pads by 2 for 1-channel inputs (classic LeNet on 28x28: 28 -> 28) and not at all for
3 channels (32 -> 28), so both reach 16x5x5 = 400 features; it has stride 2 for inputs of 64 px and
larger (the paper's Tiny ImageNet rule: 64 -> 30 -> ... -> 5x5). The first Linear's input size comes
from a dummy forward, so other sizes work too.
"""

from __future__ import annotations

import torch
from torch import nn

from padistill.nets.common import check_stride, infer_shape
from padistill.nets.registry import register_net


class LeNet(nn.Module):
    def __init__(self, num_classes: int, channels: int, im_size: tuple[int, int], stem_stride: int = 1):
        super().__init__()
        pad = 2 if channels == 1 else 0
        self.features = nn.Sequential(
            nn.Conv2d(channels, 6, 5, stride=stem_stride, padding=pad), nn.ReLU(), nn.MaxPool2d(2, 2),
            nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2, 2),
        )
        n_feat = infer_shape("lenet", self.features, channels, im_size).numel()
        self.classifier = nn.Sequential(
            nn.Linear(n_feat, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, num_classes),
        )
        self.stages = (("conv1", ("features.0",)), ("conv2", ("features.3",)), ("fc1", ("classifier.0",)),
                       ("fc2", ("classifier.2",)), ("fc3", ("classifier.4",)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).flatten(1))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features: the 84-d output of fc2 after ReLU (input of the last Linear)."""
        return self.classifier[:4](self.features(x).flatten(1))

    def features_by_layer(self, x: torch.Tensor) -> list[torch.Tensor]:
        """conv1 and conv2 stage outputs (after pooling) flattened, fc1 and fc2 (after ReLU); logits last."""
        f = self.features
        a = f[2](f[1](f[0](x)))
        b = f[5](f[4](f[3](a))).flatten(1)
        c = self.classifier
        h1 = c[1](c[0](b))
        h2 = c[3](c[2](h1))
        return [a.flatten(1), b, h1, h2, c[4](h2)]


@register_net("lenet")
def lenet(num_classes: int, channels: int, im_size: tuple[int, int],
          stem_stride: int | None = None) -> nn.Module:
    stem_stride = check_stride("lenet", "stem_stride", stem_stride, im_size)
    return LeNet(num_classes, channels, im_size, stem_stride=stem_stride)
