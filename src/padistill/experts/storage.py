"""Expert trajectory storage: one file per expert, every epoch's parameters, read lazily.

Layout of an experts folder (output of `padistill experts`):
    manifest.json, config.yaml       stage manifest (see utils.manifest)
    layout.json                      parameter names and shapes, shallow -> deep (flattening order)
    expert_0000.pt ...               one file per finished expert (atomic), a dict:
        params   Tensor [E+1, P]     row e = flattened parameters after e epochs (row 0 = initialisation),
                                     float32 or float16 (`experts.save_dtype`)
        epochs   int                 E
        meta     dict                seed, per-epoch train size and test accuracy, ...
    partial/expert_0000.pt           resumable state of an expert that is still training

Readers memory-map the files (`torch.load(mmap=True)`), so asking for a start/target pair reads two
rows, not the 100+ checkpoints of every expert. All loads use weights_only=True and validate shapes;
`checkpoint` / `pair` check the rows they read for NaN / Inf (`trajectory` returns raw rows).
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path

import torch

from padistill.errors import PadistillError
from padistill.nets.layout import ParamLayout
from padistill.nets.registry import net_identity
from padistill.utils.io import atomic_save, load_tensors, read_json

EXPERT_RE = re.compile(r"^expert_(\d{4,})\.pt$")
LAYOUT_FILE = "layout.json"


def expert_path(folder: str | Path, expert_id: int) -> Path:
    return Path(folder) / f"expert_{expert_id:04d}.pt"


def save_expert(folder: str | Path, expert_id: int, params: torch.Tensor, meta: dict) -> Path:
    if params.ndim != 2:
        raise ValueError("params must be [E+1, P]")
    return atomic_save({"params": params.contiguous(), "epochs": int(params.shape[0] - 1), "meta": meta},
                       expert_path(folder, expert_id))


class ExpertStore:
    """Read-only access to a folder of expert trajectories."""

    def __init__(self, folder: str | Path, max_experts: int | None = None):
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise PadistillError(f"{self.folder}: experts folder not found")
        files = sorted(p for p in self.folder.iterdir() if EXPERT_RE.match(p.name))
        if max_experts is not None:
            if isinstance(max_experts, bool) or not isinstance(max_experts, int) or max_experts < 1:
                raise PadistillError(f"{self.folder}: max_experts must be a positive integer or None; "
                                     f"got {max_experts!r}")
            files = files[:max_experts]
        if not files:
            raise PadistillError(f"{self.folder}: no expert_XXXX.pt files (run `padistill experts` first)")
        self.files = files
        self.layout = ParamLayout.from_json(read_json(self.folder / LAYOUT_FILE, "expert layout"),
                                            str(self.folder / LAYOUT_FILE))
        first = self._open(0)
        self.epochs = int(first["params"].shape[0] - 1)
        self.dtype = first["params"].dtype

    def __len__(self) -> int:
        return len(self.files)

    @lru_cache(maxsize=8)  # noqa: B019 - a store lives as long as its run; bounded cache of mmaps
    def _open(self, i: int) -> dict:
        path = self.files[i]
        try:
            data = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except Exception:
            data = load_tensors(path, "expert trajectory")  # gives the one-line error
        if not isinstance(data, dict) or not isinstance(data.get("params"), torch.Tensor):
            raise PadistillError(f"{path}: not an expert file (expected a dict with a 'params' tensor)")
        p = data["params"]
        if p.ndim != 2 or p.shape[1] != self.layout.total or p.dtype not in (torch.float32, torch.float16):
            raise PadistillError(
                f"{path}: params must be float32/float16 [E+1, {self.layout.total}], found "
                f"{str(p.dtype).replace('torch.', '')} {list(p.shape)}")
        if hasattr(self, "epochs") and p.shape[0] - 1 != self.epochs:
            raise PadistillError(f"{path}: has {p.shape[0] - 1} epochs, other experts have {self.epochs}")
        return data

    def checkpoint(self, i: int, epoch: int, device: torch.device | str = "cpu") -> torch.Tensor:
        """Flat float32 parameters of expert i after `epoch` epochs (-1 = last)."""
        p = self._open(i)["params"]
        e = self.epochs if epoch < 0 else epoch
        if not 0 <= e <= self.epochs:
            raise PadistillError(f"{self.files[i]}: epoch {epoch} out of range 0..{self.epochs}")
        row = p[e].to(device=device, dtype=torch.float32, copy=True)
        if not torch.isfinite(row).all():  # checked when read: a whole folder can be GBs, memory-mapped
            raise PadistillError(f"{self.files[i]}: epoch {e} parameters contain NaN or Inf")
        return row

    def trajectory(self, i: int) -> torch.Tensor:
        """The whole [E+1, P] tensor of expert i as stored (memory-mapped: rows are read when used)."""
        return self._open(i)["params"]

    def pair(self, i: int, start: int, span: int, device: torch.device | str = "cpu"):
        """(theta_start, theta_target) = checkpoints `start` and `start + span` of expert i."""
        return self.checkpoint(i, start, device), self.checkpoint(i, start + span, device)

    def meta(self, i: int) -> dict:
        return self._open(i).get("meta", {})

    def require_fits(self, layout: ParamLayout, net_name: str, epochs_needed: int) -> None:
        """Refuse experts of another network (parameter count or tensor shapes: FIEM's depth cut and the layers
        would not line up) or with fewer epochs than the start window needs."""
        where = self.folder
        if self.layout.total != layout.total:
            raise PadistillError(f"{where}: experts have {self.layout.total} parameters, "
                                 f"net '{net_name}' has {layout.total}; use the net the experts were trained with")
        theirs = [tuple(sh) for sh in self.layout.shapes]
        ours = [tuple(sh) for sh in layout.shapes]
        if theirs != ours:
            k = next((i for i, (a, b) in enumerate(zip(theirs, ours)) if a != b), min(len(theirs), len(ours)))
            a, b = (list(x[k]) if k < len(x) else "nothing" for x in (theirs, ours))
            raise PadistillError(f"{where}/layout.json: parameter #{k} has shape {a}, net '{net_name}' has "
                                 f"{b} (same total, other tensors); use the net the experts were trained with")
        if self.epochs < epochs_needed:
            raise PadistillError(f"{where}: experts have {self.epochs} epochs; the start window needs {epochs_needed}")


def check_experts_manifest(folder, manifest: dict, net_name: str, net_options: dict, data: str) -> None:
    """Refuse experts trained on other data or with another net: the parameter count, checked later, cannot tell
    ZCA from normalised inputs, or instance from batch norm. Only what the manifest records is compared."""
    inputs, settings = (m if isinstance(m, dict) else {} for m in (manifest.get("inputs"), manifest.get("settings")))
    theirs = inputs.get("data")
    if theirs is not None and theirs != data:  # "<dataset>-<preprocessing>" fingerprints (Prepared.fingerprint)
        why = "another dataset" if str(theirs).split("-")[0] != data.split("-")[0] else "other preprocessing"
        raise PadistillError(f"{folder}: experts were trained on data {theirs}, the config's data is {data} "
                             f"({why}); use experts trained on this data (data.name / data.preprocess / ...)")
    if isinstance(settings.get("net"), dict):  # `padistill experts`
        name, options = settings["net"].get("name"), settings["net"].get("options")
    elif isinstance(settings.get("import"), dict):  # `padistill buffers import` records no data: only its net
        name, options = settings["import"].get("net"), settings["import"].get("options")
    else:
        return
    try:
        same = net_identity(name, options or {}) == net_identity(net_name, net_options)
    except (PadistillError, TypeError):  # an unknown or malformed net name / options in the manifest
        same = False
    if not same:
        raise PadistillError(f"{folder}: experts were trained with net {name!r} options {options or {}}, the config "
                             f"has net {net_name!r} options {net_options}; use the net the experts were "
                             "trained with")
