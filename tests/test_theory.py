"""l2bn.theory: the table covers every optimizer, agrees with the optimizers' own constants, and
its equilibrium angular updates are what PyTorch's optimizers do on the sphere."""

from __future__ import annotations

import math

import pytest
import torch

from l2bn.theory import (
    ADAM_BETA1,
    MOMENTUM,
    MOMENTUM_RELAXATION,
    THEORY,
    theory_of,
)
from l2bn.train.config import OptimizerName


def test_every_optimizer_has_one_entry() -> None:
    assert set(THEORY) == {o.value for o in OptimizerName}
    assert theory_of("adagrad") is None
    assert theory_of(OptimizerName.adam) is THEORY["adam"]


def test_the_constants_are_the_optimizers_own() -> None:
    from l2bn.train.optim import SPECS

    for name in ("momentum", "nesterov"):
        assert SPECS[OptimizerName(name)].momentum == MOMENTUM
    for name in ("adam", "adamw"):
        assert SPECS[OptimizerName(name)].betas[0] == ADAM_BETA1
    assert pytest.approx(1 / (1 - MOMENTUM)) == MOMENTUM_RELAXATION


def _sphere_run(
    name: str, lr: float, wd: float, steps: int, start_scale: float, seed: int = 0
) -> tuple[float, float]:
    """Train a scale-invariant weight (32 units in R^32) with PyTorch's own optimizer under
    isotropic gradient noise orthogonal to w and scaled by 1/‖w‖ (a BN layer's gradient), the
    norm starting ``start_scale`` × its equilibrium value (for Adam-L2, whose equilibrium
    norm depends on the gradient scale, the SGD formula's: a start near it). Returns, over the
    last quarter, (RMS angular update per step, growth ÷ shrink = Σ|Δw|² ÷ Σ −2w·Δw)."""
    g = torch.Generator().manual_seed(seed)
    units, dim = 32, 32
    w = torch.randn(units, dim, generator=g, dtype=torch.float64)
    # G̃ = √dim here; the SGD family's ‖w‖⁴ = ηG̃²/(2λ(1−α)), AdamW's ‖w‖² = ηd/(2λ).
    alpha = MOMENTUM if name in ("momentum", "nesterov") else 0.0
    eq = (
        math.sqrt(lr * dim / (2 * wd))
        if name == "adamw"
        else (lr * dim / (2 * wd * (1 - alpha))) ** 0.25
    )
    w = torch.nn.Parameter(w / w.norm(dim=1, keepdim=True) * eq * start_scale)
    opt: torch.optim.Optimizer
    if name == "adamw":
        opt = torch.optim.AdamW([w], lr=lr, weight_decay=wd, betas=(ADAM_BETA1, 0.999))
    elif name == "adam":
        opt = torch.optim.Adam([w], lr=lr, weight_decay=wd, betas=(ADAM_BETA1, 0.999))
    else:
        opt = torch.optim.SGD(
            [w], lr=lr, weight_decay=wd, momentum=alpha, nesterov=name == "nesterov"
        )
    theta2 = growth = shrink = 0.0
    for t in range(steps):
        with torch.no_grad():
            n = w.norm(dim=1, keepdim=True)
            noise = torch.randn(units, dim, generator=g, dtype=torch.float64)
            noise -= (noise * w).sum(1, keepdim=True) * w / n**2
            w.grad = noise / n
            before = w.detach().clone()
        opt.step()
        if t >= steps * 3 // 4:
            with torch.no_grad():
                delta = w - before
                cos = (w * before).sum(1) / (w.norm(dim=1) * before.norm(dim=1))
                theta2 += float(torch.arccos(cos.clamp(-1, 1)).pow(2).mean())
                growth += float(delta.pow(2).sum())
                shrink += float(-2 * (before * delta).sum())
    return math.sqrt(theta2 / (steps - steps * 3 // 4)), growth / shrink


@pytest.mark.parametrize(
    ("name", "lr", "wd"),
    [("sgd", 0.1, 0.01), ("momentum", 0.01, 0.01), ("nesterov", 0.01, 0.01), ("adamw", 0.01, 0.1)],
)
def test_angular_update_at_equilibrium_matches_a_simulation(
    name: str, lr: float, wd: float
) -> None:
    theta, balance = _sphere_run(name, lr, wd, steps=4000, start_scale=1.0)
    predicted = THEORY[name].angular_update(lr, wd)
    assert predicted is not None
    assert theta / predicted == pytest.approx(1.0, abs=0.03)
    assert balance == pytest.approx(1.0, abs=0.1)  # growth balances shrink at equilibrium


def test_nesterov_turns_faster_than_heavy_ball() -> None:
    # PyTorch's Nesterov step g + α·buffer: θ 16 % above heavy ball's at α = 0.9.
    ratio = THEORY["nesterov"].angular_update(1, 1) / THEORY["momentum"].angular_update(1, 1)  # type: ignore[operator]
    assert ratio == pytest.approx(1.158, abs=0.002)


def test_adam_l2_balance_tells_equilibrium_from_memory_of_the_start() -> None:
    # Adam with coupled L2 has no θ_eq independent of the gradient scale; its equilibrium
    # test is the balance growth ÷ shrink = 1. At equilibrium it reads ≈ 1; a norm started 4×
    # above its equilibrium still shrinks much faster than it grows.
    assert THEORY["adam"].angular_update(0.01, 0.1) is None
    _, settled = _sphere_run("adam", 0.01, 0.1, steps=4000, start_scale=1.0)
    _, remembering = _sphere_run("adam", 0.01, 0.1, steps=400, start_scale=4.0)
    assert settled == pytest.approx(1.0, abs=0.1)
    assert remembering < 0.5
