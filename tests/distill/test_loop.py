"""The distillation loop: outputs, resume, gating, divergence handling, manifests (issue 4)."""

import json

import pytest
import torch

from helpers import killed_at, tiny_config
from padistill.distill import run_distill
from padistill.errors import PadistillError
from padistill.utils.io import load_tensors

QUIET = dict(log=lambda *_: None, show_progress=False)


def run(tmp, prepared, experts, *extra, name="d"):
    cfg = tiny_config(*extra)
    return run_distill(cfg, prepared, tmp / name, experts_dir=experts, **QUIET)


def test_outputs_have_the_documented_format(tmp_path, tiny_prepared, tiny_experts):  # §8.24
    out = run(tmp_path, tiny_prepared, tiny_experts)
    images, labels, lr = (load_tensors(out / f) for f in ("images.pt", "labels.pt", "lr.pt"))
    C = tiny_prepared.num_classes
    assert images.dtype == torch.float32 and images.shape == (C * 2, 1, 8, 8)
    assert labels.dtype == torch.float32 and labels.shape == (C * 2, C)
    assert lr.dtype == torch.float32 and lr.ndim == 0 and float(lr) > 0
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["it"] for r in lines] == [0, 1, 2]
    assert {"loss", "lr", "per_layer", "seconds", "status", "expert", "start_epoch"} <= set(lines[0])
    m = json.loads((out / "manifest.json").read_text())
    assert m["status"] == "complete" and m["stage"] == "distill" and "images.pt" in m["outputs"]
    assert (out / "grid_final.png").is_file() and (out / "preprocess.pt").is_file()


def test_same_seed_same_bytes_and_reuse(tmp_path, tiny_prepared, tiny_experts):
    a = run(tmp_path, tiny_prepared, tiny_experts, name="a")
    b = run(tmp_path, tiny_prepared, tiny_experts, name="b")
    for f in ("images.pt", "labels.pt", "lr.pt"):
        assert torch.equal(load_tensors(a / f), load_tensors(b / f))
    mtime = (a / "images.pt").stat().st_mtime_ns
    run(tmp_path, tiny_prepared, tiny_experts, name="a")  # complete + same key: reused, not recomputed
    assert (a / "images.pt").stat().st_mtime_ns == mtime
    with pytest.raises(PadistillError, match="different distill run"):
        run(tmp_path, tiny_prepared, tiny_experts, "distill.lr_images=11", name="a")


def test_resume_after_crash_is_bit_identical(tmp_path, tiny_prepared, tiny_experts):
    extra = ("distill.iterations=6",)
    ref = run(tmp_path, tiny_prepared, tiny_experts, *extra, name="ref")

    with killed_at(4), pytest.raises(KeyboardInterrupt):
        run(tmp_path, tiny_prepared, tiny_experts, *extra, name="crash")
    assert load_tensors(tmp_path / "crash" / "checkpoint.pt")["iteration"] == 4
    out = run(tmp_path, tiny_prepared, tiny_experts, *extra, name="crash")
    for f in ("images.pt", "labels.pt", "lr.pt"):
        assert torch.equal(load_tensors(out / f), load_tensors(ref / f)), f
    strip = lambda p: [{k: v for k, v in json.loads(x).items() if k != "seconds"}  # noqa: E731
                       for x in (p / "metrics.jsonl").read_text().splitlines()]
    assert strip(out) == strip(ref)


def test_killed_before_the_first_checkpoint_starts_clean(tmp_path, tiny_prepared, tiny_experts):
    """No checkpoint yet: the re-run starts at iteration 0, so the killed attempt's metric lines and half-written
    temp files must go (they used to stay: duplicated iterations in metrics.jsonl and the report)."""
    extra = ("distill.iterations=4", "distill.checkpoint_every=100")
    ref = run(tmp_path, tiny_prepared, tiny_experts, *extra, name="ref")

    with killed_at(3), pytest.raises(KeyboardInterrupt):
        run(tmp_path, tiny_prepared, tiny_experts, *extra, name="crash")
    crash = tmp_path / "crash"
    assert not (crash / "checkpoint.pt").exists() and len((crash / "metrics.jsonl").read_text().splitlines()) == 3
    (crash / ".checkpoint.pt.abcd1234.tmp").write_bytes(b"half a checkpoint")  # as a SIGKILL mid-write leaves it
    out = run(tmp_path, tiny_prepared, tiny_experts, *extra, name="crash")
    assert [json.loads(x)["it"] for x in (out / "metrics.jsonl").read_text().splitlines()] == [0, 1, 2, 3]
    assert not list(out.glob(".*.tmp"))
    m, m_ref = (json.loads((p / "manifest.json").read_text()) for p in (out, ref))
    assert "preprocess.pt" in m["outputs"] and m["outputs"] == m_ref["outputs"]  # the same files, the same bytes


def test_threshold_zero_skips_every_update(tmp_path, tiny_prepared, tiny_experts):
    out = run(tmp_path, tiny_prepared, tiny_experts, "distill.threshold=0.0")
    ck = load_tensors(out / "checkpoint.pt")
    assert ck["counters"]["skipped"] == 3 and ck["counters"]["applied"] == 0
    from padistill.distill.init import init_images

    cfg = tiny_config()
    # images never moved: they equal the initialisation (a random-real fill for these weak experts)
    from padistill.context import build_net
    from padistill.experts.storage import ExpertStore
    from padistill.nets import param_layout

    model = build_net(tiny_prepared, seed=0)
    init, _ = init_images(tiny_prepared, 2, "correct", cfg.seed, experts=ExpertStore(tiny_experts), model=model,
                          layout=param_layout(model), log=lambda *_: None)
    assert torch.equal(load_tensors(out / "images.pt"), init)


def test_divergence_stops_with_a_clear_message(tmp_path, tiny_prepared, tiny_experts):
    with pytest.raises(PadistillError, match="consecutive non-finite"):
        run(tmp_path, tiny_prepared, tiny_experts, "distill.lr_images=1.0e+38", "distill.iterations=30",
            "distill.max_bad_steps=2")


def test_learned_lr_never_goes_negative(tiny_prepared):
    from padistill.distill.synset import LR_FLOOR, SyntheticSet

    cfg = tiny_config("distill.lr_lr=1.0")
    syn = SyntheticSet(torch.zeros(20, 1, 8, 8), torch.zeros(20, 10), 0.01, 10, cfg.distill)
    grads = {"images": torch.zeros(20, 1, 8, 8), "labels": torch.zeros(20, 10), "lr": torch.tensor(5.0)}
    assert syn.apply(grads) == "applied"
    assert float(syn.syn_lr.detach()) >= LR_FLOOR and syn.lr_clamped == 1
    grads["lr"] = torch.tensor(float("nan"))
    assert syn.apply(grads) == "nonfinite" and float(syn.syn_lr.detach()) >= LR_FLOOR


def test_missing_experts_folder_is_a_clear_error(tmp_path, tiny_prepared):
    with pytest.raises(PadistillError, match="manifest"):
        run(tmp_path, tiny_prepared, tmp_path / "nothing")
