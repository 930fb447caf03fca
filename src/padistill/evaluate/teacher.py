"""A frozen network whose logits are the targets of knowledge distillation (KD evaluation, the random baseline's
teacher labels, the SRe2L relabel protocol)."""

from __future__ import annotations

import torch
from torch import nn

from padistill.training import chunks


class Teacher:
    """A frozen network whose logits become the targets of knowledge distillation.

    `batch_stats`: run it in train mode (batch statistics) — needed for BatchNorm teachers whose running
    statistics were never stored (expert trajectories hold parameters only)."""

    def __init__(self, model: nn.Module, batch_stats: bool = False, chunk: int = 256, name: str = "teacher"):
        self.model = model
        self.batch_stats = batch_stats
        self.chunk = chunk
        self.name = name
        for p in model.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.model.train(self.batch_stats)
        size = None if self.batch_stats else self.chunk  # batch statistics need the whole batch at once
        return torch.cat([self.model(x[a:b]) for a, b in chunks(len(x), size)])
