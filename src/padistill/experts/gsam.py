"""GSAM: the flat-trajectory optimiser the PAD / DATM experts are really trained with (spec §0.1, §1.2).

Input: model parameters, base SGD settings (lr, momentum, weight decay), rho, alpha, adaptive.
Output: an optimiser whose `step(closure)` performs one GSAM update (surrogate-gap guided sharpness-aware
minimisation, Zhuang et al. 2022, used by FTD / DATM / PAD with rho 0.01, alpha 0.3, adaptive).

One step on a batch (spec §1.2 steps 1-6; the closure re-evaluates the SAME augmented batch):
  1. g  = grad L(w)                                    (closure call 1)
  2. e  = rho * w^2 * g / (|| |w| * g ||_2 + 1e-12)    adaptive (ASAM-style; norm over all parameters)
     e  = rho * g / (|| g ||_2 + 1e-12)                 non-adaptive;   w <- w + e
  3. BatchNorm momentum 0 (running statistics are not updated by the perturbed pass)
  4. g' = grad L(w + e)                                (closure call 2)
  5. v  = g - cos(g, g') * ||g|| * g' / ||g'||           (component of g orthogonal to g')
     g* = g' - alpha * v
  6. w restored; base SGD step with g*; BatchNorm momentum restored.
rho = alpha = 0 gives e = 0 and g* = g' = g: exactly the plain SGD update (spec §8.7, tested bit-for-bit);
alpha = 0 gives the SAM / ASAM update (gradient at the perturbed point).

w is restored by copying the saved tensor back instead of computing (w + e) - e, so the restore is exact
(the reference subtracts e, which can differ from w in the last bit). The step returns the first closure's
result (loss at w), which is what the reference logs.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

EPS = 1e-12


class GSAM(torch.optim.Optimizer):
    """GSAM around torch.optim.SGD; `needs_closure = True` tells `training.train_epoch` to pass a closure."""

    needs_closure = True

    def __init__(self, params, lr: float, momentum: float = 0.0, weight_decay: float = 0.0, rho: float = 0.01,
                 alpha: float = 0.3, adaptive: bool = True, model: nn.Module | None = None):
        if rho < 0 or alpha < 0:
            raise ValueError(f"GSAM: rho and alpha must be >= 0; got rho={rho}, alpha={alpha}")
        defaults = dict(lr=lr, momentum=momentum, weight_decay=weight_decay, rho=rho, alpha=alpha, adaptive=adaptive)
        super().__init__(params, defaults)
        # The base optimiser shares our parameter groups, so lr changes through either object apply to both.
        self.base = torch.optim.SGD(self.param_groups, lr=lr, momentum=momentum, weight_decay=weight_decay)
        self.param_groups = self.base.param_groups
        self.model = model

    # The momentum buffers live in the base optimiser; checkpointing saves and restores them.
    def state_dict(self) -> dict:
        return self.base.state_dict()

    def load_state_dict(self, state_dict: dict) -> None:
        self.base.load_state_dict(state_dict)
        self.param_groups = self.base.param_groups  # the base optimiser rebuilt its group list

    def _params(self) -> list[torch.Tensor]:
        return [p for group in self.param_groups for p in group["params"] if p.grad is not None]

    def _bn_momentum(self, zero: bool, saved: dict | None = None) -> dict:
        """Set BatchNorm momentum to 0 (zero=True, returns the old values) or restore `saved`."""
        if self.model is None:
            return {}
        out = {}
        for m in self.model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                if zero:
                    out[m] = m.momentum
                    m.momentum = 0.0
                elif saved is not None and m in saved:
                    m.momentum = saved[m]
        return out

    @torch.no_grad()
    def step(self, closure: Callable | None = None):
        if closure is None:
            raise RuntimeError("GSAM.step needs a closure that zeroes the gradients and recomputes the batch loss")
        with torch.enable_grad():
            result = closure()  # 1. g at w
        params = self._params()
        g = [p.grad.detach().clone() for p in params]
        group = self.param_groups[0]  # rho / alpha / adaptive are global settings of the expert optimiser
        rho, alpha, adaptive = group["rho"], group["alpha"], group["adaptive"]
        saved_w = [p.detach().clone() for p in params]
        # 2. perturbation e (norm over all parameters jointly)
        if adaptive:
            scaled = [p.abs() * gi for p, gi in zip(params, g)]
            norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(s) for s in scaled]))
            e = [rho * p.square() * gi / (norm + EPS) for p, gi in zip(params, g)]
        else:
            norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(gi) for gi in g]))
            e = [rho * gi / (norm + EPS) for gi in g]
        for p, ei in zip(params, e):
            p.add_(ei)
        bn = self._bn_momentum(zero=True)  # 3.
        try:
            with torch.enable_grad():
                closure()  # 4. g' at w + e (same augmented batch)
        finally:
            self._bn_momentum(zero=False, saved=bn)
            for p, w in zip(params, saved_w):  # 6. (restore) exact copy of w
                p.copy_(w)
        g2 = [p.grad.detach() for p in params]
        if alpha != 0:  # 5. g* = g' - alpha * (g - cos * ||g|| * g'/||g'||)
            dot = sum((a * b).sum() for a, b in zip(g, g2))
            n1 = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(a) for a in g]))
            n2 = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(b) for b in g2]))
            cos = dot / (n1 * n2 + EPS)
            coef = cos * n1 / (n2 + EPS)
            for p, a, b in zip(params, g, g2):
                v = a - coef * b
                p.grad.sub_(alpha * v)
        self.base.step()  # 6. base SGD step with g*
        return result
