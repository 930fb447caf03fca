"""What every stage needs before it starts: the device, the data in model space, nets and DSA.

Input: a resolved `Config`. Output: a `Prepared` bundle with train / validation / test tensors already
preprocessed (ZCA or mean/std, fitted on the un-augmented training images and cached on disk), the
per-class index of the training set, and helpers to build networks and the augmentation.

Data is loaded once as uint8, preprocessed once, and kept as one float tensor on the device (no
DataLoader workers for in-memory tensors).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from padistill.config import Config
from padistill.data import Dataset, load_dataset
from padistill.data.transforms import Preprocessor, cached_preprocessor
from padistill.errors import PadistillError
from padistill.utils.device import resolve_device


def cache_dir() -> Path:
    env = os.environ.get("PADISTILL_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "padistill"


@dataclass
class Prepared:
    config: Config
    device: torch.device
    dataset: Dataset  # training part (validation images removed when held out)
    pre: Preprocessor
    x_train: torch.Tensor  # float32 [N, C, H, W], model space, on device
    y_train: torch.Tensor  # int64 [N], on device
    x_val: torch.Tensor | None
    y_val: torch.Tensor | None
    x_test: torch.Tensor
    y_test: torch.Tensor
    train_index: torch.Tensor  # int64 [N]: original train index of each kept training image
    load_seconds: float

    @property
    def num_classes(self) -> int:
        return self.dataset.num_classes

    @property
    def channels(self) -> int:
        return self.dataset.channels

    @property
    def image_size(self) -> tuple[int, int]:
        return self.dataset.image_size

    def class_indices(self) -> list[torch.Tensor]:
        return self.dataset.class_indices()

    def fingerprint(self) -> str:
        """Identity of the training data as the stages see it (dataset + held-out split + transform)."""
        return f"{self.dataset.fingerprint()[:16]}-{self.pre.fingerprint()[:16]}"

    def remap_ordering(self, ordering: torch.Tensor) -> torch.Tensor:
        """Map an ordering over the ORIGINAL train indices to the kept training indices.

        Held-out validation images are dropped from every row (rows stay equally long because the
        hold-out is class-balanced)."""
        if self.x_val is None:
            return ordering
        lookup = torch.full((int(ordering.max()) + 1,), -1, dtype=torch.int64)
        lookup[self.train_index] = torch.arange(len(self.train_index))
        mapped = lookup[ordering]
        rows = [r[r >= 0] for r in mapped]
        lengths = {len(r) for r in rows}
        if len(lengths) != 1:
            raise PadistillError("ordering: held-out validation removed unequal numbers per class")
        return torch.stack(rows)


def prepare(cfg: Config, device: str | torch.device | None = None, log=print,
            model_space_cache: str | Path | None = None) -> Prepared:
    """`model_space_cache`: a file holding the model-space tensors of these exact data (dataset, hold-out, transform;
    checked by fingerprint), read instead of transforming again, or written when missing or stale. `padistill
    sweep --jobs N` gives its worker processes one, so a CIFAR-10 ZCA (about a minute on one core) is applied once."""
    t0 = time.perf_counter()
    dev = resolve_device(device if device is not None else cfg.device)
    d = cfg.data
    ds = load_dataset(d.name, root=d.root, download=d.download, **d.options)
    train_index = torch.arange(len(ds.y_train))
    x_val = y_val = None
    if d.val_per_class > 0:
        ds, xv, yv, train_index = ds.hold_out_validation(d.val_per_class, seed=cfg.seed)
        x_val, y_val = xv, yv
    pre = cached_preprocessor(ds, d.preprocess, d.zca_eps, cache_dir() / "preprocess", device=dev)
    identity = f"{ds.fingerprint()}-{pre.fingerprint()}-{d.val_per_class}"  # ds: the training part (after hold-out)
    cached = (_read_model_space(model_space_cache, identity, len(ds.y_train), x_val is not None)
              if model_space_cache is not None else None)
    computed: dict[str, torch.Tensor] = {}

    def model_space(x: torch.Tensor, name: str) -> torch.Tensor:
        if cached is not None:
            return cached[name].to(dev)
        computed[name] = pre.pre(x.to(dev)).contiguous()
        return computed[name]

    prepared = Prepared(
        config=cfg, device=dev, dataset=ds, pre=pre,
        x_train=model_space(ds.x_train, "x_train"), y_train=ds.y_train.to(dev),
        x_val=model_space(x_val, "x_val") if x_val is not None else None,
        y_val=y_val.to(dev) if y_val is not None else None,
        x_test=model_space(ds.x_test, "x_test"), y_test=ds.y_test.to(dev),
        train_index=train_index, load_seconds=0.0)
    if model_space_cache is not None and cached is None:
        from padistill.utils.io import atomic_save

        atomic_save({"identity": identity, **{k: v.cpu() for k, v in computed.items()}}, model_space_cache)
    prepared.load_seconds = time.perf_counter() - t0
    log(f"data: {ds.name} train {len(ds.y_train)} (val {0 if y_val is None else len(y_val)}) "
        f"test {len(ds.y_test)} {ds.channels}x{ds.image_size[0]}x{ds.image_size[1]} {ds.num_classes} classes, "
        f"{d.preprocess}{' (model space read from its cache)' if cached is not None else ''}, "
        f"{prepared.load_seconds:.1f}s on {dev}")
    return prepared


def _read_model_space(path: str | Path, identity: str, n_train: int, with_val: bool) -> dict | None:
    """The cached model-space tensors if `path` holds those of the same data, else None (then recomputed)."""
    from padistill.utils.io import load_tensors

    path = Path(path)
    if not path.is_file():
        return None
    try:
        data = load_tensors(path, "model-space cache")
    except PadistillError:
        return None
    names = ("x_train", "x_test", "x_val") if with_val else ("x_train", "x_test")
    if not isinstance(data, dict) or data.get("identity") != identity or not all(
            isinstance(data.get(k), torch.Tensor) for k in names) or data["x_train"].shape[0] != n_train:
        return None
    return data


def build_net(prepared: Prepared, name: str | None = None, seed: int | None = None,
              options: dict | None = None) -> nn.Module:
    from padistill.nets import build

    cfg = prepared.config
    net_name = name or cfg.net.name
    opts = dict(cfg.net.options) if (name is None or name == cfg.net.name) else {}
    opts.update(options or {})
    model = build(net_name, num_classes=prepared.num_classes, channels=prepared.channels,
                  im_size=prepared.image_size, seed=seed, **opts)
    return model.to(prepared.device)


def make_augment(enabled: bool):
    if not enabled:
        return None
    from padistill.augment import DSA

    return DSA()
