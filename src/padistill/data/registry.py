"""Dataset registry: names -> loader functions.

Input: a dataset name, a data root folder and loader options (from the config / CLI).
Output: a validated `Dataset`.
Purpose: one entry point (`load_dataset`) for every dataset, timm-style (`register_dataset` decorator +
`list_datasets`), so adding a dataset is one decorated function and tests can iterate the registry.

A loader has the signature `loader(root: Path, download: bool, **options) -> Dataset`.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable
from pathlib import Path

from padistill.data.dataset import Dataset
from padistill.errors import PadistillError

Loader = Callable[..., Dataset]
_LOADERS: dict[str, Loader] = {}
# Spellings used by the reference code and by users, mapped to registry names.
_ALIASES = {"tiny": "tinyimagenet"}


def default_data_root() -> Path:
    """`$PADISTILL_DATA` if set, else `~/.cache/padistill/data`."""
    env = os.environ.get("PADISTILL_DATA")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "padistill" / "data"


def register_dataset(name: str) -> Callable[[Loader], Loader]:
    """Decorator registering `loader(root, download, **options) -> Dataset` under `name`."""
    key = _normalise(name)

    def deco(fn: Loader) -> Loader:
        if key in _LOADERS and _LOADERS[key] is not fn:
            raise PadistillError(f"dataset {name!r} is already registered")
        _LOADERS[key] = fn
        return fn

    return deco


def list_datasets() -> list[str]:
    return sorted(_LOADERS)


def load_dataset(name: str, root: str | os.PathLike | None = None, download: bool = False,
                 **options: object) -> Dataset:
    """Load dataset `name` from `root` (default: `default_data_root()`), optionally downloading it."""
    key = _normalise(str(name))
    key = _ALIASES.get(key, key)
    if key not in _LOADERS:
        raise PadistillError(f"dataset: unknown name {name!r} (known: {', '.join(list_datasets())})")
    loader = _LOADERS[key]
    _check_options(key, loader, options)
    root_path = Path(root).expanduser() if root is not None else default_data_root()
    ds = loader(root_path, bool(download), **options)
    return ds.validate()


def _normalise(name: str) -> str:
    # "CIFAR10", "cifar-10" and "cifar_10" all mean the same dataset.
    return name.strip().lower().replace("-", "").replace("_", "")


def _check_options(key: str, loader: Loader, options: dict[str, object]) -> None:
    params = inspect.signature(loader).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    known = [p for p in params if p not in ("root", "download")]
    for opt in options:
        if opt not in known:
            raise PadistillError(f"dataset {key}: unknown option {opt!r} "
                                 f"(known: {', '.join(known) if known else 'none'})")
