"""The evaluation protocol: train fresh networks on a (distilled) set, test each once (spec §4, §8.23).

Input: model-space images [N, ch, H, W] on any device, labels (float label logits [N, C] or int64
classes [N]), the student lr, a registered net name, and the split to test on (model space).
Output: `EvalResult` — the top-1 accuracy (fraction) of each run, mean ± std with n stated.

The protocol of MTT / DATM / PAD (`evaluate_synset`, spec §4; paper Appendix B "Evaluation"):
- a fresh network per run, its initialisation and its data order derived from (seed, tags, net, run);
- SGD(lr, momentum 0.9, weight decay 5e-4); epochs 0..E (E + 1 epochs, E = 1000 by default);
- after epoch index E // 2 + 1 the lr is multiplied by 0.1 and a NEW optimiser is created, so the
  momentum buffer restarts from zero (`lr_schedule`, `decay_epoch`);
- shuffled mini-batches of 128, DSA on every batch (one draw per batch from the run's generator);
- soft cross-entropy against softmax(label logits) for float labels with `soft_labels`; hard
  cross-entropy on the argmax otherwise, and for int labels;
- test accuracy once, after the last epoch, on the whole test split.
Knowledge distillation (RDED-style, paper App. A.3 / Table 9): with a `teacher`, the student instead
minimises T^2 * KL(softmax(teacher / T) || softmax(student / T)), the teacher seeing the same
augmented batch; labels are then unused. Everything else is unchanged.

Training runs through the shared loop (`padistill.training.train_epoch`): no DataLoader, micro-batched
forward/backward for nets without batch statistics (same gradient up to float rounding, faster on a
CPU because activations stay in cache), cache-sized test batches (benchmarks/bench_eval.py).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from padistill.errors import PadistillError
from padistill.evaluate.teacher import Teacher
from padistill.losses import kd_loss, label_loss
from padistill.training import accuracy, has_batch_statistics, train_epoch
from padistill.utils.rng import derive_seed, generator

DECAY_FACTOR = 0.1  # lr multiplier at the decay (reference: lr *= 0.1)


# ------------------------------------------------------------------------------------------ schedule


def decay_epoch(epochs: int) -> int:
    """Index of the last epoch at the initial lr: the reference decays *after* epoch E // 2 + 1."""
    return epochs // 2 + 1


def lr_schedule(epochs: int, lr: float) -> list[float]:
    """The lr of each training epoch 0..epochs (epochs + 1 entries): lr up to and including
    `decay_epoch(epochs)`, lr * 0.1 afterwards (1000 epochs: 0..501 at lr, 502..1000 at lr / 10)."""
    if epochs < 0:
        raise PadistillError(f"eval: epochs must be >= 0; got {epochs}")
    d = decay_epoch(epochs)
    return [lr if e <= d else lr * DECAY_FACTOR for e in range(epochs + 1)]


def optimizer_starts(epochs: int) -> list[int]:
    """Epochs at which a new SGD optimiser (zero momentum) is created: 0 and the first decayed epoch."""
    d = decay_epoch(epochs) + 1
    return [0, d] if d <= epochs else [0]


# ------------------------------------------------------------------------------------------ settings


@dataclass(frozen=True)
class Protocol:
    """Training settings of one evaluation (defaults: the paper's protocol)."""

    epochs: int = 1000  # E: trains epochs 0..E
    batch: int = 128
    momentum: float = 0.9
    weight_decay: float = 5e-4
    augment: bool = True  # DSA on every batch
    soft_labels: bool = True  # soft CE on float labels (hard CE on their argmax when False)
    kd_temperature: float = 4.0  # used only with a teacher
    microbatch: int | None = 25  # speed only; ignored by nets with batch statistics
    test_batch: int = 32  # speed only
    relabel: Any = None  # evaluate/sre2l.py `Relabel`: the SRe2L protocol (teacher relabelling) instead

    def __post_init__(self):
        if self.epochs < 0 or self.batch < 1 or self.test_batch < 1:
            raise PadistillError(f"eval: need epochs >= 0, batch >= 1, test_batch >= 1; got {self}")
        if not self.kd_temperature > 0:
            raise PadistillError(f"eval: kd_temperature must be > 0; got {self.kd_temperature}")

    @classmethod
    def from_config(cls, ec, epochs: int | None = None, sre2l=None) -> Protocol:
        """From an `EvalConfig` (`padistill.config`), optionally with another epoch count; `sre2l`: the config's
        `sre2l` section, used when `ec.protocol` is sre2l."""
        relabel = None
        if getattr(ec, "protocol", "tm") == "sre2l":
            from padistill.evaluate.sre2l import Relabel

            if sre2l is None:
                raise PadistillError("eval: protocol sre2l needs the config's sre2l section")
            relabel = Relabel.from_config(sre2l)
        return cls(epochs=ec.epochs if epochs is None else int(epochs), batch=ec.batch, momentum=ec.momentum,
                   weight_decay=ec.weight_decay, augment=ec.augment, soft_labels=ec.soft_labels,
                   kd_temperature=ec.kd_temperature, microbatch=ec.microbatch or None, test_batch=ec.test_batch,
                   relabel=relabel)

    def settings(self) -> dict:
        """The settings that determine the numbers (speed-only fields left out)."""
        d = asdict(self)
        d.pop("microbatch")
        d.pop("test_batch")
        if self.relabel is None:
            d.pop("relabel")
        return d


@dataclass
class EvalResult:
    """Accuracies (fractions) of `n` fresh networks of one architecture on one set."""

    net: str
    accs: list[float]
    settings: dict = field(default_factory=dict)
    seconds: float = 0.0
    label: str = ""  # what was trained on, for summaries

    @property
    def n(self) -> int:
        return len(self.accs)

    @property
    def mean(self) -> float:
        return float(np.mean(self.accs)) if self.accs else float("nan")

    @property
    def std(self) -> float:
        """Population std (numpy's default, ddof=0), the convention of MTT / DATM / PAD tables."""
        return float(np.std(self.accs)) if self.accs else float("nan")

    def cell(self) -> str:
        """'67.40 ± 0.30 (n=5)' in percent."""
        if not self.accs:
            return "-"
        return f"{100 * self.mean:.2f} ± {100 * self.std:.2f} (n={self.n})"

    def summary(self) -> str:
        what = f" on {self.label}" if self.label else ""
        return f"{self.net}{what}: test accuracy {self.cell()} %"

    def to_dict(self) -> dict:
        return {"net": self.net, "accs": list(self.accs), "mean": self.mean, "std": self.std, "n": self.n,
                "settings": self.settings, "seconds": round(self.seconds, 3), "label": self.label}

    @classmethod
    def from_dict(cls, d: dict) -> EvalResult:
        return cls(d["net"], [float(a) for a in d["accs"]], d.get("settings", {}), float(d.get("seconds", 0.0)),
                   d.get("label", ""))


# ------------------------------------------------------------------------------------------ targets


def training_targets(labels: torch.Tensor, soft_labels: bool) -> torch.Tensor:
    """Float label logits stay soft (soft CE) unless `soft_labels` is off; int labels are classes."""
    if labels.is_floating_point():
        if labels.ndim != 2:
            raise PadistillError(f"eval: float labels must be logits [N, C]; got shape {list(labels.shape)}")
        return labels.float() if soft_labels else labels.argmax(dim=1)
    if labels.ndim != 1:
        raise PadistillError(f"eval: integer labels must be classes [N]; got shape {list(labels.shape)}")
    return labels.long()


# ------------------------------------------------------------------------------------------ one run


def run_seed(seed: int, seed_tag: Sequence, net: str, run: int) -> int:
    """Initialisation seed of run `run` (rows of one table share it: paired comparisons)."""
    return derive_seed(seed, "eval-net", *seed_tag, net, run)


def train_and_test(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, lr: float,
                   x_test: torch.Tensor, y_test: torch.Tensor, protocol: Protocol = Protocol(), *,
                   gen: torch.Generator, teacher: Teacher | None = None,
                   on_epoch: Callable | None = None) -> float:
    """Train `model` (in place) on the set with the protocol and return its test accuracy (fraction).

    `on_epoch(epoch, optimizer, stats)` is called after every epoch (progress bars, tests)."""
    lr = float(lr)
    if not (math.isfinite(lr) and lr > 0):
        raise PadistillError(f"eval: the lr must be a positive finite number; got {lr}")
    if len(images) == 0:
        raise PadistillError("eval: the set to train on is empty")
    if len(labels) != len(images):
        raise PadistillError(f"eval: {len(images)} images but {len(labels)} labels")
    if protocol.relabel is not None:  # the SRe2L protocol: teacher relabelling on every crop (evaluate/sre2l.py)
        from padistill.evaluate.sre2l import train_and_test_relabel

        return train_and_test_relabel(model, images, x_test, y_test, protocol, gen=gen, teacher=teacher,
                                      on_epoch=on_epoch)
    device = images.device
    augment = None
    if protocol.augment:
        from padistill.augment import DSA

        augment = DSA()
    if teacher is not None:
        targets = torch.empty(len(images), 1, device=device)  # replaced per batch by the teacher's logits
        loss_fn = kd_loss(protocol.kd_temperature)

        def relabel(xb, _tb):
            return teacher(xb)
    else:
        targets = training_targets(labels.to(device), protocol.soft_labels)
        loss_fn, relabel = label_loss, None
    optimizer = None
    starts = set(optimizer_starts(protocol.epochs))
    for epoch, lr_e in enumerate(lr_schedule(protocol.epochs, lr)):
        if epoch in starts:  # epoch 0 and the decay: a fresh optimiser, momentum restarts from zero
            optimizer = torch.optim.SGD(model.parameters(), lr=lr_e, momentum=protocol.momentum,
                                        weight_decay=protocol.weight_decay)
        stats = train_epoch(model, optimizer, images, targets, protocol.batch, gen, augment=augment,
                            microbatch=protocol.microbatch, loss_fn=loss_fn, relabel=relabel)
        if on_epoch is not None:
            on_epoch(epoch, optimizer, stats)
        if not math.isfinite(stats["loss"]):
            # A diverged network cannot recover; its accuracy is chance level, which we still report.
            break
    return accuracy(model, x_test.to(device), y_test.to(device), batch=protocol.test_batch)


def build_eval_net(net: str, num_classes: int, channels: int, im_size, seed: int, device,
                   options: dict | None = None) -> nn.Module:
    from padistill.nets import build

    return build(net, num_classes=num_classes, channels=channels, im_size=tuple(im_size), seed=seed,
                 **(options or {})).to(device)


# ------------------------------------------------------------------------------------------ n runs


def evaluate(images: torch.Tensor, labels: torch.Tensor, lr, *, net: str, num_classes: int, channels: int,
             im_size, x_test: torch.Tensor, y_test: torch.Tensor, epochs: int = 1000, runs: int = 5,
             batch: int = 128, momentum: float = 0.9, weight_decay: float = 5e-4, augment: bool = True,
             soft_labels: bool = True, seed: int = 0, seed_tag: Sequence = (), device=None,
             microbatch: int | None = 25, test_batch: int = 32, net_options: dict | None = None,
             teacher: Teacher | nn.Module | None = None, kd_temperature: float = 4.0,
             protocol: Protocol | None = None, label: str = "", show_progress: bool = False,
             on_run: Callable | None = None, skip: dict | None = None) -> EvalResult:
    """Train `runs` fresh `net`s on (images, labels) with the protocol; test each once.

    `lr` may be a 0-d tensor (the learned lr). `protocol`, if given, replaces the individual settings.
    `skip`: {run: accuracy} already measured (resuming); `on_run(run, acc)` after each new run.
    Returns accuracies as fractions; `EvalResult.cell()` formats them as the paper's tables do.
    """
    from padistill.utils.progress import progress_bar

    t0 = time.perf_counter()
    p = protocol or Protocol(epochs=epochs, batch=batch, momentum=momentum, weight_decay=weight_decay,
                             augment=augment, soft_labels=soft_labels, kd_temperature=kd_temperature,
                             microbatch=microbatch or None, test_batch=test_batch)
    if runs < 1:
        raise PadistillError(f"eval: runs must be >= 1; got {runs}")
    if len(y_test) == 0:
        raise PadistillError("eval: the test set is empty, so there is no accuracy to report (give the dataset test "
                             "images, e.g. a larger data.options.test_fraction for image folders)")
    lr = float(lr.detach().cpu()) if isinstance(lr, torch.Tensor) else float(lr)
    dev = torch.device(device) if device is not None else images.device
    x = images.detach().to(dev, torch.float32).contiguous()
    y = labels.detach().to(dev)
    xt, yt = x_test.to(dev), y_test.to(dev)
    if isinstance(teacher, nn.Module):
        teacher = Teacher(teacher.to(dev), batch_stats=False)
    accs: dict[int, float] = dict(skip or {})
    todo = [r for r in range(runs) if r not in accs]
    bar = progress_bar(total=len(todo) * (p.epochs + (p.relabel is None)), desc=f"eval {label or 'set'} {net}",
                       disable=not show_progress or not todo, unit="ep", leave=False)
    batch_stats = None
    try:
        for r in todo:
            model = build_eval_net(net, num_classes, channels, im_size, run_seed(seed, seed_tag, net, r), dev,
                                   net_options)
            batch_stats = has_batch_statistics(model)
            g = generator(seed, "eval-train", *seed_tag, net, r)
            acc = train_and_test(model, x, y, lr, xt, yt, p, gen=g, teacher=teacher,
                                 on_epoch=lambda *_: bar.update(1))
            accs[r] = acc
            bar.set_postfix(acc=f"{acc:.2%}", refresh=False)
            if on_run is not None:
                on_run(r, acc)
    finally:
        bar.close()
    settings = {**p.settings(), "lr": lr, "net": net, "net_options": dict(net_options or {}), "seed": seed,
                "seed_tag": [str(t) for t in seed_tag], "images": len(x),
                "labels": _label_kind(y, p.soft_labels, teacher is not None),
                "batch_statistics": batch_stats, "test_images": len(xt)}
    if teacher is not None:
        settings["teacher"] = getattr(teacher, "name", "teacher")
    return EvalResult(net, [accs[r] for r in range(runs)], settings, time.perf_counter() - t0, label)


def _label_kind(y: torch.Tensor, soft: bool, kd: bool) -> str:
    if kd:
        return "teacher (knowledge distillation)"
    if y.is_floating_point():
        return "soft (soft cross-entropy)" if soft else "argmax of soft labels (cross-entropy)"
    return "hard (cross-entropy)"

