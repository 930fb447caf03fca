"""The `hf` dataset source on small generated datasets written by the real `datasets` library."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from PIL import Image

from padistill.data import load_dataset
from padistill.errors import PadistillError

try:
    import datasets
except ImportError:  # the optional extra padistill[hf]
    datasets = None
needs_datasets = pytest.mark.skipif(datasets is None, reason="`datasets` is not installed: pip install 'padistill[hf]'")

NAMES = ["cat", "dog", "frog"]


def pil_images(n: int, seed: int, size=(6, 5), mode: str = "RGB") -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
    return [rng.integers(0, 256, size=shape, dtype=np.uint8) for _ in range(n)]


def make_split(arrays, labels, label_feature=None):
    feats = datasets.Features({"img": datasets.Image(),
                               "y": label_feature or datasets.ClassLabel(names=NAMES)})
    return datasets.Dataset.from_dict({"img": [Image.fromarray(a) for a in arrays], "y": labels}, features=feats)


def as_nchw(arrays) -> torch.Tensor:
    x = np.stack([a if a.ndim == 3 else np.repeat(a[..., None], 3, axis=2) for a in arrays])
    return torch.from_numpy(x).permute(0, 3, 1, 2)


@pytest.fixture
def dsdict():
    if datasets is None:
        pytest.skip("`datasets` is not installed")
    train_x, test_x = pil_images(9, 0), pil_images(3, 1)
    train_y, test_y = [0, 1, 2, 2, 1, 0, 0, 1, 2], [2, 0, 1]
    d = datasets.DatasetDict({"train": make_split(train_x, train_y), "test": make_split(test_x, test_y)})
    return d, (train_x, train_y, test_x, test_y)


def check(ds, expected):
    train_x, train_y, test_x, test_y = expected
    assert ds.name == "hf" and ds.class_names == NAMES
    assert torch.equal(ds.x_train, as_nchw(train_x)) and ds.y_train.tolist() == train_y
    assert torch.equal(ds.x_test, as_nchw(test_x)) and ds.y_test.tolist() == test_y


@needs_datasets
def test_save_to_disk_dataset_dict_is_read_exactly(tmp_path, dsdict):
    d, expected = dsdict
    d.save_to_disk(str(tmp_path / "disk"))
    ds = load_dataset("hf", root=tmp_path / "root", path=str(tmp_path / "disk"))
    check(ds, expected)
    assert ds.x_train.shape[1:] == (3, 5, 6) and ds.x_train.dtype == torch.uint8
    check(load_dataset("hf", root=tmp_path / "disk"), expected)  # no path: the data root is the dataset folder


@needs_datasets
def test_parquet_shards_give_the_same_dataset(tmp_path, dsdict):
    d, expected = dsdict
    (tmp_path / "pq" / "data").mkdir(parents=True)
    d["train"].select(range(5)).to_parquet(str(tmp_path / "pq" / "data" / "train-00000-of-00002.parquet"))
    d["train"].select(range(5, 9)).to_parquet(str(tmp_path / "pq" / "data" / "train-00001-of-00002.parquet"))
    d["test"].to_parquet(str(tmp_path / "pq" / "data" / "test-00000-of-00001.parquet"))
    check(load_dataset("hf", root=tmp_path, path="pq"), expected)  # relative: found under the data root


@needs_datasets
def test_missing_test_split_is_refused_unless_a_fraction_is_asked(tmp_path, dsdict):
    d, (train_x, train_y, test_x, test_y) = dsdict
    d["train"].save_to_disk(str(tmp_path / "single"))  # a plain Dataset: one split, train
    with pytest.raises(PadistillError, match=r"no 'test' split \(splits: train\).*test_fraction"):
        load_dataset("hf", root=tmp_path, path=str(tmp_path / "single"))
    ds = load_dataset("hf", root=tmp_path, path=str(tmp_path / "single"), test_fraction=0.34)
    assert len(ds.y_test) == 3 and len(ds.y_train) == 6 and sorted(ds.y_test.tolist()) == [0, 1, 2]
    again = load_dataset("hf", root=tmp_path, path=str(tmp_path / "single"), test_fraction=0.34, cache=False)
    assert torch.equal(again.x_test, ds.x_test)  # seeded: the same images every time
    datasets.DatasetDict({"train": d["train"], "validation": d["test"]}).save_to_disk(str(tmp_path / "val"))
    with pytest.raises(PadistillError, match=r"no 'test' split \(splits: train, validation\)"):
        load_dataset("hf", root=tmp_path, path=str(tmp_path / "val"))
    check(load_dataset("hf", root=tmp_path, path=str(tmp_path / "val"), test_split="validation"),
          (train_x, train_y, test_x, test_y))
    with pytest.raises(PadistillError, match="test_fraction does not apply"):
        load_dataset("hf", root=tmp_path, path=str(tmp_path / "val"), test_split="validation", test_fraction=0.2)


@needs_datasets
def test_greyscale_and_palette_images_become_rgb(tmp_path):
    grey = pil_images(3, 2, mode="L")
    pal = Image.fromarray(pil_images(1, 3)[0]).convert("P", palette=Image.ADAPTIVE, colors=8)
    rgb_of_pal = np.asarray(pal.convert("RGB"))
    feats = datasets.Features({"img": datasets.Image(), "y": datasets.ClassLabel(names=NAMES)})
    split = datasets.Dataset.from_dict({"img": [Image.fromarray(a) for a in grey] + [pal], "y": [0, 1, 2, 0]},
                                       features=feats)
    datasets.DatasetDict({"train": split, "test": split}).save_to_disk(str(tmp_path / "g"))
    ds = load_dataset("hf", root=tmp_path, path=str(tmp_path / "g"))
    assert ds.channels == 3
    assert torch.equal(ds.x_train[:3], as_nchw(grey)) and torch.equal(ds.x_train[3], as_nchw([rgb_of_pal])[0])
    one = load_dataset("hf", root=tmp_path, path=str(tmp_path / "g"), mode="L")
    assert one.channels == 1 and torch.equal(one.x_train[:3, 0], torch.from_numpy(np.stack(grey)))


@needs_datasets
def test_label_column_without_classlabel(tmp_path):
    arrays = pil_images(6, 4)
    split = make_split(arrays, ["frog", "ant", "frog", "bee", "ant", "bee"], label_feature=datasets.Value("string"))
    datasets.DatasetDict({"train": split, "test": split.select([0, 1])}).save_to_disk(str(tmp_path / "s"))
    with pytest.raises(PadistillError, match=r"no ClassLabel column among img, y; name it with "
                                             r"--set data\.options\.label_column"):
        load_dataset("hf", root=tmp_path, path=str(tmp_path / "s"))
    ds = load_dataset("hf", root=tmp_path, path=str(tmp_path / "s"), label_column="y")
    assert ds.class_names == ["ant", "bee", "frog"] and ds.y_train.tolist() == [2, 0, 2, 1, 0, 1]
    assert ds.y_test.tolist() == [2, 0]
    ints = make_split(arrays, [7, 3, 7, 3, 5, 5], label_feature=datasets.Value("int64"))
    datasets.DatasetDict({"train": ints, "test": ints}).save_to_disk(str(tmp_path / "i"))
    ds = load_dataset("hf", root=tmp_path, path=str(tmp_path / "i"), label_column="y", image_column="img")
    assert ds.class_names == ["3", "5", "7"] and ds.y_train.tolist() == [2, 0, 2, 0, 1, 1]
    with pytest.raises(PadistillError, match=r"no column 'label' \(columns: img, y\)"):
        load_dataset("hf", root=tmp_path, path=str(tmp_path / "i"), label_column="label")


@needs_datasets
def test_mixed_sizes_are_refused_or_resized_on_request(tmp_path):
    arrays = pil_images(2, 5, size=(6, 5)) + pil_images(1, 6, size=(4, 4))
    split = make_split(arrays, [0, 1, 2])
    datasets.DatasetDict({"train": split, "test": split}).save_to_disk(str(tmp_path / "m"))
    with pytest.raises(PadistillError, match=r"row 2: image is 4x4 px, row 0 is 6x5; pass --set "
                                             r"data\.options\.resize"):
        load_dataset("hf", root=tmp_path, path=str(tmp_path / "m"))
    ds = load_dataset("hf", root=tmp_path, path=str(tmp_path / "m"), resize=[8, 7])
    assert ds.image_size == (8, 7) and ds.x_test.shape[2:] == (8, 7)
    want = np.array(Image.fromarray(arrays[2]).resize((7, 8), Image.BILINEAR))
    assert torch.equal(ds.x_train[2], torch.from_numpy(want).permute(2, 0, 1))


@needs_datasets
def test_decoded_arrays_are_cached_and_rebuilt_when_the_data_changes(tmp_path, dsdict, monkeypatch):
    from padistill.data import hf

    d, expected = dsdict
    d.save_to_disk(str(tmp_path / "disk"))
    load_dataset("hf", root=tmp_path / "root", path=str(tmp_path / "disk"))
    assert len(list((tmp_path / "root" / "hf-cache").glob("*.npz"))) == 1
    real = hf.decode_blobs

    def no_decoding(*a, **k):
        raise AssertionError("decoded again although the cache matches")

    monkeypatch.setattr(hf, "decode_blobs", no_decoding)
    check(load_dataset("hf", root=tmp_path / "root", path=str(tmp_path / "disk")), expected)
    monkeypatch.setattr(hf, "decode_blobs", real)
    changed = datasets.DatasetDict({"train": make_split(pil_images(9, 9), expected[1]), "test": d["test"]})
    changed.save_to_disk(str(tmp_path / "disk2"))
    import shutil

    shutil.rmtree(tmp_path / "disk")
    shutil.move(str(tmp_path / "disk2"), str(tmp_path / "disk"))
    ds = load_dataset("hf", root=tmp_path / "root", path=str(tmp_path / "disk"))
    assert torch.equal(ds.x_train, as_nchw(pil_images(9, 9)))


@needs_datasets
def test_hub_ids_are_read_offline_unless_download(tmp_path, dsdict, monkeypatch):
    import datasets.config as dcfg
    import huggingface_hub.constants as hcfg

    d, expected = dsdict
    seen = []

    def fake_load_dataset(path, name=None, revision=None):
        seen.append((path, name, revision, dcfg.HF_HUB_OFFLINE, hcfg.HF_HUB_OFFLINE))
        if path == "someone/missing":
            raise FileNotFoundError("Dataset someone/missing is not cached")
        return d

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    before = (dcfg.HF_HUB_OFFLINE, hcfg.HF_HUB_OFFLINE)
    check(load_dataset("hf", root=tmp_path, path="someone/tiny", revision="v1"), expected)
    assert seen[-1] == ("someone/tiny", None, "v1", True, True)
    assert (dcfg.HF_HUB_OFFLINE, hcfg.HF_HUB_OFFLINE) == before  # restored
    load_dataset("hf", root=tmp_path, download=True, path="someone/tiny", subset="plain")
    assert seen[-1][:2] == ("someone/tiny", "plain") and seen[-1][3:] == before
    with pytest.raises(PadistillError, match=r"'someone/missing' is not in the local Hugging Face cache .*--download"):
        load_dataset("hf", root=tmp_path, path="someone/missing")
    with pytest.raises(PadistillError, match=r"neither a folder .* nor a Hub id"):
        load_dataset("hf", root=tmp_path, path=str(tmp_path / "no" / "such folder"))


def test_without_datasets_installed_hf_is_a_one_line_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # `import datasets` raises ImportError
    with pytest.raises(PadistillError, match=r"^the hf dataset source needs the optional package `datasets`: "
                                             r"pip install 'padistill\[hf\]'$"):
        load_dataset("hf", root=tmp_path, path=str(tmp_path))
    with pytest.raises(PadistillError, match=r"^hf: no dataset in the data root .*; name it with --set "
                                             r"data\.options\.path="):
        load_dataset("hf", root=tmp_path)


@needs_datasets
def test_digits_written_as_a_datasets_dataset_load_like_the_builtin_loader(tmp_path):
    """Through the config, as `--set data.name=hf --set data.options=...` gives it."""
    from padistill.config import load_config

    ref = load_dataset("digits")
    feats = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=ref.class_names)})

    def split(x, y):
        return datasets.Dataset.from_dict({"image": [Image.fromarray(a[0].numpy()) for a in x], "label": y.tolist()},
                                          features=feats)

    datasets.DatasetDict({"train": split(ref.x_train, ref.y_train),
                          "test": split(ref.x_test, ref.y_test)}).save_to_disk(str(tmp_path / "digits"))
    d = load_config(overrides=["data.name=hf", f"data.options={{path: {tmp_path / 'digits'}, mode: L}}"]).data
    ds = load_dataset(d.name, root=tmp_path / "root", **d.options)
    assert torch.equal(ds.x_train, ref.x_train) and torch.equal(ds.y_train, ref.y_train)
    assert torch.equal(ds.x_test, ref.x_test) and ds.class_names == ref.class_names
    assert (ds.mean, ds.std) == (ref.mean, ref.std)  # both from the train set (channel_stats)


@needs_datasets
def test_hub_id_from_a_real_local_cache_without_network(tmp_path, dsdict, monkeypatch):
    """A Hub id resolves from the library's own cache in offline mode (the cache is built here the way the library
    lays it out after a download: <cache>/<user>___<name>/<config>/<version>/<hash>/<name>-<split>.arrow)."""
    import shutil

    import datasets.config as dcfg

    d, expected = dsdict
    (tmp_path / "src" / "data").mkdir(parents=True)
    for split in ("train", "test"):
        d[split].to_parquet(str(tmp_path / "src" / "data" / f"{split}-00000-of-00001.parquet"))
    monkeypatch.setattr(dcfg, "HF_DATASETS_CACHE", str(tmp_path / "cache"))
    datasets.load_dataset("parquet", data_dir=str(tmp_path / "src"))  # fills <cache>/parquet/...
    built = next(p for p in (tmp_path / "cache" / "parquet").glob("*/*/*") if p.is_dir())
    target = tmp_path / "cache" / "someone___tiny" / "default" / "0.0.0" / built.name
    shutil.copytree(built, target)
    for split in ("train", "test"):
        (target / f"parquet-{split}.arrow").rename(target / f"tiny-{split}.arrow")
    check(load_dataset("hf", root=tmp_path / "root", path="someone/tiny"), expected)
    with pytest.raises(PadistillError, match=r"'someone/other' is not in the local Hugging Face cache"):
        load_dataset("hf", root=tmp_path / "root", path="someone/other")
