"""Lack of collapse: does each λ row follow the curve the other rows define?

For each row, k and the curve are refitted without it and its cells are compared with the
curve there (cells within half an η step of the other rows' span of x). The variance of a
cell's deviation adds:

* the noise of its mean: the seeds' pooled variance over its seed count;
* the noise of the curve there: a jackknife over the other rows' clusters, k refitted in each.

A cell counts only by how far it lies beyond 5 % of the valley's depth (:data:`RELEVANCE`; the
range of the cells' means), so that nearly noise-free runs do not fail a row for a trace of w₀
or for the curve's own error between the other rows' cells, and beyond what the row's own
curve misses it by (past 2 noise sds: a valley sharper than the grid's step); t-tests on
Welch's degrees of freedom, Bonferroni over every cell tested in the group (:data:`LACK_LEVEL`).
The rule that acts on the outcome is :func:`l2bn.analysis.estimating.collapse.collapse_fit`'s;
docs/method.md says why.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

from l2bn.analysis.estimating.intervals import cluster_weights
from l2bn.analysis.estimating.panel import BoolArray, FloatArray, IntArray, full_weights
from l2bn.analysis.estimating.surface import SMOOTHING, Surface, profile_k, row_curve, template
from l2bn.analysis.estimating.template import evaluate

LACK_LEVEL = 0.05  # the lack-of-collapse tests' family-wise level (Bonferroni over cells)
# A deviation counts only beyond this share of the valley's depth (the range of the cells'
# means): nearly noise-free runs (the tracking toy, planted dips 100 noise sds deep) would fail
# a row for a trace of w₀, or for the curve's own error between other rows' cells, neither
# of which moves k. 0.05: the calibration's realistic valleys lose 0–3 % of rows falsely and
# a deformed row is named in 60–64 % of studies (0.1: 26–28 %; 0.02: the tracking toy fails).
RELEVANCE = 0.05


@dataclass(frozen=True)
class RowTest:
    """One λ row against the curve the other rows define."""

    row: int
    p_value: float  # Bonferroni-adjusted over every cell tested in the group; NaN: untested
    worst_z: float  # the row's largest |t| (signed): cell mean minus template, beyond the
    # relevance tolerance, in noise sds
    worst_col: int  # its η column (−1: none)
    n_tested: int  # cells compared (those within the other rows' span of x)
    k_without: float  # k fitted without this row


@dataclass(frozen=True)
class _Prediction:
    """One row's cells against the curve of the others: deviations and their variances."""

    row: int
    resid: FloatArray  # cell mean − curve
    misfit: FloatArray  # how far the row's own curve misses the cell beyond 2 noise sds
    noise: FloatArray  # variance of the cell mean (seeds)
    curve: FloatArray  # variance of the curve there (jackknife)
    curve_dof: float
    cols: IntArray
    k_without: float


def _predict(
    s: Surface,
    sigma: float,
    k_bounds: tuple[float, float],
    rows: BoolArray,
    row: int,
    k_all: float,
    s2: float,
    smoothing: float | None,
) -> _Prediction:
    """``row``'s cells against the curve fitted without it (k refitted too)."""
    panel = s.panel
    jack, strata = cluster_weights(panel, "jackknife")
    others = rows.copy()
    others[row] = False
    use = strata != row if panel.independent_rows else np.ones(strata.size, dtype=bool)
    weights = np.concatenate([full_weights(panel) * np.ones_like(jack[:1]), jack[use]])
    k = np.full(weights.shape[0], k_all)
    if others.sum() >= 2:  # else one other row: no k without this one, the group's k
        # Near the group's k: leaving one row out moves it little (a minimum on the scan's
        # window edge gets the whole range).
        k0, _ = profile_k(s, weights[:1], sigma, k_bounds, others, smoothing, k_all)
        if math.isfinite(k0[0]):  # else (on a bound) the group's k
            reps, _ = profile_k(s, weights[1:], sigma, k_bounds, others, smoothing, float(k0[0]))
            k_without = np.concatenate([k0, reps])
            k = np.where(np.isfinite(k_without), k_without, k_all)
    coef = template(s, weights, sigma, k, others, smoothing)
    mine = np.flatnonzero(s.row == row)
    x_mine = s.x(np.nan_to_num(k))[:, mine]  # (B, n_l)
    first, values = s.lattice.basis(x_mine)
    pred = evaluate(first, values, coef)  # (B, n_l)
    x_others = s.x(k[0])[np.isin(s.row, np.flatnonzero(others))]
    # Cells within half an η step of the other rows' span: the row's end cells are where
    # memory of w₀ shows (the low-η side), and k without the row moves them a little.
    inside = (x_mine[0] >= x_others.min() - s.step / 2) & (x_others.max() + s.step / 2 >= x_mine[0])
    y, m = s.data(full_weights(panel))
    reps = pred[1:][np.isfinite(k[1:])]
    g = reps.shape[0]
    if g >= 2:
        v_t = (g - 1) / g * np.sum((reps - reps.mean(axis=0)) ** 2, axis=0)
        dof_t = float(max(g - (int(others.sum()) if panel.independent_rows else 1), 1))
    else:
        v_t, dof_t = np.zeros(mine.size), 1.0
    ok = inside & (m[0, mine] > 0) & np.isfinite(pred[0])
    # The row's own curve, fitted as the collapse is (Huber, same penalty): where even it misses
    # a cell beyond the noise (a valley sharper than the grid's step), the other rows' curve
    # cannot be asked to do better there. Realistic noise leaves this 0; it spares the
    # approximation error only.
    cells = (s.row == row) & (m[0] > 0)
    own = np.full(mine.size, np.nan)
    if cells.sum() >= 3:
        alpha = SMOOTHING if smoothing is None else smoothing
        own[m[0, mine] > 0] = row_curve(s, cells, y[0][cells], m[0][cells], alpha, sigma)
    noise = s2 / np.maximum(m[0, mine], 1e-300)
    misfit = np.nan_to_num(np.maximum(np.abs(y[0, mine] - own) - 2 * np.sqrt(noise), 0.0))
    return _Prediction(
        int(row),
        (y[0, mine] - pred[0])[ok],
        misfit[ok],
        noise[ok],
        v_t[ok],
        dof_t,
        s.col[mine][ok],
        float(k[0]),
    )


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
    preds = [
        _predict(s, sigma, k_bounds, rows, int(row), k_all, s2, smoothing)
        for row in np.flatnonzero(rows)
    ]
    total = sum(p.resid.size for p in preds)
    y, m = s.data(full_weights(panel), rows)
    used = y[0][m[0] > 0]
    tolerance = RELEVANCE * float(np.ptp(used)) if used.size else 0.0
    out = []
    for p in preds:
        if p.resid.size == 0:
            out.append(RowTest(p.row, math.nan, math.nan, -1, 0, p.k_without))
            continue
        v_y = p.noise
        beyond = np.sign(p.resid) * np.maximum(np.abs(p.resid) - tolerance - p.misfit, 0.0)
        with np.errstate(invalid="ignore", divide="ignore"):
            z = beyond / np.sqrt(v_y + p.curve)
            dof = (v_y + p.curve) ** 2 / (v_y**2 / dof_cells + p.curve**2 / p.curve_dof)
        pv = 2 * stats.t.sf(np.abs(z), dof) * total
        i = int(np.argmin(pv))
        out.append(RowTest(p.row, float(min(pv[i], 1.0)), float(z[i]), int(p.cols[i]),
                           int(z.size), p.k_without))  # fmt: skip
    return out


__all__ = ["LACK_LEVEL", "RELEVANCE", "RowTest", "row_tests"]
