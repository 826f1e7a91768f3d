"""Stationarity: does a layer's norm hold still against the decay's pull? The verdict of
equilibrium (:mod:`l2bn.analysis.estimating.equilibrium` applies it per cell; the method and
why: docs/method.md, "Equilibrium by stationarity").

* the **window** (:func:`tail_window`): the last ``tail`` (20 %) of phase 1, at least one epoch;
* per layer (:func:`stationarity`): its growth ÷ shrink against the decay's pull and the
  distance to equilibrium its drift implies; per trial (:func:`trial_stationarity`): "in",
  "out" or "unknown".
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from l2bn.analysis.fitted import IN_EQUILIBRIUM, OUT_OF_EQUILIBRIUM, UNKNOWN
from l2bn.analysis.settings import EQUILIBRIUM_BAND, EQUILIBRIUM_TAIL
from l2bn.theory import theory_of

if TYPE_CHECKING:
    from l2bn.analysis.reading.records import TrialRecord

BAND_ROUNDING = 1e-9  # the band's ends are inclusive, up to float rounding of the ratio


def tail_window(phase1_epochs: int, tail: float = EQUILIBRIUM_TAIL) -> range:
    """0-based epochs of the last ``tail`` of phase 1, at least one (empty without phase 1)."""
    if phase1_epochs <= 0:
        return range(0)
    n = max(1, math.ceil(tail * phase1_epochs - 1e-9))  # 0.2·15 is 3.0000000000000004
    n = min(n, phase1_epochs)
    return range(phase1_epochs - n, phase1_epochs)


def decay_pull(t: TrialRecord, optimizer: str, window: range) -> float:
    """The decay's pull on log‖w‖² per step over ``window``, for every layer alike where the
    theory has a formula (:meth:`l2bn.theory.Theory.decay_pull` at the window's mean η); NaN
    where it has none (see :func:`layer_pull`)."""
    theory = theory_of(optimizer)
    lrs = [t.epoch_lrs[i] for i in window if i < len(t.epoch_lrs)]
    lrs = [x for x in lrs if math.isfinite(x)] or [t.lr]
    pull = None if theory is None else theory.decay_pull(sum(lrs) / len(lrs), t.weight_decay)
    return math.nan if pull is None else pull


def layer_pull(t: TrialRecord, layer: str, window: range, tail: float) -> float:
    """Adam/RMSProp with coupled L2: the measured shrink, −2 × the mean radial change per step
    of ``layer`` over ``window`` (their decay is divided by √v, so no formula gives it); NaN
    unmeasured."""
    if t.tail_summary is not None:
        r = t.tail_summary.get("radial", {}).get(layer, math.nan)
        return -2.0 * r
    radial = t.dynamics.get("radial", {}).get(layer, ())
    inside = [radial[i] for i in window if i < len(radial) and math.isfinite(radial[i])]
    return -2.0 * sum(inside) / len(inside) if inside else math.nan


@dataclass(frozen=True)
class Stationarity:
    """One layer over the window: its balance and memory, each with its noise sd."""

    balance: float
    memory: float
    balance_se: float = 0.0
    memory_se: float = 0.0

    def holds(self, band: tuple[float, float] = EQUILIBRIUM_BAND) -> bool | None:
        """Balance within ``band`` and |memory| within the band's log half-width, each widened
        by 2 noise sds; None when unmeasured."""
        if math.isnan(self.balance) or math.isnan(self.memory):
            return None
        lo, hi = band
        slack = 2 * self.balance_se
        ok_b = lo * (1 - BAND_ROUNDING) - slack <= self.balance <= hi * (1 + BAND_ROUNDING) + slack
        return ok_b and abs(self.memory) <= math.log(hi) + 2 * self.memory_se


UNMEASURED = Stationarity(math.nan, math.nan)


def stationarity(
    t: TrialRecord, layer: str, optimizer: str, tail: float = EQUILIBRIUM_TAIL
) -> Stationarity:
    """``layer``'s stationarity over the last ``tail`` of phase 1.

    With N = ‖w‖², d = log N(end) − log N(start) over the window's W steps (start: the record
    before the window) and s the decay's pull per step (:func:`decay_pull`, else the measured
    shrink :func:`layer_pull`):

    * balance = growth ÷ shrink = 1 + d/(s·W): the norm's net growth against the decay's pull
      (1 when ‖w‖ holds still). Not the per-step records' ``balance``: with momentum the
      buffer's radial part cancels most of the decay's in each step (measured: nesterov's conv1
      shrinks by ~8 % of 2ηλ/(1−α) per step), so that ratio reads 1.5–∞ for a norm that moves
      a few % over 17 epochs.
    * memory = −d / (e^{ρW} − 1): log(N/N_eq) at the window's end, for a norm that relaxes as
      e^{−ρt} (ρ = 2s for the SGD family, whose growth per step ∝ 1/N²; s for Adam-like steps,
      ∝ 1/N). A norm that barely moves over a window much shorter than its relaxation time
      may still be far from its equilibrium: memory says how far.
    * their noise: that of d, 2√2 × the sd of log ‖w‖ about a straight line over the window
      (0 with fewer than 4 records), carried through.

    Unmeasured (NaN) where the window, the steps or the pull are unknown; balance ∞ and memory
    ±∞ where nothing pulls (s ≤ 0) and the norm moved.
    """
    window = tail_window(t.phase1_epochs, tail)
    norms = t.norms.get(layer, ())
    if len(window) == 0 or t.steps_per_epoch is None or len(norms) < window.stop:
        return UNMEASURED
    start = window.start - 1 if window.start > 0 else window.start
    points = [norms[i] for i in range(start, window.stop)]
    if len(points) < 2 or not all(math.isfinite(x) and x > 0 for x in points):
        return UNMEASURED
    pull = decay_pull(t, optimizer, window)
    if math.isnan(pull):
        pull = layer_pull(t, layer, window, tail)
    if math.isnan(pull):
        return UNMEASURED
    steps = (window.stop - 1 - start) * t.steps_per_epoch
    logs = [2.0 * math.log(x) for x in points]
    d = logs[-1] - logs[0]
    se = _drift_se(logs)
    if pull <= 0:
        if d == 0:
            return Stationarity(1.0, 0.0)
        return Stationarity(math.inf, math.copysign(math.inf, -d))
    theory = theory_of(optimizer)
    relax = math.expm1((2 if theory is not None and theory.eff_lr_power == 2 else 1) * pull * steps)
    return Stationarity(1.0 + d / (pull * steps), -d / relax, se / (pull * steps), se / relax)


def _drift_se(logs: Sequence[float]) -> float:
    """The noise of a drift read off its ends: √2 × the sd of the points about a line."""
    if len(logs) < 4:
        return 0.0
    xs = range(len(logs))
    xm = sum(xs) / len(logs)
    ym = sum(logs) / len(logs)
    slope = sum((x - xm) * (y - ym) for x, y in zip(xs, logs, strict=True)) / sum(
        (x - xm) ** 2 for x in xs
    )
    resid = [y - ym - slope * (x - xm) for x, y in zip(xs, logs, strict=True)]
    return math.sqrt(2.0) * math.sqrt(sum(r * r for r in resid) / (len(logs) - 2))


def trial_stationarity(
    t: TrialRecord,
    optimizer: str,
    invariant: Sequence[str],
    band: tuple[float, float] = EQUILIBRIUM_BAND,
    tail: float = EQUILIBRIUM_TAIL,
) -> tuple[str, dict[str, float], dict[str, float]]:
    """One trial's stationarity verdict over the layers of ``invariant`` it has, with each
    layer's balance and memory: "out" if a layer is not stationary, else "unknown" if one is
    unmeasured, else "in". Unknown for a trial without update records (older studies), as
    the θ test is."""
    # The update records: a storage's per-epoch ones, or an export's ratios and summaries.
    if not t.dynamics and not (t.tail_ratios is not None and t.tail_summary):
        return UNKNOWN, {}, {}
    layers = [x for x in invariant if x in t.norms] if t.norms else []
    if not layers:
        return UNKNOWN, {}, {}
    found = {layer: stationarity(t, layer, optimizer, tail) for layer in layers}
    states = [st.holds(band) for st in found.values()]
    balances = {layer: st.balance for layer, st in found.items()}
    memories = {layer: st.memory for layer, st in found.items()}
    if any(s is False for s in states):
        return OUT_OF_EQUILIBRIUM, balances, memories
    if any(s is None for s in states):
        return UNKNOWN, balances, memories
    return IN_EQUILIBRIUM, balances, memories


__all__ = [
    "BAND_ROUNDING",
    "Stationarity",
    "decay_pull",
    "layer_pull",
    "stationarity",
    "tail_window",
    "trial_stationarity",
]
