"""The primary estimate of k (analyze v3): the whole error surface collapses onto one curve.

By the symmetry of scale-invariant training, a run that has forgotten its initial weights has
validation error F(η·λ^k): k = 1 (SGD family, AdamW), ½ (Adam/RMSProp with coupled L2). So the
whole surface, every non-diverged cell of every λ row, is one curve in x = log η + k·log λ, and
k is the value that puts the rows on it. The steep high-η wall carries most of that information;
the flat floor around η* carries little (docs/method.md).

* **Model.** y = T(x) over the cells (seed means, weighted by their seed counts), T a penalized
  cubic B-spline (:mod:`~l2bn.analysis.estimating.template`): knots one η step of the grid apart
  (:data:`~l2bn.analysis.estimating.surface.KNOTS_PER_STEP`), on one lattice for every k, and a
  second-difference penalty α. **How flexible**: the smoothest α of
  :data:`~l2bn.analysis.estimating.surface.SMOOTHINGS` whose curves fit each λ row's own valley
  within its noise (:func:`~l2bn.analysis.estimating.surface.choose_smoothing`, the discrepancy
  principle, χ² at 99 %), chosen once on the full data and held for every replicate. At the
  noise of real runs that is the smoothest, α = 1; a valley sharper than the grid gets a more
  flexible curve. Not chosen by Mallows' Cp or by leaving a λ row out: the calibration
  (docs/method.md) found those follow the noise, study by study, and the interval then
  under-covers (0.85–0.91), because the jackknife holds the choice fixed. No per-λ level
  offsets: the theory has none, and the calibration found they widen the interval (adam's
  valley: median width 0.15 against 0.12) without making it robust to a deformed row. The fit is
  robust (Huber, 2 cell-noise sds, 2 reweightings): a few cells that remember w₀ weigh less.
* **k** minimizes the fit's loss over a scan of ``k_bounds`` (coarse, then in steps of 0.025
  around the minimum, :func:`~l2bn.analysis.estimating.surface.profile_k`), refined by a
  parabola through the best three, then by a third pass in steps of 0.005; a minimum on a
  bound is no estimate (NaN, and the reason says so).
* **Interval**: the delete-one-cluster jackknife with a Student-t quantile
  (:mod:`~l2bn.analysis.estimating.intervals`: the seed with shared seeds, the (λ, seed) pair
  with independent rows); every replicate refits k with the same rows. With one seed no cluster
  exists: the interval is then none (NaN), never one that treats cells as independent.
* **Lack of collapse** (:func:`~l2bn.analysis.estimating.lack.row_tests`): each row against
  the curve the other rows define (k refitted without it), cell by cell, t-tests with the
  noise of the row's cell means (the seeds' pooled variance) and of the curve (a jackknife over
  the other rows' clusters), counting a deviation only beyond 5 % of the valley's depth,
  Bonferroni over every cell tested. **The rule** (:func:`collapse_fit`): a failing row is left
  out, the worst first, and the fit and tests repeat, while at least 3 rows and more than half
  of them remain; a group that would need more is "does not collapse".

The fit itself lives in :mod:`~l2bn.analysis.estimating.surface`, the row test in
:mod:`~l2bn.analysis.estimating.lack`; everything runs on replicates at once
(:func:`l2bn.analysis.estimating.panel.replicate_means`). NumPy and SciPy only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from l2bn.analysis.estimating.intervals import Interval, cluster_weights, jackknife_interval
from l2bn.analysis.estimating.lack import LACK_LEVEL, RowTest, row_tests
from l2bn.analysis.estimating.panel import BoolArray, FloatArray, Panel, full_weights
from l2bn.analysis.estimating.surface import (
    SMOOTHING,
    choose_smoothing,
    profile_k,
    surface,
    template,
)
from l2bn.analysis.estimating.template import Lattice, evaluate

COLLAPSES = "collapses"
PARTIAL = "collapses without some rows"
NOT_COLLAPSED = "does not collapse"
UNTESTED = "untested"
STATUSES = (COLLAPSES, PARTIAL, NOT_COLLAPSED, UNTESTED)


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
    centre: float | None = None,
) -> CollapseResult | None:
    """The primary k of ``panel`` (see the module docstring); None with fewer than 2 rows.

    ``rows``: the rows to start from (default: every row with ≥ 3 cells); ``test``: run the
    lack-of-collapse tests and the rule (k over training skips them); ``smoothing``: the
    penalty (default: :func:`choose_smoothing` on the full data, then held for every replicate
    and test); ``centre``: a k to start the profile's scan from (the previous epoch's).
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
        k, bound = profile_k(s, full, sigma, k_bounds, use, alpha, centre)
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
        reps, rep_bound = profile_k(s, weights[keep], sigma, k_bounds, use, alpha, k_hat)
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
    "LACK_LEVEL",
    "NOT_COLLAPSED",
    "PARTIAL",
    "STATUSES",
    "UNTESTED",
    "CollapseResult",
    "RowTest",
    "collapse_fit",
    "template_curve",
]
