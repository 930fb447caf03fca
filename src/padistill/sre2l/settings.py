"""The settings that key the squeeze and recover stages (the `sre2l:` config checks live in config.py)."""

from __future__ import annotations

from padistill.config import to_dict
from padistill.filters.schedule import schedule_settings

SQUEEZE_KEYS = ("squeeze_epochs", "squeeze_lr", "squeeze_momentum", "squeeze_weight_decay", "squeeze_batch",
                "squeeze_warmup", "squeeze_augment")
RECOVER_KEYS = ("iterations", "lr", "bn_weight", "first_bn_weight", "jitter", "jitter_both", "crop", "flip",
                "bn_stats", "storage", "recover_batch")


def recover_ipc(cfg) -> int:
    """Images per class the recover stage synthesises (the budget; eval uses the first distill.ipc)."""
    return cfg.sre2l.recover_ipc if cfg.sre2l.recover_ipc is not None else cfg.distill.ipc


def squeeze_settings(cfg) -> dict:
    sch = schedule_settings(cfg.experts.schedule)
    return {"net": to_dict(cfg.net), "squeeze": {k: getattr(cfg.sre2l, k) for k in SQUEEZE_KEYS},
            "schedule": sch}


def recover_settings(cfg) -> dict:
    r = {k: getattr(cfg.sre2l, k) for k in RECOVER_KEYS}
    r["recover_ipc"] = recover_ipc(cfg)
    if cfg.sre2l.bn_stats == "subset":
        r["prune"] = to_dict(cfg.distill.prune)
    return {"net": to_dict(cfg.net), "recover": r, "eval_lr": cfg.sre2l.eval_lr}
