"""Intervals of k over independent clusters: the resampling unit is what is independent.

Cells that share a seed share w₀ and batch order, so their errors are correlated across λ: the
unit is the seed (all its cells), or, where no seed value is shared between λ rows
(:attr:`~l2bn.analysis.estimating.panel.Panel.independent_rows`), the (λ, seed) pair
(:func:`cluster_weights`). The default interval is the delete-one-cluster jackknife with a
Student-t quantile on S − 1 degrees of freedom (Satterthwaite's over λ strata for independent
rows, :func:`jackknife_interval`); the calibration chose it over the cluster bootstrap, which
under-covers with 2–4 seeds (a percentile interval from 3–35 distinct resamples). With one seed
neither exists: the floor estimators fall back on the joint fit's delta-method t-interval
(:func:`t_interval`), which sees grid and fit noise only; the primary gives no interval.

Both the primary (:mod:`l2bn.analysis.estimating.collapse`) and the floor estimators
(:mod:`l2bn.analysis.estimating.floor`) draw their replicates here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

from l2bn.analysis.estimating.panel import BoolArray, FloatArray, IntArray, Panel

JACKKNIFE = "jackknife"
BOOTSTRAP = "bootstrap"
INTERVALS = (JACKKNIFE, BOOTSTRAP)


# --- replicate weights --------------------------------------------------------------------


def cluster_weights(
    panel: Panel, kind: str, resamples: int = 0, rng: np.random.Generator | None = None
) -> tuple[FloatArray, IntArray]:
    """Replicate weights (B, L, 1, S) for ``kind`` "jackknife", "bootstrap" or "cell-bootstrap".

    The cluster is the seed (all its cells) with shared seeds, the (λ, seed) pair with
    independent rows. Returns the weights and, per replicate, its jackknife stratum (the λ row
    for independent rows, else 0; −1 for bootstraps). "cell-bootstrap" resamples each cell's
    seeds on their own (the analysis before v2): it breaks the seeds' correlation across λ and
    is here for comparison only.
    """
    n_l, n_m, n_s = panel.shape
    has: BoolArray = np.asarray(panel.present.any(axis=1), dtype=np.bool_)  # (L, S)
    if kind == JACKKNIFE:
        if panel.independent_rows:
            units = np.argwhere(has)
            w = np.ones((units.shape[0], n_l, 1, n_s))
            for b, (i, s) in enumerate(units):
                w[b, i, 0, s] = 0.0
            return w, units[:, 0].astype(np.int64)
        slots = np.flatnonzero(has.any(axis=0))
        w = np.ones((slots.size, n_l, 1, n_s))
        for b, s in enumerate(slots):
            w[b, :, 0, s] = 0.0
        return w, np.zeros(slots.size, dtype=np.int64)
    gen = rng if rng is not None else np.random.default_rng(0)
    b_n = resamples
    if kind == BOOTSTRAP:
        w = np.zeros((b_n, n_l, 1, n_s))
        if panel.independent_rows:
            for i in range(n_l):
                slots = np.flatnonzero(has[i])
                draws = gen.integers(0, slots.size, size=(b_n, slots.size))
                for j, s in enumerate(slots):
                    w[:, i, 0, s] = np.sum(draws == j, axis=1)
        else:
            slots = np.flatnonzero(has.any(axis=0))
            draws = gen.integers(0, slots.size, size=(b_n, slots.size))
            for j, s in enumerate(slots):
                w[:, :, 0, s] = (draws == j).sum(axis=1)[:, None]
        return w, np.full(b_n, -1, dtype=np.int64)
    if kind == "cell-bootstrap":
        w = np.zeros((b_n, n_l, n_m, n_s))
        present = panel.present
        for i in range(n_l):
            for m in range(n_m):
                slots = np.flatnonzero(present[i, m])
                if slots.size == 0:
                    continue
                draws = gen.integers(0, slots.size, size=(b_n, slots.size))
                for j, s in enumerate(slots):
                    w[:, i, m, s] = (draws == j).sum(axis=1)
        return w, np.full(b_n, -1, dtype=np.int64)
    raise ValueError(f"unknown resampling {kind!r}")


# --- intervals ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Interval:
    value: float
    stderr: float
    ci_low: float
    ci_high: float
    dof: float
    method: str


def jackknife_interval(
    value: float, loo: FloatArray, strata: IntArray, confidence: float, method: str
) -> Interval:
    """θ̂ ± t·se with the delete-one-cluster jackknife se, t on Satterthwaite's dof over
    strata (one stratum: G − 1). NaN interval when a leave-one-out fit failed."""
    if not math.isfinite(value) or loo.size == 0 or not np.isfinite(loo).all():
        return Interval(value, math.nan, math.nan, math.nan, math.nan, method)
    parts = []
    dofs = []
    for h in np.unique(strata):
        th = loo[strata == h]
        g = th.size
        if g < 2:
            continue
        parts.append((g - 1) / g * float(np.sum((th - th.mean()) ** 2)))
        dofs.append(g - 1)
    if not parts:
        return Interval(value, math.nan, math.nan, math.nan, math.nan, method)
    var = float(sum(parts))
    se = math.sqrt(var)
    denom = sum(p**2 / d for p, d in zip(parts, dofs, strict=True))
    dof = var**2 / denom if denom > 0 else float(sum(dofs))
    if se == 0:
        return Interval(value, 0.0, value, value, dof, method)
    half = float(stats.t.ppf(0.5 + confidence / 2, dof)) * se
    return Interval(value, se, value - half, value + half, dof, method)


def bootstrap_interval(value: float, reps: FloatArray, confidence: float, method: str) -> Interval:
    """Percentile interval; NaN when more than 10 % of the resamples have no estimate."""
    good = reps[np.isfinite(reps)]
    if not math.isfinite(value) or good.size < max(20, int(0.9 * reps.size)):
        return Interval(value, math.nan, math.nan, math.nan, math.nan, method)
    alpha = (1 - confidence) / 2
    lo, hi = np.quantile(good, [alpha, 1 - alpha])
    return Interval(value, float(good.std(ddof=1)), float(lo), float(hi), math.nan, method)


def t_interval(value: float, se: float, dof: float, confidence: float, method: str) -> Interval:
    if not (math.isfinite(value) and math.isfinite(se)) or not dof > 0:
        return Interval(value, math.nan, math.nan, math.nan, math.nan, method)
    half = float(stats.t.ppf(0.5 + confidence / 2, dof)) * se
    return Interval(value, se, value - half, value + half, dof, method)


__all__ = [
    "BOOTSTRAP",
    "INTERVALS",
    "JACKKNIFE",
    "Interval",
    "bootstrap_interval",
    "cluster_weights",
    "jackknife_interval",
    "t_interval",
]
