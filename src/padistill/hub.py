"""Distilled sets as Hugging Face datasets: `padistill export --format hf`, its import, the dataset card, and
`--push-to-hub`.

Output folder (`write_hf`, called by `padistill.export.export_set`):
  data/train-00000-of-00001.parquet   the set as parquet (what the Hub serves; `load_dataset("parquet", ...)`)
  data-00000-of-00001.arrow, dataset_info.json, state.json   the same rows as `Dataset.save_to_disk` writes them
                                      (`datasets.load_from_disk(OUT)`)
  README.md                           the dataset card: YAML header for the Hub, method, preset, source, IPC, the
                                      evaluation table with its protocol, the config, version, citation
  export.json, config.yaml            as for every export format: the learned lr, the model-space transform's
                                      kind / eps / dataset fingerprint (and its own fingerprint), and the run's
                                      config from which `import` rebuilds that transform
Columns, one row per synthetic image, class by class:
  image        Image: PNG bytes in pixel space (de-whitened, clamped to [0, 1], rounded to uint8)
  label        ClassLabel with the source dataset's class names (the class the image was distilled for)
  soft_label   float32 list [C]: the learned label logits (soft-label sets only; softmax gives the targets)
  model_image  Array3D float32 [ch, H, W]: the exact model-space tensor (ZCA-whitened / normalised); left out
               with `--space pixel` (a PNG-only set)
Import (`read_hf_set`): `model_image` gives back the model-space tensors bit for bit; `--space pixel` (or a set
without that column, e.g. someone else's) converts the PNGs with the rebuilt transform instead.
"""

from __future__ import annotations

import io
import math
import os
import re
import shutil
import tempfile
from pathlib import Path

import torch

from padistill.errors import PadistillError

PARQUET = "data/train-00000-of-00001.parquet"
_DISK_FILES = ("data-00000-of-00001.arrow", "dataset_info.json", "state.json")
MODEL_COLUMN = "model_image"
SOFT_COLUMN = "soft_label"

CITATIONS = {
    "PAD": ("li2024pad", "Li, Zekai and Guo, Ziyao and Zhao, Wangbo and Zhang, Tianle and Cheng, Zhi-Qi and Khaki, "
            "Samir and Zhang, Kaipeng and Sajedi, Ahmad and Plataniotis, Konstantinos N. and Wang, Kai and You, Yang",
            "Prioritize Alignment in Dataset Distillation", "journal = {arXiv preprint arXiv:2408.03360}", 2024),
    "DATM": ("guo2024datm", "Guo, Ziyao and Wang, Kai and Cazenavette, George and Li, Hui and Zhang, Kaipeng and "
             "You, Yang", "Towards Lossless Dataset Distillation via Difficulty-Aligned Trajectory Matching",
             "booktitle = {International Conference on Learning Representations (ICLR)}", 2024),
    "MTT": ("cazenavette2022mtt", "Cazenavette, George and Wang, Tongzhou and Torralba, Antonio and Efros, Alexei A. "
            "and Zhu, Jun-Yan", "Dataset Distillation by Matching Training Trajectories",
            "booktitle = {IEEE/CVF Conference on Computer Vision and Pattern Recognition (CVPR)}", 2022),
    "DC": ("zhao2021dc", "Zhao, Bo and Mopuri, Konda Reddy and Bilen, Hakan",
           "Dataset Condensation with Gradient Matching",
           "booktitle = {International Conference on Learning Representations (ICLR)}", 2021),
    "DSA": ("zhao2021dsa", "Zhao, Bo and Bilen, Hakan", "Dataset Condensation with Differentiable Siamese Augmentation",
            "booktitle = {International Conference on Machine Learning (ICML)}", 2021),
    "DM": ("zhao2023dm", "Zhao, Bo and Bilen, Hakan", "Dataset Condensation with Distribution Matching",
           "booktitle = {IEEE/CVF Winter Conference on Applications of Computer Vision (WACV)}", 2023),
}


# ------------------------------------------------------------------------------------------ method


def method_of(cfg) -> tuple[str, list[str]]:
    """(a readable method name, the papers to cite) from a resolved config."""
    d = cfg.distill
    if d.method == "tm":
        if cfg.experts.schedule.enabled or d.select.ratio > 0:
            return "PAD", ["PAD", "DATM", "MTT"]
        if d.label_init == "soft" or d.learn_labels:
            return "DATM", ["DATM", "MTT"]
        return "MTT", ["MTT"]
    base = "DM" if d.method == "dm" else ("DSA" if d.augment else "DC")
    papers = [base] if base != "DSA" else ["DSA", "DC"]
    if d.prune.mode != "none" or d.select.ratio > 0:
        return f"{base} with PAD's filters", ["PAD", *papers]
    return base, papers


def _bibtex(key: str) -> str:
    name, authors, title, venue, year = CITATIONS[key]
    kind = "article" if venue.startswith("journal") else "inproceedings"
    return f"@{kind}{{{name},\n  author = {{{authors}}},\n  title = {{{title}}},\n  {venue},\n  year = {{{year}}}\n}}"


# ------------------------------------------------------------------------------------------ export


def _png_bytes(img_uint8: torch.Tensor) -> bytes:
    from PIL import Image

    arr = img_uint8.permute(1, 2, 0).numpy()
    im = Image.fromarray(arr[:, :, 0], mode="L") if arr.shape[2] == 1 else Image.fromarray(arr, mode="RGB")
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def write_hf(out: Path, syn, labels: torch.Tensor, class_names: list[str], space: str, cfg, source: Path,
             repo_id: str | None = None) -> list[str]:
    """Write the rows (parquet + save_to_disk files) and the dataset card into `out`; returns the file names."""
    from padistill.data.hf import quiet_datasets
    from padistill.data.transforms import Preprocessor

    with quiet_datasets() as datasets:
        from datasets import Array3D, ClassLabel, Features, Image, Sequence, Value

        pixels = Preprocessor.to_uint8(syn.pre.inverse(syn.images)).cpu()
        columns = {"image": [{"bytes": _png_bytes(p), "path": None} for p in pixels],
                   "label": syn.class_of_rows().tolist()}
        feats = {"image": Image(), "label": ClassLabel(names=list(class_names))}
        if labels.is_floating_point():
            columns[SOFT_COLUMN] = [row.tolist() for row in labels.float()]
            feats[SOFT_COLUMN] = Sequence(Value("float32"))
        if space == "model":
            columns[MODEL_COLUMN] = [x.numpy() for x in syn.images.detach().cpu().float()]
            feats[MODEL_COLUMN] = Array3D(shape=tuple(syn.images.shape[1:]), dtype="float32")
        ds = datasets.Dataset.from_dict(columns, features=Features(feats))
        tmp = Path(tempfile.mkdtemp(prefix=".hf-export-", dir=out))
        try:
            ds.save_to_disk(str(tmp / "disk"))
            ds.to_parquet(str(tmp / "train.parquet"))
            for name in _DISK_FILES:
                os.replace(tmp / "disk" / name, out / name)
            (out / PARQUET).parent.mkdir(exist_ok=True)
            os.replace(tmp / "train.parquet", out / PARQUET)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    from padistill.utils.io import atomic_write_text

    atomic_write_text(out / "README.md", dataset_card(syn, labels, class_names, space, cfg, source, repo_id))
    return [PARQUET, *_DISK_FILES, "README.md"]


def _eval_markdown(source: Path) -> str | None:
    """The evaluation table (with its protocol) of the run the set comes from, without the local path heading."""
    for cand in (source.parent / "eval" / "table.md", source / "eval" / "table.md"):
        if cand.is_file():
            lines = cand.read_text(encoding="utf-8").splitlines()
            if lines and lines[0].startswith("# "):
                lines = lines[1:]
            return "\n".join(lines).strip()
    return None


def dataset_card(syn, labels: torch.Tensor, class_names: list[str], space: str, cfg, source: Path,
                 repo_id: str | None = None) -> str:
    """README.md for the Hub: a YAML header (configs, task, tags, size) and the card text."""
    import yaml

    from padistill import __version__

    method, papers = method_of(cfg) if cfg is not None else ("unknown", [])
    dataset = cfg.data.name if cfg is not None else "unknown"
    origin = cfg.data.options.get("path") if cfg is not None and dataset == "hf" else None
    source_name = f"{origin} (Hugging Face datasets)" if origin else dataset
    preset = cfg.name if cfg is not None else "unknown"
    n, ipc, C = syn.images.shape[0], syn.ipc, syn.num_classes
    soft = labels.is_floating_point()
    header = {
        "pretty_name": f"{method} distilled {source_name}, {ipc} image{'s' if ipc != 1 else ''} per class",
        "license": "other",
        "license_name": "same-as-source",
        "license_details": f"A synthetic set distilled from {source_name}; it inherits that dataset's terms.",
        "task_categories": ["image-classification"],
        "tags": ["dataset-distillation", "synthetic", "padistill", method.split()[0].lower()],
        "size_categories": ["n<1K" if n < 1000 else "1K<n<10K" if n < 10000 else "10K<n<100K"],
        "configs": [{"config_name": "default", "data_files": [{"split": "train", "path": "data/train-*.parquet"}]}],
    }
    columns = [
        "| column | type | what it holds |", "|---|---|---|",
        "| `image` | Image (PNG) | the synthetic image in pixel space (de-whitened, clamped to [0, 1], 8 bits) |",
        f"| `label` | ClassLabel ({C} classes) | the class the image was distilled for |",
    ]
    if soft:
        columns.append(f"| `{SOFT_COLUMN}` | float32 list [{C}] | learned label logits; softmax gives the training "
                       "targets |")
    if space == "model":
        shape = "×".join(str(s) for s in syn.images.shape[1:])
        columns.append(f"| `{MODEL_COLUMN}` | float32 [{shape}] | the exact tensor in model space ({syn.pre.kind}"
                       f"{f', eps {syn.pre.eps:g}' if syn.pre.kind == 'zca' else ''}), what the networks are "
                       "trained on |")
    ev = _eval_markdown(source)
    cfg_text = ""
    if cfg is not None:
        from padistill.config import dump_yaml

        cfg_text = dump_yaml(cfg)
    cites = "\n\n".join(_bibtex(k) for k in papers)
    space_flag = {"zca": "zca", "normalize": "normalize", "none": "pixel"}.get(syn.pre.kind, "pixel")
    body = [
        f"# {header['pretty_name']}",
        "",
        f"A distilled image-classification set made with [padistill](https://pypi.org/project/padistill/) "
        f"{__version__}: **{method}** (preset / run `{preset}`) distilled **{source_name}** into **{ipc} "
        f"image{'s' if ipc != 1 else ''} per class** ({n} images, {C} classes), "
        f"{'soft (learned) labels' if soft else 'hard labels'}, learned student lr **{float(syn.lr):.6g}** "
        "(the lr to train on it with).",
        "",
        "## Columns",
        "",
        *columns,
        "",
        f"Model space: `{syn.pre.kind}`"
        + (f" (ZCA whitening fitted on the {source_name} training set, eps {syn.pre.eps:g})" if syn.pre.kind == "zca"
           else " (per-channel mean/std of the training set)" if syn.pre.kind == "normalize" else "")
        + f". Class names: {', '.join(class_names[:20])}{' ...' if C > 20 else ''}.",
        "",
        "## Use it",
        "",
        "```python",
        "from datasets import load_dataset",
        f"ds = load_dataset(\"{repo_id or 'REPO_ID'}\", split=\"train\")",
        "# or, on the exported folder: datasets.load_from_disk(FOLDER)",
        "```",
        "",
        "Back into padistill, with the exact model-space tensors (the transform is rebuilt from `config.yaml` and "
        f"the {source_name} data):",
        "",
        "```bash",
        f"padistill import FOLDER runs/imported --format hf --space {space_flag} --dataset {dataset}",
        "padistill eval runs/imported",
        "```",
        "",
        "## Evaluation",
        "",
        ev if ev else "Not evaluated when it was exported (run `padistill eval` on the run folder).",
        "",
        "## Config",
        "",
        "```yaml",
        cfg_text.rstrip() if cfg_text else "(no config.yaml beside the set)",
        "```",
        "",
        "## Citation",
        "",
        f"Method: {method}. Please cite:",
        "",
        "```bibtex",
        cites if cites else "(method unknown)",
        "```",
        "",
    ]
    return "---\n" + yaml.safe_dump(header, sort_keys=False, allow_unicode=True, width=1000) + "---\n\n" + \
        "\n".join(body)


# ------------------------------------------------------------------------------------------ import


def read_hf_set(src: Path, class_names: list[str], space: str, pre
                ) -> tuple[torch.Tensor, torch.Tensor | None, float | None, list[Path], bool]:
    """Rows of an hf export (or any datasets folder with an Image and a ClassLabel column).

    Returns (images, labels, lr or None, files read, in_model_space): model-space float32 tensors from
    `model_image` when --space names the model space of `pre` (the rebuilt transform, which must come from the
    same data as the export's), else uint8 pixels from `image` (to be converted).
    Labels: soft logits [N, C] when `soft_label` is there, else hard classes; rows ordered class by class."""
    import numpy as np

    from padistill.data.hf import decode_blobs, find_column, open_splits, read_rows
    from padistill.utils.io import read_json

    splits, origin = open_splits(str(src))
    if "train" not in splits and len(splits) != 1:
        raise PadistillError(f"{src}: expected one split (train), found {', '.join(splits)}")
    ds = splits.get("train") or next(iter(splits.values()))
    where = str(src)
    image_col = find_column(ds.features, "Image", None, where, "image_column")
    label_col = find_column(ds.features, "ClassLabel", "label" if "label" in ds.features else None, where,
                            "label_column")
    names = [str(n) for n in getattr(ds.features[label_col], "names", [])]
    if not names:
        raise PadistillError(f"{where}: column {label_col!r} must be a ClassLabel (class names)")
    blobs, raw = read_rows(ds, image_col, label_col, where)
    hard = torch.tensor(raw, dtype=torch.int64)
    if names != list(class_names):
        placeholder = all(re.fullmatch(r"(class)?\d+", n) for n in names)
        if sorted(names) == sorted(class_names):
            index = {n: i for i, n in enumerate(class_names)}
            hard = torch.tensor([index[names[int(c)]] for c in hard], dtype=torch.int64)
        elif not (placeholder and len(names) == len(class_names)):
            raise PadistillError(f"{where}: its classes ({', '.join(names[:5])}, ...) are not the dataset's "
                                 f"({', '.join(class_names[:5])}, ...)")
    from padistill.artifacts import require_class_range

    require_class_range(hard, len(class_names), f"{where}: column {label_col!r}")
    order = torch.argsort(hard, stable=True)
    files = [Path(p) for p in _data_files(src)]
    info = read_json(src / "export.json", "export info") if (src / "export.json").is_file() else {}
    info = info if isinstance(info, dict) else {}
    model_kind = str(info.get("preprocess") or pre.kind)  # the space the model_image tensors are in
    use_model = MODEL_COLUMN in ds.features and model_kind == pre.kind and (
        space == model_kind or (space == "pixel" and model_kind == "none"))
    if space != "pixel" and not use_model:
        if MODEL_COLUMN not in ds.features:
            raise PadistillError(f"{where}: has no {MODEL_COLUMN!r} column (model-space tensors); import its PNGs "
                                 "with --space pixel")
        raise PadistillError(f"{where}: its {MODEL_COLUMN!r} tensors are in {model_kind} space, not --space "
                             f"{space}; pass --space {'pixel' if model_kind == 'none' else model_kind} (or pixel "
                             "for the PNGs)")
    if use_model:
        made = info.get("dataset_fingerprint")
        if made and made != pre.dataset_fingerprint:
            raise PadistillError(f"{src / 'export.json'}: the set was distilled on other data than the dataset found "
                                 "here (dataset fingerprints differ), so its model space does not match; check "
                                 "--data-root")
        arr = ds.select_columns([MODEL_COLUMN]).with_format("numpy")[:][MODEL_COLUMN]
        images = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))
        if images.ndim != 4 or not torch.isfinite(images).all():
            raise PadistillError(f"{where}: column {MODEL_COLUMN!r} must hold finite [ch, H, W] tensors")
        in_model = True
    else:
        images = decode_blobs(blobs, "L" if pre.image_shape[0] == 1 else "RGB", None, False, where)
        in_model = False
    labels = None
    if SOFT_COLUMN in ds.features:
        rows = ds.select_columns([SOFT_COLUMN])[:][SOFT_COLUMN]
        try:
            soft = np.asarray(rows, dtype=np.float32)
        except (ValueError, TypeError):
            soft = np.zeros(0, dtype=np.float32)  # ragged or not numbers: refused below
        if soft.ndim != 2 or soft.shape[1] != len(class_names) or not np.isfinite(soft).all():
            raise PadistillError(f"{where}: column {SOFT_COLUMN!r} must hold {len(class_names)} finite logits per row, "
                                 f"found shape {list(soft.shape)}")
        labels = torch.from_numpy(soft)[order]
    else:
        labels = hard[order]
    lr = None
    value = info.get("lr")
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        lr = float(value)
    if (src / "export.json").is_file():
        files.append(src / "export.json")
    return images[order], labels, lr, files, in_model


def _data_files(src: Path) -> list[Path]:
    found = sorted(p for p in src.rglob("*") if p.is_file() and p.suffix in (".parquet", ".arrow"))
    return found


# ------------------------------------------------------------------------------------------ push


def push_to_hub(folder: str | Path, repo_id: str, private: bool = False, log=print) -> str:
    """Upload an hf export folder to the dataset repo `repo_id` (created when missing); returns its URL.

    Any failure (library missing, offline, not logged in, network, permission) is one line; the folder is
    never touched."""
    folder = Path(folder)
    if not (folder / PARQUET).is_file() or not (folder / "README.md").is_file():
        raise PadistillError(f"{folder}: not an hf export (no {PARQUET} / README.md); export with --format hf")
    try:
        import huggingface_hub
        from huggingface_hub import constants
    except ImportError:
        raise PadistillError("--push-to-hub needs the optional package `huggingface_hub`: pip install "
                             f"'padistill[hf]' (the export in {folder} is complete)") from None
    keep = f"the export in {folder} is complete; push it later with --push-to-hub"
    if constants.HF_HUB_OFFLINE:
        raise PadistillError(f"push to hub {repo_id}: offline mode is on (HF_HUB_OFFLINE); {keep}")
    if not huggingface_hub.get_token():
        raise PadistillError(f"push to hub {repo_id}: not logged in (run `hf auth login` or set HF_TOKEN); {keep}")
    api = huggingface_hub.HfApi()
    try:
        url = api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
        api.upload_folder(folder_path=str(folder), repo_id=repo_id, repo_type="dataset",
                          ignore_patterns=["*.arrow", "state.json", "dataset_info.json", ".*"],
                          commit_message="Upload a distilled set (padistill export --format hf)")
    except Exception as e:  # noqa: BLE001  (httpx / hub errors of many types: all end the push the same way)
        text = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise PadistillError(f"push to hub {repo_id}: failed ({type(e).__name__}: {text}); {keep}") from None
    log(f"export: pushed {folder} to {url}")
    return str(url)
