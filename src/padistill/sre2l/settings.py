"""SRe2L config checks and the settings that key the squeeze and recover stages."""

from __future__ import annotations

from padistill.config import to_dict
from padistill.errors import PadistillError

SQUEEZE_KEYS = ("squeeze_epochs", "squeeze_lr", "squeeze_momentum", "squeeze_weight_decay", "squeeze_batch",
                "squeeze_warmup", "squeeze_augment")
RECOVER_KEYS = ("iterations", "lr", "bn_weight", "first_bn_weight", "jitter", "jitter_both", "crop", "flip",
                "bn_stats", "storage", "recover_batch")


def recover_ipc(cfg) -> int:
    """Images per class the recover stage synthesises (the budget; eval uses the first distill.ipc)."""
    return cfg.sre2l.recover_ipc if cfg.sre2l.recover_ipc is not None else cfg.distill.ipc


def validate_sre2l(cfg) -> None:
    s, d = cfg.sre2l, cfg.distill
    for k in ("squeeze_epochs", "squeeze_batch", "iterations"):
        if getattr(s, k) < 1:
            raise PadistillError(f"config: 'sre2l.{k}' must be >= 1; got {getattr(s, k)}")
    for k in ("squeeze_warmup", "eval_warmup", "jitter", "bn_weight", "first_bn_weight", "squeeze_weight_decay",
              "eval_weight_decay"):
        if getattr(s, k) < 0:
            raise PadistillError(f"config: 'sre2l.{k}' must be >= 0; got {getattr(s, k)}")
    for k in ("squeeze_lr", "lr", "eval_lr", "temperature", "mixup_alpha"):
        if not getattr(s, k) > 0:
            raise PadistillError(f"config: 'sre2l.{k}' must be > 0; got {getattr(s, k)}")
    if not 0.0 <= s.squeeze_momentum < 1.0:
        raise PadistillError(f"config: 'sre2l.squeeze_momentum' must be in [0, 1); got {s.squeeze_momentum}")
    if s.squeeze_warmup >= s.squeeze_epochs:
        raise PadistillError("config: 'sre2l.squeeze_warmup' must be < 'sre2l.squeeze_epochs'")
    if s.recover_ipc is not None and s.recover_ipc < 1:
        raise PadistillError(f"config: 'sre2l.recover_ipc' must be >= 1 or null; got {s.recover_ipc}")
    if s.recover_batch is not None and s.recover_batch < 1:
        raise PadistillError(f"config: 'sre2l.recover_batch' must be >= 1 or null; got {s.recover_batch}")
    if d.method == "sre2l":
        if d.ipc > recover_ipc(cfg):
            raise PadistillError(f"config: 'distill.ipc' {d.ipc} exceeds 'sre2l.recover_ipc' {recover_ipc(cfg)} "
                                 "(the images recovered per class); raise sre2l.recover_ipc")
        if cfg.data.preprocess not in ("normalize", "none"):
            raise PadistillError(f"config: SRe2L recovers images in a per-channel model space; 'data.preprocess' "
                                 f"must be normalize or none, got {cfg.data.preprocess!r}")
        if s.bn_stats == "subset" and (d.prune.mode == "none" or d.prune.ratio <= 0):
            raise PadistillError("config: 'sre2l.bn_stats' subset re-estimates BN statistics on the FIEX-kept "
                                 "subset, which 'distill.prune.mode' (hard | easy) and 'distill.prune.ratio' > 0 "
                                 "define; set them or use bn_stats teacher")


def squeeze_settings(cfg) -> dict:
    sch = to_dict(cfg.experts.schedule) if cfg.experts.schedule.enabled else {"enabled": False}
    return {"net": to_dict(cfg.net), "squeeze": {k: getattr(cfg.sre2l, k) for k in SQUEEZE_KEYS},
            "schedule": sch}


def recover_settings(cfg) -> dict:
    r = {k: getattr(cfg.sre2l, k) for k in RECOVER_KEYS}
    r["recover_ipc"] = recover_ipc(cfg)
    if cfg.sre2l.bn_stats == "subset":
        r["prune"] = to_dict(cfg.distill.prune)
    return {"net": to_dict(cfg.net), "recover": r, "eval_lr": cfg.sre2l.eval_lr}
