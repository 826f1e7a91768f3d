"""The exact symmetry on real images: two runs related by the optimizer's map are copies.

With every trained weight scale-invariant (BN after each conv, ``affine=False``, the BN head),
the run from (αw₀, α^a·η, λ/α^b) is α times the run from (w₀, η, λ), step by step
(l2bn.theory; docs/background.md): SGD family (a, b) = (2, 2), Adam/RMSProp with coupled L2
(1, 2), AdamW (1, 1). With α a power of two every product the training does is then the same
float operation up to an exponent, so the copy is bitwise, except where a constant that does
not move with the map enters: BN's ε (√(σ² + ε)) and Adam's ε (√v + ε). ``scale_eps`` moves
them with the map (ε·S² and ε/S), which makes the copies bitwise: that proves that data, model,
optimizer and records hold no other break. Without it, the residual is what those ε cost.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from l2bn.train.config import TrainConfig
from l2bn.train.engine import Engine, train

ALPHA = 4.0  # a power of two: rescaling is exact in floating point
# optimizer → (η, λ at S = 1; the map's powers a, b: (αw₀, α^a·η, λ/α^b))
MAPS = {
    "nesterov": (0.05, 8e-3, 2, 2),
    "adam": (2e-3, 2e-2, 1, 2),
    "adamw": (2e-3, 0.8, 1, 1),
}


def _pair(
    cifar_dir: Path, optimizer: str, scale_eps: bool, **extra: object
) -> tuple[TrainConfig, TrainConfig]:
    lr, wd, a, b = MAPS[optimizer]
    base = TrainConfig(
        optimizer=optimizer,  # type: ignore[arg-type]
        lr=lr,
        weight_decay=wd,
        dataset="cifar10",  # type: ignore[arg-type]
        data_dir=cifar_dir / "cifar-10-batches-py",
        width=4,
        batch_size=128,
        norm="bn",  # type: ignore[arg-type]
        head="bn",  # type: ignore[arg-type]
        affine=False,
        schedule="constant",  # type: ignore[arg-type]
        precision="fp32",  # type: ignore[arg-type]
        device="cpu",  # type: ignore[arg-type]
        epochs=1,
        scale_eps=scale_eps,
    ).with_(**extra)
    return base, base.with_(lr=lr * ALPHA**a, weight_decay=wd / ALPHA**b, init_scale=ALPHA)


def _steps(configs: tuple[TrainConfig, TrainConfig], n: int) -> tuple[torch.Tensor, torch.Tensor]:
    engines = [Engine([c]) for c in configs]
    for e in engines:
        e.set_lr(0, 0)
    streams = zip(*(e.task.batches(0) for e in engines), strict=True)
    for _, batches in zip(range(n), streams, strict=False):  # the first n steps
        for e, batch in zip(engines, batches, strict=True):
            e.step(batch)
    return engines[0].net.params.flat, engines[1].net.params.flat


@pytest.mark.parametrize("optimizer", list(MAPS))
def test_runs_related_by_the_map_are_bitwise_copies_when_eps_moves_with_it(
    cifar_dir: Path, optimizer: str
) -> None:
    small, big = _steps(_pair(cifar_dir, optimizer, scale_eps=True), 12)
    assert not torch.equal(small, _steps(_pair(cifar_dir, optimizer, True), 1)[0])  # it moved
    assert torch.equal(big / ALPHA, small)  # every weight, bit for bit


@pytest.mark.parametrize("optimizer", list(MAPS))
def test_only_eps_breaks_the_map_and_by_how_much(cifar_dir: Path, optimizer: str) -> None:
    """PyTorch's fixed ε: the copies differ after one step (‖Δw‖/‖w‖ measured at width 4:
    nesterov 6e-5, from BN's ε; adam and adamw 8e-4, mostly Adam's ε against the first step's
    tiny √v) and training amplifies it: after 12 steps 4e-2, 2e-3, 3e-3; after one epoch (36
    steps) 0.12, 0.009, 0.010."""
    residual = []
    for n in (1, 12):
        small, big = _steps(_pair(cifar_dir, optimizer, scale_eps=False), n)
        residual.append(float((big / ALPHA - small).norm() / small.norm()))
    assert 0 < residual[0] < 2e-3
    assert residual[0] < residual[1] < 0.1


def test_the_whole_run_scales_records_and_all(cifar_dir: Path) -> None:
    """Through train(): the same validation error and loss, every layer's norm × α, the same
    angular updates (they are scale-free), each epoch."""
    small, big = (train(c) for c in _pair(cifar_dir, "nesterov", scale_eps=True, epochs=2))
    for a, b in zip(small.history, big.history, strict=True):
        assert (a.val_error, a.val_loss, a.train_loss) == (b.val_error, b.val_loss, b.train_loss)
        for layer, rec in a.layers.items():
            other = b.layers[layer]
            assert other.norm == pytest.approx(ALPHA * rec.norm, rel=1e-6)
            assert other.angle == pytest.approx(rec.angle, rel=1e-6)
            assert other.angle_eq == pytest.approx(rec.angle_eq, rel=1e-12)
    assert small.test_error == big.test_error
