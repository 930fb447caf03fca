"""Config loading: strict keys, duplicate keys, base chains, types, overrides, validation."""

import pytest

from padistill.config import dump_yaml, from_dict, load_config, to_dict
from padistill.errors import PadistillError


def write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_preset_and_overrides():
    cfg = load_config(preset="pad/cifar10-ipc1", overrides=["distill.iterations=7", "eval.nets=[convnet, mlp]"])
    assert cfg.distill.ipc == 1 and cfg.distill.threshold == 1.1 and cfg.distill.iterations == 7
    assert cfg.eval.nets == ["convnet", "mlp"]
    assert cfg.experts.schedule.add_end_epoch == 20


def test_unknown_key_names_the_key_and_suggests(tmp_path):
    p = write(tmp_path, "c.yaml", "distill:\n  ipcc: 3\n")
    with pytest.raises(PadistillError, match=r"c.yaml: unknown config key 'distill.ipcc' \(did you mean 'distill.ipc'"):
        load_config(path=p)


def test_duplicate_key_is_refused(tmp_path):
    p = write(tmp_path, "c.yaml", "data:\n  preprocess: zca\n  preprocess: none\n")
    with pytest.raises(PadistillError, match="duplicate key 'preprocess'"):
        load_config(path=p)


def test_types_are_checked_and_booleans_are_not_strings(tmp_path):
    with pytest.raises(PadistillError, match="'distill.learn_lr' expects bool"):
        load_config(path=write(tmp_path, "a.yaml", "distill:\n  learn_lr: 'False'\n"))
    with pytest.raises(PadistillError, match="'distill.ipc' expects int"):
        load_config(overrides=["distill.ipc=ten"])
    assert load_config(overrides=["distill.lr_lr=1e-5"]).distill.lr_lr == 1e-5  # YAML 1.1 '1e-5' string


def test_base_chain_relative_file_and_cycle(tmp_path):
    write(tmp_path, "parent.yaml", "base: pad/cifar10-ipc10\ndistill:\n  ipc: 3\n")
    child = write(tmp_path, "child.yaml", "base: parent.yaml\ndistill:\n  iterations: 5\n")
    cfg = load_config(path=child)
    assert (cfg.distill.ipc, cfg.distill.iterations, cfg.distill.select.ratio) == (3, 5, 0.25)
    write(tmp_path, "x.yaml", "base: y.yaml\n")
    write(tmp_path, "y.yaml", "base: x.yaml\n")
    with pytest.raises(PadistillError, match="circular"):
        load_config(path=tmp_path / "x.yaml")


@pytest.mark.parametrize("override,message", [
    ("distill.select.ratio=1.0", "must be < 1"),
    ("distill.max_start_epoch=200", "exceed experts.epochs"),
    ("distill.method=xx", "must be one of"),
    ("distill.ipc=0", "must be >= 1"),
    ("experts.schedule.init_ratio=1.5", r"in \[0, 1\]"),
])
def test_validation_errors(override, message):
    with pytest.raises(PadistillError, match=message):
        load_config(preset="pad", overrides=[override])


def test_round_trip_through_yaml():
    import yaml

    cfg = load_config(preset="datm/cifar100-ipc50")
    assert to_dict(from_dict(yaml.safe_load(dump_yaml(cfg)))) == to_dict(cfg)
