"""MLP baseline for cross-architecture evaluation (paper Appendix B "Network"; spec §5.1).

Input [B, channels, H, W] (flattened inside) -> logits [B, num_classes].
Default: Linear(channels*H*W, 128) -> ReLU -> Linear(128, C), ONE hidden layer of 128 units as the
paper states. `hidden_layers=2` gives the reference code's variant with a second 128 -> 128 layer
(spec §5.1 notes the mismatch). Hidden layers live in `features` (Linear, ReLU pairs), the output
layer is `classifier`.
"""

from __future__ import annotations

import torch
from torch import nn

from padistill.nets.common import check_int
from padistill.nets.registry import register_net


class MLP(nn.Module):
    def __init__(self, num_classes: int, channels: int, im_size: tuple[int, int], width: int = 128,
                 hidden_layers: int = 1):
        super().__init__()
        layers: list[nn.Module] = []
        d_in = channels * im_size[0] * im_size[1]
        for _ in range(hidden_layers):
            layers += [nn.Linear(d_in, width), nn.ReLU()]
            d_in = width
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(d_in, num_classes)
        self.stages = tuple((f"fc{k + 1}", (f"features.{2 * k}",)) for k in range(hidden_layers)) + (
            ("classifier", ("classifier",)),)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x.flatten(1)))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features: the last hidden layer's output after ReLU."""
        return self.features(x.flatten(1))

    def features_by_layer(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Each hidden layer's output after ReLU, shallow -> deep; logits last."""
        x = x.flatten(1)
        outs = []
        for i, module in enumerate(self.features):
            x = module(x)
            if i % 2 == 1:
                outs.append(x)
        outs.append(self.classifier(outs[-1]))
        return outs


@register_net("mlp")
def mlp(num_classes: int, channels: int, im_size: tuple[int, int], width: int = 128,
        hidden_layers: int = 1) -> nn.Module:
    width = check_int("mlp", "width", width)
    hidden_layers = check_int("mlp", "hidden_layers", hidden_layers)
    return MLP(num_classes, channels, im_size, width=width, hidden_layers=hidden_layers)
