"""Distilled-set artifacts: the files a distillation run leaves behind, and their validated loading.

A distilled set folder holds (spec §8.24):
    images.pt       float32 [C*IPC, ch, H, W], class-contiguous (rows c*IPC..(c+1)*IPC-1 are class c),
                    in model space (ZCA-whitened or normalised, see preprocess.pt)
    labels.pt       float32 [C*IPC, C] label logits (soft labels), or int64 [C*IPC] hard labels
    lr.pt           0-d float32 tensor, the learned student lr (the evaluation lr)
    preprocess.pt   the fitted ZCA / normalisation transform, so the set can never be evaluated or
                    viewed in the wrong space
    grid_*.png      de-whitened images for viewing
Loading validates every file (weights_only=True, dtypes, shapes, consistency).

Run layout (one owner, used by eval, export and report): a run folder holds `distill/` (or an imported set in
the same format), `eval/` and `report/`; a set folder also holds config.yaml and manifest.json.
`find_distill_dir`, `check_set_folder`, `read_set_config` and `locate_run` read it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch

from padistill.data.transforms import Preprocessor, load_preprocessor
from padistill.errors import PadistillError
from padistill.utils.io import atomic_save, atomic_write_with, load_tensors, require_tensor
from padistill.utils.manifest import read_manifest


@dataclass
class DistilledSet:
    images: torch.Tensor
    labels: torch.Tensor
    lr: torch.Tensor
    pre: Preprocessor | None
    num_classes: int

    @property
    def ipc(self) -> int:
        return self.images.shape[0] // self.num_classes

    @property
    def hard_labels(self) -> torch.Tensor:
        return self.labels if self.labels.ndim == 1 else self.labels.argmax(dim=1)

    def class_of_rows(self) -> torch.Tensor:
        return torch.arange(self.num_classes).repeat_interleave(self.ipc)


def save_distilled(folder: str | Path, images: torch.Tensor, labels: torch.Tensor, lr: torch.Tensor,
                   pre: Preprocessor | None, prefix: str = "") -> list[str]:
    folder = Path(folder)
    names = [f"{prefix}images.pt", f"{prefix}labels.pt", f"{prefix}lr.pt"]
    atomic_save(images.detach().to("cpu", torch.float32).contiguous(), folder / names[0])
    lab = labels.detach().to("cpu")
    atomic_save(lab.to(torch.float32).contiguous() if lab.is_floating_point() else lab.to(torch.int64),
                folder / names[1])
    atomic_save(lr.detach().to("cpu", torch.float32).reshape(()), folder / names[2])
    if pre is not None:
        if not (folder / "preprocess.pt").is_file():  # one transform per folder (best_* and the final set share it)
            pre.save(folder / "preprocess.pt")
        names.append("preprocess.pt")  # listed even when an earlier save (or a killed run) wrote it
    return names


def require_class_range(labels: torch.Tensor, num_classes: int, where: str) -> None:
    """Hard labels (class indices) must lie in [0, num_classes), or a one-line error naming `where`."""
    if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise PadistillError(f"{where}: hard labels must lie in [0, {num_classes}); found [{int(labels.min())}, "
                             f"{int(labels.max())}]")


def load_distilled(folder: str | Path, num_classes: int | None = None, prefix: str = "",
                   require_preprocess: bool = True) -> DistilledSet:
    folder = Path(folder)
    if not folder.is_dir():
        raise PadistillError(f"{folder}: distilled-set folder not found")
    images = require_tensor(load_tensors(folder / f"{prefix}images.pt", "distilled images"),
                            str(folder / f"{prefix}images.pt"), dtype=(torch.float32, torch.float16), ndim=4)
    labels = load_tensors(folder / f"{prefix}labels.pt", "distilled labels")
    n = images.shape[0]
    if n == 0:
        raise PadistillError(f"{folder / f'{prefix}images.pt'}: holds no images")
    where = str(folder / f"{prefix}labels.pt")
    if isinstance(labels, torch.Tensor) and labels.ndim == 1:
        labels = require_tensor(labels, where, dtype=(torch.int64, torch.int32), shape=(n,)).long()
        C = num_classes or int(labels.max()) + 1
        require_class_range(labels, C, where)
    else:
        labels = require_tensor(labels, where, dtype=(torch.float32, torch.float16), ndim=2).float()
        if labels.shape[0] != n:
            raise PadistillError(f"{where}: {labels.shape[0]} labels for {n} images")
        if not torch.isfinite(labels).all():
            raise PadistillError(f"{where}: contains NaN or Inf")
        C = labels.shape[1]
    if num_classes is not None and C != num_classes:
        raise PadistillError(f"{where}: labels describe {C} classes, the dataset has {num_classes}")
    if n % C != 0:
        raise PadistillError(f"{folder}: {n} images is not a whole number of images per class for {C} classes")
    # Every producer (distill, import) writes the set class by class: rows c*IPC..(c+1)*IPC-1 are class c. Export
    # (PNG folders) and the evaluation's random baseline rely on it, so hard labels must say exactly that.
    if labels.ndim == 1 and not torch.equal(labels, torch.arange(C).repeat_interleave(n // C)):
        raise PadistillError(f"{where}: hard labels must be {n // C} of each class, class by class (rows "
                             f"c*IPC..(c+1)*IPC-1 are class c); found {labels[:12].tolist()}"
                             f"{'...' if n > 12 else ''}; re-import the set with `padistill import`")
    lr_path = folder / f"{prefix}lr.pt"
    lr = require_tensor(load_tensors(lr_path, "learned lr"), str(lr_path), dtype=(torch.float32, torch.float64))
    if lr.numel() != 1 or not math.isfinite(float(lr)) or float(lr) <= 0:
        raise PadistillError(
            f"{lr_path}: expected one positive finite learning rate, found {lr.flatten()[:3].tolist()}")
    if not torch.isfinite(images).all():
        raise PadistillError(f"{folder / f'{prefix}images.pt'}: contains NaN or Inf")
    pre_path = folder / "preprocess.pt"
    pre = load_preprocessor(pre_path) if pre_path.is_file() else None
    if pre is None and require_preprocess:
        raise PadistillError(
            f"{folder}: no preprocess.pt; the images' space (ZCA / normalised) is unknown, so they cannot be "
            "evaluated safely (import them with `padistill import --space ...`)")
    if pre is not None and tuple(pre.image_shape) != tuple(images.shape[1:]):
        raise PadistillError(f"{pre_path}: transform is for images {tuple(pre.image_shape)}, "
                             f"the set has {tuple(images.shape[1:])}")
    return DistilledSet(images.float(), labels, lr.reshape(()).float(), pre, C)


def save_grid(images_01: torch.Tensor, path: str | Path, nrow: int, pad: int = 2, scale: int = 1) -> Path:
    """Save images in [0, 1] (any range is clamped) as one PNG grid, `nrow` images per row."""
    from PIL import Image

    x = images_01.detach().float().cpu().clamp(0, 1)
    n, c, h, w = x.shape
    ncol = max(1, nrow)
    rows = math.ceil(n / ncol)
    grid = torch.ones(c, rows * (h + pad) + pad, ncol * (w + pad) + pad)
    for i in range(n):
        r, k = divmod(i, ncol)
        grid[:, pad + r * (h + pad): pad + r * (h + pad) + h, pad + k * (w + pad): pad + k * (w + pad) + w] = x[i]
    arr = (grid * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    img = Image.fromarray(arr[:, :, 0] if c == 1 else arr, mode="L" if c == 1 else "RGB")
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    return atomic_write_with(path, lambda p: img.save(p, format="PNG"))


# ------------------------------------------------------------------------------------------ run layout

SET_STAGES = ("distill", "import", "recover", "select")  # folders that hold a set in our format (select: a coreset)


def find_distill_dir(run_dir: str | Path) -> Path:
    """The distilled-set folder: `run_dir` itself or `run_dir/distill`."""
    run_dir = Path(run_dir)
    for cand in (run_dir, run_dir / "distill"):
        if (cand / "images.pt").is_file():
            return cand
    if not run_dir.exists():
        raise PadistillError(f"{run_dir}: folder not found")
    raise PadistillError(f"{run_dir}: no distilled set (images.pt) here or in {run_dir / 'distill'}")


def read_set_config(folder: Path):
    """The resolved config a distilled-set folder was made with (its config.yaml)."""
    from padistill.config import from_dict, read_yaml

    path = folder / "config.yaml"
    if not path.is_file():
        raise PadistillError(f"{path}: not found; the set's dataset and preprocessing are unknown")
    return from_dict(read_yaml(path), where=str(path))


def check_set_folder(folder: Path) -> dict:
    """The manifest of a finished set folder (distill, import, recover, select); refuses anything else."""
    m = read_manifest(folder)
    if m is None:
        raise PadistillError(f"{folder}: no manifest.json; expected the output of `padistill distill` or "
                             "`padistill import`")
    if m["stage"] not in SET_STAGES:
        raise PadistillError(f"{folder}: is a '{m['stage']}' folder, expected a distill, import, recover or select "
                             "folder")
    if m.get("status") != "complete":
        raise PadistillError(f"{folder}: the {m['stage']} stage did not finish; re-run it to resume")
    return m


def locate_run(run_dir: Path) -> tuple[Path, Path | None, Path]:
    """(run root, distill folder or None, eval folder) of a run folder or of a distill folder (finished or not)."""
    if not run_dir.is_dir():
        raise PadistillError(f"{run_dir}: folder not found")
    looks_distill = any((run_dir / n).is_file() for n in ("images.pt", "metrics.jsonl", "checkpoint.pt"))
    if looks_distill:
        return run_dir.parent, run_dir, run_dir.parent / "eval"
    distill = run_dir / "distill"
    if not distill.is_dir() and (run_dir / "recover").is_dir():  # an SRe2L run: the recovered set
        distill = run_dir / "recover"
    if not distill.is_dir() and not (run_dir / "eval").is_dir():
        raise PadistillError(f"{run_dir}: neither a run folder (distill/, eval/) nor a distill folder")
    return run_dir, distill if distill.is_dir() else None, run_dir / "eval"
