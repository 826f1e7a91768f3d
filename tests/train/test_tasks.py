"""The tasks for K models: each model's own data order, augmentation and noise (those of a
run of its own), its own loss and error, and the errors a task refuses with."""

from __future__ import annotations

import pytest
import torch

from l2bn.errors import ConfigError
from l2bn.train import data as D
from l2bn.train.config import TrainConfig
from l2bn.train.tasks import ImageTask, TrackingTask, make_task

CPU = torch.device("cpu")
BASE = TrainConfig(dataset="synthetic", width=4, batch_size=128, precision="fp32")


def test_each_model_gets_the_batches_of_a_run_of_its_own() -> None:
    configs = [BASE.with_(seed=0), BASE.with_(seed=1, lr=0.5), BASE.with_(seed=0)]
    task = make_task(configs, CPU)
    assert isinstance(task, ImageTask)
    singles = [make_task([c], CPU) for c in configs]
    for _ in range(2):  # two epochs: the generators carry on as a run's would
        for epoch in (0, 1):
            x, y = next(iter(task.batches(epoch)))
            assert x.shape == (128, 9, 32, 32) and y.shape == (3, 128)
            assert x.is_contiguous(memory_format=torch.channels_last)
            for k, single in enumerate(singles):
                xs, ys = next(iter(single.batches(epoch)))
                torch.testing.assert_close(x[:, 3 * k : 3 * k + 3], xs, rtol=0, atol=0)
                torch.testing.assert_close(y[k], ys[0], rtol=0, atol=0)
    assert not torch.equal(y[0], y[1])  # different seeds, different orders
    assert torch.equal(y[0], y[2])


def test_images_are_the_normalized_augmented_epoch() -> None:
    task = make_task([BASE.with_(seed=4)], CPU)
    assert isinstance(task, ImageTask)
    x, y = next(iter(task.batches(0)))
    g = torch.Generator().manual_seed(4)
    images, labels = D.epoch_images(task.data.train, g, task.steps_per_epoch * 128, True)
    want = D.normalize(images[:128], task.data, torch.float32)
    torch.testing.assert_close(x, want, rtol=0, atol=0)
    assert torch.equal(y[0], labels[:128])
    assert task.steps_per_epoch == len(task.data.train) // 128  # the partial batch dropped


def test_losses_and_errors_are_per_model() -> None:
    configs = [BASE.with_(seed=s) for s in (0, 1, 2)]
    task = make_task(configs, CPU)
    batch = next(iter(task.batches(0)))
    losses, wrong = task.losses(batch)
    assert losses.shape == wrong.shape == (3,)
    for k, c in enumerate(configs):
        single = make_task([c], CPU)
        one, one_wrong = single.losses(next(iter(single.batches(0))))
        torch.testing.assert_close(losses[k : k + 1], one, rtol=1e-5, atol=1e-6)
        assert torch.equal(wrong[k : k + 1], one_wrong)
    wrong_val, nll, n = task.evaluate("val")
    assert wrong_val.shape == nll.shape == (3,) and n == len(task.data.val)  # type: ignore[attr-defined]
    assert bool(((wrong_val >= 0) & (wrong_val <= n)).all())
    assert bool((nll > 0).all())  # summed cross-entropy, nats
    for k, c in enumerate(configs):  # each model's own, as a run of its own evaluates it
        one_wrong, one_nll, _ = make_task([c], CPU).evaluate("val")
        assert abs(int(wrong_val[k]) - int(one_wrong[0])) <= 2  # near-ties of an untrained net
        torch.testing.assert_close(nll[k : k + 1], one_nll, rtol=1e-3, atol=0)


def test_a_batch_larger_than_the_training_set_is_refused() -> None:
    with pytest.raises(ConfigError, match="batch-size 5000 exceeds"):
        make_task([BASE.with_(batch_size=5000)], CPU)


def test_tracking_models_share_the_targets_and_draw_their_own_noise() -> None:
    base = TrainConfig(dataset="tracking", optimizer="sgd")
    configs = [base.with_(seed=2), base.with_(seed=7)]
    task = make_task(configs, CPU)
    assert isinstance(task, TrackingTask) and not task.bf16
    singles = [make_task([c], CPU) for c in configs]
    for step in list(task.batches(0))[:3]:
        losses, errors = task.losses(step)
        for k, single in enumerate(singles):
            one, one_error = single.losses(step)
            torch.testing.assert_close(losses[k : k + 1], one, rtol=1e-6, atol=1e-6)
            torch.testing.assert_close(errors[k : k + 1], one_error, rtol=1e-6, atol=1e-6)
    # The same weights and target: the models differ by their noise only.
    same = make_task([base.with_(seed=2), base.with_(seed=2, lr=0.5)], CPU)
    a, _ = same.losses(0)
    assert a[0] == a[1]
    assert not torch.equal(task.losses(10)[0][0], task.losses(10)[0][1])
