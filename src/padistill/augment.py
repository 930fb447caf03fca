"""Differentiable Siamese Augmentation (DSA; Zhao & Bilen, "Dataset Condensation with Differentiable
Siamese Augmentation", ICML 2021), re-implemented from the reference spec §3.11 (and §1.3, §8.21).

DSA augments images with transforms that are differentiable w.r.t. the pixels, so gradients reach the
synthetic images through the augmentation. It is used by every method here: expert training (§1.3),
the unrolled student of MTT / DATM / PAD (§3.6), evaluation training (§4), and DC / DM, where the
"siamese" part matters: one parameter set is applied identically to a real and a synthetic batch.

Families (strategy string 'color_crop_cutout_flip_scale_rotate', any subset, underscore-separated):

- color:  brightness, then saturation, then contrast, each with its own u ~ U[0, 1) per sample:
          x + (u - 0.5) * brightness;  (x - mean_C) * (u * saturation) + mean_C  (mean over channels,
          per pixel);  (x - mean_CHW) * (u + contrast) + mean_CHW  (mean over C, H, W per sample).
- crop:   translation by integers dy, dx ~ U{-s, .., s}, s = round(crop * size) per spatial dim
          (4 px at 32, 8 px at 64); uncovered pixels become 0. out[i, j] = x[i - dy, j - dx].
- cutout: a square of side round(cutout * size) per dim is set to 0, its centre a uniform integer over
          the image, clipped at the borders (so the zeroed region can be a smaller rectangle).
- flip:   horizontal flip with probability `flip` per sample.
- scale:  independent x / y factors ~ U[1/scale, scale], resampled with affine_grid + grid_sample
          (bilinear, align_corners=True, zero padding).
- rotate: angle ~ U[-rotate, rotate] degrees, same sampler (rotation happens in normalised grid
          coordinates, so non-square images are rotated in their own aspect, as in the reference).

Modes: 'S' (the reference default, used everywhere in PAD) draws ONE family per call, uniformly among
the strategy's families (torch.randint on the caller's generator), with independent per-sample
parameters. 'M' applies every family of the strategy in strategy order, each with its own parameters.

Design:
- `sample` draws everything on the CPU from an explicit CPU `torch.Generator` (never the global RNG or
  the clock) into a replayable `AugDraw`; `apply` moves it to x's device and is a pure, differentiable
  function of x. Same seed => same draw on CPU and GPU, and the unroll of §3.6 can be recomputed with
  exactly the same augmentation.
- `shared=True` is the siamese mode: one parameter set (leading dim 1) broadcast over any batch size.
- Identity: use `NoAugment` (same interface, draws nothing) for `augment: false`; `DSA('')` is an error
  so that an empty strategy string in a config cannot silently turn augmentation off.
- Augmentation acts on model-space tensors (e.g. ZCA-whitened floats) and never clamps.
- Rounding: round(v) means round-half-up (floor(v + 0.5)), the reference's int(v + 0.5); it differs from
  Python's banker's round only at exact halves (e.g. 0.125 * 4).
- Cutout centre: uniform over 0 .. size - 1, plus one extra position (size) when the side is even, as
  in the reference; this makes the clipped region symmetric ((side + 1) // 2 rows / cols remain at
  either border).

Cost (batched, no Python loop over samples, no host sync in `apply`): color = an add, 2 fused lerps and
2 reductions; crop = one gather + one mask multiply; cutout = one mask multiply; flip = one flip copy +
one where; scale / rotate = affine_grid + grid_sample (the most expensive, still a small fraction of a
ConvNet forward). On 2 CPU threads, one [256, 3, 32, 32] call takes roughly 1 ms (color, crop), 0.4 ms
(cutout, flip) and 3 ms (scale, rotate). Index / mask tensors are [n, H] / [n, W] broadcasts built per
call on the device (a few tiny kernels); they are not cached across calls, so a tensor made under
inference_mode or for another device can never leak into an autograd graph.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F

from padistill.errors import PadistillError

__all__ = ["FAMILIES", "FAMILY_KEYS", "DEFAULT_STRATEGY", "AugDraw", "DSA", "DSAParams", "NoAugment",
           "round_half_up"]

DEFAULT_STRATEGY = "color_crop_cutout_flip_scale_rotate"
FAMILIES = ("color", "crop", "cutout", "flip", "scale", "rotate")
# The parameter names each family stores in AugDraw.values (unique across families, so an 'M' draw can
# hold all of them in one dict).
FAMILY_KEYS: dict[str, tuple[str, ...]] = {
    "color": ("brightness", "saturation", "contrast"),  # additive shift, saturation factor, contrast factor
    "crop": ("shift_y", "shift_x"),  # int64 pixels, content moves by +shift
    "cutout": ("cutout_y", "cutout_x"),  # int64 centre of the zeroed square
    "flip": ("flip",),  # bool, True = flipped horizontally
    "scale": ("scale_y", "scale_x"),  # factors in affine_grid's theta (x = width axis)
    "rotate": ("angle",),  # degrees
}
MODES = ("S", "M")


def round_half_up(v: float) -> int:
    """The reference's int(v + 0.5) for v >= 0 (not Python's round-half-to-even)."""
    return int(math.floor(v + 0.5))


@dataclass(frozen=True)
class DSAParams:
    """Tunables of DSA (the reference's ParamDiffAug defaults)."""

    brightness: float = 1.0  # shift = (u - 0.5) * brightness
    saturation: float = 2.0  # factor = u * saturation
    contrast: float = 0.5  # factor = u + contrast
    crop: float = 0.125  # max translation = round(crop * size) px
    cutout: float = 0.5  # square side = round(cutout * size) px
    flip: float = 0.5  # probability of a horizontal flip
    scale: float = 1.2  # factors in [1 / scale, scale]
    rotate: float = 15.0  # degrees, angle in [-rotate, rotate]

    def validate(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise PadistillError(f"DSAParams.{f.name}: expected a finite number, got {v!r}")
        for name in ("brightness", "saturation", "contrast", "rotate"):
            if getattr(self, name) < 0:
                raise PadistillError(f"DSAParams.{name}: expected >= 0, got {getattr(self, name)}")
        for name in ("crop", "cutout", "flip"):
            if not 0 <= getattr(self, name) <= 1:
                raise PadistillError(f"DSAParams.{name}: expected a fraction in [0, 1], "
                                     f"got {getattr(self, name)}")
        if self.scale < 1:
            raise PadistillError(f"DSAParams.scale: expected >= 1 (factors in [1/scale, scale]), "
                                 f"got {self.scale}")


@dataclass
class AugDraw:
    """One sampled augmentation, replayable with `DSA.apply`.

    `family` is the family drawn ('S' mode) or the tuple of all families in order ('M' mode; `()` for
    `NoAugment`). `values` maps the names in `FAMILY_KEYS` to CPU tensors (until `to` moves them) whose
    leading dim is the batch size n, or 1 when `shared` (one parameter set broadcast to any batch).
    """

    family: str | tuple[str, ...]
    values: dict[str, torch.Tensor]
    shared: bool

    @property
    def families(self) -> tuple[str, ...]:
        return (self.family,) if isinstance(self.family, str) else tuple(self.family)

    def to(self, device) -> AugDraw:
        return AugDraw(self.family, {k: v.to(device) for k, v in self.values.items()}, self.shared)

    def take(self, a: int, b: int) -> AugDraw:
        """The draw of samples a..b-1 (for micro-batching); a shared draw applies to any slice as is."""
        if self.shared:
            return self
        return AugDraw(self.family, {k: v[a:b] for k, v in self.values.items()}, self.shared)

    def batch_size(self) -> int | None:
        """Leading dim of the values (None when there are none, e.g. NoAugment)."""
        sizes = {int(v.shape[0]) for v in self.values.values()}
        if len(sizes) > 1:
            raise PadistillError(f"AugDraw: values have different leading dims {sorted(sizes)}")
        return sizes.pop() if sizes else None


def _check_generator(generator) -> None:
    if not isinstance(generator, torch.Generator):
        raise PadistillError(f"DSA: expected a torch.Generator, got {type(generator).__name__}")
    if generator.device.type != "cpu":
        # Draws are made on the CPU so that CPU and GPU runs see the same numbers.
        raise PadistillError(f"DSA: the generator must be a CPU generator, got one on {generator.device}")


def _check_image_size(image_size) -> tuple[int, int]:
    try:
        h, w = (int(s) for s in image_size)
    except (TypeError, ValueError):
        raise PadistillError(f"DSA.sample: image_size must be (height, width), got {image_size!r}") from None
    if h < 1 or w < 1:
        raise PadistillError(f"DSA.sample: image_size must be positive, got {(h, w)}")
    return h, w


class DSA:
    """Differentiable siamese augmentation; see the module docstring for the semantics."""

    def __init__(self, strategy: str = DEFAULT_STRATEGY, mode: str = "S",
                 params: DSAParams = DSAParams()):  # frozen, so a shared default is safe
        if not isinstance(strategy, str) or not strategy.strip():
            raise PadistillError(f"DSA strategy: expected families joined by '_' "
                                 f"(e.g. {DEFAULT_STRATEGY!r}), got {strategy!r}; "
                                 "use NoAugment for no augmentation")
        fams = tuple(strategy.strip().split("_"))
        for f in fams:
            if f not in FAMILIES:
                raise PadistillError(f"DSA strategy {strategy!r}: unknown family {f!r} "
                                     f"(expected some of {', '.join(FAMILIES)})")
        if len(set(fams)) != len(fams):
            # A repeated family would silently double its probability in 'S' mode.
            raise PadistillError(f"DSA strategy {strategy!r}: a family is repeated")
        if mode not in MODES:
            raise PadistillError(f"DSA mode {mode!r}: expected 'S' (one family per call) "
                                 "or 'M' (all families)")
        if not isinstance(params, DSAParams):
            raise PadistillError(f"DSA params: expected DSAParams, got {type(params).__name__}")
        params.validate()
        self.strategy = strategy.strip()
        self.families = fams
        self.mode = mode
        self.params = params

    def __repr__(self) -> str:
        return f"DSA(strategy={self.strategy!r}, mode={self.mode!r}, params={self.params!r})"

    # ---------------------------------------------------------------- sampling (CPU, explicit generator)

    def sample(self, n: int, image_size: tuple[int, int], generator: torch.Generator,
               shared: bool = False) -> AugDraw:
        """Draw the augmentation of a batch of n images of size (H, W). With `shared`, one parameter set
        (leading dim 1) that `apply` uses for every sample of any batch."""
        _check_generator(generator)
        h, w = _check_image_size(image_size)
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise PadistillError(f"DSA.sample: n must be a non-negative int, got {n!r}")
        m = 1 if shared else n
        if self.mode == "S":
            # One family per call, drawn from the same generator before its parameters.
            k = int(torch.randint(len(self.families), (1,), generator=generator))
            family: str | tuple[str, ...] = self.families[k]
            todo = (family,)
        else:
            family = todo = self.families
        values: dict[str, torch.Tensor] = {}
        for f in todo:
            values.update(self._sample_family(f, m, h, w, generator))
        return AugDraw(family, values, bool(shared))

    def _sample_family(self, family: str, m: int, h: int, w: int,
                       g: torch.Generator) -> dict[str, torch.Tensor]:
        p = self.params

        def u() -> torch.Tensor:
            return torch.rand(m, generator=g)

        if family == "color":
            return {"brightness": (u() - 0.5) * p.brightness, "saturation": u() * p.saturation,
                    "contrast": u() + p.contrast}
        if family == "crop":
            sy, sx = round_half_up(p.crop * h), round_half_up(p.crop * w)
            return {"shift_y": torch.randint(-sy, sy + 1, (m,), generator=g),
                    "shift_x": torch.randint(-sx, sx + 1, (m,), generator=g)}
        if family == "cutout":
            ch, cw = round_half_up(p.cutout * h), round_half_up(p.cutout * w)
            # Even side: one extra centre position so the clipped region is symmetric (module docstring).
            return {"cutout_y": torch.randint(0, h + 1 - ch % 2, (m,), generator=g),
                    "cutout_x": torch.randint(0, w + 1 - cw % 2, (m,), generator=g)}
        if family == "flip":
            return {"flip": u() < p.flip}
        if family == "scale":
            lo = 1.0 / p.scale
            return {"scale_x": u() * (p.scale - lo) + lo, "scale_y": u() * (p.scale - lo) + lo}
        if family == "rotate":
            return {"angle": (u() - 0.5) * 2.0 * p.rotate}
        raise PadistillError(f"DSA: unknown family {family!r}")  # unreachable: checked in __init__

    # ---------------------------------------------------------------- applying (device, differentiable)

    def apply(self, x: torch.Tensor, draw: AugDraw) -> torch.Tensor:
        """Apply a draw to x [N, C, H, W]; differentiable w.r.t. x (also twice). No host sync."""
        if not isinstance(x, torch.Tensor) or x.dim() != 4 or not x.is_floating_point():
            desc = f"{tuple(x.shape)} {x.dtype}" if isinstance(x, torch.Tensor) else type(x).__name__
            raise PadistillError(f"DSA.apply: expected a float tensor [N, C, H, W], got {desc}")
        if not isinstance(draw, AugDraw):
            raise PadistillError(f"DSA.apply: expected an AugDraw, got {type(draw).__name__}")
        if not draw.shared:
            m = draw.batch_size()
            if m is not None and m != x.shape[0]:
                raise PadistillError(f"DSA.apply: the draw was sampled for {m} images but the batch has "
                                     f"{x.shape[0]} (sample with shared=True to reuse one draw "
                                     "across batches)")
        for f in draw.families:
            if f not in FAMILY_KEYS:
                raise PadistillError(f"DSA.apply: unknown family {f!r} in the draw")
            missing = [k for k in FAMILY_KEYS[f] if k not in draw.values]
            if missing:
                raise PadistillError(f"DSA.apply: the {f!r} draw lacks {', '.join(missing)}")
        for f in draw.families:
            x = getattr(self, "_" + f)(x, draw.values)
        return x

    def __call__(self, x: torch.Tensor, generator: torch.Generator, shared: bool = False) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or x.dim() != 4:
            return self.apply(x, AugDraw((), {}, True))  # raises the shape error
        return self.apply(x, self.sample(x.shape[0], tuple(x.shape[-2:]), generator, shared))

    # Per-family kernels. `v` values have leading dim n or 1; `_col` reshapes them to [m, 1, 1, 1] on
    # x's device / dtype so they broadcast over the batch.

    @staticmethod
    def _col(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return t.to(device=x.device, dtype=x.dtype).view(-1, 1, 1, 1)

    def _color(self, x, v):
        # (x - mean) * f + mean == lerp(mean, x, f): one fused kernel instead of three (~3x faster on CPU).
        x = x + self._col(v["brightness"], x)
        x = torch.lerp(x.mean(dim=1, keepdim=True), x, self._col(v["saturation"], x))  # mean over channels
        return torch.lerp(x.mean(dim=(1, 2, 3), keepdim=True), x, self._col(v["contrast"], x))  # over C,H,W

    def _crop(self, x, v):
        # out[i, j] = x[i - dy, j - dx], zero where the source lies outside the image. A clamped gather
        # plus a validity mask (instead of pad + gather) handles any shift, also in hand-built draws.
        n, c, h, w = x.shape
        dy = v["shift_y"].to(x.device).view(-1, 1)
        dx = v["shift_x"].to(x.device).view(-1, 1)
        rows = torch.arange(h, device=x.device).view(1, h) - dy  # [m, H] source rows
        cols = torch.arange(w, device=x.device).view(1, w) - dx  # [m, W] source cols
        valid = ((rows >= 0) & (rows < h)).unsqueeze(2) & ((cols >= 0) & (cols < w)).unsqueeze(1)  # [m,H,W]
        index = rows.clamp(0, h - 1).unsqueeze(2) * w + cols.clamp(0, w - 1).unsqueeze(1)  # [m, H, W]
        index = index.view(-1, 1, h * w).expand(n, c, h * w)
        out = torch.gather(x.reshape(n, c, h * w), 2, index).view(n, c, h, w)
        return out * valid.unsqueeze(1).to(x.dtype)

    def _cutout(self, x, v):
        _, _, h, w = x.shape
        ch, cw = round_half_up(self.params.cutout * h), round_half_up(self.params.cutout * w)
        top = v["cutout_y"].to(x.device).view(-1, 1) - ch // 2
        left = v["cutout_x"].to(x.device).view(-1, 1) - cw // 2
        rows = torch.arange(h, device=x.device).view(1, h)
        cols = torch.arange(w, device=x.device).view(1, w)
        in_r = (rows >= top) & (rows < top + ch)  # [m, H]; the square clipped to the image for free
        in_c = (cols >= left) & (cols < left + cw)  # [m, W]
        keep = ~(in_r.unsqueeze(2) & in_c.unsqueeze(1))  # [m, H, W]
        return x * keep.unsqueeze(1).to(x.dtype)

    def _flip(self, x, v):
        flip = v["flip"].to(x.device).view(-1, 1, 1, 1)
        return torch.where(flip, x.flip(3), x)

    def _scale(self, x, v):
        sx = v["scale_x"].to(device=x.device, dtype=x.dtype)
        sy = v["scale_y"].to(device=x.device, dtype=x.dtype)
        zero = torch.zeros_like(sx)
        theta = torch.stack([torch.stack([sx, zero, zero], 1), torch.stack([zero, sy, zero], 1)], 1)
        return self._resample(x, theta)

    def _rotate(self, x, v):
        a = v["angle"].to(device=x.device, dtype=x.dtype) * (math.pi / 180.0)
        cos, sin, zero = torch.cos(a), torch.sin(a), torch.zeros_like(a)
        theta = torch.stack([torch.stack([cos, sin, zero], 1), torch.stack([-sin, cos, zero], 1)], 1)
        return self._resample(x, theta)

    @staticmethod
    def _resample(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        m = theta.shape[0]
        # A shared draw builds one grid and broadcasts it (stride-0 expand, no copy).
        grid = F.affine_grid(theta, [m, c, h, w], align_corners=True)
        if m != n:
            grid = grid.expand(n, h, w, 2)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=True)


class NoAugment:
    """Identity with the DSA interface (for `augment: false`): draws no randomness, returns x itself."""

    strategy = ""
    families: tuple[str, ...] = ()
    mode = "S"

    def __repr__(self) -> str:
        return "NoAugment()"

    def sample(self, n: int, image_size: tuple[int, int], generator: torch.Generator,
               shared: bool = False) -> AugDraw:
        _check_generator(generator)
        _check_image_size(image_size)
        return AugDraw((), {}, bool(shared))

    def apply(self, x: torch.Tensor, draw: AugDraw) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or x.dim() != 4:
            raise PadistillError("NoAugment.apply: expected a tensor [N, C, H, W]")
        return x

    def __call__(self, x: torch.Tensor, generator: torch.Generator, shared: bool = False) -> torch.Tensor:
        _check_generator(generator)
        return self.apply(x, AugDraw((), {}, bool(shared)))
