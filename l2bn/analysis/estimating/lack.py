"""Lack of collapse: does each λ row follow the curve the other rows define?

For each row, k and the curve are refitted without it and its cells are compared with the
curve there (cells within half an η step of the other rows' span of x). The variance of a
cell's deviation adds:

* the noise of its mean: the seeds' pooled variance over its seed count;
* the noise of the curve there: a jackknife over the other rows' clusters, k refitted in each;
* the curve's own error of prediction: how far, beyond these two, the *other* rows' cells sit
  from the curves fitted without them (each row's leave-row-out residuals, read near the cell:
  within one η step, at least :data:`NEAR_CELLS` of them, and never below their mean). A valley
  sharper than the curve can follow between the rows' cells shows there, at low noise, in every
  row alike; a row must deviate more than the others do to fail. Its own cells are not in it: a
  deformed row would hide itself.

A cell counts only by how far it lies beyond a tenth of the valley's depth (:data:`RELEVANCE`;
the curve's range over every cell), so that nearly noise-free runs do not fail a row for a
trace; t-tests on Welch's degrees of freedom, Bonferroni over every cell tested in the group
(:data:`LACK_LEVEL`). The rule that acts on the outcome is
:func:`l2bn.analysis.estimating.collapse.collapse_fit`'s; docs/method.md says why.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

from l2bn.analysis.estimating.intervals import cluster_weights
from l2bn.analysis.estimating.panel import BoolArray, FloatArray, IntArray, full_weights
from l2bn.analysis.estimating.surface import Surface, profile_k, template
from l2bn.analysis.estimating.template import evaluate

LACK_LEVEL = 0.05  # the lack-of-collapse tests' family-wise level (Bonferroni over cells)
NEAR_CELLS = 4  # the local misfit needs this many of the other rows' cells within a step
# A deviation counts only beyond this share of the valley's depth (the curve's range over
# the cells): nearly noise-free runs (the tracking toy) detect any trace of w₀, and a row off
# by a thousandth of its valley does not move k.
RELEVANCE = 0.1


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
    noise: FloatArray  # variance of the cell mean (seeds)
    curve: FloatArray  # variance of the curve there (jackknife)
    curve_dof: float
    x: FloatArray
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
    return _Prediction(
        int(row),
        (y[0, mine] - pred[0])[ok],
        (s2 / np.maximum(m[0, mine], 1e-300))[ok],
        v_t[ok],
        dof_t,
        x_mine[0][ok],
        s.col[mine][ok],
        float(k[0]),
    )


def _misfit(p: _Prediction, others: list[_Prediction], step: float) -> FloatArray:
    """The curve's own error of prediction at ``p``'s cells, from the other rows' leave-row-out
    residuals beyond their noise: near each cell (within one step, ≥ NEAR_CELLS of them), never
    below their mean over every cell; floored at 0."""
    if not others:
        return np.zeros(p.x.size)
    excess = np.concatenate([o.resid**2 - o.noise - o.curve for o in others])
    x = np.concatenate([o.x for o in others])
    overall = max(float(np.mean(excess)), 0.0) if excess.size else 0.0
    near = np.abs(p.x[:, None] - x[None, :]) <= step * (1 + 1e-9)
    count = near.sum(axis=1)
    local = np.where(near, excess[None, :], 0.0).sum(axis=1) / np.maximum(count, 1)
    return np.maximum(np.where(count >= NEAR_CELLS, local, overall), overall)


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
        v_y = p.noise + _misfit(p, [o for o in preds if o.row != p.row], s.step)
        beyond = np.sign(p.resid) * np.maximum(np.abs(p.resid) - tolerance, 0.0)
        with np.errstate(invalid="ignore", divide="ignore"):
            z = beyond / np.sqrt(v_y + p.curve)
            dof = (v_y + p.curve) ** 2 / (v_y**2 / dof_cells + p.curve**2 / p.curve_dof)
        pv = 2 * stats.t.sf(np.abs(z), dof) * total
        i = int(np.argmin(pv))
        out.append(RowTest(p.row, float(min(pv[i], 1.0)), float(z[i]), int(p.cols[i]),
                           int(z.size), p.k_without))  # fmt: skip
    return out


__all__ = ["LACK_LEVEL", "NEAR_CELLS", "RELEVANCE", "RowTest", "row_tests"]
