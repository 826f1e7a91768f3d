"""The chosen metric of one trial: its final value, and its value after every epoch."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from l2bn.analysis.loading import TrialRecord


def trial_value(t: TrialRecord, metric: str) -> float:
    """The trial's ``metric``: its value (val_error) or its ``val_loss`` (NaN if absent)."""
    if metric == "val_error":
        return t.val_error
    if math.isfinite(t.val_loss):
        return t.val_loss
    history = trial_history(t, metric)
    return history[-1] if history and math.isfinite(history[-1]) else math.nan


def trial_history(t: TrialRecord, metric: str) -> tuple[float, ...]:
    """The per-epoch validation ``metric`` of a trial (empty when not recorded)."""
    return tuple(t.metrics.get(metric, ()))


__all__ = ["trial_history", "trial_value"]
