"""Where distillation metrics go: `metrics.jsonl` always, TensorBoard and wandb only when asked for.

Input: records (flat dicts with an integer "it" and numbers, lists of numbers or strings).
Output: one JSON line per record in `metrics.jsonl` (flushed: nothing lost on a crash), plus, for each
name in `distill.loggers`, the numeric fields mirrored to TensorBoard (`<out>/tensorboard/`) or to a
wandb run (offline unless the user has configured wandb). Lists and dicts (per-layer losses) become
`<key>/<index or name>` scalars. Neither package is a dependency: `pip install 'padistill[tensorboard]'` or
`'padistill[wandb]'`; asking for one that is not installed is a one-line error before any work starts.
"""

from __future__ import annotations

import json
import numbers
from pathlib import Path

from padistill.errors import PadistillError

LOGGERS = ("tensorboard", "wandb")


def scalars(rec: dict) -> dict[str, float]:
    """The numeric fields of a record, lists/dicts flattened to key/index (bools and strings dropped)."""
    out: dict[str, float] = {}
    for k, v in rec.items():
        if k == "it" or isinstance(v, bool):
            continue
        if isinstance(v, numbers.Real):
            out[k] = float(v)
        elif isinstance(v, (list, tuple, dict)):
            items = v.items() if isinstance(v, dict) else enumerate(v)
            for i, x in items:
                if isinstance(x, numbers.Real) and not isinstance(x, bool):
                    out[f"{k}/{i}"] = float(x)
    return out


class _TensorBoard:
    def __init__(self, out: Path, name: str, config: dict):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise PadistillError("distill.loggers: 'tensorboard' needs the tensorboard package; "
                                 "pip install 'padistill[tensorboard]'") from None
        self.w = SummaryWriter(log_dir=str(out / "tensorboard"))

    def write(self, step: int, values: dict[str, float]) -> None:
        for k, v in values.items():
            self.w.add_scalar(k, v, step)

    def close(self) -> None:
        self.w.close()


class _Wandb:
    def __init__(self, out: Path, name: str, config: dict):
        try:
            import wandb
        except ImportError:
            raise PadistillError("distill.loggers: 'wandb' needs the wandb package; pip install 'padistill[wandb]'") \
                from None
        self.wandb = wandb
        # resume="allow" with a stable id: a resumed distillation continues the same wandb run
        self.run = wandb.init(project="padistill", name=name, id=_run_id(out), resume="allow", config=config,
                              dir=str(out))

    def write(self, step: int, values: dict[str, float]) -> None:
        self.run.log(values, step=step)

    def close(self) -> None:
        self.run.finish()


def _run_id(out: Path) -> str:
    import hashlib

    return hashlib.sha256(str(out.resolve()).encode()).hexdigest()[:16]


_BACKENDS = {"tensorboard": _TensorBoard, "wandb": _Wandb}


class MetricsLog:
    """metrics.jsonl plus the optional mirrors; `write(rec)` after every iteration, `close()` at the end."""

    def __init__(self, path: str | Path, loggers=(), name: str = "", config: dict | None = None):
        path = Path(path)
        unknown = [n for n in loggers if n not in LOGGERS]
        if unknown:
            raise PadistillError(f"distill.loggers: unknown logger {unknown[0]!r}; choose from {', '.join(LOGGERS)}")
        self.sinks = [_BACKENDS[n](path.parent, name, config or {}) for n in loggers]
        self.f = open(path, "a", encoding="utf-8")

    def write(self, rec: dict) -> None:
        self.f.write(json.dumps(rec) + "\n")
        self.f.flush()
        if self.sinks:
            values = scalars(rec)
            for s in self.sinks:
                s.write(int(rec.get("it", 0)), values)

    def close(self) -> None:
        self.f.close()
        for s in self.sinks:
            s.close()
