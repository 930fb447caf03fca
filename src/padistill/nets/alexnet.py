"""AlexNet for small images, no norm layers (spec §5.1; paper Appendix B "Network" for 64 px inputs).

Input [B, channels, H, W] -> logits [B, num_classes]. conv5x5(->128, padding 2) -> ReLU -> MaxPool2,
conv5x5(->192, padding 2) -> ReLU -> MaxPool2, conv3x3 ->256, ->192, ->192 (padding 1, ReLU each),
MaxPool2, Linear(192*4*4, C) at 32 px. The first conv has stride 2 for inputs of 64 px and larger
(the paper's Tiny ImageNet rule), which brings 64 px inputs to the 32 px map sizes.

A 1-channel 28x28 input (MNIST) gets padding 4 in the first conv (28 -> 32), the field's convention,
so it reaches the same 4x4 map as CIFAR. The classifier input size comes from a dummy forward.
"""

from __future__ import annotations

from torch import nn

from padistill.nets.common import StagedSequential, check_stride, infer_shape, is_mnist_like
from padistill.nets.registry import register_net


class AlexNet(StagedSequential):
    def __init__(self, num_classes: int, channels: int, im_size: tuple[int, int], stem_stride: int = 1):
        super().__init__()
        pad = 4 if is_mnist_like(channels, im_size) else 2
        self.features = nn.Sequential(
            nn.Conv2d(channels, 128, 5, stride=stem_stride, padding=pad), nn.ReLU(), nn.MaxPool2d(2, 2),
            nn.Conv2d(128, 192, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2, 2),
            nn.Conv2d(192, 256, 3, padding=1), nn.ReLU(),
            nn.Conv2d(256, 192, 3, padding=1), nn.ReLU(),
            nn.Conv2d(192, 192, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2, 2),
        )
        n_feat = infer_shape("alexnet", self.features, channels, im_size).numel()
        self.classifier = nn.Linear(n_feat, num_classes)
        # Last module index of each conv stage (its ReLU, or the max-pool that follows).
        self._cuts = frozenset((2, 5, 7, 9, 12))
        self.stages = (("conv1", ("features.0",)), ("conv2", ("features.3",)), ("conv3", ("features.6",)),
                       ("conv4", ("features.8",)), ("conv5", ("features.10",)),
                       ("classifier", ("classifier",)))


@register_net("alexnet")
def alexnet(num_classes: int, channels: int, im_size: tuple[int, int],
            stem_stride: int | None = None) -> nn.Module:
    stem_stride = check_stride("alexnet", "stem_stride", stem_stride, im_size)
    return AlexNet(num_classes, channels, im_size, stem_stride=stem_stride)
