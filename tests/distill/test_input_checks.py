"""Distill refuses bad inputs with one line: experts of other data / another net, non-finite expert rows,
and corrupt checkpoint.pt files on resume."""

import json
import shutil

import pytest
import torch

from helpers import tiny_config
from padistill.distill import run_distill
from padistill.errors import PadistillError
from padistill.experts.storage import expert_path, save_expert
from padistill.utils.io import load_tensors

QUIET = dict(log=lambda *_: None, show_progress=False)


def edit_manifest(folder, **changes):
    m = json.loads((folder / "manifest.json").read_text())
    m.update(changes)
    (folder / "manifest.json").write_text(json.dumps(m))


def copy_experts(tmp_path, tiny_experts, **manifest):
    folder = tmp_path / "experts"
    shutil.copytree(tiny_experts, folder)
    edit_manifest(folder, **manifest)
    return folder


def refused(tmp_path, prepared, experts, match):
    with pytest.raises(PadistillError, match=match) as err:
        run_distill(tiny_config(), prepared, tmp_path / "d", experts_dir=experts, **QUIET)
    assert "\n" not in str(err.value)
    return str(err.value)


# ----------------------------------------------------------------------------------- experts of other data / net


def test_experts_of_other_data_are_refused(tmp_path, tiny_prepared, tiny_experts):
    data = tiny_prepared.fingerprint()
    dataset, pre = data.split("-")
    folder = copy_experts(tmp_path, tiny_experts, inputs={"data": f"{dataset}-{'0' * len(pre)}"})
    msg = refused(tmp_path, tiny_prepared, folder, "experts were trained on data")
    assert str(folder) in msg and data in msg and "other preprocessing" in msg


def test_experts_of_another_net_with_as_many_parameters_are_refused(tmp_path, tiny_prepared, tiny_experts):
    folder = copy_experts(tmp_path, tiny_experts, inputs={"data": tiny_prepared.fingerprint()},
                          settings={"net": {"name": "convnet-2-bn", "options": {"width": 8}}})
    msg = refused(tmp_path, tiny_prepared, folder, "experts were trained with net 'convnet-2-bn'")
    assert str(folder) in msg and "the config has net 'convnet-2'" in msg


def test_experts_whose_layout_lists_other_tensors_are_refused(tmp_path, tiny_prepared, tiny_experts):
    """Same parameter count, other shapes (an edited layout.json, or another architecture): refused before the
    depth cut of FIEM is computed on a layout that does not line up."""
    folder = copy_experts(tmp_path, tiny_experts)
    layout = json.loads((folder / "layout.json").read_text())
    first = layout["shapes"][0]
    layout["shapes"][0] = [first[1], first[0], *first[2:]]  # transpose the first tensor: same number of values
    (folder / "layout.json").write_text(json.dumps(layout))
    msg = refused(tmp_path, tiny_prepared, folder, r"layout.json: parameter #0 has shape")
    assert "same total, other tensors" in msg


def test_imported_buffers_of_another_net_are_refused(tmp_path, tiny_prepared, tiny_experts):
    """`buffers import` records no data fingerprint, but its --net is compared."""
    from padistill.experts.interop import export_replay_buffers, import_replay_buffers

    export_replay_buffers(tiny_experts, tmp_path / "buf", log=lambda *_: None)
    opts = dict(num_classes=10, channels=1, im_size=8, log=lambda *_: None)
    bn = import_replay_buffers(tmp_path / "buf", tmp_path / "bn", net="convnet-2-w8-bn", **opts)
    refused(tmp_path, tiny_prepared, bn, r"trained with net 'convnet-2-w8-bn'")
    same = import_replay_buffers(tmp_path / "buf", tmp_path / "same", net="convnet-2-w8", **opts)
    # the same net is accepted, and the round trip changes nothing: the distilled set is the one the original
    # experts folder gives
    cfg = tiny_config("distill.iterations=1")
    a, b = (run_distill(cfg, tiny_prepared, tmp_path / name, experts_dir=e, **QUIET)
            for name, e in (("via-import", same), ("direct", tiny_experts)))
    assert (a / "images.pt").read_bytes() == (b / "images.pt").read_bytes()


@pytest.mark.parametrize("net", [{"name": "convnet-2", "options": {"width": 8}},
                                 {"name": "ConvNet-2-W8-IN", "options": {}},  # the same net, spelled otherwise
                                 {"name": "convnet", "options": {"depth": 2, "width": 8, "pool": "avg"}}])
def test_the_same_net_spelled_otherwise_is_accepted(tiny_prepared, net):
    from padistill.experts.storage import check_experts_manifest

    m = {"settings": {"net": net}, "inputs": {"data": tiny_prepared.fingerprint()}}
    cfg = tiny_config()
    assert check_experts_manifest("experts", m, cfg.net.name, cfg.net.options, tiny_prepared.fingerprint()) is None
    # ... while the same manifest against a config whose net differs only in width is refused
    wide = tiny_config("net.options={width: 16}")
    with pytest.raises(PadistillError, match="experts were trained with net"):
        check_experts_manifest("experts", m, wide.net.name, wide.net.options, tiny_prepared.fingerprint())


# ----------------------------------------------------------------------------------- non-finite expert rows


def test_non_finite_experts_stop_distillation_naming_file_and_epoch(tmp_path, tiny_prepared, tiny_experts):
    folder = copy_experts(tmp_path, tiny_experts)
    for k in range(2):  # the last row (read by label init) is fine; every start / target row the matcher reads is NaN
        rows = load_tensors(expert_path(folder, k))["params"].clone()
        rows[:-1] = float("nan")
        save_expert(folder, k, rows, {})
    refused(tmp_path, tiny_prepared, folder, r"expert_000[01]\.pt: epoch [0-3] parameters contain NaN or Inf")
    rows[-1, 0] = float("inf")  # now label init reads a non-finite row too
    save_expert(folder, 0, rows, {})
    refused(tmp_path / "b", tiny_prepared, folder, r"expert_0000\.pt: epoch 4 parameters contain NaN or Inf")


# ----------------------------------------------------------------------------------- corrupt checkpoints


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, tiny_prepared, tiny_experts):
    out = tmp_path_factory.mktemp("distill") / "d"
    run_distill(tiny_config(), tiny_prepared, out, experts_dir=tiny_experts, **QUIET)
    return out


def _images(ck):
    ck["synset"]["images"][0, 0, 0, 0] = float("nan")


def _momentum(ck):
    ck["synset"]["opt"]["images"]["state"][0]["momentum_buffer"] = torch.zeros(3)


def _opt_lr(ck):
    ck["synset"]["opt"]["images"]["param_groups"][0]["lr"] = 1e9


CORRUPTIONS = {
    "not a dict": (lambda ck: torch.zeros(3), "checkpoint: expected a dict, found Tensor"),
    "empty": (lambda ck: {}, "checkpoint: missing 'iteration', 'synset'"),
    "empty synset": (lambda ck: {**ck, "synset": {}}, "synset: missing 'images'"),
    "counters None": (lambda ck: {**ck, "counters": None}, "counters: expected a dict, found NoneType"),
    "negative counter": (lambda ck: {**ck, "counters": {**ck["counters"], "applied": -1}}, "counters: applied=-1"),
    "negative iteration": (lambda ck: {**ck, "iteration": -5}, r"iteration: expected an integer in 0\.\.3, found -5"),
    "huge iteration": (lambda ck: {**ck, "iteration": 10**9}, "iteration: expected an integer in 0..3"),
    "float iteration": (lambda ck: {**ck, "iteration": 2.0}, "iteration: expected an integer"),
    "bad best": (lambda ck: {**ck, "best": {"val_acc": float("nan"), "iteration": 1}}, "best: expected val_acc"),
    "nan images": (_images, r"synset\.images: contains NaN or Inf"),
    "image shape": (lambda ck: ck["synset"].update(images=torch.zeros(20, 1, 4, 8)),
                    r"synset\.images: expected shape \[20, 1, 8, 8\], found \[20, 1, 4, 8\]"),
    "image dtype": (lambda ck: ck["synset"].update(images=ck["synset"]["images"].double()),
                    r"synset\.images: expected dtype float32, found float64"),
    "hard labels for soft": (lambda ck: ck["synset"].update(labels=torch.arange(20)), r"synset\.labels: expected"),
    "negative lr": (lambda ck: ck["synset"].update(syn_lr=torch.tensor(-0.01)), r"synset\.syn_lr: expected a positive"),
    "lr_clamped": (lambda ck: ck["synset"].update(lr_clamped=None), r"synset\.lr_clamped"),
    "optimiser missing": (lambda ck: ck["synset"]["opt"].pop("labels") and None, r"synset\.opt: missing 'labels'"),
    "momentum shape": (_momentum, r"synset\.opt\.images: momentum buffer: expected shape \[20, 1, 8, 8\]"),
    "optimiser lr": (_opt_lr, r"synset\.opt\.images: lr=1000000000\.0 differ from the config's lr=10"),
}


@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_corrupt_checkpoint_is_a_one_line_error(tmp_path, tiny_prepared, tiny_experts, finished_run, name):
    corrupt, message = CORRUPTIONS[name]
    out = tmp_path / "d"
    shutil.copytree(finished_run, out)
    edit_manifest(out, status="running")
    ck = load_tensors(out / "checkpoint.pt")
    changed = corrupt(ck)
    torch.save(ck if changed is None else changed, out / "checkpoint.pt")
    with pytest.raises(PadistillError, match=message) as err:
        run_distill(tiny_config(), tiny_prepared, out, experts_dir=tiny_experts, **QUIET)
    assert str(err.value).startswith(f"{out / 'checkpoint.pt'}: unusable distillation checkpoint (")
    assert "delete it to restart" in str(err.value) and "\n" not in str(err.value)


def test_an_intact_checkpoint_still_resumes(tmp_path, tiny_prepared, tiny_experts, finished_run):
    out = tmp_path / "d"
    shutil.copytree(finished_run, out)
    edit_manifest(out, status="running")
    logs = []
    run_distill(tiny_config(), tiny_prepared, out, experts_dir=tiny_experts, log=logs.append, show_progress=False)
    assert any("resuming" in line and "iteration 3" in line for line in logs)
    assert torch.equal(load_tensors(out / "images.pt"), load_tensors(finished_run / "images.pt"))
