"""Untrusted distilled sets and teacher checkpoints: one-line refusals before any training (eval, export)."""

from __future__ import annotations

import json

import pytest
import torch

from evalkit import make_run
from padistill.errors import PadistillError
from padistill.evaluate import run_eval
from padistill.evaluate.sets import load_teacher
from padistill.export import export_set

QUIET = dict(log=lambda *_: None, show_progress=False)


@pytest.fixture(scope="module")
def good_run(tmp_path_factory, prepared):
    return make_run(tmp_path_factory.mktemp("untrusted") / "run", prepared, ipc=1, metrics=False)


def _refused(root, tmp_path, prepared, match):
    """Both `eval` and `export` refuse the folder with one line matching `match`."""
    with pytest.raises(PadistillError, match=match) as e:
        run_eval(root, epochs=0, baseline=False, prepared=prepared, out=tmp_path / "ev", **QUIET)
    assert "\n" not in str(e.value)
    with pytest.raises(PadistillError, match=match) as e:
        export_set(root, tmp_path / "ex", fmt="imagefolder", log=lambda *_: None)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("labels, match", [
    (torch.full((10, 10), float("nan")), r"labels\.pt: contains NaN or Inf"),
    (torch.eye(10).index_fill(1, torch.tensor([0]), float("inf")), r"labels\.pt: contains NaN or Inf"),
    (torch.tensor([0, 1, 2, 3, 4, 5, 6, 7, 8, 12]), r"labels\.pt: hard labels must lie in \[0, 10\)"),
    (torch.tensor([-1, 1, 2, 3, 4, 5, 6, 7, 8, 9]), r"labels\.pt: hard labels must lie in \[0, 10\)"),
    (torch.arange(9, -1, -1), r"labels\.pt: hard labels must be 1 of each class, class by class"),
    (torch.arange(5).repeat_interleave(2), r"labels\.pt: hard labels must be 1 of each class, class by class"),
], ids=["nan", "inf", "too-big", "negative", "reversed", "five-classes"])
def test_bad_labels_are_refused_by_eval_and_export(tmp_path, prepared, labels, match):
    root = make_run(tmp_path / "run", prepared, ipc=1, metrics=False)
    torch.save(labels, root / "distill" / "labels.pt")
    _refused(root, tmp_path, prepared, match)


def test_bad_best_labels_are_refused(tmp_path, prepared):
    root = make_run(tmp_path / "run", prepared, ipc=1, best=True, metrics=False)
    torch.save(torch.arange(9, -1, -1), root / "distill" / "best_labels.pt")
    with pytest.raises(PadistillError, match=r"best_labels\.pt: hard labels must be 1 of each class, class by class"):
        run_eval(root, epochs=0, baseline=False, prepared=prepared, **QUIET)


def test_empty_set_is_refused(tmp_path, prepared):
    root = make_run(tmp_path / "run", prepared, ipc=1, metrics=False)
    torch.save(torch.zeros(0, 1, 8, 8), root / "distill" / "images.pt")
    torch.save(torch.zeros(0, 10), root / "distill" / "labels.pt")
    _refused(root, tmp_path, prepared, r"images\.pt: holds no images")


def test_export_refuses_unfinished_or_unknown_folders(tmp_path, prepared):
    root = make_run(tmp_path / "run", prepared, ipc=1, metrics=False)
    manifest = root / "distill" / "manifest.json"
    m = json.loads(manifest.read_text())
    manifest.write_text(json.dumps(dict(m, status="running")))
    _refused(root, tmp_path, prepared, "did not finish")
    manifest.unlink()
    _refused(root, tmp_path, prepared, "no manifest.json")


def _teacher_file(tmp_path, prepared, what):
    from padistill.context import build_net
    from padistill.nets import param_layout

    model = build_net(prepared, seed=0)
    path = tmp_path / f"teacher_{what}.pt"
    if what == "flat_nan":
        flat = torch.cat([p.detach().flatten() for p in model.parameters()])
        assert flat.numel() == param_layout(model).total
        torch.save(flat.index_fill(0, torch.tensor([3]), float("nan")), path)
    else:
        sd = model.state_dict()
        name = next(k for k, v in sd.items() if v.is_floating_point())
        sd[name] = sd[name].index_fill(0, torch.tensor([0]), float("nan")) if what == "sd_nan" else \
            (sd[name] * 100).long()
        torch.save(sd, path)
    return path


@pytest.mark.parametrize("what, match", [("flat_nan", "NaN or Inf"), ("sd_nan", "NaN or Inf"),
                                         ("sd_int", "must be floating point, found torch.int64")])
def test_broken_teacher_checkpoints_are_refused(tmp_path, prepared, what, match):
    path = _teacher_file(tmp_path, prepared, what)
    with pytest.raises(PadistillError, match=match) as e:
        load_teacher(str(path), prepared, prepared.config)
    assert str(path) in str(e.value) and "\n" not in str(e.value)


def test_good_run_still_loads_and_exports(good_run, tmp_path, prepared):
    """The checks pass a correct set (soft labels) and a correct hard-label set."""
    assert (export_set(good_run, tmp_path / "ex", log=lambda *_: None) / "images.pt").is_file()
    root = make_run(tmp_path / "hard", prepared, ipc=2, metrics=False)
    torch.save(torch.arange(10).repeat_interleave(2), root / "distill" / "labels.pt")
    assert (export_set(root, tmp_path / "ex2", fmt="imagefolder", log=lambda *_: None) / "9").is_dir()


def test_a_set_whose_config_is_not_text_is_refused(tmp_path, prepared):
    root = make_run(tmp_path / "run", prepared, ipc=1, metrics=False)
    (root / "distill" / "config.yaml").write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(PadistillError, match=r"config.yaml: not a UTF-8 text file"):
        run_eval(root, epochs=0, baseline=False, out=tmp_path / "ev", **QUIET)
