"""One trial and one study as plain records: what ``l2bn analyze`` reads of a swept study.

:class:`TrialRecord` (params, user attrs, per-epoch η, layer norms, update records and
validation metrics from ``history``) and :class:`StudyData` (a study's trials and its training
identity) are filled by the storage reader (:mod:`l2bn.analysis.reading.studies`) and the CSV
reader (:mod:`l2bn.analysis.reading.csvfile`), and read by everything downstream. The
``history`` user attr is decoded once per trial (:func:`read_history`). Nothing here imports
optuna, SciPy or torch (``l2bn.train.config`` is torch-free).
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, NamedTuple

import orjson

from l2bn.registration import Registration
from l2bn.train.config import TrainConfig  # torch-free: the defaults of fields old studies lack

# TrainConfig fields that do not make two runs different experiments: the grid's own axes
# (η, λ), the seed, and where the data sits, what ran it and how it launched a step.
NOT_IDENTITY = ("lr", "weight_decay", "seed", "data_dir", "device", "graph")
IDENTITY_FIELDS = tuple(f.name for f in fields(TrainConfig) if f.name not in NOT_IDENTITY)
# What a study without a ``config`` attr tells of its training (docs/study-layout.md).
ATTR_FIELDS = ("optimizer", "norm", "dataset", "epochs", "width")


@dataclass(frozen=True)
class TrialRecord:
    """One COMPLETE trial, with what analyze needs from its params and user attrs."""

    study: str
    number: int
    lr: float  # η
    weight_decay: float  # λ
    seed: int
    val_error: float  # the trial's value
    test_error: float  # NaN when absent
    train_loss: float  # NaN when absent or not finite
    diverged: bool
    steps_per_epoch: int | None
    epoch_lrs: tuple[float, ...]  # η during each epoch (from history)
    norms: Mapping[str, tuple[float, ...]]  # layer → Frobenius ‖w‖ after each epoch
    val_loss: float = math.nan  # final validation loss (NLL); NaN where not recorded
    # Per-epoch validation metrics from the history ("val_error", "val_loss"; NaN for gaps).
    metrics: Mapping[str, tuple[float, ...]] = field(default_factory=dict)
    # Per-layer update statistics per epoch (quantity of DYNAMICS → layer → values, NaN for
    # gaps): "angle", "angle_eq", "balance", "radial", "tangential", "grad_norm". Empty for
    # histories written before they were recorded.
    dynamics: Mapping[str, Mapping[str, tuple[float, ...]]] = field(default_factory=dict)
    # The equilibrium ratio of each scale-invariant layer over the tail of phase 1, as an
    # ``analyze --csv`` export wrote it (l2bn.analysis.reading.csvfile; NaN: unmeasured), and its
    # test ("angle" or "balance"); None when read from a storage (computed from dynamics).
    tail_ratios: Mapping[str, float] | None = None
    tail_test: str | None = None
    # The export's per-layer summaries of the update records over the same window (quantity
    # → layer → value, l2bn.analysis.estimating.equilibrium.tail_summary), as an ``analyze --csv``
    # export wrote them; None when read from a storage (computed from dynamics).
    tail_summary: Mapping[str, Mapping[str, float]] | None = None

    @property
    def layers(self) -> tuple[str, ...]:
        return tuple(self.norms)

    @functools.cached_property  # read for every layer and every fit: computed once
    def phase1_epochs(self) -> int:
        """Epochs in the first LR phase: the leading run whose η equals the first epoch's."""
        if not self.epoch_lrs:
            return 0
        first = self.epoch_lrs[0]
        n = 0
        for lr in self.epoch_lrs:
            if not math.isclose(lr, first, rel_tol=1e-9):
                break
            n += 1
        return n

    @property
    def eta_lambda_t(self) -> float:
        """η·λ·T with T = steps in phase 1; NaN when steps are unknown."""
        if self.steps_per_epoch is None or self.phase1_epochs == 0:
            return math.nan
        return self.lr * self.weight_decay * self.steps_per_epoch * self.phase1_epochs

    def phase1_norm(self, layer: str) -> float:
        """‖w‖ of ``layer`` at the end of phase 1 (NaN when unknown)."""
        n = self.phase1_epochs
        values = self.norms.get(layer, ())
        return values[n - 1] if 0 < n <= len(values) else math.nan


@dataclass(frozen=True)
class StudyData:
    name: str
    optimizer: str
    norm: str | None
    dataset: str | None
    epochs: int | None
    trials: tuple[TrialRecord, ...]
    n_skipped: int  # COMPLETE trials without usable lr / weight_decay / value
    # IDENTITY_FIELDS → value (JSON values; lists as tuples); see training_identity.
    identity: Mapping[str, Any] = field(default_factory=dict)
    has_config: bool = False  # identity read from the ``config`` attr, not guessed from attrs
    # The sweep's objective (its trials' value: "val_error" or "val_loss"), None where the
    # study did not store one (older l2bn: val_error). See study_objective.
    objective: str | None = None
    # The run's registered reading rule (user attr ``registration``; l2bn.registration),
    # None where the study registered none.
    registration: Registration | None = None
    # Where it was read: "storage <url, password redacted>" or "export <path>" (the report
    # labels each group by it: read live, or an export re-analyzed now).
    source: str = ""


METRICS = ("val_error", "val_loss")  # the per-epoch validation metrics a history may hold
# Per-layer update statistics of a history's epochs beside ``norm`` (l2bn.train.records):
# θ (RMS angular update per step), θ_eq, the mean radial and RMS tangential change, the RMS
# gradient at unit scale and growth ÷ shrink. Older histories have none of them.
DYNAMICS = ("angle", "angle_eq", "radial", "tangential", "grad_norm", "balance", "update_corr")
_OLD_LAYER_KEYS = 3  # norm, unit_norm, eff_lr: a layer record with more may hold DYNAMICS


class History(NamedTuple):
    """What :func:`read_history` reads of a ``history`` user attr, epochs in order."""

    lrs: tuple[float, ...]  # η per epoch
    norms: dict[str, tuple[float, ...]]  # layer → ‖w‖ per epoch
    # quantity of DYNAMICS → layer → value per epoch (NaN for gaps); only quantities some
    # epoch recorded.
    dynamics: dict[str, dict[str, tuple[float, ...]]]
    metrics: dict[str, tuple[float, ...]]  # "val_error", "val_loss" → value per epoch


_NO_HISTORY = History((), {}, {}, {})


def decode(text: str | bytes) -> Any:
    """A user attr's JSON as Optuna stored it (``json.dumps``): orjson where it can (1.5× faster
    on histories, the bulk of what analyze reads), the standard library where the text holds
    what orjson refuses (``NaN`` and ``Infinity``, which ``json.dumps`` writes for a diverged
    run's loss). Both decode a number to the same float (shortest round trip)."""
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return json.loads(text)


def read_history(raw: Any) -> History:
    """Everything analyze reads of a ``history`` user attr, in one pass over its epochs
    (tolerant of gaps, foreign encodings and older records without some keys)."""
    if isinstance(raw, str):  # foreign writers may store the JSON text itself
        try:
            raw = decode(raw)
        except json.JSONDecodeError:
            return _NO_HISTORY
    if not isinstance(raw, list) or not raw:
        return _NO_HISTORY
    epochs = [e for e in raw if isinstance(e, dict)]
    epochs.sort(key=lambda e: e.get("epoch", 0))
    n = len(epochs)
    lrs = tuple(as_float(e.get("lr")) for e in epochs)
    metrics = {m: tuple(as_float(e.get(m)) for e in epochs) for m in METRICS}
    # One pass over epochs × layers (10 000 trials × 100 epochs × 5 layers is 5M values);
    # dict order keeps the first layer seen first. Older records (three keys) skip the
    # dynamics loop at the cost of one len().
    columns: dict[str, list[float]] = {}
    dyn: dict[str, list[list[float]]] = {}  # layer → one column per quantity of DYNAMICS
    nan = math.nan
    quantities = tuple(enumerate(DYNAMICS))
    for i, e in enumerate(epochs):
        layers = e.get("layers")
        if not isinstance(layers, dict):
            continue
        for name, rec in layers.items():
            col = columns.get(name)
            if col is None:
                col = columns[name] = [nan] * n
            if not isinstance(rec, dict):
                continue
            v = rec.get("norm")
            if v is not None and v.__class__ is not bool and isinstance(v, int | float):
                col[i] = float(v)
            if len(rec) <= _OLD_LAYER_KEYS:
                continue
            cols = dyn.get(name)
            if cols is None:
                cols = dyn[name] = [[nan] * n for _ in DYNAMICS]
            for j, q in quantities:
                v = rec.get(q)
                if type(v) is float:  # what JSON decodes a number with a point into
                    cols[j][i] = v
                elif type(v) is int:  # not a bool: its type is bool
                    cols[j][i] = float(v)
    dynamics: dict[str, dict[str, tuple[float, ...]]] = {}
    for name, cols in dyn.items():
        for j, q in quantities:
            c = cols[j]
            if any(x == x for x in c):  # some epoch recorded it (NaN ≠ NaN)
                dynamics.setdefault(q, {})[name] = tuple(c)
    return History(
        lrs,
        {name: tuple(col) for name, col in columns.items()},
        {q: dynamics[q] for q in DYNAMICS if q in dynamics},
        {m: v for m, v in metrics.items() if any(math.isfinite(x) for x in v)},
    )


def parse_history(raw: Any) -> tuple[tuple[float, ...], dict[str, tuple[float, ...]]]:
    """Per-epoch η and per-layer ‖w‖ from a ``history`` user attr (tolerant of gaps)."""
    h = read_history(raw)
    return h.lrs, h.norms


def as_float(x: Any) -> float:
    if isinstance(x, bool) or not isinstance(x, int | float):
        return math.nan
    return float(x)


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


__all__ = [
    "ATTR_FIELDS",
    "DYNAMICS",
    "IDENTITY_FIELDS",
    "METRICS",
    "NOT_IDENTITY",
    "History",
    "StudyData",
    "TrialRecord",
    "as_float",
    "parse_history",
    "read_history",
    "trial_history",
    "trial_value",
]
