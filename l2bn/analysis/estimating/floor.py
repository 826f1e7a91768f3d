"""The three estimators of k in η* ∝ λ^-k, each fitted to every replicate of a panel at once.

Estimators (all on the cells of a *band* near each λ's minimum,
:func:`l2bn.analysis.estimating.band.select_band`):

* **joint** (primary, :func:`joint_fit`): one weighted least-squares fit over every used λ of
  ``y = c_λ + β₂·u² + g₀·u + g₁·u·v`` with u = log η (centred), v = log λ (centred) and a
  free offset c_λ per λ. That is a parabola in x = log η + k·log λ with a common curvature and
  k = g₁ / (2·β₂), linear in its coefficients: no search, no grid locking.
* **per_lambda** (:func:`per_lambda_fit`): η* per λ by a weighted local
  quadratic over ≥ :data:`PER_LAMBDA_POINTS` cells around the minimum (its own delta-method
  CI from the cells' noise), then weighted regression of log η* on log λ.
:func:`fit_replicates` runs both on the replicates of a weight array
(:mod:`l2bn.analysis.estimating.panel`); their intervals and the entry point
:func:`estimate_k` (below) draw on :mod:`l2bn.analysis.estimating.intervals`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from l2bn.analysis.estimating.band import Band, select_band
from l2bn.analysis.estimating.intervals import (
    BOOTSTRAP,
    JACKKNIFE,
    Interval,
    bootstrap_interval,
    cluster_weights,
    jackknife_interval,
    t_interval,
)
from l2bn.analysis.estimating.panel import (
    BoolArray,
    FloatArray,
    IntArray,
    Panel,
    centres,
    full_weights,
    noise_sd,
    replicate_means,
)

# The per-λ local quadratic uses at least this many η values (rows with fewer are left out).
PER_LAMBDA_POINTS = 5

JOINT = "joint"
PER_LAMBDA = "per_lambda"
ESTIMATORS = (JOINT, PER_LAMBDA)


# --- the joint fit ------------------------------------------------------------------------


@dataclass(frozen=True)
class JointFit:
    """Per replicate: k, the curvature β₂, log η* at the centre λ, and fit diagnostics."""

    k: FloatArray  # (B,) NaN where undefined
    curvature: FloatArray  # (B,)
    centre: FloatArray  # (B,) log η* at log λ = v̄ (the mean log λ of the panel)
    v_bar: float
    n_rows: IntArray  # (B,)
    n_cells: IntArray  # (B,)
    stderr: FloatArray  # (B,) delta-method stderr of k from the residuals (NaN without dof)
    dof: IntArray  # (B,) residual degrees of freedom
    r_squared: FloatArray  # (B,)


def joint_fit(panel: Panel, means: FloatArray, n: FloatArray, band: Band) -> JointFit:
    """The joint parabola on every replicate (see the module docstring)."""
    n_l, n_m, _ = panel.shape
    u_bar, v_bar = centres(panel)
    u = np.nan_to_num(panel.log_lr - u_bar)  # (L, M); padding is never in the band
    v = (panel.log_wd - v_bar)[:, None] * np.ones((1, n_m))
    p = n_l + 3
    x = np.zeros((n_l, n_m, p))
    x[np.arange(n_l), :, np.arange(n_l)] = 1.0
    x[..., n_l] = u**2
    x[..., n_l + 1] = u
    x[..., n_l + 2] = u * v
    w = np.where(band.mask, n, 0.0)  # (B, L, M)
    y = np.where(band.mask, means, 0.0)
    xtwx = np.einsum("lmp,blm,lmq->bpq", x, w, x)
    xtwy = np.einsum("lmp,blm,blm->bp", x, w, y)
    # Rows without cells: pin their offset to 0 so the system stays solvable.
    unused = ~band.mask.any(axis=-1)  # (B, L)
    diag = np.arange(n_l)
    xtwx[:, diag, diag] += unused.astype(np.float64)
    n_rows = band.mask.any(axis=-1).sum(axis=-1)
    n_cells = band.mask.sum(axis=(1, 2))
    b_n = means.shape[0]
    nan = np.full(b_n, np.nan)
    try:
        coef = np.linalg.solve(xtwx, xtwy[..., None])[..., 0]
    except np.linalg.LinAlgError:
        coef = np.stack([_solve_or_nan(a, r) for a, r in zip(xtwx, xtwy, strict=True)])
    beta2, g0, g1 = coef[:, n_l], coef[:, n_l + 1], coef[:, n_l + 2]
    ok = (n_rows >= 2) & (beta2 > 0) & (n_cells > n_rows + 3)
    with np.errstate(invalid="ignore", divide="ignore"):
        k = np.where(ok, g1 / (2 * beta2), np.nan)
        centre = np.where(ok, u_bar - g0 / (2 * beta2), np.nan)
    fitted = np.einsum("lmp,bp->blm", x, coef)
    resid = np.where(band.mask, means - fitted, 0.0)
    rss = (w * resid**2).sum(axis=(1, 2))
    wsum = w.sum(axis=(1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        # R² against the per-λ means (the offsets explain the floor, not the shape).
        row_mean = (w * y).sum(axis=-1) / w.sum(axis=-1)
        tss = (w * np.where(band.mask, means - row_mean[..., None], 0.0) ** 2).sum(axis=(1, 2))
        r2 = np.where(tss > 0, 1 - rss / tss, np.nan)
    dof = (n_cells - (n_rows + 3)).astype(np.int64)
    stderr = nan.copy()
    for b in np.flatnonzero(ok & (dof > 0)):
        try:
            inv = np.linalg.inv(xtwx[b])
        except np.linalg.LinAlgError:
            continue
        # Weights are seed counts: scale by the residual variance of one trial.
        s2 = rss[b] / dof[b]
        grad = np.zeros(p)
        grad[n_l] = -g1[b] / (2 * beta2[b] ** 2)
        grad[n_l + 2] = 1 / (2 * beta2[b])
        stderr[b] = math.sqrt(max(float(grad @ inv @ grad) * s2, 0.0))
    del wsum
    return JointFit(
        k=k,
        curvature=np.where(ok, beta2, np.nan),
        centre=centre,
        v_bar=v_bar,
        n_rows=n_rows.astype(np.int64),
        n_cells=n_cells.astype(np.int64),
        stderr=stderr,
        dof=dof,
        r_squared=r2,
    )


def _solve_or_nan(a: FloatArray, r: FloatArray) -> FloatArray:
    try:
        return np.asarray(np.linalg.solve(a, r), dtype=np.float64)
    except np.linalg.LinAlgError:
        return np.full(r.shape, np.nan)


# --- per-λ local quadratics ---------------------------------------------------------------


@dataclass(frozen=True)
class PerLambdaFit:
    """Per replicate: log η* per row with its delta-method sd, and the regression's k."""

    log_opt: FloatArray  # (B, L) NaN where the row has no local minimum
    log_opt_se: FloatArray  # (B, L)
    n_points: IntArray  # (B, L)
    k: FloatArray  # (B,)
    intercept: FloatArray  # (B,) log η* at log λ = 0


def per_lambda_fit(
    panel: Panel, means: FloatArray, n: FloatArray, band: Band, sigma: float
) -> PerLambdaFit:
    """Local quadratic per λ over ≥ PER_LAMBDA_POINTS cells, then WLS."""
    _, n_m, _ = panel.shape
    b_n = means.shape[0]
    idx = np.arange(n_m)
    valid = np.isfinite(means) & (n > 0)
    half = PER_LAMBDA_POINTS // 2
    # The band, widened to the PER_LAMBDA_POINTS cells nearest the minimum (shifted inward
    # at the grid's ends).
    n_valid = valid.sum(axis=-1)
    lo = np.clip(band.argmin - half, 0, None)
    lo = np.minimum(lo, np.maximum(n_valid - PER_LAMBDA_POINTS, 0))
    window = (idx >= lo[..., None]) & (idx < lo[..., None] + PER_LAMBDA_POINTS)
    sel = (band.mask | window) & valid & band.rows[..., None]
    u = np.nan_to_num(panel.log_lr)  # (L, M)
    u_c = np.where(sel, u[None], np.nan)
    with np.errstate(invalid="ignore", divide="ignore"):
        centre = np.nan_to_num(np.where(sel, u[None], 0.0).sum(axis=-1) / sel.sum(axis=-1))
    d = np.where(sel, u[None] - centre[..., None], 0.0)
    w = np.where(sel, n, 0.0)
    y = np.where(sel, means, 0.0)
    x = np.stack([np.ones_like(d), d, d**2], axis=-1)  # (B, L, M, 3)
    xtwx = np.einsum("blmp,blm,blmq->blpq", x, w, x)
    xtwy = np.einsum("blmp,blm,blm->blp", x, w, y)
    n_pts = sel.sum(axis=-1)
    good = n_pts >= min(PER_LAMBDA_POINTS, n_m)
    good &= n_pts >= PER_LAMBDA_POINTS
    xtwx = np.where(good[..., None, None], xtwx, np.eye(3))
    det = np.linalg.det(xtwx)
    good &= np.abs(det) > 1e-12
    xtwx = np.where(good[..., None, None], xtwx, np.eye(3))
    inv = np.linalg.inv(xtwx)
    coef = np.einsum("blpq,blq->blp", inv, xtwy)
    a1, a2 = coef[..., 1], coef[..., 2]
    umin = np.nanmin(np.where(sel, u_c, np.inf), axis=-1)
    umax = np.nanmax(np.where(sel, u_c, -np.inf), axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        vertex = -a1 / (2 * a2)
        log_opt = centre + vertex
        ok = good & (a2 > 0) & (log_opt >= umin) & (log_opt <= umax)
        # Delta method with the noise known from the seeds: Var(coef) = σ²·(XᵀNX)⁻¹.
        g1 = -1 / (2 * a2)
        g2 = a1 / (2 * a2**2)
        var = sigma**2 * (
            g1**2 * inv[..., 1, 1] + 2 * g1 * g2 * inv[..., 1, 2] + g2**2 * inv[..., 2, 2]
        )
        se = np.sqrt(np.clip(var, 0, None))
    log_opt = np.where(ok, log_opt, np.nan)
    se = np.where(ok & (se > 0), se, np.nan)
    # Weighted regression of log η* on log λ.
    v = panel.log_wd[None, :] * np.ones((b_n, 1))
    wt = np.where(np.isfinite(log_opt) & np.isfinite(se), 1 / se**2, 0.0)
    cnt = (wt > 0).sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        sw = wt.sum(axis=-1)
        vm = (wt * v).sum(axis=-1) / sw
        ym = (wt * np.nan_to_num(log_opt)).sum(axis=-1) / sw
        sxy = (wt * (v - vm[:, None]) * (np.nan_to_num(log_opt) - ym[:, None])).sum(axis=-1)
        sxx = (wt * (v - vm[:, None]) ** 2).sum(axis=-1)
        slope = sxy / sxx
        k = np.where(cnt >= 2, -slope, np.nan)
        intercept = np.where(cnt >= 2, ym - slope * vm, np.nan)
    return PerLambdaFit(log_opt, se, n_pts.astype(np.int64), k, intercept)


# --- both at once --------------------------------------------------------------------


@dataclass(frozen=True)
class Replicates:
    """Both estimators on each replicate (B,), with the full-data fits' details."""

    joint: JointFit
    per_lambda: PerLambdaFit
    band: Band

    def k(self, name: str) -> FloatArray:
        return self.joint.k if name == JOINT else self.per_lambda.k


def fit_replicates(
    panel: Panel,
    weights: FloatArray,
    sigma: float,
    which: Sequence[str] = ESTIMATORS,
    rows: BoolArray | None = None,
) -> Replicates:
    """Every estimator in ``which`` on every replicate of ``weights`` (others: NaN); ``rows``:
    see :func:`select_band`."""
    means, n = replicate_means(panel, weights)
    band = select_band(means, n, sigma, rows=rows)
    b_n = means.shape[0]
    nan = np.full(b_n, np.nan)
    joint = joint_fit(panel, means, n, band)
    if PER_LAMBDA in which:
        per = per_lambda_fit(panel, means, n, band, sigma)
    else:
        n_l = panel.shape[0]
        empty = np.full((b_n, n_l), np.nan)
        per = PerLambdaFit(empty, empty, np.zeros((b_n, n_l), np.int64), nan, nan)
    return Replicates(joint, per, band)


# --- k with its intervals -------------------------------------------------------------------


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
    full = fit_replicates(panel, full_weights(panel), sig, which)
    if source == "second differences":
        # The curve's curvature inflates the second differences: once the joint fit has
        # residuals, their sd (per trial) is the better noise estimate.
        j = full.joint
        if j.dof[0] > 0 and math.isfinite(j.stderr[0]):
            resid_sd = _residual_sd(panel, full)
            if math.isfinite(resid_sd) and 0 < resid_sd < sig:
                sig, source = resid_sd, "joint-fit residuals"
                full = fit_replicates(panel, full_weights(panel), sig, which)
    has = panel.present.any(axis=1)
    clusters = int(has.sum()) if panel.independent_rows else int(has.any(axis=0).sum())
    per_cluster = int(has.sum(axis=1).max()) if panel.independent_rows else clusters
    out: dict[str, Interval] = {}
    if per_cluster >= 2:
        kind = JACKKNIFE if interval == JACKKNIFE else BOOTSTRAP
        rng = np.random.default_rng(seed)
        w, strata = cluster_weights(panel, kind, resamples, rng)
        reps = fit_replicates(panel, w, sig, which, rows=full.band.rows[0])
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
    "ESTIMATORS",
    "JOINT",
    "PER_LAMBDA",
    "PER_LAMBDA_POINTS",
    "JointFit",
    "KResult",
    "PerLambdaFit",
    "Replicates",
    "estimate_k",
    "fit_replicates",
    "joint_fit",
    "per_lambda_fit",
]
