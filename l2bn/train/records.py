"""What a training run produces: per-epoch, per-layer records and the final result.

The JSON shape (``TrainResult.to_dict``) is the one ``l2bn train --json`` writes and the one
``l2bn sweep`` stores in each Optuna trial's user attr ``history`` (docs/study-layout.md)::

    {"epoch": 1,                # 1-based
     "lr": 0.1,                 # η during this epoch (the mean over its steps)
     "train_loss": 1.93,        # null when not finite (diverged); so is val_loss
     "train_error": 0.71, "val_error": 0.65,
     "val_loss": 1.84,          # mean cross-entropy (nats) on the validation split
     "seconds": 3.2,
     "layers": {"conv1": {"norm": 4.1, "unit_norm": 0.73, "eff_lr": 0.19,
                          "angle": 0.031, "angle_eq": 0.032, "radial": -0.00047,
                          "tangential": 0.031, "grad_norm": 2.6, "balance": 0.98,
                          "update_corr": 0.64}, ...}}

``norm`` is the Frobenius norm of the layer's weight (for weight normalization: of the
direction parameter v), ``unit_norm`` the mean norm of one output unit's weights, and
``eff_lr`` the effective learning rate computed from ``unit_norm`` (η/‖w‖² for the SGD
family, η/‖w‖ for RMSProp/Adam/AdamW, η for normalized SGD).

The update of each step, per output unit (a row of the weight; for layer norm the whole
tensor), with w the weights before the step, Δw the step's change and g the loss gradient
(l2bn.train.meter), over the epoch's steps and the layer's units:

* ``angle``: RMS of θ = ∠(w, w + Δw), radians per step;
* ``angle_eq``: θ_eq = √(c·η·λ) of l2bn.theory at the epoch's mean η, for scale-invariant
  layers only (null otherwise, and for adam, rmsprop and normalized-sgd, where the theory has
  no formula): ``angle``/``angle_eq`` → 1 at equilibrium;
* ``radial``: mean of r = (w·Δw)/‖w‖², the signed relative change of ‖w‖ per step;
* ``tangential``: RMS of ‖Δw_⊥‖/‖w‖, the part of Δw orthogonal to w, relative to ‖w‖;
* ``grad_norm``: RMS of ‖g‖·‖w‖, the gradient at unit weight scale (what a scale-invariant
  layer's ‖g‖ would be at ‖w‖ = 1);
* ``balance``: growth ÷ shrink = mean(‖Δw‖²/‖w‖²) ÷ mean(−2r), exactly 1 when ‖w‖ is
  stationary (‖w + Δw‖² = ‖w‖²(1 + 2r + ‖Δw‖²/‖w‖²)); > 1: ‖w‖ grows, < 1: it shrinks;
  null when nothing shrinks (mean r ≥ 0);
* ``update_corr``: the successive updates' correlation, Σ Δw_t·Δw_{t−1}/‖w‖² ÷ Σ ‖Δw_t‖²/‖w‖²
  over the steps that have a predecessor: 0.9 for heavy ball and 0.66 for Nesterov (α = 0.9)
  with uncorrelated gradients; l2bn.theory.momentum_ratio turns it into the θ²/θ_eq² that
  correlated successive gradients would give.

Only steps where the model was alive count. Non-finite numbers are written as ``null``;
records written before a key existed read back with NaN for it. The result around the
history adds ``val_error``, ``val_loss`` (the last epoch's), ``test_error`` and ``test_loss``
(mean cross-entropy on the test split). On the tracking toy the loss reported is its
noise-free loss, which is its error: ``val_loss`` = ``val_error`` and ``test_loss`` =
``test_error`` there.

Torch-free on purpose: the sweep's parent process reads records without importing torch. The
norms and update sums themselves are computed on the device for all K models at once
(l2bn.train.models.layer_norms, l2bn.train.meter) and arrive here as host numbers.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

from l2bn.files import finite_or_none
from l2bn.train.config import TrainConfig

NAN = float("nan")
UPDATE_SUMS = 8  # per layer and model from l2bn.train.meter: θ², r, t², G̃², q, ℓ, q_ℓ, unit-steps


@dataclass(frozen=True)
class LayerRecord:
    norm: float  # ‖w‖ (Frobenius)
    unit_norm: float  # mean over output units of ‖w_unit‖
    eff_lr: float  # η_eff from unit_norm (see module docstring)
    # The update per step (module docstring); NaN where not measured or not applicable.
    angle: float = NAN  # RMS θ, radians per step
    angle_eq: float = NAN  # θ_eq of l2bn.theory (scale-invariant layers, where it has one)
    radial: float = NAN  # mean (w·Δw)/‖w‖²
    tangential: float = NAN  # RMS ‖Δw_⊥‖/‖w‖
    grad_norm: float = NAN  # RMS ‖g‖·‖w‖
    balance: float = NAN  # mean ‖Δw‖²/‖w‖² ÷ mean(−2r): 1 when ‖w‖ is stationary
    update_corr: float = NAN  # successive updates: Σ Δw_t·Δw_{t−1} ÷ Σ ‖Δw_t‖² (per unit, /‖w‖²)

    def to_dict(self) -> dict[str, float | None]:
        return {f.name: finite_or_none(getattr(self, f.name)) for f in fields(self)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LayerRecord:
        """Keys it does not know are ignored, keys it lacks (older records) read as NaN."""
        known = {f.name for f in fields(cls)}
        return cls(**{f: NAN if x is None else float(x) for f, x in d.items() if f in known})


def layer_record(norm: float, unit_norm: float, lr: float, eff_lr_power: int) -> LayerRecord:
    """One layer's record from its norms: the single place where η_eff is defined."""
    scale = unit_norm**eff_lr_power
    return LayerRecord(
        norm=norm, unit_norm=unit_norm, eff_lr=lr / scale if scale > 0 else float("inf")
    )


def update_fields(sums: Sequence[float]) -> dict[str, float]:
    """The update fields from one layer's epoch sums (θ², r, t², G̃², q, ℓ, q_ℓ, count of
    unit-steps; l2bn.train.meter): the single place where they are defined. All NaN when
    nothing counted."""
    theta_sq, radial, tangential_sq, grad_sq, growth, lag, lag_growth, n = sums
    if not n > 0:
        return {}
    shrink = -2 * radial / n
    return {
        "angle": math.sqrt(theta_sq / n),
        "radial": radial / n,
        "tangential": math.sqrt(tangential_sq / n),
        "grad_norm": math.sqrt(grad_sq / n),
        "balance": growth / n / shrink if shrink > 0 else NAN,
        "update_corr": lag / lag_growth if lag_growth > 0 else NAN,
    }


def layer_records(
    layers: Iterable[str],
    norms: Sequence[float],
    k: int,
    m: int,
    lr: float,
    eff_lr_power: int,
    updates: Sequence[float] | None = None,
    angle_eq: float | None = None,
    invariant: Collection[str] = (),
) -> dict[str, LayerRecord]:
    """Model m's records, from the norms of K models flattened as layers × K × (‖w‖, mean
    unit norm) (what one host transfer of l2bn.train.models.layer_norms gives) and, when
    measured, the update sums flattened as layers × K × UPDATE_SUMS (l2bn.train.meter).
    ``angle_eq`` (θ_eq of this model's η and λ, None where the theory has none) goes to the
    layers in ``invariant``."""
    out: dict[str, LayerRecord] = {}
    for i, name in enumerate(layers):
        j = 2 * (i * k + m)
        rec = layer_record(norms[j], norms[j + 1], lr, eff_lr_power)
        extra: dict[str, float] = {}
        if updates is not None:
            u = UPDATE_SUMS * (i * k + m)
            extra = update_fields(updates[u : u + UPDATE_SUMS])
        if angle_eq is not None and name in invariant:
            extra["angle_eq"] = angle_eq
        out[name] = LayerRecord(rec.norm, rec.unit_norm, rec.eff_lr, **extra)
    return out


@dataclass(frozen=True)
class EpochRecord:
    epoch: int  # 1-based
    lr: float  # the mean η over the epoch's steps
    train_loss: float
    train_error: float
    val_error: float
    seconds: float
    layers: dict[str, LayerRecord] = field(default_factory=dict)
    val_loss: float = NAN  # mean cross-entropy on the validation split (NaN: diverged)

    def to_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "lr": self.lr,
            "train_loss": finite_or_none(self.train_loss),
            "train_error": self.train_error,
            "val_error": self.val_error,
            "val_loss": finite_or_none(self.val_loss),
            "seconds": self.seconds,
            "layers": {name: rec.to_dict() for name, rec in self.layers.items()},
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EpochRecord:
        return cls(
            epoch=int(d["epoch"]),
            lr=float(d["lr"]),
            train_loss=_number(d["train_loss"]),
            train_error=float(d["train_error"]),
            val_error=float(d["val_error"]),
            seconds=float(d.get("seconds", 0.0)),
            layers={k: LayerRecord.from_dict(v) for k, v in d.get("layers", {}).items()},
            val_loss=_number(d.get("val_loss")),
        )


def _number(x: Any) -> float:
    return NAN if x is None else float(x)


@dataclass(frozen=True)
class TrainResult:
    config: TrainConfig
    history: tuple[EpochRecord, ...]
    val_error: float  # after the last epoch (chance level if diverged)
    test_error: float
    train_loss: float  # last epoch's mean (inf if diverged)
    diverged: bool
    steps_per_epoch: int
    seconds: float
    device: str
    precision: str
    version: str
    val_loss: float = NAN  # last epoch's mean validation cross-entropy (NaN if diverged)
    test_loss: float = NAN  # mean test cross-entropy (NaN if diverged)
    graph: str = "off"  # what graph auto resolved to: on (device scalars, CUDA graph) or off

    def to_dict(self) -> dict[str, Any]:
        return {
            "l2bn_version": self.version,
            "config": self.config.to_dict(),
            "device": self.device,
            "precision": self.precision,
            "graph": self.graph,
            "steps_per_epoch": self.steps_per_epoch,
            "val_error": self.val_error,
            "val_loss": finite_or_none(self.val_loss),
            "test_error": self.test_error,
            "test_loss": finite_or_none(self.test_loss),
            "train_loss": finite_or_none(self.train_loss),
            "diverged": self.diverged,
            "seconds": self.seconds,
            "history": [e.to_dict() for e in self.history],
        }
