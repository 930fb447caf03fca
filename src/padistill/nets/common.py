"""Small helpers shared by the network families: option checks, norm layers, size rules.

Input: the raw options a builder received. Output: validated values, or a one-line `PadistillError`
that names the net and the option. Also the size conventions of the field (spec §5.1, paper
Appendix B "Network"): 1-channel 28x28 inputs (MNIST) are padded to 32x32 by the first conv, and
nets with a stride rule switch to their "Tiny" stride at 64x64 and above.
"""

from __future__ import annotations

import numbers
import os

import torch
from torch import nn

from padistill.errors import PadistillError
from padistill.nets.fast_conv import Conv2d
from padistill.nets.fast_norm import InstanceNorm
from padistill.nets.fast_pool import AvgPool2x2

# Accepted spellings of each norm kind: the short name, the reference code's long names and the
# suffixes of parseable net names (convnet-bn, ...).
NORM_ALIASES = {
    "instance": "instance", "instancenorm": "instance", "in": "instance",
    "batch": "batch", "batchnorm": "batch", "bn": "batch",
    "layer": "layer", "layernorm": "layer", "ln": "layer",
    "group": "group", "groupnorm": "group", "gn": "group",
    "none": "none", "nonorm": "none", "nn": "none",
}

# Input sizes from which the "Tiny ImageNet" stride rules of the paper's appendix apply.
LARGE_INPUT = 64


def check_int(net: str, option: str, value, minimum: int = 1) -> int:
    """An integer option >= minimum (bools are rejected although they are ints in Python)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise PadistillError(f"{net}: option {option!r} must be an integer >= {minimum}; got {value!r}")
    return int(value)


def check_choice(net: str, option: str, value, choices) -> str:
    """A string option from `choices` (compared case-insensitively)."""
    key = value.lower() if isinstance(value, str) else value
    if key not in choices:
        raise PadistillError(f"{net}: option {option!r} must be one of {', '.join(choices)}; got {value!r}")
    return key


def check_norm(net: str, value, allowed: tuple[str, ...]) -> str:
    """Canonical norm kind ('instance', 'batch', ...) from any accepted spelling."""
    kind = NORM_ALIASES.get(value.lower()) if isinstance(value, str) else None
    if kind not in allowed:
        raise PadistillError(f"{net}: option 'norm' must be one of {', '.join(allowed)}; got {value!r}")
    return kind


def check_stride(net: str, option: str, value, im_size: tuple[int, int]) -> int:
    """A stride option; None means the paper's rule: 2 for inputs of 64 px and larger, else 1."""
    if value is None:
        return 2 if is_large(im_size) else 1
    return check_int(net, option, value)


def is_large(im_size: tuple[int, int]) -> bool:
    return min(im_size) >= LARGE_INPUT


def is_mnist_like(channels: int, im_size: tuple[int, int]) -> bool:
    """1-channel 28x28 inputs, which the field pads to 32x32 in the first conv."""
    return channels == 1 and tuple(im_size) == (28, 28)


# Set to 1 to build PyTorch's own layers instead of the CPU fast paths (A/B timing, fallback), read when a
# net is built: 'instance' norms as nn.GroupNorm (fast_norm.py), ConvNet convolutions as nn.Conv2d
# (fast_conv.py), ConvNet 2x2 average pools as nn.AvgPool2d (fast_pool.py).
NATIVE_NORM_ENV = "PADISTILL_NATIVE_NORM"
NATIVE_CONV_ENV = "PADISTILL_NATIVE_CONV"
NATIVE_POOL_ENV = "PADISTILL_NATIVE_POOL"
NATIVE_ENVS = (NATIVE_NORM_ENV, NATIVE_CONV_ENV, NATIVE_POOL_ENV)


def native_requested(env: str) -> bool:
    return os.environ.get(env, "").strip().lower() in ("1", "true", "yes", "on")


def make_conv2d(*args, native: bool | None = None, **kwargs) -> nn.Module:
    """`Conv2d(*args, **kwargs)` with the fast double backward (fast_conv.py), or plain `nn.Conv2d` when
    `native` (default: PADISTILL_NATIVE_CONV). Parameters and state_dict are the same either way."""
    native = native if native is not None else native_requested(NATIVE_CONV_ENV)
    return (nn.Conv2d if native else Conv2d)(*args, **kwargs)


def make_avg_pool(native: bool | None = None) -> nn.Module:
    """The 2x2/stride-2 average pool: `AvgPool2x2` (fast_pool.py), or `nn.AvgPool2d(2, 2)` when `native`
    (default: PADISTILL_NATIVE_POOL)."""
    native = native if native is not None else native_requested(NATIVE_POOL_ENV)
    return nn.AvgPool2d(2, 2) if native else AvgPool2x2()


def make_norm(kind: str, c: int, hw: tuple[int, int] | None = None, native: bool | None = None) -> nn.Module:
    """The norm layer after a conv with `c` output channels (spatial size `hw`, needed for 'layer').

    'instance' is GroupNorm with one group per channel: per-sample per-channel statistics, a learnable
    scale/shift and no running buffers (the reference's 'instancenorm', spec §5.1). It is built as
    `InstanceNorm`, a GroupNorm subclass with the same parameters and state_dict whose double backward
    is hand-written (the unrolled student spends much less time in it, see fast_norm.py);
    `native=True`, or PADISTILL_NATIVE_NORM=1 when `native` is None, gives the plain nn.GroupNorm.
    'none' gives an Identity so that module indices stay the same as with a norm (the flat layout only
    shifts by the missing norm parameters).
    """
    if kind == "instance":
        if native if native is not None else native_requested(NATIVE_NORM_ENV):
            return nn.GroupNorm(c, c, affine=True)
        return InstanceNorm(c)
    if kind == "batch":
        return nn.BatchNorm2d(c)
    if kind == "layer":
        return nn.LayerNorm([c, *hw], elementwise_affine=True)
    if kind == "group":
        return nn.GroupNorm(4, c, affine=True)
    return nn.Identity()


def infer_shape(net: str, features: nn.Module, channels: int, im_size: tuple[int, int]) -> torch.Size:
    """Output shape (without batch) of `features` for one input, from a dummy forward.

    Runs in eval mode under no_grad so BatchNorm statistics are not touched and no RNG is drawn; a
    feature map that shrinks below 1 px becomes a PadistillError instead of a deep torch error. The
    dummy batch holds 2 samples because GroupNorm refuses a single value per group (1x1 maps).
    """
    was_training = features.training
    features.eval()
    try:
        with torch.no_grad():
            out = features(torch.zeros(2, channels, *im_size))
    except (RuntimeError, ValueError) as exc:
        raise PadistillError(
            f"{net}: {channels}x{im_size[0]}x{im_size[1]} inputs are too small for this network "
            "(the feature map shrinks below 1 px)") from exc
    finally:
        features.train(was_training)
    if out.numel() == 0:
        raise PadistillError(f"{net}: {channels}x{im_size[0]}x{im_size[1]} inputs are too small for this net")
    return out.shape[1:]


class StagedSequential(nn.Module):
    """A `features` Sequential followed by one linear `classifier`, with per-stage feature taps.

    Subclasses set `self.features`, `self.classifier`, `self._cuts` (indices into `features` after which a
    stage's output is taken) and `self.stages` (the modules of each stage, shallow -> deep, for
    ParamLayout.stage_ranges).
    """

    features: nn.Sequential
    classifier: nn.Linear
    _cuts: frozenset[int]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).flatten(1))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features: the flattened `features` output (the classifier input)."""
        return self.features(x).flatten(1)

    def features_by_layer(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Output of every stage, flattened to [B, -1], shallow -> deep; logits last."""
        outs = []
        for i, module in enumerate(self.features):
            x = module(x)
            if i in self._cuts:
                outs.append(x.flatten(1))
        outs.append(self.classifier(outs[-1]))
        return outs
