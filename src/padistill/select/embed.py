"""The selection network of the coreset baselines: one stage folder, trained once and reused by every method.

Input: a resolved config (`select` section: net, epochs, lr, momentum, nesterov, weight_decay, batch) and the
prepared data (validation held out when data.val_per_class > 0).
Output folder (stage 'select-embed'):
    features.pt      float32 [N, d]  embeddings (the input of the last linear layer) of the training split, eval mode
    logits.pt        float32 [N, C]  logits of the training split, eval mode
    forgetting.pt    int64 [N]       forgetting events counted at every minibatch forward during training
    learned.pt       bool [N]        classified correctly at least once during training
    val_features.pt, val_logits.pt   the same for the validation split (when there is one; glister needs it)
    model.pt         the trained network's state_dict
    manifest.json, config.yaml
    checkpoint.pt    while training (model, optimiser, data order, forgetting counts after each epoch): an
                     interrupted run resumes from its last finished epoch and ends with the same bytes
Training (coreset spec §1, DeepCore's defaults): from scratch on the whole training split, SGD with a constant lr
(Nesterov momentum, weight decay), a fresh random order every epoch, no augmentation, through the shared
`training.train_epoch`. The network is `select.net` (default: the config's net); Table 2 presets use ResNet-18-BN.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from padistill.config import Config, dump_yaml
from padistill.errors import PadistillError
from padistill.select.methods import MinibatchForgetting
from padistill.utils.io import atomic_save, load_tensors, require_tensor
from padistill.utils.manifest import StageDir, require_complete
from padistill.utils.progress import progress_bar
from padistill.utils.rng import derive_seed, generator

STAGE = "select-embed"
OUTPUTS = ("features.pt", "logits.pt", "forgetting.pt", "learned.pt", "model.pt")
VAL_OUTPUTS = ("val_features.pt", "val_logits.pt")
CHECKPOINT = "checkpoint.pt"


def selection_net(cfg: Config) -> tuple[str, dict]:
    s = cfg.select
    if s.net is None or s.net == cfg.net.name:
        return cfg.net.name, dict(cfg.net.options) if s.net is None else dict(s.net_options)
    return s.net, dict(s.net_options)


def embed_settings(cfg: Config) -> dict:
    s = cfg.select
    name, options = selection_net(cfg)
    return {"net": {"name": name, "options": options}, "epochs": s.epochs, "lr": s.lr, "momentum": s.momentum,
            "nesterov": s.nesterov, "weight_decay": s.weight_decay, "batch": s.batch,
            "microbatch": cfg.experts.microbatch}  # micro-batching changes the float rounding of the gradients


@torch.no_grad()
def embed_and_logits(model, x: torch.Tensor, batch: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
    """(embeddings, logits) of `x` in eval mode; refuses a net whose embed(x) is not its classifier's input."""
    from padistill.scores.scorers import _last_linear
    from padistill.training import chunks

    head = _last_linear(model)
    if getattr(model, "embed", None) is None or head is None:
        raise PadistillError(f"select.net: {type(model).__name__} exposes no embed(x) + final Linear layer; "
                             "choose another select.net")
    was = model.training
    model.eval()
    hs, zs = [], []
    for a, b in chunks(len(x), batch):
        h = model.embed(x[a:b]).flatten(1)
        z = head(h)
        if a == 0 and not torch.allclose(z[:8], model(x[:min(8, b)]), rtol=1e-4, atol=1e-5):
            raise PadistillError(f"select.net: {type(model).__name__}.embed(x) is not the input of its last "
                                 "Linear layer; choose another select.net")
        hs.append(h.float().cpu())
        zs.append(z.float().cpu())
    model.train(was)
    d = model.classifier.in_features if hasattr(model, "classifier") else 0
    if not hs:
        return torch.zeros(0, d), torch.zeros(0, head.out_features)
    return torch.cat(hs).contiguous(), torch.cat(zs).contiguous()


def run_embed(cfg: Config, prepared, out_dir: str | Path, overwrite: bool = False, log=print,
              show_progress: bool = True) -> Path:
    """Train (or reuse, or resume) the selection network in `out_dir`; returns the folder."""
    from padistill.context import build_net
    from padistill.losses import label_loss
    from padistill.training import accuracy, train_epoch
    from padistill.utils.allocator import tune_cpu_allocator

    out = Path(out_dir)
    s = cfg.select
    stage = StageDir(out, STAGE, embed_settings(cfg), {"data": prepared.fingerprint()}, cfg.seed, dump_yaml(cfg))
    state = stage.begin(overwrite=overwrite)
    if state == "complete":
        log(f"select: selection net {out} is complete (same data, net and seed); reusing it")
        return out
    if prepared.device.type == "cpu":
        tune_cpu_allocator()
    t0 = time.perf_counter()
    name, options = selection_net(cfg)
    model = build_net(prepared, name=name, seed=derive_seed(cfg.seed, "select", "init"), options=options)
    opt = torch.optim.SGD(model.parameters(), lr=s.lr, momentum=s.momentum, nesterov=s.nesterov and s.momentum > 0,
                          weight_decay=s.weight_decay)
    g = generator(cfg.seed, "select", "data")
    x, y = prepared.x_train, prepared.y_train
    tracker = MinibatchForgetting(len(y))
    start = 0
    ckpt = out / CHECKPOINT
    if ckpt.is_file():
        start = _resume(ckpt, model, opt, g, tracker, s.epochs)
        log(f"select: resuming the selection net at epoch {start}/{s.epochs}")
    outcomes: list[torch.Tensor] = []

    def loss_fn(logits, targets, reduction="sum"):  # records each sample's outcome at its training forward
        outcomes.append((logits.detach().argmax(1) == targets).cpu())
        return label_loss(logits, targets, reduction=reduction)

    def on_batch(rows):
        tracker.update(rows, torch.cat(outcomes)[:len(rows)])
        outcomes.clear()

    bar = progress_bar(range(start, s.epochs), desc="selection net", initial=start, total=s.epochs, unit="epoch",
                       disable=not show_progress)
    stats = {"loss": float("nan"), "acc": float("nan")}
    for epoch in bar:
        stats = train_epoch(model, opt, x, y, s.batch, g, augment=None, microbatch=cfg.experts.microbatch,
                            loss_fn=loss_fn, on_batch=on_batch)
        bar.set_postfix(loss=f"{stats['loss']:.3f}", acc=f"{stats['acc']:.3f}", refresh=False)
        atomic_save({"epoch": epoch + 1, "model": model.state_dict(), "opt": opt.state_dict(),
                     "generator": g.get_state(), "forgetting": tracker.state_dict()}, ckpt)
    bar.close()
    feats, logits = embed_and_logits(model, x)
    atomic_save(feats, out / "features.pt")
    atomic_save(logits, out / "logits.pt")
    atomic_save(tracker.events.clone(), out / "forgetting.pt")
    atomic_save(tracker.learned.clone(), out / "learned.pt")
    atomic_save({k: v.detach().cpu() for k, v in model.state_dict().items()}, out / "model.pt")
    outputs = list(OUTPUTS)
    if prepared.x_val is not None:
        vf, vl = embed_and_logits(model, prepared.x_val)
        atomic_save(vf, out / "val_features.pt")
        atomic_save(vl, out / "val_logits.pt")
        outputs += list(VAL_OUTPUTS)
    train_acc = float((logits.argmax(1) == y.cpu()).float().mean())
    test_acc = accuracy(model, prepared.x_test, prepared.y_test)
    seconds = round(time.perf_counter() - t0, 1)
    stage.complete(outputs, seconds=seconds, train_acc=train_acc, test_acc=test_acc, last_epoch_loss=stats["loss"],
                   never_learned=int((~tracker.learned).sum()), embedding_dim=int(feats.shape[1]))
    ckpt.unlink(missing_ok=True)
    log(f"select: selection net {name} trained {s.epochs} epochs in {seconds:.0f}s: train acc {train_acc:.4f}, "
        f"test acc {test_acc:.4f}, {int((~tracker.learned).sum())} samples never learned -> {out}")
    return out


def _resume(path: Path, model, opt, g: torch.Generator, tracker: MinibatchForgetting, epochs: int) -> int:
    ck = load_tensors(path, "selection-net checkpoint")
    try:
        epoch = ck["epoch"]
        if not isinstance(epoch, int) or not 0 < epoch <= epochs:
            raise ValueError(f"epoch: expected 1..{epochs}, found {epoch!r}")
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["opt"])
        g.set_state(require_tensor(ck["generator"], "generator", dtype=torch.uint8))
        tracker.load_state_dict(ck["forgetting"])
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        msg = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
        raise PadistillError(f"{path}: unusable checkpoint ({msg}); delete it to retrain the selection net") from None
    return epoch


def load_embed(folder: str | Path, prepared, need_val: bool = False) -> dict:
    """The outputs of a finished selection-net folder, validated against the prepared data."""
    folder = Path(folder)
    m = require_complete(folder, STAGE, verify=OUTPUTS + VAL_OUTPUTS)
    if m.get("inputs", {}).get("data") != prepared.fingerprint():
        raise PadistillError(f"{folder}: the selection net was trained on other data (or another validation "
                             "hold-out / preprocessing) than this run's")
    n, C = len(prepared.y_train), prepared.num_classes
    out = {}
    for name, dtype, shape in (("features", torch.float32, None), ("logits", torch.float32, (n, C)),
                               ("forgetting", torch.int64, (n,)), ("learned", torch.bool, (n,))):
        t = require_tensor(load_tensors(folder / f"{name}.pt", f"selection-net {name}"), str(folder / f"{name}.pt"),
                           dtype=dtype, shape=shape)
        out[name] = t
    if out["features"].ndim != 2 or out["features"].shape[0] != n:
        raise PadistillError(f"{folder / 'features.pt'}: expected [{n}, d], found {list(out['features'].shape)}")
    if need_val:
        m_val = 0 if prepared.y_val is None else len(prepared.y_val)
        for name in ("val_features", "val_logits"):
            path = folder / f"{name}.pt"
            if not path.is_file():
                raise PadistillError(f"{path}: not found (the selection net had no validation split)")
            t = require_tensor(load_tensors(path, f"selection-net {name}"), str(path), dtype=torch.float32, ndim=2)
            if t.shape[0] != m_val:
                raise PadistillError(f"{path}: {t.shape[0]} rows, the validation split has {m_val}")
            out[name] = t
    for name, t in out.items():
        if t.is_floating_point() and not torch.isfinite(t).all():
            raise PadistillError(f"{folder / (name + '.pt')}: contains NaN or Inf")
    return out
