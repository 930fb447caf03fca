"""The README's set-up commands, CI and the shipped presets stay consistent."""

import re
from pathlib import Path

import pytest

from padistill.config import list_presets, load_config, preset_header

ROOT = Path(__file__).resolve().parents[1]


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    return re.findall(r"```bash\n(.*?)\n```", text, flags=re.S)


def test_readme_starts_with_the_two_setup_commands():
    blocks = readme_commands()
    assert len(blocks) >= 2
    quickstart, tests = blocks[0].strip(), blocks[1].strip()
    for cmd in (quickstart, tests):
        assert "pip install -q torch==2.13.0" in cmd  # the pinned CPU wheel before the package
    assert quickstart.endswith("padistill run quickstart")
    assert tests.endswith("python -m pytest")


def test_ci_runs_the_readme_test_command():
    tests_cmd = readme_commands()[1].strip()
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    assert tests_cmd in ci  # verbatim, on its own line


@pytest.mark.parametrize("name", [p for p in list_presets()])
def test_every_shipped_preset_validates_and_says_how_to_run_it(name):
    cfg = load_config(preset=name)
    assert cfg.name
    if not name.startswith("base/"):
        header = preset_header(name)
        assert "padistill" in header, f"{name}: header should show the command that runs it"
