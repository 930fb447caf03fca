"""The SRe2L evaluation protocol (`eval.protocol: sre2l`; SRe2L spec §3): relabel on the fly.

A fresh student is trained on the set's images only; its targets are the squeezed teacher's logits on exactly
the batch the student sees, recomputed every batch of every epoch (fresh crops, so fresh soft labels):
- per batch: random crop (4 px at 32 px, zero padding) + horizontal flip per image (DSA's crop and flip
  families, mode 'M'), then mixup with lambda ~ Beta(a, a) (a = 0.8) and a random pairing (both drawn from the
  run's generator); the mixed batch goes to the teacher and to the student; the mixup targets are unused;
- loss: KL(softmax(t / T) || softmax(s / T)), batch mean, T = 30, times T^2 only with kl_t2 (Tiny code);
- AdamW (lr 1e-3, weight decay 0.01) or SGD (momentum 0.9), lr cosine over the epochs (after an optional
  linear warm-up) set before every epoch; `eval.epochs` epochs (E epochs here, not E + 1), `eval.batch`;
- the teacher runs in train mode (batch statistics; the published CIFAR code) or eval mode (`teacher_mode`);
- top-1 on the test split once, after the last epoch.
The random-real baseline is relabelled by the same teacher with the same protocol, and rows share each run's
initialisation and data-order seeds (paired).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from padistill.errors import PadistillError


@dataclass(frozen=True)
class Relabel:
    """The settings of the SRe2L relabel protocol (from the config's `sre2l:` section)."""

    optimizer: str = "adamw"
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup: int = 0
    temperature: float = 30.0
    kl_t2: bool = False
    mixup: bool = True
    mixup_alpha: float = 0.8
    teacher_mode: str = "train"

    @classmethod
    def from_config(cls, s) -> Relabel:
        return cls(optimizer=s.eval_optimizer, lr=s.eval_lr, weight_decay=s.eval_weight_decay, warmup=s.eval_warmup,
                   temperature=s.temperature, kl_t2=s.kl_t2, mixup=s.mixup, mixup_alpha=s.mixup_alpha,
                   teacher_mode=s.teacher_mode)

    def settings(self) -> dict:
        return asdict(self)


def relabel_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float,
                 t2: bool = False) -> torch.Tensor:
    """KL(softmax(t / T) || softmax(s / T)), summed over classes, mean over the batch (x T^2 with t2)."""
    log_q = F.log_softmax(student_logits / temperature, dim=1)
    log_p = F.log_softmax(teacher_logits / temperature, dim=1)
    kl = (log_p.exp() * (log_p - log_q)).sum(dim=1).mean()
    return kl * temperature ** 2 if t2 else kl


def epoch_lr(r: Relabel, epoch: int, epochs: int) -> float:
    if epoch < r.warmup:
        return r.lr * (epoch + 1) / r.warmup
    return r.lr * 0.5 * (1.0 + math.cos(math.pi * (epoch - r.warmup) / max(1, epochs - r.warmup)))


def mix(x: torch.Tensor, gen: torch.Generator, alpha: float) -> torch.Tensor:
    """Mixup of a batch with a random pairing of itself; lambda ~ Beta(alpha, alpha) seeded from `gen`."""
    seed = int(torch.randint(0, 2 ** 31 - 1, (1,), generator=gen))
    lam = float(np.random.default_rng(seed).beta(alpha, alpha))
    perm = torch.randperm(len(x), generator=gen).to(x.device)
    return lam * x + (1.0 - lam) * x[perm]


def train_and_test_relabel(model: nn.Module, images: torch.Tensor, x_test: torch.Tensor, y_test: torch.Tensor,
                           protocol, *, gen: torch.Generator, teacher, on_epoch=None) -> float:
    """Train `model` with the SRe2L protocol (module docstring); returns its test accuracy (fraction)."""
    from padistill.augment import DSA
    from padistill.training import accuracy

    r: Relabel = protocol.relabel
    if teacher is None:
        raise PadistillError("eval: the sre2l protocol needs a teacher (sre2l.teacher or the run's squeeze/)")
    if len(images) == 0:
        raise PadistillError("eval: the set to train on is empty")
    augment = DSA("crop_flip", mode="M") if protocol.augment else None
    if r.optimizer == "adamw":
        opt = torch.optim.AdamW(model.parameters(), lr=r.lr, weight_decay=r.weight_decay)
    else:
        opt = torch.optim.SGD(model.parameters(), lr=r.lr, momentum=0.9, weight_decay=r.weight_decay)
    epochs = max(1, protocol.epochs)
    for epoch in range(epochs):
        for group in opt.param_groups:
            group["lr"] = epoch_lr(r, epoch, epochs)
        model.train()
        order = torch.randperm(len(images), generator=gen)
        total, n = 0.0, 0
        for bidx in order.split(protocol.batch):
            xb = images[bidx.to(images.device)]
            if augment is not None:
                xb = augment(xb, gen)
            if r.mixup and len(xb) > 1:
                xb = mix(xb, gen, r.mixup_alpha)
            soft = teacher(xb)  # the teacher's logits on exactly this (cropped, flipped, mixed) batch
            loss = relabel_loss(model(xb), soft, r.temperature, r.kl_t2)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(xb)
            n += len(xb)
        stats = {"loss": total / max(1, n), "samples": n}
        if on_epoch is not None:
            on_epoch(epoch, opt, stats)
        if not math.isfinite(stats["loss"]):
            break
    return accuracy(model, x_test.to(images.device), y_test.to(images.device), batch=protocol.test_batch)


def describe(p: dict) -> str:
    """One line stating the SRe2L protocol of `Protocol.settings()`."""
    r = p["relabel"]
    warm = f"{r['warmup']} warm-up epoch(s) then " if r["warmup"] else ""
    mixup = f"Beta({r['mixup_alpha']:g}, {r['mixup_alpha']:g})" if r["mixup"] else "off"
    return (f"SRe2L relabel: {max(1, p['epochs'])} epochs, batch {p['batch']}, {r['optimizer']} lr {r['lr']:g} "
            f"({warm}cosine), weight decay {r['weight_decay']:g}, crop+flip {'on' if p['augment'] else 'off'}, "
            f"mixup {mixup}, KL to the "
            f"teacher ({r['teacher_mode']} mode) at T {r['temperature']:g}{' x T^2' if r['kl_t2'] else ''}")


def relabel_sets(folder, syn, prepared, cfg, log=print):
    """The rows of an SRe2L evaluation: the first distill.ipc images per class of the set, and a random real
    subset of the same size, both relabelled by the teacher. Returns (sets, teacher info)."""
    from pathlib import Path

    from padistill.evaluate.sets import EvalSet, random_subset
    from padistill.evaluate.teacher import Teacher
    from padistill.sre2l.squeeze import load_squeezed

    ipc = cfg.distill.ipc
    if ipc > syn.ipc:
        raise PadistillError(f"{Path(folder) / 'images.pt'}: holds {syn.ipc} image(s) per class, fewer than "
                             f"distill.ipc {ipc}; recover more (sre2l.recover_ipc) or lower distill.ipc")
    spec = cfg.sre2l.teacher or str(Path(folder).parent / "squeeze")
    model, info = load_squeezed(spec, prepared, cfg)
    r = Relabel.from_config(cfg.sre2l)
    teacher = Teacher(model, batch_stats=r.teacher_mode == "train", name=info["path"])
    C = syn.num_classes
    rows = torch.arange(C).repeat_interleave(syn.ipc).view(C, syn.ipc)[:, :ipc].reshape(-1)
    dev = prepared.device
    images = syn.images[rows].to(dev)
    labels = syn.hard_labels[rows].to(dev)
    log(f"eval: sre2l protocol, teacher {info['path']} in {r.teacher_mode} mode, T {r.temperature:g}"
        f"{' x T^2' if r.kl_t2 else ''}, {r.optimizer} lr {r.lr:g}, mixup {'on' if r.mixup else 'off'}")
    sets = [EvalSet("recovered", images, labels, r.lr,
                    f"the first {ipc} recovered image(s) per class, relabelled by the teacher on every crop",
                    baseline="random" if cfg.eval.baseline else None, teacher=teacher)]
    if cfg.eval.baseline:
        xr, yr = random_subset(prepared.x_train, prepared.y_train, prepared.num_classes, ipc, cfg.seed)
        sets.append(EvalSet("random", xr, yr, r.lr, f"{ipc} random real training image(s) per class, the same "
                            "teacher relabelling and protocol", teacher=teacher))
    return sets, info
