"""What ``l2bn analyze`` found: the report of each group and of the whole run, and its JSON form.

:class:`AnalysisReport` holds the settings (:class:`~l2bn.analysis.settings.AnalyzeConfig`)
and one :class:`GroupReport` per group, which holds the fitted numbers of
:mod:`l2bn.analysis.fitted`. Nothing here computes a fit or touches a storage; the module
imports neither optuna nor SciPy (:mod:`l2bn.analysis.pipeline` builds these objects,
:mod:`l2bn.analysis.presenting.export` writes them). This docstring documents the JSON shape.

JSON shape, schema 3 (:meth:`AnalysisReport.to_dict`; NaN and infinities are written as null)::

    {"schema": 3, "l2bn_version": "0.1.0",
     "storage": "sqlite:///l2bn.db",              # "csv:<path>" with --from-csv
     "settings": {"storage", "studies", "equilibrium", "interval", "bootstrap", "seed",
                  "confidence", "margin", "norm_margin", "metric", "from_csv",
                  "k_bounds", "equilibrium_band", "equilibrium_tail"},
     "warnings": ["skipped x/sgd: a single weight_decay value ...", ...],  # not per group
     "registration": {"source": "studies",            # or the --registration file; null:
                      "rule": {...},                  # no registered rule (l2bn.registration)
                      "status": "holds",              # | "does not hold" | "undetermined"
                      "conditions": [{"condition": {...}, "text": "adam's k in [0.4, 0.6]",
                                      "status": "met" | "missed" | "undetermined",
                                      "numbers": "k = 0.55 [0.49, 0.61]"}, ...]},
     "groups": [{
        "optimizer": "adam", "norm": "bn", "dataset": "cifar10",
        "identity": {...}, "distinct": {"affine": true},
        "studies": ["sweep1/adam"],
        "n_trials": 150, "n_cells": 75, "n_lambda": 3, "max_seeds": 2, "n_diverged": 4,
        "first_layer": "conv1", "metric": "val_error",
        "noise_sd": 0.015, "noise_source": "seeds", "independent_rows": false,
        "primary": {"estimator": "collapse", "method": "collapse/seed-jackknife-t"},
        "k": {"estimate": ESTIMATE, "intercept": -5.1, "r_squared": 0.93, "n_lambda": 3,
              "theory": 0.5, "verdict": "equivalent"},     # the primary
        "collapse": {"estimate": ESTIMATE, "theory": 0.5, "verdict": "equivalent",
                     "status": "collapses",     # | "collapses without some rows"
                                                # | "does not collapse" | "untested"
                     "rows": [ROW, ...], "n_cells": 75, "x_centre": -4.6,
                     "curve": {"x": [...], "y": [...]},   # T at x = log η + k(log λ − x_centre)
                     "reason": null},                      # null when fewer than 2 λ rows
        "k_estimates": {"collapse": KEST, "joint": KEST, "per_lambda": KEST},
        "optima": [{"weight_decay": 0.001, "lr_opt": 0.012, "lr_grid": 0.01,
                    "val_error": 0.21, "n_lr": 25, "edge": false, "used": true,
                    "note": null, "lr_ci_low": 0.010, "lr_ci_high": 0.014,
                    "n_band": 4, "equilibrium": EQUILIBRIUM}, ...],
        "optima_equilibrium": {"test": "stationarity", "theta_test": "angle",
                               "band": [0.8, 1.25], "tail": 0.2,
                               "in": 3, "out": 1, "unknown": 0, "total": 4},
        "norms": [{"layer": "conv1", "p": ESTIMATE, "q": ESTIMATE, "s": 0.5, "k": 1.0,
                   "a": ESTIMATE, "b": ESTIMATE, "intercept": 0.3, "r_squared": 0.97,
                   "n_cells": 40, "n_excluded": 35, "theory": 0.333,
                   "verdict": "equivalent", "memory": "equivalent",
                   "cell_filter": "measured"}, ...],     # or "clock c·η·λ·T ≥ 5"
        "columns": [{"quantity": "error" | "norm:conv1", "log_x": -6.9, "slope": ESTIMATE,
                     "band": 0.005, "n_lambda": 4, "verdict": "constant"}, ...],
        "k_by_epoch": [{"epoch": 1, "k": ESTIMATE}, ...],   # the primary; [] without histories
        "cells": [{"lr": 0.01, "weight_decay": 0.001, "n_seeds": 2, "val_error": 0.2,
                   "val_error_std": 0.01, "value": 0.2, "value_std": 0.01,
                   "test_error": 0.21, "n_diverged": 0,
                   "eta_lambda_T": 1.2, "equilibrium_index": 12.0,    # c·η·λ·T
                   "phase1_norms": {"conv1": 3.2, ...},
                   "relaxation": {"conv1": 7.5, ...},   # measured r·T, phase 1
                   "equilibrium": EQUILIBRIUM}, ...],
        "warnings": ["λ=0.1: η* on the lower edge of the η grid (extend the grid)", ...]}]}

    ESTIMATE = {"value", "stderr", "ci_low", "ci_high", "n", "method", "confidence"}
    KEST = {"estimate": ESTIMATE, "theory": 0.5, "verdict": "inconclusive"}
    ROW = {"weight_decay": 0.01, "used": true, "verdict": "fits" | "fails" | "untested",
           "p_value": 0.8, "worst_z": -1.2, "worst_lr": 0.03, "n_tested": 7,
           "k_without": 0.52, "cause": null}      # cause: why a failing row fails
    EQUILIBRIUM = {"verdict": "in" | "out" | "unknown",
                   "memory": {"conv1": 0.01, ...},   # log(‖w‖²/‖w‖²_eq) left at the window's end
                   "balance": {"conv1": 1.02, ...},  # growth ÷ shrink, net, against decay
                   "moving_layer": "conv1",          # farthest from stationary
                   "test": "angle" | "balance" | "none",   # the θ test beside the verdict
                   "ratio": 1.48, "layer": "conv1", "ratios": {"conv1": 1.48, ...},
                   "predicted": {"conv1": 1.28, ...},  # momentum, nesterov: the ratio the
                   # successive updates' correlation predicts (l2bn.theory.momentum_ratio)
                   "n_in": 2, "n_seeds": 2}

The primary (v3) is the **whole-surface collapse** (:mod:`l2bn.analysis.estimating.collapse`):
every non-diverged cell on one curve T(log η + k·log λ), k by profile, its interval by the
delete-one-cluster jackknife (method "collapse/seed-jackknife-t", or "(λ, seed)-…" with
independent rows; "collapse/none" with one seed: no interval). Each λ row is tested against the
curve the others define; failing rows are left out while enough remain ("collapses without
some rows"), else the verdict is "does not collapse". The floor estimators of v2 are
cross-checks: "joint/…" (a parabola in log η + k·log λ with a free offset per λ, in a band
near each minimum) and "per_lambda/…" (η* per λ by a local quadratic, then a regression).
"optima[].used" says whether the λ row is in the primary fit.

Equilibrium by stationarity (:mod:`l2bn.analysis.estimating.equilibrium`): over the last
``equilibrium_tail`` (20 %) of phase 1, every scale-invariant layer's norm holds still against
the decay's pull (balance within ``equilibrium_band``, memory within its log half-width, each
widened by 2 noise sds); "in" when every non-diverged seed is, "out" when one is out, "unknown"
without the update records (never "in"). The θ test (⟨θ²⟩/θ_eq² or the per-step balance) is
reported beside it, a test of the θ_eq formula, not the verdict.

``verdict`` of k and the exponents, against theory ± margin δ: "equivalent" (the CI lies
inside), "different" (the CI lies entirely outside), "inconclusive" (otherwise, including a
value without a finite CI), "undetermined" (no estimate, or no theory for this optimizer),
and for the primary "does not collapse". Columns: "constant" (CI inside ±band), "varies"
(entirely outside), else "inconclusive"/"undetermined".

``identity`` is the group's whole training identity: every TrainConfig field except η
(``lr``), λ (``weight_decay``), ``seed``, ``data_dir`` and ``device``, read from the studies'
``config`` user attr (fields that an older l2bn did not write take their TrainConfig default);
a study without a ``config`` attr has null for every field but its ``optimizer``, ``norm``,
``dataset``, ``epochs`` and ``width`` attrs. Studies pool into one group exactly when their
identities are equal. ``distinct`` is the part of the identity, other than optimizer, norm and
dataset, in which groups of the same optimizer differ.

Schema history: 3 (analyze v3) made the collapse the primary and replaced v2's whole-grid and
in-band collapse fits, added ``schema``, ``primary``, ``collapse.rows`` and stationarity; the
unversioned v2 and 0.1 shapes had no ``schema`` key.

Theory: :data:`l2bn.theory.THEORY`.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import l2bn
from l2bn.analysis.fitted import (
    IN_EQUILIBRIUM,
    NO_TEST,
    OUT_OF_EQUILIBRIUM,
    STABLE_TEST,
    UNKNOWN,
    Cell,
    CollapseFit,
    ColumnCheck,
    EpochK,
    KEstimate,
    NormFit,
    Optimum,
    RuleOutcome,
    ScalingFit,
)
from l2bn.analysis.settings import EQUILIBRIUM_BAND, EQUILIBRIUM_TAIL, AnalyzeConfig
from l2bn.files import finite_or_none

if TYPE_CHECKING:
    from l2bn.analysis.reading.records import TrialRecord

# Identity fields shown in the group's label as its own keys, not in ``distinct``.
LABEL_FIELDS = ("optimizer", "norm", "dataset")
SCHEMA = 3  # the JSON shape's version (see the module docstring)
PRIMARY = "collapse"  # the primary estimator's key in ``k_estimates``


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


SLUG_MAX = 120  # characters of a figure's file-name stem (figure names add ~25; limit 255)


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
    # Equilibrium by measurement (l2bn.analysis.estimating.equilibrium): the test of this optimizer
    # ("angle", "balance" or "none"), its band and the share of phase 1 it reads.
    equilibrium_test: str = NO_TEST
    equilibrium_band: tuple[float, float] = EQUILIBRIUM_BAND
    equilibrium_tail: float = EQUILIBRIUM_TAIL
    # Each study's stored objective (None: not stored); feeds --csv, not part of the JSON.
    objectives: Mapping[str, str | None] = field(default_factory=dict, repr=False)
    # Where its studies were read: "storage <url>" (read now) or "export <path>" (an
    # ``analyze --csv`` export, re-analyzed now).
    sources: tuple[str, ...] = ()

    @property
    def label(self) -> str:
        base = " / ".join(x for x in (self.optimizer, self.norm, self.dataset) if x)
        return f"{base} [{show_fields(self.distinct)}]" if self.distinct else base

    @property
    def slug(self) -> str:
        """File-name stem of this group's plots: ``<optimizer>-<norm>-<dataset>``, then
        ``-<field>_<value>`` for each field of :attr:`distinct`; when those run past
        :data:`SLUG_MAX` characters (groups apart in many settings), the first of them and a
        hash of all, so that a file name stays within every file system's limit."""
        parts = [self.optimizer, self.norm or "any", self.dataset or "any"]
        extra = [f"{k}_{show_value(v)}" for k, v in self.distinct.items()]
        clean = ["".join(c if c.isalnum() or c in "._-" else "_" for c in p) for p in parts + extra]
        stem = "-".join(clean)
        if len(stem) <= SLUG_MAX:
            return stem
        digest = hashlib.sha1("-".join(extra).encode()).hexdigest()[:8]
        return "-".join([*clean[:3], clean[3][:40], digest])

    @property
    def n_lambda(self) -> int:
        return len(self.optima)

    @property
    def first_layer_norm(self) -> NormFit | None:
        return self.norms[0] if self.norms else None

    @property
    def optima_equilibrium(self) -> dict[str, Any]:
        """How many of the optimum cells (λ > 0) are in equilibrium, out, unknown."""
        judged = [o.equilibrium.verdict for o in self.optima if o.weight_decay > 0]
        return {
            "test": STABLE_TEST if self.equilibrium_test != NO_TEST else NO_TEST,
            "theta_test": self.equilibrium_test,
            "band": list(self.equilibrium_band),
            "tail": self.equilibrium_tail,
            "in": judged.count(IN_EQUILIBRIUM),
            "out": judged.count(OUT_OF_EQUILIBRIUM),
            "unknown": judged.count(UNKNOWN),
            "total": len(judged),
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "optimizer": self.optimizer,
            "norm": self.norm,
            "dataset": self.dataset,
            "identity": {k: _json_value(v) for k, v in self.identity.items()},
            "distinct": {k: _json_value(v) for k, v in self.distinct.items()},
            "studies": list(self.studies),
            "sources": list(self.sources),
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
            "primary": {"estimator": PRIMARY, "method": self.scaling.k.method},
            "k": self.scaling.to_dict(),
            "k_estimates": {name: e.to_dict() for name, e in self.k_estimates.items()},
            "collapse": None if self.collapse is None else self.collapse.to_dict(),
            "optima": [o.to_dict() for o in self.optima],
            "optima_equilibrium": self.optima_equilibrium,
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
    rule: RuleOutcome | None = None  # the registered reading rule, judged (None: none)

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "l2bn_version": l2bn.__version__,
            "storage": self.storage,
            "settings": self.settings.to_dict(),
            "warnings": list(self.warnings),
            "registration": None if self.rule is None else self.rule.to_dict(),
            "groups": [g.to_dict() for g in self.groups],
        }


__all__ = [
    "LABEL_FIELDS",
    "PRIMARY",
    "SCHEMA",
    "AnalysisReport",
    "GroupReport",
    "show_fields",
    "show_value",
]
