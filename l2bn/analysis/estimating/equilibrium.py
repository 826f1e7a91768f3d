"""Equilibrium by measurement: is a cell's angular update at its equilibrium value?

At equilibrium the decay's radial shrink of a scale-invariant layer balances the tangential
growth of its gradient steps, and the RMS angle per step is θ_eq = √(c·η·λ)
(:meth:`l2bn.theory.Theory.angular_update`). The training records measure both, per layer and
epoch (``angle`` = θ̄, the RMS over output units and the epoch's steps; ``angle_eq`` = θ_eq;
``balance`` = growth ÷ shrink, exactly 1 when ‖w‖ is stationary). This module reads them:

* the **window**: the last ``tail`` (20 %) of phase 1, at least one epoch
  (:func:`tail_window`); phase 1 = the leading epochs at the first η
  (:attr:`~l2bn.analysis.reading.records.TrialRecord.phase1_epochs`, for step, wsd and constant
  schedules alike);
* the **test** (:func:`equilibrium_test`): "angle" for optimizers with a θ_eq (SGD, momentum,
  Nesterov, AdamW): the ratio ⟨θ²⟩/θ_eq² over the window, in every layer whose records carry a
  finite ``angle_eq`` (the scale-invariant ones); "balance" for Adam and RMSProp with coupled
  L2, whose θ_eq depends on the gradient scale: the mean ``balance`` over the window, in the
  layers the study's settings make scale-invariant (:func:`scale_invariant_layers`; an epoch
  whose record has no balance because nothing shrank, mean r ≥ 0, counts as ∞); "none"
  for normalized SGD (‖w‖ is pinned: nothing relaxes) and unknown optimizers;
* the **verdict** per trial (:func:`trial_verdict`): "in" when every such layer's ratio lies in
  the band [0.8, 1.25], "out" when one lies outside, "unknown" when a layer is unmeasured or
  there is none (older histories); per cell (:func:`cell_equilibrium`): "in" when every
  non-diverged seed is, "out" when one is out, else "unknown" — never "in" without records.

Which cells the norm fit, its column test and the norm heatmap take as in equilibrium
(:func:`norm_cell_filter`): the cells measured "in" where the group's cells carry verdicts
(some λ > 0 cell "in" or "out"); where every verdict is unknown (older studies, exports
without ``eq_ratio_<layer>``, optimizers without a test) the clock c·η·λ·T ≥ ``--equilibrium``
as before. Otherwise the clock and the measured relaxation of ‖w‖ stay as diagnostics beside
the verdicts.

The CSV export's per-layer summaries of the update records over the same window
(:func:`tail_summary`: RMS θ, RMS θ_eq, RMS G̃, mean radial, RMS tangential, mean balance).
Nothing here imports torch or optuna.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Any, TypeVar

from l2bn.analysis.estimating.stationarity import (
    BAND_ROUNDING,
    tail_window,
    trial_stationarity,
)
from l2bn.analysis.fitted import (
    ANGLE_TEST,
    BALANCE_TEST,
    IN_EQUILIBRIUM,
    NO_TEST,
    OUT_OF_EQUILIBRIUM,
    UNKNOWN,
    Cell,
    Equilibrium,
)
from l2bn.analysis.settings import EQUILIBRIUM_BAND, EQUILIBRIUM_TAIL
from l2bn.theory import MOMENTUM, momentum_ratio, theory_of
from l2bn.train.config import Head, Norm
from l2bn.train.config import scale_invariant_layers as config_rule

if TYPE_CHECKING:
    from l2bn.analysis.reading.records import TrialRecord

# Adam and RMSProp with coupled L2: θ_eq depends on the gradient scale, so the balance of
# growth and shrink is the test (l2bn.theory: angular_rate None).
BALANCE_OPTIMIZERS = frozenset({"adam", "rmsprop"})
MOMENTUM_OPTIMIZERS = frozenset({"momentum", "nesterov"})  # θ_eq moved by correlated gradients
TRACKING_LAYERS = ("w",)  # the tracking toy's one layer of unit vectors
E = TypeVar("E", bound=Enum)


def equilibrium_test(optimizer: str) -> str:
    """Which test judges ``optimizer``'s cells: "angle", "balance" or "none"."""
    if optimizer in BALANCE_OPTIMIZERS:
        return BALANCE_TEST
    theory = theory_of(optimizer)
    if theory is not None and theory.angular_rate is not None:
        return ANGLE_TEST
    return NO_TEST


def scale_invariant_layers(identity: Mapping[str, Any]) -> tuple[str, ...]:
    """The layers a study's settings make scale-invariant, by name: the training code's own
    rule (``l2bn.train.config.scale_invariant_layers``) applied to the stored settings, or the
    tracking toy's one layer ``w``. Missing or unknown settings (a study without a ``config``
    attr) take TrainConfig's defaults (norm bn, head linear)."""
    if identity.get("dataset") == "tracking":
        return TRACKING_LAYERS
    norm = _enum(Norm, identity.get("norm"), Norm.bn)
    head = _enum(Head, identity.get("head"), Head.linear)
    return tuple(config_rule(norm, head))


def _enum(kind: type[E], value: Any, default: E) -> E:
    try:
        return kind(value)
    except ValueError:
        return default


def epoch_ratios(t: TrialRecord, layer: str, test: str) -> tuple[float, ...]:
    """Per epoch, ``layer``'s ratio: θ̄²/θ_eq² ("angle") or the balance ("balance"); NaN
    where unmeasured (empty when the trial has no such records)."""
    if test == ANGLE_TEST:
        angle = t.dynamics.get("angle", {}).get(layer, ())
        eq = t.dynamics.get("angle_eq", {}).get(layer, ())
        return tuple(_div(a * a, e * e) for a, e in zip(angle, eq, strict=False))
    if test == BALANCE_TEST:
        return _balances(t, layer)
    return ()


def _balances(t: TrialRecord, layer: str) -> tuple[float, ...]:
    """Per epoch, ``layer``'s growth ÷ shrink; ∞ where the record has no balance because
    nothing shrank (its mean radial change r ≥ 0: ‖w‖ only grew), NaN where unmeasured."""
    balance = t.dynamics.get("balance", {}).get(layer, ())
    radial = t.dynamics.get("radial", {}).get(layer, ())
    if not radial:
        return tuple(balance)
    n = max(len(balance), len(radial))
    out = []
    for i in range(n):
        b = balance[i] if i < len(balance) else math.nan
        if math.isnan(b) and i < len(radial) and radial[i] >= 0:  # NaN ≥ 0 is False
            b = math.inf
        out.append(b)
    return tuple(out)


def trial_layers(t: TrialRecord, test: str, invariant: Sequence[str]) -> tuple[str, ...]:
    """The layers whose ratios judge ``t``: with the angle test, those whose records carry a
    finite θ_eq in phase 1 (the scale-invariant ones, by the records' own account); with the
    balance test, ``invariant`` (the settings' rule)."""
    if t.tail_ratios is not None:  # a CSV export wrote them out, layer by layer
        return tuple(t.tail_ratios)
    if test == ANGLE_TEST:
        n = t.phase1_epochs
        return tuple(
            layer
            for layer, values in t.dynamics.get("angle_eq", {}).items()
            if any(math.isfinite(v) for v in values[:n])
        )
    if test == BALANCE_TEST:
        # Of the rule's layers, those the trial has (all of them when it recorded none).
        return tuple(x for x in invariant if not t.norms or x in t.norms)
    return ()


def tail_ratios(
    t: TrialRecord, test: str, invariant: Sequence[str], tail: float = EQUILIBRIUM_TAIL
) -> dict[str, float]:
    """Per judged layer: ⟨θ²⟩/θ_eq² (ratio of the means over the window) or the mean
    balance over the window; NaN where the window holds no finite value; ∞ where θ_eq = 0
    (λ = 0: no equilibrium to reach). Empty when no layer is judged."""
    if t.tail_ratios is not None:
        return dict(t.tail_ratios)
    window = tail_window(t.phase1_epochs, tail)
    out: dict[str, float] = {}
    for layer in trial_layers(t, test, invariant):
        if test == ANGLE_TEST:
            angle = t.dynamics.get("angle", {}).get(layer, ())
            eq = t.dynamics.get("angle_eq", {}).get(layer, ())
            pairs = [
                (angle[i] ** 2, eq[i] ** 2)
                for i in window
                if i < len(angle) and i < len(eq)
                and math.isfinite(angle[i]) and math.isfinite(eq[i])
            ]  # fmt: skip
            if not pairs:
                out[layer] = math.nan
            else:
                out[layer] = _div(
                    sum(a for a, _ in pairs) / len(pairs), sum(e for _, e in pairs) / len(pairs)
                )
        else:
            values = _balances(t, layer)
            inside = [values[i] for i in window if i < len(values) and not math.isnan(values[i])]
            out[layer] = sum(inside) / len(inside) if inside else math.nan
    return out


def judge(ratios: Mapping[str, float], band: tuple[float, float] = EQUILIBRIUM_BAND) -> str:
    """One trial's verdict from its layers' ratios: out if any lies outside the band, else
    unknown if any is unmeasured (or there is none), else in."""
    if not ratios:
        return UNKNOWN
    lo, hi = band[0] * (1 - BAND_ROUNDING), band[1] * (1 + BAND_ROUNDING)
    if any(not math.isnan(r) and not (lo <= r <= hi) for r in ratios.values()):
        return OUT_OF_EQUILIBRIUM
    if any(math.isnan(r) for r in ratios.values()):
        return UNKNOWN
    return IN_EQUILIBRIUM


def trial_verdict(
    t: TrialRecord,
    test: str,
    invariant: Sequence[str],
    band: tuple[float, float] = EQUILIBRIUM_BAND,
    tail: float = EQUILIBRIUM_TAIL,
) -> tuple[str, dict[str, float]]:
    """One trial's verdict and its layers' ratios."""
    if test == NO_TEST:
        return UNKNOWN, {}
    ratios = tail_ratios(t, test, invariant, tail)
    return judge(ratios, band), ratios


def _distance(r: float) -> float:
    return abs(math.log(r)) if 0 < r < math.inf else math.inf


def cell_equilibrium(
    trials: Iterable[TrialRecord],
    test: str,
    invariant: Sequence[str],
    band: tuple[float, float] = EQUILIBRIUM_BAND,
    tail: float = EQUILIBRIUM_TAIL,
    optimizer: str | None = None,
) -> Equilibrium:
    """A cell's stationarity verdict over its non-diverged seeds (see :class:`Equilibrium`),
    with per layer the θ-test ratio, balance and memory of the seed farthest from stationary.
    ``optimizer`` None: the θ test's verdict (the analysis before v3; the ratios' tests use
    it)."""
    healthy = [t for t in trials if not t.diverged]
    if test == NO_TEST or all(not t.dynamics and t.tail_ratios is None for t in healthy):
        # Nothing recorded (older studies): unknown, the judged layers unmeasured. The same
        # as below, without a pass over every layer and epoch (10 000 trials in bulk).
        layers = dict.fromkeys(x for t in healthy for x in trial_layers(t, test, invariant))
        return Equilibrium(UNKNOWN, test, dict.fromkeys(layers, math.nan), 0, len(healthy))
    verdicts: list[str] = []
    worst: dict[str, float] = {}
    memory: dict[str, float] = {}
    balance: dict[str, float] = {}
    for t in healthy:
        theta_verdict, ratios = trial_verdict(t, test, invariant, band, tail)
        if optimizer is None:
            verdicts.append(theta_verdict)
        else:
            v, balances, memories = trial_stationarity(t, optimizer, invariant, band, tail)
            verdicts.append(v)
            for layer, m in memories.items():
                old = memory.get(layer, math.nan)
                if math.isnan(old) or (not math.isnan(m) and abs(m) > abs(old)):
                    memory[layer] = m
                    balance[layer] = balances[layer]
        for layer, r in ratios.items():
            old = worst.get(layer, math.nan)
            if math.isnan(old) or (not math.isnan(r) and _distance(r) > _distance(old)):
                worst[layer] = r
    n_in = sum(v == IN_EQUILIBRIUM for v in verdicts)
    predicted = _predicted_ratios(healthy, optimizer, tail)
    if OUT_OF_EQUILIBRIUM in verdicts:
        verdict = OUT_OF_EQUILIBRIUM
    elif verdicts and n_in == len(verdicts):
        verdict = IN_EQUILIBRIUM
    else:
        verdict = UNKNOWN
    return Equilibrium(verdict, test, worst, n_in, len(healthy), memory, balance, predicted)


def _predicted_ratios(
    trials: Sequence[TrialRecord], optimizer: str | None, tail: float
) -> dict[str, float]:
    """Momentum, Nesterov: per layer, l2bn.theory.momentum_ratio of the seeds' mean
    ``update_corr`` over the window (empty for other optimizers and older records)."""
    if optimizer not in MOMENTUM_OPTIMIZERS:
        return {}
    corr: dict[str, list[float]] = {}
    for t in trials:
        for layer, c in tail_summary(t, tail).get("update_corr", {}).items():
            corr.setdefault(layer, []).append(c)
    nesterov = optimizer == "nesterov"
    return {
        layer: momentum_ratio(MOMENTUM, nesterov, sum(cs) / len(cs)) for layer, cs in corr.items()
    }


# --- the cells the norm fit takes as in equilibrium -----------------------------------------

MEASURED_FILTER = "measured"  # the label of the filter by measured verdicts


@dataclass(frozen=True)
class CellFilter:
    """Which cells count as in equilibrium for the norm fit (p, q, a, b), the norm column
    test and the norm heatmap's crosses: by measurement (the cell's verdict is "in") or by
    the clock (c·η·λ·T ≥ ``threshold``, ``--equilibrium``). See :func:`norm_cell_filter`."""

    measured: bool
    threshold: float = 5.0

    @property
    def label(self) -> str:
        """ "measured" or "clock c·η·λ·T ≥ 5": what the outputs say chose the cells."""
        return MEASURED_FILTER if self.measured else f"clock c·η·λ·T ≥ {self.threshold:g}"

    def admits(self, cell: Cell) -> bool:
        """Whether ``cell`` counts as in equilibrium (never by the clock's NaN: steps unknown)."""
        if self.measured:
            return cell.equilibrium.verdict == IN_EQUILIBRIUM
        return cell.equilibrium_index >= self.threshold


def norm_cell_filter(cells: Iterable[Cell], threshold: float) -> CellFilter:
    """The filter of a group's norm fit: by measurement when some cell with λ > 0 carries a
    verdict ("in" or "out": the group's test applies and its trials recorded the update
    records), else (every verdict unknown: older studies, exports without the ratios,
    optimizers without a test) the clock c·η·λ·T ≥ ``threshold``, as before the records."""
    measured = any(c.equilibrium.verdict != UNKNOWN for c in cells if c.weight_decay > 0)
    return CellFilter(measured, threshold)


# --- the export's summaries of the update records -------------------------------------------

# The per-layer summaries of the CSV export, in column order, and how each reduces the
# window's epochs: "rms" √mean x², "mean" the plain mean.
SUMMARIES: tuple[tuple[str, str], ...] = (
    ("angle", "rms"),
    ("angle_eq", "rms"),
    ("grad_norm", "rms"),
    ("radial", "mean"),
    ("tangential", "rms"),
    ("balance", "mean"),
    ("update_corr", "mean"),
)


def tail_summary(t: TrialRecord, tail: float = EQUILIBRIUM_TAIL) -> dict[str, dict[str, float]]:
    """Per quantity of :data:`SUMMARIES`, per layer that recorded it in the window: its
    summary over the last ``tail`` of phase 1 (:func:`tail_window`), over the window's epochs
    that recorded a value: √mean θ² (``angle``), √mean θ_eq² (``angle_eq``), RMS G̃
    (``grad_norm``), mean radial change, RMS tangential change, mean ``balance`` (an epoch
    without one because nothing shrank counts as ∞, as in the balance test), mean
    ``update_corr`` (l2bn.theory.momentum_ratio reads it). A layer whose
    window holds no value of a quantity is left out of it. A record read from a CSV export
    (:attr:`~l2bn.analysis.reading.records.TrialRecord.tail_summary`) gives back what it wrote."""
    if t.tail_summary is not None:
        return {q: dict(layers) for q, layers in t.tail_summary.items() if layers}
    window = tail_window(t.phase1_epochs, tail)
    out: dict[str, dict[str, float]] = {}
    for quantity, how in SUMMARIES:
        recorded = t.dynamics.get(quantity, {})
        if quantity == "balance":  # a layer that never shrank has radial records alone
            layers = dict.fromkeys([*recorded, *t.dynamics.get("radial", {})])
        else:
            layers = dict.fromkeys(recorded)
        for layer in layers:
            values = _balances(t, layer) if quantity == "balance" else recorded[layer]
            inside = [values[i] for i in window if i < len(values) and not math.isnan(values[i])]
            if not inside:
                continue
            if how == "rms":
                value = math.sqrt(sum(x * x for x in inside) / len(inside))
            else:
                value = sum(inside) / len(inside)
            out.setdefault(quantity, {})[layer] = value
    return out


def _div(a: float, b: float) -> float:
    if math.isnan(a) or math.isnan(b):
        return math.nan
    if b == 0:
        return math.nan if a == 0 else math.inf
    return a / b


__all__ = [
    "BALANCE_OPTIMIZERS",
    "MEASURED_FILTER",
    "SUMMARIES",
    "CellFilter",
    "cell_equilibrium",
    "epoch_ratios",
    "equilibrium_test",
    "judge",
    "norm_cell_filter",
    "scale_invariant_layers",
    "tail_ratios",
    "tail_summary",
    "tail_window",
    "trial_layers",
    "trial_verdict",
]
