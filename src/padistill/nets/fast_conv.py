"""2-D convolution whose double backward uses the convolution backward kernels (CPU).

Input [N, C_in, H, W] -> [N, C_out, H', W']: exactly `nn.Conv2d` (groups 1, no transposition). Only
the *double* backward differs, which the unrolled student (match/trajectory.py) needs.

Why: PyTorch's double backward of a convolution (`_convolution_double_backward`) computes the weight
term <ggI, conv_transpose(gO, W)> as a convolution of the transposed tensors: batch and channels swap
places, so a [10, 128, 16, 16] step becomes a convolution of 128 "images" of 10 channels with a
16x16 kernel. On a CPU that runs at ~35 GFLOPS where the ordinary kernels reach ~90 per core, and
it allocates transposed copies: about 10 % of a trajectory-matching step (torch.profiler,
benchmarks/README.md). The same three products are ordinary convolution calls:
    first backward  (gO, x, W) -> gx = dconv/dx^T gO,  gW = dconv/dW^T gO,  gb = sum gO
    its backward, given cotangents (ggx, ggW, ggb):
        d/d gO = conv(ggx, W) + conv(x, ggW) + ggb
        d/d x  = input-gradient of conv(., ggW) at gO   = convolution_backward(gO, x, ggW)[0]
        d/d W  = weight-gradient of conv(ggx, .) at gO  = convolution_backward(gO, ggx, W)[1]
All are differentiable ATen ops, so third derivatives are still right (slow route, never used here).
`tests/nets/test_fast_pool_conv.py` checks them against nn.Conv2d and with gradgradcheck.

Scope: CPU float32/float64, groups 1, zero padding, inputs or outputs of at least `MIN_NUMEL` elements
(smaller ones are faster natively), outside torch.func transforms, with grad mode on.
Everything else is `F.conv2d` itself (CUDA keeps cuDNN's own double backward). The forward and the
first backward are the very same kernels as nn.Conv2d, so training (experts, evaluation) is unchanged,
with one exception that training never meets: the input gradient of a layer with few input rows
(C_in kh kw <= `GEMM_ROWS`, the first conv) is a matrix product plus col2im (`_input_grad_by_gemm`),
equal to the native one up to float rounding. Only the student needs it (the images' gradient).
A backward also skips the input gradient when the autograd engine will not use it
(`_input_grad_wanted`).

Switch: `PADISTILL_NATIVE_CONV=1` in the environment (read by `common.make_conv2d` when a net is built)
builds plain `nn.Conv2d`, for A/B timing and as a fallback. Parameters and state_dict are identical
either way.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd import Function

from padistill.nets.fast_norm import _FAST_DTYPES, _functorch_active  # the same guards as the norm

__all__ = ["Conv2d"]

_aten = torch.ops.aten
# Private engine query (used by torch.utils.checkpoint too); absent: assume every gradient is needed.
_will_execute = getattr(torch._C, "_will_engine_execute_node", None)
# Below this many input (and output) elements the native double backward is as fast and the Python-level Functions
# cost more (the quickstart's 8x8 digits ran ~10 % slower through the fast path).
MIN_NUMEL = 1 << 16


def _input_grad_wanted(ctx) -> bool:
    """Whether the running backward uses the gradient w.r.t. the convolution's input.

    `ctx.needs_input_grad` only says that the input requires grad. The student's inner step,
    `autograd.grad(loss, theta, create_graph=True)`, runs over a first convolution whose input (the
    synthetic images) requires grad, yet never uses that gradient: computing it is a backward-data
    pass 3x the cost of the layer's weight gradient (~3 % of a trajectory-matching step). The engine
    knows which nodes it will run. It refuses the question for a leaf input that autograd.grad
    captures (that gradient is wanted); without the query (older torch) everything counts as wanted.
    """
    node = ctx.next_functions[0][0]
    if node is None or _will_execute is None:
        return node is not None
    try:
        return bool(_will_execute(node))
    except RuntimeError:  # a leaf input that autograd.grad was asked for
        return True


def _conv(x, w, b, stride, padding, dilation):
    return F.conv2d(x, w, b, stride, padding, dilation)


def _conv_backward(g, x, w, has_bias, stride, padding, dilation, mask):
    bias_sizes = [w.shape[0]] if has_bias else None
    # The input gradient of a layer with few input channels (the first conv: 3 x 3 x 3 = 27 rows) is one
    # matrix product plus col2im: ~2x faster than oneDNN's backward-data kernel for it on the CPU.
    gemm = mask[0] and _few_input_rows(w)
    gx, gw, gb = _aten.convolution_backward(g, x, w, bias_sizes, stride, padding, dilation, False, [0, 0], 1,
                                            [mask[0] and not gemm, mask[1], mask[2]])
    if gemm:
        gx = _input_grad_by_gemm(g, x, w, stride, padding, dilation)
    return gx, gw, gb


# Input gradients of convolutions with at most this many weight rows (C_in * kh * kw) and at least
# 2x as many output channels go through `_input_grad_by_gemm`. Measured (2 threads, [N, 3, 32, 32] ->
# 128 channels): 2.7 -> 1.2 ms at N = 10, 7.4 -> 3.4 ms at N = 25.
GEMM_ROWS = 32


def _few_input_rows(w: torch.Tensor) -> bool:
    rows = w.shape[1] * w.shape[2] * w.shape[3]
    return rows <= GEMM_ROWS and w.shape[0] >= 2 * rows


def _input_grad_by_gemm(g, x, w, stride, padding, dilation):
    """d conv(x, w) / dx applied to g: W^T g per output position ([C_in kh kw, L] columns), folded back
    onto the input grid (`F.fold` sums the overlapping windows)."""
    n, c_out = g.shape[:2]
    cols = torch.matmul(w.reshape(c_out, -1).t(), g.reshape(n, c_out, -1))
    return F.fold(cols, tuple(x.shape[2:]), tuple(w.shape[2:]), dilation=dilation, padding=padding,
                  stride=stride)


class _Conv(Function):
    @staticmethod
    def forward(ctx, x, w, b, stride, padding, dilation):
        ctx.save_for_backward(x, w)
        ctx.conf = (b is not None, stride, padding, dilation)
        ctx.set_materialize_grads(False)
        return _conv(x, w, b, stride, padding, dilation)

    @staticmethod
    def backward(ctx, g):
        if g is None:
            return None, None, None, None, None, None
        x, w = ctx.saved_tensors
        has_bias, stride, padding, dilation = ctx.conf
        need = ctx.needs_input_grad
        mask = [need[0] and _input_grad_wanted(ctx), need[1], has_bias and need[2]]
        if torch.is_grad_enabled():
            gx, gw, gb = _ConvBackward.apply(g, x, w, has_bias, stride, padding, dilation, mask)
        else:
            gx, gw, gb = _conv_backward(g.contiguous(), x, w, has_bias, stride, padding, dilation, mask)
        return (gx if mask[0] else None, gw if mask[1] else None, gb if mask[2] else None, None, None, None)


class _ConvBackward(Function):
    """(gO, x, W) -> (gx, gW, gb); its backward is the double backward of the module docstring."""

    @staticmethod
    def forward(ctx, g, x, w, has_bias, stride, padding, dilation, mask):
        # g itself (not a contiguous copy) is saved so a third-order backward can reach its history.
        ctx.save_for_backward(g, x, w)
        ctx.conf = (has_bias, stride, padding, dilation)
        ctx.set_materialize_grads(False)
        gx, gw, gb = _conv_backward(g.contiguous(), x, w, has_bias, stride, padding, dilation, list(mask))
        # Outputs that were not asked for come back as undefined; autograd needs tensors.
        ctx.mask = mask
        return (gx if mask[0] else x.new_zeros(()), gw if mask[1] else w.new_zeros(()),
                gb if mask[2] else w.new_zeros(()))

    @staticmethod
    def backward(ctx, ggx, ggw, ggb):
        g, x, w = ctx.saved_tensors
        has_bias, stride, padding, dilation = ctx.conf
        mask = ctx.mask
        ggx = ggx if mask[0] else None
        ggw = ggw if mask[1] else None
        ggb = ggb if mask[2] else None
        need_g, need_x, need_w = ctx.needs_input_grad[:3]
        gc = g.contiguous()
        d_g = d_x = d_w = None
        if need_g:
            # The bias cotangent rides along as the bias of one of the convolutions (no extra pass).
            if ggx is not None:
                d_g = _conv(ggx, w, ggb if ggw is None else None, stride, padding, dilation)
            if ggw is not None:
                t = _conv(x, ggw, ggb, stride, padding, dilation)
                d_g = t if d_g is None else d_g.add_(t) if not torch.is_grad_enabled() else d_g + t
            if d_g is None and ggb is not None:
                d_g = ggb.view(1, -1, 1, 1).expand_as(g).clone()
        if need_x and ggw is not None:
            d_x = _conv_backward(gc, x, ggw, False, stride, padding, dilation, [True, False, False])[0]
        if need_w and ggx is not None:
            d_w = _conv_backward(gc, ggx.contiguous(), w, False, stride, padding, dilation, [False, True, False])[1]
        return d_g, d_x, d_w, None, None, None, None, None


def conv2d(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, stride, padding, dilation) -> torch.Tensor:
    """`F.conv2d(x, w, b, stride, padding, dilation)` with the fast double backward where it applies."""
    fast = (x.dim() == 4 and x.device.type == "cpu" and x.dtype in _FAST_DTYPES and w.dtype == x.dtype
            and (b is None or b.dtype == x.dtype) and x.numel() > 0 and torch.is_grad_enabled()
            # input or (about) output size: the first layer has 3 input channels but a large output
            and max(x.numel(), x.numel() // max(x.shape[1], 1) * w.shape[0]) >= MIN_NUMEL
            and (x.requires_grad or w.requires_grad or (b is not None and b.requires_grad))
            and not _functorch_active())
    if not fast:
        return F.conv2d(x, w, b, stride, padding, dilation)
    return _Conv.apply(x, w, b, list(stride), list(padding), list(dilation))


class Conv2d(nn.Conv2d):
    """`nn.Conv2d` (same parameters, state_dict, repr and checks) with the fast double backward of
    `conv2d` for groups 1 and zero padding; anything else is nn.Conv2d's own forward."""

    def _conv_forward(self, x, weight, bias):
        if self.groups != 1 or self.padding_mode != "zeros" or isinstance(self.padding, str):
            return super()._conv_forward(x, weight, bias)
        return conv2d(x, weight, bias, self.stride, self.padding, self.dilation)

