"""Downloading and unpacking the public datasets.

Input: a dataset name (`cifar10`, `cifar100`, `tinyimagenet`) and a data root folder; or a local archive.
Output: the dataset folder (`cifar-10-batches-py/`, `cifar-100-python/`, `tiny-imagenet-200/`) in root.
Purpose: fetch the official archives for real users (the development machines have no network), check
their md5, and unpack them so that a crash never leaves a half-extracted folder that later looks
complete: the archive streams to a temp file, is extracted into a temp folder inside root, and each
top-level entry is then renamed into place. Archive members that would escape the folder (absolute
paths, `..`, links, devices) are refused.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from padistill.errors import PadistillError


@dataclass(frozen=True)
class Source:
    url: str
    md5: str
    archive: str  # file name of the official archive
    folder: str  # top-level folder the archive unpacks to


SOURCES: dict[str, Source] = {
    "cifar10": Source("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
                      "c58f30108f718f92721af3b95e74349a", "cifar-10-python.tar.gz", "cifar-10-batches-py"),
    "cifar100": Source("https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
                       "eb9058c3a382ffc7106e4002c42a8d85", "cifar-100-python.tar.gz", "cifar-100-python"),
    "tinyimagenet": Source("http://cs231n.stanford.edu/tiny-imagenet-200.zip",
                           "90528d7ca1a48142e341f4ef8d21d0de", "tiny-imagenet-200.zip", "tiny-imagenet-200"),
}

_NETWORK_ERRORS = (urllib.error.URLError, OSError, TimeoutError, http.client.HTTPException)


def missing_data(name: str, root: Path, download: bool, also: str = "") -> Path:
    """Called by a loader whose files are absent: download them, or explain in one line where to put them.

    `also` names alternative inputs the loader accepts (e.g. "or cifar10.npz"). Returns the dataset folder.
    """
    src = SOURCES[name]
    place = f"place {src.archive}'s folder {src.folder}/ in {root}{' ' + also if also else ''}"
    if not download:
        raise PadistillError(f"{name}: data not found under {root}: {place}, or pass --download to fetch it "
                             "(or set --data-root / PADISTILL_DATA)")
    return download_and_extract(name, root)


def download_and_extract(name: str, root: str | os.PathLike) -> Path:
    """Fetch the official archive of `name`, verify its md5 and unpack it into `root` atomically."""
    if name not in SOURCES:
        raise PadistillError(f"download: no download source for {name!r} "
                             f"(known: {', '.join(sorted(SOURCES))})")
    src, root = SOURCES[name], Path(root)
    try:
        root.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{src.archive}.", suffix=".part", dir=root)
        os.close(fd)
    except OSError as e:
        raise PadistillError(f"{name}: cannot write to data root {root} ({e.strerror or e})") from None
    tmp = Path(tmp_name)
    try:
        try:
            _fetch(src.url, tmp)
        except _NETWORK_ERRORS as e:
            reason = getattr(e, "reason", None) or e
            raise PadistillError(
                f"{name}: data not found under {root} and download failed (no network? {str(reason)[:120]}): "
                f"place {src.archive}'s folder {src.folder}/ in {root} (or set --data-root / PADISTILL_DATA)"
            ) from None
        digest = md5_file(tmp)
        if digest != src.md5:
            raise PadistillError(f"{name}: downloaded {src.url} has md5 {digest}, expected {src.md5} "
                                 "(corrupt or changed download; nothing was extracted)")
        extract_archive(tmp, root)
    finally:
        tmp.unlink(missing_ok=True)
    folder = root / src.folder
    if not folder.is_dir():
        raise PadistillError(f"{name}: archive {src.archive} did not contain the folder {src.folder}/")
    return folder


def _fetch(url: str, dest: Path, timeout: float = 60.0) -> None:
    """Stream `url` into `dest` with a progress bar (tests replace this function)."""
    from tqdm import tqdm

    with urllib.request.urlopen(url, timeout=timeout) as resp, open(dest, "wb") as out:
        total = int(resp.headers.get("Content-Length") or 0) or None
        with tqdm(total=total, unit="B", unit_scale=True, desc=Path(url).name) as bar:
            while block := resp.read(1 << 20):
                out.write(block)
                bar.update(len(block))


def md5_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.md5(usedforsecurity=False)  # md5 only matches the published checksums
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def extract_archive(archive_path: str | os.PathLike, root: str | os.PathLike) -> list[Path]:
    """Unpack a tar(.gz) or zip archive into `root`; returns the top-level paths created.

    Extraction happens in a temporary folder inside `root`; only a complete extraction is renamed into
    place, so an interrupted run leaves nothing that looks like a dataset. Existing entries are never
    overwritten.
    """
    archive, root = Path(archive_path), Path(root)
    if not archive.is_file():
        raise PadistillError(f"{archive}: archive not found")
    root.mkdir(parents=True, exist_ok=True)
    tmpdir = Path(tempfile.mkdtemp(prefix=".extract-", dir=root))
    try:
        if tarfile.is_tarfile(archive):
            _extract_tar(archive, tmpdir)
        elif zipfile.is_zipfile(archive):
            _extract_zip(archive, tmpdir)
        else:
            raise PadistillError(f"{archive}: not a tar or zip archive")
        entries = sorted(tmpdir.iterdir())
        for e in entries:
            if (root / e.name).exists():
                raise PadistillError(f"{root / e.name}: already exists; remove it (it may be incomplete) and "
                                     "extract again")
        placed = []
        for e in entries:
            os.replace(e, root / e.name)
            placed.append(root / e.name)
        return placed
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)


def _check_member(archive: Path, name: str) -> None:
    p = PurePosixPath(name.replace("\\", "/"))
    if p.is_absolute() or ".." in p.parts or (p.parts and ":" in p.parts[0]):
        raise PadistillError(f"{archive}: refusing unsafe archive member {name!r} (it would be written "
                             "outside the target folder)")


def _extract_tar(archive: Path, dest: Path) -> None:
    try:
        with tarfile.open(archive) as tar:
            members = tar.getmembers()
            for m in members:
                _check_member(archive, m.name)
                if not (m.isfile() or m.isdir()):
                    # links could point anywhere and devices make no sense in a dataset archive
                    raise PadistillError(f"{archive}: refusing archive member {m.name!r} (links and special "
                                         "files are not allowed)")
            if hasattr(tarfile, "data_filter"):  # Python >= 3.11.4 / 3.12: also normalises permissions
                tar.extractall(dest, members=members, filter="data")
            else:  # pragma: no cover - older Pythons; members were checked above
                tar.extractall(dest, members=members)
    except (tarfile.TarError, EOFError, OSError) as e:
        raise PadistillError(f"{archive}: corrupt or truncated tar archive ({e})") from None


def _extract_zip(archive: Path, dest: Path) -> None:
    try:
        with zipfile.ZipFile(archive) as zf:
            for info in zf.infolist():
                _check_member(archive, info.filename)
            zf.extractall(dest)
    except (zipfile.BadZipFile, EOFError, OSError) as e:
        raise PadistillError(f"{archive}: corrupt or truncated zip archive ({e})") from None
