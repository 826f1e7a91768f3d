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

from dataclasses import dataclass


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


SGD_FAMILY = Theory(k=1.0, norm_exponent=0.25, eff_lr_power=2)
ADAPTIVE_L2 = Theory(k=0.5, norm_exponent=1 / 3, eff_lr_power=1)

THEORY: dict[str, Theory] = {
    "sgd": SGD_FAMILY,
    "momentum": Theory(1.0, 0.25, 2, relaxation_rate=10.0),
    "nesterov": Theory(1.0, 0.25, 2, relaxation_rate=10.0),
    "rmsprop": ADAPTIVE_L2,
    "adam": ADAPTIVE_L2,
    "adamw": Theory(k=1.0, norm_exponent=0.5, eff_lr_power=1, relaxation_rate=2.0),
    "normalized-sgd": Theory(k=0.0, norm_exponent=0.0, eff_lr_power=0),
}


def theory_of(optimizer: str) -> Theory | None:
    """The optimizer's predictions, or None for a name this table does not know."""
    return THEORY.get(str(optimizer))
