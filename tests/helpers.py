"""Helpers shared by tests: a tiny end-to-end config (digits, narrow ConvNet) and a real expert folder."""

from __future__ import annotations

from pathlib import Path

TINY_OVERRIDES = [
    "data.name=digits", "data.preprocess=zca", "net.name=convnet-2", "net.options={width: 8}",
    "experts.num=2", "experts.epochs=4", "experts.optimizer=sgd", "experts.schedule.enabled=false",
    "experts.batch=128", "distill.ipc=2", "distill.iterations=3", "distill.syn_steps=3",
    "distill.expert_epochs=1", "distill.min_start_epoch=0", "distill.current_max_start_epoch=2",
    "distill.max_start_epoch=3", "distill.expansion_end_iteration=2", "distill.batch_syn=10",
    "distill.checkpoint_every=1", "distill.grid_every=0", "distill.lr_images=10",
    "distill.threshold=.inf", "eval.epochs=2", "eval.runs=1", "device=cpu",
]


def tiny_config(*extra: str):
    from padistill.config import load_config

    return load_config(preset="pad", overrides=[*TINY_OVERRIDES, *extra])


def killed_at(iteration: int):
    """Context manager: trajectory matching raises KeyboardInterrupt (like Ctrl-C / a kill between checkpoints)
    when it reaches `iteration`; the real step is back on exit."""
    import contextlib

    from padistill.match import trajectory

    @contextlib.contextmanager
    def patched():
        real_step = trajectory.TrajectoryMatcher.step

        def crashing_step(self, it, syn, update):
            if it == iteration:
                raise KeyboardInterrupt
            return real_step(self, it, syn, update)

        trajectory.TrajectoryMatcher.step = crashing_step
        try:
            yield
        finally:
            trajectory.TrajectoryMatcher.step = real_step

    return patched()


def write_expert_folder(folder: Path, prepared, cfg, epochs: int, num: int) -> Path:
    """Real (short) SGD trajectories saved in the experts folder format, without the experts stage."""
    import torch

    from padistill.config import dump_yaml
    from padistill.context import build_net
    from padistill.experts.storage import LAYOUT_FILE, save_expert
    from padistill.nets import param_layout
    from padistill.training import train_epoch
    from padistill.utils.io import atomic_write_json
    from padistill.utils.manifest import StageDir
    from padistill.utils.rng import generator

    stage = StageDir(folder, "experts", {"test": "fixture", "epochs": epochs, "num": num}, {}, cfg.seed,
                     dump_yaml(cfg))
    stage.begin(overwrite=True)
    for k in range(num):
        model = build_net(prepared, seed=100 + k)
        layout = param_layout(model)
        opt = torch.optim.SGD(model.parameters(), lr=0.01)
        g = generator(cfg.seed, "fixture-expert", k)
        rows = [layout.flatten([p.detach() for p in model.parameters()])]
        for _ in range(epochs):
            train_epoch(model, opt, prepared.x_train, prepared.y_train, batch=128, generator=g)
            rows.append(layout.flatten([p.detach() for p in model.parameters()]))
        save_expert(folder, k, torch.stack(rows), {"seed": 100 + k})
    atomic_write_json(folder / LAYOUT_FILE, {"names": list(layout.names), "shapes": [list(s) for s in layout.shapes]})
    stage.complete()
    return folder


def student_double_backward(model, layout, theta0, x0, y0, v) -> list:
    """What match/trajectory.py computes for one micro-batch: g = dL/dtheta with create_graph (soft labels,
    summed loss / batch), then d(g . v)/d(theta, x, labels). Returns [g, and those three]."""
    import torch

    from padistill.losses import soft_cross_entropy

    th, x, y = (t.clone().requires_grad_(True) for t in (theta0, x0, y0))
    loss = soft_cross_entropy(layout.functional_forward(model, th, x), y, reduction="sum") / len(x0)
    (gth,) = torch.autograd.grad(loss, th, create_graph=True)
    return [gth.detach(), *torch.autograd.grad(torch.dot(gth, v), [th, x, y])]
