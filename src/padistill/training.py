"""Training a network on in-memory tensors: the one loop used by scores, experts, evaluation and DC.

Input: a model, an optimiser, model-space images already on the device, targets (class indices or
label logits), a CPU generator. Output: the trained model (in place) and epoch statistics.

Why not a DataLoader: the data already sits in one float tensor on the device; indexing it is free,
and worker processes would only copy it. Why micro-batches: on a CPU the activations of the first
conv block of a 256-image batch (256 x 128 x 32 x 32 floats = 134 MB) do not fit in cache and the
normalisation / ReLU / pooling passes become memory-bound. Splitting the forward/backward into
micro-batches and summing their gradients gives the same gradient (up to float rounding) about twice
as fast. Nets with batch statistics (BatchNorm) always use the whole batch, because their output
depends on the batch composition.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from padistill.losses import label_loss


def has_batch_statistics(model: nn.Module) -> bool:
    """True if outputs depend on other samples in the batch (BatchNorm): no micro-batching then."""
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def chunks(n: int, size: int | None) -> list[tuple[int, int]]:
    if not size or size >= n:
        return [(0, n)]
    return [(a, min(a + size, n)) for a in range(0, n, size)]


def accumulate_gradients(model: nn.Module, x: torch.Tensor, targets: torch.Tensor, microbatch: int | None = None,
                         loss_fn: Callable = label_loss) -> tuple[torch.Tensor, torch.Tensor]:
    """Backward of the batch-mean loss into `.grad` (accumulating), in micro-batches.

    Returns (summed loss, number correct) as 0-d tensors (no host sync)."""
    n = len(x)
    mb = None if has_batch_statistics(model) else microbatch
    loss_sum = torch.zeros((), device=x.device)
    correct = torch.zeros((), device=x.device, dtype=torch.int64)
    hard = targets if targets.ndim == 1 else targets.argmax(dim=1)
    for a, b in chunks(n, mb):
        out = model(x[a:b])
        loss = loss_fn(out, targets[a:b], reduction="sum")
        (loss / n).backward()
        loss_sum += loss.detach()
        correct += (out.detach().argmax(1) == hard[a:b]).sum()
    return loss_sum, correct


def train_epoch(model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, targets: torch.Tensor,
                batch: int, generator: torch.Generator, augment=None, microbatch: int | None = 64,
                indices: torch.Tensor | None = None, loss_fn: Callable = label_loss,
                relabel: Callable | None = None, on_batch: Callable | None = None) -> dict[str, float]:
    """One epoch over `indices` (default: all rows) in a seeded random order.

    DSA (if given) draws from the same generator once per batch. Optimisers that need to re-evaluate
    the same batch (GSAM) receive a closure; plain optimisers just step. `relabel(xb, tb)`, if given,
    replaces the targets of each batch after augmentation (knowledge distillation: the teacher's logits
    on the same augmented images the student sees). `on_batch(bidx)`, if given, is called after each step with
    the batch's row indices (the coreset stage counts forgetting events per minibatch this way).
    """
    model.train()
    idx = indices if indices is not None else torch.arange(len(x))
    order = idx[torch.randperm(len(idx), generator=generator)]
    total_loss = torch.zeros((), device=x.device)
    total_correct = torch.zeros((), device=x.device, dtype=torch.int64)
    needs_closure = getattr(optimizer, "needs_closure", False)
    for bidx in order.split(batch):
        bidx = bidx.to(x.device)
        xb, tb = x[bidx], targets[bidx]
        if augment is not None:
            xb = augment(xb, generator)
        if relabel is not None:
            tb = relabel(xb, tb)

        def closure(xb=xb, tb=tb):
            optimizer.zero_grad(set_to_none=True)
            return accumulate_gradients(model, xb, tb, microbatch, loss_fn)

        if needs_closure:
            loss, correct = optimizer.step(closure)
        else:
            loss, correct = closure()
            optimizer.step()
        if on_batch is not None:
            on_batch(bidx)
        total_loss += loss
        total_correct += correct
    n = max(1, len(order))
    return {"loss": float(total_loss) / n, "acc": float(total_correct) / n, "samples": len(order)}


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, batch: int = 256) -> torch.Tensor:
    """Logits in eval mode, in cache-sized batches."""
    was_training = model.training
    model.eval()
    out = torch.cat([model(x[a:b]) for a, b in chunks(len(x), batch)]) if len(x) else torch.empty(0)
    model.train(was_training)
    return out


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 256) -> float:
    if len(x) == 0:
        return float("nan")
    was_training = model.training
    model.eval()
    correct = torch.zeros((), dtype=torch.int64, device=x.device)
    for a, b in chunks(len(x), batch):
        correct += (model(x[a:b]).argmax(1) == y[a:b]).sum()
    model.train(was_training)
    return float(correct) / len(x)
