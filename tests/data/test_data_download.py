"""Download and extraction on locally built archives; the network is never touched (fetcher patched)."""

from __future__ import annotations

import io
import shutil
import tarfile
import urllib.error
import zipfile

import pytest

from padistill.data import download, load_dataset
from padistill.data.download import Source, download_and_extract, extract_archive, md5_file
from padistill.errors import PadistillError


def _tar_of(folder, archive):
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname=folder.name)
    return archive


def _leftovers(root):
    return [p.name for p in root.iterdir() if p.name.startswith(".")]


@pytest.fixture
def cifar_archive(tmp_path, builders):
    src = tmp_path / "src"
    builders.cifar10(src)
    return _tar_of(src / "cifar-10-batches-py", tmp_path / "cifar-10-python.tar.gz")


def _patch_source(monkeypatch, archive, md5=None):
    calls = []

    def fake_fetch(url, dest, timeout=60.0):
        calls.append(url)
        shutil.copyfile(archive, dest)

    monkeypatch.setattr(download, "_fetch", fake_fetch)
    old = download.SOURCES["cifar10"]
    monkeypatch.setitem(download.SOURCES, "cifar10",
                        Source(old.url, md5 or md5_file(archive), old.archive, old.folder))
    return calls


def test_download_then_load(tmp_path, monkeypatch, cifar_archive):
    calls = _patch_source(monkeypatch, cifar_archive)
    root = tmp_path / "data"
    ds = load_dataset("cifar10", root=root, download=True)
    assert calls == ["https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"]
    assert len(ds.y_train) == 30 and (root / "cifar-10-batches-py" / "batches.meta").is_file()
    assert _leftovers(root) == []  # no .part file, no .extract-* folder
    load_dataset("cifar10", root=root, download=True)
    assert len(calls) == 1  # present now: no second download


def test_md5_mismatch(tmp_path, monkeypatch, cifar_archive):
    _patch_source(monkeypatch, cifar_archive, md5="0" * 32)
    root = tmp_path / "data"
    with pytest.raises(PadistillError, match="has md5 .*expected 0000.*nothing was extracted"):
        download_and_extract("cifar10", root)
    assert list(root.iterdir()) == []


def test_offline_one_line_error(tmp_path, monkeypatch):
    def offline(url, dest, timeout=60.0):
        raise urllib.error.URLError("Temporary failure in name resolution")

    monkeypatch.setattr(download, "_fetch", offline)
    root = tmp_path / "x"
    with pytest.raises(PadistillError) as e:
        load_dataset("cifar10", root=root, download=True)
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith(f"cifar10: data not found under {root} and download failed (no network?")
    assert msg.endswith(f"place cifar-10-python.tar.gz's folder cifar-10-batches-py/ in {root} "
                        "(or set --data-root / PADISTILL_DATA)")
    assert _leftovers(root) == []
    def timeout(url, dest, timeout=60.0):
        raise TimeoutError("timed out")

    monkeypatch.setattr(download, "_fetch", timeout)
    with pytest.raises(PadistillError, match="tinyimagenet: .*download failed .*tiny-imagenet-200/"):
        load_dataset("tinyimagenet", root=root, download=True)


def test_extract_tar_and_zip(tmp_path):
    src = tmp_path / "pkg"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "a.txt").write_text("hello")
    tgz = _tar_of(src, tmp_path / "pkg.tar.gz")
    out = tmp_path / "out1"
    assert extract_archive(tgz, out) == [out / "pkg"]
    assert (out / "pkg" / "sub" / "a.txt").read_text() == "hello" and _leftovers(out) == []
    with pytest.raises(PadistillError, match="already exists"):
        extract_archive(tgz, out)
    zpath = tmp_path / "pkg.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        zf.writestr("pkg/sub/a.txt", "zipped")
    out2 = tmp_path / "out2"
    assert extract_archive(zpath, out2) == [out2 / "pkg"]
    assert (out2 / "pkg" / "sub" / "a.txt").read_text() == "zipped"


def _evil_tar(path, name, link=None):
    with tarfile.open(path, "w:gz") as tar:
        ok = tarfile.TarInfo("pkg/ok.txt")
        ok.size = 2
        tar.addfile(ok, io.BytesIO(b"ok"))
        bad = tarfile.TarInfo(name)
        if link:
            bad.type, bad.linkname = tarfile.SYMTYPE, link
            tar.addfile(bad)
        else:
            bad.size = 4
            tar.addfile(bad, io.BytesIO(b"evil"))
    return path


@pytest.mark.parametrize("name,link", [("pkg/../../evil", None), ("/tmp/evil_abs", None),
                                       ("pkg/ln", "/etc/passwd")])
def test_malicious_tar_refused(tmp_path, name, link):
    archive = _evil_tar(tmp_path / "evil.tar.gz", name, link)
    root = tmp_path / "a" / "root"
    with pytest.raises(PadistillError, match="refusing"):
        extract_archive(archive, root)
    assert list(root.iterdir()) == []  # nothing placed, temp folder removed
    assert not (tmp_path / "a" / "evil").exists()


def test_malicious_zip_refused(tmp_path):
    zpath = tmp_path / "evil.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        zf.writestr("pkg/ok.txt", "ok")
        zf.writestr("../evil", "evil")
    root = tmp_path / "root"
    with pytest.raises(PadistillError, match=r"refusing unsafe archive member '\.\./evil'"):
        extract_archive(zpath, root)
    assert list(root.iterdir()) == [] and not (tmp_path / "evil").exists()


def test_corrupt_archive_leaves_nothing(tmp_path, cifar_archive):
    broken = tmp_path / "broken.tar.gz"
    broken.write_bytes(cifar_archive.read_bytes()[:-3000])
    root = tmp_path / "root"
    with pytest.raises(PadistillError, match="corrupt or truncated"):
        extract_archive(broken, root)
    assert list(root.iterdir()) == []
    (tmp_path / "plain.bin").write_bytes(b"neither tar nor zip")
    with pytest.raises(PadistillError, match="not a tar or zip archive"):
        extract_archive(tmp_path / "plain.bin", root)
