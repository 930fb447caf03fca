"""The experts stage: buffer layout (spec §8.6), the scheduler in the loop, storage options, reuse, errors."""

import json
import math

import pytest
import torch

import helpers
from padistill.errors import PadistillError
from padistill.experts import ExpertStore, run_experts
from padistill.experts.train import expert_seeds

QUIET = dict(log=lambda *_: None, show_progress=False)
SCHEDULE = ("experts.schedule.enabled=true", "experts.schedule.init_ratio=0.5", "experts.schedule.add_end_epoch=2",
            "experts.schedule.rm_epoch_first=2", "experts.schedule.rm_easy_ratio_first=0.25",
            "experts.schedule.rm_epoch_second=3", "experts.schedule.rm_easy_ratio_second=0.5")


def tiny_config(*extra):
    """The shared tiny config with a start window that allows 2-epoch experts."""
    return helpers.tiny_config("distill.current_max_start_epoch=1", "distill.max_start_epoch=2", *extra)


@pytest.fixture(scope="module")
def scores_dir(tmp_path_factory, tiny_prepared):
    from padistill.scores import run_scores

    cfg = tiny_config("scores.models=1", "scores.epochs=1", "scores.batch=128")
    return run_scores(cfg, tiny_prepared, tmp_path_factory.mktemp("scores"), **QUIET)


def paper_columns(epoch: int, K: int) -> tuple[int, int]:
    """Paper §3.2 / spec §1.5 for the SCHEDULE above (IR 0.5, AEE 2, R1 2, r1 0.25, R2 3, r2 0.5), written out
    here rather than taken from `filters.schedule`: e <= AEE the first floor(p*K) columns (easiest first),
    p = min(1, IR + (1-IR) e/AEE); AEE < e <= R1 all; R1 < e <= R2 without the first floor(r1*K); then without
    the first floor(r2*K)."""
    if epoch <= 2:
        return 0, math.floor(min(1.0, 0.5 + 0.5 * epoch / 2) * K)
    return (math.floor(0.25 * K), K) if epoch <= 3 else (math.floor(0.5 * K), K)


@pytest.fixture(scope="module")
def scheduled(tmp_path_factory, tiny_prepared, scores_dir):
    """Two scheduled experts; also records the `indices` every training epoch was given."""
    import padistill.training

    cfg = tiny_config(*SCHEDULE, "experts.epochs=5", "experts.num=2")
    seen = []
    real = padistill.training.train_epoch

    def recording(*args, indices=None, **kwargs):
        seen.append(None if indices is None else indices.detach().cpu().clone())
        return real(*args, indices=indices, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(padistill.training, "train_epoch", recording)
        out = run_experts(cfg, tiny_prepared, tmp_path_factory.mktemp("experts"), scores_dir=scores_dir, **QUIET)
    return cfg, out, seen


def test_buffer_layout_and_checkpoint_zero_is_the_initialisation(scheduled, tiny_prepared):
    """§8.6: E+1 checkpoints per expert; shapes = the net's parameters in order; row 0 = init; rows differ."""
    from padistill.context import build_net
    from padistill.nets import count_params, param_layout

    cfg, out, _ = scheduled
    store = ExpertStore(out)
    assert len(store) == 2 and store.epochs == 5
    model = build_net(tiny_prepared, seed=expert_seeds(cfg.seed, 0)[0])
    layout = param_layout(model)
    assert list(store.layout.names) == [n for n, _ in model.named_parameters()]
    assert [tuple(s) for s in store.layout.shapes] == [tuple(p.shape) for p in model.parameters()]
    assert store.layout.total == count_params(model)
    for i in range(2):
        rows = store.trajectory(i)
        assert rows.shape == (6, layout.total) and rows.dtype == torch.float32
        for e in range(5):
            assert not torch.equal(rows[e], rows[e + 1])
    assert torch.equal(store.checkpoint(0, 0), layout.flatten([p.detach() for p in model.parameters()]))
    assert not torch.equal(store.checkpoint(0, 0), store.checkpoint(1, 0))  # independent initialisations
    start, target = store.pair(1, 2, 3)
    assert torch.equal(start, store.checkpoint(1, 2)) and torch.equal(target, store.checkpoint(1, 5))


def test_each_epoch_trains_on_the_easiest_first_columns_of_the_ordering(scheduled, scores_dir):
    """FIEX: expert k's epoch e sees exactly the paper's columns of the scores folder's ordering (column 0 =
    easiest): the easy samples first, the hard ones added last, the easiest removed at the end."""
    _, _, seen = scheduled
    ordering = torch.load(scores_dir / "ordering.pt", weights_only=True)
    C, K = ordering.shape
    assert len(seen) == 2 * 5  # 2 experts x 5 epochs, in order
    for j, got in enumerate(seen):
        a, b = paper_columns(j % 5, K)
        want = ordering[:, a:b].reshape(-1)
        assert got is not None and torch.equal(got.sort().values, want.sort().values), f"epoch {j % 5}"


def test_scheduler_sizes_are_logged_in_meta_metrics_and_manifest(scheduled, scores_dir):
    cfg, out, _ = scheduled
    K = torch.load(scores_dir / "ordering.pt", weights_only=True).shape[1]
    expected = [10 * (b - a) for a, b in (paper_columns(e, K) for e in range(5))]
    assert expected[0] == 10 * (K // 2) and expected[2] == 10 * K and expected[3] < expected[2]
    store = ExpertStore(out)
    for i in range(2):
        meta = store.meta(i)
        assert meta["train_size"] == expected and len(meta["test_acc"]) == 5
        assert all(0 <= a <= 1 for a in meta["test_acc"])
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [(r["expert"], r["epoch"]) for r in lines] == [(k, e) for k in range(2) for e in range(1, 6)]
    assert [r["train_size"] for r in lines[:5]] == expected
    m = json.loads((out / "manifest.json").read_text())
    assert m["status"] == "complete" and m["train_size_per_epoch"] == expected and m["num"] == 2
    assert m["inputs"]["scores"] == json.loads((scores_dir / "manifest.json").read_text())["key"]
    assert not (out / "partial").exists()


def test_an_expert_does_not_depend_on_the_others(tmp_path, scheduled, tiny_prepared, scores_dir):
    cfg, out, _ = scheduled
    one = run_experts(tiny_config(*SCHEDULE, "experts.epochs=5", "experts.num=1"), tiny_prepared, tmp_path / "one",
                      scores_dir=scores_dir, **QUIET)
    assert torch.equal(ExpertStore(one).trajectory(0), ExpertStore(out).trajectory(0))


def test_reuse_refuse_and_overwrite(tmp_path, tiny_prepared):
    cfg = tiny_config("experts.epochs=2", "experts.num=1")
    out = run_experts(cfg, tiny_prepared, tmp_path / "e", **QUIET)
    logs = []
    before = (out / "expert_0000.pt").stat().st_mtime_ns
    run_experts(cfg, tiny_prepared, out, log=logs.append, show_progress=False)
    assert any("reusing" in line for line in logs) and (out / "expert_0000.pt").stat().st_mtime_ns == before
    other = tiny_config("experts.epochs=3", "experts.num=1")
    with pytest.raises(PadistillError, match="different experts run"):
        run_experts(other, tiny_prepared, out, **QUIET)
    run_experts(other, tiny_prepared, out, overwrite=True, **QUIET)
    assert ExpertStore(out).epochs == 3


def test_gsam_fp16_storage_and_eval_every(tmp_path, tiny_prepared):
    cfg = tiny_config("experts.epochs=3", "experts.num=1", "experts.optimizer=gsam", "experts.save_dtype=float16",
                      "experts.eval_every=2")
    out = run_experts(cfg, tiny_prepared, tmp_path / "e", **QUIET)
    store = ExpertStore(out)
    assert store.dtype == torch.float16 and store.checkpoint(0, -1).dtype == torch.float32
    acc = store.meta(0)["test_acc"]
    assert acc[0] is None and acc[1] is not None and acc[2] is not None  # every 2 epochs, and after the last
    f32 = run_experts(tiny_config("experts.epochs=3", "experts.num=1", "experts.optimizer=gsam"), tiny_prepared,
                      tmp_path / "f32", **QUIET)
    assert torch.equal(store.trajectory(0), ExpertStore(f32).trajectory(0).half())  # storage only rounds


def test_scheduler_needs_a_matching_scores_folder(tmp_path, tiny_prepared, balanced_npz_scores):
    cfg = tiny_config(*SCHEDULE, "experts.epochs=2", "experts.num=1")
    with pytest.raises(PadistillError, match="needs --scores DIR"):
        run_experts(cfg, tiny_prepared, tmp_path / "a", **QUIET)
    with pytest.raises(PadistillError, match="other training data"):
        run_experts(cfg, tiny_prepared, tmp_path / "b", scores_dir=balanced_npz_scores, **QUIET)
    with pytest.raises(PadistillError, match="no manifest.json"):
        run_experts(cfg, tiny_prepared, tmp_path / "c", scores_dir=tmp_path, **QUIET)


def test_a_schedule_that_empties_a_class_fails_before_training(tmp_path, tiny_prepared, scores_dir):
    cfg = tiny_config(*SCHEDULE, "experts.epochs=5", "experts.num=1", "experts.schedule.rm_easy_ratio_second=1.0")
    with pytest.raises(PadistillError, match="leaves none"):
        run_experts(cfg, tiny_prepared, tmp_path / "e", scores_dir=scores_dir, **QUIET)
    assert not (tmp_path / "e").exists()


@pytest.fixture(scope="module")
def balanced_npz_scores(tmp_path_factory):
    """A finished scores folder of ANOTHER dataset (random images) for the mismatch test."""
    import numpy as np

    from padistill.config import load_config
    from padistill.context import prepare
    from padistill.scores import run_scores

    root = tmp_path_factory.mktemp("other")
    rng = np.random.default_rng(0)
    np.savez(root / "d.npz", x_train=rng.integers(0, 256, (40, 8, 8, 1), dtype=np.uint8),
             y_train=np.arange(40) % 10, x_test=rng.integers(0, 256, (10, 8, 8, 1), dtype=np.uint8),
             y_test=np.arange(10))
    cfg = load_config(preset="pad", overrides=[
        "data.name=npz", f"data.options={{path: '{root / 'd.npz'}'}}", "data.preprocess=normalize", "device=cpu",
        "net.name=convnet-2", "net.options={width: 8}", "scores.models=1", "scores.epochs=1"])
    return run_scores(cfg, prepare(cfg, log=lambda *_: None), root / "scores", **QUIET)


def test_static_prune_trains_every_epoch_on_the_kept_columns(tmp_path, tiny_prepared, scores_dir):
    """Fig. 2's TM panel: experts.prune removes the hardest (or easiest) share of every class for ALL epochs
    (no scheduler): epoch e sees columns [0, K - floor(r K)) for hard, [floor(r K), K) for easy."""
    import padistill.training

    ordering = torch.load(scores_dir / "ordering.pt", weights_only=True)
    C, K = ordering.shape
    for mode, (a, b) in {"hard": (0, K - math.floor(0.3 * K)), "easy": (math.floor(0.3 * K), K)}.items():
        cfg = tiny_config("experts.schedule.enabled=false", f"experts.prune.mode={mode}", "experts.prune.ratio=0.3",
                          "experts.epochs=2", "experts.num=1")
        seen = []

        def recording(*args, indices=None, _seen=seen, _real=padistill.training.train_epoch, **kwargs):
            _seen.append(indices.detach().cpu().clone())
            return _real(*args, indices=indices, **kwargs)

        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(padistill.training, "train_epoch", recording)
            run_experts(cfg, tiny_prepared, tmp_path / mode, scores_dir=scores_dir, **QUIET)
        want = ordering[:, a:b].reshape(-1).sort().values
        assert len(seen) == 2 and all(torch.equal(s.sort().values, want) for s in seen), mode


def test_static_prune_keys_the_stage_and_needs_scores(tmp_path, tiny_prepared):
    from padistill.experts.train import experts_settings
    from padistill.pipeline import needs_scores

    plain = tiny_config("experts.schedule.enabled=false")
    pruned = tiny_config("experts.schedule.enabled=false", "experts.prune.mode=hard", "experts.prune.ratio=0.3")
    assert "prune" not in experts_settings(plain)["experts"]  # folders made before the option keep their key
    assert experts_settings(pruned)["experts"]["prune"] == {"mode": "hard", "ratio": 0.3}
    assert not needs_scores(plain) and needs_scores(pruned)
    with pytest.raises(PadistillError, match="experts.prune.mode=hard.*--scores"):
        run_experts(pruned, tiny_prepared, tmp_path / "x", **QUIET)
    with pytest.raises(PadistillError, match="experts.prune"):
        tiny_config("distill.method=dm", "experts.prune.mode=easy", "experts.prune.ratio=0.2")
