"""Hugging Face `datasets` as a dataset source (`data.name: hf`), and the shared reading helpers.

Input: option `path` (default: the data root itself), one of
  - a folder written by `datasets.Dataset.save_to_disk` / `DatasetDict.save_to_disk`,
  - a folder of parquet shards (splits found by the Hub's own file-name rules: `data/train-00000-of-00001.parquet`,
    `train/*.parquet`, `test.parquet`, ...; a folder whose files name no split is all `train`),
  - a Hub id (`user/name`, optional `subset` and `revision`), resolved from the local Hugging Face cache with
    the library's offline mode; only with `--download` (`data.download`) may it reach the Hub.
  A relative folder is looked up in the working directory, then under the data root.
Options: `image_column` / `label_column` (default: the one `Image` / `ClassLabel` feature), `train_split`
(`train`), `test_split` (`test`), `test_fraction` + `split_seed` (a seeded per-class hold-out of the train split,
allowed only when there is no test split), `resize` (`[H, W]` or one number; images of another size are resized
with bilinear filtering, without it mixed sizes are refused), `mode` (`RGB`, or `L` to keep one grey channel),
`cache` (true).
Output: a `Dataset` named `hf`: uint8 RGB images in the split's row order (greyscale, palette and alpha images
converted to RGB), labels in `ClassLabel` order with its class names; a plain integer or string label column is
mapped to its sorted distinct values (names = the values). mean/std from the train set.
Purpose: distil what users already keep as `datasets`. Decoding is the slow part, so the arrays are cached in
`<root>/hf-cache/` (keyed by a signature of the encoded image bytes, labels and options) and reused while it
matches, exactly as the Tiny ImageNet loader does. `datasets` is the optional extra `padistill[hf]`.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import re
from pathlib import Path

import numpy as np
import torch

from padistill.data.dataset import Dataset, channel_stats
from padistill.data.folders import _check_mode, _split
from padistill.data.registry import register_dataset
from padistill.data.tinyimagenet import _read_cache, _write_cache
from padistill.errors import PadistillError

_CACHE_VERSION = "padistill.hf-cache/1"
_MODES = ("RGB", "L")


def require_datasets(what: str = "the hf dataset source"):
    """The `datasets` module, or a one-line error saying how to install it."""
    try:
        import datasets
    except ImportError:
        raise PadistillError(f"{what} needs the optional package `datasets`: pip install 'padistill[hf]'") from None
    return datasets


@contextlib.contextmanager
def quiet_datasets():
    """Silence the library's own progress bars (our loaders show their own) and restore them after."""
    datasets = require_datasets()
    was_on = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        yield datasets
    finally:
        if was_on:
            datasets.enable_progress_bars()


@contextlib.contextmanager
def hub_offline(offline: bool):
    """Run with the Hub's offline mode on (cache only) or as configured; both libraries read the flag at call time."""
    import datasets.config as dcfg
    import huggingface_hub.constants as hcfg

    flags = [(m, k) for m, k in ((dcfg, "HF_HUB_OFFLINE"), (dcfg, "HF_DATASETS_OFFLINE"), (hcfg, "HF_HUB_OFFLINE"))
             if hasattr(m, k)]
    before = [getattr(m, k) for m, k in flags]
    if offline:
        for m, k in flags:
            setattr(m, k, True)
    try:
        yield
    finally:
        for (m, k), v in zip(flags, before):
            setattr(m, k, v)


def local_folder(path: str, root: Path | None = None) -> Path | None:
    """`path` as an existing folder (as given, else under `root`), or None (then it may be a Hub id)."""
    for cand in (Path(path).expanduser(), (Path(root) / path) if root is not None else None):
        if cand is not None and cand.is_dir():
            return cand
    return None


def open_splits(path: str, root: Path | None = None, download: bool = False, subset: str | None = None,
                revision: str | None = None) -> tuple[dict, str]:
    """{split name: datasets.Dataset} of a save_to_disk folder, a parquet folder or a cached Hub id; and a
    description of where it came from (for messages)."""
    datasets = require_datasets()
    folder = local_folder(path, root)
    if folder is not None:
        if (folder / "dataset_dict.json").is_file() or (folder / "state.json").is_file():
            try:
                obj = datasets.load_from_disk(str(folder))
            except (OSError, ValueError, KeyError, FileNotFoundError) as e:
                raise PadistillError(f"{folder}: not a readable save_to_disk folder ({_first_line(e)})") from None
            return (dict(obj) if isinstance(obj, datasets.DatasetDict) else {"train": obj}), str(folder)
        return _parquet_splits(folder), str(folder)
    if not re.fullmatch(r"[\w.-]+(/[\w.-]+)?", path):
        raise PadistillError(f"hf: {path} is neither a folder (save_to_disk or parquet shards) nor a Hub id "
                             "(user/name)")
    with quiet_datasets(), hub_offline(not download):
        try:
            obj = datasets.load_dataset(path, subset, revision=revision)
        except Exception as e:  # noqa: BLE001  (the library raises many types: all mean "not available")
            if download:
                raise PadistillError(f"hf: cannot load {path!r} from the Hugging Face Hub ({_first_line(e)})") from None
            raise PadistillError(f"hf: {path!r} is not in the local Hugging Face cache ({_first_line(e)}); pass "
                                 "--download to fetch it from the Hub") from None
    return (dict(obj) if isinstance(obj, datasets.DatasetDict) else {"train": obj}), f"hub:{path}"


def _parquet_splits(folder: Path) -> dict:
    """Parquet shards grouped into splits by the Hub's file-name rules, read into memory (no cache copy)."""
    datasets = require_datasets()
    import pyarrow as pa
    import pyarrow.parquet as pq
    from datasets.data_files import DataFilesDict, get_data_patterns

    if not any(folder.rglob("*.parquet")):
        raise PadistillError(f"{folder}: holds neither a save_to_disk dataset (dataset_dict.json / state.json) nor "
                             "parquet files")
    try:
        files = DataFilesDict.from_patterns(get_data_patterns(str(folder)), base_path=str(folder))
    except Exception as e:  # noqa: BLE001
        raise PadistillError(f"{folder}: cannot sort its files into splits ({_first_line(e)})") from None
    out = {}
    for split, paths in files.items():
        paths = [p for p in paths if str(p).endswith(".parquet")]
        if not paths:
            continue
        try:
            table = pa.concat_tables([pq.read_table(p) for p in paths])
        except (OSError, ValueError, pa.ArrowException) as e:
            raise PadistillError(f"{folder}: cannot read the {split} parquet shards ({_first_line(e)})") from None
        out[str(split)] = datasets.Dataset(table)  # features come from the shards' own metadata
    if not out:
        raise PadistillError(f"{folder}: no parquet shards in any split")
    return out


def find_column(features, kind: str, given: str | None, where: str, option: str) -> str:
    """The column named `given` (checked), else the one feature of type `kind` ('Image' / 'ClassLabel')."""
    cols = list(features)
    if given is not None:
        if given not in features:
            raise PadistillError(f"{where}: no column {given!r} (columns: {', '.join(cols)})")
        return given
    found = [c for c, f in features.items() if type(f).__name__ == kind]
    if len(found) != 1:
        what = f"{len(found)} {kind} columns ({', '.join(found)})" if found else f"no {kind} column"
        raise PadistillError(f"{where}: {what} among {', '.join(cols)}; name it with --set data.options.{option}=...")
    return found[0]


def read_rows(ds, image_col: str, label_col: str, where: str) -> tuple[list[bytes], list]:
    """Encoded image bytes and raw labels of every row, in row order (no decoding)."""
    from datasets import Image

    try:
        enc = ds.select_columns([image_col, label_col]).cast_column(image_col, Image(decode=False))
    except (ValueError, TypeError) as e:
        raise PadistillError(f"{where}: column {image_col!r} does not hold images ({_first_line(e)})") from None
    blobs, labels = [], []
    for batch in enc.iter(batch_size=1000):
        for item in batch[image_col]:
            row = len(blobs)
            data = item.get("bytes") if isinstance(item, dict) else None
            if data is None and isinstance(item, dict) and item.get("path"):
                try:
                    data = Path(item["path"]).read_bytes()
                except OSError as e:
                    raise PadistillError(f"{where}: row {row}: image file {item['path']} ({e.strerror})") from None
            if data is None:
                raise PadistillError(f"{where}: row {row}: empty image")
            blobs.append(data)
        labels.extend(batch[label_col])
    return blobs, labels


def decode_blobs(blobs: list[bytes], mode: str, size: tuple[int, int] | None, resize: bool, where: str,
                 progress: str | None = None) -> torch.Tensor:
    """Encoded images -> uint8 [N, C, H, W] in `mode`; all must be `size` (W, H; default: the first image's),
    or are resized to it when `resize`."""
    from PIL import Image

    from padistill.utils.progress import progress_bar

    c = 1 if mode == "L" else 3
    out = None
    for i, data in enumerate(progress_bar(blobs, desc=progress or "", unit="img",
                                          disable=progress is None or len(blobs) < 2000)):
        try:
            with Image.open(io.BytesIO(data)) as im:
                _check_mode(f"{where}: row {i}", im.mode)
                if im.mode == "P" and "transparency" in im.info:
                    im = im.convert("RGBA")  # palette transparency must go through RGBA to convert cleanly
                im = im.convert(mode)
                if size is None:
                    size = im.size
                if im.size != size:
                    if not resize:
                        raise PadistillError(f"{where}: row {i}: image is {im.size[0]}x{im.size[1]} px, row 0 is "
                                             f"{size[0]}x{size[1]}; pass --set data.options.resize=[H, W] to resize "
                                             "them all")
                    im = im.resize(size, Image.BILINEAR)
                arr = np.asarray(im)
        except (OSError, ValueError, Image.DecompressionBombError) as e:
            if isinstance(e, PadistillError):
                raise
            raise PadistillError(f"{where}: row {i}: not a readable image ({_first_line(e)})") from None
        if out is None:
            out = np.empty((len(blobs), size[1], size[0], c), dtype=np.uint8)
        out[i] = arr.reshape(size[1], size[0], c)
    if out is None:
        raise PadistillError(f"{where}: holds no images")
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()


def _class_names(features, label_col: str, raw: list[list], where: str) -> tuple[list[str], list[torch.Tensor]]:
    """Class names and int64 labels per split: `ClassLabel` order, else the sorted distinct values."""
    feat = features[label_col]
    if type(feat).__name__ == "ClassLabel":
        names = [str(n) for n in feat.names]
        ys = [torch.tensor(r, dtype=torch.int64) for r in raw]
        for y in ys:
            if len(y) and (int(y.min()) < 0 or int(y.max()) >= len(names)):
                raise PadistillError(f"{where}: column {label_col!r} holds labels outside [0, {len(names)}) "
                                     f"(-1 marks unlabelled rows; remove them first)")
        return names, ys
    values = [v for r in raw for v in r]
    if any(v is None for v in values):
        raise PadistillError(f"{where}: column {label_col!r} has empty labels; remove those rows first")
    ints = all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in values)
    if not ints and not all(isinstance(v, str) for v in values):
        kinds = sorted({type(v).__name__ for v in values})
        raise PadistillError(f"{where}: label column {label_col!r} must hold integers or strings (class names), "
                             f"found {', '.join(kinds)}")
    distinct = sorted(set(values))
    index = {v: i for i, v in enumerate(distinct)}
    return [str(v) for v in distinct], [torch.tensor([index[v] for v in r], dtype=torch.int64) for r in raw]


def _signature(options: dict, parts: list[tuple[list[bytes], list]]) -> str:
    h = hashlib.sha256(f"{_CACHE_VERSION};{sorted(options.items())!r}".encode())
    for blobs, labels in parts:
        h.update(f"split;{len(blobs)};".encode())
        for b in blobs:
            h.update(len(b).to_bytes(8, "little"))
            h.update(b)
        h.update(repr(list(labels)).encode())
    return h.hexdigest()


def _size_option(resize, where: str) -> tuple[int, int] | None:
    """`resize` as (W, H) for PIL; accepts one number or [H, W]."""
    if resize is None:
        return None
    vals = [resize] if isinstance(resize, int) else list(resize) if isinstance(resize, (list, tuple)) else None
    if vals is None or len(vals) not in (1, 2) or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0
                                                          for v in vals):
        raise PadistillError(f"{where}: option resize must be a positive size or [H, W], found {resize!r}")
    h, w = vals if len(vals) == 2 else (vals[0], vals[0])
    return (w, h)


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return (text.splitlines()[0][:200] if text else type(e).__name__)


@register_dataset("hf")
def load_hf(root: Path, download: bool, path: str | None = None, image_column: str | None = None,
            label_column: str | None = None, train_split: str = "train", test_split: str = "test",
            test_fraction: float | None = None, split_seed: int = 0, resize=None, mode: str = "RGB",
            subset: str | None = None, revision: str | None = None, cache: bool = True) -> Dataset:
    """A `datasets` dataset from disk, parquet shards or the local Hub cache (see the module docstring)."""
    if path is None:  # the data root itself may be the dataset folder
        r = Path(root)
        if not (r.is_dir() and ((r / "dataset_dict.json").is_file() or (r / "state.json").is_file()
                                or any(r.rglob("*.parquet")))):
            raise PadistillError(f"hf: no dataset in the data root {r}; name it with --set data.options.path=... (a "
                                 "save_to_disk folder, a folder of parquet shards, or a Hub id)")
        path = str(r)
    if mode not in _MODES:
        raise PadistillError(f"hf: option mode must be one of {', '.join(_MODES)}, found {mode!r}")
    size = _size_option(resize, "hf")
    splits, origin = open_splits(str(path), root, download, subset, revision)
    where = f"hf {origin}"
    if train_split not in splits:
        raise PadistillError(f"{where}: no {train_split!r} split (splits: {', '.join(splits)}); "
                             "choose one with --set data.options.train_split=...")
    train = splits[train_split]
    test = splits.get(test_split)
    if test is None and test_fraction is None:
        raise PadistillError(f"{where}: no {test_split!r} split (splits: {', '.join(splits)}); choose one with "
                             "--set data.options.test_split=..., or hold out part of the train split with "
                             "--set data.options.test_fraction=0.2")
    if test is not None and test_fraction is not None:
        raise PadistillError(f"{where}: has a {test_split!r} split, so test_fraction does not apply; remove it")
    if test_fraction is not None and not 0.0 < float(test_fraction) < 1.0:
        raise PadistillError(f"{where}: test_fraction must be in (0, 1), found {test_fraction}")
    image_col = find_column(train.features, "Image", image_column, where, "image_column")
    label_col = find_column(train.features, "ClassLabel", label_column, where, "label_column")
    parts = [read_rows(train, image_col, label_col, f"{where} [{train_split}]")]
    if test is not None:
        for col in (image_col, label_col):
            if col not in test.features:
                raise PadistillError(f"{where} [{test_split}]: no column {col!r} (columns: {', '.join(test.features)})")
        if test.features[label_col] != train.features[label_col]:
            raise PadistillError(f"{where}: column {label_col!r} differs between the {train_split} and {test_split} "
                                 "splits (different class lists)")
        parts.append(read_rows(test, image_col, label_col, f"{where} [{test_split}]"))
    names, ys = _class_names(train.features, label_col, [p[1] for p in parts], where)
    options = {"image": image_col, "label": label_col, "mode": mode, "resize": size,
               "test_fraction": test_fraction, "split_seed": int(split_seed)}
    signature = _signature(options, parts)
    cache_path = Path(root) / "hf-cache" / (re.sub(r"[^A-Za-z0-9._-]+", "_", origin).strip("_")[-80:] + "-"
                                            + hashlib.sha256(repr((origin, subset, train_split, test_split,
                                                                   sorted(options.items()))).encode()
                                                             ).hexdigest()[:12] + ".npz")
    arrays = _read_cache(cache_path, signature) if cache else None
    if arrays is None:
        x_train = decode_blobs(parts[0][0], mode, size, size is not None, f"{where} [{train_split}]",
                               progress=f"hf {train_split}")
        hw = (x_train.shape[3], x_train.shape[2])
        if test is not None:
            x_test = decode_blobs(parts[1][0], mode, hw, size is not None, f"{where} [{test_split}] (size of the "
                                  f"{train_split} split)", progress=f"hf {test_split}")
            y_train, y_test = ys
        else:
            test_idx = _split(ys[0], len(names), float(test_fraction), int(split_seed))
            is_test = torch.zeros(len(ys[0]), dtype=torch.bool)
            is_test[test_idx] = True
            x_train, x_test = x_train[~is_test], x_train[is_test]
            y_train, y_test = ys[0][~is_test], ys[0][is_test]
        arrays = (x_train, y_train, x_test, y_test)
        if cache:
            _write_cache(cache_path, signature, arrays)
    mean, std = channel_stats(arrays[0])
    return Dataset("hf", *arrays, names, mean, std)
