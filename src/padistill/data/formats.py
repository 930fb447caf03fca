"""Compact `.npz` dataset archives (shared by the `npz`, `cifar10` and `cifar100` loaders).

Input: an `.npz` file in one of two layouts:
  (a) plain arrays `x_train`, `y_train`, `x_test`, `y_test` (+ optional `class_names`); images uint8
      (or float in [0, 1]) as [N, H, W, C], [N, C, H, W] or [N, H, W] (grayscale); labels any integer dtype;
  (b) tiled lossless WebP (the layout of shared/data/cifar10.npz): `train_webp` / `test_webp` (uint8 bytes
      of WebP files, one after another), `train_offsets` / `test_offsets` (tile t = buf[off[t]:off[t+1]]),
      `y_train`, `y_test`, `class_names`; each tile holds `tile_grid` x `tile_grid` images (default 10),
      row-major.
Output: `NpzArrays` with uint8 [N, C, H, W] tensors and int64 labels, validated.
Purpose: one decoder for every archive (no per-dataset copies); also registers the generic `npz` loader.
"""

from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from padistill.data.dataset import Dataset, channel_stats
from padistill.data.registry import register_dataset
from padistill.errors import PadistillError


@dataclass
class NpzArrays:
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    class_names: list[str] | None


def read_npz(path: str | Path) -> NpzArrays:
    """Read and validate an archive in layout (a) or (b); raises `PadistillError` naming the file/key."""
    path = Path(path)
    if not path.is_file():
        raise PadistillError(f"{path}: npz dataset file not found")
    if not zipfile.is_zipfile(path):  # np.load would try it as a pickle / .npy and talk about allow_pickle
        raise PadistillError(f"{path}: not an .npz archive (expected a zip of arrays written by numpy.savez)")
    try:
        with np.load(path, allow_pickle=False) as z:  # allow_pickle=False: an npz must not run code
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as e:
        msg = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise PadistillError(f"{path}: cannot read npz archive ({msg})") from None
    where = str(path)
    padding = 0  # images a final, partly filled tile may carry beyond the last label
    if "train_webp" in arrays:
        grid = int(_need(arrays, "tile_grid", where)) if "tile_grid" in arrays else 10
        x_train = decode_webp_tiles(_need(arrays, "train_webp", where), _need(arrays, "train_offsets", where),
                                    grid, f"{where}: train_webp")
        x_test = decode_webp_tiles(_need(arrays, "test_webp", where), _need(arrays, "test_offsets", where),
                                   grid, f"{where}: test_webp")
        padding = grid * grid - 1
    else:
        x_train = to_nchw_uint8(_need(arrays, "x_train", where), f"{where}: x_train")
        x_test = to_nchw_uint8(_need(arrays, "x_test", where), f"{where}: x_test")
    y_train = _labels(_need(arrays, "y_train", where), f"{where}: y_train")
    y_test = _labels(_need(arrays, "y_test", where), f"{where}: y_test")
    x_train = _match_count(x_train, y_train, padding, f"{where}: train")
    x_test = _match_count(x_test, y_test, padding, f"{where}: test")
    if x_test.shape[1:] != x_train.shape[1:]:
        raise PadistillError(f"{where}: test images have shape {list(x_test.shape[1:])} [C, H, W], train "
                             f"images {list(x_train.shape[1:])}")
    names = None
    if "class_names" in arrays:
        raw = arrays["class_names"]
        if raw.ndim != 1 or raw.dtype.kind not in "US":
            raise PadistillError(f"{where}: class_names must be a 1-D array of strings, found {raw.dtype} "
                                 f"{list(raw.shape)}")
        names = [v.decode() if isinstance(v, bytes) else str(v) for v in raw.tolist()]
    return NpzArrays(x_train, y_train, x_test, y_test, names)


def to_nchw_uint8(arr: np.ndarray, where: str) -> torch.Tensor:
    """Images as NHWC / NCHW / NHW, uint8 or float in [0, 1] -> uint8 tensor [N, C, H, W]."""
    if arr.ndim == 3:  # [N, H, W] grayscale
        arr = arr[:, None]
    elif arr.ndim == 4:
        chan_first, chan_last = arr.shape[1] in (1, 3), arr.shape[3] in (1, 3)
        if chan_last and (not chan_first or arr.shape[1] == arr.shape[2] != arr.shape[3]):
            arr = arr.transpose(0, 3, 1, 2)
        elif not chan_first:
            raise PadistillError(f"{where}: expected images [N, H, W, C] or [N, C, H, W] with C = 1 or 3, "
                                 f"found shape {list(arr.shape)}")
    else:
        raise PadistillError(f"{where}: expected images [N, H, W, C] or [N, C, H, W], "
                             f"found shape {list(arr.shape)}")
    if arr.dtype == np.uint8:
        out = arr
    elif arr.dtype.kind == "f":
        if arr.size and (not np.isfinite(arr).all() or arr.min() < 0.0 or arr.max() > 1.0):
            raise PadistillError(f"{where}: float images must lie in [0, 1], found range "
                                 f"[{float(np.nanmin(arr)):.4g}, {float(np.nanmax(arr)):.4g}] (or NaN/inf)")
        out = np.rint(arr.astype(np.float64) * 255.0).astype(np.uint8)
    else:
        raise PadistillError(f"{where}: expected uint8 or float images, found dtype {arr.dtype}")
    return torch.from_numpy(np.ascontiguousarray(out))


def decode_webp_tiles(buf: np.ndarray, offsets: np.ndarray, grid: int, where: str) -> torch.Tensor:
    """Lossless WebP tiles of grid x grid images (row-major) -> uint8 tensor [N, C, H, W]."""
    if buf.dtype != np.uint8 or buf.ndim != 1:
        raise PadistillError(f"{where}: expected a 1-D uint8 byte buffer, found {buf.dtype} "
                             f"{list(buf.shape)}")
    if offsets.ndim != 1 or offsets.dtype.kind not in "iu" or len(offsets) < 1:
        raise PadistillError(f"{where}: offsets must be a 1-D integer array, found {offsets.dtype} "
                             f"{list(offsets.shape)}")
    off = offsets.astype(np.int64)
    if off[0] < 0 or off[-1] > len(buf) or (np.diff(off) <= 0).any():
        raise PadistillError(f"{where}: offsets must increase strictly within [0, {len(buf)}]")
    if grid < 1:
        raise PadistillError(f"{where}: tile_grid must be >= 1, found {grid}")
    tiles = []
    for t, (a, b) in enumerate(zip(off[:-1], off[1:])):
        try:
            with Image.open(io.BytesIO(buf[a:b].tobytes())) as im:
                im = im.convert("L" if im.mode in ("L", "LA") else "RGB")
                tile = np.asarray(im)
        except (OSError, ValueError, Image.DecompressionBombError) as e:
            raise PadistillError(f"{where}: tile {t} is not a readable image ({e})") from None
        tile = tile[..., None] if tile.ndim == 2 else tile
        th, tw, c = tile.shape
        if th % grid or tw % grid:
            raise PadistillError(f"{where}: tile {t} is {tw}x{th} px, not divisible into a "
                                 f"{grid}x{grid} grid")
        h, w = th // grid, tw // grid
        # [grid rows, h, grid cols, w, C] -> [row, col, h, w, C]: images in row-major tile order
        tiles.append(tile.reshape(grid, h, grid, w, c).transpose(0, 2, 1, 3, 4).reshape(grid * grid, h, w, c))
    if not tiles:
        raise PadistillError(f"{where}: contains no tiles")
    if any(t.shape != tiles[0].shape for t in tiles):
        raise PadistillError(f"{where}: tiles differ in size or colour mode")
    x = np.concatenate(tiles).transpose(0, 3, 1, 2)
    return torch.from_numpy(np.ascontiguousarray(x))


def _need(arrays: dict[str, np.ndarray], key: str, where: str) -> np.ndarray:
    if key not in arrays:
        raise PadistillError(f"{where}: missing array {key!r} (found: {', '.join(sorted(arrays)) or 'none'})")
    return arrays[key]


def _labels(arr: np.ndarray, where: str) -> torch.Tensor:
    if arr.ndim != 1 or arr.dtype.kind not in "iu":
        raise PadistillError(f"{where}: expected a 1-D integer label array, found {arr.dtype} "
                             f"{list(arr.shape)}")
    y = torch.from_numpy(arr.astype(np.int64))
    if len(y) and int(y.min()) < 0:
        raise PadistillError(f"{where}: labels must be >= 0, found {int(y.min())}")
    return y


def _match_count(x: torch.Tensor, y: torch.Tensor, padding: int, where: str) -> torch.Tensor:
    if 0 <= len(x) - len(y) <= padding:
        return x[: len(y)]
    raise PadistillError(f"{where}: {len(x)} images but {len(y)} labels")


def dataset_from_npz(path: str | Path, name: str, class_names: list[str] | None = None,
                     mean: tuple[float, ...] | None = None, std: tuple[float, ...] | None = None) -> Dataset:
    """Build a `Dataset` from an archive; names/constants given here override or fill in the file's."""
    a = read_npz(path)
    n_cls = 1 + max(int(y.max()) if len(y) else -1 for y in (a.y_train, a.y_test))
    names = a.class_names or class_names or [str(i) for i in range(n_cls)]
    if len(names) < n_cls:
        raise PadistillError(f"{path}: labels go up to {n_cls - 1} but only {len(names)} class names "
                             "are given")
    if mean is None or std is None:
        mean, std = channel_stats(a.x_train)
    return Dataset(name, a.x_train, a.y_train, a.x_test, a.y_test, list(names), tuple(mean), tuple(std))


@register_dataset("npz")
def load_npz(root: Path, download: bool, path: str | None = None) -> Dataset:
    """Generic archive: option `path`, else `<root>/data.npz`; mean/std computed from the train set."""
    p = Path(path).expanduser() if path is not None else Path(root) / "data.npz"
    if not p.is_file():
        raise PadistillError(f"npz: dataset file {p} not found (give option path=... or place data.npz "
                             f"in {root}; this loader cannot download)")
    return dataset_from_npz(p, "npz")
