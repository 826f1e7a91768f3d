"""What the theory predicts for each optimizer: the one table every other module reads.

van Laarhoven (2017), "L2 Regularization versus Batch and Weight Normalization": for a layer
that is invariant to the scale of its weights w, λ (PyTorch ``weight_decay``: gradient += λ·w,
decoupled ``w ← w − η·λ·w`` for AdamW) sets ‖w‖ and through it the effective learning rate.

========================  ==========================  ===================  ==========
optimizer                 η_eff                       ‖w‖ at equilibrium   η* ∝ λ^-k
========================  ==========================  ===================  ==========
SGD, momentum, Nesterov   η/‖w‖² ∝ √(ηλ)              ∝ (η/λ)^¼            k = 1
RMSProp, Adam (L2)        η/‖w‖ ∝ ∛(η²λ)              ∝ (η/λ)^⅓            k = ½
AdamW (decay ηλ)          —                           ∝ (η/λ)^½            k = 1
normalized SGD            η (‖w‖ := 1 each step)      1                    λ irrelevant
========================  ==========================  ===================  ==========

(The paper's Table 1 prints √(η/λ) and ∛(η²/λ), a sign slip; the forms above are consistent.)

Keys are the optimizer names as the CLI spells them (``l2bn.train.config.OptimizerName``);
the table is plain data so that the analysis reads it without importing the training code.
Adding an optimizer touches this table and the optimizer factory (``l2bn.train.optim``), nothing
else; tests/test_theory.py checks that the two agree.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

# The optimizers' own constants that enter the predictions (l2bn.train.optim uses the same;
# tests/test_theory.py checks that they agree).
MOMENTUM = 0.9  # α of momentum and Nesterov (the paper's 0.9)
ADAM_BETA1 = 0.9  # β₁ of Adam and AdamW


def heavy_ball_rate(alpha: float) -> float:
    """c in θ_eq = √(c·η·λ) for heavy-ball momentum α (PyTorch's SGD with momentum)."""
    return 2 / (1 + alpha)


def nesterov_rate(alpha: float) -> float:
    """c in θ_eq = √(c·η·λ) for PyTorch's Nesterov form (the step is g + α·buffer): the
    consecutive steps' correlation differs from heavy ball's, ≈ 1.41 at α = 0.9 (16 % above
    heavy ball in θ)."""
    return 2 * ((1 - alpha) * (1 + alpha) ** 2 + alpha**4 / (1 + alpha))


# --- correlated successive gradients (momentum) ---------------------------------------------
# The rates above assume successive minibatch gradients uncorrelated. With momentum α the step
# is a filter of past gradients, u_t = Σ_m h_m·g_{t−m} (PyTorch: buffer b = α·b + g; heavy ball
# steps by b, h_m = α^m; Nesterov by g + α·b, h_0 = 1 + α, h_m = α^(m+1)). On the sphere a
# gradient is orthogonal to the w it was taken at, not to the w it is applied to m steps later:
# w_t·g_{t−m} = −η·Σ_{i<m} u_{t−m+i}·g_{t−m}. So ‖w‖² grows per step by
#     η²·E‖g‖²·Γ,  Γ = γ_u(0) + 2·Σ_{m≥1} h_m·Σ_{i<m} F(i),  F(i) = E[u_{j+i}·g_j]/E‖g‖²,
# with γ_u(0) = E‖u‖²/E‖g‖², and shrinks by 2ηλ/(1−α)·‖w‖² (the decay passes through the
# buffer's gain 1/(1−α)). At the balance θ² = η²‖u‖²/‖w‖² = c·η·λ with
#     c = 2·γ_u(0) / ((1 − α)·Γ),
# which is heavy_ball_rate and nesterov_rate for uncorrelated gradients. For gradients whose
# successive cosine is ρ (lag 1 only), c does not depend on ρ for heavy ball, but does for
# Nesterov: ρ = −0.44 raises Nesterov's θ²/θ_eq² to 1.45 (tests/test_theory.py checks all of
# it against PyTorch's optimizers on the sphere). What l2bn.train.meter records instead of ρ is
# the successive *updates'* correlation (``update_corr``), which :func:`gradient_correlation`
# inverts.

_RESPONSE_TERMS = 4000  # α^4000 < 1e-17 for α ≤ 0.99: the sums below are exact to rounding


def _response(alpha: float, nesterov: bool) -> npt.NDArray[np.float64]:
    h = alpha ** np.arange(_RESPONSE_TERMS, dtype=np.float64)
    if nesterov:
        h = alpha * h
        h[0] += 1.0
    return h


def _lagged(h: npt.NDArray[np.float64], s: int) -> float:
    """Σ_i h_i·h_{i+s} (s may be negative)."""
    s = abs(s)
    return float(np.dot(h[: h.size - s], h[s:]))


def _update_autocov(h: npt.NDArray[np.float64], rho: float, s: int) -> float:
    """E[u_t·u_{t+s}] / E‖g‖² for gradients of lag-1 correlation ρ."""
    return _lagged(h, s) + rho * (_lagged(h, s + 1) + _lagged(h, s - 1))


def momentum_rate(alpha: float, nesterov: bool, rho: float = 0.0) -> float:
    """c in θ_eq = √(c·η·λ) for momentum α (PyTorch's SGD; ``nesterov`` its Nesterov form) when
    successive minibatch gradients have correlation ``rho`` (lag 1 only, |ρ| ≤ ½)."""
    if not -0.5 <= rho <= 0.5:
        raise ValueError(f"a lag-1-only correlation must lie in [-0.5, 0.5], not {rho}")
    h = _response(alpha, nesterov)
    f = h.copy()  # F(i) = h_i + ρ·(h_{i−1} + h_{i+1})
    f[1:] += rho * h[:-1]
    f[:-1] += rho * h[1:]
    reach = np.concatenate([[0.0], np.cumsum(f)[:-1]])  # Σ_{i<m} F(i)
    gamma0 = _update_autocov(h, rho, 0)
    growth = gamma0 + 2 * float(np.dot(h[1:], reach[1:]))
    return 2 * gamma0 / ((1 - alpha) * growth)


def update_correlation(alpha: float, nesterov: bool, rho: float = 0.0) -> float:
    """The correlation of successive updates (Δw_t·Δw_{t−1} ÷ ‖Δw‖², what l2bn.train.meter
    records as ``update_corr``) for gradients of lag-1 correlation ρ: α for heavy ball with
    uncorrelated gradients, 0.66 for Nesterov at α = 0.9."""
    h = _response(alpha, nesterov)
    return _update_autocov(h, rho, 1) / _update_autocov(h, rho, 0)


def gradient_correlation(alpha: float, nesterov: bool, update_corr: float) -> float:
    """The lag-1 gradient correlation ρ ∈ [−½, ½] that gives ``update_corr`` (the inverse of
    :func:`update_correlation`, increasing in ρ); NaN outside what ρ ∈ [−½, ½] can give."""
    from scipy import optimize  # here: importing l2bn.theory stays cheap

    lo, hi = (update_correlation(alpha, nesterov, r) for r in (-0.5, 0.5))
    if not lo <= update_corr <= hi:
        return math.nan
    return float(
        optimize.brentq(lambda r: update_correlation(alpha, nesterov, r) - update_corr, -0.5, 0.5)
    )


def momentum_ratio(alpha: float, nesterov: bool, update_corr: float) -> float:
    """The ⟨θ²⟩/θ_eq² a stationary run would show, θ_eq being the uncorrelated formula's, when
    its successive updates correlate by ``update_corr``: 1 for heavy ball whatever ρ; NaN
    where no lag-1 gradient correlation gives that update correlation."""
    rho = gradient_correlation(alpha, nesterov, update_corr)
    if not math.isfinite(rho):
        return math.nan
    return momentum_rate(alpha, nesterov, rho) / momentum_rate(alpha, nesterov)


def adamw_rate(beta1: float) -> float:
    """c in θ_eq = √(c·η·λ) for PyTorch's AdamW: each step moves every coordinate by about η·m̂/√v̂,
    whose square averages (1−β₁)/(1+β₁) for uncorrelated gradients; the norm settles where the
    decay 2ηλ‖w‖² per step balances the random walk's η²·d."""
    return 2 * (1 - beta1) / (1 + beta1)


@dataclass(frozen=True)
class Theory:
    k: float  # η* ∝ λ^-k (0: η* does not depend on λ)
    norm_exponent: float  # ‖w‖ ∝ (η/λ)^p at equilibrium: p (a = b = p in ‖w‖ ∝ η^a λ^-b)
    # η_eff = η / ‖w_unit‖^eff_lr_power: 2 for the SGD family (the step is ∝ η/‖w‖ and turns
    # the direction by that over ‖w‖), 1 for Adam-like steps (∝ η whatever ‖w‖), 0 when ‖w‖
    # is pinned to 1.
    eff_lr_power: int
    # Equilibrium takes ~1/(c·η·λ) steps: momentum α = 0.9 multiplies the decay per step by
    # 1/(1−α) = 10, PyTorch AdamW's ‖w‖² relaxes at 2ηλ. Adam/RMSProp with coupled L2 relax
    # at a rate set by the gradient scale, not by ηλ alone: c = 1 there is a proxy only.
    relaxation_rate: float = 1.0
    # θ_eq = √(angular_rate·η·λ): the mean angular update per step (radians, per output unit)
    # at equilibrium, where the decay's radial shrink balances the tangential growth. None
    # where it depends on the gradient scale (Adam/RMSProp with coupled L2: their equilibrium
    # is tested by that balance itself, growth ÷ shrink = 1) or where there is no decay to
    # balance (normalized SGD: θ = η·G̃).
    angular_rate: float | None = None
    # s in the invariant coordinates of the norm law, ‖w‖·λ^s ∝ (η·λ^k)^p: with
    # ‖w‖ ∝ (η/λ)^p at equilibrium, s = p·(1 + k): ½ for the SGD family
    # ((η/λ)^¼ = (ηλ)^¼·λ^-½) and Adam/RMSProp with L2 ((η/λ)^⅓ = (η√λ)^⅓·λ^-½), 1 for AdamW
    # ((η/λ)^½ = (ηλ)^½·λ^-1), 0 for normalized SGD (‖w‖ = 1). l2bn analyze fits
    # log(‖w‖·λ^s) = c + p·log(η·λ^k) + q·log λ: q ≠ 0 is memory of the initial weights.
    norm_scale_power: float = 0.5
    # The decay's pull on log‖w‖² per step, in units of η·λ: 2 for plain SGD (w ← w(1 − ηλ)
    # − η·g), 2/(1 − α) = 20 with momentum α = 0.9 (the velocity carries the decay term over
    # 1/(1 − α) steps), 2 for AdamW's decoupled w ← w(1 − ηλ). None where it depends on the
    # gradient scale (Adam/RMSProp with coupled L2: the decay is divided by √v) or there is no
    # decay (normalized SGD). l2bn.analysis.estimating.equilibrium judges stationarity by it.
    decay_rate: float | None = None

    def decay_pull(self, lr: float, weight_decay: float) -> float | None:
        """The decay's pull on log‖w‖² per step (None where the table has no formula)."""
        if self.decay_rate is None:
            return None
        return self.decay_rate * lr * weight_decay

    def angular_update(self, lr: float, weight_decay: float) -> float | None:
        """θ_eq in radians per step for this η and λ (None where the table has no formula)."""
        if self.angular_rate is None:
            return None
        return math.sqrt(self.angular_rate * lr * weight_decay)


ADAPTIVE_L2 = Theory(k=0.5, norm_exponent=1 / 3, eff_lr_power=1, norm_scale_power=0.5)
MOMENTUM_RELAXATION = 10.0  # 1/(1−α) at α = MOMENTUM: the decay per step is amplified

THEORY: dict[str, Theory] = {
    "sgd": Theory(
        k=1.0,
        norm_exponent=0.25,
        eff_lr_power=2,
        angular_rate=2.0,
        norm_scale_power=0.5,
        decay_rate=2.0,
    ),
    "momentum": Theory(
        1.0,
        0.25,
        2,
        MOMENTUM_RELAXATION,
        heavy_ball_rate(MOMENTUM),
        norm_scale_power=0.5,
        decay_rate=2 * MOMENTUM_RELAXATION,
    ),
    "nesterov": Theory(
        1.0,
        0.25,
        2,
        MOMENTUM_RELAXATION,
        nesterov_rate(MOMENTUM),
        norm_scale_power=0.5,
        decay_rate=2 * MOMENTUM_RELAXATION,
    ),
    "rmsprop": ADAPTIVE_L2,
    "adam": ADAPTIVE_L2,
    "adamw": Theory(
        k=1.0,
        norm_exponent=0.5,
        eff_lr_power=1,
        relaxation_rate=2.0,
        angular_rate=adamw_rate(ADAM_BETA1),
        norm_scale_power=1.0,
        decay_rate=2.0,
    ),
    "normalized-sgd": Theory(k=0.0, norm_exponent=0.0, eff_lr_power=0, norm_scale_power=0.0),
}


def theory_of(optimizer: str) -> Theory | None:
    """The optimizer's predictions, or None for a name this table does not know."""
    return THEORY.get(str(optimizer))
