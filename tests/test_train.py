"""The training loop: determinism, callbacks, the schedule, divergence, and that it learns."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

import l2bn.train.device as train_mod
from l2bn.train.config import Precision, TrainConfig
from l2bn.train.engine import train
from l2bn.train.records import EpochRecord

FAST = TrainConfig(dataset="synthetic", width=4, epochs=2, batch_size=128, lr=0.05)


def test_same_seed_same_result_and_another_seed_differs() -> None:
    a, b = train(FAST), train(FAST)
    assert [e.to_dict() | {"seconds": 0} for e in a.history] == [
        e.to_dict() | {"seconds": 0} for e in b.history
    ]
    assert a.test_error == b.test_error
    c = train(FAST.with_(seed=1))
    assert c.history[-1].train_loss != a.history[-1].train_loss


def test_reports_every_epoch_with_the_scheduled_lr() -> None:
    seen: list[EpochRecord] = []
    batches: list[tuple[int, int, int]] = []
    config = FAST.with_(epochs=10, lr=0.1)
    result = train(config, on_epoch=seen.append, on_batch=lambda *a: batches.append(a))
    assert [e.epoch for e in seen] == list(range(1, 11))
    # ÷10 after 50 % and 80 % of the epochs, as the paper (50 and 80 of 100).
    assert [e.lr for e in seen] == pytest.approx([0.1] * 5 + [0.01] * 3 + [0.001] * 2)
    assert len(batches) == 10 * result.steps_per_epoch
    assert batches[-1] == (10, result.steps_per_epoch, result.steps_per_epoch)
    assert list(seen[0].layers) == ["conv1", "conv2", "conv3", "conv4", "fc"]


def test_a_callback_can_stop_training() -> None:
    class Stop(Exception):
        pass

    def stop(record: EpochRecord) -> None:
        raise Stop

    with pytest.raises(Stop):
        train(FAST, on_epoch=stop)


def test_divergence_is_a_result_with_chance_errors() -> None:
    # Without normalization a huge rate overflows to inf/NaN within the first epoch.
    result = train(FAST.with_(norm="none", lr=1e6, epochs=5))
    assert result.diverged
    assert len(result.history) == 1  # stopped at once
    assert result.val_error == result.test_error == 0.9
    record = result.to_dict()
    assert record["diverged"] is True and record["train_loss"] is None
    json.dumps(record, allow_nan=False)  # strict JSON: no NaN or Infinity


def test_normalized_sgd_keeps_units_on_the_sphere_during_training() -> None:
    result = train(FAST.with_(optimizer="normalized-sgd", lr=0.5, head="bn"))
    for rec in result.history[-1].layers.values():
        assert rec.unit_norm == pytest.approx(1.0, abs=1e-5)
        assert rec.eff_lr == pytest.approx(result.history[-1].lr)


def test_weight_decay_shrinks_norms_at_a_fixed_direction_loss() -> None:
    # With BN, λ only sets ‖w‖: more decay, smaller norms (the paper's mechanism).
    small = train(FAST.with_(weight_decay=0.0, epochs=3, lr_drops=()))
    large = train(FAST.with_(weight_decay=0.5, epochs=3, lr_drops=()))
    for name in ("conv1", "conv2", "conv3", "conv4"):
        assert large.history[-1].layers[name].norm < 0.8 * small.history[-1].layers[name].norm


def test_the_synthetic_task_is_learned() -> None:
    result = train(FAST.with_(optimizer="adam", lr=3e-3, epochs=3, width=8))
    assert result.test_error < 0.5  # chance is 0.9


@pytest.mark.parametrize("norm", ["bn", "wn"])
def test_without_affine_only_the_weights_train_and_the_task_is_still_learned(norm: str) -> None:
    from l2bn.train.models import ConvNet, weight_tensors
    from l2bn.train.optim import param_groups

    model = ConvNet(width=4, norm=norm, head="bn", affine=False)
    trained = [p for group in param_groups(model, 0.1, decay_all=False) for p in group["params"]]
    assert {id(p) for p in trained} == {id(w) for w in weight_tensors(model).values()}
    config = FAST.with_(optimizer="adam", lr=3e-3, epochs=3, width=8, head="bn", norm=norm)
    result = train(config.with_(affine=False))
    assert result.test_error < 0.5  # chance is 0.9


def test_the_tracking_toy_tracks() -> None:
    # Near the optimum of sweeps/tracking.toml (ηλ ≈ 3.4e-3 for SGD), where it settles at ≈ 0.16.
    config = TrainConfig(
        dataset="tracking", optimizer="sgd", lr=0.34, weight_decay=0.01, epochs=4, lr_drops=()
    )
    result = train(config)
    assert list(result.history[0].layers) == ["w"]
    assert result.val_error < 0.25  # a random direction scores 1
    assert math.isfinite(result.history[-1].layers["w"].norm)


def test_learns_on_real_cifar10_images(cifar_dir: Path) -> None:
    config = TrainConfig(
        dataset="cifar10",
        data_dir=cifar_dir,
        optimizer="adam",
        lr=2e-3,
        weight_decay=5e-4,
        epochs=3,
        width=8,
        batch_size=64,
    )
    result = train(config)
    assert result.steps_per_epoch == 4653 // 64  # 5170 minus a 10 % validation split
    assert result.test_error < 0.75  # chance is 0.9


@pytest.mark.parametrize(
    ("flags", "want"),
    [
        ({"avx2", "avx512f"}, Precision.fp32),  # AVX512 without bf16 dot products: emulated
        ({"avx512f", "avx512_bf16"}, Precision.bf16),
        ({"amx_tile", "amx_bf16"}, Precision.bf16),
        (set(), Precision.fp32),  # no /proc/cpuinfo (macOS, Windows)
    ],
)
def test_auto_precision_follows_the_cpus_bf16_flags(
    monkeypatch: pytest.MonkeyPatch, flags: set[str], want: Precision
) -> None:
    monkeypatch.setattr(train_mod, "cpu_flags", lambda: frozenset(flags))
    cpu = torch.device("cpu")
    assert train_mod.resolve_precision(Precision.auto, cpu) is want
    assert train_mod.resolve_precision(Precision.fp32, cpu) is Precision.fp32  # asked: kept


def test_cpu_flags_are_read_from_proc_cpuinfo() -> None:
    flags = train_mod.cpu_flags()
    if not Path("/proc/cpuinfo").exists():
        assert flags == frozenset()
    else:  # every x86-64 CPU has sse2, every aarch64 one has fp
        assert {"sse2", "fp"} & flags
