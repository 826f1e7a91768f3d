"""``l2bn analyze``: measure how η* and ‖w‖ scale with λ in swept Optuna studies.

Pipeline (every step is a pure function; nothing here prints):

1. :func:`load_studies` opens the storage once and reads every chosen study in bulk
   (``study.get_trials(deepcopy=False, states=(COMPLETE,))``). Studies are the l2bn ones
   (user attr ``optimizer``) unless named explicitly.
2. :func:`group_studies` pools studies by (optimizer, norm, dataset).
3. :func:`analyze_group` averages seeds per (η, λ) cell and fits

   * η* per λ (grid minimum of the seed-averaged validation error, refined by a parabola in
     log η through the minimum and its neighbours; minima on the grid edge are flagged and
     left out, and so is a λ whose error is flat over its η grid: range below
     ``FLAT_FRACTION`` of the group's range, e.g. every η diverged),
   * k in log η* = a − k log λ (least squares; 95 % CI by a seeded bootstrap over seeds when
     the median cell has ≥ 2 seeds, else the regression's t-interval; with seeds, the wider
     of the two: resampling seeds sees seed noise only, while the regression's residuals also
     see the grid's resolution and any curvature of log η* against log λ),
   * a second, independent k: the one that best collapses error-vs-η curves of every λ onto
     a single polynomial in log η + k log λ (grid scan, then bounded Brent; profile CI from
     the F(1, dof) test; undetermined when the CI runs into ``k_bounds``),
   * norm exponents log ‖w‖ = c + a log η − b log λ for every layer (OLS, t-intervals), with
     ‖w‖ the Frobenius norm after the last epoch whose η equals the first epoch's, averaged
     geometrically over a cell's non-diverged seeds, over cells in equilibrium:
     c·η·λ·T ≥ ``equilibrium`` with T = steps_per_epoch × epochs in that first phase and c
     from :data:`EQUILIBRIUM_RATE` (10 for momentum 0.9, 2 for AdamW, else 1).

4. :func:`analyze` runs 1-3; :func:`run_analysis` also writes ``--json``, ``--csv`` and
   ``--plots`` outputs; :func:`l2bn.render.render_report` turns a report into rich renderables.

JSON shape (:meth:`AnalysisReport.to_dict`; NaN and infinities are written as null)::

    {"l2bn_version": "0.1.0",
     "storage": "sqlite:///l2bn.db",
     "settings": {"storage", "studies", "equilibrium", "bootstrap", "seed", "confidence",
                  "tolerance", "collapse_degree", "k_bounds"},
     "warnings": ["skipped x/sgd: a single weight_decay value ...", ...],  # not per group
     "groups": [{
        "optimizer": "adam", "norm": "bn", "dataset": "cifar10",
        "studies": ["sweep1/adam"],
        "n_trials": 150, "n_cells": 75, "n_lambda": 3, "max_seeds": 2, "n_diverged": 4,
        "first_layer": "conv1",                  # null without histories
        "k": {"estimate": ESTIMATE, "intercept": -5.1, "r_squared": 0.99, "n_lambda": 3,
              "theory": 0.5, "verdict": "consistent"},
        "collapse": {"estimate": ESTIMATE, "theory": 0.5, "verdict": "consistent",
                     "degree": 4, "n_cells": 75, "rss": 0.01},      # null if < 2 λ values
        "optima": [{"weight_decay": 0.001, "lr_opt": 0.012, "lr_grid": 0.01,
                    "val_error": 0.21, "n_lr": 25, "edge": false, "used": true,
                    "note": null}, ...],
        "norms": [{"layer": "conv1", "a": ESTIMATE, "b": ESTIMATE, "intercept": 0.3,
                   "r_squared": 0.97, "n_cells": 40, "n_excluded": 35,
                   "theory": 0.333, "verdict": "consistent"}, ...],   # one per layer
        "cells": [{"lr": 0.01, "weight_decay": 0.001, "n_seeds": 2, "val_error": 0.2,
                   "val_error_std": 0.01, "test_error": 0.21, "n_diverged": 0,
                   "eta_lambda_T": 1.2, "equilibrium_index": 12.0,    # c·η·λ·T
                   "phase1_norms": {"conv1": 3.2, ...},
                   "relaxation": {"conv1": 7.5, ...}}, ...],  # measured r·T, phase 1
        "warnings": ["λ=0.1: η* on the lower edge of the η grid (extend the grid)", ...]}]}

    ESTIMATE = {"value", "stderr", "ci_low", "ci_high", "n", "method", "confidence"}
    # method: "bootstrap", "ols-t", "bootstrap|ols-t" (the wider of the two), "profile"
    # n: data points behind the estimate

``verdict`` is "consistent" (the CI comes within ``tolerance``, default 0.05, of the theory;
for norms: both a's and b's CIs do),
"inconsistent", or "undetermined" (fewer than 2 usable λ values, fewer than 4 equilibrium
cells, an unbounded CI, or no theory for this optimizer). Theory: :data:`K_THEORY`,
:data:`NORM_THEORY`.

CSV (:func:`write_csv`): one row per COMPLETE trial, wide format: the columns
:data:`CSV_FIXED_COLUMNS`, then ``norm_<layer>_e<epoch>`` (Frobenius ‖w‖ after that 1-based
epoch) for every layer and epoch seen; empty where a trial has no such value.
"""

from __future__ import annotations

import csv
import json
import math
import statistics
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import optuna
from scipy import optimize, stats

import l2bn
from l2bn import files
from l2bn.errors import AnalysisError, ConfigError, StorageError
from l2bn.files import finite_or_none
from l2bn.sweep.storage import parse_url, redact, sqlite_path
from l2bn.theory import THEORY

FloatArray = npt.NDArray[np.float64]

DEFAULT_STORAGE = "sqlite:///l2bn.db"

# The predictions, per optimizer name, from the one table (l2bn.theory).
K_THEORY: dict[str, float] = {name: t.k for name, t in THEORY.items()}
NORM_THEORY: dict[str, float] = {name: t.norm_exponent for name, t in THEORY.items()}
# Steps to equilibrium are ~1/(c·η·λ); a cell is in equilibrium when c·η·λ·T ≥ --equilibrium.
EQUILIBRIUM_RATE: dict[str, float] = {name: t.relaxation_rate for name, t in THEORY.items()}

# The measured counterpart of c·η·λ·T (see relaxation_index): how many time constants a norm
# history has relaxed through by the end of phase 1, read off the trajectory itself. It needs
# no clock, so it also speaks for Adam/RMSProp, whose clock depends on the gradient scale.
RELAXATION_CAP = 20.0  # beyond ~20 time constants the last quarter is pure noise


def _last_quarter_share(x: float, n: int) -> float:
    """Share of an exponential relaxation's movement over epochs 1..n that falls in the
    last quarter (epochs n − n//4 .. n), with x = r·n time constants over the phase."""
    q = n // 4
    if x <= 0:
        return q / (n - 1)  # a straight-line drift
    start, mid = 1 / n, (n - q) / n  # epoch 1 is the first record, not the phase's start
    # (e^(−x·mid) − e^(−x)) / (e^(−x·start) − e^(−x)), scaled by e^x
    return math.expm1(x * (1 - mid)) / math.expm1(x * (1 - start))


def relaxation_index(history: Sequence[float]) -> float:
    """Time constants r·T a phase-1 norm history (one value per epoch) has relaxed through.

    Model: ‖w‖ approaches its equilibrium exponentially, n(t) = n∞ + (n0 − n∞)·e^(−r·t).
    Then the share of the recorded movement that falls in the last quarter of the phase,
    |n(T) − n(3T/4)| / |n(T) − n(1 epoch)|, is a known decreasing function of r·T (about
    0.25 for a straight drift, 0.017 at r·T = 5), and is inverted here. The denominator is
    the history's range, so an overshoot (a norm that first grows on the gradient, then
    decays) counts its whole excursion. A norm that fluctuates or cycles around its
    equilibrium keeps moving in the last quarter and reads as less relaxed than it is, once
    the fluctuations are a few % of the excursion (at large η·λ, where the excursion is
    short): there the index says "not settled" for a settled norm. NaN for fewer than 4
    epochs or a history that never moved; capped at ``RELAXATION_CAP``.
    """
    h = np.asarray(history, dtype=np.float64)
    n = h.size
    if n < 4 or not np.isfinite(h).all():
        return math.nan
    span = float(h.max() - h.min())
    if span <= 0:
        return math.nan
    share = abs(float(h[-1] - h[-1 - n // 4])) / span
    if share >= _last_quarter_share(0.0, n):
        return 0.0
    if share <= _last_quarter_share(RELAXATION_CAP, n):
        return RELAXATION_CAP
    return float(optimize.brentq(lambda x: _last_quarter_share(x, n) - share, 0.0, RELAXATION_CAP))


# A λ whose error varies over its η grid by less than this fraction of the group's whole
# error range has no minimum to speak of (see _optimum).
FLAT_FRACTION = 0.1

CONSISTENT = "consistent"
INCONSISTENT = "inconsistent"
UNDETERMINED = "undetermined"


# --- settings -----------------------------------------------------------------------------


@dataclass(frozen=True)
class AnalyzeConfig:
    """What ``l2bn analyze`` was asked to do."""

    storage: str = DEFAULT_STORAGE
    studies: tuple[str, ...] = ()  # empty: every study with user attr "optimizer"
    equilibrium: float = 5.0  # a cell is in equilibrium when c·η·λ·T ≥ this (EQUILIBRIUM_RATE)
    bootstrap: int = 1000  # resamples for the seed bootstrap of k; 0 forces the t-interval
    seed: int = 0  # bootstrap RNG seed: same data, same CI
    confidence: float = 0.95
    # Practical equivalence: "consistent" when the CI comes within this of the theory. A very
    # precise fit (a toy, many seeds) otherwise turns a physically irrelevant 0.249 vs ¼ into
    # "inconsistent". Absolute, in the units of k and of the norm exponents.
    tolerance: float = 0.05
    collapse_degree: int = 4  # degree of the master curve in log η + k log λ
    k_bounds: tuple[float, float] = (-1.0, 2.5)  # search range of the collapse k
    json_path: Path | None = None
    csv_path: Path | None = None
    plots_dir: Path | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "studies", tuple(self.studies))
        object.__setattr__(self, "k_bounds", tuple(float(x) for x in self.k_bounds))
        for name in ("json_path", "csv_path", "plots_dir"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, Path):
                object.__setattr__(self, name, Path(value))
        if not (math.isfinite(self.equilibrium) and self.equilibrium >= 0):
            raise ConfigError(f"equilibrium must be a number ≥ 0, got {self.equilibrium!r}")
        if self.bootstrap < 0:
            raise ConfigError(f"bootstrap must be ≥ 0, got {self.bootstrap}")
        if not (math.isfinite(self.tolerance) and self.tolerance >= 0):
            raise ConfigError(f"tolerance must be a number ≥ 0, got {self.tolerance!r}")
        if not (0.5 <= self.confidence < 1.0):
            raise ConfigError(f"confidence must be in [0.5, 1), got {self.confidence}")
        if not (1 <= self.collapse_degree <= 10):
            raise ConfigError(f"collapse-degree must be in 1..10, got {self.collapse_degree}")
        lo, hi = self.k_bounds
        if not lo < hi:
            raise ConfigError(f"k-bounds must be increasing, got {self.k_bounds}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "storage": redact(self.storage),
            "studies": list(self.studies),
            "equilibrium": self.equilibrium,
            "bootstrap": self.bootstrap,
            "seed": self.seed,
            "confidence": self.confidence,
            "tolerance": self.tolerance,
            "collapse_degree": self.collapse_degree,
            "k_bounds": list(self.k_bounds),
        }


# --- loaded data --------------------------------------------------------------------------


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

    @property
    def layers(self) -> tuple[str, ...]:
        return tuple(self.norms)

    @property
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

    def relaxation(self, layer: str) -> float:
        """Measured time constants of ``layer``'s norm over phase 1 (:func:`relaxation_index`)."""
        n = self.phase1_epochs
        values = self.norms.get(layer, ())
        return relaxation_index(values[:n]) if 0 < n <= len(values) else math.nan

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


@dataclass(frozen=True)
class GroupData:
    optimizer: str
    norm: str | None
    dataset: str | None
    studies: tuple[str, ...]
    trials: tuple[TrialRecord, ...]


# --- results ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Estimate:
    """A fitted number with its uncertainty (like scipy's linregress result)."""

    value: float
    stderr: float
    ci_low: float
    ci_high: float
    n: int  # data points behind the estimate
    method: str  # "bootstrap", "ols-t" or "profile"
    confidence: float = 0.95

    @classmethod
    def missing(cls, n: int = 0, method: str = "none") -> Estimate:
        return cls(math.nan, math.nan, math.nan, math.nan, n, method)

    @property
    def determined(self) -> bool:
        return all(math.isfinite(x) for x in (self.value, self.ci_low, self.ci_high))

    def covers(self, x: float, tolerance: float = 0.0) -> bool:
        """Whether the CI meets [x − tolerance, x + tolerance]."""
        return self.determined and self.ci_low - tolerance <= x <= self.ci_high + tolerance

    def to_dict(self) -> dict[str, Any]:
        return {
            "value": finite_or_none(self.value),
            "stderr": finite_or_none(self.stderr),
            "ci_low": finite_or_none(self.ci_low),
            "ci_high": finite_or_none(self.ci_high),
            "n": self.n,
            "method": self.method,
            "confidence": self.confidence,
        }


@dataclass(frozen=True)
class Cell:
    """Seed-averaged results of one (η, λ) grid point."""

    lr: float
    weight_decay: float
    n_seeds: int
    val_error: float  # mean over seeds
    val_error_std: float  # sample std over seeds (NaN with one seed)
    test_error: float  # mean over seeds with a test error (NaN if none)
    n_diverged: int
    eta_lambda_t: float  # η·λ·T (NaN when steps unknown)
    equilibrium_index: float  # c·η·λ·T: phase-1 steps over the steps to equilibrium
    phase1_norms: Mapping[str, float]  # layer → geometric mean over seeds of phase-1 ‖w‖
    # layer → median over seeds of the measured time constants (relaxation_index); a
    # diagnostic beside equilibrium_index, not a filter of any fit.
    relaxation: Mapping[str, float]

    def to_dict(self) -> dict[str, Any]:
        return {
            "lr": self.lr,
            "weight_decay": self.weight_decay,
            "n_seeds": self.n_seeds,
            "val_error": finite_or_none(self.val_error),
            "val_error_std": finite_or_none(self.val_error_std),
            "test_error": finite_or_none(self.test_error),
            "n_diverged": self.n_diverged,
            "eta_lambda_T": finite_or_none(self.eta_lambda_t),
            "equilibrium_index": finite_or_none(self.equilibrium_index),
            "phase1_norms": {k: finite_or_none(v) for k, v in self.phase1_norms.items()},
            "relaxation": {k: finite_or_none(v) for k, v in self.relaxation.items()},
        }


@dataclass(frozen=True)
class Optimum:
    """η* for one λ."""

    weight_decay: float
    lr_opt: float  # refined by the parabola (= lr_grid when not refinable)
    lr_grid: float  # grid η with the lowest seed-averaged error
    val_error: float  # seed-averaged error at lr_grid
    n_lr: int  # η values on this λ's grid
    edge: bool  # minimum on the first or last η of the grid
    used: bool  # enters the k fit
    note: str | None  # why not used

    def to_dict(self) -> dict[str, Any]:
        return {
            "weight_decay": self.weight_decay,
            "lr_opt": self.lr_opt,
            "lr_grid": self.lr_grid,
            "val_error": finite_or_none(self.val_error),
            "n_lr": self.n_lr,
            "edge": self.edge,
            "used": self.used,
            "note": self.note,
        }


@dataclass(frozen=True)
class ScalingFit:
    """log η* = intercept − k log λ over the used λ values."""

    k: Estimate
    intercept: float
    r_squared: float
    n_lambda: int
    theory: float | None
    verdict: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "estimate": self.k.to_dict(),
            "intercept": finite_or_none(self.intercept),
            "r_squared": finite_or_none(self.r_squared),
            "n_lambda": self.n_lambda,
            "theory": self.theory,
            "verdict": self.verdict,
        }


@dataclass(frozen=True)
class CollapseFit:
    """The k whose x = log η + k log λ puts every λ's error curve on one polynomial."""

    k: Estimate
    theory: float | None
    verdict: str
    degree: int
    n_cells: int
    rss: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "estimate": self.k.to_dict(),
            "theory": self.theory,
            "verdict": self.verdict,
            "degree": self.degree,
            "n_cells": self.n_cells,
            "rss": finite_or_none(self.rss),
        }


@dataclass(frozen=True)
class NormFit:
    """log ‖w‖ = intercept + a log η − b log λ for one layer, over equilibrium cells."""

    layer: str
    a: Estimate
    b: Estimate
    intercept: float
    r_squared: float
    n_cells: int
    n_excluded: int  # cells with a phase-1 norm but c·η·λ·T below the threshold
    theory: float | None
    verdict: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "layer": self.layer,
            "a": self.a.to_dict(),
            "b": self.b.to_dict(),
            "intercept": finite_or_none(self.intercept),
            "r_squared": finite_or_none(self.r_squared),
            "n_cells": self.n_cells,
            "n_excluded": self.n_excluded,
            "theory": self.theory,
            "verdict": self.verdict,
        }


@dataclass(frozen=True)
class GroupReport:
    optimizer: str
    norm: str | None
    dataset: str | None
    studies: tuple[str, ...]
    n_trials: int
    max_seeds: int
    n_diverged: int
    cells: tuple[Cell, ...]
    optima: tuple[Optimum, ...]
    scaling: ScalingFit
    collapse: CollapseFit | None
    norms: tuple[NormFit, ...]  # first layer first
    first_layer: str | None
    warnings: tuple[str, ...]
    # The trials themselves feed --csv and the trajectory plots; not part of the JSON.
    trials: tuple[TrialRecord, ...] = field(repr=False, default=())

    @property
    def label(self) -> str:
        return " / ".join(x for x in (self.optimizer, self.norm, self.dataset) if x)

    @property
    def slug(self) -> str:
        """File-name stem of this group's plots: ``<optimizer>-<norm>-<dataset>``."""
        parts = (self.optimizer, self.norm or "any", self.dataset or "any")
        return "-".join("".join(c if c.isalnum() or c in "._-" else "_" for c in p) for p in parts)

    @property
    def n_lambda(self) -> int:
        return len(self.optima)

    @property
    def first_layer_norm(self) -> NormFit | None:
        return self.norms[0] if self.norms else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "optimizer": self.optimizer,
            "norm": self.norm,
            "dataset": self.dataset,
            "studies": list(self.studies),
            "n_trials": self.n_trials,
            "n_cells": len(self.cells),
            "n_lambda": self.n_lambda,
            "max_seeds": self.max_seeds,
            "n_diverged": self.n_diverged,
            "first_layer": self.first_layer,
            "k": self.scaling.to_dict(),
            "collapse": None if self.collapse is None else self.collapse.to_dict(),
            "optima": [o.to_dict() for o in self.optima],
            "norms": [n.to_dict() for n in self.norms],
            "cells": [c.to_dict() for c in self.cells],
            "warnings": list(self.warnings),
        }


@dataclass(frozen=True)
class AnalysisReport:
    storage: str
    settings: AnalyzeConfig
    groups: tuple[GroupReport, ...]
    warnings: tuple[str, ...]
    written: tuple[Path, ...] = ()  # files run_analysis wrote

    def to_dict(self) -> dict[str, Any]:
        return {
            "l2bn_version": l2bn.__version__,
            "storage": self.storage,
            "settings": self.settings.to_dict(),
            "warnings": list(self.warnings),
            "groups": [g.to_dict() for g in self.groups],
        }


# --- loading ------------------------------------------------------------------------------


def open_storage(url: str) -> optuna.storages.BaseStorage:
    """Open an Optuna storage for reading, refusing to create a missing SQLite file.

    Not :func:`l2bn.storage.open_storage`: its ``BEGIN IMMEDIATE`` makes every transaction a
    writer, which a read-only analysis next to running sweep workers does not need.
    """
    from sqlalchemy.exc import SQLAlchemyError

    parsed = parse_url(url)  # StorageError for a malformed URL or a missing driver
    path = sqlite_path(parsed)
    # SQLite silently creates a missing file; an analysis must never leave one behind.
    if path is not None and not path.is_file():
        raise StorageError(
            f"no such storage file {str(path)!r} ({redact(parsed)}); "
            "run `l2bn sweep` first or pass --storage"
        )
    kwargs: dict[str, Any] = {}
    if parsed.get_backend_name() == "sqlite":
        # Sweep workers may be writing: wait for their short transactions instead of failing.
        kwargs["connect_args"] = {"timeout": 60.0}
    try:
        return optuna.storages.RDBStorage(
            parsed.render_as_string(hide_password=False), engine_kwargs=kwargs
        )
    except (SQLAlchemyError, optuna.exceptions.StorageInternalError, RuntimeError) as e:
        raise StorageError(f"cannot open storage {redact(parsed)}: {_one_line(e)}") from None


def load_studies(
    storage: str | optuna.storages.BaseStorage, names: Sequence[str] = ()
) -> tuple[tuple[StudyData, ...], tuple[str, ...]]:
    """Read the chosen studies' COMPLETE trials; return them and warnings about skipped ones.

    ``names`` empty: every study with user attr ``optimizer``. A name that is not in the
    storage, or no l2bn study at all, raises :class:`AnalysisError`.
    """
    from sqlalchemy.exc import SQLAlchemyError

    url = redact(storage) if isinstance(storage, str) else type(storage).__name__
    store = open_storage(storage) if isinstance(storage, str) else storage
    try:
        summaries = {s.study_name: s for s in store.get_all_studies()}
    except SQLAlchemyError as e:
        raise StorageError(f"cannot read studies from {url}: {_one_line(e)}") from None

    warnings: list[str] = []
    if names:
        missing = [n for n in names if n not in summaries]
        if missing:
            available = ", ".join(sorted(summaries)) or "none"
            raise AnalysisError(
                f"no study named {', '.join(map(repr, missing))} in {url}; available: {available}"
            )
        chosen = list(dict.fromkeys(names))
        for n in chosen:
            if "optimizer" not in summaries[n].user_attrs:
                raise AnalysisError(
                    f"study {n!r} has no user attr 'optimizer' (not an l2bn study); "
                    "set it with study.set_user_attr('optimizer', ...)"
                )
    else:
        chosen = sorted(n for n, s in summaries.items() if "optimizer" in s.user_attrs)
        if not chosen:
            if summaries:
                raise AnalysisError(
                    f"no l2bn study in {url} (none has user attr 'optimizer'); "
                    f"studies there: {', '.join(sorted(summaries))}"
                )
            raise AnalysisError(f"no studies in {url}; run `l2bn sweep` first")

    out: list[StudyData] = []
    for name in chosen:
        attrs = summaries[name].user_attrs
        try:
            study = optuna.load_study(study_name=name, storage=store)
            frozen = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        except SQLAlchemyError as e:
            raise StorageError(f"cannot read study {name!r}: {_one_line(e)}") from None
        trials = []
        for t in frozen:
            rec = _trial_record(name, t)
            if rec is not None:
                trials.append(rec)
        n_skipped = len(frozen) - len(trials)
        if n_skipped:
            warnings.append(
                f"study {name!r}: {n_skipped} complete trial(s) without a finite value and "
                "positive params lr, weight_decay ≥ 0 were skipped"
            )
        epochs = attrs.get("epochs")
        out.append(
            StudyData(
                name=name,
                optimizer=str(attrs["optimizer"]),
                norm=None if attrs.get("norm") is None else str(attrs["norm"]),
                dataset=None if attrs.get("dataset") is None else str(attrs["dataset"]),
                epochs=int(epochs) if isinstance(epochs, int | float) else None,
                trials=tuple(trials),
                n_skipped=n_skipped,
            )
        )
    return tuple(out), tuple(warnings)


def _trial_record(study: str, t: optuna.trial.FrozenTrial) -> TrialRecord | None:
    lr = _as_float(t.params.get("lr"))
    wd = _as_float(t.params.get("weight_decay"))
    value = _as_float(t.value)
    if not (lr > 0 and wd >= 0 and math.isfinite(lr) and math.isfinite(wd)):
        return None
    if not math.isfinite(value):
        return None
    ua = t.user_attrs
    epoch_lrs, norms = _parse_history(ua.get("history"))
    steps = ua.get("steps_per_epoch")
    return TrialRecord(
        study=study,
        number=t.number,
        lr=lr,
        weight_decay=wd,
        seed=int(t.params.get("seed", 0)),
        val_error=value,
        test_error=_as_float(ua.get("test_error")),
        train_loss=_as_float(ua.get("train_loss")),
        diverged=bool(ua.get("diverged", False)),
        steps_per_epoch=int(steps) if isinstance(steps, int | float) and steps > 0 else None,
        epoch_lrs=epoch_lrs,
        norms=norms,
    )


def _parse_history(raw: Any) -> tuple[tuple[float, ...], dict[str, tuple[float, ...]]]:
    """Per-epoch η and per-layer ‖w‖ from a ``history`` user attr (tolerant of gaps)."""
    if isinstance(raw, str):  # foreign writers may store the JSON text itself
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError:
            return (), {}
    if not isinstance(raw, list) or not raw:
        return (), {}
    epochs = [e for e in raw if isinstance(e, dict)]
    epochs.sort(key=lambda e: e.get("epoch", 0))
    lrs = tuple(_as_float(e.get("lr")) for e in epochs)
    # One pass over epochs × layers (10 000 trials × 100 epochs × 5 layers is 5M values);
    # dict order keeps the first layer seen first.
    columns: dict[str, list[float]] = {}
    nan = math.nan
    for i, e in enumerate(epochs):
        layers = e.get("layers")
        if not isinstance(layers, dict):
            continue
        for name, rec in layers.items():
            col = columns.get(name)
            if col is None:
                col = columns[name] = [nan] * len(epochs)
            v = rec.get("norm") if isinstance(rec, dict) else None
            if v is not None and v.__class__ is not bool and isinstance(v, int | float):
                col[i] = float(v)
    return lrs, {name: tuple(col) for name, col in columns.items()}


def group_studies(studies: Iterable[StudyData]) -> tuple[GroupData, ...]:
    """Pool studies by (optimizer, norm, dataset), in first-seen order."""
    pools: dict[tuple[str, str | None, str | None], list[StudyData]] = defaultdict(list)
    for s in studies:
        pools[(s.optimizer, s.norm, s.dataset)].append(s)
    return tuple(
        GroupData(
            optimizer=opt,
            norm=norm,
            dataset=ds,
            studies=tuple(s.name for s in members),
            trials=tuple(t for s in members for t in s.trials),
        )
        for (opt, norm, ds), members in pools.items()
    )


# --- fitting helpers ----------------------------------------------------------------------


def parabolic_argmin(x: FloatArray, y: FloatArray) -> tuple[FloatArray, FloatArray]:
    """Vertex of the parabola through each row's three points ``x[..., 0:3]``, ``y[..., 0:3]``.

    Returns (vertex, curvature). Where the parabola is not convex (flat or concave: ties,
    noise) the middle point is returned, since no interior minimum is defined.
    """
    x0, x1, x2 = x[..., 0], x[..., 1], x[..., 2]
    y0, y1, y2 = y[..., 0], y[..., 1], y[..., 2]
    denom = (x0 - x1) * (x0 - x2) * (x1 - x2)
    with np.errstate(divide="ignore", invalid="ignore"):
        a = (x2 * (y1 - y0) + x1 * (y0 - y2) + x0 * (y2 - y1)) / denom
        b = (x2**2 * (y0 - y1) + x1**2 * (y2 - y0) + x0**2 * (y1 - y2)) / denom
        vertex = -b / (2 * a)
    ok = np.isfinite(vertex) & (a > 0)
    vertex = np.where(ok, np.clip(vertex, np.minimum(x0, x2), np.maximum(x0, x2)), x1)
    return vertex, np.where(ok, a, 0.0)


def grid_minimum(log_lr: FloatArray, err: FloatArray) -> tuple[FloatArray, FloatArray]:
    """Refined log η* per row of ``err`` (rows: resamples; columns: the η grid).

    Returns (log η*, edge) with edge = 1.0 where the minimum is on the grid's edge.
    """
    n = log_lr.size
    i = np.argmin(err, axis=-1)
    edge = (i == 0) | (i == n - 1)
    j = np.clip(i, 1, n - 2)
    idx = np.stack([j - 1, j, j + 1], axis=-1)
    xs = log_lr[idx]
    ys = np.take_along_axis(err, idx, axis=-1)
    vertex, _ = parabolic_argmin(xs, ys)
    return np.where(edge, log_lr[i], vertex), edge.astype(np.float64)


@dataclass(frozen=True)
class _OLS:
    coef: FloatArray
    stderr: FloatArray
    dof: int
    r_squared: float
    rank: int


def _ols(design: FloatArray, y: FloatArray) -> _OLS:
    """Ordinary least squares with classical standard errors (what statsmodels would give)."""
    n, p = design.shape
    solution, _, rank, _ = np.linalg.lstsq(design, y, rcond=None)
    coef = np.asarray(solution, dtype=np.float64)
    resid = y - design @ coef
    dof = n - p
    ss_tot = float(np.sum((y - y.mean()) ** 2))
    r2 = 1.0 - float(resid @ resid) / ss_tot if ss_tot > 0 else math.nan
    if rank < p or dof <= 0:
        return _OLS(coef, np.full(p, math.nan), dof, r2, int(rank))
    sigma2 = float(resid @ resid) / dof
    cov = sigma2 * np.linalg.inv(design.T @ design)
    return _OLS(coef, np.sqrt(np.clip(np.diag(cov), 0.0, None)), dof, r2, int(rank))


def _t_estimate(value: float, stderr: float, dof: int, n: int, confidence: float) -> Estimate:
    if not (math.isfinite(value) and math.isfinite(stderr)) or dof <= 0:
        return Estimate(value, math.nan, math.nan, math.nan, n, "ols-t", confidence)
    half = float(stats.t.ppf(0.5 + confidence / 2, dof)) * stderr
    return Estimate(value, stderr, value - half, value + half, n, "ols-t", confidence)


def _verdict(est: Estimate, theory: float | None, tolerance: float) -> str:
    if theory is None or not est.determined:
        return UNDETERMINED
    return CONSISTENT if est.covers(theory, tolerance) else INCONSISTENT


def _fmt(x: float) -> str:
    return f"{x:.3g}"


# --- the per-group analysis ---------------------------------------------------------------


@dataclass(frozen=True)
class _LambdaGrid:
    """One λ's η grid: log η per column and each cell's per-seed errors."""

    weight_decay: float
    lrs: FloatArray
    cell_values: tuple[FloatArray, ...]

    @property
    def log_lr(self) -> FloatArray:
        return np.log(self.lrs)

    def means(self) -> FloatArray:
        return np.array([v.mean() for v in self.cell_values])


def _key(x: float) -> float:
    # Grid values come back from the database as floats; 10 significant digits merge
    # round-off twins without merging distinct grid points.
    return float(f"{x:.10g}")


def analyze_group(data: GroupData, settings: AnalyzeConfig | None = None) -> GroupReport:
    """Fit η*(λ), k (two ways) and the norm exponents for one optimizer group."""
    cfg = settings or AnalyzeConfig()
    warnings: list[str] = []
    by_cell: dict[tuple[float, float], list[TrialRecord]] = defaultdict(list)
    for t in data.trials:
        by_cell[(_key(t.weight_decay), _key(t.lr))].append(t)
    if not by_cell:
        raise AnalysisError(f"{', '.join(data.studies)}: no complete trials to analyze")

    cells = tuple(_make_cell(ts, data.optimizer) for _, ts in sorted(by_cell.items()))
    n_diverged = sum(t.diverged for t in data.trials)
    max_seeds = max(c.n_seeds for c in cells)
    if n_diverged:
        warnings.append(
            f"{n_diverged} diverged trial(s) in {sum(c.n_diverged > 0 for c in cells)} cell(s); "
            "their error counts as reported (chance level), their norms are left out"
        )
    mixed = {s for t in data.trials if (s := t.steps_per_epoch) is not None}
    if len(mixed) > 1:
        warnings.append(f"steps_per_epoch differs between trials: {sorted(mixed)}")

    grids: list[_LambdaGrid] = []
    for wd in sorted({k[0] for k in by_cell}):
        lrs = sorted(k[1] for k in by_cell if k[0] == wd)
        grids.append(
            _LambdaGrid(
                weight_decay=wd,
                lrs=np.array(lrs),
                cell_values=tuple(np.array([t.val_error for t in by_cell[(wd, lr)]]) for lr in lrs),
            )
        )
    all_means = np.array([c.val_error for c in cells])
    group_range = float(all_means.max() - all_means.min())
    optima = tuple(_optimum(g, group_range, warnings) for g in grids)
    used = [g for g, o in zip(grids, optima, strict=True) if o.used]
    theory_k = K_THEORY.get(data.optimizer)
    if theory_k is None:
        warnings.append(f"no theory for optimizer {data.optimizer!r}: verdicts undetermined")

    scaling = _fit_k(
        used, [o for o in optima if o.used], cfg, theory_k, np.median([c.n_seeds for c in cells])
    )
    if scaling.n_lambda < 2:
        warnings.append(
            f"only {scaling.n_lambda} λ value(s) with an interior η* (need ≥ 2): k undetermined"
        )
    collapse = _fit_collapse(cells, cfg, theory_k)

    layers = _layer_order(data.trials)
    theory_ab = NORM_THEORY.get(data.optimizer)
    norms = tuple(_fit_norms(cells, layer, cfg, theory_ab) for layer in layers)
    if norms:
        first = norms[0]
        if first.n_excluded:
            warnings.append(
                f"{first.n_excluded} cell(s) out of equilibrium (c·η·λ·T < {cfg.equilibrium:g}) "
                f"left out of the norm fit; {first.n_cells} used"
            )
        if first.n_cells < 4:
            warnings.append(
                f"only {first.n_cells} equilibrium cell(s) for {first.layer}: the norm fit "
                "needs ≥ 4 (longer phase 1, larger η·λ, or a lower --equilibrium)"
            )
        warnings.append(_relaxation_summary(cells, first.layer, cfg.equilibrium))
    elif data.trials:
        warnings.append("no per-epoch histories with layer norms: norm exponents not fitted")

    return GroupReport(
        optimizer=data.optimizer,
        norm=data.norm,
        dataset=data.dataset,
        studies=data.studies,
        n_trials=len(data.trials),
        max_seeds=max_seeds,
        n_diverged=n_diverged,
        cells=cells,
        optima=optima,
        scaling=scaling,
        collapse=collapse,
        norms=norms,
        first_layer=layers[0] if layers else None,
        warnings=tuple(warnings),
        trials=data.trials,
    )


def _make_cell(trials: Sequence[TrialRecord], optimizer: str) -> Cell:
    vals = np.array([t.val_error for t in trials])
    tests = [t.test_error for t in trials if math.isfinite(t.test_error)]
    healthy = [t for t in trials if not t.diverged]
    norms: dict[str, float] = {}
    relaxation: dict[str, float] = {}
    for layer in _layer_order(healthy):
        logs = [math.log(x) for t in healthy if (x := t.phase1_norm(layer)) > 0]
        norms[layer] = math.exp(statistics.fmean(logs)) if logs else math.nan
        measured = [x for t in healthy if math.isfinite(x := t.relaxation(layer))]
        relaxation[layer] = statistics.median(measured) if measured else math.nan
    eq = [x for t in trials if math.isfinite(x := t.eta_lambda_t)]
    eta_lambda_t = statistics.fmean(eq) if eq else math.nan
    return Cell(
        # The grouping keys, not one trial's raw floats: plots and optima match on them.
        lr=_key(trials[0].lr),
        weight_decay=_key(trials[0].weight_decay),
        n_seeds=len(trials),
        val_error=float(vals.mean()),
        val_error_std=float(vals.std(ddof=1)) if len(vals) > 1 else math.nan,
        test_error=statistics.fmean(tests) if tests else math.nan,
        n_diverged=sum(t.diverged for t in trials),
        eta_lambda_t=eta_lambda_t,
        equilibrium_index=eta_lambda_t * EQUILIBRIUM_RATE.get(optimizer, 1.0),
        phase1_norms=norms,
        relaxation=relaxation,
    )


def _relaxation_summary(cells: Sequence[Cell], layer: str, threshold: float) -> str:
    """The measured check of the clock: how many cells relaxed ≥ threshold time constants."""
    measured = [c for c in cells if math.isfinite(c.relaxation.get(layer, math.nan))]
    settled = sum(c.relaxation[layer] >= threshold for c in measured)
    clocked = sum(c.equilibrium_index >= threshold for c in measured)
    return (
        f"measured relaxation of {layer} over phase 1: {settled} of {len(measured)} cell(s) "
        f"≥ {threshold:g} time constants (c·η·λ·T says {clocked}); a diagnostic, no fit uses it"
    )


def _layer_order(trials: Iterable[TrialRecord]) -> tuple[str, ...]:
    names: dict[str, None] = {}
    for t in trials:
        names.update(dict.fromkeys(t.norms))
    return tuple(names)


def _optimum(grid: _LambdaGrid, group_range: float, warnings: list[str]) -> Optimum:
    means = grid.means()
    i = int(np.argmin(means))
    n = grid.lrs.size
    wd = grid.weight_decay
    if n < 3:
        warnings.append(f"λ={_fmt(wd)}: only {n} η value(s); η* needs ≥ 3")
        return Optimum(wd, float(grid.lrs[i]), float(grid.lrs[i]), float(means[i]), n,
                       edge=False, used=False, note="fewer than 3 η values")  # fmt: skip
    log_opt, edge = grid_minimum(grid.log_lr, means[None, :])
    is_edge = bool(edge[0])
    note: str | None = None
    if is_edge:
        side = "lower" if i == 0 else "upper"
        note = f"η* on the {side} edge of the η grid (extend the grid)"
        warnings.append(f"λ={_fmt(wd)}: {note}")
    elif float(means.max() - means.min()) < FLAT_FRACTION * group_range:
        # A column at chance level everywhere (all diverged, or the optimum far off the grid)
        # still has an argmin: noise. Its η* would drag k anywhere.
        note = "no clear minimum: the error is flat over this λ's η grid (extend the grid)"
        warnings.append(f"λ={_fmt(wd)}: {note}")
    elif wd <= 0:
        note = "λ = 0 has no logarithm"
    return Optimum(
        weight_decay=wd,
        lr_opt=float(np.exp(log_opt[0])),
        lr_grid=float(grid.lrs[i]),
        val_error=float(means[i]),
        n_lr=n,
        edge=is_edge,
        used=note is None,
        note=note,
    )


def _fit_k(
    grids: Sequence[_LambdaGrid],
    optima: Sequence[Optimum],
    cfg: AnalyzeConfig,
    theory: float | None,
    median_seeds: float,
) -> ScalingFit:
    n = len(optima)
    if n < 2:
        return ScalingFit(Estimate.missing(n), math.nan, math.nan, n, theory, UNDETERMINED)
    log_wd = np.log([o.weight_decay for o in optima])
    log_opt = np.log([o.lr_opt for o in optima])
    fit = stats.linregress(log_wd, log_opt)
    k = -float(fit.slope)
    r2 = float(fit.rvalue**2) if n > 2 else 1.0
    # linregress's stderr is NaN-free only for n > 2; with 2 points the interval is unbounded.
    se = float(fit.stderr) if n > 2 else math.nan
    est = _t_estimate(k, se, n - 2, n, cfg.confidence)
    if median_seeds >= 2 and cfg.bootstrap > 0:
        boot = _bootstrap_k(grids, log_wd, k, cfg)
        # Resampling seeds cannot see the grid's resolution; the residuals can. Report the
        # wider interval, so that a coarse grid cannot pass for a precise k.
        if not est.determined or (
            boot.determined and boot.ci_high - boot.ci_low >= est.ci_high - est.ci_low
        ):
            est = boot
        else:
            est = Estimate(
                k, est.stderr, est.ci_low, est.ci_high, n, "bootstrap|ols-t", cfg.confidence
            )
    return ScalingFit(
        est, float(fit.intercept), r2, n, theory, _verdict(est, theory, cfg.tolerance)
    )


def _bootstrap_k(
    grids: Sequence[_LambdaGrid], log_wd: FloatArray, k: float, cfg: AnalyzeConfig
) -> Estimate:
    """Percentile CI of k: resample seeds within each cell, redo η* and the fit."""
    rng = np.random.default_rng(cfg.seed)
    b = cfg.bootstrap
    ys = np.empty((b, len(grids)))
    for j, g in enumerate(grids):
        means = np.empty((b, len(g.cell_values)))
        for c, vals in enumerate(g.cell_values):
            means[:, c] = vals[rng.integers(0, vals.size, size=(b, vals.size))].mean(axis=1)
        log_opt, edge = grid_minimum(g.log_lr, means)
        # A resample whose minimum lands on the edge has no η* for this λ.
        ys[:, j] = np.where(edge > 0, np.nan, log_opt)
    mask = np.isfinite(ys)
    w = mask.astype(np.float64)
    cnt = w.sum(axis=1)
    x = np.broadcast_to(log_wd, ys.shape)
    y0 = np.where(mask, ys, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        xm = (w * x).sum(axis=1) / cnt
        ym = (w * y0).sum(axis=1) / cnt
        sxy = (w * (x - xm[:, None]) * (y0 - ym[:, None])).sum(axis=1)
        sxx = (w * (x - xm[:, None]) ** 2).sum(axis=1)
        ks = -sxy / sxx
    ks = ks[(cnt >= 2) & np.isfinite(ks)]
    if ks.size < max(20, b // 2):
        # Too many resamples lost their η*: the percentile interval would be biased.
        return Estimate(k, math.nan, math.nan, math.nan, len(grids), "bootstrap", cfg.confidence)
    alpha = (1 - cfg.confidence) / 2
    lo, hi = np.quantile(ks, [alpha, 1 - alpha])
    return Estimate(
        k, float(ks.std(ddof=1)), float(lo), float(hi), len(grids), "bootstrap", cfg.confidence
    )


def collapse_rss(
    log_lr: FloatArray, log_wd: FloatArray, err: FloatArray, degree: int
) -> Callable[[float], float]:
    """RSS(k) of a degree-``degree`` polynomial fit of error against log η + k log λ."""

    def rss(k: float) -> float:
        x = log_lr + k * log_wd
        # Polynomial.fit rescales x to [-1, 1]: well conditioned at any degree we allow.
        _, info = np.polynomial.Polynomial.fit(x, err, degree, full=True)
        resid = np.asarray(info[0], dtype=np.float64)
        return float(resid[0]) if resid.size else 0.0

    return rss


def _fit_collapse(
    cells: Sequence[Cell], cfg: AnalyzeConfig, theory: float | None
) -> CollapseFit | None:
    usable = [c for c in cells if c.weight_decay > 0]
    if len({c.weight_decay for c in usable}) < 2:
        return None
    log_lr = np.log([c.lr for c in usable])
    log_wd = np.log([c.weight_decay for c in usable])
    err = np.array([c.val_error for c in usable])
    n = err.size
    degree = min(cfg.collapse_degree, len({c.lr for c in usable}) - 1)
    dof = n - (degree + 1) - 1  # polynomial coefficients + k
    if dof < 1:
        return CollapseFit(
            Estimate.missing(n, "profile"), theory, UNDETERMINED, degree, n, math.nan
        )
    rss = collapse_rss(log_lr, log_wd, err, degree)
    lo, hi = cfg.k_bounds
    # Scan first: RSS(k) can have several dips, and bounded Brent only finds a local one.
    grid = np.linspace(lo, hi, 71)
    values = np.array([rss(float(k)) for k in grid])
    i = int(np.argmin(values))
    a, b = grid[max(i - 1, 0)], grid[min(i + 1, grid.size - 1)]
    res = optimize.minimize_scalar(rss, bounds=(a, b), method="bounded", options={"xatol": 1e-5})
    k_hat = float(res.x)
    rss_min = float(res.fun)
    t = float(stats.t.ppf(0.5 + cfg.confidence / 2, dof))
    # Profile interval: k values whose extra RSS is within t² residual variances
    # (the F(1, dof) test of k against the best fit).
    threshold = rss_min + t**2 * rss_min / dof

    def excess(k: float) -> float:
        return rss(k) - threshold

    ci_low = _profile_edge(excess, k_hat, grid[grid < k_hat][::-1], lo)
    ci_high = _profile_edge(excess, k_hat, grid[grid > k_hat], hi)
    stderr = (ci_high - ci_low) / (2 * t)
    est = Estimate(k_hat, stderr, ci_low, ci_high, n, "profile", cfg.confidence)
    if ci_low <= lo or ci_high >= hi:
        # The interval ran into the search bounds: it is not a real confidence interval.
        est = Estimate(k_hat, math.nan, math.nan, math.nan, n, "profile", cfg.confidence)
    return CollapseFit(est, theory, _verdict(est, theory, cfg.tolerance), degree, n, rss_min)


def _profile_edge(
    excess: Callable[[float], float], k_hat: float, outward: FloatArray, bound: float
) -> float:
    prev = k_hat
    for k in outward:
        if excess(float(k)) > 0:
            return float(optimize.brentq(excess, min(prev, k), max(prev, k)))
        prev = float(k)
    return bound


def _fit_norms(
    cells: Sequence[Cell], layer: str, cfg: AnalyzeConfig, theory: float | None
) -> NormFit:
    have = [
        c
        for c in cells
        if c.weight_decay > 0 and math.isfinite(v := c.phase1_norms.get(layer, math.nan)) and v > 0
    ]
    used = [c for c in have if c.equilibrium_index >= cfg.equilibrium]
    n = len(used)
    excluded = len(have) - n
    if n < 4:  # 3 coefficients need at least one residual degree of freedom
        miss = Estimate.missing(n, "ols-t")
        return NormFit(layer, miss, miss, math.nan, math.nan, n, excluded, theory, UNDETERMINED)
    log_lr = np.log([c.lr for c in used])
    log_wd = np.log([c.weight_decay for c in used])
    y = np.log([c.phase1_norms[layer] for c in used])
    design = np.column_stack([np.ones(n), log_lr, -log_wd])
    fit = _ols(design, y)
    if fit.rank < 3:  # a single η or a single λ among equilibrium cells
        miss = Estimate.missing(n, "ols-t")
        return NormFit(layer, miss, miss, math.nan, fit.r_squared, n, excluded, theory,
                       UNDETERMINED)  # fmt: skip
    a = _t_estimate(float(fit.coef[1]), float(fit.stderr[1]), fit.dof, n, cfg.confidence)
    b = _t_estimate(float(fit.coef[2]), float(fit.stderr[2]), fit.dof, n, cfg.confidence)
    if theory is None or not (a.determined and b.determined):
        verdict = UNDETERMINED
    else:
        tol = cfg.tolerance
        verdict = CONSISTENT if a.covers(theory, tol) and b.covers(theory, tol) else INCONSISTENT
    return NormFit(layer, a, b, float(fit.coef[0]), fit.r_squared, n, excluded, theory, verdict)


# --- entry points -------------------------------------------------------------------------


def analyze(config: AnalyzeConfig | None = None) -> AnalysisReport:
    """Load the chosen studies and analyze every (optimizer, norm, dataset) group."""
    cfg = config or AnalyzeConfig()
    studies, warnings = load_studies(cfg.storage, cfg.studies)
    notes = list(warnings)
    reports: list[GroupReport] = []
    reasons: list[str] = []
    for data in group_studies(studies):
        where = ", ".join(data.studies)
        lambdas = sorted({t.weight_decay for t in data.trials if t.weight_decay > 0})
        if not data.trials:
            reasons.append(f"{where}: no complete trials")
        elif len(lambdas) < 2:
            shown = ", ".join(_fmt(x) for x in lambdas) or "none > 0"
            reasons.append(
                f"{where}: a single weight_decay value ({shown}); η* ∝ λ^-k needs ≥ 2 λ values"
            )
        else:
            reports.append(analyze_group(data, cfg))
    if not reports:
        raise AnalysisError("nothing to analyze: " + "; ".join(reasons))
    notes.extend(f"skipped {r}" for r in reasons)
    return AnalysisReport(redact(cfg.storage), cfg, tuple(reports), tuple(notes))


def run_analysis(config: AnalyzeConfig | None = None) -> AnalysisReport:
    """:func:`analyze`, then write the --json, --csv and --plots outputs that were asked for."""
    cfg = config or AnalyzeConfig()
    report = analyze(cfg)
    written: list[Path] = []
    if cfg.json_path is not None:
        written.append(write_json(report, cfg.json_path))
    if cfg.csv_path is not None:
        written.append(write_csv(report, cfg.csv_path))
    if cfg.plots_dir is not None:
        from l2bn.analysis.plots import write_plots

        written.extend(write_plots(report, cfg.plots_dir))
    return AnalysisReport(report.storage, cfg, report.groups, report.warnings, tuple(written))


def write_json(report: AnalysisReport, path: Path) -> Path:
    _mkparent(path)
    files.write_json(path, report.to_dict())
    return path


CSV_FIXED_COLUMNS = (
    "study",
    "trial",
    "optimizer",
    "norm",
    "dataset",
    "lr",
    "weight_decay",
    "seed",
    "val_error",
    "test_error",
    "train_loss",
    "diverged",
    "steps_per_epoch",
    "phase1_epochs",
    "eta_lambda_T",
)


def write_csv(report: AnalysisReport, path: Path) -> Path:
    """One row per trial (wide): fixed columns, then ``norm_<layer>_e<epoch>`` (1-based)."""
    layers: dict[str, int] = {}  # layer → most epochs seen, in first-seen layer order
    for g in report.groups:
        for t in g.trials:
            for name, values in t.norms.items():
                layers[name] = max(layers.get(name, 0), len(values))
    norm_cols = [(n, e) for n, count in layers.items() for e in range(count)]
    _mkparent(path)
    with files.atomic_open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow([*CSV_FIXED_COLUMNS, *(f"norm_{n}_e{e + 1}" for n, e in norm_cols)])
        for g in report.groups:
            for t in g.trials:
                fixed = (
                    t.study,
                    t.number,
                    g.optimizer,
                    g.norm or "",
                    g.dataset or "",
                    repr(t.lr),
                    repr(t.weight_decay),
                    t.seed,
                    repr(t.val_error),
                    _csv_num(t.test_error),
                    _csv_num(t.train_loss),
                    int(t.diverged),
                    "" if t.steps_per_epoch is None else t.steps_per_epoch,
                    t.phase1_epochs,
                    _csv_num(t.eta_lambda_t),
                )
                norms = [
                    _csv_num(vals[e]) if e < len(vals := t.norms.get(n, ())) else ""
                    for n, e in norm_cols
                ]
                w.writerow([*fixed, *norms])
    return path


# --- rendering ----------------------------------------------------------------------------


# --- small utilities ----------------------------------------------------------------------


def _as_float(x: Any) -> float:
    if isinstance(x, bool) or not isinstance(x, int | float):
        return math.nan
    return float(x)


def _csv_num(x: float) -> str:
    return repr(x) if math.isfinite(x) else ""


def _mkparent(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)


def _one_line(e: BaseException) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


__all__ = [
    "CONSISTENT",
    "DEFAULT_STORAGE",
    "INCONSISTENT",
    "K_THEORY",
    "NORM_THEORY",
    "UNDETERMINED",
    "AnalysisReport",
    "AnalyzeConfig",
    "Cell",
    "CollapseFit",
    "Estimate",
    "GroupData",
    "GroupReport",
    "NormFit",
    "Optimum",
    "ScalingFit",
    "StudyData",
    "TrialRecord",
    "analyze",
    "analyze_group",
    "collapse_rss",
    "group_studies",
    "load_studies",
    "open_storage",
    "parabolic_argmin",
    "run_analysis",
    "write_csv",
    "write_json",
]
