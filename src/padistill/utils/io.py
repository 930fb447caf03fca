"""Atomic writes, safe loads and hashing.

Every file the package writes goes through `atomic_*`: the bytes land in a temporary file in the same
folder, are flushed to disk, and replace the target with `os.replace`, so a crash never leaves a
half-written artifact. Every tensor file read from a user goes through `load_tensors`, which uses
`torch.load(weights_only=True)` (no arbitrary code execution) and turns any failure into a one-line
`PadistillError`.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from padistill.errors import PadistillError

# Temp files of the two writers below: ".<name>.<8 random chars>.tmp" and ".<stem>.<8 random chars>.tmp<suffix>".
# A process killed mid-write leaves one behind; `remove_stale_temp_files` sweeps them when a stage (re)starts.
_TEMP_RE = re.compile(r"^\..+\.[A-Za-z0-9_]{8}\.tmp(\.[A-Za-z0-9]+)?$")


def remove_stale_temp_files(folder: str | os.PathLike) -> int:
    """Delete the atomic writers' leftover temp files under `folder` (recursively); returns how many.

    Only call it when no other process writes into `folder` (a stage's rank 0 before its ranks start)."""
    n = 0
    for root, _, files in os.walk(folder):
        for name in files:
            if _TEMP_RE.match(name):
                try:
                    os.unlink(os.path.join(root, name))
                    n += 1
                except FileNotFoundError:
                    pass
    return n


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write `data` to `path` atomically (temp file in the same folder + fsync + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def atomic_save(obj: Any, path: str | os.PathLike) -> Path:
    """`torch.save` to `path` atomically."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    return atomic_write_bytes(path, buf.getvalue())


def atomic_write_with(path: str | os.PathLike, writer: Callable[[Path], None]) -> Path:
    """Atomically produce `path` with a writer that needs a real file name (e.g. matplotlib)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    os.close(fd)
    try:
        writer(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def _json_default(o: Any) -> Any:
    if isinstance(o, torch.Tensor):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    if hasattr(o, "item"):
        return o.item()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def read_json(path: str | os.PathLike, what: str = "JSON file") -> Any:
    path = Path(path)
    if not path.is_file():
        raise PadistillError(f"{path}: {what} not found")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise PadistillError(f"{path}: not valid JSON ({e})") from None


def load_tensors(path: str | os.PathLike, what: str = "tensor file") -> Any:
    """Load a user-provided torch file safely (weights_only=True); one-line errors on failure."""
    path = Path(path)
    if not path.is_file():
        raise PadistillError(f"{path}: {what} not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types (UnpicklingError, RuntimeError, EOFError, ...)
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise PadistillError(f"{path}: cannot read {what} ({type(e).__name__}: {msg[:200]})") from None


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_tensor(*tensors: torch.Tensor) -> str:
    """Hash of the exact bytes (and dtype/shape) of one or more tensors."""
    h = hashlib.sha256()
    for t in tensors:
        t = t.detach().cpu().contiguous()
        h.update(f"{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def require_keys(obj: Any, keys: tuple[str, ...], where: str) -> dict:
    """`obj` must be a dict holding every key of `keys` (a loaded checkpoint, say), or a one-line error."""
    if not isinstance(obj, dict):
        raise PadistillError(f"{where}: expected a dict, found {type(obj).__name__}")
    missing = [k for k in keys if k not in obj]
    if missing:
        raise PadistillError(f"{where}: missing {', '.join(map(repr, missing))}")
    return obj


def require_tensor(obj: Any, where: str, *, dtype: torch.dtype | tuple[torch.dtype, ...] | None = None,
                   ndim: int | None = None, shape: tuple[int | None, ...] | None = None) -> torch.Tensor:
    """Validate a loaded object as a tensor of the expected dtype/shape, or raise a one-line error.

    `shape` may contain None for "any size" in that dimension.
    """
    if not isinstance(obj, torch.Tensor):
        raise PadistillError(f"{where}: expected a tensor, found {type(obj).__name__}")
    if dtype is not None:
        allowed = dtype if isinstance(dtype, tuple) else (dtype,)
        if obj.dtype not in allowed:
            names = " or ".join(str(d).replace("torch.", "") for d in allowed)
            raise PadistillError(f"{where}: expected dtype {names}, found {str(obj.dtype).replace('torch.', '')}")
    if ndim is not None and obj.ndim != ndim:
        raise PadistillError(f"{where}: expected {ndim} dimensions, found shape {list(obj.shape)}")
    if shape is not None:
        ok = obj.ndim == len(shape) and all(s is None or s == d for s, d in zip(shape, obj.shape))
        if not ok:
            want = "[" + ", ".join("*" if s is None else str(s) for s in shape) + "]"
            raise PadistillError(f"{where}: expected shape {want}, found {list(obj.shape)}")
    return obj
