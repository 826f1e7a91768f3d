"""Estimators of k in η* ∝ λ^-k and their intervals: pure NumPy/SciPy, batched over replicates.

A group's trials become a :class:`Panel`: rows λ, each row's own η grid (padded with NaN), and
seed slots. Every estimator takes *replicates* of the panel's cell means at once (arrays with
a leading axis B), so that one call fits the full data, every jackknife leave-one-out and every
bootstrap resample; the calibration simulation (tests/analysis/test_calibration.py) runs
planted panels through exactly these functions.

Estimators (all on the cells of a *band* near each λ's minimum, :func:`select_band`):

* **joint** (primary, :func:`joint_fit`): one weighted least-squares fit over every used λ of
  ``y = c_λ + β₂·u² + g₀·u + g₁·u·v`` with u = log η (centred), v = log λ (centred) and a
  free offset c_λ per λ. That is a parabola in x = log η + k·log λ with a common curvature and
  k = g₁ / (2·β₂), linear in its coefficients: no search, no grid locking.
* **per_lambda** (cross-check a, :func:`per_lambda_fit`): η* per λ by a weighted local
  quadratic over ≥ :data:`PER_LAMBDA_POINTS` cells around the minimum (its own delta-method
  CI from the cells' noise), then weighted regression of log η* on log λ.
* **collapse_band** (cross-check b, :func:`collapse_band_fit`): the k whose
  x = log η + k·log λ puts the band's cells on one quadratic, without per-λ offsets.

Band: cells whose mean is within :data:`BAND_C` noise sds (of the difference of two cell
means) of the row's minimum, contiguous around it, and at least the minimum and its two
neighbours. Rows are left out when their minimum is on the grid's edge or their error range
is no larger than noise alone gives (:func:`noise_range`, flat: nothing to locate).

Intervals (:func:`cluster_weights`, :func:`jackknife_estimate`, :func:`bootstrap_estimate`):
the resampling unit is what is independent. Cells that share a seed share w₀ and batch order,
so their errors are correlated across λ: the unit is the seed (all its cells), or, where no
seed value is shared between λ rows (:attr:`Panel.independent_rows`), the (λ, seed) pair.
The default interval is the delete-one-cluster jackknife with a Student-t quantile on
S − 1 degrees of freedom (Satterthwaite's over λ strata for independent rows); the calibration
simulation chose it over the cluster bootstrap, which under-covers with 2–4 seeds (a
percentile interval from 3–35 distinct resamples). With one seed neither exists: the joint
fit's delta-method t-interval on its residual dof sees grid and fit noise only.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy import stats

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]
IntArray = npt.NDArray[np.int64]

# A cell is in the band when its mean is within BAND_C sds of the difference of two cell means
# above the row's minimum: ~95 % of the cells whose true error equals the minimum's get in.
BAND_C = 2.0
# A row whose error range is below what pure noise gives in 95 % of rows of its size (the
# range of M independent cell means, in cell-mean noise sds: 3.3 for 3 cells, 4.2 for 7,
# 4.6 for 11) has no minimum to locate: its argmin is noise.
FLAT_QUANTILE = 0.95
# The per-λ local quadratic uses at least this many η values (rows with fewer are left out).
PER_LAMBDA_POINTS = 5
# The collapse in the band: a quadratic master curve (the band is a few cells per λ).
BAND_DEGREE = 2

JOINT = "joint"
PER_LAMBDA = "per_lambda"
COLLAPSE_BAND = "collapse_band"
ESTIMATORS = (JOINT, PER_LAMBDA, COLLAPSE_BAND)

JACKKNIFE = "jackknife"
BOOTSTRAP = "bootstrap"
INTERVALS = (JACKKNIFE, BOOTSTRAP)


# --- the panel ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Panel:
    """A group's trials on a dense grid.

    ``values[l, m, s]``: the metric of the trial at λ row l, η column m (row l's grid is
    ``log_lr[l]``, NaN-padded on the right), seed slot s; NaN where there is no trial. With
    shared seeds, slot s is the same seed value in every row; with independent rows, slot s
    of row l is that row's s-th seed (seeds of different rows are independent).
    """

    weight_decay: FloatArray  # (L,) λ > 0, increasing
    log_lr: FloatArray  # (L, M)
    values: FloatArray  # (L, M, S)
    independent_rows: bool

    @property
    def log_wd(self) -> FloatArray:
        return np.log(self.weight_decay)

    @property
    def shape(self) -> tuple[int, int, int]:
        n_l, n_m, n_s = self.values.shape
        return int(n_l), int(n_m), int(n_s)

    @property
    def present(self) -> BoolArray:
        return np.isfinite(self.values)

    @property
    def n_seeds(self) -> int:
        """Seeds per cell, the median over cells with any trial."""
        counts = self.present.sum(axis=-1)
        return int(np.median(counts[counts > 0])) if (counts > 0).any() else 0


def build_panel(
    weight_decay: Sequence[float],
    lr: Sequence[float],
    seed: Sequence[int],
    value: Sequence[float],
) -> Panel:
    """A :class:`Panel` from one record per trial (λ > 0 only; the caller filters).

    Several trials of one (λ, η, seed) are averaged. The rows are independent when no seed
    value occurs in two λ rows.
    """
    wd = np.asarray(weight_decay, dtype=np.float64)
    lr_a = np.asarray(lr, dtype=np.float64)
    sd = np.asarray(seed, dtype=np.int64)
    val = np.asarray(value, dtype=np.float64)
    wds = np.unique(wd)
    rows = [np.unique(lr_a[wd == w]) for w in wds]
    seeds_per_row = [set(sd[wd == w].tolist()) for w in wds]
    shared = any(
        seeds_per_row[i] & seeds_per_row[j] for i in range(len(wds)) for j in range(i + 1, len(wds))
    )
    independent = len(wds) > 1 and not shared
    if independent:
        slot_of = [{s: i for i, s in enumerate(sorted(r))} for r in seeds_per_row]
        n_s = max(len(r) for r in seeds_per_row)
    else:
        all_seeds = sorted(set(sd.tolist()))
        common = {s: i for i, s in enumerate(all_seeds)}
        slot_of = [common for _ in wds]
        n_s = len(all_seeds)
    n_m = max(r.size for r in rows)
    log_lr = np.full((wds.size, n_m), np.nan)
    total = np.zeros((wds.size, n_m, n_s))
    count = np.zeros((wds.size, n_m, n_s))
    for i, r in enumerate(rows):
        log_lr[i, : r.size] = np.log(r)
    row_of = np.searchsorted(wds, wd)
    for t in range(val.size):
        i = int(row_of[t])
        m = int(np.searchsorted(rows[i], lr_a[t]))
        s = slot_of[i][int(sd[t])]
        total[i, m, s] += val[t]
        count[i, m, s] += 1
    with np.errstate(invalid="ignore", divide="ignore"):
        values = np.where(count > 0, total / count, np.nan)
    return Panel(wds, log_lr, values, independent)


# --- replicates ---------------------------------------------------------------------------


def replicate_means(panel: Panel, weights: FloatArray) -> tuple[FloatArray, FloatArray]:
    """Cell means and seed counts of each replicate: ``weights`` (B, L, M or 1, S) → (B, L, M).

    A weight is how often a seed enters the replicate (0: left out; bootstrap: its count).
    """
    present = panel.present
    v0 = np.where(present, panel.values, 0.0)
    w = weights * present[None]
    n = w.sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        means = np.where(n > 0, (w * v0[None]).sum(axis=-1) / n, np.nan)
    return means, n


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


def full_weights(panel: Panel) -> FloatArray:
    _, _, n_s = panel.shape
    return np.ones((1, 1, 1, n_s))


# --- noise --------------------------------------------------------------------------------


def noise_sd(panel: Panel) -> tuple[float, str]:
    """The sd of one trial's metric, and where it came from.

    With seeds: the pooled within-cell sd (cells with ≥ 2 seeds). With one seed: from the
    second differences along each λ's η grid (robust: median absolute), which the curve's own
    curvature inflates, so the band is, if anything, too wide.
    """
    v = panel.values
    present = panel.present
    n = present.sum(axis=-1)
    multi = n >= 2
    if multi.any():
        with np.errstate(invalid="ignore"):
            var = np.nanvar(np.where(present, v, np.nan)[multi], axis=-1, ddof=1)
        dof = (n[multi] - 1).sum()
        pooled = float(np.sum(var * (n[multi] - 1)) / dof)
        return math.sqrt(pooled), "seeds"
    y = np.nanmean(np.where(present, v, np.nan), axis=-1) if present.any() else v[..., 0]
    d2 = y[:, :-2] - 2 * y[:, 1:-1] + y[:, 2:]
    d2 = d2[np.isfinite(d2)]
    if d2.size == 0:
        return math.nan, "none"
    return float(np.median(np.abs(d2)) / 0.6745 / math.sqrt(6.0)), "second differences"


# --- the band -----------------------------------------------------------------------------


@functools.lru_cache(maxsize=64)
def noise_range(m: int, quantile: float = FLAT_QUANTILE) -> float:
    """The ``quantile`` of the range of ``m`` standard normal draws (fixed-seed Monte Carlo,
    ±0.01)."""
    if m < 2:
        return 0.0
    draws = np.random.default_rng(12345).standard_normal((100_000, m))
    return float(np.quantile(draws.max(axis=1) - draws.min(axis=1), quantile))


@dataclass(frozen=True)
class Band:
    """Which cells of each replicate enter the fits (B, L, M), and which rows (B, L)."""

    mask: BoolArray
    rows: BoolArray
    argmin: IntArray  # (B, L) column of each row's minimum
    edge: BoolArray  # (B, L) minimum on the row's first or last cell with data
    flat: BoolArray  # (B, L) range within what noise alone gives (FLAT_QUANTILE)


def select_band(
    means: FloatArray,
    n: FloatArray,
    sigma: float,
    c: float = BAND_C,
    rows: BoolArray | None = None,
) -> Band:
    """The band of each row of each replicate (see the module docstring).

    ``rows`` (L,): the rows to use, decided once on the full data; replicates then locate
    each row's band again but do not drop rows (a leave-one-seed-out replicate has noisier
    means, and would call rows flat that the full data resolves).
    """
    valid = np.isfinite(means) & (n > 0)
    y = np.where(valid, means, np.inf)
    j = np.argmin(y, axis=-1)
    b_n, n_l, n_m = means.shape
    idx = np.arange(n_m)
    any_valid = valid.any(axis=-1)
    first = np.where(any_valid, np.argmax(valid, axis=-1), 0)
    last = np.where(any_valid, n_m - 1 - np.argmax(valid[..., ::-1], axis=-1), 0)
    edge = (j == first) | (j == last)
    ymin = np.take_along_axis(y, j[..., None], axis=-1)
    nmin = np.take_along_axis(n, j[..., None], axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        sd_diff = sigma * np.sqrt(1.0 / np.where(valid, n, 1.0) + 1.0 / np.maximum(nmin, 1e-12))
        within = valid & (y - ymin <= c * sd_diff)
    # Contiguous run around the minimum.
    mask = idx[None, None, :] == j[..., None]
    left = np.ones((b_n, n_l), dtype=bool)
    right = np.ones((b_n, n_l), dtype=bool)
    for d in range(1, n_m):
        li = j - d
        ri = j + d
        lin = np.take_along_axis(within, np.clip(li, 0, n_m - 1)[..., None], axis=-1)[..., 0]
        rin = np.take_along_axis(within, np.clip(ri, 0, n_m - 1)[..., None], axis=-1)[..., 0]
        left &= (li >= 0) & lin
        right &= (ri < n_m) & rin
        mask |= (idx[None, None, :] == li[..., None]) & left[..., None]
        mask |= (idx[None, None, :] == ri[..., None]) & right[..., None]
    mask |= (np.abs(idx[None, None, :] - j[..., None]) <= 1) & valid
    mask &= valid
    with np.errstate(invalid="ignore"):
        rng_row = np.where(valid, means, -np.inf).max(axis=-1) - np.where(valid, means, np.inf).min(
            axis=-1
        )
        n_med = np.array(
            [[np.median(nn[vv]) if vv.any() else 1.0 for nn, vv in zip(nb, vb, strict=True)]
             for nb, vb in zip(n, valid, strict=True)]
        )  # fmt: skip
        m_valid = valid.sum(axis=-1)
        limit = np.vectorize(noise_range, otypes=[np.float64])(m_valid)
        flat = ~(rng_row >= limit * sigma / np.sqrt(n_med))
    enough = any_valid & (valid.sum(axis=-1) >= 3)
    use = enough & ~edge & ~flat if rows is None else enough & rows[None, :]
    return Band(mask & use[..., None], use, j.astype(np.int64), edge, flat)


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


def _centres(panel: Panel) -> tuple[float, float]:
    finite = np.isfinite(panel.log_lr)
    return float(panel.log_lr[finite].mean()), float(panel.log_wd.mean())


def joint_fit(panel: Panel, means: FloatArray, n: FloatArray, band: Band) -> JointFit:
    """The primary estimator on every replicate (see the module docstring)."""
    n_l, n_m, _ = panel.shape
    u_bar, v_bar = _centres(panel)
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
    """Cross-check (a): local quadratic per λ over ≥ PER_LAMBDA_POINTS cells, then WLS."""
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


# --- the collapse in the band -------------------------------------------------------------


def collapse_band_fit(
    panel: Panel,
    means: FloatArray,
    n: FloatArray,
    band: Band,
    k_bounds: tuple[float, float],
    points: int = 141,
) -> FloatArray:
    """Cross-check (b): k minimizing the weighted RSS of one quadratic in log η + k log λ
    over the band's cells (grid over ``k_bounds``, then a parabola through the best three);
    NaN where the minimum is on the bounds or fewer than 2 rows are in the band."""
    u_bar, v_bar = _centres(panel)
    u = np.nan_to_num(panel.log_lr - u_bar)
    v = (panel.log_wd - v_bar)[:, None] * np.ones_like(u)
    ks = np.linspace(k_bounds[0], k_bounds[1], points)
    w = np.where(band.mask, n, 0.0).reshape(means.shape[0], -1)  # (B, N)
    y = np.where(band.mask, means, 0.0).reshape(means.shape[0], -1)
    xk = u.reshape(-1)[None, :] + ks[:, None] * v.reshape(-1)[None, :]  # (K, N)
    design = np.stack([np.ones_like(xk), xk, xk**2], axis=-1)  # (K, N, 3)
    xtwx = np.einsum("knp,bn,knq->bkpq", design, w, design)
    xtwy = np.einsum("knp,bn,bn->bkp", design, w, y)
    xtwx = xtwx + 1e-12 * np.eye(3)
    coef = np.linalg.solve(xtwx, xtwy[..., None])[..., 0]  # (B, K, 3)
    fitted = np.einsum("knp,bkp->bkn", design, coef)
    rss = (w[:, None, :] * (y[:, None, :] - fitted) ** 2).sum(axis=-1)  # (B, K)
    i = np.argmin(rss, axis=-1)
    inner = np.clip(i, 1, points - 2)
    r0 = np.take_along_axis(rss, (inner - 1)[:, None], axis=-1)[:, 0]
    r1 = np.take_along_axis(rss, inner[:, None], axis=-1)[:, 0]
    r2 = np.take_along_axis(rss, (inner + 1)[:, None], axis=-1)[:, 0]
    step = ks[1] - ks[0]
    with np.errstate(invalid="ignore", divide="ignore"):
        denom = r0 - 2 * r1 + r2
        shift = np.where(denom > 0, 0.5 * (r0 - r2) / denom, 0.0)
    k = ks[inner] + np.clip(shift, -1, 1) * step
    rows = band.mask.any(axis=-1).sum(axis=-1)
    on_bound = (i == 0) | (i == points - 1)
    return np.where((rows >= 2) & ~on_bound, k, np.nan)


# --- all three at once --------------------------------------------------------------------


@dataclass(frozen=True)
class Replicates:
    """The three estimators on each replicate (B,), with the full-data fits' details."""

    joint: JointFit
    per_lambda: PerLambdaFit
    collapse_band: FloatArray
    band: Band

    def k(self, name: str) -> FloatArray:
        if name == JOINT:
            return self.joint.k
        if name == PER_LAMBDA:
            return self.per_lambda.k
        return self.collapse_band


def fit_replicates(
    panel: Panel,
    weights: FloatArray,
    sigma: float,
    k_bounds: tuple[float, float] = (-1.0, 2.5),
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
    coll = collapse_band_fit(panel, means, n, band, k_bounds) if COLLAPSE_BAND in which else nan
    return Replicates(joint, per, coll, band)


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
    u_bar, v_bar = _centres(panel)
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
    "BAND_C",
    "BAND_DEGREE",
    "BOOTSTRAP",
    "COLLAPSE_BAND",
    "ESTIMATORS",
    "FLAT_QUANTILE",
    "INTERVALS",
    "JACKKNIFE",
    "JOINT",
    "PER_LAMBDA",
    "PER_LAMBDA_POINTS",
    "Band",
    "Interval",
    "JointFit",
    "KResult",
    "Panel",
    "PerLambdaFit",
    "Replicates",
    "bootstrap_interval",
    "build_panel",
    "cluster_weights",
    "collapse_band_fit",
    "estimate_k",
    "fit_replicates",
    "full_weights",
    "jackknife_interval",
    "joint_fit",
    "noise_range",
    "noise_sd",
    "per_lambda_fit",
    "replicate_means",
    "select_band",
    "t_interval",
]
