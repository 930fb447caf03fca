"""Export and import of distilled sets: DD-Ranking tensors, MTT/DATM/PAD files, ImageFolder PNGs.

Input (export): a distill / import folder (images.pt, labels.pt, lr.pt, preprocess.pt, config.yaml) or a
run folder containing `distill/`. Output: a folder in one of these layouts (spec §8.24):

  ddranking   images.pt   float32 [C*IPC, ch, H, W], class-contiguous (rows c*IPC..(c+1)*IPC-1 are class c)
                          space=model (default): the distilled tensors unchanged, i.e. ZCA-whitened for
                          zca runs (DD-Ranking with use_zca=True, kornia ZCA eps 0.1 on the train set) or
                          (x - mean_c) / std_c for normalize runs (DD-Ranking's default);
                          space=pixel: de-whitened floats, nominally in [0, 1] (not clamped)
              labels.pt   float32 [C*IPC, C] label logits (soft labels; softmax gives the targets), or
                          int64 [C*IPC] class indices for hard-label sets
              lr.pt       0-d float32, the learned student lr (the evaluation lr)
  imagefolder <class>/000.png, 001.png, ... one folder per class (always pixel space: de-whitened,
              clamped to [0, 1], rounded to uint8); class folders sort in class order (torchvision
              ImageFolder's rule), prefixed with the class index when the names alone would not
              plus labels.pt and lr.pt as above beside the class folders (soft labels survive)
  hf          a Hugging Face dataset folder (PNG / ClassLabel / soft-label / exact model-space columns, parquet +
              save_to_disk files, a dataset card; see `padistill.hub`); space=model (default) or pixel (PNGs only)
  all         export.json (what was written: format, space, preprocessing, dataset, IPC, classes,
              hashes of the source files) and config.yaml (the run's config, so `import` can rebuild
              exactly the same transform, including a held-out validation split)

Import (`import_set`): the same layouts, plus MTT / DATM / PAD `images_best.pt` / `labels_best.pt` /
`lr_best.pt` (the same tensors under other names), given the dataset and the space the images are in:
zca or normalize (kept as they are; the transform is fitted on the dataset exactly as `prepare` does)
or pixel (converted into the configured model space, `preprocess`, default zca); a --space that contradicts
our own export.json / config.yaml is refused, as is a labels.pt beside PNG folders that disagrees with
them. Every file is untrusted: empty or non-finite tensors and bad labels are refused. Output: a folder in
our format (`padistill.artifacts`) with a stage manifest ('import') and config.yaml, ready for
`padistill eval`. Round trips: model-space export -> import gives identical tensors; PNG round trips
agree within 1/255 in pixel space.
"""

from __future__ import annotations

import math
import re
import shutil
from pathlib import Path

import torch

from padistill.artifacts import require_class_range
from padistill.errors import PadistillError
from padistill.utils.io import (
    atomic_save,
    atomic_write_json,
    atomic_write_text,
    load_tensors,
    sha256_file,
    sha256_tensor,
)

FORMATS = ("ddranking", "imagefolder", "hf")
EXPORT_SPACES = ("model", "pixel")
IMPORT_SPACES = ("zca", "normalize", "pixel")
EXPORT_INFO = "export.json"


# ------------------------------------------------------------------------------------------ export


def export_set(run_dir: str | Path, out: str | Path, fmt: str = "ddranking", space: str | None = None,
               log=print, prefix: str = "", repo_id: str | None = None) -> Path:
    """Write the distilled set of `run_dir` to `out` in `fmt` (see module docstring); returns `out`.

    `prefix='best_'` exports the set selected on validation (best_*.pt) instead of the final one.
    `fmt='hf'`: a Hugging Face dataset folder (`padistill.hub`; space model = PNGs + exact model tensors, pixel =
    PNGs only); `repo_id` only names the repository in its dataset card."""
    from padistill.artifacts import check_set_folder, find_distill_dir, load_distilled, read_set_config
    from padistill.data.transforms import Preprocessor

    if fmt not in FORMATS:
        raise PadistillError(f"export: format must be one of {', '.join(FORMATS)}; got {fmt!r}")
    space = space or ("pixel" if fmt == "imagefolder" else "model")
    if space not in EXPORT_SPACES:
        raise PadistillError(f"export: space must be one of {', '.join(EXPORT_SPACES)}; got {space!r}")
    if fmt == "imagefolder" and space != "pixel":
        raise PadistillError("export: an ImageFolder holds PNG pixels; use --space pixel (the default for it)")
    if fmt == "hf":
        from padistill.data.hf import require_datasets

        require_datasets("export --format hf")
    folder = find_distill_dir(run_dir)
    check_set_folder(folder)
    cfg = read_set_config(folder) if (folder / "config.yaml").is_file() else None
    class_names = _class_names(cfg)
    syn = load_distilled(folder, num_classes=len(class_names) if class_names else None, prefix=prefix)
    out = Path(out)
    old = _prepare_out(out)
    labels = syn.labels.float() if syn.labels.is_floating_point() else syn.labels.long()
    info = {"format": fmt, "space": space, "preprocess": syn.pre.kind,
            "zca_eps": syn.pre.eps if syn.pre.kind == "zca" else None,
            "dataset": cfg.data.name if cfg else None, "dataset_fingerprint": syn.pre.dataset_fingerprint,
            "images": list(syn.images.shape), "ipc": syn.ipc, "num_classes": syn.num_classes,
            "labels": "soft label logits [N, C] float32" if labels.is_floating_point() else "hard int64 [N]",
            "lr": float(syn.lr), "class_contiguous": True, "source": str(folder),
            "source_files": {n: sha256_file(folder / n) for n in
                             (f"{prefix}images.pt", f"{prefix}labels.pt", f"{prefix}lr.pt", "preprocess.pt")}}
    if fmt == "hf":
        from padistill.hub import write_hf

        for name in old:  # class folders of a previous imagefolder export into the same folder
            if (out / name).is_dir():
                shutil.rmtree(out / name)
        for name in ("images.pt", "labels.pt", "lr.pt"):  # tensors of a previous ddranking export
            (out / name).unlink(missing_ok=True)
        info["class_names"] = class_names or [f"class{c}" for c in range(syn.num_classes)]
        info["transform_fingerprint"] = syn.pre.fingerprint()
        info["columns"] = "image (PNG, pixel space), label (ClassLabel)" + (
            ", soft_label (float32 logits)" if labels.is_floating_point() else "") + (
            ", model_image (float32, model space)" if space == "model" else "")
        write_hf(out, syn, labels, info["class_names"], space, cfg, folder, repo_id=repo_id)
    elif fmt == "ddranking":
        images = syn.images if space == "model" else syn.pre.inverse(syn.images)
        atomic_save(images.detach().cpu().float().contiguous(), out / "images.pt")
    else:
        names = _folder_names(class_names or [f"class{c}" for c in range(syn.num_classes)])
        for name in old:  # class folders of a previous export into the same folder
            if name not in names and (out / name).is_dir():
                shutil.rmtree(out / name)
        pixels = Preprocessor.to_uint8(syn.pre.inverse(syn.images)).cpu()
        digits = max(3, len(str(syn.ipc - 1)))
        for c, name in enumerate(names):
            if (out / name).is_dir():
                shutil.rmtree(out / name)
            for k in range(syn.ipc):
                _save_png(pixels[c * syn.ipc + k], out / name / f"{k:0{digits}d}.png")
        info["classes"] = names
    if fmt != "hf":  # an hf folder holds the labels in its columns and the lr in export.json
        atomic_save(labels.cpu().contiguous(), out / "labels.pt")
        atomic_save(syn.lr.detach().cpu().float().reshape(()), out / "lr.pt")
    if cfg is not None:
        from padistill.config import dump_yaml

        atomic_write_text(out / "config.yaml", dump_yaml(cfg))
    atomic_write_json(out / EXPORT_INFO, info)
    log(f"export: {folder} -> {out} ({fmt}, {space} space, {syn.images.shape[0]} images, "
        f"{'soft' if labels.is_floating_point() else 'hard'} labels, lr {float(syn.lr):.4g})")
    return out


def _prepare_out(out: Path) -> list[str]:
    """Refuse a non-empty folder that is not a previous export; return that export's class folders."""
    if not out.exists():
        out.mkdir(parents=True)
        return []
    if not out.is_dir():
        raise PadistillError(f"{out}: exists and is not a folder")
    if (out / EXPORT_INFO).is_file():
        from padistill.utils.io import read_json

        old = read_json(out / EXPORT_INFO, "export info")
        return [str(c) for c in old.get("classes", [])] if isinstance(old, dict) else []
    if any(out.iterdir()):
        raise PadistillError(f"{out}: folder is not empty and holds no previous export; choose an empty folder")
    return []


def _class_names(cfg) -> list[str] | None:
    """The class names of the config's dataset; None when unknown (numbered folders still import correctly)."""
    if cfg is not None:
        try:
            from padistill.data import load_dataset

            d = cfg.data
            return list(load_dataset(d.name, root=d.root, download=False, **d.options).class_names)
        except PadistillError:
            pass  # dataset not on this machine
    return None


def _folder_names(names: list[str]) -> list[str]:
    """File-system-safe, unique class folder names that sort in class order (ImageFolder's mapping)."""
    safe = [re.sub(r"[^A-Za-z0-9._-]+", "_", n).strip("._") or "class" for n in names]
    if safe == sorted(safe) and len(set(safe)) == len(safe):
        return safe
    digits = max(3, len(str(len(names) - 1)))
    return [f"{c:0{digits}d}_{n}" for c, n in enumerate(safe)]


def _save_png(img_uint8: torch.Tensor, path: Path) -> None:
    from PIL import Image

    from padistill.utils.io import atomic_write_with

    arr = img_uint8.permute(1, 2, 0).numpy()
    im = Image.fromarray(arr[:, :, 0], mode="L") if arr.shape[2] == 1 else Image.fromarray(arr, mode="RGB")
    atomic_write_with(path, lambda p: im.save(p, format="PNG"))


# ------------------------------------------------------------------------------------------ import


def fit_transform(cfg, log=print):
    """(dataset, fitted Preprocessor) exactly as `padistill.context.prepare` builds them, without
    preprocessing the whole dataset (the same hold-out and cached fit, on the CPU)."""
    from padistill.context import cache_dir
    from padistill.data import cached_preprocessor, load_dataset

    d = cfg.data
    ds = load_dataset(d.name, root=d.root, download=d.download, **d.options)
    if d.val_per_class > 0:
        ds = ds.hold_out_validation(d.val_per_class, seed=cfg.seed)[0]
    pre = cached_preprocessor(ds, d.preprocess, d.zca_eps, cache_dir() / "preprocess", device="cpu")
    return ds, pre


def _import_config(src: Path, dataset: str, data_root, space: str, preprocess: str | None):
    """The config of the imported set: the source's own config.yaml (our exports) or a fresh one."""
    from padistill.config import load_config

    target = preprocess or ("zca" if space == "pixel" else space)
    if space != "pixel" and preprocess is not None and preprocess != space:
        raise PadistillError(f"import: images in {space} space stay in it; --preprocess {preprocess} applies "
                             "to pixel images only")
    if (src / "config.yaml").is_file():
        from padistill.artifacts import read_set_config
        from padistill.config import apply_overrides

        cfg = read_set_config(src)
        if not _same_name(cfg.data.name, dataset):
            raise PadistillError(f"{src / 'config.yaml'}: the set was made from dataset '{cfg.data.name}', "
                                 f"not '{dataset}'")
        made = cfg.data.preprocess
        if space != "pixel" and made != space:
            raise PadistillError(f"{src / 'config.yaml'}: the set was made with data.preprocess={made}, not "
                                 f"--space {space}; pass --space {'pixel' if made == 'none' else made}"
                                 f"{'' if made == 'none' else ' (or pixel for pixel images)'}")
        extra = [] if space == "pixel" and preprocess is None else [f"data.preprocess={target}"]
        if data_root:
            extra.append(f"data.root={data_root}")
        return apply_overrides(cfg, extra)
    extra = [f"data.name={dataset}", f"data.preprocess={target}", "name=import"]
    if data_root:
        extra.append(f"data.root={data_root}")
    return load_config(overrides=extra)


def _stated_space(src: Path, space: str) -> bool:
    """Whether our export.json in `src` states the images' space; refuses a --space that contradicts it."""
    if not (src / EXPORT_INFO).is_file():
        return False
    from padistill.utils.io import read_json

    info = read_json(src / EXPORT_INFO, "export info")
    recorded = info.get("space") if isinstance(info, dict) else None
    if recorded == "model":  # the images are in the run's model space ("none" = pixels)
        recorded = "pixel" if info.get("preprocess") == "none" else info.get("preprocess")
    if recorded not in IMPORT_SPACES:
        return False
    if recorded != space:
        raise PadistillError(f"{src / EXPORT_INFO}: the images were exported in {recorded} space, not "
                             f"--space {space}; pass --space {recorded}")
    return True


def _same_name(a: str, b: str) -> bool:
    return re.sub(r"[-_\s]", "", a.lower()) == re.sub(r"[-_\s]", "", b.lower())


def _find(src: Path, stem: str) -> Path | None:
    """`stem.pt`, else the MTT/DATM/PAD `stem_best.pt`."""
    for name in (f"{stem}.pt", f"{stem}_best.pt"):
        if (src / name).is_file():
            return src / name
    return None


def _read_tensor_set(src: Path) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, list[Path]]:
    from padistill.utils.io import require_tensor

    ipath = _find(src, "images")
    if ipath is None:
        raise PadistillError(f"{src}: no images.pt or images_best.pt (DD-Ranking / MTT / DATM / PAD tensors)")
    images = require_tensor(load_tensors(ipath, "images"), str(ipath),
                            dtype=(torch.float32, torch.float16, torch.float64), ndim=4).float()
    if not len(images):
        raise PadistillError(f"{ipath}: holds no images (shape {list(images.shape)})")
    if not torch.isfinite(images).all():
        raise PadistillError(f"{ipath}: contains NaN or Inf")
    lpath, rpath = _find(src, "labels"), _find(src, "lr")
    labels = load_tensors(lpath, "labels") if lpath else None
    lr = load_tensors(rpath, "lr") if rpath else None
    return images, labels, lr, [p for p in (ipath, lpath, rpath) if p is not None]


def _read_image_folder(src: Path, class_names: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    from padistill.data.folders import decode_images, list_images

    if not src.is_dir():
        raise PadistillError(f"{src}: folder not found")
    folders = sorted(d.name for d in src.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not folders:
        raise PadistillError(f"{src}: no class sub-folders with PNG images")
    # Folder -> class: by dataset class name (optionally with an index prefix), else sorted order.
    lookup = {n: i for i, n in enumerate(_folder_names(class_names))}
    lookup.update({n: i for i, n in enumerate(class_names)})
    index = {f: lookup[f] for f in folders if f in lookup}
    if len(index) != len(folders):
        index = {f: i for i, f in enumerate(folders)}
    files, labels = [], []
    for f in folders:
        found = list_images(src / f)
        files += found
        labels += [index[f]] * len(found)
    if not files:
        raise PadistillError(f"{src}: the class folders hold no images")
    from padistill.data.folders import probe_image

    size, mode = probe_image(files[0])
    x = decode_images(files, "L" if mode in ("1", "L", "LA") else "RGB", size)
    return x, torch.tensor(labels, dtype=torch.int64)


def import_set(src: str | Path, out: str | Path, fmt: str = "ddranking", space: str = "zca",
               dataset: str = "cifar10", data_root: str | None = None, lr: float | None = None, log=print,
               preprocess: str | None = None, overwrite: bool = False) -> Path:
    """Import a distilled set (see module docstring) into our folder format at `out`; returns `out`."""
    from padistill.artifacts import save_distilled, save_grid
    from padistill.config import dump_yaml
    from padistill.utils.manifest import StageDir

    src = Path(src)
    if fmt not in FORMATS:
        raise PadistillError(f"import: format must be one of {', '.join(FORMATS)}; got {fmt!r}")
    if space not in IMPORT_SPACES:
        raise PadistillError(f"import: --space must be one of {', '.join(IMPORT_SPACES)}; got {space!r}")
    if fmt == "imagefolder" and space != "pixel":
        raise PadistillError("import: PNG images are pixels; use --space pixel with --format imagefolder")
    if not src.is_dir():
        raise PadistillError(f"{src}: source folder not found")
    stated = _stated_space(src, space) if fmt != "hf" else True  # else guess from the values below
    cfg = _import_config(src, dataset, data_root, space, preprocess)
    ds, pre = fit_transform(cfg, log)
    C = ds.num_classes
    where = str(src)
    if fmt == "ddranking":
        images, labels, lr_t, used = _read_tensor_set(src)
        _check_shape(images, pre, ds.name, used[0])
        lo, hi = float(images.min()), float(images.max())
        if space == "pixel":
            if not stated and (lo < -0.5 or hi > 1.5):  # our unclamped pixel exports may exceed [0, 1]
                raise PadistillError(f"{used[0]}: values span [{lo:.2f}, {hi:.2f}]; pixel-space images lie in "
                                     "[0, 1] — is --space right?")
            images = pre.pre(images)
        elif not stated and lo >= 0.0 and hi <= 1.0 and len(images) > 1:
            raise PadistillError(f"{used[0]}: every value lies in [0, 1], which is pixel space, not {space} "
                                 "(pass --space pixel)")
    elif fmt == "hf":
        from padistill.hub import read_hf_set

        images, labels, lr_hf, used, in_model = read_hf_set(src, ds.class_names, space, pre)
        _check_shape(images, pre, ds.name, src)
        if not in_model:
            images = pre.pre(images)
        lr_t = torch.tensor(lr_hf) if lr_hf is not None else None
    else:
        x_uint8, hard = _read_image_folder(src, ds.class_names)
        _check_shape(x_uint8, pre, ds.name, src)
        images = pre.pre(x_uint8)
        labels, lr_t = (load_tensors(src / "labels.pt", "labels") if (src / "labels.pt").is_file() else None,
                        load_tensors(src / "lr.pt", "lr") if (src / "lr.pt").is_file() else None)
        used = [src / n for n in ("labels.pt", "lr.pt") if (src / n).is_file()]
        if labels is None:
            labels = hard
        else:  # the folders must agree with the labels saved beside them
            ok = isinstance(labels, torch.Tensor) and labels.ndim in (1, 2) and len(labels) == len(hard) \
                and len(hard) % C == 0
            cls = (labels if labels.ndim == 1 else torch.arange(C).repeat_interleave(len(hard) // C)) if ok else None
            if not ok or not torch.equal(cls.long(), hard):
                raise PadistillError(f"{src / 'labels.pt'}: its classes disagree with the class folders ({len(hard)} "
                                     "images); remove it to take the labels from the folders")
    images, labels = _class_contiguous(images, labels, C, where)
    if lr is not None:
        lr_value = float(lr)
    elif lr_t is None:
        raise PadistillError(f"{where}: no lr.pt / lr_best.pt (one number); pass --lr")
    elif not isinstance(lr_t, torch.Tensor) or lr_t.numel() != 1:
        found = f"{lr_t.numel()} values" if isinstance(lr_t, torch.Tensor) else type(lr_t).__name__
        raise PadistillError(f"{_find(src, 'lr')}: holds {found}, expected one number (the lr; or pass --lr)")
    else:
        lr_value = float(lr_t.reshape(()))
    if not (math.isfinite(lr_value) and lr_value > 0):
        raise PadistillError(f"{where}: the lr must be a positive number; got {lr_value}")
    ipc = len(images) // C
    cfg.distill.ipc = ipc
    out = Path(out)
    settings = {"format": fmt, "space": space, "preprocess": pre.kind, "lr": lr_value,
                "data": {"name": cfg.data.name, "val_per_class": cfg.data.val_per_class, "seed": cfg.seed}}
    inputs = {"source": {p.name: sha256_file(p) for p in used}, "transform": pre.fingerprint()}
    if fmt in ("imagefolder", "hf"):
        inputs["images"] = sha256_tensor(images)
    stage = StageDir(out, "import", settings, inputs, cfg.seed, dump_yaml(cfg))
    if stage.begin(overwrite=overwrite) == "complete":
        log(f"import: {out} is complete (same source and settings); reusing it")
        return out
    pre.save(out / "preprocess.pt")  # always this transform (save_distilled keeps an existing file)
    outputs = save_distilled(out, images, labels, torch.tensor(lr_value), pre)
    save_grid(pre.inverse(images), out / "grid_final.png", nrow=ipc)
    stage.complete(outputs, source=str(src))
    log(f"import: {src} ({fmt}, {space} space) -> {out}: {len(images)} images, {ipc} per class, "
        f"{'soft' if labels.is_floating_point() else 'hard'} labels, lr {lr_value:.4g}, {pre.kind} model space")
    return out


def _check_shape(images: torch.Tensor, pre, dataset: str, where) -> None:
    if tuple(images.shape[1:]) != tuple(pre.image_shape):
        raise PadistillError(f"{where}: images are {list(images.shape[1:])}, dataset '{dataset}' has "
                             f"{list(pre.image_shape)}")


def _class_contiguous(images: torch.Tensor, labels, C: int, where: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate labels and order the rows class by class (hard labels are sorted stably; soft-label
    rows are taken to be class-contiguous already, as DD-Ranking / MTT / DATM / PAD write them)."""
    n = len(images)
    if not n:
        raise PadistillError(f"{where}: the set holds no images")
    if labels is None:
        if n % C:
            raise PadistillError(f"{where}: no labels and {n} images are not a whole number per class for {C} classes")
        return images, torch.arange(C).repeat_interleave(n // C)
    if not isinstance(labels, torch.Tensor) or labels.ndim == 0:
        found = f"shape {list(labels.shape)}" if isinstance(labels, torch.Tensor) else type(labels).__name__
        raise PadistillError(f"{where}: labels must be a tensor with one row per image, found {found}")
    if len(labels) != n:
        raise PadistillError(f"{where}: {len(labels)} labels for {n} images")
    if labels.is_floating_point():
        if labels.ndim != 2 or labels.shape[1] != C:
            raise PadistillError(f"{where}: soft labels must be [N, {C}] logits; found {list(labels.shape)}")
        if n % C:
            raise PadistillError(f"{where}: {n} images are not a whole number per class for {C} classes")
        if not torch.isfinite(labels).all():
            raise PadistillError(f"{where}: labels contain NaN or Inf")
        return images, labels.float()
    if labels.ndim != 1:
        raise PadistillError(f"{where}: integer labels must be classes [N]; found {labels.dtype} "
                             f"{list(labels.shape)}")
    labels = labels.long()
    require_class_range(labels, C, where)
    counts = torch.bincount(labels, minlength=C)
    if int(counts.min()) != int(counts.max()):
        raise PadistillError(f"{where}: classes have different numbers of images ({counts.tolist()}); "
                             "a distilled set has the same number per class")
    order = torch.argsort(labels, stable=True)
    return images[order], labels[order]
