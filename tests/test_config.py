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
    with pytest.raises(PadistillError, match=r"c.yaml:3: duplicate key 'preprocess'"):
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
    # numbers that used to reach torch (its own ValueError) or give a finished but unusable stage
    ("distill.lr_images=.nan", "'distill.lr_images' must be a finite number"),
    ("eval.weight_decay=.inf", "'eval.weight_decay' must be a finite number"),
    ("distill.threshold=-.inf", "'distill.threshold' must be a finite number"),
    ("distill.lr_images=-100", "'distill.lr_images' must be >= 0"),
    ("distill.syn_lr=-1", "'distill.syn_lr' must be > 0"),
    ("experts.lr=0", "'experts.lr' must be > 0"),
    ("eval.momentum=-1", r"'eval.momentum' must be in \[0, 1\)"),
    ("distill.momentum_images=1.0", r"'distill.momentum_images' must be in \[0, 1\)"),
    ("experts.rho=-1", "'experts.rho' must be >= 0"),
    ("scores.batch=0", "'scores.batch' must be >= 1"),
    ("experts.num=0", "'experts.num' must be >= 1"),
    ("distill.max_experts=-1", "'distill.max_experts' must be >= 1"),
    ("distill.max_experts=0", "'distill.max_experts' must be >= 1"),
    ("distill.label_model_epoch=-2", "'distill.label_model_epoch' must be >= 0 or -1"),
    ("data.zca_eps=0", "'data.zca_eps' must be > 0"),
    ("device=nonsense", "'device' must be auto, cpu, cuda or cuda:N"),
    ("scores.method=file", "'scores.method' file needs 'scores.file'"),
])
def test_validation_errors(override, message):
    with pytest.raises(PadistillError, match=message):
        load_config(preset="pad", overrides=[override])


def test_unbounded_values_where_they_mean_no_limit():
    cfg = load_config(preset="pad", overrides=["distill.threshold=.inf", "distill.unroll_budget_gib=.inf",
                                               "device=CUDA:3", "distill.max_experts=null", "distill.lr_lr=0"])
    assert cfg.distill.threshold == float("inf") and cfg.device == "CUDA:3"  # availability is checked at run time
    assert load_config(preset="mtt").distill.threshold == float("inf")  # MTT never skips an update


def test_non_utf8_config_is_one_line(tmp_path):
    (tmp_path / "bin.yaml").write_bytes(b"\xff\xfe\x00 ipc: 1")
    with pytest.raises(PadistillError, match="bin.yaml: not a UTF-8 text file"):
        load_config(path=tmp_path / "bin.yaml")


def test_round_trip_through_yaml():
    import yaml

    cfg = load_config(preset="datm/cifar100-ipc50")
    assert to_dict(from_dict(yaml.safe_load(dump_yaml(cfg)))) == to_dict(cfg)


def test_gradual_removal_needs_a_ramp_and_experts_prune_is_checked():
    from padistill.config import load_config

    with pytest.raises(PadistillError, match="rm_epoch_second must be > rm_epoch_first"):
        load_config(preset="pad/cifar10-ipc10", overrides=["experts.schedule.removal=gradual",
                                                           "experts.schedule.rm_epoch_second=40"])
    with pytest.raises(PadistillError, match="'experts.schedule.removal' must be one of"):
        load_config(preset="pad/cifar10-ipc10", overrides=["experts.schedule.removal=slow"])
    with pytest.raises(PadistillError, match="'experts.prune.ratio' must be < 1"):
        load_config(preset="datm/cifar10-ipc10", overrides=["experts.prune.mode=hard", "experts.prune.ratio=1"])
    assert load_config(preset="pad/cifar10-ipc10", overrides=["experts.schedule.removal=gradual"])
