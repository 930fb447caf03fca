"""Image files on disk: shared reading helpers and the `imagefolder` loader.

Input: `root/<class>/**/*.png|jpg|jpeg|bmp|webp` (extensions case-insensitive); optionally a second folder
`test_root` in the same layout, else a seeded per-class split (`test_fraction`, `split_seed`).
Output: a `Dataset`, class order = sorted folder names, files in the order torchvision's ImageFolder
visits them (sorted directories, then sorted file names), so index files written against ImageFolder
line up.
Purpose: bring your own data. Images are never resized: every image must have the same size (an image of
another size is an error naming the file), and colour images are converted to RGB; a folder whose images
are all grayscale stays 1-channel. mean/std are computed from the train set.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from padistill.data.dataset import Dataset, channel_stats
from padistill.data.registry import register_dataset
from padistill.errors import PadistillError
from padistill.utils.rng import generator

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
_GRAY_MODES = ("1", "L", "LA")


def list_images(folder: Path) -> list[Path]:
    """Image files under `folder` (recursively) in ImageFolder order: sorted dirs, sorted names."""
    out = []
    seen: set[str] = set()  # real paths walked: a symlink back to a parent would otherwise loop (and repeat images)
    walk = []
    for dirpath, _, filenames in os.walk(folder, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:
            raise PadistillError(f"{dirpath}: leads to {real}, which was already read through another path (a "
                                 f"symlink loop or a second link to the same folder); remove the link")
        seen.add(real)
        walk.append((dirpath, filenames))
    for dirpath, filenames in sorted(walk):
        out.extend(Path(dirpath) / f for f in sorted(filenames) if f.lower().endswith(IMAGE_EXTENSIONS))
    return out


def probe_image(path: Path) -> tuple[tuple[int, int], str]:
    """(width, height) and Pillow mode from the file header (no pixel decoding)."""
    try:
        with Image.open(path) as im:
            return im.size, im.mode
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise PadistillError(f"{path}: not a readable image ({e})") from None


def decode_images(paths: Sequence[Path], mode: str, size: tuple[int, int], progress: str | None = None
                  ) -> torch.Tensor:
    """Decode `paths` to a uint8 tensor [N, C, H, W] in `mode` ('RGB' or 'L'); all must be `size` (W, H)."""
    from tqdm import tqdm

    w, h = size
    c = 1 if mode == "L" else 3
    out = np.empty((len(paths), h, w, c), dtype=np.uint8)
    it = tqdm(paths, desc=progress, unit="img", disable=progress is None or len(paths) < 2000)
    for i, path in enumerate(it):
        try:
            with Image.open(path) as im:
                if im.size != (w, h):
                    raise PadistillError(f"{path}: image is {im.size[0]}x{im.size[1]} px, expected {w}x{h} "
                                         "(all images must have the same size; resize them first)")
                _check_mode(path, im.mode)
                arr = np.asarray(im.convert(mode))
        except (OSError, ValueError, Image.DecompressionBombError) as e:
            if isinstance(e, PadistillError):
                raise
            raise PadistillError(f"{path}: not a readable image ({e})") from None
        out[i] = arr.reshape(h, w, c)
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()


def _check_mode(path: Path, mode: str) -> None:
    # 16-bit and float images would be clipped by a conversion to 8 bits: refuse instead of guessing.
    if mode.startswith("I") or mode == "F":
        raise PadistillError(f"{path}: image mode {mode!r} (16-bit or float) is not supported; use 8-bit "
                             "RGB or grayscale images")


def _class_folders(root: Path, what: str) -> list[str]:
    if not root.is_dir():
        raise PadistillError(f"imagefolder: {what} {root} not found (expected one sub-folder per class)")
    # Hidden folders (e.g. '.ipynb_checkpoints', unfinished '.extract-*') are not classes.
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise PadistillError(f"imagefolder: {what} {root} has no class sub-folders")
    return classes


def _scan(root: Path, classes: list[str], class_index: dict[str, int]) -> tuple[list[Path], list[int]]:
    files, labels = [], []
    for name in classes:
        found = list_images(root / name)
        if not found:
            raise PadistillError(f"imagefolder: {root / name} contains no images "
                                 f"({', '.join(IMAGE_EXTENSIONS)})")
        files += found
        labels += [class_index[name]] * len(found)
    return files, labels


def _common_format(files: list[Path]) -> tuple[str, tuple[int, int]]:
    """Decide the mode (L only if every image is grayscale) and check every image has the same size."""
    size, all_gray = None, True
    for path in files:
        s, mode = probe_image(path)
        _check_mode(path, mode)
        if size is None:
            size, first = s, path
        elif s != size:
            raise PadistillError(f"{path}: image is {s[0]}x{s[1]} px, expected {size[0]}x{size[1]} like "
                                 f"{first} (all images must have the same size; resize them first)")
        all_gray = all_gray and mode in _GRAY_MODES
    assert size is not None
    return ("L" if all_gray else "RGB"), size


@register_dataset("imagefolder")
def load_imagefolder(root: Path, download: bool, test_root: str | None = None, test_fraction: float = 0.2,
                     split_seed: int = 0) -> Dataset:
    """One sub-folder per class; a separate `test_root`, or a seeded per-class `test_fraction` split."""
    root = Path(root)
    classes = _class_folders(root, "folder")
    index = {c: i for i, c in enumerate(classes)}
    files, labels = _scan(root, classes, index)
    if test_root is not None:
        troot = Path(test_root).expanduser()
        tclasses = _class_folders(troot, "test_root")
        unknown = [c for c in tclasses if c not in index]
        if unknown:
            raise PadistillError(f"imagefolder: test_root {troot} has classes not in {root}: "
                                 f"{', '.join(unknown[:5])}")
        tfiles, tlabels = _scan(troot, tclasses, index)
        mode, size = _common_format(files + tfiles)
        x_all = decode_images(files + tfiles, mode, size, progress="imagefolder")
        x_train, x_test = x_all[: len(files)], x_all[len(files):]
        y_train, y_test = torch.tensor(labels, dtype=torch.int64), torch.tensor(tlabels, dtype=torch.int64)
    else:
        if not 0.0 <= float(test_fraction) < 1.0:
            raise PadistillError(f"imagefolder: test_fraction must be in [0, 1), found {test_fraction}")
        mode, size = _common_format(files)
        x_all = decode_images(files, mode, size, progress="imagefolder")
        y_all = torch.tensor(labels, dtype=torch.int64)
        test_idx = _split(y_all, len(classes), float(test_fraction), int(split_seed))
        is_test = torch.zeros(len(y_all), dtype=torch.bool)
        is_test[test_idx] = True
        x_train, y_train = x_all[~is_test], y_all[~is_test]
        x_test, y_test = x_all[is_test], y_all[is_test]
    mean, std = channel_stats(x_train)
    return Dataset("imagefolder", x_train, y_train, x_test, y_test, classes, mean, std)


def _split(y: torch.Tensor, num_classes: int, fraction: float, seed: int) -> torch.Tensor:
    """Seeded per-class choice of round(fraction * n_c) test images; at least one train image stays."""
    g = generator(seed, "data.imagefolder.split")
    chosen = []
    for c in range(num_classes):
        idx = torch.nonzero(y == c).flatten()
        n_test = min(round(fraction * len(idx)), len(idx) - 1)
        chosen.append(idx[torch.randperm(len(idx), generator=g)[:n_test]])
    return torch.cat(chosen)
