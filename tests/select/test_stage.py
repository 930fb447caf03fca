"""`padistill select`: set folders eval reads, class balance, determinism, reuse, refusals, the CLI, eval end to end."""

from __future__ import annotations

import json

import pytest
import torch

from padistill.artifacts import load_distilled
from padistill.errors import PadistillError
from padistill.select import run_select
from padistill.select.stage import budget
from padistill.utils.manifest import read_manifest
from selkit import select_config

QUIET = dict(log=lambda *_: None, show_progress=False)
METHODS = ["random", "herding", "kcenter", "forgetting", "glister", "easy", "hard", "middle"]


def _select(tmp_path, prepared, embed_dir, method, *extra, name=None):
    cfg = select_config(f"select.method={method}", "select.ipc=4", *extra)
    return run_select(cfg, prepared, tmp_path / (name or method), embed_dir=embed_dir,
                      scores_dir=tmp_path / "scores", **QUIET)


@pytest.mark.parametrize("method", METHODS)
def test_every_method_writes_a_class_balanced_set_folder(tmp_path, sel_prepared, embed_dir, method):
    out = _select(tmp_path, sel_prepared, embed_dir, method)
    m = read_manifest(out)
    assert m["stage"] == "select" and m["status"] == "complete" and m["method"] == method and m["ipc"] == 4
    syn = load_distilled(out, num_classes=sel_prepared.num_classes)  # what eval / export read
    C = sel_prepared.num_classes
    assert syn.images.shape[0] == 4 * C and torch.equal(syn.labels, torch.arange(C).repeat_interleave(4))
    assert float(syn.lr) == pytest.approx(0.01)
    idx = torch.load(out / "indices.pt", weights_only=True)
    assert idx.dtype == torch.int64 and len(idx) == 4 * C and len(idx.unique()) == len(idx)
    # indices.pt names original train-split images: their labels and (model-space) pixels are the rows'
    pos = torch.searchsorted(sel_prepared.train_index, idx)
    assert torch.equal(sel_prepared.train_index[pos], idx)
    assert torch.equal(sel_prepared.y_train[pos].cpu(), syn.labels)
    assert torch.equal(sel_prepared.x_train[pos].cpu(), syn.images)
    assert (out / "config.yaml").is_file() and (out / "preprocess.pt").is_file() and (out / "grid.png").is_file()


def test_selection_is_deterministic_and_reused(tmp_path, sel_prepared, embed_dir, monkeypatch):
    for method in ("kcenter", "forgetting", "random", "glister"):
        a = _select(tmp_path, sel_prepared, embed_dir, method, name=f"{method}-a")
        b = _select(tmp_path, sel_prepared, embed_dir, method, name=f"{method}-b")
        assert (a / "indices.pt").read_bytes() == (b / "indices.pt").read_bytes(), method
        assert (a / "images.pt").read_bytes() == (b / "images.pt").read_bytes(), method
    pix = [_select(tmp_path, sel_prepared, embed_dir, "kcenter", "select.features=pixels", f"seed={s}",
                   name=f"kcenter-pixels-{s}") for s in (0, 1)]  # the seed picks k-center's start points
    assert not torch.equal(torch.load(pix[0] / "indices.pt"), torch.load(pix[1] / "indices.pt"))
    import padistill.select.stage as st

    monkeypatch.setattr(st, "choose", lambda *a, **k: (_ for _ in ()).throw(AssertionError("recomputed")))
    _select(tmp_path, sel_prepared, embed_dir, "kcenter", name="kcenter-a")  # complete: reused
    with pytest.raises(PadistillError, match="different select run"):
        _select(tmp_path, sel_prepared, embed_dir, "herding", name="kcenter-a")


def test_random_selection_is_the_evaluations_random_baseline(tmp_path, sel_prepared, embed_dir):
    from padistill.evaluate.sets import random_subset

    out = _select(tmp_path, sel_prepared, embed_dir, "random")
    xr, _ = random_subset(sel_prepared.x_train, sel_prepared.y_train, sel_prepared.num_classes, 4, 0)
    assert torch.equal(torch.load(out / "images.pt"), xr.cpu())


def test_ratio_budget_counts_the_class_before_the_hold_out(sel_prepared):
    counts = torch.bincount(sel_prepared.y_train.cpu())
    n = int(counts.min()) + 5  # five per class are held out for validation
    assert budget(select_config("select.ratio=0.1"), sel_prepared) == int(0.1 * n + 0.5)
    assert budget(select_config("select.ipc=3"), sel_prepared) == 3
    assert budget(select_config(), sel_prepared) == 2  # distill.ipc of the tiny config


@pytest.mark.parametrize("extra,match", [
    (["select.ipc=100000"], "smallest class has only"),
    (["select.ratio=1.0"], "smallest class has only"),  # the whole class is more than is left after the hold-out
    (["select.ratio=0.001"], "is 0 images"),
])
def test_impossible_budgets_are_refused_in_one_line(tmp_path, sel_prepared, extra, match):
    cfg = select_config(*extra)
    with pytest.raises(PadistillError, match=match) as e:
        run_select(cfg, sel_prepared, tmp_path / "x", **QUIET)
    assert "\n" not in str(e.value)
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("ratio", ["0", "1.5", "-0.2"])
def test_ratio_outside_0_1_is_refused(ratio):
    with pytest.raises(PadistillError, match=r"select.ratio.*\(0, 1\]"):
        select_config(f"select.ratio={ratio}")


def test_ipc_and_ratio_together_are_refused_and_the_cli_replaces_a_presets_ratio(monkeypatch):
    import padistill.context as ctx
    import padistill.select as sel
    from padistill.cli import build_parser, main

    with pytest.raises(PadistillError, match="not both"):
        select_config("select.ipc=3", "select.ratio=0.1")
    assert main(["config", "--preset", "coreset/cifar10-r20", "--set", "select.ipc=3"]) == 2
    seen = {}
    monkeypatch.setattr(sel, "run_select", lambda cfg, *a, **k: seen.setdefault("cfg", cfg))
    monkeypatch.setattr(ctx, "prepare", lambda cfg, log=None: None)
    args = build_parser().parse_args(["select", "--preset", "coreset/cifar10-r20", "--ipc", "7", "--out", "x"])
    assert args.fn(args) == 0
    assert seen["cfg"].select.ipc == 7 and seen["cfg"].select.ratio is None


def test_glister_without_validation_split_is_refused(tmp_path, tiny_prepared):
    from helpers import tiny_config

    cfg = tiny_config("select.method=glister", "select.ipc=2")
    with pytest.raises(PadistillError, match="validation split.*val_per_class") as e:
        run_select(cfg, tiny_prepared, tmp_path / "g", **QUIET)
    assert "\n" not in str(e.value)


def test_full_selection_is_refused_for_unequal_classes(tmp_path, sel_prepared):
    counts = torch.bincount(sel_prepared.y_train.cpu())
    assert int(counts.min()) != int(counts.max())  # digits: 169..177 training images per class here
    with pytest.raises(PadistillError, match="same number per class") as e:
        run_select(select_config("select.method=full"), sel_prepared, tmp_path / "full", **QUIET)
    assert "\n" not in str(e.value)


def test_full_selection_and_its_bound_under_the_protocol(tmp_path, sel_prepared):
    import dataclasses

    from padistill.evaluate import run_eval

    y = sel_prepared.y_train.cpu()
    keep = torch.cat([torch.nonzero(y == c).flatten()[:40] for c in range(sel_prepared.num_classes)]).sort().values
    balanced = dataclasses.replace(sel_prepared, x_train=sel_prepared.x_train[keep], y_train=sel_prepared.y_train[keep],
                                   train_index=sel_prepared.train_index[keep])
    logs = []
    out = run_select(select_config("select.method=full"), balanced, tmp_path / "full", log=logs.append,
                     show_progress=False)
    assert sorted(torch.load(out / "indices.pt").tolist()) == sel_prepared.train_index[keep].tolist()
    assert any("full-data bound" in m and "3 epochs" in m and "400 images" in m for m in logs)
    logs.clear()
    run_eval(out, nets=["convnet-2"], epochs=1, runs=1, prepared=balanced, log=logs.append, show_progress=False)
    assert any("full-data bound" in m and "2 epochs" in m and "8 SGD steps" in m for m in logs)  # 2 x ceil(400/128)


def test_embedding_stage_counts_forgetting_and_is_reused(tmp_path, sel_prepared, embed_dir, monkeypatch):
    from padistill.select.embed import load_embed, run_embed

    e = load_embed(embed_dir, sel_prepared, need_val=True)
    n = len(sel_prepared.y_train)
    assert e["features"].shape[0] == n and e["logits"].shape == (n, sel_prepared.num_classes)
    assert e["val_features"].shape[0] == len(sel_prepared.y_val)
    # 2 epochs: at most one correct -> wrong transition per sample, and some samples do forget
    assert int(e["forgetting"].max()) <= 1 and int(e["forgetting"].sum()) > 0
    assert not (e["forgetting"] > 0)[~e["learned"]].any()
    import padistill.training as training

    monkeypatch.setattr(training, "train_epoch", lambda *a, **k: (_ for _ in ()).throw(AssertionError("retrained")))
    assert run_embed(select_config(), sel_prepared, embed_dir, **QUIET) == embed_dir


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_embedding_stage_resumes_from_its_epoch_checkpoint(tmp_path, sel_prepared, monkeypatch, one_thread):
    # KNOWN DEFECT (stop 14): with 2 torch threads the resumed selection net's weights (model.pt) differ from an
    # uninterrupted run's in the last bits; with 1 thread they are bit-identical. Cause not found yet (the experts
    # stage, same train_epoch, resumes bit-identically with 2 threads). Pinned to 1 thread until it is fixed.
    import padistill.training as training
    from padistill.select.embed import run_embed

    embed_dir = run_embed(select_config(), sel_prepared, tmp_path / "ref", **QUIET)

    real = training.train_epoch
    calls = []

    def dies_in_epoch_two(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(training, "train_epoch", dies_in_epoch_two)
    out = tmp_path / "embed"
    with pytest.raises(KeyboardInterrupt):
        run_embed(select_config(), sel_prepared, out, **QUIET)
    monkeypatch.setattr(training, "train_epoch", real)
    run_embed(select_config(), sel_prepared, out, **QUIET)
    for name in ("features.pt", "forgetting.pt", "val_logits.pt"):
        assert (out / name).read_bytes() == (embed_dir / name).read_bytes(), name


def test_scores_of_other_data_are_refused(tmp_path, sel_prepared, tiny_prepared):
    from helpers import tiny_config
    from padistill.scores import run_scores

    other = run_scores(tiny_config("scores.models=1", "scores.epochs=1"), tiny_prepared, tmp_path / "scores", **QUIET)
    with pytest.raises(PadistillError, match="other data"):
        run_select(select_config("select.method=easy", "scores.models=1", "scores.epochs=1"), sel_prepared,
                   tmp_path / "easy", scores_dir=other, **QUIET)


def test_eval_on_a_selected_set_end_to_end(tmp_path, sel_prepared, embed_dir):
    from padistill.evaluate import run_eval

    out = _select(tmp_path, sel_prepared, embed_dir, "herding")
    ev = run_eval(out, nets=["convnet-2"], epochs=2, runs=1, prepared=sel_prepared, **QUIET)
    assert ev == out / "eval"  # each selection folder keeps its own evaluation
    res = json.loads((ev / "results.json").read_text())
    rows = {r["name"]: r for r in res["table"]["rows"]}
    assert list(rows) == ["herding (real subset)"]
    assert rows["herding (real subset)"]["results"]["convnet-2"]["settings"]["lr"] == pytest.approx(0.01)
    assert rows["herding (real subset)"]["results"]["convnet-2"]["settings"]["labels"].startswith("hard")
    assert 0 <= rows["herding (real subset)"]["results"]["convnet-2"]["accs"][0] <= 100


def test_cli_select_and_one_line_refusals(tmp_path, capsys):
    from helpers import TINY_OVERRIDES
    from padistill.cli import main

    sets = [a for o in (*TINY_OVERRIDES, "data.val_per_class=5", "select.epochs=1") for a in ("--set", o)]
    assert main(["select", "--preset", "pad", *sets, "--method", "random", "--ipc", "3", "--quiet",
                 "--out", str(tmp_path / "r")]) == 0
    assert read_manifest(tmp_path / "r")["ipc"] == 3
    capsys.readouterr()
    assert main(["select", "--preset", "pad", *sets, "--method", "random", "--ratio", "1.5",
                 "--out", str(tmp_path / "bad")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("padistill: error:") and "(0, 1]" in err and "\n" not in err
    assert main(["select", "--preset", "pad", *sets, "--method", "herding", "--ipc", "100000",
                 "--out", str(tmp_path / "bad")]) == 2
    err = capsys.readouterr().err.strip()
    assert "smallest class" in err and "\n" not in err


def test_report_shows_evaluated_baselines_beside_the_run(tmp_path, sel_prepared, embed_dir):
    from padistill.evaluate import run_eval
    from padistill.report import build_report

    root = tmp_path / "run"
    (root / "eval").mkdir(parents=True)  # a run folder (its own evaluation not there yet)
    for method in ("kcenter", "random"):
        out = run_select(select_config(f"select.method={method}", "select.ipc=3"), sel_prepared,
                         root / "baselines" / method, embed_dir=embed_dir, **QUIET)
        run_eval(out, nets=["convnet-2"], epochs=1, runs=2, prepared=sel_prepared, **QUIET)
    page = build_report(root).read_text()
    assert "Baselines (real subsets" in page
    assert "kcenter (real subset)" in page and "random (real subset)" in page and "(n=2)" in page


def test_a_selected_set_exports_like_a_distilled_one(tmp_path, sel_prepared, embed_dir):
    from padistill.export import export_set

    out = _select(tmp_path, sel_prepared, embed_dir, "hard")
    export_set(out, tmp_path / "png", fmt="imagefolder", log=lambda *_: None)
    pngs = sorted((tmp_path / "png").rglob("*.png"))
    assert len(pngs) == 4 * sel_prepared.num_classes
