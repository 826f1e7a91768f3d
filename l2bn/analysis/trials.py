"""What analyze reads of one trial beyond the record's fixed fields: the chosen metric.

``val_loss`` and the per-epoch ``metrics`` (history's ``val_error`` / ``val_loss`` per epoch)
are read with getattr: records from :mod:`l2bn.analysis.loading` carry them once loading
reads them, :mod:`l2bn.analysis.csvload` records do; a record without them has none.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from l2bn.analysis.loading import TrialRecord


def trial_value(t: TrialRecord, metric: str) -> float:
    """The trial's ``metric``: its value (val_error) or its ``val_loss`` (NaN if absent).

    ``val_loss`` and the per-epoch ``metrics`` are read with getattr: loading adds them
    (TrialRecord fields ``val_loss`` and ``metrics``); records without them have none.
    """
    if metric == "val_error":
        return t.val_error
    value = getattr(t, "val_loss", math.nan)
    if isinstance(value, int | float) and math.isfinite(value):
        return float(value)
    history = trial_history(t, metric)
    return history[-1] if history and math.isfinite(history[-1]) else math.nan


def trial_history(t: TrialRecord, metric: str) -> tuple[float, ...]:
    """The per-epoch validation ``metric`` of a trial (empty when not recorded)."""
    metrics = getattr(t, "metrics", None)
    if not isinstance(metrics, Mapping):
        return ()
    values = metrics.get(metric, ())
    return tuple(float(v) for v in values)


__all__ = ["trial_history", "trial_value"]
