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
