"""Network registry: `register_net`, `build`, `list_nets`, `parse_net_name`, `count_params`.

Input: a net name such as `convnet`, `ConvNet-4`, `convnetd4`, `convnet-4-bn`, `ResNet-18-BN`,
`vgg11-bn` (case-insensitive, DD-Ranking style), the data shape and options. Output: an `nn.Module`
built on the CPU with PyTorch's default initialisation (as the field does; spec §5.1).

Families register a builder `fn(num_classes, channels, im_size, **options)`; its keyword arguments are
the options the family takes, so unknown options are rejected by name. Suffix tokens of a name map to
options: `<n>` or `d<n>` depth, `w<n>` width, `bn`/`in`/`ln`/`gn`/`nn` norm (batch, instance, layer,
group, none), `mp`/`ap`/`np` pooling (max, avg, none), `ar`/`as`/`al` activation (relu, sigmoid,
leaky relu). Explicit options passed to `build` override those from the name.
"""

from __future__ import annotations

import inspect
import numbers
import re
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from padistill.errors import PadistillError


@dataclass(frozen=True)
class _Entry:
    fn: Callable[..., nn.Module]
    variants: tuple[str, ...]  # extra canonical names shown by list_nets (e.g. convnet-bn)
    options: tuple[str, ...]  # keyword options the builder takes


_REGISTRY: dict[str, _Entry] = {}

_NORM_TOKENS = {"bn": "batch", "in": "instance", "ln": "layer", "gn": "group", "nn": "none"}
_POOL_TOKENS = {"mp": "max", "ap": "avg", "np": "none"}
_ACT_TOKENS = {"ar": "relu", "as": "sigmoid", "al": "leakyrelu"}
# One suffix token, optionally preceded by '-' or '_'. Order matters: 'nn' (no norm) must be tried
# before the pooling tokens so that 'np' still parses as "no pooling".
_TOKEN = re.compile(r"[-_]?(?:d(?P<dep>\d+)|w(?P<width>\d+)|(?P<num>\d+)|(?P<norm>bn|in|ln|gn|nn)"
                    r"|(?P<pool>mp|ap|np)|(?P<act>ar|as|al))")


def register_net(name: str, *, variants: tuple[str, ...] = ()):
    """Decorator registering a builder under `name` (lower case letters and digits, e.g. 'resnet18').

    `variants`: parseable names listed next to `name` by `list_nets` (and so covered by the tests that
    iterate over the registry), e.g. ('convnet-bn',).
    """
    key = name.lower()
    if not re.fullmatch(r"[a-z][a-z0-9]*", key):
        raise PadistillError(f"register_net: name {name!r} must be letters and digits (suffixes use '-')")

    def decorator(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if key in _REGISTRY:
            raise PadistillError(f"register_net: {key!r} is already registered")
        params = list(inspect.signature(fn).parameters.values())
        if len(params) < 3:
            raise PadistillError(f"register_net: the {key} builder must take "
                                 "(num_classes, channels, im_size, **options)")
        options = tuple(p.name for p in params[3:] if p.kind is not inspect.Parameter.VAR_KEYWORD)
        _REGISTRY[key] = _Entry(fn, tuple(v.lower() for v in variants), options)
        return fn

    return decorator


def list_nets() -> list[str]:
    """Canonical net names in registration order: each family followed by its listed variants."""
    return [n for key, entry in _REGISTRY.items() for n in (key, *entry.variants)]


def _unknown(name: str) -> PadistillError:
    return PadistillError(f"unknown net {name!r}; known nets: {', '.join(list_nets())} "
                          "(suffixes: -<depth>, -w<width>, -bn, -in, -ln, -gn, -nn)")


def _family_pattern(family: str) -> re.Pattern:
    # 'resnet18' also matches 'resnet-18' / 'resnet_18': allow a separator where letters meet digits.
    return re.compile(re.sub(r"(?<=[a-z])(?=\d)|(?<=\d)(?=[a-z])", "[-_]?", family))


def parse_net_name(name: str) -> tuple[str, dict]:
    """Split a net name into (family, options): 'ConvNet-4-BN' -> ('convnet', {depth: 4, norm: batch})."""
    if not isinstance(name, str) or not name.strip():
        raise PadistillError(f"net name must be a non-empty string; got {name!r}")
    s = name.strip().lower()
    for family in sorted(_REGISTRY, key=len, reverse=True):
        m = _family_pattern(family).match(s)
        if m:
            return family, _parse_suffix(s[m.end():], name)
    raise _unknown(name)


def net_identity(name: str, options: dict | None = None) -> tuple[str, dict]:
    """(family, every builder option with defaults filled in): two specs that build the same architecture get
    the same identity (`convnet`, `convnet-3`, `ConvNet-3-IN` and convnet {depth: 3}), `-bn` and `-in` do not."""
    family, parsed = parse_net_name(name)
    fn = _REGISTRY[family].fn
    defaults = {q.name: q.default for q in list(inspect.signature(fn).parameters.values())[3:]
                if q.default is not inspect.Parameter.empty}
    return family, {**defaults, **parsed, **(options or {})}


def _parse_suffix(rest: str, name: str) -> dict:
    options: dict = {}

    def put(key, value):
        if key in options:
            raise PadistillError(f"net name {name!r} sets {key!r} twice")
        options[key] = value

    pos = 0
    while pos < len(rest):
        m = _TOKEN.match(rest, pos)
        if not m or m.end() == pos:
            raise _unknown(name)
        pos = m.end()
        if m["dep"] or m["num"]:
            put("depth", int(m["dep"] or m["num"]))
        elif m["width"]:
            put("width", int(m["width"]))
        elif m["norm"]:
            put("norm", _NORM_TOKENS[m["norm"]])
        elif m["pool"]:
            put("pool", _POOL_TOKENS[m["pool"]])
        else:
            put("act", _ACT_TOKENS[m["act"]])
    return options


def _as_hw(im_size) -> tuple[int, int]:
    if isinstance(im_size, numbers.Integral) and not isinstance(im_size, bool):
        im_size = (im_size, im_size)
    try:
        h, w = im_size
    except (TypeError, ValueError):
        raise PadistillError(f"im_size must be an int or a pair (H, W); got {im_size!r}") from None
    for v in (h, w):
        if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 1:
            raise PadistillError(f"im_size must hold positive integers; got {im_size!r}")
    return int(h), int(w)


def _positive(what: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise PadistillError(f"{what} must be a positive integer; got {value!r}")
    return int(value)


def build(name: str, num_classes: int, channels: int, im_size, seed: int | None = None,
          **options) -> nn.Module:
    """Build a registered net on the CPU (callers move it with `.to(device)`).

    `seed`: if given, the parameters are drawn from `torch.manual_seed(seed)` inside a forked CPU RNG,
    so the same seed gives bit-identical parameters and the global RNG state is left unchanged.
    The model gets a `net_spec` dict (family, options, num_classes, channels, im_size) for bookkeeping.
    """
    family, parsed = parse_net_name(name)
    entry = _REGISTRY[family]
    opts = {**parsed, **options}
    for key in opts:
        if key not in entry.options:
            takes = ", ".join(entry.options) or "no options"
            raise PadistillError(f"net {name!r}: {family} does not take option {key!r} (it takes: {takes})")
    num_classes = _positive("num_classes", num_classes)
    channels = _positive("channels", channels)
    hw = _as_hw(im_size)
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, numbers.Integral)):
        raise PadistillError(f"seed must be an integer or None; got {seed!r}")
    # Build on the CPU even if a caller changed torch's default device.
    with torch.device("cpu"):
        if seed is None:
            model = entry.fn(num_classes, channels, hw, **opts)
        else:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(int(seed))
                model = entry.fn(num_classes, channels, hw, **opts)
    model.net_spec = {"family": family, "options": opts, "num_classes": num_classes,
                      "channels": channels, "im_size": hw}
    return model


def count_params(model: nn.Module) -> int:
    """P: number of parameter elements, shared parameters counted once (= ParamLayout.total)."""
    return sum(p.numel() for p in model.parameters())
