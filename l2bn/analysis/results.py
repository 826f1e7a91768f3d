"""What ``l2bn analyze`` was asked and what it found: frozen dataclasses and their JSON form.

Nothing here computes a fit or touches a storage; the module imports neither optuna nor SciPy
(:mod:`l2bn.analysis.fits` builds these objects, :mod:`l2bn.analysis.export` writes them).

JSON shape (:meth:`AnalysisReport.to_dict`; NaN and infinities are written as null)::

    {"l2bn_version": "0.1.0",
     "storage": "sqlite:///l2bn.db",
     "settings": {"storage", "studies", "equilibrium", "bootstrap", "seed", "confidence",
                  "tolerance", "collapse_degree", "k_bounds"},
     "warnings": ["skipped x/sgd: a single weight_decay value ...", ...],  # not per group
     "groups": [{
        "optimizer": "adam", "norm": "bn", "dataset": "cifar10",
        "identity": {"optimizer": "adam", "epochs": 40, "batch_size": 128, "width": 32,
                     "norm": "bn", "head": "linear", "dataset": "cifar10",
                     "val_fraction": 0.1, "augment": true, "lr_drops": [0.5, 0.8],
                     "decay_all": false, "affine": true, "precision": "auto"},
        "distinct": {"affine": true},            # {} unless the optimizer has other groups
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

``identity`` is the group's whole training identity: every TrainConfig field except η
(``lr``), λ (``weight_decay``), ``seed``, ``data_dir`` and ``device``, read from the studies'
``config`` user attr (fields that an older l2bn did not write take their TrainConfig default);
a study without a ``config`` attr (not written by ``l2bn sweep``) has null for every field but
its ``optimizer``, ``norm``, ``dataset``, ``epochs`` and ``width`` attrs. Studies pool into
one group exactly when their identities are equal. ``distinct`` is the part of the identity,
other than optimizer, norm and dataset (the keys above it), in which groups of the same
optimizer differ: what tells this group from the optimizer's other groups, also shown in the
group's label and plot file names. Both keys are additions to the 0.1 shape.

``verdict`` is "consistent" (the CI comes within ``tolerance``, default 0.05, of the theory;
for norms: both a's and b's CIs do), "inconsistent", or "undetermined" (fewer than 2 usable λ
values, fewer than 4 equilibrium cells, an unbounded CI, or no theory for this optimizer).
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

CONSISTENT = "consistent"
INCONSISTENT = "inconsistent"
UNDETERMINED = "undetermined"

# Identity fields shown in the group's label as its own keys, not in ``distinct``.
LABEL_FIELDS = ("optimizer", "norm", "dataset")


# --- settings -----------------------------------------------------------------------------


@dataclass(frozen=True)
class AnalyzeConfig:
    """What ``l2bn analyze`` was asked to do."""

    storage: str = DEFAULT_STORAGE
    studies: tuple[str, ...] = ()  # empty: every study with user attr "optimizer"
    equilibrium: float = 5.0  # a cell is in equilibrium when c·η·λ·T ≥ this (c: relaxation_rate)
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
        # Here, not at the top: l2bn.sweep.storage imports optuna, which the fits must not.
        from l2bn.sweep.storage import redact

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


__all__ = [
    "CONSISTENT",
    "DEFAULT_STORAGE",
    "INCONSISTENT",
    "LABEL_FIELDS",
    "UNDETERMINED",
    "AnalysisReport",
    "AnalyzeConfig",
    "Cell",
    "CollapseFit",
    "Estimate",
    "GroupReport",
    "NormFit",
    "Optimum",
    "ScalingFit",
    "show_fields",
    "show_value",
]
