"""Seconds per distillation iteration and peak RSS of the unrolled student (issue 7 benchmark).

    python -m benchmarks.bench_distill                # all cases, each in its own process
    python -m benchmarks.bench_distill --quick        # fewer repetitions

CIFAR-10-shaped data (3x32x32, 10 classes), ConvNet-3 width 128 (P = 320,010), DSA on every step,
soft labels, the PAD depth cut at alpha = 0.25. The expert pair is random: the cost of an iteration
does not depend on the values. Cases: IPC 1 / syn_steps 80, IPC 10 / syn_steps 20 and 80, each with
the `plain` full-graph unroll (what the reference does) and the bounded-memory `recompute` unroll.
Reference implementation on a quiet 2-core machine (issue 7): 9.1 s / 7.5 GiB, 26.3 s / 9.8 GiB,
does not fit in 24 GiB (~105 s).
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


def run_case(case: dict, reps: int) -> dict:
    from padistill.augment import DSA
    from padistill.filters.params import param_cut
    from padistill.match.trajectory import Student, make_plan, match_trajectory
    from padistill.nets import build, param_layout
    from padistill.utils.rng import generator

    torch.manual_seed(0)
    model = build("convnet", num_classes=10, channels=3, im_size=(32, 32), seed=0)
    layout = param_layout(model)
    start = layout.flatten([p.detach() for p in model.parameters()])
    target = start + 0.01 * torch.randn_like(start)
    n = 10 * case["ipc"]
    images, labels = torch.randn(n, 3, 32, 32), torch.randn(n, 10)
    lr = torch.tensor(0.01)
    aug = DSA()
    student = Student(model, layout, aug, microbatch=case.get("microbatch", 25))
    cut = param_cut(layout.total, 0.25)
    it = [0]

    def one():
        plan = make_plan(n, None, case["steps"], aug, (32, 32), generator(0, "bench", it[0]))
        it[0] += 1
        match_trajectory(student, start, target, images, labels, lr, plan, cut, mode=case["mode"])

    res = timed(one, warmup=1, reps=reps)
    return {**case, **res, "peak_rss_gib": round(peak_rss_gib(), 2)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--case")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    if args.case:
        case = json.loads(args.case)
        print(json.dumps(run_case(case, case.pop("reps", args.reps))))
        return
    peak = matmul_gflops()
    banner("distillation iteration (trajectory matching)", matmul_gflops=round(peak, 1),
           model="ConvNet-3 w128, 3x32x32, 10 classes", dsa=True, alpha=0.25)
    print(f"{'ipc':>4} {'steps':>5} {'mode':>10} {'s/iter':>8} {'ref s':>7} {'speed-up':>8} "
          f"{'peak GiB':>8} {'load':>5}")
    for case in CASES:
        r = run_isolated("benchmarks.bench_distill", {**case, "reps": 1 if args.quick else args.reps})
        if "error" in r:
            print(f"{case['ipc']:>4} {case['steps']:>5} {case['mode']:>10}  error: {r['error']}")
            continue
        ref = REFERENCE.get((case["ipc"], case["steps"]))
        print(f"{r['ipc']:>4} {r['steps']:>5} {r['mode']:>10} {r['median_s']:8.2f} {ref:7.1f} "
              f"{ref / r['median_s']:7.2f}x {r['peak_rss_gib']:8.2f} {r['load']:5.2f}")


if __name__ == "__main__":
    main()
