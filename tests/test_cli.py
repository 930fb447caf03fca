"""The command line: listings, one-line errors with exit status 2."""

import subprocess
import sys

import pytest

from padistill.cli import main


def test_list_and_config(capsys):
    assert main(["list", "nets"]) == 0
    assert "convnet" in capsys.readouterr().out.split()
    assert main(["list", "datasets"]) == 0
    names = set(capsys.readouterr().out.split())
    assert {"cifar10", "cifar100", "tinyimagenet", "imagefolder", "npz", "digits"} <= names
    assert main(["list", "presets"]) == 0
    assert "pad/cifar10-ipc10" in capsys.readouterr().out
    assert main(["config", "--preset", "pad", "--set", "distill.ipc=1"]) == 0
    assert "ipc: 1" in capsys.readouterr().out
    assert main(["config", "--preset", "pad", "--download"]) == 0  # the flag the offline error names
    assert "download: true" in capsys.readouterr().out


@pytest.mark.parametrize("argv,needle", [
    (["config", "--preset", "nope"], "unknown preset 'nope'"),
    (["config", "--set", "distill.foo=1"], "unknown config key 'distill.foo'"),
    (["config", "--set", "distill.ipc"], "expected section.key=value"),
    (["distill", "--preset", "pad", "--set", "data.root=/nonexistent", "--out", "x"], "cifar10: data not found"),
    (["distill", "--preset", "pad", "--device", "cuda:7", "--out", "x"], "--device cuda:7"),
    (["eval", "/nonexistent/run"], "/nonexistent/run"),
    (["train", "--preset", "quickstart", "--per-class", "0"], "--per-class must be >= 1"),
    (["scores", "--preset", "quickstart", "--out", "afile"], "afile: is a file; expected a folder"),
    (["run", "quickstart", "--out", "afile", "--stages", "scores"], "afile: is a file; expected a folder"),
])
def test_user_errors_are_one_line(argv, needle, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "afile").write_text("not a folder")
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("padistill: error: ") and needle in err
    assert len(err.splitlines()) == 1 and "Traceback" not in err


def test_console_script_entry_point():
    out = subprocess.run([sys.executable, "-m", "padistill", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.startswith("padistill ")
