"""Synthetic image and soft-label initialisation (spec §3.3-3.4, §8.18-8.19)."""

import torch

from helpers import tiny_config
from padistill.context import build_net
from padistill.distill.init import init_images, init_labels, predict
from padistill.experts.storage import ExpertStore
from padistill.nets import param_layout

QUIET = lambda *_: None  # noqa: E731


def test_correct_init_and_soft_labels(tiny_prepared, tiny_experts):
    p = tiny_prepared
    store = ExpertStore(tiny_experts)
    model = build_net(p, seed=0)
    layout = param_layout(model)
    ipc = 3
    images, src = init_images(p, ipc, "correct", 0, experts=store, model=model, layout=layout, log=QUIET)
    C = p.num_classes
    assert images.shape[0] == C * ipc and len(set(src.tolist())) == C * ipc  # distinct real images
    cls = torch.arange(C).repeat_interleave(ipc)
    assert torch.equal(p.y_train[src], cls)  # class-major, each from its own class
    assert torch.equal(images, p.x_train[src])
    # every image an expert classifies correctly was picked because some expert predicts its class
    preds = torch.stack([predict(model, layout, store.checkpoint(e, -1), images).argmax(1) for e in range(len(store))])
    labels = init_labels(p, images, ipc, "soft", experts=store, model=model, layout=layout, log=QUIET)
    logits = torch.stack([predict(model, layout, store.checkpoint(e, -1), images) for e in range(len(store))])
    for i in range(len(images)):
        ok = preds[:, i] == cls[i]
        if ok.any():
            assert torch.allclose(labels[i], logits[ok, i].mean(0), atol=1e-6)
            assert labels[i].argmax() == cls[i]  # InitialAcc = 1.0 on correctly classified images
        else:
            assert torch.allclose(labels[i], logits[:, i].mean(0), atol=1e-6)


def test_real_and_hard_init(tiny_prepared):
    p = tiny_prepared
    images, src = init_images(p, 2, "real", 0, log=QUIET)
    assert torch.equal(p.y_train[src], torch.arange(p.num_classes).repeat_interleave(2))
    assert torch.equal(init_labels(p, images, 2, "hard"), torch.arange(p.num_classes).repeat_interleave(2))
    again, _ = init_images(p, 2, "real", 0, log=QUIET)
    assert torch.equal(images, again)


def test_config_has_distill_defaults():
    assert tiny_config().distill.method == "tm"


def test_expert_labels_are_one_experts_logits_unfiltered(tiny_prepared, tiny_experts):
    """label_init expert = the published code's labels for pix_init real: expert 0's logits, no filtering."""
    p = tiny_prepared
    store = ExpertStore(tiny_experts)
    model = build_net(p, seed=0)
    layout = param_layout(model)
    images, _ = init_images(p, 3, "real", 0, log=QUIET)
    labels = init_labels(p, images, 3, "expert", experts=store, model=model, layout=layout, log=QUIET)
    assert torch.equal(labels, predict(model, layout, store.checkpoint(0, -1), images))


def test_cifar100_ipc50_preset_follows_the_published_label_init():
    from padistill.config import load_config, preset_header

    for preset in ("pad/cifar100-ipc50", "datm/cifar100-ipc50"):
        d = load_config(preset=preset).distill
        assert (d.image_init, d.label_init) == ("real", "expert"), preset
    assert "label_init expert" in preset_header("pad/cifar100-ipc50")
