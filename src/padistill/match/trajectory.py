"""Trajectory matching (MTT -> DATM -> PAD): the unrolled student and its exact gradients.

Input: an expert start/target pair (flat parameters), the synthetic images, label logits and the
student lr. Output: the normalised matching loss and its gradients w.r.t. images, labels and lr.

The student takes N steps theta_{i+1} = theta_i - lr * grad CE(f(theta_i, DSA(x_batch_i)), y_batch_i)
(paper eq. 1; spec §3.6). Two exact ways to differentiate the final distance through the N steps:

- `plain`: keep the whole N-step double-backward graph (what the reference does). Memory grows with
  N x batch: CIFAR-10 IPC 10 with N = 80 does not fit in 24 GiB.
- `recompute`: run the N steps once without a graph, keeping only theta_0..theta_N (N x P
  floats, ~100 MB for ConvNet-3 and N = 80), then walk back step by step. For step i the Hessian-vector
  and mixed products needed by reverse mode,
      dL/dtheta_i = v - lr * H_i v,   dL/dx += -lr * (d g_i / d x)^T v,   dL/dlr += -g_i . v,
  are computed by rebuilding that one step's graph, one micro-batch at a time. Memory is one
  micro-batch step, paid for with one extra forward and backward per step. Results equal `plain` up to
  float rounding (tests/match/test_trajectory.py states the tolerance).
- `auto` (the default of `distill.unroll`, resolved by `TrajectoryMatcher`): `plain` when the full graph
  fits in `distill.unroll_budget_gib`, else `recompute`. `plain` does ~7 forward-equivalents per step
  against ~10 for `recompute` and ran 20-35 % faster per iteration on the CPU (benchmarks/README.md).
  The graph size is measured, not guessed: one step is run under `saved_tensors_hooks` and the storages it
  saves are counted (`Student.step_graph_bytes`), so the choice depends on shapes and the budget only.

All randomness of an unroll (mini-batch order, DSA draws) is drawn up front into an `UnrollPlan`, so
the recomputation replays exactly the same augmentations.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from padistill.filters.params import ParamCut
from padistill.losses import label_loss
from padistill.match.losses import per_layer_distance, trajectory_distance
from padistill.training import has_batch_statistics

# Peak memory of the plain unroll over the graph `Student.step_graph_bytes` measures (x syn_steps): the double
# backward's working buffers and the allocator's slack come on top. Measured peak RSS growth / measured graph
# (ConvNet-3, CIFAR-shaped, 2026-12-01): 1.10 (IPC 1, 80 steps, width 128) to 1.22 (IPC 10, 20 steps).
PEAK_OVER_GRAPH = 1.25


@dataclass
class UnrollPlan:
    """Pre-drawn randomness of one unroll: the synthetic indices and the DSA draw of every step."""

    batches: list[torch.Tensor]
    draws: list  # AugDraw | None per step


def make_plan(n_syn: int, batch_syn: int | None, steps: int, augment, image_size: tuple[int, int],
              generator: torch.Generator) -> UnrollPlan:
    """Mini-batch schedule of spec §3.6 / §8.16: a fresh permutation of all synthetic indices is split
    into chunks of `batch_syn`; chunks are consumed from the end; a new permutation when empty."""
    bs = n_syn if not batch_syn or batch_syn >= n_syn else batch_syn
    pool: list[torch.Tensor] = []
    batches, draws = [], []
    for _ in range(steps):
        if not pool:
            pool = list(torch.split(torch.randperm(n_syn, generator=generator), bs))
        idx = pool.pop()
        batches.append(idx)
        draws.append(augment.sample(len(idx), image_size, generator) if augment is not None else None)
    return UnrollPlan(batches, draws)


class Student:
    """The network run functionally on a flat parameter vector (ParamLayout order, shallow -> deep)."""

    def __init__(self, model: nn.Module, layout, augment=None, microbatch: int | None = 25):
        self.model = model.train()
        self.layout = layout
        self.augment = augment
        self.microbatch = None if has_batch_statistics(model) else microbatch

    def chunks(self, n: int) -> list[tuple[int, int]]:
        mb = self.microbatch
        if not mb or mb >= n:
            return [(0, n)]
        return [(a, min(a + mb, n)) for a in range(0, n, mb)]

    def inputs(self, images: torch.Tensor, idx: torch.Tensor, draw, a: int, b: int) -> torch.Tensor:
        x = images[idx[a:b]]
        if draw is not None:
            x = self.augment.apply(x, draw.take(a, b) if (a, b) != (0, len(idx)) else draw)
        return x

    def step_graph_bytes(self, theta: torch.Tensor, images: torch.Tensor, labels: torch.Tensor,
                         syn_lr: torch.Tensor, idx: torch.Tensor, draw) -> int:
        """Bytes the plain unroll's graph keeps for one student step on the batch `idx`: every storage the
        step saves for backward (activations, their gradients, the step's parameters), counted once. The
        synthetic set itself is shared by all steps and not counted. Depends on shapes only."""
        shared = {t.untyped_storage().data_ptr() for t in (images, labels)}
        seen: dict[int, int] = {}

        def pack(t: torch.Tensor) -> torch.Tensor:
            st = t.untyped_storage()
            if st.data_ptr() not in shared and st.nbytes():
                seen[st.data_ptr()] = max(seen.get(st.data_ptr(), 0), st.nbytes())
            return t

        img = images.detach().requires_grad_(True)
        lab = labels.detach().requires_grad_(labels.is_floating_point())
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            self.graph_step(theta.detach().requires_grad_(True), img, lab, syn_lr.detach().requires_grad_(True),
                            idx, draw)
        return sum(seen.values())  # theta itself is among them (every layer saves its weight view)

    def graph_step(self, theta, images, labels, lr, idx: torch.Tensor, draw) -> torch.Tensor:
        """One student step of the plain unroll, keeping its double-backward graph:
        theta - lr * grad (summed over micro-batches) of the step's label loss."""
        n = len(idx)
        g = None
        for a, b in self.chunks(n):
            loss = self.step_loss(theta, self.inputs(images, idx, draw, a, b), _targets(labels, idx, a, b), n)
            (gk,) = torch.autograd.grad(loss, theta, create_graph=True)
            g = gk if g is None else g + gk
        return theta - lr * g

    def step_loss(self, theta, x, targets, n: int) -> torch.Tensor:
        """Sum of the per-sample label loss over a micro-batch, divided by the step's batch size n
        (so micro-batch gradients add up to the gradient of the batch mean)."""
        return label_loss(self.layout.functional_forward(self.model, theta, x), targets, reduction="sum") / n


@dataclass
class MatchResult:
    loss: float
    grads: dict[str, torch.Tensor] | None  # None when the update is skipped (gated or non-finite)
    per_layer: dict[str, float]
    final: torch.Tensor  # student parameters after N steps (detached)


def _device_plan(plan: UnrollPlan, device: torch.device) -> UnrollPlan:
    return UnrollPlan([b.to(device) for b in plan.batches],
                      [d.to(device) if d is not None else None for d in plan.draws])


def _targets(labels: torch.Tensor, idx: torch.Tensor, a: int, b: int) -> torch.Tensor:
    return labels[idx[a:b]]


def match_trajectory(student: Student, start: torch.Tensor, target: torch.Tensor, images: torch.Tensor,
                     labels: torch.Tensor, syn_lr: torch.Tensor, plan: UnrollPlan, cut: ParamCut | None,
                     threshold: float = float("inf"), mode: str = "recompute",
                     learn_labels: bool = True, learn_lr: bool = True,
                     layer_ranges: list[tuple[str, int, int]] | None = None) -> MatchResult:
    """One trajectory-matching evaluation: loss and, unless gated, gradients.

    `labels` are label logits [n, C] (soft) or class indices [n] (hard, MTT); `threshold` implements the
    DATM/PAD gate (spec §3.10): if loss > threshold no gradient is computed and nothing is updated.
    """
    plan = _device_plan(plan, images.device)
    learn_labels = learn_labels and labels.is_floating_point()
    if mode == "plain":
        return _plain(student, start, target, images, labels, syn_lr, plan, cut, threshold, learn_labels,
                      learn_lr, layer_ranges)
    if mode != "recompute":
        raise ValueError(f"unknown unroll mode {mode!r}")

    # 1) forward without a graph, keeping every theta_i
    lr = syn_lr.detach()
    x_all, y_all = images.detach(), labels.detach()
    thetas = [start.detach()]
    for idx, draw in zip(plan.batches, plan.draws):
        th = thetas[-1].detach().requires_grad_(True)
        n = len(idx)
        g = None
        for a, b in student.chunks(n):
            loss = student.step_loss(th, student.inputs(x_all, idx, draw, a, b), _targets(y_all, idx, a, b), n)
            (gk,) = torch.autograd.grad(loss, th)
            g = gk if g is None else g.add_(gk)
        thetas.append(th.detach() - lr * g)

    # 2) the matching loss at theta_N and its gradient v = dL/dtheta_N
    final = thetas[-1].detach().requires_grad_(True)
    loss_t = trajectory_distance(final, start, target, cut)
    loss = float(loss_t.detach())
    per_layer = per_layer_distance(final.detach(), start, target, layer_ranges) if layer_ranges else {}
    if not (loss <= threshold) or not torch.isfinite(loss_t):
        return MatchResult(loss, None, per_layer, final.detach())
    (v,) = torch.autograd.grad(loss_t, final)

    # 3) reverse sweep, one step (and one micro-batch) at a time
    g_images = torch.zeros_like(images)
    g_labels = torch.zeros_like(labels) if learn_labels else None
    g_lr = torch.zeros((), dtype=images.dtype, device=images.device)
    neg_lr = -float(lr)
    for i in range(len(plan.batches) - 1, -1, -1):
        idx, draw, n = plan.batches[i], plan.draws[i], len(plan.batches[i])
        th = thetas[i].detach().requires_grad_(True)
        v_next = v.clone() if i > 0 else v
        for a, b in student.chunks(n):
            xk = x_all[idx[a:b]].requires_grad_(True)
            x = student.augment.apply(xk, draw.take(a, b) if (a, b) != (0, n) else draw) if draw is not None else xk
            yk = _targets(y_all, idx, a, b)
            if learn_labels:
                yk = yk.detach().requires_grad_(True)
            loss_k = student.step_loss(th, x, yk, n)
            (gk,) = torch.autograd.grad(loss_k, th, create_graph=True)
            gv = torch.dot(gk, v)
            wrt = [xk] + ([yk] if learn_labels else []) + ([th] if i > 0 else [])
            parts = torch.autograd.grad(gv, wrt)
            g_images.index_add_(0, idx[a:b], parts[0], alpha=neg_lr)
            if learn_labels:
                g_labels.index_add_(0, idx[a:b], parts[1], alpha=neg_lr)
            if i > 0:
                v_next.add_(parts[-1], alpha=neg_lr)
            g_lr -= gv.detach()
        v = v_next
    grads = {"images": g_images}
    if learn_labels:
        grads["labels"] = g_labels
    if learn_lr:
        grads["lr"] = g_lr
    return MatchResult(loss, grads, per_layer, final.detach())


def _plain(student, start, target, images, labels, syn_lr, plan, cut, threshold, learn_labels, learn_lr,
           layer_ranges) -> MatchResult:
    """Reference-style unroll with the full double-backward graph (memory grows with N)."""
    img = images.detach().requires_grad_(True)
    lab = labels.detach().requires_grad_(learn_labels)
    lr = syn_lr.detach().requires_grad_(learn_lr)
    theta = start.detach().requires_grad_(True)
    for idx, draw in zip(plan.batches, plan.draws):
        theta = student.graph_step(theta, img, lab, lr, idx, draw)
    loss_t = trajectory_distance(theta, start, target, cut)
    loss = float(loss_t.detach())
    per_layer = per_layer_distance(theta.detach(), start, target, layer_ranges) if layer_ranges else {}
    if not (loss <= threshold) or not torch.isfinite(loss_t):
        return MatchResult(loss, None, per_layer, theta.detach())
    wrt = [img] + ([lab] if learn_labels else []) + ([lr] if learn_lr else [])
    parts = torch.autograd.grad(loss_t, wrt, allow_unused=True)
    grads = {"images": parts[0]}
    k = 1
    if learn_labels:
        grads["labels"] = parts[k]
        k += 1
    if learn_lr:
        grads["lr"] = parts[k] if parts[k] is not None else torch.zeros((), device=images.device)
    return MatchResult(loss, grads, per_layer, theta.detach())


class TrajectoryMatcher:
    """MTT / DATM / PAD as one matcher: pick an expert and a start epoch, unroll, match, update.

    Randomness of iteration `it` is derived from (seed, it, rank) alone — expert order, start epoch,
    mini-batches and DSA draws — so a resumed run replays exactly what an uninterrupted run would do.
    Experts are visited in seeded random permutations (a new one when all were used, like the
    reference); under torchrun rank r takes the r-th expert of each group of `world` draws.
    """

    def __init__(self, d, store, student: Student, cut: ParamCut | None, seed: int, n_syn: int,
                 image_size: tuple[int, int], layer_ranges=None, rank: int = 0, world: int = 1, log=print):
        self.d, self.store, self.student, self.cut = d, store, student, cut
        self.seed, self.n_syn, self.image_size = seed, n_syn, image_size
        self.layer_ranges = layer_ranges
        self.rank, self.world = rank, world
        self.log = log
        self._perms: dict[int, torch.Tensor] = {}
        self._unroll: str | None = None if d.unroll == "auto" else d.unroll

    def unroll_mode(self, start: torch.Tensor, syn, plan: UnrollPlan) -> str:
        """`distill.unroll`, with `auto` resolved once: `plain` if N steps of the full graph fit in
        `distill.unroll_budget_gib`, else `recompute` (module docstring)."""
        if self._unroll is None:
            d = self.d
            k = max(range(len(plan.batches)), key=lambda i: len(plan.batches[i]))  # the largest step batch
            per_step = self.student.step_graph_bytes(start, syn.images, syn.labels, syn.syn_lr, plan.batches[k],
                                                     plan.draws[k])
            total = per_step * d.syn_steps * PEAK_OVER_GRAPH
            self._unroll = "plain" if total <= d.unroll_budget_gib * 2**30 else "recompute"
            self.log(f"distill: unroll auto -> {self._unroll} (the full graph of {d.syn_steps} steps would peak at "
                     f"~{total / 2**30:.2f} GiB; distill.unroll_budget_gib = {d.unroll_budget_gib:g})")
        return self._unroll

    def expert_for(self, it: int) -> int:
        from padistill.utils.rng import generator

        n = len(self.store)
        j = it * self.world + self.rank
        epoch, pos = divmod(j, n)
        if epoch not in self._perms:
            self._perms = {epoch: torch.randperm(n, generator=generator(self.seed, "tm-expert-order", epoch))}
        return int(self._perms[epoch][pos])

    def step(self, it: int, syn, update) -> dict:
        from padistill.filters.window import sample_start_epoch
        from padistill.utils.rng import generator

        d = self.d
        g = generator(self.seed, "tm-iteration", it, self.rank)
        e = self.expert_for(it)
        t = sample_start_epoch(it, d, g)
        start, target = self.store.pair(e, t, d.expert_epochs, syn.images.device)
        plan = _device_plan(make_plan(self.n_syn, d.batch_syn, d.syn_steps, self.student.augment, self.image_size, g),
                            syn.images.device)
        res = match_trajectory(self.student, start, target, syn.images, syn.labels, syn.syn_lr, plan, self.cut,
                               threshold=d.threshold, mode=self.unroll_mode(start, syn, plan),
                               learn_labels=syn.learn_labels, learn_lr=syn.learn_lr,
                               layer_ranges=self.layer_ranges)
        status = update(res.grads)
        return {"loss": res.loss, "expert": e, "start_epoch": t, "status": status, "per_layer": res.per_layer}
