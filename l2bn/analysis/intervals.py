"""Intervals of k over independent clusters, and :func:`estimate_k`, k with its intervals.

Intervals (:func:`cluster_weights`, :func:`jackknife_interval`, :func:`bootstrap_interval`):
the resampling unit is what is independent. Cells that share a seed share w₀ and batch order,
so their errors are correlated across λ: the unit is the seed (all its cells), or, where no
seed value is shared between λ rows (:attr:`~l2bn.analysis.panel.Panel.independent_rows`),
the (λ, seed) pair. The default interval is the delete-one-cluster jackknife with a Student-t
quantile on S − 1 degrees of freedom (Satterthwaite's over λ strata for independent rows); the
calibration simulation chose it over the cluster bootstrap, which under-covers with 2–4 seeds
(a percentile interval from 3–35 distinct resamples). With one seed neither exists: the joint
fit's delta-method t-interval on its residual dof sees grid and fit noise only
(:func:`t_interval`).

:func:`estimate_k` is the entry point of the k-estimation stack (panel → band → estimators →
intervals): the full-data fits of :mod:`l2bn.analysis.estimators`, the noise estimate, and one
interval per estimator from replicate weights of this module.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

from l2bn.analysis.estimators import ESTIMATORS, JOINT, Replicates, fit_replicates
from l2bn.analysis.panel import (
    BoolArray,
    FloatArray,
    IntArray,
    Panel,
    centres,
    full_weights,
    noise_sd,
    replicate_means,
)

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


def _residual_sd(panel: Panel, fit: Replicates) -> float:
    """The sd of one trial around the full-data joint fit (its weighted residuals)."""
    means, n = replicate_means(panel, full_weights(panel))
    j = fit.joint
    u_bar, v_bar = centres(panel)
    u = np.nan_to_num(panel.log_lr - u_bar)
    v = (panel.log_wd - v_bar)[:, None]
    beta2 = float(j.curvature[0])
    k = float(j.k[0])
    centre = float(j.centre[0]) - u_bar
    mask = fit.band.mask[0]
    # Per row: the offset that best fits the band given the common parabola.
    shape = beta2 * (u - (centre - k * v)) ** 2
    resid = np.where(mask, means[0] - shape, np.nan)
    w = np.where(mask, n[0], 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        offset = np.nansum(w * resid, axis=-1) / w.sum(axis=-1)
    r = np.where(mask, resid - offset[:, None], 0.0)
    dof = int(j.dof[0])
    return math.sqrt(float((w * r**2).sum()) / dof) if dof > 0 else math.nan


@dataclass(frozen=True)
class KResult:
    """What :func:`estimate_k` found: the full-data fits and each estimator's interval."""

    full: Replicates
    intervals: dict[str, Interval]
    sigma: float
    sigma_source: str
    n_clusters: int
    independent_rows: bool


def estimate_k(
    panel: Panel,
    confidence: float = 0.95,
    interval: str = JACKKNIFE,
    resamples: int = 1000,
    seed: int = 0,
    k_bounds: tuple[float, float] = (-1.0, 2.5),
    which: Sequence[str] = ESTIMATORS,
    sigma: float | None = None,
) -> KResult:
    """k by every estimator in ``which``, with intervals over independent clusters.

    ``sigma``: the noise sd of one trial, when the caller knows it better (k over training
    uses each epoch's own); else :func:`noise_sd`.
    """
    if sigma is None:
        sig, source = noise_sd(panel)
    else:
        sig, source = sigma, "given"
    full = fit_replicates(panel, full_weights(panel), sig, k_bounds, which)
    if source == "second differences":
        # The curve's curvature inflates the second differences: once the joint fit has
        # residuals, their sd (per trial) is the better noise estimate.
        j = full.joint
        if j.dof[0] > 0 and math.isfinite(j.stderr[0]):
            resid_sd = _residual_sd(panel, full)
            if math.isfinite(resid_sd) and 0 < resid_sd < sig:
                sig, source = resid_sd, "joint-fit residuals"
                full = fit_replicates(panel, full_weights(panel), sig, k_bounds, which)
    has = panel.present.any(axis=1)
    clusters = int(has.sum()) if panel.independent_rows else int(has.any(axis=0).sum())
    per_cluster = int(has.sum(axis=1).max()) if panel.independent_rows else clusters
    out: dict[str, Interval] = {}
    if per_cluster >= 2:
        kind = JACKKNIFE if interval == JACKKNIFE else BOOTSTRAP
        rng = np.random.default_rng(seed)
        w, strata = cluster_weights(panel, kind, resamples, rng)
        reps = fit_replicates(panel, w, sig, k_bounds, which, rows=full.band.rows[0])
        unit = "(λ, seed)" if panel.independent_rows else "seed"
        for name in which:
            value = float(full.k(name)[0])
            if kind == JACKKNIFE:
                out[name] = jackknife_interval(
                    value, reps.k(name), strata, confidence, f"{unit}-jackknife-t"
                )
            else:
                out[name] = bootstrap_interval(
                    value, reps.k(name), confidence, f"{unit}-cluster-bootstrap"
                )
    else:
        j = full.joint
        out[JOINT] = t_interval(
            float(j.k[0]), float(j.stderr[0]), float(j.dof[0]), confidence, "delta-t"
        )
        for name in which:
            if name != JOINT:
                value = float(full.k(name)[0])
                out[name] = Interval(value, math.nan, math.nan, math.nan, math.nan, "none")
    return KResult(full, out, sig, source, clusters, panel.independent_rows)


__all__ = [
    "BOOTSTRAP",
    "INTERVALS",
    "JACKKNIFE",
    "Interval",
    "KResult",
    "bootstrap_interval",
    "cluster_weights",
    "estimate_k",
    "jackknife_interval",
    "t_interval",
]
