"""Seconds per distillation iteration and peak RSS of the unrolled student (issue 7 benchmark).

    python -m benchmarks.bench_distill                # all cases, each in its own process
    python -m benchmarks.bench_distill --quick        # fewer repetitions
    python -m benchmarks.bench_distill --native       # add the same cases with PyTorch's own layers (A/B)
    python -m benchmarks.bench_distill --microbatch 50  # student micro-batch (distill.microbatch)
    python -m benchmarks.bench_distill --reference      # add the reference's way, same run (see below)

CIFAR-10-shaped data (3x32x32, 10 classes), ConvNet-3 width 128 (P = 320,010), DSA on every step,
soft labels, the PAD depth cut at alpha = 0.25. The expert pair is random: the cost of an iteration
does not depend on the values. Cases: IPC 1 / syn_steps 80, IPC 10 / syn_steps 20 and 80, each with
the `plain` full-graph unroll (what the reference does) and the bounded-memory `recompute` unroll.
Reference implementation on a quiet 2-core machine (issue 7): 9.1 s / 7.5 GiB, 26.3 s / 9.8 GiB,
does not fit in 24 GiB (~105 s).

Also printed: the convolution/linear FLOPs of one iteration and the share of this machine's matmul peak
(measured in the same run) that the iteration reaches. Per student step and image the net costs F
FLOPs forward; the plain unroll does ~7F (forward 1, first backward 2, double backward 4: two
convolutions for the gradient's gradient, one for the input, one for the weights) and the bounded-memory
unroll ~10F (plus the graph-free forward and backward of the first pass). This is the floor no
implementation of exact trajectory matching can go below on this machine.

`--reference` also times, in the same run and in its own process, the reference's way for each
(IPC, syn_steps): the plain unroll over the whole step batch at once (no micro-batches), PyTorch's own
GroupNorm, Conv2d and AvgPool2d, glibc's default allocator. The speed-up column then divides by that
time instead of issue 7's figure, so the machine's drift cancels. IPC 10 / 80 steps is not run that way
(its graph needs ~28 GiB, as the reference's does): its column uses 4x the IPC 10 / 20-step time, the
same estimate issue 7 makes.
"""

from __future__ import annotations

import argparse
import json

import torch

from benchmarks.common import banner, matmul_gflops, peak_rss_gib, run_isolated, timed

CASES = [
    {"ipc": 1, "steps": 80, "mode": "plain"},
    {"ipc": 1, "steps": 80, "mode": "recompute"},
    {"ipc": 10, "steps": 20, "mode": "plain"},
    {"ipc": 10, "steps": 20, "mode": "recompute"},
    {"ipc": 10, "steps": 80, "mode": "recompute"},
]
REFERENCE = {(1, 80): 9.1, (10, 20): 26.3, (10, 80): 105.0}
PASSES = {"plain": 7, "recompute": 10}  # forward-equivalents per image and step (module docstring)


def forward_flops(model, shape) -> int:
    """Multiply-add FLOPs (x2) of the convolutions and linear layers for one input of `shape`."""
    total = [0]

    def hook(m, inp, out):
        if isinstance(m, torch.nn.Conv2d):
            k = m.in_channels // m.groups * m.kernel_size[0] * m.kernel_size[1]
            total[0] += 2 * k * out[0].numel()
        elif isinstance(m, torch.nn.Linear):
            total[0] += 2 * m.in_features * m.out_features

    hs = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    with torch.no_grad():
        model(torch.zeros(1, *shape))
    for h in hs:
        h.remove()
    return total[0]


def run_case(case: dict, reps: int) -> dict:
    import os

    from padistill.augment import DSA
    from padistill.filters.params import param_cut
    from padistill.match.trajectory import Student, make_plan, match_trajectory
    from padistill.nets import build, param_layout
    from padistill.nets.common import NATIVE_ENVS
    from padistill.utils.rng import generator

    reference = case.get("reference", False)
    os.environ.update({k: "1" if case.get("native") or reference else "0" for k in NATIVE_ENVS})
    if case.get("tune_malloc", True) and not reference:
        from padistill.utils.allocator import tune_cpu_allocator

        tune_cpu_allocator()  # what run_distill does on the CPU
    torch.manual_seed(0)
    model = build("convnet", num_classes=10, channels=3, im_size=(32, 32), seed=0)
    layout = param_layout(model)
    start = layout.flatten([p.detach() for p in model.parameters()])
    target = start + 0.01 * torch.randn_like(start)
    n = 10 * case["ipc"]
    images, labels = torch.randn(n, 3, 32, 32), torch.randn(n, 10)
    lr = torch.tensor(0.01)
    aug = DSA()
    # the reference's way: the whole step batch at once
    student = Student(model, layout, aug, microbatch=None if reference else case.get("microbatch", 25))
    cut = param_cut(layout.total, 0.25)
    it = [0]

    def one():
        plan = make_plan(n, None, case["steps"], aug, (32, 32), generator(0, "bench", it[0]))
        it[0] += 1
        match_trajectory(student, start, target, images, labels, lr, plan, cut, mode=case["mode"])

    res = timed(one, warmup=1, reps=reps)
    gflop = PASSES[case["mode"]] * forward_flops(model, (3, 32, 32)) * n * case["steps"] / 1e9
    return {**case, **res, "gflop": round(gflop, 1), "peak_rss_gib": round(peak_rss_gib(), 2)}


def _print_row(r: dict, layers: str, ref: float | None, peak: float) -> None:
    """One table row: a case result from `run_case` (or its error); `ref` None leaves the ratio columns empty."""
    head = f"{r['ipc']:>4} {r['steps']:>5} {r['mode']:>10} {layers:>7}"
    if "error" in r:
        print(f"{head}  error: {r['error']}")
        return
    floor = r["gflop"] / peak
    ratio = f"{'':>7} {'':>8}" if ref is None else f"{ref:7.1f} {ref / r['median_s']:7.2f}x"
    print(f"{head} {r['median_s']:8.2f} {ratio} {r['gflop']:7.0f} {floor:7.2f} {100 * floor / r['median_s']:6.0f} "
          f"{r['peak_rss_gib']:8.2f} {r['load']:5.2f}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--case")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--native", action="store_true",
                    help="also run every case with PyTorch's own GroupNorm/Conv2d/AvgPool2d (A/B)")
    ap.add_argument("--microbatch", type=int, default=25, help="student micro-batch (distill.microbatch)")
    ap.add_argument("--no-malloc-tune", action="store_true",
                    help="leave glibc's allocator thresholds alone (the distill stage raises them on the CPU)")
    ap.add_argument("--reference", action="store_true",
                    help="also time the reference's way in the same run (plain unroll, whole batch, native layers, "
                         "glibc defaults) and divide by it")
    ap.add_argument("--only", help="run only the cases whose 'ipc/steps/mode' contains this text, e.g. 10/20/")
    args = ap.parse_args()
    if args.case:
        case = json.loads(args.case)
        print(json.dumps(run_case(case, case.pop("reps", args.reps))))
        return
    peak = matmul_gflops()
    banner("distillation iteration (trajectory matching)", matmul_gflops=round(peak, 1),
           model="ConvNet-3 w128, 3x32x32, 10 classes", dsa=True, alpha=0.25, microbatch=args.microbatch,
           malloc_tuned=not args.no_malloc_tune, reference="same run" if args.reference else "issue 7 figures")
    print(f"{'ipc':>4} {'steps':>5} {'mode':>10} {'layers':>7} {'s/iter':>8} {'ref s':>7} {'speed-up':>8} "
          f"{'GFLOP':>7} {'floor s':>7} {'% peak':>6} {'peak GiB':>8} {'load':>5}")
    same_run: dict[tuple[int, int], float] = {}
    for case in CASES:
        if args.only and args.only not in f"{case['ipc']}/{case['steps']}/{case['mode']}":
            continue
        key = (case["ipc"], case["steps"])
        if args.reference and key not in same_run:
            if key == (10, 80):
                if (10, 20) in same_run:
                    same_run[key] = 4 * same_run[(10, 20)]
                    print(f"{10:>4} {80:>5} {'plain':>10} {'ref.way':>7}  not run (~28 GiB); estimated "
                          f"{same_run[key]:.1f} s = 4 x the 20-step time")
            else:
                c = {"ipc": key[0], "steps": key[1], "mode": "plain", "reference": True,
                     "reps": 1 if args.quick else args.reps}
                r = run_isolated("benchmarks.bench_distill", c)
                _print_row(r, "ref.way", None, peak)
                if "error" not in r:
                    same_run[key] = r["median_s"]
        for native in ([False, True] if args.native else [False]):
            c = {**case, "native": native, "microbatch": args.microbatch, "reps": 1 if args.quick else args.reps,
                 "tune_malloc": not args.no_malloc_tune}
            ref = same_run.get(key) if args.reference else REFERENCE.get(key)
            _print_row(run_isolated("benchmarks.bench_distill", c), "native" if native else "fast",
                       float("nan") if ref is None else ref, peak)


if __name__ == "__main__":
    main()
