"""Instance normalisation with a hand-derived double backward (the `norm='instance'` layer).

Input [N, C, *] -> output of the same shape: every (sample, channel) slice is normalised with its own
mean and biased variance, then scaled and shifted per channel, exactly `nn.GroupNorm(C, C)` (eps 1e-5).

Why not `nn.GroupNorm`: the unrolled student (match/trajectory.py) differentiates the gradient of
the network (`create_graph=True`, then a second `autograd.grad`). PyTorch implements the double
backward of group norm as a composite graph of ~30 broadcasting elementwise ops over the full
activation ([25, 128, 32, 32] for the first ConvNet block). On a CPU these are memory-bound, several
use a slow broadcasting layout ([N, C, 1, 1] x [N, C, 1, HW]) and each allocates a fresh
activation-sized tensor (page faults): ~40 % of the reverse sweep went there. Here the backward is
itself an `autograd.Function` (`_InstanceNormBackward`) whose own backward is written out by hand:
two fused per-(sample, channel) reductions and five in-place `addcmul` passes, nothing else.

Formulas (one (sample, channel) slice with M elements; x̂ = (x - mean) * rstd, k = rstd * w; means
over the M elements are written <.>):
    forward   y  = w x̂ + b
    backward  dx = k (dy - <dy> - x̂ <dy x̂>),  dw = sum_n M <dy x̂>,  db = sum_n M <dy>
    double backward, given cotangents u (of dx), p (of dw), q (of db); A = <dy>, B = <dy x̂>,
    U = <u>, V = <u x̂>, W = <u dy>:
      d/d dy = k (u - U - x̂ V) + p x̂ + q
      d/d w  = sum_n rstd M (W - A U - B V)
      d/d x  = rstd (a dy + b u + c + d x̂)   with a = p - k V,  b = -k B,
               c = k (A V + B U) - p A,  d = k (3 B V + A U - W) - p B
(the last one differentiates x̂ and rstd w.r.t. x; `tests/nets/test_fast_norm.py` checks all of them
against GroupNorm and with gradgradcheck). The fused reductions come from ATen's own group-norm
backward kernel run on a [1, N*C, M] view (one group per (sample, channel)): with X = x, mean, rstd it
returns per-slice sum(g x̂) and sum(g); with X = dy, mean 0, rstd 1 it returns sum(g dy). The first
backward is the same kernel (so it also hands the per-slice A and B to the double backward for free).

Scope: float32 / float64 on any device (device-agnostic ATen ops only). Other dtypes (half,
bfloat16), `affine=False`, empty batches, inputs GroupNorm would reject, no-grad calls and calls under
torch.func transforms (grad, vmap, jvp; `functional_call` is fine) use `F.group_norm` itself.
Third derivatives: a double backward that runs with create_graph=True switches to a differentiable
composite of the same formulas (slow but exact to any order); padistill never does that.

Switch: `PADISTILL_NATIVE_NORM=1` in the environment (read when a net is built) or
`make_norm(..., native=True)` gives the plain `nn.GroupNorm` instead, for A/B timing and as a
fallback. Parameters, their names (`weight`, `bias`), the state_dict and `isinstance(m, nn.GroupNorm)`
are the same either way, so flat layouts and checkpoints are interchangeable.

torch.compile of the explicit double backward was evaluated (one reduction + one output kernel, ~2x
faster than these eager passes on the first block) but costs ~20 s of compilation per process and
shape on a 2-core CPU for ~2 % of a student step, so it is not used.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd import Function

__all__ = ["InstanceNorm", "instance_norm"]

_aten = torch.ops.aten
_FAST_DTYPES = (torch.float32, torch.float64)
# torch.func transforms (grad, vmap, jvp) refuse autograd.Functions written like these; while one is
# active the layer is plain GroupNorm. Private API, hence the guarded lookup (absent: assume none).
_functorch_active = getattr(torch._C, "_are_functorch_transforms_active", lambda: False)


def _slice_sums(g: torch.Tensor, x: torch.Tensor, mean: torch.Tensor, rstd: torch.Tensor,
                weight: torch.Tensor, dx: bool):
    """ATen's group-norm backward on [1, S, M] views (S = N*C slices, one group each).

    Returns (k (g - <g> - x̂ <g x̂>) or None, sum(g x̂) [S], sum(g) [S]) with x̂ = (x - mean) * rstd and
    k = rstd * weight per slice. One pass over g and x for the sums (plus one for dx): cheaper than
    `(g * x̂).sum(-1)`, which materialises the product.
    """
    s, m = mean.numel(), x.numel() // max(mean.numel(), 1)
    out = _aten.native_group_norm_backward(g.view(1, s, m), x.view(1, s, m), mean.view(1, s), rstd.view(1, s),
                                           weight, 1, s, m, s, [dx, True, True])
    return out[0], out[1], out[2]


class _InstanceNormBackward(Function):
    """(dy, x, w) -> (dx, dw, db) of instance norm; its backward is the explicit double backward.

    `mean` and `rstd` are the forward statistics of x, passed as constants: their dependence on x is
    part of the hand-derived formulas, so no gradient is returned for them.
    """

    @staticmethod
    def forward(ctx, dy, x, w, mean, rstd, eps):
        n, c = x.shape[:2]
        w_rep = w.expand(n, c).reshape(n * c)  # the per-slice weight of the [1, N*C, M] view
        dx, sb, sa = _slice_sums(dy.contiguous(), x, mean, rstd, w_rep, True)
        sa, sb = sa.view(n, c), sb.view(n, c)  # per slice: M <dy> and M <dy x̂>
        # dy itself (not a contiguous copy) so that a third-order backward can reach its history.
        ctx.save_for_backward(dy, x, w, mean, rstd, sa, sb)
        ctx.eps = eps
        # Cotangents that are None stay None (instead of activation-sized zero tensors).
        ctx.set_materialize_grads(False)
        return dx.view(x.shape), sb.sum(0), sa.sum(0)

    @staticmethod
    def backward(ctx, u, p, q):
        dy, x, w, mean, rstd, sa, sb = ctx.saved_tensors
        need_dy, need_x, need_w = ctx.needs_input_grad[:3]
        if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (u, p, q, dy, x, w)):
            # create_graph=True here means someone wants third derivatives: the formulas below are not
            # differentiable themselves (they treat x̂ and rstd as constants), so take the slow route.
            return (*_composite_double_backward(dy, x, w, u, p, q, ctx.eps, ctx.needs_input_grad[:3]),
                    None, None, None)
        dy = dy.contiguous()
        n, c = x.shape[:2]
        s = n * c
        m = x.numel() // s
        x2, g2 = x.view(s, m), dy.view(s, m)
        rs, mu = rstd.view(s, 1), mean.view(s, 1)
        k = (rstd * w).view(s, 1)
        a_, b_ = sa.view(s, 1) / m, sb.view(s, 1) / m  # A = <dy>, B = <dy x̂>
        p = p.expand(n, c).reshape(s, 1) if p is not None else None
        q = q.expand(n, c).reshape(s, 1) if q is not None else None

        # Per-slice coefficients of grad_dy = c0 + cx x̂ + k u and grad_x = rstd (a dy + b u + c + d x̂).
        zero = torch.zeros_like(k)
        c0, cx = zero, zero
        a, b, cc, d = zero, None, zero, zero
        grad_w = None
        if u is not None:
            u = u.contiguous()
            u2 = u.view(s, m)
            ones = torch.ones_like(rstd).view(s)
            _, sv, su = _slice_sums(u, x, mean, rstd, ones, False)
            sw = _slice_sums(u, dy, torch.zeros_like(mean), torch.ones_like(rstd), ones, False)[1]
            uu, vv, ww = su.view(s, 1) / m, sv.view(s, 1) / m, sw.view(s, 1) / m  # U, V, W
            c0, cx = -k * uu, -k * vv
            a, b = -k * vv, -k * b_
            cc = k * (a_ * vv + b_ * uu)
            d = k * (3 * b_ * vv + a_ * uu - ww)
            if need_w:
                grad_w = (rs * (ww - a_ * uu - b_ * vv) * m).view(n, c).sum(0)
        if p is not None:
            cx = cx + p
            a, cc, d = a + p, cc - p * a_, d - p * b_
        if q is not None:
            c0 = c0 + q

        grad_dy = None
        if need_dy and (u is not None or p is not None or q is not None):
            # c0 + cx x̂ = (c0 - cx rstd mean) + (cx rstd) x: one pass over x, then one over u.
            c1 = cx * rs
            grad_dy = torch.addcmul(c0 - c1 * mu, x2, c1)
            if u is not None:
                grad_dy.addcmul_(u2, k)
            grad_dy = grad_dy.view(x.shape)
        grad_x = None
        if need_x and (u is not None or p is not None):
            # rstd (a dy + b u + c + d x̂) with x̂ folded into x: three passes, in place after the first.
            d1 = rs * rs * d
            grad_x = torch.addcmul(rs * cc - d1 * mu, x2, d1)
            grad_x.addcmul_(g2, rs * a)
            if b is not None:
                grad_x.addcmul_(u2, rs * b)
            grad_x = grad_x.view(x.shape)
        return grad_dy, grad_x, grad_w, None, None, None


def _composite_double_backward(dy, x, w, u, p, q, eps, needs):
    """The double backward formulas of the module docstring as a differentiable graph (slow, exact to
    any order): statistics, x̂ and rstd are recomputed from x with recorded ops. Used only when the
    double backward itself runs with create_graph=True."""
    with torch.enable_grad():
        dims = tuple(range(2, x.dim()))
        m = x.numel() // (x.shape[0] * x.shape[1])

        def col(t):  # per-channel [C] -> broadcastable [1, C, 1, ...]
            return t.view(1, -1, *[1] * len(dims))

        def avg(t):
            return t.mean(dims, keepdim=True)

        var, mean = torch.var_mean(x, dims, correction=0, keepdim=True)
        rstd = (var + eps).rsqrt()
        xh = (x - mean) * rstd
        k = rstd * col(w)
        a_, b_ = avg(dy), avg(dy * xh)
        grad_dy = grad_x = grad_w = None
        if u is not None:
            uu, vv, ww = avg(u), avg(u * xh), avg(u * dy)
            grad_dy = k * (u - uu - xh * vv)
            grad_x = rstd * k * (-vv * dy - b_ * u + (a_ * vv + b_ * uu) + (3 * b_ * vv + a_ * uu - ww) * xh)
            grad_w = (rstd * (ww - a_ * uu - b_ * vv) * m).sum((0, *dims))
        if p is not None:
            pc = col(p)
            grad_dy = pc * xh if grad_dy is None else grad_dy + pc * xh
            extra = rstd * pc * (dy - a_ - b_ * xh)
            grad_x = extra if grad_x is None else grad_x + extra
        if q is not None:
            grad_dy = col(q).expand_as(x) if grad_dy is None else grad_dy + col(q)
        return [g if need else None for g, need in zip((grad_dy, grad_x, grad_w), needs)]


class _InstanceNorm(Function):
    """y = instance_norm(x) * w + b; the backward is `_InstanceNormBackward` (differentiable once more)."""

    @staticmethod
    def forward(ctx, x, w, b, eps):
        n, c = x.shape[:2]
        y, mean, rstd = _aten.native_group_norm(x, w, b, n, c, x.numel() // (n * c), c, eps)
        ctx.save_for_backward(x, w, mean, rstd)
        ctx.eps = eps
        ctx.set_materialize_grads(False)
        return y

    @staticmethod
    def backward(ctx, dy):
        if dy is None:
            return None, None, None, None
        x, w, mean, rstd = ctx.saved_tensors
        need = ctx.needs_input_grad
        if not torch.is_grad_enabled():
            # No create_graph: nothing will differentiate this backward, so run GroupNorm's own kernel
            # exactly as nn.GroupNorm would (training steps, the student's forward unroll).
            n, c = x.shape[:2]
            dx, dw, db = _aten.native_group_norm_backward(dy.contiguous(), x, mean, rstd, w, n, c,
                                                          x.numel() // (n * c), c, list(need[:3]))
        else:
            dx, dw, db = _InstanceNormBackward.apply(dy, x, w, mean, rstd, ctx.eps)
        return dx if need[0] else None, dw if need[1] else None, db if need[2] else None, None


def instance_norm(x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None,
                  eps: float = 1e-5) -> torch.Tensor:
    """`F.group_norm(x, C, weight, bias, eps)` with the fast double backward where it applies."""
    c = x.shape[1] if x.dim() >= 2 else 0
    fast = (weight is not None and bias is not None and x.dtype in _FAST_DTYPES
            and weight.dtype == x.dtype and bias.dtype == x.dtype and x.numel() > 0
            # GroupNorm's own size check (it refuses a single value per channel) stays GroupNorm's.
            and x.numel() // c > 1
            and torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad or bias.requires_grad)
            and not _functorch_active())
    if not fast:
        return F.group_norm(x, c, weight, bias, eps)
    # Made contiguous here, as a recorded op, so that the x saved inside the Function is the graph's
    # own tensor: the double backward must reach x's history (a copy made inside would cut it).
    return _InstanceNorm.apply(x.contiguous(), weight, bias, eps)


class InstanceNorm(nn.GroupNorm):
    """`nn.GroupNorm(C, C, affine=True)` (same parameters, state_dict and checks) with the fast double
    backward of `instance_norm`; see the module docstring."""

    def __init__(self, num_channels: int, eps: float = 1e-5, affine: bool = True, device=None, dtype=None):
        super().__init__(num_channels, num_channels, eps=eps, affine=affine, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() < 2 or x.shape[1] != self.num_channels:
            return super().forward(x)  # GroupNorm's own error message
        return instance_norm(x, self.weight, self.bias, self.eps)
