"""The whole-surface fit behind the primary k: a panel's cells as a :class:`Surface`, the
robust penalized curve T fitted in batches over replicates and values of k, the profile of k,
and how flexible T may be (:func:`choose_smoothing`). The method, and why each choice:
:mod:`l2bn.analysis.estimating.collapse` (its docstring) and docs/method.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

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
    dense,
    evaluate,
    normal_bands,
    penalized_fit,
    penalty_bands,
)

# The template's flexibility (stated in docs/method.md and tested by the calibration):
KNOTS_PER_STEP = 1.0  # knots per η step of the grid (the median step between a row's η)
SMOOTHING = 1.0  # α of the penalty α·m̄·Σ(Δ²c)², m̄ the mean cell weight (seed count)
SMOOTHINGS = (1.0, 0.1, 0.01)  # the penalties choose_smoothing tries, smoothest first
HUBER = 2.0  # cells beyond this many cell-noise sds from T weigh c/|z| (Huber)
IRLS_STEPS = 2  # reweightings after the least-squares start
K_STEP = 0.025  # the profile's scan step in k


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
    weights = m
    scale = sigma if math.isfinite(sigma) and sigma > 0 else 1.0
    for step in range(IRLS_STEPS + 1):
        coef = penalized_fit(first, values, weights, y, alpha * mean_weight, s.lattice.size)
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
# The third pass: ±2 steps of K_STEP/POLISH around the second's parabola. A parabola through
# losses 0.025 apart is off by up to ~0.003 where the loss is not quadratic at that scale (the
# template's knots move against the cells as k moves): harmless at real runs' noise (sd of k̂
# ≈ 0.04), but on a clean valley with k between lattice points it tripled the spread of k̂ and
# the interval covered 77 % (docs/calibration-table.md, planted k 0.87 and 0.63).
POLISH = 5


def profile_k(
    s: Surface,
    weights: FloatArray,
    sigma: float,
    k_bounds: tuple[float, float],
    rows: BoolArray | None = None,
    smoothing: float | None = None,
    centre: float | None = None,
) -> tuple[FloatArray, BoolArray]:
    """k of every replicate of ``weights`` (B, L, M or 1, S), over the cells of ``rows``:
    (k (B,), on a bound (B,)); NaN where fewer than 2 rows hold cells or on a bound.

    Three passes: the whole range in steps of COARSE·K_STEP, then each replicate's own
    neighbourhood of its minimum, ±COARSE·K_STEP in steps of K_STEP, refined by a parabola,
    then ±2 steps of K_STEP/POLISH around that, refined by a parabola again (:func:`_polish`).
    With ``centre`` (a k the replicates lie near: their fit's own, or
    the previous epoch's) the first pass is skipped: each replicate scans the second pass's
    window around the first pass's point nearest to it, and only a replicate whose minimum lies
    on that window's edge gets both passes.
    """
    y, m = s.data(weights, rows)
    enough = np.array([np.unique(s.row[mm > 0]).size >= 2 for mm in m])
    if centre is not None and math.isfinite(centre):
        offsets = K_STEP * np.arange(-COARSE, COARSE + 1)
        # From the first pass's point nearest the centre: the second pass's own grid, so that
        # a replicate whose minimum the first pass would have put there gets the same k.
        coarse = scan(k_bounds, COARSE * K_STEP)
        start = coarse[np.argmin(np.abs(coarse - centre))]
        grid = np.clip(start + offsets, k_bounds[0], k_bounds[1])
        k, j, bound = _refine(s, grid[None, :].repeat(y.shape[0], 0), y, m, sigma, k_bounds,
                              smoothing)  # fmt: skip
        redo = ((j == 0) | (j == offsets.size - 1)) & ~bound
        keep = ~redo & ~bound
        k[keep] = _polish(s, k[keep], y[keep], m[keep], sigma, k_bounds, smoothing)
        if redo.any():
            k[redo], bound[redo] = profile_k(s, weights[redo], sigma, k_bounds, rows, smoothing)
        return np.where(enough & ~bound, k, np.nan), bound & enough
    coarse = scan(k_bounds, COARSE * K_STEP)
    _, _, loss = _fit(s, s.x(coarse)[None], y[:, None, :], m[:, None, :], sigma, smoothing)
    i = np.argmin(np.where(np.isfinite(loss), loss, np.inf), axis=-1)
    on_bound = (i == 0) | (i == coarse.size - 1)
    offsets = K_STEP * np.arange(-COARSE, COARSE + 1)
    fine = np.clip(coarse[i][:, None] + offsets[None, :], k_bounds[0], k_bounds[1])  # (B, F)
    k, _, bound = _refine(s, fine, y, m, sigma, k_bounds, smoothing)
    bound |= on_bound
    keep = ~bound
    k[keep] = _polish(s, k[keep], y[keep], m[keep], sigma, k_bounds, smoothing)
    return np.where(enough & ~bound, k, np.nan), bound & enough


def _polish(
    s: Surface,
    k: FloatArray,
    y: FloatArray,
    m: FloatArray,
    sigma: float,
    k_bounds: tuple[float, float],
    smoothing: float | None,
) -> FloatArray:
    """The third pass: each k (B,) refined over ±2 steps of K_STEP/POLISH around it."""
    if k.size == 0:
        return k
    step = K_STEP / POLISH
    grid = np.clip(np.nan_to_num(k)[:, None] + step * np.arange(-2, 3), *k_bounds)
    fine, _, _ = _refine(s, grid, y, m, sigma, k_bounds, smoothing, step)
    return np.where(np.isfinite(fine), fine, k)


def _refine(
    s: Surface,
    grid: FloatArray,
    y: FloatArray,
    m: FloatArray,
    sigma: float,
    k_bounds: tuple[float, float],
    smoothing: float | None,
    step: float = K_STEP,
) -> tuple[FloatArray, IntArray, BoolArray]:
    """Each replicate's minimum over its own ``grid`` (B, F) of k, ``step`` apart, refined by
    a parabola through the three losses around it: (k, the grid index of the minimum, on a
    bound)."""
    _, _, loss = _fit(s, s.x(grid), y[:, None, :], m[:, None, :], sigma, smoothing)
    j = np.argmin(np.where(np.isfinite(loss), loss, np.inf), axis=-1)
    inner = np.clip(j, 1, grid.shape[1] - 2)
    r0, r1, r2 = (np.take_along_axis(loss, (inner + d)[:, None], axis=-1)[:, 0] for d in (-1, 0, 1))
    with np.errstate(invalid="ignore", divide="ignore"):
        den = r0 - 2 * r1 + r2
        shift = np.where(den > 0, 0.5 * (r0 - r2) / den, 0.0)
    k = np.take_along_axis(grid, inner[:, None], axis=-1)[:, 0] + np.clip(shift, -1, 1) * step
    at = np.take_along_axis(grid, j[:, None], axis=-1)[:, 0]
    bound = (at <= k_bounds[0]) | (at >= k_bounds[1]) | ~np.isfinite(loss).all(-1)
    return k, j, bound


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


def leverage(
    s: Surface, first: IntArray, values: FloatArray, w: FloatArray, smoothing: float | None
) -> FloatArray:
    """The least-squares fit's leverages h_i (the hat matrix's diagonal) at the given cells."""
    # On the window of coefficients the cells touch (see penalized_fit: the rest meet no data).
    lo = int(first.min())
    width = int(first.max()) - lo + 4
    bands, _ = normal_bands(first - lo, values, w, np.zeros_like(w), width)
    mean_weight = w.sum() / max(w.size, 1)
    alpha = SMOOTHING if smoothing is None else smoothing
    bands = bands + alpha * mean_weight * penalty_bands(width)
    unit = np.zeros((first.size, width))
    np.put_along_axis(unit, first[:, None] - lo + np.arange(4), values, axis=1)
    solved = np.linalg.solve(dense(bands), unit.T).T  # one matrix, every cell's basis row
    return np.asarray(np.clip(w * np.sum(unit * solved, axis=1), 0.0, 0.99), dtype=np.float64)


def row_curve(
    s: Surface,
    cells: BoolArray,
    y: FloatArray,
    w: FloatArray,
    alpha: float,
    sigma: float | None = None,
) -> FloatArray:
    """One λ row's own curve (penalty ``alpha``, in log η) at its ``cells``; ``y``, ``w``: the
    cells' means and seed counts. Least squares; with ``sigma``, the collapse's Huber fit."""
    if sigma is not None:
        return _fit(s, s.u[cells], y, w, sigma, alpha)[1]
    first, values = s.lattice.basis(s.u[cells])
    coef = penalized_fit(first, values, w, y, alpha * w.sum() / w.size, s.lattice.size)
    return evaluate(first, values, coef)


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
            w, yy = m[0][cells], y[0][cells]
            chi2 += float(np.sum(w * (yy - row_curve(s, cells, yy, w, alpha)) ** 2)) / sigma**2
            first, values = s.lattice.basis(s.u[cells])
            dof += w.size - float(np.sum(leverage(s, first, values, w, alpha)))
        if dof > 0 and chi2 <= stats.chi2.ppf(0.99, dof):
            return alpha
    return SMOOTHINGS[-1]


__all__ = [
    "HUBER",
    "IRLS_STEPS",
    "KNOTS_PER_STEP",
    "K_STEP",
    "SMOOTHING",
    "SMOOTHINGS",
    "Surface",
    "choose_smoothing",
    "leverage",
    "profile_k",
    "row_curve",
    "scan",
    "surface",
    "template",
]
