"""What ``l2bn analyze`` was asked and what it found: frozen dataclasses and their JSON form.

Nothing here computes a fit or touches a storage; the module imports neither optuna nor SciPy
(:mod:`l2bn.analysis.fits` builds these objects, :mod:`l2bn.analysis.export` writes them).

JSON shape (:meth:`AnalysisReport.to_dict`; NaN and infinities are written as null)::

    {"l2bn_version": "0.1.0",
     "storage": "sqlite:///l2bn.db",              # "csv:<path>" with --from-csv
     "settings": {"storage", "studies", "equilibrium", "interval", "bootstrap", "seed",
                  "confidence", "margin", "norm_margin", "metric", "from_csv",
                  "collapse_degree", "k_bounds"},
     "warnings": ["skipped x/sgd: a single weight_decay value ...", ...],  # not per group
     "groups": [{
        "optimizer": "adam", "norm": "bn", "dataset": "cifar10",
        "identity": {...}, "distinct": {"affine": true},   # see below
        "studies": ["sweep1/adam"],
        "n_trials": 150, "n_cells": 75, "n_lambda": 3, "max_seeds": 2, "n_diverged": 4,
        "first_layer": "conv1",                  # null without histories
        "metric": "val_error",                   # v2: the analyzed objective (--metric)
        "noise_sd": 0.015,                       # v2: sd of one trial's metric
        "noise_source": "seeds",                 # v2: or "joint-fit residuals" (1 seed)
        "independent_rows": false,               # v2: no seed value shared between λ rows
        "k": {"estimate": ESTIMATE, "intercept": -5.1, "r_squared": 0.99, "n_lambda": 3,
              "theory": 0.5, "verdict": "equivalent"},          # = k_estimates["joint"]
        "k_estimates": {"joint": KEST, "per_lambda": KEST, "collapse_band": KEST},   # v2
        "collapse": {"estimate": ESTIMATE, "theory": 0.5, "verdict": "inconclusive",
                     "degree": 4, "n_cells": 75, "rss": 0.01},      # null if < 2 λ values
        "optima": [{"weight_decay": 0.001, "lr_opt": 0.012, "lr_grid": 0.01,
                    "val_error": 0.21, "n_lr": 25, "edge": false, "used": true,
                    "note": null, "lr_ci_low": 0.010, "lr_ci_high": 0.014,   # v2
                    "n_band": 4}, ...],                                        # v2
        "norms": [{"layer": "conv1", "p": ESTIMATE, "q": ESTIMATE, "s": 0.5, "k": 1.0,
                   "a": ESTIMATE, "b": ESTIMATE, "intercept": 0.3, "r_squared": 0.97,
                   "n_cells": 40, "n_excluded": 35, "theory": 0.333,
                   "verdict": "equivalent", "memory": "equivalent"}, ...],  # one per layer
        "columns": [{"quantity": "error" | "norm:conv1", "log_x": -6.9, "slope": ESTIMATE,
                     "band": 0.005, "n_lambda": 4, "verdict": "constant"}, ...],   # v2
        "k_by_epoch": [{"epoch": 1, "k": ESTIMATE}, ...],   # v2; [] without histories
        "cells": [{"lr": 0.01, "weight_decay": 0.001, "n_seeds": 2, "val_error": 0.2,
                   "val_error_std": 0.01, "value": 0.2, "value_std": 0.01,  # value: --metric
                   "test_error": 0.21, "n_diverged": 0,
                   "eta_lambda_T": 1.2, "equilibrium_index": 12.0,    # c·η·λ·T
                   "phase1_norms": {"conv1": 3.2, ...},
                   "relaxation": {"conv1": 7.5, ...}}, ...],  # measured r·T, phase 1
        "warnings": ["λ=0.1: η* on the lower edge of the η grid (extend the grid)", ...]}]}

    ESTIMATE = {"value", "stderr", "ci_low", "ci_high", "n", "method", "confidence"}
    KEST = {"estimate": ESTIMATE, "theory": 0.5, "verdict": "inconclusive"}
    # method of k: "<estimator>/<interval>": interval "seed-jackknife-t" (delete-one-seed
    # jackknife, t on S − 1 dof), "(λ, seed)-jackknife-t" (independent rows: Satterthwaite's
    # dof over λ strata), "seed-cluster-bootstrap" / "(λ, seed)-cluster-bootstrap"
    # (--interval bootstrap), "delta-t" (1 seed: the joint fit's residuals); the primary
    # "k" has "joint/" in front. Others: "profile" (whole-grid collapse), "ols-t" (norms,
    # column slopes). n: data points behind the estimate (λ values for k).

v2 (analyze v2, additions marked above; nothing of the 0.1 shape was removed, but
``settings.tolerance`` became ``margin``/``norm_margin`` and the verdict words changed):

* ``k`` is the primary estimate, the **joint** fit (:mod:`l2bn.analysis.estimators`): one
  parabola in log η + k·log λ with a free offset per λ over the cells near each λ's minimum.
  ``k_estimates`` holds it with the two cross-checks, **per_lambda** (η* per λ by a local
  quadratic, then regression) and **collapse_band** (the collapse on the same cells); a
  warning flags them when they differ by more than their combined CI half-width (and 0.025).
  ``collapse`` is the whole-grid collapse of before.
* ``optima[].lr_opt`` is the per-λ local quadratic's vertex, with its CI (cell noise only).
* ``norms[]``: the norm law in invariant coordinates, log(‖w‖·λ^s) = c + p·log(η·λ^k) +
  q·log λ (s: :attr:`l2bn.theory.Theory.norm_scale_power`, k: the theory's); ``verdict`` is p
  against the theory, ``memory`` q against 0 (both with ``norm_margin``); the old a, b beside.
* ``columns``: along η·λ^k = const (theory's k), the slope against log λ of the metric and of
  log(‖w‖·λ^s) of the first layer (equilibrium cells), each at one column position.
* ``k_by_epoch``: the joint k from each epoch's validation metric (per-epoch histories).

``verdict`` of k and the exponents, against theory ± margin δ: "equivalent" (the CI lies
inside), "different" (the CI lies entirely outside), "inconclusive" (otherwise, including a
value without a finite CI), "undetermined" (no estimate at all, or no theory for this
optimizer). Columns: "constant" (CI inside ±band), "varies" (entirely outside), else
"inconclusive"/"undetermined".

``identity`` is the group's whole training identity: every TrainConfig field except η
(``lr``), λ (``weight_decay``), ``seed``, ``data_dir`` and ``device``, read from the studies'
``config`` user attr (fields that an older l2bn did not write take their TrainConfig default);
a study without a ``config`` attr (not written by ``l2bn sweep``) has null for every field but
its ``optimizer``, ``norm``, ``dataset``, ``epochs`` and ``width`` attrs. Studies pool into
one group exactly when their identities are equal. ``distinct`` is the part of the identity,
other than optimizer, norm and dataset (the keys above it), in which groups of the same
optimizer differ: what tells this group from the optimizer's other groups, also shown in the
group's label and plot file names. Both keys are additions to the 0.1 shape.

Theory: :data:`l2bn.theory.THEORY`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import l2bn
from l2bn.errors import ConfigError
from l2bn.files import finite_or_none

if TYPE_CHECKING:
    from l2bn.analysis.loading import TrialRecord

# l2bn.sweep.storage.DEFAULT_STORAGE, spelled out: importing that module imports optuna, and
# nothing here needs it (tests/analysis/test_results.py checks that the two agree).
DEFAULT_STORAGE = "sqlite:///l2bn.db"

# Verdicts against theory ± margin (see the module docstring).
EQUIVALENT = "equivalent"
DIFFERENT = "different"
INCONCLUSIVE = "inconclusive"
UNDETERMINED = "undetermined"
VERDICTS = (EQUIVALENT, DIFFERENT, INCONCLUSIVE, UNDETERMINED)
# Column test outcomes (see ColumnCheck).
CONSTANT = "constant"
VARIES = "varies"

METRICS = ("val_error", "val_loss")
INTERVALS = ("jackknife", "bootstrap")

# Identity fields shown in the group's label as its own keys, not in ``distinct``.
LABEL_FIELDS = ("optimizer", "norm", "dataset")


# --- settings -----------------------------------------------------------------------------


@dataclass(frozen=True)
class AnalyzeConfig:
    """What ``l2bn analyze`` was asked to do."""

    storage: str = DEFAULT_STORAGE
    studies: tuple[str, ...] = ()  # empty: every study with user attr "optimizer"
    equilibrium: float = 5.0  # a cell is in equilibrium when c·η·λ·T ≥ this (c: relaxation_rate)
    # Intervals of k: "jackknife" (delete-one-seed, Student t; the calibrated default) or
    # "bootstrap" (cluster bootstrap over seeds, ``bootstrap`` resamples; under-covers with
    # few seeds, kept for comparison).
    interval: str = "jackknife"
    bootstrap: int = 1000
    seed: int = 0  # bootstrap RNG seed: same data, same CI
    confidence: float = 0.95
    # Verdict margin δ for k: "equivalent" when the CI lies inside theory ± δ. 0.1 in k moves
    # η* by a factor 10^0.2 ≈ 1.6 over two decades of λ, less than one step of the usual
    # half-decade η grid, and keeps the two theories (k = ½ and 1) far apart.
    margin: float = 0.1
    # The same for the norm exponent p (theories ¼, ⅓, ½ lie 0.08 apart: half of δ).
    norm_margin: float = 0.05
    metric: str = "val_error"  # the objective whose optimum is located: val_error | val_loss
    from_csv: Path | None = None  # read a ``--csv`` export instead of the storage
    collapse_degree: int = 4  # degree of the master curve in log η + k log λ
    k_bounds: tuple[float, float] = (-1.0, 2.5)  # search range of the collapse k
    json_path: Path | None = None
    csv_path: Path | None = None
    plots_dir: Path | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "studies", tuple(self.studies))
        object.__setattr__(self, "k_bounds", tuple(float(x) for x in self.k_bounds))
        for name in ("json_path", "csv_path", "plots_dir", "from_csv"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, Path):
                object.__setattr__(self, name, Path(value))
        if not (math.isfinite(self.equilibrium) and self.equilibrium >= 0):
            raise ConfigError(f"equilibrium must be a number ≥ 0, got {self.equilibrium!r}")
        if self.bootstrap < 0:
            raise ConfigError(f"bootstrap must be ≥ 0, got {self.bootstrap}")
        for name in ("margin", "norm_margin"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ConfigError(f"{name.replace('_', '-')} must be a number ≥ 0, got {value!r}")
        if self.metric not in METRICS:
            raise ConfigError(f"metric must be one of {', '.join(METRICS)}, got {self.metric!r}")
        if self.interval not in INTERVALS:
            raise ConfigError(
                f"interval must be one of {', '.join(INTERVALS)}, got {self.interval!r}"
            )
        if not (0.5 <= self.confidence < 1.0):
            raise ConfigError(f"confidence must be in [0.5, 1), got {self.confidence}")
        if not (1 <= self.collapse_degree <= 10):
            raise ConfigError(f"collapse-degree must be in 1..10, got {self.collapse_degree}")
        lo, hi = self.k_bounds
        if not lo < hi:
            raise ConfigError(f"k-bounds must be increasing, got {self.k_bounds}")

    def to_dict(self) -> dict[str, Any]:
        # Here, not at the top: l2bn.sweep.storage imports optuna, which the fits must not.
        from l2bn.sweep.storage import redact

        return {
            "storage": redact(self.storage),
            "studies": list(self.studies),
            "equilibrium": self.equilibrium,
            "interval": self.interval,
            "bootstrap": self.bootstrap,
            "seed": self.seed,
            "confidence": self.confidence,
            "margin": self.margin,
            "norm_margin": self.norm_margin,
            "metric": self.metric,
            "from_csv": None if self.from_csv is None else str(self.from_csv),
            "collapse_degree": self.collapse_degree,
            "k_bounds": list(self.k_bounds),
        }


# --- fitted numbers -----------------------------------------------------------------------


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

    def within(self, low: float, high: float) -> bool:
        """Whether the whole CI lies inside [low, high]."""
        return self.determined and low <= self.ci_low and self.ci_high <= high

    def outside(self, low: float, high: float) -> bool:
        """Whether the whole CI lies outside [low, high] (entirely below or above)."""
        return self.determined and (self.ci_high < low or self.ci_low > high)

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
    # The analyzed metric (``--metric``): mean and sample std over seeds; equal to val_error
    # and val_error_std for the default metric.
    value: float = math.nan
    value_std: float = math.nan

    def to_dict(self) -> dict[str, Any]:
        return {
            "lr": self.lr,
            "weight_decay": self.weight_decay,
            "n_seeds": self.n_seeds,
            "val_error": finite_or_none(self.val_error),
            "val_error_std": finite_or_none(self.val_error_std),
            "value": finite_or_none(self.value),
            "value_std": finite_or_none(self.value_std),
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
    lr_opt: float  # the per-λ local quadratic's vertex (= lr_grid where it has none)
    lr_grid: float  # grid η with the lowest seed-averaged metric
    val_error: float  # seed-averaged metric at lr_grid (the analyzed --metric)
    n_lr: int  # η values on this λ's grid
    edge: bool  # minimum on the first or last η of the grid
    used: bool  # enters the joint fit of k
    note: str | None  # why not used
    # CI of η* from the local quadratic (delta method, cell noise only); NaN without one.
    lr_ci_low: float = math.nan
    lr_ci_high: float = math.nan
    n_band: int = 0  # cells of this λ in the band of the joint fit

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
            "lr_ci_low": finite_or_none(self.lr_ci_low),
            "lr_ci_high": finite_or_none(self.lr_ci_high),
            "n_band": self.n_band,
        }


@dataclass(frozen=True)
class ScalingFit:
    """log η* = intercept − k log λ over the used λ values (the primary, joint estimate)."""

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
class KEstimate:
    """One estimator's k (``k_estimates``): joint, per_lambda or collapse_band."""

    k: Estimate
    theory: float | None
    verdict: str

    def to_dict(self) -> dict[str, Any]:
        return {"estimate": self.k.to_dict(), "theory": self.theory, "verdict": self.verdict}


@dataclass(frozen=True)
class EpochK:
    """The primary k from the validation metric after one epoch."""

    epoch: int
    k: Estimate

    def to_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "k": self.k.to_dict()}


@dataclass(frozen=True)
class ColumnCheck:
    """Along one column η·λ^k = const (k from theory): the slope against log λ of the error
    (``quantity`` "error") or of log(‖w‖·λ^s) (``"norm:<layer>"``); theory: 0."""

    quantity: str
    log_x: float  # log(η·λ^k) of the column
    slope: Estimate
    band: float  # |slope| below this counts as constant
    n_lambda: int
    verdict: str  # constant | varies | inconclusive | undetermined

    def to_dict(self) -> dict[str, Any]:
        return {
            "quantity": self.quantity,
            "log_x": self.log_x,
            "slope": self.slope.to_dict(),
            "band": finite_or_none(self.band),
            "n_lambda": self.n_lambda,
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
    """One layer's norm law over equilibrium cells, in the optimizer's invariant coordinates:
    log(‖w‖·λ^s) = intercept + p·log(η·λ^k) + q·log λ (theory: p, and q = 0); beside it the
    old parametrization log ‖w‖ = c + a log η − b log λ (a = p, b = s − p·k − q)."""

    layer: str
    a: Estimate
    b: Estimate
    intercept: float
    r_squared: float
    n_cells: int
    n_excluded: int  # cells with a phase-1 norm but c·η·λ·T below the threshold
    theory: float | None
    verdict: str  # p against theory ± norm_margin
    p: Estimate = field(default_factory=Estimate.missing)
    q: Estimate = field(default_factory=Estimate.missing)
    s: float = math.nan  # the scale power (Theory.norm_scale_power)
    k: float = math.nan  # the column exponent (Theory.k)
    memory: str = UNDETERMINED  # q against 0 ± norm_margin: "equivalent" = no memory of w₀

    def to_dict(self) -> dict[str, Any]:
        return {
            "layer": self.layer,
            "a": self.a.to_dict(),
            "b": self.b.to_dict(),
            "p": self.p.to_dict(),
            "q": self.q.to_dict(),
            "s": finite_or_none(self.s),
            "k": finite_or_none(self.k),
            "intercept": finite_or_none(self.intercept),
            "r_squared": finite_or_none(self.r_squared),
            "n_cells": self.n_cells,
            "n_excluded": self.n_excluded,
            "theory": self.theory,
            "verdict": self.verdict,
            "memory": self.memory,
        }


# --- reports ------------------------------------------------------------------------------


def show_value(value: Any) -> str:
    """An identity value as text: ``false``, ``0.5,0.8``, ``?`` for unknown (None)."""
    if value is None:
        return "?"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list | tuple):
        return ",".join(show_value(v) for v in value) or "none"
    return str(value)


def show_fields(values: Mapping[str, Any]) -> str:
    """``affine=false, epochs=20``: identity fields as text."""
    return ", ".join(f"{k}={show_value(v)}" for k, v in values.items())


def _json_value(value: Any) -> Any:
    return [_json_value(v) for v in value] if isinstance(value, tuple | list) else value


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
    # The training identity shared by the group's studies, and the part of it that tells the
    # group from the optimizer's other groups (see the module docstring).
    identity: Mapping[str, Any] = field(default_factory=dict)
    distinct: Mapping[str, Any] = field(default_factory=dict)
    # analyze v2 (see the module docstring)
    k_estimates: Mapping[str, KEstimate] = field(default_factory=dict)
    columns: tuple[ColumnCheck, ...] = ()
    k_by_epoch: tuple[EpochK, ...] = ()
    noise_sd: float = math.nan  # sd of one trial's metric
    noise_source: str = "none"  # "seeds", "second differences"
    independent_rows: bool = False  # no seed value shared between λ rows
    metric: str = "val_error"

    @property
    def label(self) -> str:
        base = " / ".join(x for x in (self.optimizer, self.norm, self.dataset) if x)
        return f"{base} [{show_fields(self.distinct)}]" if self.distinct else base

    @property
    def slug(self) -> str:
        """File-name stem of this group's plots: ``<optimizer>-<norm>-<dataset>``, then
        ``-<field>_<value>`` for each field of :attr:`distinct`."""
        parts = [self.optimizer, self.norm or "any", self.dataset or "any"]
        parts += [f"{k}_{show_value(v)}" for k, v in self.distinct.items()]
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
            "identity": {k: _json_value(v) for k, v in self.identity.items()},
            "distinct": {k: _json_value(v) for k, v in self.distinct.items()},
            "studies": list(self.studies),
            "n_trials": self.n_trials,
            "n_cells": len(self.cells),
            "n_lambda": self.n_lambda,
            "max_seeds": self.max_seeds,
            "n_diverged": self.n_diverged,
            "first_layer": self.first_layer,
            "metric": self.metric,
            "noise_sd": finite_or_none(self.noise_sd),
            "noise_source": self.noise_source,
            "independent_rows": self.independent_rows,
            "k": self.scaling.to_dict(),
            "k_estimates": {name: e.to_dict() for name, e in self.k_estimates.items()},
            "collapse": None if self.collapse is None else self.collapse.to_dict(),
            "optima": [o.to_dict() for o in self.optima],
            "norms": [n.to_dict() for n in self.norms],
            "columns": [c.to_dict() for c in self.columns],
            "k_by_epoch": [e.to_dict() for e in self.k_by_epoch],
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


__all__ = [
    "CONSTANT",
    "DEFAULT_STORAGE",
    "DIFFERENT",
    "EQUIVALENT",
    "INCONCLUSIVE",
    "INTERVALS",
    "LABEL_FIELDS",
    "METRICS",
    "UNDETERMINED",
    "VARIES",
    "VERDICTS",
    "AnalysisReport",
    "AnalyzeConfig",
    "Cell",
    "CollapseFit",
    "ColumnCheck",
    "EpochK",
    "Estimate",
    "GroupReport",
    "KEstimate",
    "NormFit",
    "Optimum",
    "ScalingFit",
    "show_fields",
    "show_value",
]
