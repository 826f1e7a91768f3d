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
    gradient_correlation,
    heavy_ball_rate,
    momentum_rate,
    momentum_ratio,
    nesterov_rate,
    theory_of,
    update_correlation,
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
    name: str,
    lr: float,
    wd: float,
    steps: int,
    start_scale: float,
    seed: int = 0,
    rho: float = 0.0,
    lags: list[float] | None = None,
) -> tuple[float, float]:
    """Train a scale-invariant weight (32 units in R^32) with PyTorch's own optimizer under
    isotropic gradient noise orthogonal to w and scaled by 1/‖w‖ (a BN layer's gradient), the
    norm starting ``start_scale`` × its equilibrium value (for Adam-L2, whose equilibrium
    norm depends on the gradient scale, the SGD formula's: a start near it). Returns, over the
    last quarter, (RMS angular update per step, growth ÷ shrink = Σ|Δw|² ÷ Σ −2w·Δw).
    ``rho``: successive noises correlate by ρ (an MA(1) process, lag 1 only); ``lags``, when
    given, gets the successive updates' correlation Σ Δw_t·Δw_{t−1} ÷ Σ |Δw_t|² (per unit
    scaled by 1/‖w‖², as l2bn.train.meter sums it)."""
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
    theta2 = growth = shrink = lag = lag_q = 0.0
    # z_t = a·ξ_t + b·ξ_{t−1} with a² + b² = 1 and a·b = ρ: unit variance, lag-1 correlation ρ.
    a = math.sqrt((1 + math.sqrt(1 - 4 * rho * rho)) / 2)
    b = rho / a
    xi_before = torch.randn(units, dim, generator=g, dtype=torch.float64)
    previous = None
    for t in range(steps):
        with torch.no_grad():
            n = w.norm(dim=1, keepdim=True)
            xi = torch.randn(units, dim, generator=g, dtype=torch.float64)
            noise = a * xi + b * xi_before
            xi_before = xi
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
                if previous is not None:
                    scale = before.pow(2).sum(1)
                    lag += float(((delta * previous).sum(1) / scale).sum())
                    lag_q += float((delta.pow(2).sum(1) / scale).sum())
        previous = (w - before).detach()
    if lags is not None:
        lags.append(lag / lag_q)
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


@pytest.mark.parametrize("rho", [-0.4, 0.3])
@pytest.mark.parametrize("name", ["momentum", "nesterov"])
def test_correlated_gradients_change_nesterovs_equilibrium_angle_and_not_heavy_balls(
    name: str, rho: float
) -> None:
    # PyTorch's own optimizers on the sphere with successive gradients correlated by ρ: the
    # angle, and the successive updates' correlation the meter records, are the formulas'.
    nesterov = name == "nesterov"
    lags: list[float] = []
    theta, _ = _sphere_run(name, 0.01, 0.01, steps=6000, start_scale=1.0, rho=rho, lags=lags)
    rate = momentum_rate(MOMENTUM, nesterov, rho)
    assert theta**2 / (rate * 0.01 * 0.01) == pytest.approx(1.0, abs=0.02)
    assert lags[0] == pytest.approx(update_correlation(MOMENTUM, nesterov, rho), abs=0.01)
    # From the recorded update correlation back to ρ and the ratio to the uncorrelated θ_eq².
    ratio = momentum_ratio(MOMENTUM, nesterov, lags[0])
    assert ratio == pytest.approx(rate / momentum_rate(MOMENTUM, nesterov), abs=0.02)


def test_the_correlated_rates_reduce_to_the_uncorrelated_formulas() -> None:
    for alpha in (0.5, 0.9, 0.99):
        assert momentum_rate(alpha, False) == pytest.approx(heavy_ball_rate(alpha), rel=1e-12)
        assert momentum_rate(alpha, True) == pytest.approx(nesterov_rate(alpha), rel=1e-12)
        assert update_correlation(alpha, False) == pytest.approx(alpha, rel=1e-12)
        # Heavy ball: no lag-1 gradient correlation moves its rate (an exact identity).
        for rho in (-0.5, -0.2, 0.45):
            assert momentum_rate(alpha, False, rho) == pytest.approx(heavy_ball_rate(alpha))
    # Nesterov at α = 0.9: the first headline's conv1 sat at θ²/θ_eq² ≈ 1.45-1.56; a lag-1
    # correlation near −0.44 to −0.46 gives that, with successive updates slightly anti-
    # correlated, where uncorrelated gradients give 0.66.
    assert update_correlation(0.9, True) == pytest.approx(0.658, abs=0.001)
    for ratio, rho in ((1.45, -0.436), (1.56, -0.462)):
        assert momentum_rate(0.9, True, rho) / nesterov_rate(0.9) == pytest.approx(ratio, abs=0.01)
    assert gradient_correlation(0.9, True, update_correlation(0.9, True, -0.3)) == pytest.approx(
        -0.3
    )
    assert math.isnan(momentum_ratio(0.9, True, 0.95))  # beyond what ρ ∈ [−½, ½] gives
    with pytest.raises(ValueError, match="lag-1"):
        momentum_rate(0.9, True, -0.7)


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
