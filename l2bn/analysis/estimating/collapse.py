"""The primary estimate of k (analyze v3): the whole error surface collapses onto one curve.

By the symmetry of scale-invariant training, a run that has forgotten its initial weights has
validation error F(η·λ^k): k = 1 (SGD family, AdamW), ½ (Adam/RMSProp with coupled L2). So the
whole surface, every non-diverged cell of every λ row, is one curve in x = log η + k·log λ, and
k is the value that puts the rows on it. The steep high-η wall carries most of that
information; the flat floor around η* carries little (docs/method.md).

* **Model.** y = T(x) over the cells (seed means, weighted by their seed counts), T a
  penalized cubic B-spline (:mod:`~l2bn.analysis.estimating.template`): knots one η step of the
  grid apart (:data:`KNOTS_PER_STEP`), on one lattice for every k, and a second-difference
  penalty α. **How flexible**: the smoothest α of :data:`SMOOTHINGS` whose curves fit each λ
  row's own valley within its noise (:func:`choose_smoothing`, the discrepancy principle, χ² at
  99 %), chosen once on the full data and held for every replicate. At the noise of real runs
  that is the smoothest, α = 1; a valley sharper than the grid gets a more flexible curve.
  Not chosen by Mallows' Cp or by leaving a λ row out: the calibration (docs/method.md) found
  those follow the noise, study by study, and the interval then under-covers (0.85–0.91),
  because the jackknife holds the choice fixed. No per-λ level offsets: the theory has none, and the
  calibration found they widen the interval (adam's valley: median width 0.15 against 0.12)
  without making it robust to a deformed row. The fit is robust (Huber, :data:`HUBER`
  cell-noise sds, :data:`IRLS_STEPS` reweightings): a few cells that remember w₀ weigh less.
* **k** minimizes the fit's loss over a scan of ``k_bounds`` (coarse, then in steps of
  :data:`K_STEP` around the minimum, :func:`profile_k`), refined by a parabola through the
  best three; a minimum on a bound is no estimate (NaN, and the reason says so).
* **Interval**: the delete-one-cluster jackknife with a Student-t quantile
  (:mod:`~l2bn.analysis.estimating.intervals`: the seed with shared seeds, the (λ, seed) pair
  with independent rows); every replicate refits k with the same rows. With one seed no cluster
  exists: the interval is then none (NaN), never one that treats cells as independent.
* **Lack of collapse** (:func:`row_tests`): each row against the curve the other rows define
  (k refitted without it), cell by cell, t-tests with the noise of the row's cell means (the
  seeds' pooled variance), of the curve (a jackknife over the other rows' clusters) and the
  curve's own misfit beyond the noise, Bonferroni over every cell tested (cells more than half
  a step beyond the other rows' span of x are not tested). **The rule** (:func:`collapse_fit`):
  a failing row is left out, the worst first, and the fit and tests repeat, while at least 3
  rows and more than half of them remain; a group that would need more is "does not collapse".

Everything runs on replicates at once (:func:`l2bn.analysis.estimating.panel.replicate_means`).
NumPy and SciPy only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

from l2bn.analysis.estimating.intervals import Interval, cluster_weights, jackknife_interval
from l2bn.analysis.estimating.panel import (
    BoolArray,
    FloatArray,
    IntArray,
    Panel,
    full_weights,
    replicate_means,
)
from l2bn.analysis.estimating.template import (
    Lattice,
    evaluate,
    normal_bands,
    penalty_bands,
    solve_bands,
)

# The template's flexibility (stated in the README's method and tested by the calibration):
KNOTS_PER_STEP = 1.0  # knots per η step of the grid (the median step between a row's η)
SMOOTHING = 1.0  # α of the penalty α·m̄·Σ(Δ²c)², m̄ the mean cell weight (seed count)
SMOOTHINGS = (1.0, 0.1, 0.01)  # the penalties choose_smoothing tries, smoothest first
HUBER = 2.0  # cells beyond this many cell-noise sds from T weigh c/|z| (Huber)
IRLS_STEPS = 2  # reweightings after the least-squares start
K_STEP = 0.025  # the profile's scan step in k
LACK_LEVEL = 0.05  # the lack-of-collapse tests' family-wise level (Bonferroni over cells)

COLLAPSES = "collapses"
PARTIAL = "collapses without some rows"
NOT_COLLAPSED = "does not collapse"
UNTESTED = "untested"
STATUSES = (COLLAPSES, PARTIAL, NOT_COLLAPSED, UNTESTED)


# --- the surface: a panel's cells, flattened ----------------------------------------------


@dataclass(frozen=True)
class Surface:
    """The cells of a panel that enter the collapse: flat arrays over N cells."""

    panel: Panel
    row: IntArray  # (N,) λ row of each cell
    col: IntArray  # (N,) η column
    u: FloatArray  # (N,) log η
    v: FloatArray  # (N,) log λ − its mean over the rows
    step: float  # the grid's median η step (natural log)
    lattice: Lattice  # knots for every k in the scan

    @property
    def n_rows(self) -> int:
        return self.panel.shape[0]

    def x(self, k: FloatArray) -> FloatArray:
        """log η + k·(log λ − mean): k (...,) → (..., N)."""
        return self.u + np.asarray(k)[..., None] * self.v

    def data(
        self, weights: FloatArray, rows: BoolArray | None = None
    ) -> tuple[FloatArray, FloatArray]:
        """Cell means y and seed counts m of each replicate (B, N); cells of rows not in
        ``rows`` get weight 0."""
        means, n = replicate_means(self.panel, weights)
        y = means[:, self.row, self.col]
        m = n[:, self.row, self.col]
        ok = np.isfinite(y) & (m > 0)
        if rows is not None:
            ok &= rows[self.row][None, :]
        return np.where(ok, y, 0.0), np.where(ok, m, 0.0)


def surface(panel: Panel, k_bounds: tuple[float, float]) -> Surface | None:
    """The panel's cells as a :class:`Surface`; None with fewer than 2 rows holding cells."""
    present = panel.present.any(axis=-1) & np.isfinite(panel.log_lr)
    row, col = np.nonzero(present)
    if np.unique(row).size < 2:
        return None
    u = panel.log_lr[row, col]
    v_all = panel.log_wd - panel.log_wd.mean()
    v = v_all[row]
    steps = np.diff(panel.log_lr, axis=1)
    steps = steps[np.isfinite(steps) & (steps > 0)]
    step = float(np.median(steps)) if steps.size else 1.0
    lo = min(float(np.min(u + k * v)) for k in k_bounds)
    hi = max(float(np.max(u + k * v)) for k in k_bounds)
    lattice = Lattice.covering(lo, hi, step / KNOTS_PER_STEP)
    return Surface(panel, row.astype(np.int64), col.astype(np.int64), u, v, step, lattice)


# --- the robust penalized fit, batched ------------------------------------------------------


def _fit(
    s: Surface,
    x: FloatArray,
    y: FloatArray,
    m: FloatArray,
    sigma: float,
    smoothing: float | None = None,
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """The Huber P-spline fit for each batch entry: x (..., N); y, m broadcast against it.
    Returns (coefficients (..., size), fitted T at the cells (..., N), loss (...))."""
    shape = np.broadcast_shapes(x.shape, y.shape, m.shape)
    first, values = s.lattice.basis(np.broadcast_to(x, shape))
    y = np.broadcast_to(y, shape)
    m = np.broadcast_to(m, shape)
    mean_weight = m.sum(axis=-1) / np.maximum((m > 0).sum(axis=-1), 1)
    alpha = SMOOTHING if smoothing is None else smoothing
    penalty = alpha * mean_weight[..., None, None] * penalty_bands(s.lattice.size)
    weights = m
    scale = sigma if math.isfinite(sigma) and sigma > 0 else 1.0
    for step in range(IRLS_STEPS + 1):
        bands, rhs = normal_bands(first, values, weights, y, s.lattice.size)
        coef = solve_bands(bands + penalty, rhs)
        fitted = evaluate(first, values, coef)
        z = np.abs(y - fitted) * np.sqrt(m) / scale
        if step < IRLS_STEPS:
            weights = m * np.where(z <= HUBER, 1.0, HUBER / np.maximum(z, 1e-300))
    rho = np.where(z <= HUBER, z * z, 2 * HUBER * z - HUBER * HUBER)
    loss = np.sum(np.where(m > 0, rho, 0.0), axis=-1)
    return coef, fitted, loss


def scan(k_bounds: tuple[float, float], step: float = K_STEP) -> FloatArray:
    """The k values of a scan of ``k_bounds`` in steps of about ``step``, both bounds in."""
    lo, hi = k_bounds
    n = max(round((hi - lo) / step), 2)
    return np.linspace(lo, hi, n + 1)


COARSE = 4  # the first pass scans in steps of COARSE·K_STEP, the second ±COARSE·K_STEP


def profile_k(
    s: Surface,
    weights: FloatArray,
    sigma: float,
    k_bounds: tuple[float, float],
    rows: BoolArray | None = None,
    smoothing: float | None = None,
) -> tuple[FloatArray, BoolArray]:
    """k of every replicate of ``weights`` (B, L, M or 1, S), over the cells of ``rows``:
    (k (B,), on a bound (B,)); NaN where fewer than 2 rows hold cells or on a bound.

    Two passes: the whole range in steps of COARSE·K_STEP, then each replicate's own
    neighbourhood of its minimum, ±COARSE·K_STEP in steps of K_STEP, refined by a parabola
    (a third of the fits of one fine pass over the range, the same k to ±0.002 on the
    calibration's studies).
    """
    y, m = s.data(weights, rows)
    coarse = scan(k_bounds, COARSE * K_STEP)
    _, _, loss = _fit(s, s.x(coarse)[None], y[:, None, :], m[:, None, :], sigma, smoothing)
    i = np.argmin(np.where(np.isfinite(loss), loss, np.inf), axis=-1)
    bound = (i == 0) | (i == coarse.size - 1)
    offsets = K_STEP * np.arange(-COARSE, COARSE + 1)
    fine = np.clip(coarse[i][:, None] + offsets[None, :], k_bounds[0], k_bounds[1])  # (B, F)
    _, _, loss = _fit(s, s.x(fine), y[:, None, :], m[:, None, :], sigma, smoothing)
    j = np.argmin(np.where(np.isfinite(loss), loss, np.inf), axis=-1)
    inner = np.clip(j, 1, offsets.size - 2)
    r0, r1, r2 = (np.take_along_axis(loss, (inner + d)[:, None], axis=-1)[:, 0] for d in (-1, 0, 1))
    with np.errstate(invalid="ignore", divide="ignore"):
        den = r0 - 2 * r1 + r2
        shift = np.where(den > 0, 0.5 * (r0 - r2) / den, 0.0)
    k = np.take_along_axis(fine, inner[:, None], axis=-1)[:, 0] + np.clip(shift, -1, 1) * K_STEP
    at_edge = np.take_along_axis(fine, j[:, None], axis=-1)[:, 0]
    bound |= (at_edge <= k_bounds[0]) | (at_edge >= k_bounds[1]) | ~np.isfinite(loss).all(-1)
    enough = np.array([np.unique(s.row[mm > 0]).size >= 2 for mm in m])
    return np.where(enough & ~bound, k, np.nan), bound & enough


def template(
    s: Surface,
    weights: FloatArray,
    sigma: float,
    k: FloatArray,
    rows: BoolArray | None = None,
    smoothing: float | None = None,
) -> FloatArray:
    """The fitted template's coefficients at each replicate's own k: (B, size)."""
    y, m = s.data(weights, rows)
    x = s.x(np.nan_to_num(k))  # (B, N)
    coef, _, _ = _fit(s, x, y, m, sigma, smoothing)
    return coef


# --- lack of collapse ----------------------------------------------------------------------


@dataclass(frozen=True)
class RowTest:
    """One λ row against the curve the other rows define."""

    row: int
    p_value: float  # Bonferroni-adjusted over every cell tested in the group; NaN: untested
    worst_z: float  # the row's largest |t| (signed): cell mean minus template, in noise sds
    worst_col: int  # its η column (−1: none)
    n_tested: int  # cells compared (those within the other rows' span of x)
    k_without: float  # k fitted without this row


def row_tests(
    s: Surface,
    sigma: float,
    k_bounds: tuple[float, float],
    rows: BoolArray,
    k_all: float,
    smoothing: float | None = None,
) -> list[RowTest]:
    """Test every row of ``rows`` (see the module docstring); empty without seeds to pool."""
    panel = s.panel
    n = panel.present.sum(axis=-1)
    multi = n >= 2
    if not multi.any():
        return []
    var = np.nanvar(np.where(panel.present, panel.values, np.nan)[multi], axis=-1, ddof=1)
    dof_cells = float((n[multi] - 1).sum())
    s2 = float(np.sum(var * (n[multi] - 1)) / dof_cells)
    jack, strata = cluster_weights(panel, "jackknife")
    y_all, m_all = s.data(full_weights(panel), rows)
    coef_all = template(s, full_weights(panel), sigma, np.array([k_all]), rows, smoothing)[0]
    excess, excess_row = _misfit(s, y_all[0], m_all[0], rows, k_all, coef_all, s2, smoothing)
    raw: list[tuple[int, FloatArray, FloatArray, IntArray, float]] = []
    for row in np.flatnonzero(rows):
        others = rows.copy()
        others[row] = False
        use = strata != row if panel.independent_rows else np.ones(strata.size, dtype=bool)
        weights = np.concatenate([full_weights(panel) * np.ones_like(jack[:1]), jack[use]])
        k = np.full(weights.shape[0], k_all)
        if others.sum() >= 2:  # else one other row: no k without this one, the group's k
            k_without, _ = profile_k(s, weights, sigma, k_bounds, others, smoothing)
            if math.isfinite(k_without[0]):  # else (on a bound) the group's k
                k = np.where(np.isfinite(k_without), k_without, k_all)
        coef = template(s, weights, sigma, k, others, smoothing)
        mine = np.flatnonzero(s.row == row)
        x_mine = s.x(np.nan_to_num(k))[:, mine]  # (B, n_l)
        first, values = s.lattice.basis(x_mine)
        pred = evaluate(first, values, coef)  # (B, n_l)
        x_others = s.x(k[0])[np.isin(s.row, np.flatnonzero(others))]
        # Cells within half an η step of the other rows' span: the row's end cells are where
        # memory of w₀ shows (the low-η side), and k without the row moves them a little.
        inside = (x_mine[0] >= x_others.min() - s.step / 2) & (
            x_others.max() + s.step / 2 >= x_mine[0]
        )
        y, m = s.data(full_weights(panel))
        reps = pred[1:][np.isfinite(k[1:])]
        g = reps.shape[0]
        if g >= 2:
            v_t = (g - 1) / g * np.sum((reps - reps.mean(axis=0)) ** 2, axis=0)
            dof_t = float(max(g - (int(others.sum()) if panel.independent_rows else 1), 1))
        else:
            v_t, dof_t = np.zeros(mine.size), 1.0
        misfit = max(float(np.mean(excess[excess_row != row])), 0.0)
        v_y = s2 / np.maximum(m[0, mine], 1e-300) + misfit
        with np.errstate(invalid="ignore", divide="ignore"):
            z = (y[0, mine] - pred[0]) / np.sqrt(v_y + v_t)
            dof = (v_y + v_t) ** 2 / (v_y**2 / dof_cells + v_t**2 / dof_t)
        ok = inside & (m[0, mine] > 0) & np.isfinite(z)
        raw.append((int(row), z[ok], dof[ok], s.col[mine][ok], float(k[0])))
    total = sum(r[1].size for r in raw)
    out = []
    for row_i, z_i, dof_i, cols_i, k_i in raw:
        if z_i.size == 0:
            out.append(RowTest(row_i, math.nan, math.nan, -1, 0, k_i))
            continue
        p = 2 * stats.t.sf(np.abs(z_i), dof_i) * total
        i = int(np.argmin(p))
        out.append(RowTest(row_i, float(min(p[i], 1.0)), float(z_i[i]), int(cols_i[i]),
                           int(z_i.size), k_i))  # fmt: skip
    return out


def _misfit(
    s: Surface,
    y: FloatArray,
    m: FloatArray,
    rows: BoolArray,
    k: float,
    coef: FloatArray,
    s2: float,
    smoothing: float | None = None,
) -> tuple[FloatArray, IntArray]:
    """The curve's own error of prediction beyond the noise, per cell of ``rows``, with each
    cell's row: each cell predicted without itself by the curve of every row (least-squares
    leave-one-out, r/(1 − h)), the excess of its squared error over its noise, σ²/(m·(1 − h)).
    The test of a row takes the mean over the other rows' cells, floored at 0: a valley sharper
    than the curve can follow shows there at low noise, and a row must deviate more than that.
    The curve of every row, not of the other rows alone (from two rows the estimate was too
    noisy to use), and not the tested row's own cells (a deformed row would hide itself)."""
    cells = np.isin(s.row, np.flatnonzero(rows)) & (m > 0)
    x = s.x(np.asarray(k))[cells]
    first, values = s.lattice.basis(x)
    w = m[cells]
    h = _leverage(s, first, values, w, smoothing)
    resid = (y[cells] - evaluate(first, values, coef)) / (1 - h)
    excess = resid**2 - s2 / (w * (1 - h))
    return excess, s.row[cells]


def _leverage(
    s: Surface, first: IntArray, values: FloatArray, w: FloatArray, smoothing: float | None
) -> FloatArray:
    """The least-squares fit's leverages h_i (the hat matrix's diagonal) at the given cells."""
    bands, _ = normal_bands(first, values, w, np.zeros_like(w), s.lattice.size)
    mean_weight = w.sum() / max(w.size, 1)
    alpha = SMOOTHING if smoothing is None else smoothing
    bands = bands + alpha * mean_weight * penalty_bands(s.lattice.size)
    unit = np.zeros((first.size, s.lattice.size))
    np.put_along_axis(unit, first[:, None] + np.arange(4), values, axis=1)
    solved = solve_bands(np.broadcast_to(bands, (first.size, *bands.shape)), unit)
    return np.asarray(np.clip(w * np.sum(unit * solved, axis=1), 0.0, 0.99), dtype=np.float64)


def choose_smoothing(s: Surface, sigma: float, rows: BoolArray) -> float:
    """The smoothest penalty of :data:`SMOOTHINGS` whose curves fit each λ row's own valley
    within its noise (the discrepancy principle): every row fitted alone, in log η, by a curve
    of that penalty; Σ m·r²/σ² over the rows within the 99th percentile of χ² on Σ (N − edf)
    degrees of freedom. Each row alone, not the collapse: a row that does not collapse must not
    buy the curve the flexibility to follow it. A valley sharper than the grid gets a more
    flexible curve; at the noise of real runs the smoothest fits (calibration)."""
    y, m = s.data(full_weights(s.panel), rows)
    if not (math.isfinite(sigma) and sigma > 0):
        return SMOOTHINGS[0]
    for alpha in SMOOTHINGS:
        chi2, dof = 0.0, 0.0
        for row in np.flatnonzero(rows):
            cells = (s.row == row) & (m[0] > 0)
            if cells.sum() < 3:
                continue
            first, values = s.lattice.basis(s.u[cells])
            w, yy = m[0][cells], y[0][cells]
            bands, rhs = normal_bands(first, values, w, yy, s.lattice.size)
            mean_weight = w.sum() / w.size
            coef = solve_bands(bands + alpha * mean_weight * penalty_bands(s.lattice.size), rhs)
            chi2 += float(np.sum(w * (yy - evaluate(first, values, coef)) ** 2)) / sigma**2
            dof += w.size - float(np.sum(_leverage(s, first, values, w, alpha)))
        if dof > 0 and chi2 <= stats.chi2.ppf(0.99, dof):
            return alpha
    return SMOOTHINGS[-1]


# --- the primary, with its rule ---------------------------------------------------------------


@dataclass(frozen=True)
class CollapseResult:
    """What :func:`collapse_fit` found: k with its interval over the rows the rule kept, the
    tests that kept them, and the fitted template at k."""

    interval: Interval
    status: str  # one of STATUSES
    rows: BoolArray  # (L,) rows in the final fit
    tests: tuple[RowTest, ...]  # of the final fit's rows, and of each row left out when it went
    left_out: tuple[int, ...]  # rows the rule left out, in order
    lattice: Lattice
    coef: FloatArray  # the template at the final k (size,)
    on_bound: bool  # the full fit's minimum lay on a bound of k_bounds
    n_cells: int
    reason: str | None  # why there is no estimate or no interval
    smoothing: float = SMOOTHING  # the penalty choose_smoothing chose


def collapse_fit(
    panel: Panel,
    sigma: float,
    confidence: float = 0.95,
    k_bounds: tuple[float, float] = (-1.0, 2.5),
    rows: BoolArray | None = None,
    test: bool = True,
    smoothing: float | None = None,
) -> CollapseResult | None:
    """The primary k of ``panel`` (see the module docstring); None with fewer than 2 rows.

    ``rows``: the rows to start from (default: every row with ≥ 3 cells); ``test``: run the
    lack-of-collapse tests and the rule (k over training skips them); ``smoothing``: the
    penalty (default: :func:`choose_smoothing` on the full data, then held for every replicate
    and test).
    """
    s = surface(panel, k_bounds)
    if s is None:
        return None
    counts = np.bincount(s.row, minlength=s.n_rows)
    use = (counts >= 3) if rows is None else rows & (counts >= 3)
    if use.sum() < 2:
        return None
    full = full_weights(panel)
    alpha = choose_smoothing(s, sigma, use) if smoothing is None else smoothing
    left_out: list[int] = []
    tests: dict[int, RowTest] = {}
    status = UNTESTED
    while True:
        k, bound = profile_k(s, full, sigma, k_bounds, use, alpha)
        if not test:
            break
        if not math.isfinite(k[0]):
            # With rows already left out, what remains no longer determines k: the rows do
            # not collapse; without, k itself is missing (a bound) and nothing was tested.
            status = NOT_COLLAPSED if left_out else UNTESTED
            break
        found = row_tests(s, sigma, k_bounds, use, float(k[0]), alpha)
        if not found:
            break
        tests.update({t.row: t for t in found})
        failed = [t for t in found if t.p_value < LACK_LEVEL]
        if not failed:
            status = PARTIAL if left_out else COLLAPSES
            break
        remaining = int(use.sum()) - 1
        if remaining < 3 or remaining <= s.n_rows / 2:
            status = NOT_COLLAPSED
            break
        worst = min(failed, key=lambda t: t.p_value)
        use = use.copy()
        use[worst.row] = False
        left_out.append(worst.row)
    k_hat = float(k[0])
    reason = None
    if bool(bound[0]):
        reason = f"the profile's minimum lies on a bound of k ∈ [{k_bounds[0]:g}, {k_bounds[1]:g}]"
    coef = template(s, full, sigma, np.array([k_hat]), use, alpha)[0]
    method = (
        "collapse/(λ, seed)-jackknife-t" if panel.independent_rows else "collapse/seed-jackknife-t"
    )
    has = np.asarray(panel.present.any(axis=1))[use]  # (rows used, S)
    per_cluster = (
        int(has.sum(axis=1).min()) if panel.independent_rows else int(has.any(axis=0).sum())
    )
    if not math.isfinite(k_hat):
        interval = Interval(math.nan, math.nan, math.nan, math.nan, math.nan, method)
    elif per_cluster < 2:
        interval = Interval(k_hat, math.nan, math.nan, math.nan, math.nan, "collapse/none")
        reason = reason or "1 seed per cell: no independent clusters to resample, no interval"
    else:
        weights, strata = cluster_weights(panel, "jackknife")
        keep = use[strata] if panel.independent_rows else np.ones(strata.size, dtype=bool)
        reps, rep_bound = profile_k(s, weights[keep], sigma, k_bounds, use, alpha)
        interval = jackknife_interval(k_hat, reps, strata[keep], confidence, method)
        if rep_bound.any():
            reason = reason or "a jackknife replicate's minimum lies on a bound of k: no interval"
    n_cells = int(use[s.row].sum())
    return CollapseResult(interval, status, use, tuple(tests[r] for r in sorted(tests)),
                          tuple(left_out), s.lattice, coef, bool(bound[0]), n_cells,
                          reason, alpha)  # fmt: skip


def template_curve(result: CollapseResult, x: FloatArray) -> FloatArray:
    """The fitted template T at ``x`` (NaN outside its lattice)."""
    lat = result.lattice
    first, values = lat.basis(x)
    out = evaluate(first, values, result.coef)
    inside = (x >= lat.origin) & (x <= lat.origin + (lat.size - 3) * lat.h)
    return np.where(inside, out, np.nan)


__all__ = [
    "COLLAPSES",
    "HUBER",
    "IRLS_STEPS",
    "KNOTS_PER_STEP",
    "K_STEP",
    "LACK_LEVEL",
    "NOT_COLLAPSED",
    "PARTIAL",
    "SMOOTHING",
    "STATUSES",
    "UNTESTED",
    "CollapseResult",
    "RowTest",
    "Surface",
    "collapse_fit",
    "profile_k",
    "row_tests",
    "scan",
    "surface",
    "template",
    "template_curve",
]
