"""SRe2L stages (squeeze, recover) and the relabel evaluation protocol, on the tiny digits data."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from padistill.errors import PadistillError

QUIET = {"log": lambda *_: None, "show_progress": False}
TINY = ["data.name=digits", "data.preprocess=normalize", "net.name=convnet-2-bn", "net.options={width: 8}",
        "distill.method=sre2l", "distill.ipc=2", "sre2l.recover_ipc=3", "sre2l.squeeze_epochs=2",
        "sre2l.iterations=6", "experts.schedule.enabled=false", "eval.protocol=sre2l", "eval.nets=[convnet-2-bn]",
        "eval.epochs=2", "eval.runs=1", "scores.models=1", "scores.epochs=1", "device=cpu"]


def config(*extra: str):
    from padistill.config import load_config

    return load_config(preset="sre2l/cifar10-ipc10", overrides=[*TINY, *extra])


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    import os

    os.environ.setdefault("PADISTILL_CACHE", str(tmp_path_factory.mktemp("cache")))
    from padistill.context import prepare

    return prepare(config(), log=lambda *_: None)


@pytest.fixture(scope="module")
def squeezed(tmp_path_factory, prepared):
    from padistill.sre2l import run_squeeze

    return run_squeeze(config(), prepared, tmp_path_factory.mktemp("sq") / "squeeze", **QUIET)


# ------------------------------------------------------------------------------------------ the BN term


def test_bn_statistics_loss_equals_a_hand_computation():
    from padistill.sre2l.recover import BNStatistics

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3), nn.ReLU(), nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4),
                        nn.Flatten(), nn.LazyLinear(5))
    x = torch.randn(6, 2, 7, 7)
    net(x)  # materialise the lazy layer
    for bn in (net[1], net[4]):
        bn.running_mean.copy_(torch.randn_like(bn.running_mean))
        bn.running_var.copy_(torch.rand_like(bn.running_var) + 0.5)
        bn.weight.data.copy_(torch.randn_like(bn.weight))
        bn.bias.data.copy_(torch.randn_like(bn.bias))
    net.eval()

    def r(a, bn):
        mean = a.sum(dim=(0, 2, 3)) / (a.shape[0] * a.shape[2] * a.shape[3])
        var = ((a - mean.view(1, -1, 1, 1)) ** 2).sum(dim=(0, 2, 3)) / (a.shape[0] * a.shape[2] * a.shape[3])
        return math.sqrt(float(((var - bn.running_var) ** 2).sum())) + \
            math.sqrt(float(((mean - bn.running_mean) ** 2).sum()))

    with torch.no_grad():
        a1 = net[0](x)
        bn1 = net[1]
        h = (a1 - bn1.running_mean.view(1, -1, 1, 1)) / torch.sqrt(bn1.running_var.view(1, -1, 1, 1) + bn1.eps)
        h = h * bn1.weight.view(1, -1, 1, 1) + bn1.bias.view(1, -1, 1, 1)
        a2 = net[3](torch.relu(h))
    expected = 10.0 * r(a1, net[1]) + r(a2, net[4])  # x10 on the first BN only
    with BNStatistics(net) as stats:
        net(x)
        got = float(stats.loss(first_weight=10.0).detach())
    assert got == pytest.approx(expected, rel=1e-5)
    assert not net[1]._forward_hooks  # hooks removed on exit


def test_bn_term_is_zero_when_batch_statistics_equal_the_running_ones():
    from padistill.sre2l.recover import BNStatistics

    torch.manual_seed(1)
    bn = nn.BatchNorm2d(3)
    x = torch.randn(8, 3, 5, 5)
    bn.running_mean.copy_(x.mean(dim=(0, 2, 3)))
    bn.running_var.copy_(x.var(dim=(0, 2, 3), unbiased=False))
    bn.eval()
    with BNStatistics(bn) as stats:
        bn(x)
        assert float(stats.loss()) == pytest.approx(0.0, abs=1e-5)


def test_recover_lr_schedule_and_clip_range(prepared):
    from padistill.sre2l.recover import clip_range, recover_lr

    assert recover_lr(0, 1000, 0.25) == 0.25 and recover_lr(500, 1000, 0.25) == pytest.approx(0.125)
    lo, hi = clip_range(prepared.pre, (1, 8, 8), "cpu")
    assert torch.allclose(prepared.pre.inverse(lo), torch.zeros(1, 1, 8, 8), atol=1e-6)
    assert torch.allclose(prepared.pre.inverse(hi), torch.ones(1, 1, 8, 8), atol=1e-6)


# ------------------------------------------------------------------------------------------ recover


def test_recover_lowers_the_bn_loss_and_stays_in_range(prepared, squeezed):
    from padistill.sre2l.recover import clip_range, recover_index
    from padistill.sre2l.squeeze import load_squeezed

    cfg = config("sre2l.iterations=60", "sre2l.bn_weight=1.0")
    teacher, _ = load_squeezed(squeezed, prepared, cfg)
    lo, hi = clip_range(prepared.pre, (1, 8, 8), "cpu")
    x, history = recover_index(teacher, None, cfg, 0, 10, (1, 8, 8), lo, hi, prepared.device, log_every=1)
    first = sum(r["bn"] for r in history[:3]) / 3
    last = sum(r["bn"] for r in history[-3:]) / 3
    assert last < 0.6 * first, (first, last)
    pix = prepared.pre.inverse(x)
    assert float(pix.min()) >= -1e-5 and float(pix.max()) <= 1 + 1e-5


def test_recover_resume_gives_the_same_bytes(tmp_path, prepared, squeezed, monkeypatch):
    from padistill.sre2l import recover as rec

    cfg = config()
    full = rec.run_recover(cfg, prepared, tmp_path / "full", squeezed, **QUIET)
    real = rec.recover_index

    def killed(teacher, targets, cfg_, i, *a, **k):
        if i == 2:
            raise KeyboardInterrupt
        return real(teacher, targets, cfg_, i, *a, **k)

    monkeypatch.setattr(rec, "recover_index", killed)
    with pytest.raises(KeyboardInterrupt):
        rec.run_recover(cfg, prepared, tmp_path / "resumed", squeezed, **QUIET)
    assert (tmp_path / "resumed" / "ipc_0001.pt").is_file() and not (tmp_path / "resumed" / "images.pt").exists()
    monkeypatch.setattr(rec, "recover_index", real)
    logs = []
    rec.run_recover(cfg, prepared, tmp_path / "resumed", squeezed, log=logs.append, show_progress=False)
    assert any("2 of 3 IPC indices already finished" in m for m in logs)
    for name in ("images.pt", "labels.pt", "ipc_0000.pt", "ipc_0002.pt"):
        assert (full / name).read_bytes() == (tmp_path / "resumed" / name).read_bytes(), name
    images = torch.load(full / "images.pt", weights_only=True)
    labels = torch.load(full / "labels.pt", weights_only=True)
    assert images.shape == (30, 1, 8, 8) and labels.tolist() == [c for c in range(10) for _ in range(3)]
    piece = torch.load(full / "ipc_0001.pt", weights_only=True)["images"]  # index 1 is row c*3 + 1 of class c
    assert torch.equal(images[1::3], piece)


def test_a_nan_recover_loss_stops_with_one_line_and_writes_nothing_for_that_index(tmp_path, prepared, squeezed,
                                                                                monkeypatch):
    from padistill.sre2l import recover as rec
    from padistill.utils.manifest import read_manifest

    real = rec.jitter
    calls = {"n": 0}

    def poisoned(x, g, s):
        calls["n"] += 1
        out = real(x, g, s)
        return out * float("nan") if calls["n"] > 9 else out  # index 1, iteration 4

    monkeypatch.setattr(rec, "jitter", poisoned)
    with pytest.raises(PadistillError, match="non-finite at IPC index 1, iteration 4") as e:
        rec.run_recover(config(), prepared, tmp_path / "r", squeezed, **QUIET)
    assert "\n" not in str(e.value)
    assert (tmp_path / "r" / "ipc_0000.pt").is_file() and not (tmp_path / "r" / "ipc_0001.pt").exists()
    assert not (tmp_path / "r" / "images.pt").exists()
    assert read_manifest(tmp_path / "r")["status"] == "running"


# ------------------------------------------------------------------------------------------ FIEX teacher


def test_the_fiex_teacher_sees_exactly_the_scheduled_samples(tmp_path, prepared, monkeypatch):
    import padistill.training as training
    from padistill.scores import run_scores
    from padistill.sre2l import run_squeeze

    sched = ["experts.schedule.enabled=true", "experts.schedule.init_ratio=0.5", "experts.schedule.add_end_epoch=2",
             "experts.schedule.rm_epoch_first=2", "experts.schedule.rm_easy_ratio_first=0.25",
             "experts.schedule.rm_epoch_second=3", "experts.schedule.rm_easy_ratio_second=0.5",
             "sre2l.squeeze_epochs=5"]
    cfg = config(*sched)
    scores = run_scores(cfg, prepared, tmp_path / "scores", **QUIET)
    ordering = torch.load(scores / "ordering.pt", weights_only=True)
    K = ordering.shape[1]
    seen = []
    real = training.train_epoch

    def spy(model, opt, x, y, batch, g, **kw):
        seen.append(sorted(kw["indices"].tolist()))
        return real(model, opt, x, y, batch, g, **kw)

    monkeypatch.setattr(training, "train_epoch", spy)
    run_squeeze(cfg, prepared, tmp_path / "squeeze", scores_dir=scores, **QUIET)
    # The paper's scheduler: up to AEE the easiest floor((IR + (1 - IR) e / AEE) K) of each class, then all,
    # after R1 without the easiest floor(r1 K), after R2 without the easiest floor(r2 K).
    expected_cols = [range(0, int(0.5 * K)), range(0, int(0.75 * K)), range(0, K), range(int(0.25 * K), K),
                     range(int(0.5 * K), K)]
    assert len(seen) == 5
    for e, cols in enumerate(expected_cols):
        assert seen[e] == sorted(ordering[:, list(cols)].reshape(-1).tolist()), f"epoch {e}"


# ------------------------------------------------------------------------------------------ relabel protocol


def test_relabel_soft_labels_come_from_the_teacher_on_the_crop_the_student_sees():
    from padistill.evaluate.protocol import Protocol
    from padistill.evaluate.sre2l import Relabel, train_and_test_relabel

    torch.manual_seed(0)
    teacher_net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 4))
    student_inputs, teacher_inputs, teacher_outputs, losses = [], [], [], []

    def teacher(xb):
        teacher_inputs.append(xb.detach().clone())
        with torch.no_grad():
            out = teacher_net(xb)
        teacher_outputs.append(out)
        return out

    class Student(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 4))

        def forward(self, x):
            if self.training:
                student_inputs.append(x.detach().clone())
            return self.body(x)

    import padistill.evaluate.sre2l as s2

    real_loss = s2.relabel_loss

    def loss_spy(s, t, temperature, t2=False):
        losses.append(t)
        return real_loss(s, t, temperature, t2)

    s2.relabel_loss = loss_spy
    try:
        images = torch.rand(20, 3, 8, 8)
        p = Protocol(epochs=2, batch=8, relabel=Relabel())
        g = torch.Generator().manual_seed(0)
        train_and_test_relabel(Student(), images, torch.rand(4, 3, 8, 8), torch.arange(4), p, gen=g, teacher=teacher)
    finally:
        s2.relabel_loss = real_loss
    assert len(student_inputs) == len(teacher_inputs) == 6  # 2 epochs x 3 batches
    for s, t in zip(student_inputs, teacher_inputs):
        assert torch.equal(s, t)  # the same cropped, flipped, mixed batch
    assert all(a is b for a, b in zip(losses, teacher_outputs))  # the KL targets are those logits
    assert not any(torch.equal(teacher_inputs[0], images[i:i + 8]) for i in range(0, 20, 8))  # augmented
    assert teacher_inputs[0].shape != teacher_inputs[3].shape or not torch.equal(teacher_inputs[0], teacher_inputs[3])


# ------------------------------------------------------------------------------------------ refusals


def test_a_teacher_without_batch_norm_is_refused(tmp_path, prepared):
    from padistill.sre2l import run_squeeze

    with pytest.raises(PadistillError, match="no batch-norm layers"):
        run_squeeze(config("net.name=convnet-2"), prepared, tmp_path / "s", **QUIET)
    assert not (tmp_path / "s").exists()


def test_an_ipc_beyond_the_recover_budget_is_refused(tmp_path, prepared, squeezed):
    from padistill.evaluate.sre2l import relabel_sets
    from padistill.sre2l import run_recover
    from padistill.utils.io import load_tensors

    with pytest.raises(PadistillError, match=r"'distill.ipc' 5 exceeds 'sre2l.recover_ipc' 3"):
        config("distill.ipc=5")
    out = run_recover(config(), prepared, tmp_path / "recover", squeezed, **QUIET)
    from padistill.artifacts import load_distilled

    syn = load_distilled(out, num_classes=10)
    cfg = config("sre2l.recover_ipc=4", "distill.ipc=4", f"sre2l.teacher={squeezed}")
    with pytest.raises(PadistillError, match="holds 3 image\\(s\\) per class, fewer than distill.ipc 4"):
        relabel_sets(out, syn, prepared, cfg, log=lambda *_: None)
    assert load_tensors(out / "images.pt").shape[0] == 30


def test_a_teacher_of_other_data_or_class_count_is_refused(tmp_path, prepared, squeezed):
    from padistill.context import prepare
    from padistill.sre2l import run_recover
    from padistill.sre2l.squeeze import load_squeezed
    from padistill.utils.io import atomic_save, load_tensors

    other = prepare(config("data.preprocess=none"), log=lambda *_: None)  # another model space = other data
    with pytest.raises(PadistillError, match="teacher was trained on other data"):
        run_recover(config("data.preprocess=none"), other, tmp_path / "r", squeezed, **QUIET)
    assert not (tmp_path / "r").exists()
    ckpt = load_tensors(squeezed / "teacher.pt")
    ckpt["num_classes"] = 100
    atomic_save(ckpt, tmp_path / "t100.pt")
    with pytest.raises(PadistillError, match="teacher has 100 classes, the data \\(digits\\) have 10"):
        load_squeezed(tmp_path / "t100.pt", prepared, config())
    ckpt["num_classes"] = 10
    ckpt["state_dict"]["classifier.weight"] = torch.zeros(7, ckpt["state_dict"]["classifier.weight"].shape[1])
    atomic_save(ckpt, tmp_path / "t7.pt")
    with pytest.raises(PadistillError, match="not a checkpoint of net 'convnet-2-bn' with 10 classes"):
        load_squeezed(tmp_path / "t7.pt", prepared, config())


# ------------------------------------------------------------------------------------------ pipeline


def test_padistill_run_chains_fiex_squeeze_recover_eval_report(tmp_path, prepared):
    from padistill.pipeline import run_pipeline
    from padistill.utils.manifest import read_manifest

    over = [*TINY, "experts.schedule.enabled=true", "experts.schedule.add_end_epoch=1",
            "experts.schedule.rm_epoch_first=1", "experts.schedule.rm_epoch_second=1"]
    logs = []
    root = run_pipeline("sre2l/cifar10-ipc10", out=str(tmp_path / "run"), overrides=over, log=logs.append,
                        show_progress=False)
    for stage in ("scores", "squeeze", "recover", "eval"):
        assert read_manifest(root / stage)["status"] == "complete", stage
    assert read_manifest(root / "squeeze")["inputs"]["scores"] == read_manifest(root / "scores")["key"]
    results = (root / "eval" / "table.md").read_text()
    assert "recovered" in results and "random" in results and "SRe2L relabel" in results
    page = (root / "report" / "index.html").read_text()
    assert "BN-statistics" in page and (root / "report" / "bn_loss.png").is_file()
    assert "Matching loss" not in page
    logs.clear()
    run_pipeline("sre2l/cifar10-ipc10", out=str(tmp_path / "run"), overrides=over, log=logs.append,
                 show_progress=False)
    assert sum("reusing it" in m for m in logs) == 4  # scores, squeeze, recover, eval
    with pytest.raises(PadistillError, match="holds a different squeeze run"):
        run_pipeline("sre2l/cifar10-ipc10", out=str(tmp_path / "run"), overrides=[*over, "sre2l.squeeze_lr=0.2"],
                     log=logs.append, show_progress=False)


def test_subset_bn_targets_are_the_statistics_of_the_kept_subset(prepared, squeezed):
    from padistill.sre2l.recover import subset_bn_targets
    from padistill.sre2l.squeeze import bn_layers, load_squeezed

    teacher, _ = load_squeezed(squeezed, prepared, config())
    before = [b.running_mean.clone() for b in bn_layers(teacher)]
    kept = torch.arange(0, 600, 3)
    targets = subset_bn_targets(teacher, prepared.x_train, kept, batch=len(kept))  # one batch: exact statistics
    with torch.no_grad():
        a = teacher.features[0](prepared.x_train[kept])  # the first BN layer's input
    mean = a.mean(dim=(0, 2, 3))
    n = a.shape[0] * a.shape[2] * a.shape[3]
    var = ((a - mean.view(1, -1, 1, 1)) ** 2).sum(dim=(0, 2, 3)) / (n - 1)  # running_var is unbiased
    assert torch.allclose(targets[0][0], mean, atol=1e-5) and torch.allclose(targets[0][1], var, rtol=1e-4)
    assert len(targets) == len(bn_layers(teacher))
    assert all(torch.equal(b.running_mean, m) for b, m in zip(bn_layers(teacher), before))  # teacher untouched


def test_cli_squeeze_recover_and_eval_with_the_sre2l_protocol(tmp_path, capsys):
    from padistill.cli import main

    sets = [a for o in TINY for a in ("--set", o)]
    assert main(["squeeze", "--preset", "sre2l/cifar10-ipc10", *sets, "--out", str(tmp_path / "squeeze"),
                 "--quiet"]) == 0
    assert main(["recover", "--preset", "sre2l/cifar10-ipc10", *sets, "--squeeze", str(tmp_path / "squeeze"),
                 "--out", str(tmp_path / "recover"), "--quiet"]) == 0
    assert main(["eval", str(tmp_path / "recover"), "--protocol", "sre2l", "--quiet"]) == 0
    assert "SRe2L relabel" in (tmp_path / "eval" / "table.md").read_text()
    assert main(["recover", "--preset", "sre2l/cifar10-ipc10", *sets, "--set", "net.name=convnet-2",
                 "--squeeze", str(tmp_path / "squeeze"), "--out", str(tmp_path / "r2"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "the teacher is a 'convnet-2-bn', the config's net is 'convnet-2'" in err[0]
