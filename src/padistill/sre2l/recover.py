"""`recover`: synthesise images from the squeezed teacher alone (SRe2L spec §2), an ordinary stage folder.

Input: a resolved config (`sre2l.*`), the prepared data (for the model space, the clip range and, with
`bn_stats: subset`, the real images), a finished squeeze folder and, for `bn_stats: subset`, a scores folder.
Output folder, a distilled-set folder in the usual format (artifacts.py) plus the per-index pieces:
    ipc_XXXX.pt     IPC index i: {'images' [C, ch, H, W] model space, 'history' [records]}; one file per index
    images.pt       float32 [C*R, ch, H, W], class-contiguous (rows c*R..(c+1)*R-1 are class c, index order),
                    R = sre2l.recover_ipc; the evaluation uses the first distill.ipc of each class (nested sets)
    labels.pt       int64 hard labels; lr.pt (sre2l.eval_lr); preprocess.pt; grid.png
    metrics.jsonl   {index, it, loss, ce, bn, lr} records; manifest.json, config.yaml

For every IPC index i (an independent run: its own noise, optimiser and generator derived from (seed, i)), a
batch holds one image per class (targets 0..C-1; `recover_batch` splits the classes into independent chunks).
Images live in model space, start from N(0, 1) and are optimised by Adam (betas 0.5 / 0.9, eps 1e-8) with lr
lr0 * (1 + cos(pi t / T)) / 2 set before step t, on
    L = CE(f(jit(x)), y) + alpha * sum_l w_l (||sigma^2_l - RV_l||_2 + ||mu_l - RM_l||_2)
where mu_l, sigma^2_l are the per-channel mean and biased variance of BN layer l's input over (N, H, W), RM/RV its
running statistics (or, with `bn_stats: subset`, statistics re-estimated on the FIEX-kept real subset), w = 10
on the first BN layer and 1 elsewhere. The teacher is frozen, in eval mode. jit = circular roll by offsets in
{0..jitter} (CIFAR; {-jitter..jitter} with jitter_both), after an optional random-resized crop and flip drawn
once per batch (Tiny). After every step pixels are clamped to the model-space image of [0, 1].

Resume: each finished index is one atomic file, so a killed run redoes only the index in progress; every index
depends only on (seed, i), so the result is the same bytes as an uninterrupted run. A non-finite loss stops the
stage with a one-line error and writes nothing for that index.
"""

from __future__ import annotations

import copy
import json
import math
import re
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from padistill.config import Config, dump_yaml
from padistill.errors import PadistillError
from padistill.utils.io import atomic_save, atomic_write_text, load_tensors, require_tensor
from padistill.utils.manifest import StageDir, require_complete
from padistill.utils.progress import progress_bar
from padistill.utils.rng import generator

METRICS = "metrics.jsonl"
INDEX_RE = re.compile(r"ipc_(\d{4})\.pt")


def index_path(out: Path, i: int) -> Path:
    return out / f"ipc_{i:04d}.pt"


# ------------------------------------------------------------------------------------------ the loss


class BNStatistics:
    """Forward hooks on every BN layer of `model` recording r_l = ||var - RV||_2 + ||mean - RM||_2 of its input.

    `targets`: [(running mean, running var)] per layer (default: each layer's own buffers). Use as a context
    manager so the hooks are removed even when the loss fails."""

    def __init__(self, model: nn.Module, targets: list[tuple[torch.Tensor, torch.Tensor]] | None = None):
        from padistill.sre2l.squeeze import bn_layers

        self.layers = bn_layers(model)
        self.targets = targets if targets is not None else [(m.running_mean, m.running_var) for m in self.layers]
        if len(self.targets) != len(self.layers):
            raise PadistillError(f"recover: {len(self.targets)} BN targets for {len(self.layers)} BN layers")
        self.values: list[torch.Tensor | None] = [None] * len(self.layers)
        self._handles = [m.register_forward_hook(self._hook(i)) for i, m in enumerate(self.layers)]

    def _hook(self, i: int):
        def hook(_module, inputs, _output):
            x = inputs[0]
            dims = [d for d in range(x.ndim) if d != 1]
            mean = x.mean(dim=dims)
            var = x.var(dim=dims, unbiased=False)
            rm, rv = self.targets[i]
            self.values[i] = torch.linalg.vector_norm(var - rv) + torch.linalg.vector_norm(mean - rm)

        return hook

    def loss(self, first_weight: float = 10.0) -> torch.Tensor:
        """sum_l w_l r_l with w = first_weight on the first BN layer (module order: the stem) and 1 elsewhere."""
        if any(v is None for v in self.values):
            raise PadistillError("recover: a BN layer was not reached by the forward pass")
        return sum((first_weight if i == 0 else 1.0) * v for i, v in enumerate(self.values))

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def __enter__(self) -> BNStatistics:
        return self

    def __exit__(self, *exc) -> None:
        self.remove()


def recover_lr(t: int, iterations: int, lr0: float) -> float:
    """The Adam lr before step t (0-based): lr0 * (1 + cos(pi t / T)) / 2 (no warm-up)."""
    return lr0 * 0.5 * (1.0 + math.cos(math.pi * t / iterations))


def clip_range(pre, shape, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-pixel model-space bounds of images in [0, 1] (normalize: -m/s and (1-m)/s per channel)."""
    lo = pre.pre(torch.zeros(1, *shape, device=device))
    hi = pre.pre(torch.ones(1, *shape, device=device))
    return torch.minimum(lo, hi), torch.maximum(lo, hi)


def jitter(x: torch.Tensor, g: torch.Generator, s) -> torch.Tensor:
    """The recover augmentation of one step, drawn from `g`: random-resized crop and flip (whole batch; when
    enabled), then a circular roll by (o1, o2) in {0..jitter} ({-jitter..jitter} with jitter_both)."""
    h, w = x.shape[-2:]
    if s.crop:  # RandomResizedCrop(size), torchvision's default scale (0.08, 1) and ratio (3/4, 4/3), bilinear
        area = h * w
        for _ in range(10):
            u = torch.rand(2, generator=g)
            target = area * (0.08 + (1.0 - 0.08) * float(u[0]))
            ratio = math.exp(math.log(3 / 4) + (math.log(4 / 3) - math.log(3 / 4)) * float(u[1]))
            cw, ch = int(round(math.sqrt(target * ratio))), int(round(math.sqrt(target / ratio)))
            if 0 < cw <= w and 0 < ch <= h:
                top = int(torch.randint(0, h - ch + 1, (1,), generator=g))
                left = int(torch.randint(0, w - cw + 1, (1,), generator=g))
                x = F.interpolate(x[..., top:top + ch, left:left + cw], size=(h, w), mode="bilinear",
                                  align_corners=False)
                break
    if s.flip and bool(torch.rand(1, generator=g) < 0.5):
        x = x.flip(3)
    if s.jitter > 0:
        low = -s.jitter if s.jitter_both else 0
        o1, o2 = (int(v) for v in torch.randint(low, s.jitter + 1, (2,), generator=g))
        x = torch.roll(x, shifts=(o1, o2), dims=(2, 3))
    return x


# ------------------------------------------------------------------------------------------ BN targets


@torch.no_grad()
def subset_bn_targets(model: nn.Module, x: torch.Tensor, indices: torch.Tensor, batch: int = 256):
    """BN statistics re-estimated on the real images `x[indices]`: a copy of the teacher, its running statistics
    reset, momentum None (a cumulative average over batches), forwarded in train mode without augmentation and
    without weight updates. Returns [(mean, var)] per BN layer (module order)."""
    from padistill.sre2l.squeeze import bn_layers

    m = copy.deepcopy(model)
    for layer in bn_layers(m):
        layer.reset_running_stats()
        layer.momentum = None
    m.train()
    for part in indices.split(batch):
        if len(part) > 1:  # batch statistics of one image are degenerate
            m(x[part.to(x.device)])
    return [(layer.running_mean.clone(), layer.running_var.clone()) for layer in bn_layers(m)]


# ------------------------------------------------------------------------------------------ one index


def recover_index(teacher: nn.Module, targets, cfg: Config, i: int, num_classes: int, shape, lo, hi,
                  device, log_every: int, bar=None) -> tuple[torch.Tensor, list[dict]]:
    """Images [C, *shape] of IPC index i (model space, clamped) and their loss records."""
    s = cfg.sre2l
    g = generator(cfg.seed, "recover", i)
    chunk = s.recover_batch or num_classes
    out, history = [], []
    for c0 in range(0, num_classes, chunk):
        classes = torch.arange(c0, min(c0 + chunk, num_classes))
        x = torch.randn(len(classes), *shape, generator=g).to(device).requires_grad_(True)
        y = classes.to(device)
        opt = torch.optim.Adam([x], lr=s.lr, betas=(0.5, 0.9), eps=1e-8)
        with BNStatistics(teacher, targets) as bn:
            for t in range(s.iterations):
                lr = recover_lr(t, s.iterations, s.lr)
                for group in opt.param_groups:
                    group["lr"] = lr
                opt.zero_grad(set_to_none=True)
                ce = F.cross_entropy(teacher(jitter(x, g, s)), y)
                bn_term = bn.loss(s.first_bn_weight)
                loss = ce + s.bn_weight * bn_term
                values = {"loss": float(loss.detach()), "ce": float(ce.detach()), "bn": float(bn_term.detach())}
                if not math.isfinite(values["loss"]):
                    raise PadistillError(f"recover: the loss became non-finite at IPC index {i}, iteration {t + 1} "
                                         f"(ce {values['ce']:.4g}, bn {values['bn']:.4g}); nothing was written for "
                                         "this index; lower sre2l.lr or sre2l.bn_weight")
                loss.backward()
                opt.step()
                with torch.no_grad():
                    x.copy_(torch.maximum(torch.minimum(x, hi), lo))
                if t == 0 or (t + 1) % log_every == 0 or t + 1 == s.iterations:
                    history.append({"index": i, "classes": [int(classes[0]), int(classes[-1])], "it": t + 1,
                                    **values, "lr": lr})
                if bar is not None:
                    bar.update(1)
        out.append(x.detach())
    return torch.cat(out), history


def _to_storage(x: torch.Tensor, pre, mode: str) -> torch.Tensor:
    """uint8: pixels x*s+m clamped to [0, 1], * 255, truncated (as the published JPEG writer; no JPEG loss)."""
    if mode == "float":
        return x
    pix = (pre.inverse(x).clamp(0.0, 1.0) * 255.0).floor()
    return pre.pre(pix.to(torch.uint8))


# ------------------------------------------------------------------------------------------ the stage


def run_recover(cfg: Config, prepared, out_dir: str | Path, squeeze_dir: str | Path,
                scores_dir: str | Path | None = None, overwrite: bool = False, log=print,
                show_progress: bool = True) -> Path:
    """Recover (or resume, or reuse) `sre2l.recover_ipc` images per class into `out_dir`; returns it."""
    from padistill.artifacts import save_distilled, save_grid
    from padistill.sre2l.settings import recover_ipc, recover_settings
    from padistill.sre2l.squeeze import load_squeezed
    from padistill.training import accuracy

    out = Path(out_dir)
    s = cfg.sre2l
    R, C = recover_ipc(cfg), prepared.num_classes
    shape = (prepared.channels, *prepared.image_size)
    if prepared.pre.kind not in ("normalize", "none"):
        raise PadistillError(f"recover: the data are prepared as '{prepared.pre.kind}'; SRe2L needs "
                             "data.preprocess normalize or none (a per-channel model space to clip in)")
    teacher, info = load_squeezed(squeeze_dir, prepared, cfg)
    inputs = {"data": prepared.fingerprint(), "squeeze": info["key"]}
    targets = None
    if s.bn_stats == "subset":
        if scores_dir is None:
            raise PadistillError("recover: sre2l.bn_stats=subset needs a scores folder (the difficulty ordering "
                                 "that defines the kept subset)")
        from padistill.filters.schedule import prune_ordering
        from padistill.scores.ordering import load_scores_ordering

        kept = prune_ordering(load_scores_ordering(scores_dir, prepared), cfg.distill.prune.mode,
                              cfg.distill.prune.ratio)
        inputs["scores"] = require_complete(scores_dir, "scores")["key"]
        targets = subset_bn_targets(teacher, prepared.x_train, kept.reshape(-1))
        log(f"recover: BN targets re-estimated on the FIEX-kept subset ({kept.shape[1]} of each class, "
            f"{cfg.distill.prune.mode} {cfg.distill.prune.ratio:.0%} removed)")
    stage = StageDir(out, "recover", recover_settings(cfg), inputs, cfg.seed, dump_yaml(cfg))
    state = stage.begin(overwrite=overwrite)
    if state == "complete":
        log(f"recover: {out} is complete (same settings and inputs); reusing it")
        return out
    if state == "missing":  # a new run (or --overwrite): never keep another run's indices
        for p in out.iterdir():
            if INDEX_RE.fullmatch(p.name) or p.name == METRICS:
                p.unlink()
    t0 = time.perf_counter()
    lo, hi = clip_range(prepared.pre, shape, prepared.device)
    todo = [i for i in range(R) if not index_path(out, i).is_file()]
    if len(todo) < R:
        log(f"recover: {R - len(todo)} of {R} IPC indices already finished in {out}")
    log(f"recover: {R} image(s) per class x {C} classes, {s.iterations} iterations each, teacher "
        f"{info['path']}")
    log_every = max(1, s.iterations // 100)
    bar = progress_bar(total=R * s.iterations * math.ceil(C / (s.recover_batch or C)), desc="recover",
                       initial=(R - len(todo)) * s.iterations * math.ceil(C / (s.recover_batch or C)),
                       disable=not show_progress, unit="it")
    for i in todo:
        images, history = recover_index(teacher, targets, cfg, i, C, shape, lo, hi, prepared.device, log_every, bar)
        images = _to_storage(images, prepared.pre, s.storage)
        atomic_save({"images": images.cpu().contiguous(), "history": history}, index_path(out, i))
        with open(out / METRICS, "a", encoding="utf-8") as f:
            f.write("".join(json.dumps(r) + "\n" for r in history))
        last = history[-1]
        bar.set_postfix(index=i, ce=f"{last['ce']:.3f}", bn=f"{last['bn']:.3f}", refresh=False)
    bar.close()
    pieces, history = [], []
    for i in range(R):
        obj = load_tensors(index_path(out, i), "recovered images")
        where = str(index_path(out, i))
        if not isinstance(obj, dict) or "images" not in obj:
            raise PadistillError(f"{where}: expected {{'images', 'history'}}; delete it to recover index {i} again")
        pieces.append(require_tensor(obj["images"], where, dtype=torch.float32, shape=(C, *shape)))
        history += list(obj.get("history", []))
    images = torch.stack(pieces, dim=1).reshape(C * R, *shape)  # class-contiguous, index order within a class
    labels = torch.arange(C).repeat_interleave(R)
    names = save_distilled(out, images, labels, torch.tensor(s.eval_lr), prepared.pre)
    save_grid(prepared.pre.inverse(images.to(prepared.device)), out / "grid.png", nrow=R)
    atomic_write_text(out / METRICS, "".join(json.dumps(r) + "\n" for r in history))
    acc = accuracy(teacher, images.to(prepared.device), labels.to(prepared.device))
    first = [r for r in history if r["it"] == 1]
    final = [r for r in history if r["it"] == s.iterations]
    summary = {key: {"first": sum(r[key] for r in first) / len(first), "last": sum(r[key] for r in final) / len(final)}
               for key in ("ce", "bn")}
    seconds = time.perf_counter() - t0
    stage.complete(names + ["grid.png"], recover_ipc=R, teacher_acc_on_recovered=acc, loss=summary,
                   seconds=round(seconds, 2))
    log(f"recover: {C * R} images in {out} ({seconds:.0f}s); mean CE {summary['ce']['first']:.3f} -> "
        f"{summary['ce']['last']:.3f}, BN {summary['bn']['first']:.3f} -> {summary['bn']['last']:.3f}; the "
        f"teacher classifies {acc:.1%} of them (un-jittered) as their class")
    return out
