"""Flattened parameter layout and the functional student (spec §3.8 and §5.2; paper §3.3 eq. 4).

Input: a model. Output: a `ParamLayout` describing how its parameters sit in one flat vector of
length P, shallow to deep, plus `functional_forward`, which runs the model with parameters taken from
such a vector (the reference's ReparamModule, done with `torch.func.functional_call`).

Order: `named_parameters()` order, i.e. modules in registration (pre-order) order and within a module
weight before bias; shared parameters appear once. Every net in `padistill.nets` registers its
modules in the order forward runs them, so this order is also shallow -> deep, which is what PAD's
depth mask ("drop the first floor(alpha * P) entries") relies on. tests/nets checks this with forward
hooks for every registered net. The order equals `model.parameters()`, hence the order in which
expert checkpoints are stored.
"""

from __future__ import annotations

import bisect
import itertools
import math
import numbers
from collections.abc import Mapping, Sequence

import torch
from torch import nn
from torch.func import functional_call

from padistill.errors import PadistillError


def depth_order(model: nn.Module) -> list[str]:
    """Parameter names from shallow to deep (= `named_parameters()` order for padistill nets)."""
    return [name for name, _ in model.named_parameters()]


class ParamLayout:
    """Names, shapes and flat offsets of a model's parameters (P = `total`).

    Conv weights flatten as (out, in, kh, kw) row-major, so a cut inside a conv weight drops whole
    output filters plus part of one filter (spec §5.2).
    """

    def __init__(self, names: Sequence[str], shapes: Sequence[Sequence[int]], tied: bool = True):
        if len(names) != len(shapes):
            raise PadistillError(f"layout: {len(names)} names but {len(shapes)} shapes")
        self.names: tuple[str, ...] = tuple(names)
        self.shapes: tuple[torch.Size, ...] = tuple(torch.Size(s) for s in shapes)
        self.numels: tuple[int, ...] = tuple(math.prod(s) for s in self.shapes)
        ends = list(itertools.accumulate(self.numels, initial=0))
        self.offsets: tuple[int, ...] = tuple(ends[:-1])
        self.total: int = ends[-1]
        # Whether functional_forward must propagate a parameter to all names sharing it. Checking
        # costs a walk over the model per call, so layouts built from an untied model skip it.
        self._tied = tied

    @classmethod
    def from_model(cls, model: nn.Module) -> ParamLayout:
        named = list(model.named_parameters())
        tied = len(list(model.named_parameters(remove_duplicate=False))) != len(named)
        return cls([n for n, _ in named], [p.shape for _, p in named], tied=tied)

    def __repr__(self) -> str:
        return f"ParamLayout({len(self.names)} tensors, total={self.total})"

    def to_json(self) -> dict:
        """{'names': [...], 'shapes': [[...], ...]}: the experts folder's layout.json."""
        return {"names": list(self.names), "shapes": [list(s) for s in self.shapes]}

    @classmethod
    def from_json(cls, data: dict, where: str) -> ParamLayout:
        """A layout read from a file (`to_json`'s format), validated; one-line errors naming `where`."""
        try:
            names = [str(n) for n in data["names"]]
            shapes = [[int(d) for d in s] for s in data["shapes"]]
        except (KeyError, TypeError, ValueError):
            raise PadistillError(f"{where}: expected {{'names': [...], 'shapes': [[...], ...]}}") from None
        if len(names) != len(shapes):
            raise PadistillError(f"{where}: {len(names)} names but {len(shapes)} shapes")
        if any(d < 0 for s in shapes for d in s):
            raise PadistillError(f"{where}: negative dimension in a parameter shape")
        return cls(names, shapes, tied=False)

    def __eq__(self, other) -> bool:
        return isinstance(other, ParamLayout) and (self.names, self.shapes) == (other.names, other.shapes)

    def __hash__(self) -> int:
        return hash((self.names, self.shapes))

    def flatten(self, tensors) -> torch.Tensor:
        """One 1-D tensor of length P from tensors in layout order, or from a dict name -> tensor (a
        state_dict works: buffers are ignored). Not detached: gradients flow to the inputs."""
        if isinstance(tensors, Mapping):
            missing = [n for n in self.names if n not in tensors]
            if missing:
                raise PadistillError(f"layout: parameter {missing[0]!r} missing ({len(missing)} of "
                                     f"{len(self.names)} missing)")
            tensors = [tensors[n] for n in self.names]
        else:
            tensors = list(tensors)
            if len(tensors) != len(self.names):
                raise PadistillError(f"layout: expected {len(self.names)} tensors, got {len(tensors)}")
        for name, shape, t in zip(self.names, self.shapes, tensors):
            if t.shape != shape:
                raise PadistillError(f"layout: {name} has shape {tuple(t.shape)}, expected {tuple(shape)}")
        return torch.cat([t.reshape(-1) for t in tensors])

    def split(self, flat: torch.Tensor) -> list[torch.Tensor]:
        """The tensors of `flat` in layout order, reshaped (views of `flat` when it is contiguous)."""
        if flat.dim() != 1 or flat.shape[0] != self.total:
            raise PadistillError(f"layout: expected a flat vector of length {self.total}, "
                                 f"got shape {tuple(flat.shape)}")
        return [chunk.reshape(shape) for chunk, shape in zip(flat.split(self.numels), self.shapes)]

    def unflatten(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        """name -> tensor, views into `flat` (so autograd flows from the views to `flat`)."""
        return dict(zip(self.names, self.split(flat)))

    def index_of(self, position: int) -> tuple[str, int]:
        """(parameter name, offset inside that tensor) of a flat position, e.g. a depth cut."""
        if (isinstance(position, bool) or not isinstance(position, numbers.Integral)
                or not 0 <= position < self.total):
            raise PadistillError(f"layout: flat position must be an int in [0, {self.total}); "
                                 f"got {position!r}")
        i = bisect.bisect_right(self.offsets, int(position)) - 1
        return self.names[i], int(position) - self.offsets[i]

    def layer_ranges(self) -> list[tuple[str, int, int]]:
        """(module name, start, end) per module owning parameters, e.g. ('features.0', 0, 3584)."""
        out: list[tuple[str, int, int]] = []
        for name, start, n in zip(self.names, self.offsets, self.numels):
            module = name.rpartition(".")[0]
            if out and out[-1][0] == module and out[-1][2] == start:
                out[-1] = (module, out[-1][1], start + n)
            else:
                out.append((module, start, start + n))
        return out

    def stage_ranges(self, model: nn.Module) -> list[tuple[str, int, int]]:
        """(stage label, start, end) aligned one-to-one with `model.features_by_layer(x)`, so a depth
        cut can be mapped to the feature stages it leaves intact (distribution matching)."""
        stages = getattr(model, "stages", None)
        if stages is None:
            raise PadistillError(f"layout: {type(model).__name__} does not declare its stages")
        out = []
        for label, prefixes in stages:
            idx = [i for i, n in enumerate(self.names) if any(n.startswith(p + ".") for p in prefixes)]
            if not idx:
                raise PadistillError(f"layout: stage {label!r} owns no parameters")
            if idx != list(range(idx[0], idx[-1] + 1)):
                raise PadistillError(f"layout: stage {label!r} is not contiguous in the flat vector")
            out.append((label, self.offsets[idx[0]], self.offsets[idx[-1]] + self.numels[idx[-1]]))
        return out

    def functional_forward(self, model: nn.Module, flat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """model(x) with its parameters replaced by views of `flat`.

        Differentiable w.r.t. `flat` and `x`, including double backward (the unrolled student).
        Buffers are the model's own: BatchNorm uses batch statistics and updates its running stats in
        train mode, and uses the running stats in eval mode, exactly as model(x) would.
        """
        return functional_call(model, dict(zip(self.names, self.split(flat))), (x,), tie_weights=self._tied)


def param_layout(model: nn.Module) -> ParamLayout:
    """The flat layout of `model`'s parameters, shallow -> deep (see module docstring)."""
    return ParamLayout.from_model(model)
