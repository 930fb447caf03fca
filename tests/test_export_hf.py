"""`padistill export --format hf` / `import --format hf`: a Hugging Face dataset folder, its card, and the push."""

from __future__ import annotations

import hashlib
import json
import sys

import numpy as np
import pytest
import torch
import yaml

from evalkit import eval_prepared, make_run
from padistill.artifacts import load_distilled
from padistill.errors import PadistillError
from padistill.export import export_set, import_set

try:
    import datasets
except ImportError:  # the optional extra padistill[hf]
    datasets = None
needs_datasets = pytest.mark.skipif(datasets is None, reason="`datasets` is not installed: pip install 'padistill[hf]'")
QUIET = dict(log=lambda *_: None)


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread(one_torch_thread):
    """Small nets run faster (and steadier) on one thread."""


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = make_run(tmp_path_factory.mktemp("exp") / "run", eval_prepared(), ipc=3, metrics=False)
    (root / "eval").mkdir()
    (root / "eval" / "table.md").write_text("# Evaluation: /somewhere/local/run/distill\n\nTop-1 accuracy (%) on the "
                                            "full test split.\n\n| | convnet |\n|---|---|\n| distilled | 50.0 ± 1.0 |\n"
                                            "\nProtocol: 301 epochs, SGD momentum 0.9.\n")
    return root


@pytest.fixture(scope="module")
def exported(run, tmp_path_factory):
    if datasets is None:
        pytest.skip("`datasets` is not installed")
    return export_set(run, tmp_path_factory.mktemp("hf") / "out", fmt="hf", **QUIET)


def folder_hashes(folder):
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@needs_datasets
def test_export_loads_with_datasets_and_round_trips_bit_exact(run, exported, tmp_path):
    from padistill.data import load_dataset
    from padistill.data.transforms import Preprocessor

    src = load_distilled(run / "distill")
    names = load_dataset("digits").class_names
    for ds in (datasets.load_from_disk(str(exported)),
               datasets.load_dataset("parquet", data_files=str(exported / "data" / "*.parquet"), split="train")):
        assert ds.features["label"].names == names and len(ds) == 30
        assert ds["label"] == src.class_of_rows().tolist()
        pixels = torch.from_numpy(np.stack([np.asarray(im) for im in ds["image"]]))[:, None]  # 1-channel digits
        assert torch.equal(pixels, Preprocessor.to_uint8(src.pre.inverse(src.images)))
        assert ds.features["image"].__class__.__name__ == "Image"
        assert torch.equal(torch.tensor(np.asarray(ds["soft_label"], dtype=np.float32)), src.labels)
    back = import_set(exported, tmp_path / "imp", fmt="hf", space="zca", dataset="digits", **QUIET)
    got = load_distilled(back)
    assert torch.equal(got.images, src.images) and torch.equal(got.labels, src.labels)
    assert torch.equal(got.lr, src.lr) and got.pre.fingerprint() == src.pre.fingerprint()
    info = json.loads((exported / "export.json").read_text())
    assert info["format"] == "hf" and info["transform_fingerprint"] == src.pre.fingerprint()


@needs_datasets
def test_pixel_import_and_png_only_export(run, exported, tmp_path):
    src = load_distilled(run / "distill")
    # --space pixel takes the PNGs (within one 8-bit level of the de-whitened set) into the run's model space
    px = load_distilled(import_set(exported, tmp_path / "px", fmt="hf", space="pixel", dataset="digits", **QUIET))
    assert (px.pre.inverse(px.images) - src.pre.inverse(src.images).clamp(0, 1)).abs().max() <= 0.5 / 255 + 1e-5
    only = export_set(run, tmp_path / "png", fmt="hf", space="pixel", **QUIET)
    assert "model_image" not in datasets.load_from_disk(str(only)).features
    with pytest.raises(PadistillError, match=r"no 'model_image' column .* --space pixel"):
        import_set(only, tmp_path / "x", fmt="hf", space="zca", dataset="digits", **QUIET)
    with pytest.raises(PadistillError, match=r"config\.yaml: the set was made with data\.preprocess=zca, not --space "
                                             "normalize"):
        import_set(exported, tmp_path / "y", fmt="hf", space="normalize", dataset="digits", **QUIET)
    import shutil

    shutil.copytree(exported, tmp_path / "bare")
    (tmp_path / "bare" / "config.yaml").unlink()  # export.json still says which space the tensors are in
    with pytest.raises(PadistillError, match=r"tensors are in zca space, not --space normalize; pass --space zca"):
        import_set(tmp_path / "bare", tmp_path / "y", fmt="hf", space="normalize", dataset="digits", **QUIET)


@needs_datasets
def test_import_refuses_model_tensors_from_other_data(exported, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(exported, copy)
    info = json.loads((copy / "export.json").read_text())
    info["dataset_fingerprint"] = "0" * 64
    (copy / "export.json").write_text(json.dumps(info))
    with pytest.raises(PadistillError, match=r"export\.json: the set was distilled on other data"):
        import_set(copy, tmp_path / "imp", fmt="hf", space="zca", dataset="digits", **QUIET)


@needs_datasets
def test_hard_label_set_has_no_soft_column(tmp_path):
    from padistill.artifacts import save_distilled

    root = make_run(tmp_path / "run", eval_prepared(), ipc=2, metrics=False)
    src = load_distilled(root / "distill")
    save_distilled(root / "distill", src.images, src.class_of_rows(), src.lr, src.pre)
    out = export_set(root, tmp_path / "hf", fmt="hf", **QUIET)
    assert "soft_label" not in datasets.load_from_disk(str(out)).features
    got = load_distilled(import_set(out, tmp_path / "imp", fmt="hf", space="zca", dataset="digits", **QUIET))
    assert got.labels.dtype == torch.int64 and torch.equal(got.labels, src.class_of_rows())
    assert torch.equal(got.images, src.images)


@needs_datasets
def test_dataset_card(exported):
    text = (exported / "README.md").read_text()
    assert text.startswith("---\n")
    header = yaml.safe_load(text.split("---\n")[1])
    assert header["configs"] == [{"config_name": "default",
                                  "data_files": [{"split": "train", "path": "data/train-*.parquet"}]}]
    assert header["task_categories"] == ["image-classification"] and "dataset-distillation" in header["tags"]
    body = text.split("---\n", 2)[2]
    assert "**PAD**" in body and "**3 images per class**" in body and "learned student lr **0.02**" in body
    assert "| distilled | 50.0 ± 1.0 |" in body and "Protocol: 301 epochs" in body  # the run's eval table
    assert "/somewhere/local" not in body  # the table's heading with a local path is dropped
    assert "```yaml\nname: " in body and "preprocess: zca" in body  # the config
    assert "@article{li2024pad," in body and "Prioritize Alignment in Dataset Distillation" in body
    assert "arXiv:2408.03360" in body and "@inproceedings{guo2024datm," in body
    from padistill import __version__

    assert f"padistill/) {__version__}" in body
    assert "--format hf --space zca --dataset digits" in body


def test_method_names_from_presets():
    from padistill.config import load_config
    from padistill.hub import method_of

    assert method_of(load_config(preset="pad/cifar10-ipc10"))[0] == "PAD"
    assert method_of(load_config(preset="datm/cifar10-ipc10"))[0] == "DATM"
    assert method_of(load_config(preset="mtt/cifar10-ipc10")) == ("MTT", ["MTT"])
    assert method_of(load_config(preset="dsa/cifar10-ipc1")) == ("DSA", ["DSA", "DC"])
    assert method_of(load_config(preset="pad-dm/cifar10-ipc10")) == ("DM with PAD's filters", ["PAD", "DM"])


@needs_datasets
def test_push_to_hub_uploads_the_folder(exported, monkeypatch):
    import huggingface_hub

    from padistill import hub

    calls = []

    class FakeApi:
        def create_repo(self, repo_id, **kw):
            calls.append(("create", repo_id, kw))
            return f"https://huggingface.co/datasets/{repo_id}"

        def upload_folder(self, **kw):
            calls.append(("upload", kw))

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: "hf_fake")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    url = hub.push_to_hub(exported, "me/digits-pad", **QUIET)
    assert url.endswith("me/digits-pad")
    assert calls[0] == ("create", "me/digits-pad", {"repo_type": "dataset", "private": False, "exist_ok": True})
    up = calls[1][1]
    assert up["folder_path"] == str(exported) and up["repo_type"] == "dataset" and "*.arrow" in up["ignore_patterns"]


@needs_datasets
def test_push_offline_or_logged_out_fails_in_one_line_and_keeps_the_folder(exported, monkeypatch, capsys, run):
    import huggingface_hub

    from padistill.cli import main

    before = folder_hashes(exported)
    monkeypatch.setenv("HF_TOKEN", "hf_fake")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # the library's offline mode
    assert main(["export", str(run), str(exported), "--format", "hf", "--push-to-hub", "me/x"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "offline mode is on" in err and f"the export in {exported} is complete" in err
    after = folder_hashes(exported)
    assert set(after) == set(before)
    assert all(after[k] == before[k] for k in after if k != "README.md")  # rows unchanged; the card names the repo
    assert 'load_dataset("me/x"' in (exported / "README.md").read_text()
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    from padistill.hub import push_to_hub

    with pytest.raises(PadistillError, match=r"not logged in .* the export in .* is complete"):
        push_to_hub(exported, "me/x", **QUIET)

    class Unreachable:
        def create_repo(self, *a, **k):
            raise ConnectionError("[Errno -3] Temporary failure in name resolution\nmore detail")

    monkeypatch.setattr(huggingface_hub, "get_token", lambda: "hf_fake")
    monkeypatch.setattr(huggingface_hub, "HfApi", Unreachable)
    with pytest.raises(PadistillError, match=r"^push to hub me/x: failed \(ConnectionError: \[Errno -3\] Temporary "
                                             r"failure in name resolution\); the export in"):
        push_to_hub(exported, "me/x", **QUIET)
    assert folder_hashes(exported) == after


def test_cli_refuses_push_for_other_formats(run, tmp_path, capsys):
    from padistill.cli import main

    assert main(["export", str(run), str(tmp_path / "dd"), "--push-to-hub", "me/x"]) == 2
    assert "--push-to-hub uploads a Hugging Face dataset; use it with --format hf" in capsys.readouterr().err
    assert not (tmp_path / "dd").exists()


def test_hf_without_datasets_is_a_one_line_error(run, tmp_path, monkeypatch, capsys):
    from padistill.cli import main

    monkeypatch.setitem(sys.modules, "datasets", None)  # `import datasets` raises ImportError
    assert main(["export", str(run), str(tmp_path / "out"), "--format", "hf"]) == 2
    err = capsys.readouterr().err
    assert err == ("padistill: error: export --format hf needs the optional package `datasets`: "
                   "pip install 'padistill[hf]'\n")
    assert not (tmp_path / "out").exists()


@needs_datasets
def test_cli_export_import_hf(run, tmp_path):
    from padistill.cli import main

    assert main(["export", str(run), str(tmp_path / "hf"), "--format", "hf"]) == 0
    assert main(["import", str(tmp_path / "hf"), str(tmp_path / "imp"), "--format", "hf", "--space", "zca",
                 "--dataset", "digits"]) == 0
    assert torch.equal(load_distilled(tmp_path / "imp").images, load_distilled(run / "distill").images)


@needs_datasets
def test_hf_export_over_a_previous_export_leaves_no_stale_files(run, tmp_path):
    want = sorted(["README.md", "config.yaml", "data", "data-00000-of-00001.arrow", "dataset_info.json",
                   "export.json", "state.json"])
    for before in ("imagefolder", "ddranking"):
        out = export_set(run, tmp_path / before, fmt=before, **QUIET)
        export_set(run, out, fmt="hf", **QUIET)
        assert sorted(p.name for p in out.iterdir()) == want, before
