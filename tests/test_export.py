"""Export (DD-Ranking tensors, ImageFolder PNGs) and import (those + MTT/DATM/PAD *_best.pt) round trips."""

from __future__ import annotations

import json

import pytest
import torch

from evalkit import eval_prepared, make_run
from padistill.artifacts import load_distilled
from padistill.errors import PadistillError
from padistill.export import export_set, import_set
from padistill.utils.io import load_tensors
from padistill.utils.manifest import read_manifest

QUIET = dict(log=lambda *_: None)


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread(one_torch_thread):
    """Small nets run faster (and steadier) on one thread."""


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("exp") / "run", eval_prepared(), ipc=3, metrics=False)


def test_ddranking_model_space_round_trip_is_exact(run, tmp_path):
    src = load_distilled(run / "distill")
    out = export_set(run, tmp_path / "dd", **QUIET)
    images, labels, lr = (load_tensors(out / n) for n in ("images.pt", "labels.pt", "lr.pt"))
    assert torch.equal(images, src.images) and torch.equal(labels, src.labels)
    assert lr.ndim == 0 and lr.dtype == torch.float32 and float(lr) == pytest.approx(0.02)
    info = json.loads((out / "export.json").read_text())
    assert info["space"] == "model" and info["preprocess"] == "zca" and info["ipc"] == 3
    assert info["dataset"] == "digits" and info["class_contiguous"] and info["labels"].startswith("soft")
    back = import_set(out, tmp_path / "imp", space="zca", dataset="digits", **QUIET)
    got = load_distilled(back)
    assert torch.equal(got.images, src.images) and torch.equal(got.labels, src.labels)
    assert torch.equal(got.lr, src.lr)
    # the exported config.yaml rebuilds the same transform, held-out validation split included
    assert got.pre.fingerprint() == src.pre.fingerprint()
    assert read_manifest(back)["stage"] == "import"


def test_ddranking_pixel_space_round_trip(run, tmp_path):
    src = load_distilled(run / "distill")
    out = export_set(run, tmp_path / "px", space="pixel", **QUIET)
    images = load_tensors(out / "images.pt")
    assert torch.allclose(images, src.pre.inverse(src.images))
    got = load_distilled(import_set(out, tmp_path / "imp", space="pixel", dataset="digits", **QUIET))
    assert torch.allclose(got.images, src.images, atol=1e-4)


def test_imagefolder_round_trip_within_one_level(run, tmp_path):
    src = load_distilled(run / "distill")
    out = export_set(run, tmp_path / "png", fmt="imagefolder", **QUIET)
    assert sorted(p.name for p in (out / "0").iterdir()) == ["000.png", "001.png", "002.png"]
    assert sorted(d.name for d in out.iterdir() if d.is_dir()) == [str(c) for c in range(10)]
    got = load_distilled(import_set(out, tmp_path / "imp", fmt="imagefolder", space="pixel", dataset="digits",
                                    **QUIET))
    want = src.pre.inverse(src.images).clamp(0, 1)
    assert (got.pre.inverse(got.images) - want).abs().max() <= 1 / 255 + 1e-4
    assert torch.equal(got.labels, src.labels)  # soft labels travel beside the PNGs
    with pytest.raises(PadistillError, match="pixel"):
        export_set(run, tmp_path / "bad", fmt="imagefolder", space="model", **QUIET)
    export_set(run, out, fmt="imagefolder", **QUIET)  # re-export into a previous export: allowed
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x.txt").write_text("x")
    with pytest.raises(PadistillError, match="not empty"):
        export_set(run, tmp_path / "full", **QUIET)


def test_import_mtt_style_files_with_hard_labels(tmp_path):
    prepared = eval_prepared()
    src = tmp_path / "mtt"
    src.mkdir()
    x = prepared.x_test.cpu()  # any model-space images: take whitened test digits ...
    y = prepared.y_test.cpu()
    keep = torch.cat([torch.nonzero(y == c).flatten()[:1] for c in range(10)])
    x, y = x[keep], y[keep]
    perm = torch.randperm(10, generator=torch.Generator().manual_seed(0))
    torch.save(x[perm], src / "images_best.pt")
    torch.save(y[perm], src / "labels_best.pt")  # ... shuffled: import sorts them class by class
    with pytest.raises(PadistillError, match="--lr"):
        import_set(src, tmp_path / "a", space="zca", dataset="digits", **QUIET)
    # no config.yaml in the source: the transform is the dataset's own (no held-out split)
    got = load_distilled(import_set(src, tmp_path / "b", space="zca", dataset="digits", lr=0.03, **QUIET))
    assert torch.equal(got.labels, torch.arange(10))
    order = torch.argsort(y[perm], stable=True)
    assert torch.equal(got.images, x[perm][order]) and float(got.lr) == pytest.approx(0.03)
    torch.save(torch.tensor(0.05), src / "lr_best.pt")
    got = load_distilled(import_set(src, tmp_path / "c", space="zca", dataset="digits", **QUIET))
    assert float(got.lr) == pytest.approx(0.05)


def test_import_refuses_inconsistent_inputs(tmp_path):
    src = tmp_path / "s"
    src.mkdir()
    torch.save(torch.rand(10, 1, 8, 8), src / "images.pt")  # values in [0, 1]: pixels, not ZCA
    torch.save(torch.tensor(0.01), src / "lr.pt")
    with pytest.raises(PadistillError, match="--space pixel"):
        import_set(src, tmp_path / "o", space="zca", dataset="digits", **QUIET)
    torch.save(torch.arange(10) % 3, src / "labels.pt")
    with pytest.raises(PadistillError, match="different numbers"):
        import_set(src, tmp_path / "o", space="pixel", dataset="digits", **QUIET)
    torch.save(torch.rand(10, 1, 4, 4), src / "images.pt")
    torch.save(torch.arange(10), src / "labels.pt")
    with pytest.raises(PadistillError, match=r"\[1, 4, 4\]"):
        import_set(src, tmp_path / "o", space="pixel", dataset="digits", **QUIET)
    with pytest.raises(PadistillError, match="--space"):
        import_set(src, tmp_path / "o", space="rgb", dataset="digits", **QUIET)


def test_imported_pixel_set_can_be_evaluated(tmp_path):
    from padistill.evaluate import run_eval

    src = tmp_path / "s"
    src.mkdir()
    prepared = eval_prepared()
    ds_x = prepared.pre.inverse(prepared.x_test).clamp(0, 1).cpu()
    y = prepared.y_test.cpu()
    keep = torch.cat([torch.nonzero(y == c).flatten()[:1] for c in range(10)])
    torch.save(ds_x[keep], src / "images.pt")
    torch.save(torch.nn.functional.one_hot(y[keep], 10).float() * 5, src / "labels.pt")
    torch.save(torch.tensor(0.01), src / "lr.pt")
    out = import_set(src, tmp_path / "imp", space="pixel", dataset="digits", preprocess="normalize", **QUIET)
    assert load_distilled(out).pre.kind == "normalize"
    ev = run_eval(out, overrides=["net.name=mlp", "eval.nets=[mlp]"], epochs=0, runs=1, log=lambda *_: None,
                  show_progress=False)
    assert json.loads((ev / "results.json").read_text())["data"]["preprocess"] == "normalize"


def test_cli_export_import(run, tmp_path, capsys):
    from padistill.cli import main

    assert main(["export", str(run), str(tmp_path / "dd")]) == 0
    assert main(["export", str(run), str(tmp_path / "png"), "--format", "imagefolder"]) == 0
    assert main(["import", str(tmp_path / "dd"), str(tmp_path / "a"), "--space", "zca", "--dataset", "digits"]) == 0
    assert main(["import", str(tmp_path / "png"), str(tmp_path / "b"), "--format", "imagefolder",
                 "--space", "pixel", "--dataset", "digits"]) == 0
    assert (tmp_path / "a" / "images.pt").is_file() and (tmp_path / "b" / "preprocess.pt").is_file()
    assert main(["import", str(tmp_path / "png"), str(tmp_path / "c"), "--format", "imagefolder",
                 "--space", "zca", "--dataset", "digits"]) == 2
    assert "--space pixel" in capsys.readouterr().err


def test_import_refuses_a_space_contradicting_the_export(run, tmp_path):
    dd = export_set(run, tmp_path / "dd", **QUIET)  # zca model space
    with pytest.raises(PadistillError, match=r"export\.json: .*zca space, not --space normalize"):
        import_set(dd, tmp_path / "a", space="normalize", dataset="digits", **QUIET)
    with pytest.raises(PadistillError, match=r"export\.json: .*zca space, not --space pixel"):
        import_set(dd, tmp_path / "a", space="pixel", dataset="digits", **QUIET)
    px = export_set(run, tmp_path / "px", space="pixel", **QUIET)
    with pytest.raises(PadistillError, match=r"export\.json: .*pixel space, not --space zca"):
        import_set(px, tmp_path / "a", space="zca", dataset="digits", **QUIET)
    (dd / "export.json").unlink()  # the run's config.yaml still says how it was distilled
    with pytest.raises(PadistillError, match=r"config\.yaml: .*data\.preprocess=zca, not --space normalize"):
        import_set(dd, tmp_path / "a", space="normalize", dataset="digits", **QUIET)


def test_unclamped_pixel_export_round_trips(tmp_path):
    """A set whose de-whitened pixels leave [0, 1] (common after distillation) imports with --space pixel."""
    root = make_run(tmp_path / "run", eval_prepared(), ipc=1, metrics=False)
    images = root / "distill" / "images.pt"
    torch.save(load_tensors(images) * 4, images)
    src = load_distilled(root / "distill")
    px = export_set(root, tmp_path / "px", space="pixel", **QUIET)
    assert float(load_tensors(px / "images.pt").max()) > 1.5
    got = load_distilled(import_set(px, tmp_path / "imp", space="pixel", dataset="digits", **QUIET))
    assert torch.allclose(got.images, src.images, atol=1e-3)


def test_import_refuses_broken_tensor_files(tmp_path):
    src = tmp_path / "s"
    src.mkdir()
    torch.save(torch.randn(0, 1, 8, 8), src / "images.pt")
    torch.save(torch.tensor(0.01), src / "lr.pt")
    with pytest.raises(PadistillError, match=r"images\.pt: holds no images"):
        import_set(src, tmp_path / "o", space="zca", dataset="digits", **QUIET)
    torch.save(torch.randn(10, 1, 8, 8).index_fill(0, torch.tensor([2]), float("nan")), src / "images.pt")
    with pytest.raises(PadistillError, match=r"images\.pt: contains NaN or Inf"):
        import_set(src, tmp_path / "o", space="zca", dataset="digits", **QUIET)
    torch.save(torch.randn(10, 1, 8, 8), src / "images.pt")
    torch.save(torch.tensor([0.01, 0.02]), src / "lr.pt")
    with pytest.raises(PadistillError, match=r"lr\.pt: holds 2 values, expected one number"):
        import_set(src, tmp_path / "o", space="zca", dataset="digits", **QUIET)
    torch.save(torch.tensor(0.01), src / "lr.pt")
    torch.save(torch.arange(10).reshape(10, 1), src / "labels.pt")
    with pytest.raises(PadistillError, match=r"integer labels must be classes \[N\]"):
        import_set(src, tmp_path / "o", space="zca", dataset="digits", **QUIET)
    torch.save(torch.tensor(3), src / "labels.pt")
    with pytest.raises(PadistillError, match="one row per image"):
        import_set(src, tmp_path / "o", space="zca", dataset="digits", **QUIET)


def test_imagefolder_labels_contradicting_the_folders_are_refused(tmp_path):
    root = make_run(tmp_path / "run", eval_prepared(), ipc=1, metrics=False)
    torch.save(torch.arange(10), root / "distill" / "labels.pt")
    out = export_set(root, tmp_path / "png", fmt="imagefolder", **QUIET)
    torch.save(torch.arange(9, -1, -1), out / "labels.pt")  # says row 0 is class 9; folder 0 says class 0
    with pytest.raises(PadistillError, match=r"labels\.pt: its classes disagree with the class folders"):
        import_set(out, tmp_path / "imp", fmt="imagefolder", space="pixel", dataset="digits", **QUIET)
    (out / "labels.pt").unlink()  # the folders alone decide
    got = load_distilled(import_set(out, tmp_path / "imp", fmt="imagefolder", space="pixel", dataset="digits",
                                    **QUIET))
    assert torch.equal(got.labels, torch.arange(10))
