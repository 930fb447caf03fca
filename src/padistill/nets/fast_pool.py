"""2x2 average pooling (stride 2) for contiguous CPU tensors, differentiable to any order.

Input [N, C, H, W] (H, W even) -> [N, C, H/2, W/2]: the mean of every 2x2 block, exactly what
`nn.AvgPool2d(2, 2)` computes (up to float rounding: the four values are summed in a different order).

Why: PyTorch's CPU kernels for `avg_pool2d` and `avg_pool2d_backward` on NCHW-contiguous tensors walk
the output one element at a time. For the unrolled student's shapes ([10..25, 128, 32, 32]) they take
5-9 ms forward and 6-8 ms backward per call on one core, about 15 % of a trajectory-matching step
(torch.profiler, benchmarks/README.md). Here the pooling is split into two passes that vectorise:
- rows: add the two rows of every pair (contiguous rows of W floats);
- columns: one small matrix product with a fixed [W, W/2] matrix holding 0.25 where column j feeds
  output j // 2.
The backward (spreading g / 4 back over each block) is one product with a fixed [W/2, 2W] matrix: each
input row yields the two (contiguous) output rows it feeds, so the result needs no copy. It is exact
(one non-zero term per output).
Both are linear, so the backward's own backward is the pooling again: `_Pool2` and `_Unpool2` are each
other's derivatives, and any order of differentiation (the student's double backward) stays on the fast
path. Measured on one core: 5.9 -> 0.8 ms forward and 7.5 -> 1.5 ms backward on [10, 128, 32, 32];
the single-product backward then took [25, 128, 32, 32] from 1.40 to 0.80 ms (2 threads).

Scope: float32/float64 CPU tensors that are NCHW-contiguous with even H and W and at least `MIN_NUMEL`
elements (smaller ones are faster natively), outside torch.func transforms. Everything else (CUDA,
where the native kernels are fast; channels-last; odd sizes; half precision; small maps) uses
`F.avg_pool2d` itself. One difference for non-finite inputs: the matrix product
multiplies by zeros, so an inf or NaN in a row of W values makes that whole output row NaN, where
`avg_pool2d` keeps it to one block. Either way the step is non-finite and is skipped by the matcher.

Switch: `PADISTILL_NATIVE_POOL=1` in the environment (read by `common.make_avg_pool` when a net is
built) gives `nn.AvgPool2d` itself, for A/B timing and as a fallback.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd import Function

from padistill.nets.fast_norm import _FAST_DTYPES, _functorch_active  # the same guards as the norm

__all__ = ["AvgPool2x2", "avg_pool_2x2"]

_MATS: dict[tuple[str, int, torch.dtype], torch.Tensor] = {}
# Below this many input elements PyTorch's kernel is as fast and the Python-level Function costs more
# (the quickstart's 8x8 digits ran ~10 % slower through the fast path).
MIN_NUMEL = 1 << 16


def _pair_matrix(w: int, dtype: torch.dtype) -> torch.Tensor:
    """[w, w/2] with 0.25 at (j, j // 2): right-multiplying sums column pairs and divides by 4."""
    key = ("pair", w, dtype)
    m = _MATS.get(key)
    if m is None:
        m = torch.zeros(w, w // 2, dtype=dtype)
        j = torch.arange(w)
        m[j, j // 2] = 0.25
        _MATS[key] = m
    return m


def _spread_matrix(w: int, dtype: torch.dtype) -> torch.Tensor:
    """[w, 4w] with 0.25 at (j, k) where (k mod 2w) // 2 == j: a row of w values times it gives the two
    output rows (2w values each, consecutive in memory) that the row feeds."""
    key = ("spread", w, dtype)
    m = _MATS.get(key)
    if m is None:
        m = torch.zeros(w, 4 * w, dtype=dtype)
        k = torch.arange(4 * w)
        m[(k % (2 * w)) // 2, k] = 0.25
        _MATS[key] = m
    return m


def _pool(x: torch.Tensor) -> torch.Tensor:
    n, c, h, w = x.shape
    pairs = x.view(n, c, h // 2, 2, w)
    rows = torch.add(pairs[:, :, :, 0], pairs[:, :, :, 1])  # [n, c, h/2, w], contiguous
    return torch.mm(rows.view(-1, w), _pair_matrix(w, x.dtype)).view(n, c, h // 2, w // 2)


def _unpool(g: torch.Tensor) -> torch.Tensor:
    n, c, h, w = g.shape
    return torch.mm(g.reshape(-1, w), _spread_matrix(w, g.dtype)).view(n, c, 2 * h, 2 * w)


class _Pool2(Function):
    @staticmethod
    def forward(ctx, x):
        return _pool(x)

    @staticmethod
    def backward(ctx, g):
        return _Unpool2.apply(g.contiguous())


class _Unpool2(Function):
    @staticmethod
    def forward(ctx, g):
        return _unpool(g)

    @staticmethod
    def backward(ctx, gg):
        return _Pool2.apply(gg.contiguous())


def _fast_ok(x: torch.Tensor) -> bool:
    return (x.dim() == 4 and x.device.type == "cpu" and x.dtype in _FAST_DTYPES and x.is_contiguous()
            and x.shape[2] % 2 == 0 and x.shape[3] % 2 == 0 and x.numel() >= max(MIN_NUMEL, 1)
            and not _functorch_active())


def avg_pool_2x2(x: torch.Tensor) -> torch.Tensor:
    """`F.avg_pool2d(x, 2, 2)`, on the fast path where it applies (see the module docstring)."""
    if not _fast_ok(x):
        return F.avg_pool2d(x, 2, 2)
    if torch.is_grad_enabled() and x.requires_grad:
        return _Pool2.apply(x)
    return _pool(x)


class AvgPool2x2(nn.AvgPool2d):
    """`nn.AvgPool2d(2, 2)` (same repr, no parameters) computed by `avg_pool_2x2`."""

    def __init__(self):
        super().__init__(2, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return avg_pool_2x2(x)

