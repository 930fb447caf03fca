"""Preprocessing between stored images and model space: ZCA whitening, per-channel normalisation, none.

Input: uint8 training images [N, C, H, W] to fit on; later any uint8 or float-in-[0, 1] batch.
Output: a `Preprocessor` mapping images to float32 model-space tensors (`pre`) and back (`inverse`),
saved as a plain-tensor state (`save` / `load_preprocessor`) that records which dataset it was fitted on.
Purpose (spec §1.1): every published PAD/DATM/MTT result uses ZCA fitted with kornia
`ZCAWhitening(eps=0.1, compute_inv=True)` on the whole un-augmented train set, as [0, 1] floats without
mean/std normalisation: mu = mean of the flattened images (D = C*H*W), unbiased covariance = U S U^T,
T = U diag((S + eps)^-1/2) U^T, x -> (flat(x) - mu) T; inverse x -> flat(x) T_inv + mu with
T_inv = U diag((S + eps)^1/2) U^T. Without ZCA: (x - mean_c) / std_c with the dataset's constants.
`cached_preprocessor` stores fitted transforms by dataset fingerprint so start-up does not refit ZCA.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from padistill.errors import PadistillError
from padistill.utils.io import atomic_save, load_tensors, require_tensor, sha256_tensor

if TYPE_CHECKING:
    from padistill.data.dataset import Dataset

KINDS = ("zca", "normalize", "none")
_FORMAT = "padistill.preprocessor/1"
_CHUNK = 4096  # images per matrix product: bounds the temporary float copies (4096 x 12288 x 4 B = 200 MB)
_TENSORS = ("mean", "std", "transform", "transform_inv")


class Preprocessor:
    """A fitted map between [0, 1] images and model space. Build with `fit_preprocessor` or load it."""

    def __init__(self, kind: str, image_shape: tuple[int, int, int], *, mean: torch.Tensor | None = None,
                 std: torch.Tensor | None = None, transform: torch.Tensor | None = None,
                 transform_inv: torch.Tensor | None = None, eps: float = 0.0, dataset_fingerprint: str = ""):
        self.kind = kind
        self.image_shape = tuple(int(s) for s in image_shape)
        self.mean, self.std = mean, std  # zca: mu [1, D]; normalize: per-channel [C]
        self.transform, self.transform_inv = transform, transform_inv  # zca only: [D, D]
        self.eps = float(eps)
        self.dataset_fingerprint = dataset_fingerprint
        self._fingerprint: str | None = None

    def __repr__(self) -> str:
        return f"Preprocessor(kind={self.kind!r}, image_shape={self.image_shape}, eps={self.eps})"

    @property
    def dim(self) -> int:
        return math.prod(self.image_shape)

    @property
    def device(self) -> torch.device:
        t = self.transform if self.transform is not None else self.mean
        return t.device if t is not None else torch.device("cpu")

    def to(self, device: str | torch.device) -> Preprocessor:
        """A copy whose matrices live on `device` (where `pre` / `inverse` compute)."""
        moved = {k: (getattr(self, k).to(device) if getattr(self, k) is not None else None) for k in _TENSORS}
        return Preprocessor(self.kind, self.image_shape, eps=self.eps,
                            dataset_fingerprint=self.dataset_fingerprint, **moved)

    # --------------------------------------------------------------------------------- the mapping
    def pre(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 or float-in-[0, 1] images [N, C, H, W] -> float32 model space, on x's device."""
        self._check_batch(x, "pre")
        return self._chunked(x, self._pre_chunk)

    __call__ = pre

    def inverse(self, x: torch.Tensor) -> torch.Tensor:
        """Model space -> float32 images in roughly [0, 1] (not clamped; see `to_uint8`)."""
        self._check_batch(x, "inverse")
        if not x.dtype.is_floating_point:
            raise PadistillError(f"preprocessor.inverse: expected float model-space tensors, found {x.dtype}")
        return self._chunked(x, self._inverse_chunk)

    @staticmethod
    def to_uint8(x: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1] (e.g. from `inverse`) -> uint8, clamped and rounded, for viewing/export."""
        return (x.detach().float().clamp(0.0, 1.0) * 255.0).round().to(torch.uint8)

    def _pre_chunk(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device)
        x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
        if self.kind == "zca":
            return ((x.reshape(len(x), -1) - self.mean) @ self.transform).reshape(x.shape)
        if self.kind == "normalize":
            return (x - self.mean[:, None, None]) / self.std[:, None, None]
        return x

    def _inverse_chunk(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device).float()
        if self.kind == "zca":
            return (x.reshape(len(x), -1) @ self.transform_inv + self.mean).reshape(x.shape)
        if self.kind == "normalize":
            return x * self.std[:, None, None] + self.mean[:, None, None]
        return x

    def _chunked(self, x: torch.Tensor, fn) -> torch.Tensor:
        if x.requires_grad:  # keep the autograd graph: concatenate instead of writing into a buffer
            parts = [fn(c).to(x.device) for c in torch.split(x, _CHUNK)] if len(x) else [fn(x).to(x.device)]
            return torch.cat(parts)
        out = torch.empty(x.shape, dtype=torch.float32, device=x.device)
        for start in range(0, len(x), _CHUNK):
            out[start:start + _CHUNK] = fn(x[start:start + _CHUNK])
        return out

    def _check_batch(self, x: torch.Tensor, what: str) -> None:
        if not isinstance(x, torch.Tensor) or x.ndim != 4 or tuple(x.shape[1:]) != self.image_shape:
            found = list(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            want = ", ".join(map(str, self.image_shape))
            raise PadistillError(f"preprocessor.{what}: expected images [N, {want}], found {found}")

    # --------------------------------------------------------------------------------- persistence
    def state_dict(self) -> dict:
        d: dict = {"format": _FORMAT, "kind": self.kind, "image_shape": list(self.image_shape),
                   "eps": self.eps, "dataset_fingerprint": self.dataset_fingerprint}
        for k in _TENSORS:
            t = getattr(self, k)
            d[k] = t.detach().cpu().contiguous() if t is not None else None
        return d

    @classmethod
    def from_state_dict(cls, d: object, where: str = "preprocessor state") -> Preprocessor:
        if not isinstance(d, dict):
            raise PadistillError(f"{where}: expected a dict, found {type(d).__name__}")
        unknown = sorted(set(d) - {"format", "kind", "image_shape", "eps", "dataset_fingerprint", *_TENSORS})
        if unknown:
            raise PadistillError(f"{where}: unexpected key(s) {', '.join(map(str, unknown))}")
        if d.get("format") != _FORMAT:
            raise PadistillError(f"{where}: field 'format' must be {_FORMAT!r}, found {d.get('format')!r}")
        kind = d.get("kind")
        if kind not in KINDS:
            raise PadistillError(f"{where}: field 'kind' must be one of {', '.join(KINDS)}, found {kind!r}")
        shape = d.get("image_shape")
        if (not isinstance(shape, (list, tuple)) or len(shape) != 3
                or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in shape)):
            raise PadistillError(f"{where}: field 'image_shape' must be 3 positive integers [C, H, W], "
                                 f"found {shape!r}")
        eps = d.get("eps")
        if not isinstance(eps, (int, float)) or isinstance(eps, bool) or not math.isfinite(eps) or eps < 0:
            raise PadistillError(f"{where}: field 'eps' must be a finite number >= 0, found {eps!r}")
        fp = d.get("dataset_fingerprint")
        if not isinstance(fp, str):
            raise PadistillError(f"{where}: field 'dataset_fingerprint' must be a string, "
                                 f"found {type(fp).__name__}")
        c, dim = shape[0], math.prod(shape)
        need = {"zca": {"mean": (1, dim), "transform": (dim, dim), "transform_inv": (dim, dim)},
                "normalize": {"mean": (c,), "std": (c,)}, "none": {}}[kind]
        tensors = {}
        for k in _TENSORS:
            if k in need:
                t = require_tensor(d.get(k), f"{where}: field {k!r}", dtype=torch.float32, shape=need[k])
                if not torch.isfinite(t).all():
                    raise PadistillError(f"{where}: field {k!r} contains NaN or inf")
                tensors[k] = t
            elif d.get(k) is not None:
                raise PadistillError(f"{where}: field {k!r} must be None for kind {kind!r}")
        if kind == "normalize" and bool((tensors["std"] <= 0).any()):
            raise PadistillError(f"{where}: field 'std' must be positive")
        return cls(kind, tuple(shape), eps=float(eps), dataset_fingerprint=fp, **tensors)

    def save(self, path: str | os.PathLike) -> Path:
        """Atomic `torch.save` of plain tensors, strings and numbers (loadable with weights_only=True)."""
        return atomic_save(self.state_dict(), path)

    def fingerprint(self) -> str:
        """sha256 of the state (kind, shape, eps, dataset fingerprint and tensor bytes), for manifests."""
        if self._fingerprint is None:
            st = self.state_dict()
            meta = {k: v for k, v in st.items() if k not in _TENSORS}
            h = hashlib.sha256(json.dumps(meta, sort_keys=True).encode())
            for k in _TENSORS:
                h.update(f"{k}:{sha256_tensor(st[k]) if st[k] is not None else '-'};".encode())
            self._fingerprint = h.hexdigest()
        return self._fingerprint


def load_preprocessor(path: str | os.PathLike) -> Preprocessor:
    """Load a saved state with weights_only=True and validate it; one-line errors on problems."""
    return Preprocessor.from_state_dict(load_tensors(path, "preprocessor file"), where=str(path))


def fit_preprocessor(kind: str, x_train_uint8: torch.Tensor, mean: tuple[float, ...] | None = None,
                     std: tuple[float, ...] | None = None, eps: float = 0.1,
                     device: str | torch.device | None = None, dataset_fingerprint: str = "") -> Preprocessor:
    """Fit a preprocessor of `kind` on training images (uint8, or float in [0, 1]) [N, C, H, W].

    zca: kornia ZCAWhitening(eps, compute_inv=True) fitted on `device` (default: the images' device).
    normalize: `mean` / `std` per channel (computed from the images when not given).
    """
    if kind not in KINDS:
        raise PadistillError(f"preprocessing: kind must be one of {', '.join(KINDS)}, found {kind!r}")
    x = x_train_uint8
    ok_dtype = isinstance(x, torch.Tensor) and (x.dtype == torch.uint8 or x.dtype.is_floating_point)
    if not ok_dtype or x.ndim != 4:
        found = f"{x.dtype} {list(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__
        raise PadistillError(f"preprocessing: training images must be uint8 or float [N, C, H, W], "
                             f"found {found}")
    shape = tuple(int(s) for s in x.shape[1:])
    dev = torch.device(device) if device is not None else x.device
    if kind == "zca":
        return _fit_zca(x, shape, float(eps), dev, dataset_fingerprint)
    if kind == "normalize":
        if mean is None or std is None:
            xf = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
            mean = tuple(xf.mean(dim=(0, 2, 3)).tolist()) if mean is None else mean
            std = tuple(xf.std(dim=(0, 2, 3), unbiased=False).tolist()) if std is None else std
        if len(mean) != shape[0] or len(std) != shape[0] or any(s <= 0 for s in std):
            raise PadistillError(f"preprocessing: normalize needs {shape[0]} mean values and {shape[0]} "
                                 f"positive std values, found mean={tuple(mean)} std={tuple(std)}")
        return Preprocessor("normalize", shape, mean=torch.tensor(mean, dtype=torch.float32, device=dev),
                            std=torch.tensor(std, dtype=torch.float32, device=dev),
                            dataset_fingerprint=dataset_fingerprint)
    return Preprocessor("none", shape, dataset_fingerprint=dataset_fingerprint)


def _fit_zca(x: torch.Tensor, shape: tuple[int, int, int], eps: float, dev: torch.device,
             dataset_fingerprint: str) -> Preprocessor:
    from kornia.enhance import ZCAWhitening  # imported lazily: kornia is slow to import

    if not math.isfinite(eps) or eps <= 0:
        raise PadistillError(f"preprocessing: zca eps must be a positive number, found {eps}")
    if len(x) < 2:
        raise PadistillError(f"preprocessing: zca needs at least 2 training images, found {len(x)}")
    # Move uint8 before converting (4x less to transfer), then [0, 1] floats as the reference does.
    xf = x.to(dev)
    xf = xf.float().div_(255.0) if xf.dtype == torch.uint8 else xf.float()
    zca = ZCAWhitening(eps=eps, compute_inv=True).fit(xf)
    del xf
    mean = zca.mean_vector.float().reshape(1, -1).contiguous()
    t, t_inv = zca.transform_matrix.float().contiguous(), zca.transform_inv.float().contiguous()
    if not (torch.isfinite(t).all() and torch.isfinite(t_inv).all()):
        raise PadistillError("preprocessing: zca fit produced NaN/inf (are the training images valid?)")
    return Preprocessor("zca", shape, mean=mean, transform=t, transform_inv=t_inv, eps=eps,
                        dataset_fingerprint=dataset_fingerprint)


_MEMORY: dict[tuple[str, str, float], Preprocessor] = {}


def cached_preprocessor(dataset: Dataset, kind: str, eps: float = 0.1,
                        cache_dir: str | os.PathLike | None = None,
                        device: str | torch.device | None = None) -> Preprocessor:
    """Fitted preprocessor for `dataset`, reused from memory or `<cache_dir>/<fingerprint>-<kind>-<eps>.pt`.

    The file records the dataset fingerprint, so a stale or foreign file is refitted rather than trusted.
    The dataset's mean/std feed 'normalize'.
    """
    fp, eps = dataset.fingerprint(), float(eps)
    key = (fp, kind, eps)
    pre = _MEMORY.get(key)
    path = Path(cache_dir).expanduser() / f"{fp}-{kind}-{eps:g}.pt" if cache_dir is not None else None
    if pre is None and path is not None and path.is_file():
        try:
            pre = load_preprocessor(path)
            want = (fp, kind, tuple(dataset.x_train.shape[1:]), eps if kind == "zca" else None)
            got = (pre.dataset_fingerprint, pre.kind, pre.image_shape, pre.eps if kind == "zca" else None)
            if got != want:
                raise PadistillError(f"{path}: fitted for another dataset or setting")
        except PadistillError as e:
            warnings.warn(f"ignoring cached preprocessor, refitting: {e}", stacklevel=2)
            pre = None
    if pre is None:
        pre = fit_preprocessor(kind, dataset.x_train, mean=dataset.mean, std=dataset.std, eps=eps,
                               device=device, dataset_fingerprint=fp)
        if path is not None:
            try:
                pre.save(path)
            except OSError as e:  # a read-only cache only costs a refit next time
                warnings.warn(f"{path}: cannot write preprocessor cache ({e.strerror or e})", stacklevel=2)
    _MEMORY[key] = pre
    return pre.to(device) if device is not None else pre
