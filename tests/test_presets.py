"""Every shipped preset: evaluation network and header claims (issue 15, defects 4 and 5)."""

import pytest

from padistill.config import list_presets, load_config, preset_header


@pytest.mark.parametrize("preset", list_presets())
def test_evaluation_network_is_the_distillation_network(preset):
    cfg = load_config(preset=preset)
    assert cfg.eval.nets[0] == cfg.net.name, f"{preset}: evaluates on {cfg.eval.nets[0]}, distils with {cfg.net.name}"


def test_tiny_imagenet_is_evaluated_on_convnet_d4():
    for preset in [p for p in list_presets() if p.startswith(("pad/tiny", "datm/tiny", "mtt/tiny"))]:
        assert load_config(preset=preset).eval.nets == ["convnet-4"], preset


def test_unset_eval_nets_follow_the_net_override():
    cfg = load_config(preset="dm/cifar10-ipc10", overrides=["net.name=convnet-4"])
    assert cfg.eval.nets == ["convnet"]  # the CIFAR-10 base names its evaluation net explicitly
    cfg = load_config(preset="pad/tiny-ipc1", overrides=["net.name=convnet-5"])
    assert cfg.eval.nets == ["convnet-5"]


def test_header_does_not_offer_what_the_preset_already_uses():
    d = load_config(preset="pad/cifar10-ipc1").distill
    assert (d.lr_lr, d.threshold, d.sequential) == (1e-7, 1.1, False)
    assert "available via --set" not in preset_header("pad/cifar10-ipc1")


def test_pad_card_lists_the_second_easy_sample_removal():
    from pathlib import Path

    card = (Path(__file__).resolve().parents[1] / "docs" / "methods" / "pad.md").read_text(encoding="utf-8")
    assert "20 % in total after epoch 60" in card.replace("\n", " ")
