"""What an evaluation trains on besides the distilled set: random real baselines and KD teachers.

Input: the prepared data (model space), a resolved config, the distill folder (for `kd_teacher: expert`).
Output: `EvalSet`s (images, labels, lr, how to compare) and `Teacher`s; `check_space`, which refuses a
set whose preprocessing transform is not the one the data were prepared with.

- Random baseline (DD-Ranking's fairness rule; paper Table 1 / 2 "Random"): IPC real training images per
  class drawn with a seeded generator (the held-out validation images are not in the training split),
  class-contiguous, hard labels, lr = `eval.lr` or 0.01, evaluated with the identical protocol.
- Teacher (paper App. A.3, RDED-style KD): `eval.kd_teacher` = `expert` (expert 0 of the run's experts
  folder, final checkpoint), `expert:<i>`, a path to an experts folder, or a checkpoint file holding a
  state_dict or a flat parameter vector of the config's net.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from padistill.errors import PadistillError
from padistill.evaluate.teacher import Teacher
from padistill.training import has_batch_statistics
from padistill.utils.rng import generator

BASELINE_LR = 0.01  # lr of real-image baselines when eval.lr is not set (the experts' / reference's lr)


@dataclass
class EvalSet:
    """One row of an evaluation table."""

    name: str
    images: torch.Tensor
    labels: torch.Tensor
    lr: float
    description: str = ""
    baseline: str | None = None  # row name this one is compared with
    teacher: Teacher | None = None  # knowledge-distillation evaluation when set


def random_subset(x: torch.Tensor, y: torch.Tensor, num_classes: int, per_class: int, seed: int,
                  tag: str = "eval-random-subset") -> tuple[torch.Tensor, torch.Tensor]:
    """`per_class` random images of every class, class-contiguous (rows c*k..(c+1)*k-1 are class c)."""
    per_class = int(per_class)
    yc = y.detach().cpu()
    counts = torch.bincount(yc, minlength=num_classes)
    if per_class < 1 or per_class > int(counts.min()):
        raise PadistillError(f"random subset: per_class must be in [1, {int(counts.min())}] (smallest class); "
                             f"got {per_class}")
    g = generator(seed, tag, per_class)
    picks = []
    for c in range(num_classes):
        idx = torch.nonzero(yc == c).flatten()
        picks.append(idx[torch.randperm(len(idx), generator=g)[:per_class]])
    idx = torch.cat(picks).to(x.device)
    return x[idx], y[idx]


# ------------------------------------------------------------------------------------------ spaces


def _describe(pre) -> str:
    eps = f", eps {pre.eps:g}" if pre.kind == "zca" else ""
    return f"{pre.kind}{eps} fitted on data {pre.dataset_fingerprint[:12] or '?'}"


def check_space(set_pre, data_pre, where: str) -> None:
    """Refuse to evaluate a set in another model space than the data (one line naming the file).

    Identical transforms pass; so do transforms of the same kind, eps and training data whose tensors
    agree to float rounding (a ZCA refitted on another machine); anything else is refused."""
    if set_pre is None:
        raise PadistillError(f"{where}: the set's preprocessing transform is unknown; it cannot be evaluated safely")
    if set_pre.fingerprint() == data_pre.fingerprint():
        return
    same_meta = (set_pre.kind, tuple(set_pre.image_shape), round(set_pre.eps, 9), set_pre.dataset_fingerprint) == \
                (data_pre.kind, tuple(data_pre.image_shape), round(data_pre.eps, 9), data_pre.dataset_fingerprint)
    if same_meta:
        close = True
        for k in ("mean", "std", "transform", "transform_inv"):
            a, b = getattr(set_pre, k), getattr(data_pre, k)
            if (a is None) != (b is None) or (a is not None and not torch.allclose(
                    a.cpu().double(), b.cpu().double(), rtol=1e-4, atol=1e-5)):
                close = False
        if close:
            return
    raise PadistillError(
        f"{where}: the set was made in model space '{_describe(set_pre)}' but the data are prepared as "
        f"'{_describe(data_pre)}'; evaluating it there gives meaningless accuracy (use the config it was "
        "distilled with, or re-import it with `padistill import --space ...`)")


# ------------------------------------------------------------------------------------------ teachers


def load_teacher(spec: str, prepared, cfg, distill_dir: str | Path | None = None) -> Teacher:
    """The KD teacher named by `eval.kd_teacher` (see module docstring), on the prepared device."""
    from padistill.context import build_net
    from padistill.nets import param_layout
    from padistill.utils.io import load_tensors

    spec = str(spec).strip()
    model = build_net(prepared, seed=0)
    layout = param_layout(model)
    if spec == "expert" or spec.startswith("expert:"):
        index = 0
        if ":" in spec:
            try:
                index = int(spec.split(":", 1)[1])
            except ValueError:
                raise PadistillError(f"eval.kd_teacher: expected 'expert' or 'expert:<index>'; got {spec!r}") from None
        folder = Path(distill_dir).resolve().parent / "experts" if distill_dir is not None else None
        if folder is None or not folder.is_dir():
            raise PadistillError(f"eval.kd_teacher=expert: no experts folder beside {distill_dir}; "
                                 "give the experts folder or a checkpoint path instead")
        return _from_experts(folder, index, model, layout, prepared.device)
    path = Path(spec).expanduser()
    if path.is_dir():
        return _from_experts(path, 0, model, layout, prepared.device)
    if not path.is_file():
        raise PadistillError(f"eval.kd_teacher: {path} is neither 'expert', an experts folder nor a checkpoint file")
    obj = load_tensors(path, "teacher checkpoint")
    if isinstance(obj, torch.Tensor):
        if obj.ndim != 1 or obj.numel() != layout.total or not obj.is_floating_point():
            raise PadistillError(f"{path}: expected a flat float vector of {layout.total} parameters "
                                 f"(net '{cfg.net.name}'), found {obj.dtype} {list(obj.shape)}")
        _require_finite(obj, path, "the parameter vector")
        model.load_state_dict(layout.unflatten(obj.float()), strict=False)
        return Teacher(model.to(prepared.device), batch_stats=has_batch_statistics(model), name=str(path))
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise PadistillError(f"{path}: expected a state_dict or a flat parameter vector, found {type(obj).__name__}")
    for k, ref in model.state_dict().items():  # float entries (not e.g. num_batches_tracked) must be finite floats
        v = obj.get(k)
        if ref.is_floating_point() and isinstance(v, torch.Tensor):
            if not v.is_floating_point():
                raise PadistillError(f"{path}: '{k}' must be floating point, found {v.dtype}")
            _require_finite(v, path, f"'{k}'")
    try:
        model.load_state_dict(obj, strict=True)
    except RuntimeError as e:
        first = str(e).strip().splitlines()
        raise PadistillError(f"{path}: not a checkpoint of net '{cfg.net.name}' "
                             f"({first[1].strip() if len(first) > 1 else first[0]})") from None
    return Teacher(model.to(prepared.device), batch_stats=False, name=str(path))


def _require_finite(t: torch.Tensor, path: Path, what: str) -> None:
    if not torch.isfinite(t).all():
        raise PadistillError(f"{path}: {what} contains NaN or Inf; not a usable teacher")


def _from_experts(folder: Path, index: int, model, layout, device) -> Teacher:
    from padistill.experts.storage import ExpertStore

    store = ExpertStore(folder)
    if tuple(store.layout.names) != tuple(layout.names) or store.layout.total != layout.total:
        raise PadistillError(f"{folder}: experts have {store.layout.total} parameters of another net "
                             f"than the config's ({layout.total}); use the config the experts were trained with")
    if not 0 <= index < len(store):
        raise PadistillError(f"eval.kd_teacher: expert {index} out of range 0..{len(store) - 1} in {folder}")
    flat = store.checkpoint(index, -1)
    model.load_state_dict(layout.unflatten(flat), strict=False)  # parameters only: experts store no buffers
    # Expert files hold parameters only, so a BatchNorm teacher has no running statistics: it normalises
    # with the statistics of each batch instead (train mode, no gradients).
    return Teacher(model.to(device), batch_stats=has_batch_statistics(model),
                   name=f"expert {index} (final epoch) of {folder}")
