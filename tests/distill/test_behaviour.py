"""What a trajectory-matching run produces, checked against expectations that do not come from the code under test
(issue 21): an update descends the matching loss, FIEM's cut reaches the matcher in a real run, and a resume from
an earlier checkpoint ends where an uninterrupted run ends."""

import json
import math
import shutil

import pytest
import torch

from helpers import killed_at, tiny_config
from padistill.distill import run_distill
from padistill.experts.storage import expert_path, save_expert
from padistill.utils.io import load_tensors

QUIET = dict(log=lambda *_: None, show_progress=False)


def _skip(_grads):
    return "skipped"


@pytest.mark.parametrize("learned", ["images", "labels", "lr"])
def test_a_tm_update_lowers_the_matching_loss_of_its_batch(tmp_path, tiny_prepared, tiny_experts, learned):
    """Gradient DEscent: one iteration of `run_distill`, then the same iteration (same expert, start epoch,
    mini-batches and DSA draws: all drawn from (seed, iteration)) evaluated again on the result has a lower loss.
    One tensor learns at a time, with a small step, so a flipped sign in any of the three updates shows."""
    from padistill.distill.loop import _initial_set, build_step
    from padistill.distill.synset import SyntheticSet

    lrs = {"images": "distill.lr_images=1", "labels": "distill.lr_labels=1", "lr": "distill.lr_lr=1e-4"}
    cfg = tiny_config("distill.iterations=1", f"distill.learn_labels={learned == 'labels'}",
                      f"distill.learn_lr={learned == 'lr'}", lrs[learned],
                      *(["distill.lr_images=1e-12"] if learned != "images" else []))
    out = run_distill(cfg, tiny_prepared, tmp_path / "d", experts_dir=tiny_experts, **QUIET)

    C = tiny_prepared.num_classes
    step, model, layout, store = build_step(cfg, tiny_prepared, tiny_experts, None, C * 2, 0, 1, QUIET["log"])
    before_set = _initial_set(cfg, tiny_prepared, model, layout, store, QUIET["log"])
    after_set = SyntheticSet(load_tensors(out / "images.pt"), load_tensors(out / "labels.pt"),
                             float(load_tensors(out / "lr.pt")), C, cfg.distill)
    moved = {"images": before_set.images, "labels": before_set.labels, "lr": before_set.syn_lr}[learned]
    assert not torch.equal(moved.detach(), after_set.tensors[learned].detach())  # the learned tensor did move
    before = step(0, before_set, _skip)["loss"]
    after = step(0, after_set, _skip)["loss"]
    assert math.isfinite(before) and after < before, (before, after)


def _noisy_copy(tmp_path, tiny_experts, name: str, first_kept: int):
    """The expert folder with entries [0, first_kept) of every checkpoint after epoch 0 replaced by noise."""
    folder = tmp_path / name
    shutil.copytree(tiny_experts, folder)
    g = torch.Generator().manual_seed(123)
    for k in range(2):
        ck = load_tensors(expert_path(folder, k))
        rows = ck["params"].clone()
        rows[1:, :first_kept] = 10 * torch.randn(rows.shape[0] - 1, first_kept, generator=g)
        save_expert(folder, k, rows, ck["meta"])
    return folder


# Start epoch always 0 (T- = 0, T = T+ = 1) and target epoch 2: the student starts from the intact row 0 (the
# masked entries of the START are the student's initial weights, so they do matter) and is compared with row 2.
# Real images and hard labels: the initialisation reads no expert row.
WINDOW = ("distill.min_start_epoch=0", "distill.current_max_start_epoch=1", "distill.max_start_epoch=1",
          "distill.expert_epochs=2", "distill.image_init=real", "distill.label_init=hard", "distill.iterations=2")


@pytest.mark.parametrize("mode", ["depth", "layer"])
def test_fiem_masked_entries_of_the_targets_do_not_matter_in_a_run(tmp_path, tiny_prepared, tiny_experts, mode):
    """Paper eq. 4: with alpha > 0 the shallowest floor(alpha * P) parameters leave the matching distance, so
    noise there (in every target checkpoint) cannot change what `run_distill` produces; at alpha = 0 it must."""
    from padistill.context import build_net
    from padistill.nets import param_layout

    P = param_layout(build_net(tiny_prepared, seed=0)).total
    alpha = 0.5
    dropped = math.floor(alpha * P)  # depth: the paper's count; layer: a layer boundary at or below it
    if mode == "layer":
        offsets, total = [], 0
        for p in build_net(tiny_prepared, seed=0).parameters():
            offsets.append(total)
            total += p.numel()
        dropped = max(o for o in offsets if o <= dropped)
    assert 0 < dropped < P
    noisy = _noisy_copy(tmp_path, tiny_experts, "noisy", dropped)

    def images(experts, name, ratio):
        cfg = tiny_config(*WINDOW, f"distill.select.ratio={ratio}", f"distill.select.mode={mode}")
        return load_tensors(run_distill(cfg, tiny_prepared, tmp_path / name, experts_dir=experts, **QUIET)
                            / "images.pt")

    assert torch.equal(images(tiny_experts, "clean", alpha), images(noisy, "noisy-run", alpha))
    assert not torch.equal(images(tiny_experts, "clean0", 0.0), images(noisy, "noisy-run0", 0.0))


def test_resume_from_an_earlier_checkpoint_ends_like_an_uninterrupted_run(tmp_path, tiny_prepared, tiny_experts):
    """checkpoint_every = 2, killed at iteration 3: iteration 2 ran and logged but was not checkpointed, so the
    resumed run replays it from the checkpoint of iteration 2. Same bytes, same metric lines (no stale or
    duplicated iteration), same counters as a run that was never killed."""
    extra = ("distill.iterations=6", "distill.checkpoint_every=2")
    cfg = tiny_config(*extra)
    ref = run_distill(cfg, tiny_prepared, tmp_path / "ref", experts_dir=tiny_experts, **QUIET)
    crash = tmp_path / "crash"
    with killed_at(3), pytest.raises(KeyboardInterrupt):
        run_distill(cfg, tiny_prepared, crash, experts_dir=tiny_experts, **QUIET)
    assert load_tensors(crash / "checkpoint.pt")["iteration"] == 2
    lines = lambda p: [json.loads(x) for x in (p / "metrics.jsonl").read_text().splitlines()]  # noqa: E731
    assert [r["it"] for r in lines(crash)] == [0, 1, 2]  # iteration 2 is logged, past the checkpoint
    out = run_distill(cfg, tiny_prepared, crash, experts_dir=tiny_experts, **QUIET)

    m, m_ref = (json.loads((p / "manifest.json").read_text()) for p in (out, ref))
    assert m["outputs"] == m_ref["outputs"] and {"images.pt", "labels.pt", "lr.pt"} <= set(m["outputs"])
    for f in m["outputs"]:
        assert (out / f).read_bytes() == (ref / f).read_bytes(), f
    assert m["counters"] == m_ref["counters"] and m["counters"]["applied"] == 6
    strip = lambda p: [{k: v for k, v in r.items() if k != "seconds"} for r in lines(p)]  # noqa: E731
    assert [r["it"] for r in lines(out)] == list(range(6))
    assert strip(out) == strip(ref)
    # the final checkpoint holds the same state (its pickle may share strings differently: not an output)
    _assert_same(load_tensors(out / "checkpoint.pt"), load_tensors(ref / "checkpoint.pt"))


def _assert_same(a, b, where="checkpoint"):
    assert type(a) is type(b), where
    if isinstance(a, dict):
        assert list(a) == list(b), where
        for k in a:
            _assert_same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same(x, y, f"{where}[{i}]")
    elif isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and torch.equal(a, b), where
    else:
        assert a == b, where
