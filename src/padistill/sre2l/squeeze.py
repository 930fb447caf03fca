"""`squeeze`: the SRe2L teacher (spec §1), an ordinary stage folder.

Input: a resolved config (`net`: any registry net with batch norm, e.g. resnet18-bn, the CIFAR ResNet-18 of the
spec: 3x3 stem, no max-pool, 20 BN layers; `sre2l.squeeze_*`), the prepared data (model space, normalised), and
with FIEX (`experts.schedule.enabled`) a finished scores folder.
Output folder: teacher.pt ({state_dict (with the BN running statistics), net, num_classes, data, test_acc,
epochs}), metrics.jsonl (one record per epoch), manifest.json, config.yaml.

Training: SGD (lr, momentum, weight decay from the config), cross-entropy, shuffled batches, random crop (4 px at
32 px, zero padding) + horizontal flip per image (DSA's crop and flip families, `augment.DSA('crop_flip', 'M')`),
lr cosine over the epochs (optionally after a linear warm-up), set before every epoch. The teacher is the last
epoch (as in the published code). The loop is the shared `training.train_epoch`.

FIEX: epoch e trains on `filters.scheduled_indices(ordering, e, experts.schedule)`, the same scheduler and the same
scores stage the experts use; its epochs (AEE, R1, R2) count squeeze epochs.

Resume: after every epoch the model, optimiser, generator and history are written atomically to partial.pt; a
killed run continues from its last finished epoch and ends bit-identical (CPU, same seed).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import torch
from torch import nn

from padistill.config import Config, dump_yaml
from padistill.errors import PadistillError
from padistill.utils.io import atomic_save, atomic_write_text, load_tensors
from padistill.utils.manifest import StageDir, read_manifest, require_complete
from padistill.utils.progress import progress_bar
from padistill.utils.rng import derive_seed, generator

TEACHER = "teacher.pt"
PARTIAL = "partial.pt"
METRICS = "metrics.jsonl"


def bn_layers(model: nn.Module) -> list[nn.Module]:
    """The batch-norm layers of `model` in module order (the stem BN first)."""
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def require_bn(model: nn.Module, name: str, where: str = "config: 'net.name'") -> None:
    if not bn_layers(model):
        raise PadistillError(f"{where}: net '{name}' has no batch-norm layers, and SRe2L's recover matches BN "
                             "statistics; use a BN net such as resnet18-bn or convnet-bn")


def cosine_lr(base: float, epoch: int, epochs: int, warmup: int = 0) -> float:
    """Linear warm-up over `warmup` epochs, then base * (1 + cos(pi * e' / (epochs - warmup))) / 2."""
    if epoch < warmup:
        return base * (epoch + 1) / warmup
    return base * 0.5 * (1.0 + math.cos(math.pi * (epoch - warmup) / max(1, epochs - warmup)))


def _ordering(cfg: Config, prepared, scores_dir, log):
    if not cfg.experts.schedule.enabled:
        return None, {}
    if scores_dir is None:
        raise PadistillError("squeeze: FIEX (experts.schedule.enabled=true) needs a scores folder (output of "
                             "`padistill scores`), or set experts.schedule.enabled=false for the full data")
    from padistill.scores.ordering import load_scores_ordering

    ordering = load_scores_ordering(scores_dir, prepared)
    return ordering, {"scores": require_complete(scores_dir, "scores")["key"]}


def run_squeeze(cfg: Config, prepared, out_dir: str | Path, scores_dir: str | Path | None = None,
                overwrite: bool = False, log=print, show_progress: bool = True) -> Path:
    """Train (or resume, or reuse) the teacher in `out_dir`; returns the folder."""
    from padistill.augment import DSA
    from padistill.context import build_net
    from padistill.filters.schedule import scheduled_indices
    from padistill.sre2l.settings import squeeze_settings
    from padistill.training import accuracy, train_epoch

    out = Path(out_dir)
    s = cfg.sre2l
    model = build_net(prepared, cfg.net.name, seed=derive_seed(cfg.seed, "squeeze", "init"), options=cfg.net.options)
    require_bn(model, cfg.net.name)
    ordering, inputs = _ordering(cfg, prepared, scores_dir, log)
    if ordering is not None:  # fails now (a schedule that empties a class), not at epoch 61
        sizes = [len(scheduled_indices(ordering, e, cfg.experts.schedule)) for e in range(s.squeeze_epochs)]
        log(f"squeeze: FIEX on {list(ordering.shape)} ordering; train size per epoch {sizes[0]} (epoch 1) .. "
            f"{max(sizes)} .. {sizes[-1]} (epoch {s.squeeze_epochs})")
    stage = StageDir(out, "squeeze", squeeze_settings(cfg), {"data": prepared.fingerprint(), **inputs}, cfg.seed,
                     dump_yaml(cfg))
    state = stage.begin(overwrite=overwrite)
    if state == "complete":
        log(f"squeeze: {out} is complete (same settings and inputs); reusing it")
        return out
    t0 = time.perf_counter()
    opt = torch.optim.SGD(model.parameters(), lr=s.squeeze_lr, momentum=s.squeeze_momentum,
                          weight_decay=s.squeeze_weight_decay)
    g = generator(cfg.seed, "squeeze", "data")
    augment = DSA("crop_flip", mode="M") if s.squeeze_augment else None
    history: list[dict] = []
    start = 0
    ppath = out / PARTIAL
    if state == "missing":
        ppath.unlink(missing_ok=True)
        (out / METRICS).unlink(missing_ok=True)
    elif ppath.is_file():
        st = load_tensors(ppath, "partial squeeze state")
        try:
            model.load_state_dict(st["model"])
            opt.load_state_dict(st["optimizer"])
            g.set_state(st["generator"])
            start, history = int(st["epoch"]), list(st["history"])
        except (KeyError, TypeError, ValueError, RuntimeError) as err:
            raise PadistillError(f"{ppath}: unusable partial state ({str(err).splitlines()[0][:160]}); delete it "
                                 "to restart the squeeze") from None
        log(f"squeeze: resuming after epoch {start}/{s.squeeze_epochs}")
    bar = progress_bar(range(start, s.squeeze_epochs), desc="squeeze", total=s.squeeze_epochs, initial=start,
                       disable=not show_progress, unit="epoch")
    for epoch in bar:
        t = time.perf_counter()
        lr = cosine_lr(s.squeeze_lr, epoch, s.squeeze_epochs, s.squeeze_warmup)
        for group in opt.param_groups:
            group["lr"] = lr
        idx = scheduled_indices(ordering, epoch, cfg.experts.schedule) if ordering is not None else None
        stats = train_epoch(model, opt, prepared.x_train, prepared.y_train, s.squeeze_batch, g, augment=augment,
                            microbatch=None, indices=idx)
        if not math.isfinite(stats["loss"]):
            raise PadistillError(f"squeeze: the teacher diverged at epoch {epoch + 1} (non-finite loss); lower "
                                 "sre2l.squeeze_lr")
        rec = {"epoch": epoch + 1, "lr": lr, "train_size": stats["samples"], "train_loss": stats["loss"],
               "train_acc": stats["acc"]}
        history.append(rec)
        atomic_save({"epoch": epoch + 1, "model": model.state_dict(), "optimizer": opt.state_dict(),
                     "generator": g.get_state(), "history": history}, ppath)
        with open(out / METRICS, "a", encoding="utf-8") as f:  # live log, rebuilt at the end
            f.write(json.dumps({**rec, "seconds": round(time.perf_counter() - t, 3)}) + "\n")
        bar.set_postfix(n=stats["samples"], loss=f"{stats['loss']:.3f}", acc=f"{stats['acc']:.3f}", refresh=False)
    bar.close()
    test_acc = accuracy(model, prepared.x_test, prepared.y_test)
    ckpt = {"state_dict": model.state_dict(), "net": cfg.net.name, "net_options": dict(cfg.net.options),
            "num_classes": prepared.num_classes, "data": prepared.fingerprint(), "epochs": s.squeeze_epochs,
            "test_acc": test_acc}
    atomic_save(ckpt, out / TEACHER)
    atomic_write_text(out / METRICS, "".join(json.dumps(r) + "\n" for r in history))
    ppath.unlink(missing_ok=True)
    seconds = time.perf_counter() - t0
    stage.complete([TEACHER], test_acc=test_acc, train_size_per_epoch=[r["train_size"] for r in history],
                   seconds=round(seconds, 2))
    log(f"squeeze: teacher {cfg.net.name} after {s.squeeze_epochs} epochs, test acc {test_acc:.4f} ({seconds:.0f}s)")
    return out


def load_squeezed(path: str | Path, prepared, cfg: Config) -> tuple[nn.Module, dict]:
    """The teacher of a squeeze folder (or its teacher.pt) as the config's net on the prepared device, in eval
    mode; refuses a teacher of other data, another class count or another net, and one without BN layers.
    Returns (model, {'key': the squeeze stage key or the file's sha256, 'path': str})."""
    from padistill.context import build_net
    from padistill.utils.io import sha256_file

    path = Path(path)
    folder = path if path.is_dir() else path.parent
    file = path / TEACHER if path.is_dir() else path
    manifest = read_manifest(folder) if (folder / "manifest.json").is_file() else None
    if manifest is not None and manifest.get("stage") == "squeeze":
        require_complete(folder, "squeeze", verify=(TEACHER,))
    elif path.is_dir():
        raise PadistillError(f"{folder}: not a finished squeeze folder (expected manifest.json of `squeeze`)")
    if not file.is_file():
        raise PadistillError(f"{file}: teacher checkpoint not found")
    obj = load_tensors(file, "teacher checkpoint")
    if not isinstance(obj, dict) or not isinstance(obj.get("state_dict"), dict):
        raise PadistillError(f"{file}: expected a squeeze checkpoint (a dict with 'state_dict')")
    if obj.get("num_classes") is not None and obj["num_classes"] != prepared.num_classes:
        raise PadistillError(f"{file}: the teacher has {obj['num_classes']} classes, the data "
                             f"({prepared.dataset.name}) have {prepared.num_classes}")
    if obj.get("data") is not None and obj["data"] != prepared.fingerprint():
        raise PadistillError(f"{file}: the teacher was trained on other data (fingerprint {obj['data']}, this run "
                             f"has {prepared.fingerprint()}: another dataset or preprocessing)")
    if obj.get("net") is not None and str(obj["net"]).lower() != cfg.net.name.lower():
        raise PadistillError(f"{file}: the teacher is a '{obj['net']}', the config's net is '{cfg.net.name}'")
    model = build_net(prepared, cfg.net.name, seed=0, options=cfg.net.options)
    state = obj["state_dict"]
    for k, v in state.items():
        if isinstance(v, torch.Tensor) and v.is_floating_point() and not torch.isfinite(v).all():
            raise PadistillError(f"{file}: '{k}' contains NaN or Inf; not a usable teacher")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        lines = str(e).strip().splitlines()
        raise PadistillError(f"{file}: not a checkpoint of net '{cfg.net.name}' with {prepared.num_classes} classes "
                             f"({(lines[1] if len(lines) > 1 else lines[0]).strip()[:160]})") from None
    require_bn(model, cfg.net.name, where=str(file))
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    key = manifest["key"] if manifest is not None and manifest.get("stage") == "squeeze" else sha256_file(file)
    return model, {"key": key, "path": str(file)}
