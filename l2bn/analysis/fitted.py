"""Fitted numbers: :class:`Estimate` and the frozen result type of each fit, with its JSON form.

:mod:`l2bn.analysis.estimating` and the per-group analysis (:mod:`l2bn.analysis.pipeline`) build
these; :class:`~l2bn.analysis.results.GroupReport` holds them (the JSON shape they take there
is documented in :mod:`l2bn.analysis.results`, the verdict words too). Nothing here computes a
fit; like the rest of the result types, this module imports neither optuna nor SciPy.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from l2bn.files import finite_or_none
from l2bn.registration import Condition, Registration

# Verdicts against theory ± margin (see :mod:`l2bn.analysis.results`).
EQUIVALENT = "equivalent"
DIFFERENT = "different"
INCONCLUSIVE = "inconclusive"
UNDETERMINED = "undetermined"
# The primary's verdict where too many λ rows fail the lack-of-collapse test: its k is then
# not a test of the theory (l2bn.analysis.estimating.collapse).
NOT_COLLAPSED = "does not collapse"
VERDICTS = (EQUIVALENT, DIFFERENT, INCONCLUSIVE, UNDETERMINED, NOT_COLLAPSED)
# A λ row against the others' curve (RowCheck).
FITS = "fits"
FAILS = "fails"
UNTESTED = "untested"
# Column test outcomes (see ColumnCheck).
CONSTANT = "constant"
VARIES = "varies"
# Equilibrium by measurement (see Equilibrium): the verdicts, and the tests behind them.
IN_EQUILIBRIUM = "in"
OUT_OF_EQUILIBRIUM = "out"
UNKNOWN = "unknown"  # no records to judge by: never counted as in equilibrium
EQUILIBRIUM_VERDICTS = (IN_EQUILIBRIUM, OUT_OF_EQUILIBRIUM, UNKNOWN)
ANGLE_TEST = "angle"  # ⟨θ²⟩/θ_eq², optimizers with a θ_eq (SGD family, AdamW)
BALANCE_TEST = "balance"  # growth ÷ shrink, Adam/RMSProp with coupled L2
NO_TEST = "none"  # no equilibrium to test (normalized SGD, an unknown optimizer)
STABLE_TEST = "stationarity"  # the verdict: the norms hold still against the decay's pull


# --- fitted numbers -----------------------------------------------------------------------


def unpulled_words(memory: float) -> str:
    """A layer whose measured pull toward equilibrium was ≤ 0 over the window (stationarity's
    memory ±∞): with Adam/RMSProp's coupled L2 the pull is measured, as the net radial change,
    and the gradient's own radial part can outweigh the decay. No distance to an equilibrium
    can be read from it, so none is printed (not "∞")."""
    moved = "grew" if memory < 0 else "shrank"
    return f"no pull toward equilibrium measured, ‖w‖ {moved} over the window"


@dataclass(frozen=True)
class Estimate:
    """A fitted number with its uncertainty (like scipy's linregress result)."""

    value: float
    stderr: float
    ci_low: float
    ci_high: float
    n: int  # data points behind the estimate
    method: str  # e.g. "collapse/seed-jackknife-t", "ols-t" (results lists them)
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


def _log_distance(ratio: float) -> float:
    """How far a ratio lies from 1, symmetric in log; NaN stays NaN (unknown ranks last)."""
    if math.isnan(ratio):
        return -math.inf
    return abs(math.log(ratio)) if 0 < ratio < math.inf else math.inf


@dataclass(frozen=True)
class Equilibrium:
    """Whether a cell (or one λ's optimum cell) is at equilibrium, by measurement.

    The verdict is **stationarity** (:mod:`l2bn.analysis.estimating.equilibrium`): over the
    last ``equilibrium_tail`` of phase 1, every scale-invariant layer's norm must hold still
    against the decay's pull: its growth ÷ shrink (``balance``, from the norm's net change)
    within the band, and the distance still to go to equilibrium that its drift implies
    (``memory``, log of ‖w‖² over its equilibrium value) within the band's log width. "in"
    when every non-diverged seed is, "out" when one seed is out, else "unknown" (no update
    records: never "in"). Per layer, the seed farthest from stationary is kept.

    Beside it, not deciding it, the θ_eq formula's test (``test`` "angle": ⟨θ²⟩/θ_eq²; Adam
    and RMSProp, "balance": the per-step growth ÷ shrink records) in ``ratios``.
    """

    verdict: str = UNKNOWN
    test: str = NO_TEST  # the θ test beside the verdict: "angle", "balance" or "none"
    ratios: Mapping[str, float] = field(default_factory=dict)
    n_in: int = 0  # non-diverged seeds in equilibrium
    n_seeds: int = 0  # non-diverged seeds
    memory: Mapping[str, float] = field(default_factory=dict)
    balance: Mapping[str, float] = field(default_factory=dict)
    # Momentum and Nesterov: per layer, the ⟨θ²⟩/θ_eq² that the successive updates' measured
    # correlation (``update_corr`` over the window, mean over seeds) predicts through
    # l2bn.theory.momentum_ratio: how much of a ratio above 1 correlated gradients explain.
    predicted: Mapping[str, float] = field(default_factory=dict)

    @property
    def worst_layer(self) -> str | None:
        """The layer whose θ-test ratio lies farthest from 1 (None when none was measured)."""
        measured = {k: v for k, v in self.ratios.items() if not math.isnan(v)}
        return max(measured, key=lambda k: _log_distance(measured[k])) if measured else None

    @property
    def ratio(self) -> float:
        """The worst layer's θ-test ratio (NaN when none was measured)."""
        layer = self.worst_layer
        return math.nan if layer is None else self.ratios[layer]

    @property
    def moving_layer(self) -> str | None:
        """The layer farthest from stationary, by |memory| (None when none was measured)."""
        measured = {k: v for k, v in self.memory.items() if not math.isnan(v)}
        return max(measured, key=lambda k: abs(measured[k])) if measured else None

    def describe(self) -> str:
        """The stationarity numbers of the layer farthest from it, in words."""
        layer = self.moving_layer
        if layer is None:
            return "unmeasured"
        m = self.memory[layer]
        b = self.balance.get(layer, math.nan)
        if math.isinf(m):  # no measured pull (see unpulled_words)
            return f"{layer}: {unpulled_words(m)}"
        return f"{layer}: ‖w‖² {math.expm1(m):+.0%} from equilibrium, growth ÷ shrink {b:.3g}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "verdict": self.verdict,
            "test": self.test,
            "ratio": finite_or_none(self.ratio),
            "layer": self.worst_layer,
            "ratios": {k: finite_or_none(v) for k, v in self.ratios.items()},
            "memory": {k: finite_or_none(v) for k, v in self.memory.items()},
            "balance": {k: finite_or_none(v) for k, v in self.balance.items()},
            "predicted": {k: finite_or_none(v) for k, v in self.predicted.items()},
            "moving_layer": self.moving_layer,
            "n_in": self.n_in,
            "n_seeds": self.n_seeds,
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
    # Equilibrium by measurement (the clock above is a diagnostic beside it).
    equilibrium: Equilibrium = field(default_factory=Equilibrium)

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
            "equilibrium": self.equilibrium.to_dict(),
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
    equilibrium: Equilibrium = field(default_factory=Equilibrium)  # of the cell at lr_grid

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
            "equilibrium": self.equilibrium.to_dict(),
        }


@dataclass(frozen=True)
class ScalingFit:
    """The primary k (the whole-surface collapse): log η* = intercept − k log λ, the intercept
    where the fitted curve is lowest; r_squared: its share of the cells' variance."""

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
    """One estimator's k (``k_estimates``): collapse (the primary), joint or per_lambda."""

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
class RowCheck:
    """One λ row's lack-of-collapse test: does it follow the curve the other rows define?"""

    weight_decay: float
    used: bool  # in the primary fit (the rule leaves failing rows out)
    verdict: str  # FITS | FAILS | UNTESTED
    p_value: float  # Bonferroni-adjusted over every cell tested in the group (NaN: untested)
    worst_z: float  # its largest cell deviation from the others' curve, in noise sds (signed)
    worst_lr: float  # the η of that cell (NaN: none)
    n_tested: int  # cells within the other rows' span of η·λ^k
    k_without: float  # k fitted without this row
    cause: str | None = None  # the likely cause where it fails

    def to_dict(self) -> dict[str, Any]:
        return {
            "weight_decay": self.weight_decay,
            "used": self.used,
            "verdict": self.verdict,
            "p_value": finite_or_none(self.p_value),
            "worst_z": finite_or_none(self.worst_z),
            "worst_lr": finite_or_none(self.worst_lr),
            "n_tested": self.n_tested,
            "k_without": finite_or_none(self.k_without),
            "cause": self.cause,
        }


@dataclass(frozen=True)
class CollapseFit:
    """The primary: k whose x = log η + k·log λ puts every row's error on one curve T(x), the
    lack-of-collapse test of each row, and T itself (for the figures)."""

    k: Estimate
    theory: float | None
    verdict: str  # against theory ± margin, or NOT_COLLAPSED
    status: str  # l2bn.analysis.estimating.collapse.STATUSES
    rows: tuple[RowCheck, ...]
    n_cells: int
    x_centre: float  # the mean log λ the fit centres on: x = log η + k·(log λ − x_centre)
    curve_x: tuple[float, ...] = ()  # T sampled over the cells' span of x (centred)
    curve_y: tuple[float, ...] = ()
    noise_sd: float = math.nan  # sd of one trial's metric (the Huber scale)
    reason: str | None = None  # why k or its interval is missing

    @property
    def rows_used(self) -> int:
        return sum(r.used for r in self.rows)

    def to_dict(self) -> dict[str, Any]:
        return {
            "estimate": self.k.to_dict(),
            "theory": self.theory,
            "verdict": self.verdict,
            "status": self.status,
            "rows": [r.to_dict() for r in self.rows],
            "n_cells": self.n_cells,
            "x_centre": self.x_centre,
            "curve": {
                "x": [finite_or_none(v) for v in self.curve_x],
                "y": [finite_or_none(v) for v in self.curve_y],
            },
            "reason": self.reason,
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
    n_excluded: int  # cells with a phase-1 norm that the cell filter leaves out
    theory: float | None
    verdict: str  # p against theory ± norm_margin
    p: Estimate = field(default_factory=Estimate.missing)
    q: Estimate = field(default_factory=Estimate.missing)
    s: float = math.nan  # the scale power (Theory.norm_scale_power)
    k: float = math.nan  # the column exponent (Theory.k)
    memory: str = UNDETERMINED  # q against 0 ± norm_margin: "equivalent" = no memory of w₀
    # What chose the cells (l2bn.analysis.estimating.equilibrium.CellFilter.label): "measured" (the
    # cells measured in equilibrium) or "clock c·η·λ·T ≥ 5" (every verdict unknown).
    cell_filter: str = ""

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
            "cell_filter": self.cell_filter,
        }


# --- a registered reading rule, judged ----------------------------------------------------

# A registered reading rule, judged (l2bn.analysis.registered).
MET = "met"
MISSED = "missed"
RULE_UNDETERMINED = "undetermined"
HOLDS = "holds"
FAILS_RULE = "does not hold"


@dataclass(frozen=True)
class Outcome:
    """One condition, judged."""

    condition: Condition
    status: str  # MET | MISSED | UNDETERMINED
    numbers: str  # what it was judged on, in words and numbers

    def to_dict(self) -> dict[str, Any]:
        return {
            "condition": self.condition.to_dict(),
            "text": self.condition.describe(),
            "status": self.status,
            "numbers": self.numbers,
        }


@dataclass(frozen=True)
class RuleOutcome:
    """The registered rule over one report: every condition, and the whole."""

    registration: Registration
    source: str  # where the rule came from: "studies" or the --registration file
    outcomes: tuple[Outcome, ...]

    @property
    def status(self) -> str:
        """ "holds" when every condition is met, "does not hold" when one is missed, else
        "undetermined"."""
        states = {o.status for o in self.outcomes}
        if MISSED in states:
            return FAILS_RULE
        if states == {MET}:
            return HOLDS
        return RULE_UNDETERMINED

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "rule": self.registration.to_dict(),
            "status": self.status,
            "conditions": [o.to_dict() for o in self.outcomes],
        }


__all__ = [
    "ANGLE_TEST",
    "BALANCE_TEST",
    "CONSTANT",
    "DIFFERENT",
    "EQUILIBRIUM_VERDICTS",
    "EQUIVALENT",
    "FAILS",
    "FAILS_RULE",
    "FITS",
    "HOLDS",
    "INCONCLUSIVE",
    "IN_EQUILIBRIUM",
    "MET",
    "MISSED",
    "NOT_COLLAPSED",
    "NO_TEST",
    "OUT_OF_EQUILIBRIUM",
    "RULE_UNDETERMINED",
    "STABLE_TEST",
    "UNDETERMINED",
    "UNKNOWN",
    "UNTESTED",
    "VARIES",
    "VERDICTS",
    "Cell",
    "CollapseFit",
    "ColumnCheck",
    "EpochK",
    "Equilibrium",
    "Estimate",
    "KEstimate",
    "NormFit",
    "Optimum",
    "Outcome",
    "RowCheck",
    "RuleOutcome",
    "ScalingFit",
    "unpulled_words",
]
