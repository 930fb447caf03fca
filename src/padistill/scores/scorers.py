"""Per-sample difficulty scores of one trained model (paper §3.2 eq. 3, Table 4a; spec §2).

Input: a trained model and the UN-augmented training images (model space) with their labels.
Output: float32 [N] scores, higher = harder, for every method:

- el2n (default, paper eq. 3; Paul et al. 2021): || softmax(f(x)) - onehot(y) ||_2.
- grand: DeepCore's GraNd, the norm of the gradient of the loss w.r.t. the LAST layer (weights and bias).
  For a linear classifier on the penultimate embedding h the gradient is (p - y) h^T and (p - y), so its norm
  is exactly el2n * sqrt(1 + ||h||^2); nets expose h as `embed(x)` (= the classifier's input).
- loss: cross-entropy of the true class.
- uncertainty: entropy of the softmax, -sum_k p_k log p_k (DeepCore's default "Entropy").
- forgetting (Toneva et al. 2019): number of correct -> incorrect transitions between consecutive epochs of
  the scoring run, recorded on the un-augmented set after every epoch (`ForgettingTracker`); samples never
  classified correctly count as hardest (score = epochs + 1, above any possible count).
The scores stage averages each over the independently initialised models (the expectation in eq. 3).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from padistill.errors import PadistillError
from padistill.training import chunks

METHODS = ("el2n", "grand", "loss", "uncertainty", "forgetting")
LOGIT_METHODS = ("el2n", "grand", "loss", "uncertainty")


@torch.no_grad()
def sample_statistics(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 512) -> dict[str, torch.Tensor]:
    """el2n, grand, loss, uncertainty and correctness of every sample (eval mode, no augmentation).

    One pass: the logits are computed from the embedding through the last layer, so GraNd costs nothing extra.
    """
    embed = getattr(model, "embed", None)
    head = _last_linear(model)
    if embed is None or head is None:
        raise PadistillError(f"scores: net {type(model).__name__} exposes no embed(x) + final Linear layer "
                             "(needed for GraNd); use another scores.method or scores.net")
    was_training = model.training
    model.eval()
    out: dict[str, list[torch.Tensor]] = {k: [] for k in (*LOGIT_METHODS, "correct")}
    for a, b in chunks(len(x), batch):
        h = embed(x[a:b]).flatten(1)
        logits = head(h)
        if a == 0 and not torch.allclose(logits[:8], model(x[:min(8, b)]), rtol=1e-4, atol=1e-5):
            # GraNd's closed form needs h to be the input of the last layer; refuse silently wrong scores.
            raise PadistillError(f"scores: {type(model).__name__}.embed(x) is not the input of its last Linear "
                                 "layer, so GraNd cannot be computed; use another scores.method or scores.net")
        p = F.softmax(logits.float(), dim=1)
        target = y[a:b]
        err = p.clone()
        err[torch.arange(len(target), device=p.device), target] -= 1.0
        el2n = err.norm(dim=1)
        logp = F.log_softmax(logits.float(), dim=1)
        out["el2n"].append(el2n)
        out["grand"].append(el2n * torch.sqrt(1.0 + h.float().square().sum(dim=1)))
        out["loss"].append(-logp.gather(1, target.unsqueeze(1)).squeeze(1))
        out["uncertainty"].append(-(p * logp).sum(dim=1))
        out["correct"].append(logits.argmax(dim=1) == target)
    model.train(was_training)
    return {k: torch.cat(v).cpu() for k, v in out.items()}


def _last_linear(model: nn.Module) -> nn.Module | None:
    """The final classifier layer (the Linear that maps the embedding to the logits)."""
    for name in ("classifier", "fc", "head"):
        m = getattr(model, name, None)
        if isinstance(m, nn.Linear):
            return m
        if isinstance(m, nn.Sequential) and len(m) and isinstance(m[-1], nn.Linear):
            return m[-1]
    return None


class ForgettingTracker:
    """Counts correct -> incorrect transitions of each sample across epochs (Toneva et al. 2019)."""

    def __init__(self, n: int):
        self.prev = torch.zeros(n, dtype=torch.bool)
        self.ever = torch.zeros(n, dtype=torch.bool)
        self.forgets = torch.zeros(n, dtype=torch.int64)
        self.records = 0

    def update(self, correct: torch.Tensor) -> None:
        correct = correct.cpu().bool()
        if self.records:
            self.forgets += (self.prev & ~correct).long()
        self.ever |= correct
        self.prev = correct
        self.records += 1

    def scores(self) -> torch.Tensor:
        """float32 [N]; never-learned samples get records + 1 (more than any possible count)."""
        s = self.forgets.float()
        s[~self.ever] = float(self.records + 1)
        return s
