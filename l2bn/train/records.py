"""What a training run produces: per-epoch, per-layer records and the final result.

The JSON shape (``TrainResult.to_dict``) is the one ``l2bn train --json`` writes and the one
``l2bn sweep`` stores in each Optuna trial's user attr ``history`` (README, "Study layout")::

    {"epoch": 1,                # 1-based
     "lr": 0.1,                 # η during this epoch
     "train_loss": 1.93,     # null when not finite (diverged)
     "train_error": 0.71, "val_error": 0.65,
     "seconds": 3.2,
     "layers": {"conv1": {"norm": 4.1, "unit_norm": 0.73, "eff_lr": 0.19}, ...}}

``norm`` is the Frobenius norm of the layer's weight (for weight normalization: of the
direction parameter v), ``unit_norm`` the mean norm of one output unit's weights, and
``eff_lr`` the effective learning rate computed from ``unit_norm`` (η/‖w‖² for the SGD
family, η/‖w‖ for RMSProp/Adam/AdamW, η for normalized SGD).

Torch-free on purpose: the sweep's parent process reads records without importing torch. The
norms themselves are computed on the device for all K models at once
(l2bn.train.models.layer_norms) and arrive here as host numbers.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from l2bn.files import finite_or_none
from l2bn.train.config import TrainConfig


@dataclass(frozen=True)
class LayerRecord:
    norm: float  # ‖w‖ (Frobenius)
    unit_norm: float  # mean over output units of ‖w_unit‖
    eff_lr: float  # η_eff from unit_norm (see module docstring)

    def to_dict(self) -> dict[str, float | None]:
        return {
            "norm": finite_or_none(self.norm),
            "unit_norm": finite_or_none(self.unit_norm),
            "eff_lr": finite_or_none(self.eff_lr),
        }


def layer_record(norm: float, unit_norm: float, lr: float, eff_lr_power: int) -> LayerRecord:
    """One layer's record from its norms: the single place where η_eff is defined."""
    scale = unit_norm**eff_lr_power
    return LayerRecord(
        norm=norm, unit_norm=unit_norm, eff_lr=lr / scale if scale > 0 else float("inf")
    )


def layer_records(
    layers: Iterable[str], norms: Sequence[float], k: int, m: int, lr: float, eff_lr_power: int
) -> dict[str, LayerRecord]:
    """Model m's records, from the norms of K models flattened as layers × K × (‖w‖, mean
    unit norm) (what one host transfer of l2bn.train.models.layer_norms gives)."""
    out: dict[str, LayerRecord] = {}
    for i, name in enumerate(layers):
        j = 2 * (i * k + m)
        out[name] = layer_record(norms[j], norms[j + 1], lr, eff_lr_power)
    return out


@dataclass(frozen=True)
class EpochRecord:
    epoch: int  # 1-based
    lr: float
    train_loss: float
    train_error: float
    val_error: float
    seconds: float
    layers: dict[str, LayerRecord] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "lr": self.lr,
            "train_loss": finite_or_none(self.train_loss),
            "train_error": self.train_error,
            "val_error": self.val_error,
            "seconds": self.seconds,
            "layers": {name: rec.to_dict() for name, rec in self.layers.items()},
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EpochRecord:
        return cls(
            epoch=int(d["epoch"]),
            lr=float(d["lr"]),
            train_loss=float("nan") if d["train_loss"] is None else float(d["train_loss"]),
            train_error=float(d["train_error"]),
            val_error=float(d["val_error"]),
            seconds=float(d.get("seconds", 0.0)),
            layers={
                k: LayerRecord(**{f: float("nan") if x is None else float(x) for f, x in v.items()})
                for k, v in d.get("layers", {}).items()
            },
        )


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

    def to_dict(self) -> dict[str, Any]:
        return {
            "l2bn_version": self.version,
            "config": self.config.to_dict(),
            "device": self.device,
            "precision": self.precision,
            "steps_per_epoch": self.steps_per_epoch,
            "val_error": self.val_error,
            "test_error": self.test_error,
            "train_loss": finite_or_none(self.train_loss),
            "diverged": self.diverged,
            "seconds": self.seconds,
            "history": [e.to_dict() for e in self.history],
        }
