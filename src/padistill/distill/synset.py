"""The learnable synthetic set: images, label logits, student lr, their optimisers (spec §3.4, §3.5).

Optimisers follow the reference: SGD on pixels (lr_images, momentum 0.5), SGD on label logits
(lr_labels, momentum 0.9), SGD on the student lr (lr_lr, momentum 0.5); no weight decay.
`apply(grads)` performs one update; under torch.distributed the gradients of all ranks that produced
a valid update are averaged first, so every rank applies the identical step.
The learned lr cannot silently go negative: an update that would take it below `LR_FLOOR` is
undone (the lr keeps its previous value, floored at LR_FLOOR) and counted in `lr_clamped`, which the
loop writes to metrics.jsonl.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from padistill.utils.io import require_keys, require_tensor

LR_FLOOR = 1e-8


class SyntheticSet:
    def __init__(self, images: torch.Tensor, labels: torch.Tensor, syn_lr: float, num_classes: int, d):
        self.num_classes = num_classes
        self.ipc = images.shape[0] // num_classes
        self.images = images.detach().clone().contiguous().requires_grad_(True)
        self.learn_labels = bool(d.learn_labels) and labels.is_floating_point()
        self.labels = labels.detach().clone().requires_grad_(self.learn_labels)
        self.learn_lr = bool(d.learn_lr)
        self.syn_lr = torch.tensor(float(syn_lr), device=images.device).requires_grad_(self.learn_lr)
        self.opt = {"images": torch.optim.SGD([self.images], lr=d.lr_images, momentum=d.momentum_images)}
        if self.learn_labels:
            self.opt["labels"] = torch.optim.SGD([self.labels], lr=d.lr_labels, momentum=d.momentum_labels)
        if self.learn_lr:
            self.opt["lr"] = torch.optim.SGD([self.syn_lr], lr=d.lr_lr, momentum=d.momentum_lr)
        self.lr_clamped = 0

    @property
    def tensors(self) -> dict[str, torch.Tensor]:
        return {"images": self.images, "labels": self.labels, "lr": self.syn_lr}

    def class_of_rows(self) -> torch.Tensor:
        return torch.arange(self.num_classes, device=self.images.device).repeat_interleave(self.ipc)

    def _reduce(self, grads: dict[str, torch.Tensor] | None) -> dict[str, torch.Tensor] | None:
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return grads
        names = list(self.opt)
        valid = grads is not None and all(torch.isfinite(grads[n]).all() for n in names if n in grads)
        count = torch.tensor([1.0 if valid else 0.0], device=self.images.device)
        bufs = [grads[n].detach().clone() if valid and n in grads else torch.zeros_like(self.tensors[n])
                for n in names]
        dist.all_reduce(count)
        for b in bufs:
            dist.all_reduce(b)
        if float(count) == 0:
            return None
        return {n: b / count for n, b in zip(names, bufs)}

    def apply(self, grads: dict[str, torch.Tensor] | None) -> str:
        """Apply one update. Returns 'applied', 'skipped' (no gradient) or 'nonfinite'."""
        grads = self._reduce(grads)
        if grads is None:
            return "skipped"
        if not all(torch.isfinite(g).all() for g in grads.values()):
            return "nonfinite"
        for name, opt in self.opt.items():
            opt.zero_grad(set_to_none=True)
            t = self.tensors[name]
            g = grads.get(name)
            t.grad = None if g is None else g.detach().to(t.dtype).reshape(t.shape).clone()
        prev_lr = float(self.syn_lr.detach())
        for opt in self.opt.values():
            opt.step()
        if self.learn_lr and not float(self.syn_lr.detach()) >= LR_FLOOR:
            with torch.no_grad():
                self.syn_lr.fill_(max(prev_lr, LR_FLOOR))
            self.lr_clamped += 1
        return "applied"

    def state_dict(self) -> dict:
        return {"images": self.images.detach().cpu().clone(), "labels": self.labels.detach().cpu().clone(),
                "syn_lr": self.syn_lr.detach().cpu().clone(), "lr_clamped": self.lr_clamped,
                "opt": {k: o.state_dict() for k, o in self.opt.items()}}

    def load_state_dict(self, state: dict) -> None:
        """Restore a `state_dict()`. It must fit this set (shapes, dtypes, optimisers, the config's optimiser
        settings) and hold finite values; otherwise ValueError (or PadistillError) / KeyError / TypeError naming
        the field."""
        require_keys(state, ("images", "labels", "syn_lr", "lr_clamped", "opt"), "synset")
        for name, t in (("images", self.images), ("labels", self.labels), ("syn_lr", self.syn_lr)):
            v = require_tensor(state[name], f"synset.{name}", dtype=t.dtype, shape=tuple(t.shape))
            if v.is_floating_point() and not torch.isfinite(v).all():
                raise ValueError(f"synset.{name}: contains NaN or Inf")
        if not self.labels.is_floating_point() and not torch.equal(state["labels"], self.class_of_rows().cpu()):
            raise ValueError("synset.labels: hard labels must be the class index of each row (class-major)")
        if not float(state["syn_lr"]) > 0:
            raise ValueError(f"synset.syn_lr: expected a positive learning rate, found {float(state['syn_lr'])}")
        clamped = state["lr_clamped"]
        if isinstance(clamped, bool) or not isinstance(clamped, int) or clamped < 0:
            raise ValueError(f"synset.lr_clamped: expected a non-negative integer, found {clamped!r}")
        require_keys(state["opt"], tuple(self.opt), "synset.opt")
        with torch.no_grad():
            self.images.copy_(state["images"])
            self.labels.copy_(state["labels"])
            self.syn_lr.copy_(state["syn_lr"])
        self.lr_clamped = clamped
        for k, o in self.opt.items():
            where = f"synset.opt.{k}"
            ours = [{h: v for h, v in g.items() if h != "params"} for g in o.param_groups]
            require_keys(state["opt"][k], ("state", "param_groups"), where)
            o.load_state_dict(state["opt"][k])  # ValueError if the parameter groups do not fit
            for g, mine in zip(o.param_groups, ours):
                diff = [h for h, v in mine.items() if g.get(h) != v]
                if diff:
                    raise ValueError(f"{where}: {', '.join(f'{h}={g.get(h)!r}' for h in diff)} differ from the "
                                     f"config's {', '.join(f'{h}={mine[h]!r}' for h in diff)}")
                for t in g["params"]:
                    buf = o.state.get(t, {}).get("momentum_buffer")
                    if buf is not None and not torch.isfinite(require_tensor(
                            buf, f"{where}: momentum buffer", dtype=t.dtype, shape=tuple(t.shape))).all():
                        raise ValueError(f"{where}: momentum buffer contains NaN or Inf")
