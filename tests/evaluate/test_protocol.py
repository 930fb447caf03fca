"""The evaluation protocol (spec §4, invariant §8.23): schedule, optimiser restart, determinism, KD."""

from __future__ import annotations

import pytest
import torch

import padistill.evaluate.protocol as protocol_mod
from padistill.errors import PadistillError
from padistill.evaluate import (
    EvalResult,
    Protocol,
    Teacher,
    decay_epoch,
    evaluate,
    lr_schedule,
    optimizer_starts,
    random_subset,
    train_and_test,
)
from padistill.evaluate.protocol import build_eval_net, training_targets
from padistill.utils.rng import generator


def test_schedule_of_the_reference_protocol():
    lrs = lr_schedule(1000, 0.01)
    assert len(lrs) == 1001  # epochs 0..1000
    assert decay_epoch(1000) == 501
    assert all(v == 0.01 for v in lrs[:502])  # epochs 0..501 at the learned lr
    assert all(v == pytest.approx(0.001, rel=0, abs=1e-15) for v in lrs[502:])  # 502..1000 at lr x 0.1
    assert optimizer_starts(1000) == [0, 502]  # a new optimiser (zero momentum) at the decay


@pytest.mark.parametrize("epochs, lrs, starts", [
    (0, [1.0], [0]), (1, [1.0, 1.0], [0]), (2, [1.0, 1.0, 1.0], [0]),
    (3, [1.0, 1.0, 1.0, 0.1], [0, 3]), (4, [1.0, 1.0, 1.0, 1.0, 0.1], [0, 4]),
])
def test_schedule_small_epoch_counts(epochs, lrs, starts):
    assert lr_schedule(epochs, 1.0) == pytest.approx(lrs)
    assert optimizer_starts(epochs) == starts


def test_schedule_rejects_negative_epochs():
    with pytest.raises(PadistillError, match="epochs"):
        lr_schedule(-1, 0.01)


def _tiny_set(prepared, ipc=3, seed=0):
    x, y = random_subset(prepared.x_train, prepared.y_train, prepared.num_classes, ipc, seed=seed)
    return x, y


def _net(prepared, seed=0, name="convnet-2"):
    return build_eval_net(name, prepared.num_classes, prepared.channels, prepared.image_size, seed, "cpu",
                          {"width": 8} if name.startswith("convnet") else {})


def test_a_real_run_follows_the_schedule_and_tests_once(prepared, monkeypatch):
    x, y = _tiny_set(prepared)
    seen, created, tested = [], [], []
    real_sgd, real_acc = torch.optim.SGD, protocol_mod.accuracy

    class SpySGD(real_sgd):
        def __init__(self, params, **kw):
            super().__init__(params, **kw)
            created.append(self)
            assert not self.state  # a fresh optimiser: no momentum buffers

    def spy_accuracy(model, xt, yt, batch):
        tested.append((len(seen), xt))
        return real_acc(model, xt, yt, batch=batch)

    monkeypatch.setattr(protocol_mod.torch.optim, "SGD", SpySGD)
    monkeypatch.setattr(protocol_mod, "accuracy", spy_accuracy)
    p = Protocol(epochs=4, batch=16, augment=True)

    def on_epoch(epoch, opt, stats):
        buf = opt.state[next(iter(opt.param_groups[0]["params"]))]["momentum_buffer"].clone()
        seen.append((epoch, opt, opt.param_groups[0]["lr"], opt.param_groups[0]["momentum"], buf))

    acc = train_and_test(_net(prepared), x, y, 0.05, prepared.x_test, prepared.y_test, p,
                         gen=generator(0, "t"), on_epoch=on_epoch)
    assert [s[0] for s in seen] == [0, 1, 2, 3, 4]  # epochs + 1 epochs
    assert [s[2] for s in seen] == pytest.approx([0.05] * 4 + [0.005])
    assert all(s[3] == 0.9 for s in seen)
    assert len(created) == 2 and seen[3][1] is created[0] and seen[4][1] is created[1]  # restart at the decay
    assert tested == [(5, prepared.x_test)] and 0.0 <= acc <= 1.0  # tested once, after the last epoch
    # weight decay 5e-4 is part of the protocol
    assert all(o.param_groups[0]["weight_decay"] == 5e-4 for o in created)


def test_same_seed_same_numbers_and_weights(prepared):
    x, y = _tiny_set(prepared)
    p = Protocol(epochs=2, batch=16)
    models = []
    for seed in (0, 0, 1):
        m = _net(prepared, seed=seed)
        train_and_test(m, x, y, 0.05, prepared.x_test, prepared.y_test, p, gen=generator(seed, "t"))
        models.append(m)
    a, b, c = (torch.cat([t.flatten() for t in m.state_dict().values()]) for m in models)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    kw = dict(net="convnet-2", num_classes=10, channels=1, im_size=(8, 8), x_test=prepared.x_test,
              y_test=prepared.y_test, epochs=1, runs=2, batch=16, net_options={"width": 8})
    r1, r2 = evaluate(x, y, 0.05, seed=3, **kw), evaluate(x, y, 0.05, seed=3, **kw)
    assert r1.accs == r2.accs and r1.n == 2
    r3 = evaluate(x, y, 0.05, seed=4, **kw)
    assert r3.settings["seed"] == 4 and r1.settings["seed"] == 3


def test_targets_soft_hard_and_argmax():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    assert torch.equal(training_targets(logits, True), logits)
    assert torch.equal(training_targets(logits, False), torch.tensor([0, 1]))
    assert torch.equal(training_targets(torch.tensor([1, 0]), True), torch.tensor([1, 0]))
    with pytest.raises(PadistillError):
        training_targets(torch.zeros(3), True)


def test_kd_evaluation_runs_and_differs_from_plain(prepared):
    x, y = _tiny_set(prepared)
    teacher_net = _net(prepared, seed=9)
    p = Protocol(epochs=1, batch=16)
    seen = []

    class SpyTeacher(Teacher):
        def __call__(self, xb):
            seen.append(xb)
            return super().__call__(xb)

    m_kd, m_plain = _net(prepared, seed=1), _net(prepared, seed=1)
    student_inputs = []
    hook = m_kd.register_forward_pre_hook(lambda mod, args: student_inputs.append(args[0]) if mod.training else None)
    train_and_test(m_kd, x, y, 0.05, prepared.x_test, prepared.y_test, p, gen=generator(0, "t"),
                   teacher=SpyTeacher(teacher_net))
    hook.remove()
    train_and_test(m_plain, x, y, 0.05, prepared.x_test, prepared.y_test, p, gen=generator(0, "t"))
    w_kd = torch.cat([t.flatten() for t in m_kd.parameters()])
    w_plain = torch.cat([t.flatten() for t in m_plain.parameters()])
    assert not torch.equal(w_kd, w_plain)
    assert len(seen) == 2 * 2  # 2 epochs x 2 batches of 16 (30 images): the teacher sees every batch,
    assert all(torch.equal(a, b) for a, b in zip(seen, student_inputs))  # the same augmented images
    res = evaluate(x, y, 0.05, net="convnet-2", num_classes=10, channels=1, im_size=(8, 8), x_test=prepared.x_test,
                   y_test=prepared.y_test, epochs=1, runs=1, batch=16, net_options={"width": 8},
                   teacher=teacher_net)
    assert res.settings["labels"].startswith("teacher")


def test_eval_result_formatting():
    r = EvalResult("convnet", [0.5, 0.7], {"x": 1})
    assert r.n == 2 and r.mean == pytest.approx(0.6) and r.std == pytest.approx(0.1)
    assert r.cell() == "60.00 ± 10.00 (n=2)"
    assert "n=2" in r.summary()
    assert EvalResult.from_dict(r.to_dict()).accs == r.accs


def test_bad_inputs_are_one_line_errors(prepared):
    x, y = _tiny_set(prepared)
    for lr in (0.0, float("nan"), -1.0):
        with pytest.raises(PadistillError, match="lr") as e:
            train_and_test(_net(prepared), x, y, lr, prepared.x_test, prepared.y_test, Protocol(epochs=0),
                           gen=generator(0))
        assert "\n" not in str(e.value)
    with pytest.raises(PadistillError, match="labels"):
        train_and_test(_net(prepared), x, y[:-1], 0.01, prepared.x_test, prepared.y_test, Protocol(epochs=0),
                       gen=generator(0))
    # no test images (an image folder split with test_fraction 0): refused instead of reporting nan ± nan
    with pytest.raises(PadistillError, match="the test set is empty"):
        evaluate(x, y, 0.01, net="convnet", num_classes=prepared.num_classes, channels=prepared.channels,
                 im_size=prepared.image_size, x_test=prepared.x_test[:0], y_test=prepared.y_test[:0], epochs=0, runs=1)
