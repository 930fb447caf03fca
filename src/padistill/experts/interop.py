"""MTT / DATM / PAD replay buffers <-> padistill experts folders (spec §1.6).

Input (import): a folder of `replay_buffer_<n>.pt` files (or one such file) and the network they were trained
with (`--net --num-classes --channels --im-size`). Output: an experts folder (`experts/storage.py` format) that
`padistill distill` reads like one made by `padistill experts`.
Input (export): an experts folder. Output: `replay_buffer_<n>.pt` files with `per_file` trajectories each, which
the reference MTT / DATM / PAD distillation scripts load.

Replay-buffer format (spec §1.6): torch.save of a Python list of trajectories; a trajectory is a list of E+1
checkpoints (0 = initialisation, e+1 = after epoch e); a checkpoint is a list of float32 tensors, one per
parameter, in `model.parameters()` order with their original shapes. The reference flattens a checkpoint by
concatenating the tensors in list order, which is our layout order (spec §3.8), so conversion is a reshape.

Safety and memory: files are loaded with weights_only=True (they hold only lists of tensors) and memory-mapped
when their format allows, and converted one file at a time, one trajectory at a time: 100 CIFAR-10 experts are
13 GB and never sit in memory together. Every shape is checked against the named net's layout; problems are
one-line `PadistillError`s naming the file, trajectory, checkpoint and tensor. Export writes each file
atomically (temporary file + rename); the reference format is one pickled list, so one file's trajectories
(`per_file` x 129 MB for CIFAR-10 ConvNet-3) are in memory while it is written.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import torch

from padistill.errors import PadistillError
from padistill.experts.storage import EXPERT_RE, LAYOUT_FILE, ExpertStore, save_expert
from padistill.utils.io import atomic_write_json, atomic_write_with, load_tensors

BUFFER_RE = re.compile(r"^replay_buffer_(\d+)\.pt$")


def buffer_files(src: str | Path) -> list[Path]:
    """The replay_buffer_<n>.pt files of `src` sorted by n (or [src] for a single file)."""
    src = Path(src)
    if src.is_file():
        return [src]
    if not src.is_dir():
        raise PadistillError(f"{src}: replay-buffer folder or file not found")
    found = sorted((int(m.group(1)), p) for p in src.iterdir() if (m := BUFFER_RE.match(p.name)))
    if not found:
        raise PadistillError(f"{src}: no replay_buffer_<n>.pt files")
    return [p for _, p in found]


def _load_buffer(path: Path):
    try:  # zip-format files can be memory-mapped: tensors are read when they are copied, not at load time
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:
        return load_tensors(path, "replay buffer")  # legacy format, or the one-line error


def _trajectory_to_params(traj, layout, where: str) -> torch.Tensor:
    """[E+1, P] float32 from one trajectory (list of checkpoints), every shape validated."""
    if not isinstance(traj, (list, tuple)):
        raise PadistillError(f"{where}: expected a list of checkpoints, found {type(traj).__name__}")
    if len(traj) < 2:
        raise PadistillError(f"{where}: {len(traj)} checkpoint(s); a trajectory needs E+1 >= 2 (init + epochs)")
    out = torch.empty(len(traj), layout.total, dtype=torch.float32)
    for c, ckpt in enumerate(traj):
        w = f"{where}, checkpoint {c}"
        if not isinstance(ckpt, (list, tuple)):
            raise PadistillError(f"{w}: expected a list of tensors, found {type(ckpt).__name__}")
        if len(ckpt) != len(layout.names):
            raise PadistillError(f"{w}: {len(ckpt)} tensors, the net has {len(layout.names)} parameter tensors "
                                 "(wrong --net / --num-classes / --channels / --im-size?)")
        for i, (t, name, shape, off, n) in enumerate(zip(ckpt, layout.names, layout.shapes, layout.offsets,
                                                        layout.numels)):
            if not isinstance(t, torch.Tensor) or not t.is_floating_point():
                what = (f"{str(t.dtype).replace('torch.', '')} tensor" if isinstance(t, torch.Tensor)
                        else type(t).__name__)
                raise PadistillError(f"{w}, tensor {i} ({name}): expected a float tensor, found {what}")
            if tuple(t.shape) != tuple(shape):
                raise PadistillError(f"{w}, tensor {i} ({name}): expected shape {list(shape)}, found {list(t.shape)} "
                                     "(wrong --net / --num-classes / --channels / --im-size?)")
            out[c, off:off + n] = t.reshape(-1)
    if not torch.isfinite(out).all():
        raise PadistillError(f"{where}: contains NaN or Inf")
    return out


def import_replay_buffers(src: str | Path, out: str | Path, net: str = "convnet", num_classes: int = 10,
                          channels: int = 3, im_size: int | tuple[int, int] = 32, log=print,
                          options: dict | None = None, overwrite: bool = False) -> Path:
    """Convert replay_buffer_<n>.pt files into an experts folder; returns the folder."""
    from padistill.nets import build, param_layout
    from padistill.utils.manifest import StageDir

    files = buffer_files(src)
    out = Path(out)
    layout = param_layout(build(net, num_classes=num_classes, channels=channels, im_size=im_size, **(options or {})))
    settings = {"import": {"net": net, "options": options or {}, "num_classes": num_classes, "channels": channels,
                           "im_size": im_size, "files": [[p.name, p.stat().st_size] for p in files]}}
    stage = StageDir(out, "experts", settings, {}, 0)
    if stage.begin(overwrite=overwrite) == "complete":
        log(f"buffers: {out} already holds this import; reusing it")
        return out
    for p in out.iterdir():  # an interrupted import (or, with overwrite, another run) restarts cleanly
        if EXPERT_RE.match(p.name) or p.name == "metrics.jsonl":
            p.unlink()
    shutil.rmtree(out / "partial", ignore_errors=True)
    atomic_write_json(out / LAYOUT_FILE, layout.to_json())
    k, epochs, sources = 0, None, []
    for path in files:
        data = _load_buffer(path)
        if not isinstance(data, (list, tuple)):
            raise PadistillError(f"{path}: expected a list of trajectories (spec §1.6), found {type(data).__name__}")
        if not data:
            raise PadistillError(f"{path}: holds no trajectories")
        for t, traj in enumerate(data):
            params = _trajectory_to_params(traj, layout, f"{path}: trajectory {t}")
            if epochs is None:
                epochs = params.shape[0] - 1
            elif params.shape[0] - 1 != epochs:
                raise PadistillError(f"{path}: trajectory {t} has {params.shape[0] - 1} epochs, earlier ones have "
                                     f"{epochs} (all experts of a folder must have the same length)")
            save_expert(out, k, params, {"expert": k, "source": path.name, "index": t, "net": net})
            k += 1
            del params
        sources.append({"file": path.name, "trajectories": len(data)})
        del data
        log(f"buffers: {path.name}: {sources[-1]['trajectories']} trajectories ({k} so far)")
    stage.complete(outputs=[LAYOUT_FILE], num=k, epochs=epochs, params=layout.total, sources=sources,
                   save_dtype="float32")
    log(f"buffers: imported {k} experts x {epochs} epochs (P = {layout.total}) into {out}")
    return out


def export_replay_buffers(src: str | Path, out: str | Path, per_file: int = 10, log=print) -> list[Path]:
    """Write an experts folder as replay_buffer_<n>.pt files (`per_file` trajectories each, float32)."""
    if per_file < 1:
        raise PadistillError(f"--per-file must be >= 1; got {per_file}")
    store = ExpertStore(src)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for n, first in enumerate(range(0, len(store), per_file)):
        buffer = []
        for i in range(first, min(first + per_file, len(store))):
            rows = store.trajectory(i)
            bad = (~torch.isfinite(rows)).any(dim=1).nonzero().flatten()
            if len(bad):  # never hand NaN experts on: the published code would match against them silently
                raise PadistillError(f"{store.files[i]}: epoch {int(bad[0])} parameters contain NaN or Inf")
            # clone(): a view would make torch.save write the whole underlying [E+1, P] storage per tensor
            buffer.append([[t.to(torch.float32).clone() for t in store.layout.split(rows[e])]
                           for e in range(rows.shape[0])])
        path = out / f"replay_buffer_{n}.pt"
        atomic_write_with(path, lambda p, b=buffer: torch.save(b, p))
        written.append(path)
        log(f"buffers: {path.name}: {len(buffer)} trajectories")
        del buffer
    log(f"buffers: exported {len(store)} experts into {len(written)} file(s) in {out}")
    return written
