"""The fits of ``l2bn analyze``: pure NumPy/SciPy on numbers, no storage, no optuna, no I/O.

* η* per λ (:func:`optimum`): grid minimum of the seed-averaged validation error, refined by a
  parabola in log η through the minimum and its neighbours (:func:`grid_minimum`); minima on
  the grid edge are flagged and left out, and so is a λ whose error is flat over its η grid
  (range below :data:`FLAT_FRACTION` of the group's range, e.g. every η diverged).
* k in log η* = a − k log λ (:func:`fit_k`: least squares; 95 % CI by a seeded bootstrap over
  seeds when the median cell has ≥ 2 seeds, else the regression's t-interval; with seeds, the
  wider of the two: resampling seeds sees seed noise only, while the regression's residuals
  also see the grid's resolution and any curvature of log η* against log λ).
* a second, independent k (:func:`fit_collapse`): the one that best collapses error-vs-η
  curves of every λ onto a single polynomial in log η + k log λ (grid scan, then bounded
  Brent; profile CI from the F(1, dof) test; undetermined when the CI runs into ``k_bounds``).
* norm exponents log ‖w‖ = c + a log η − b log λ for one layer (:func:`fit_norms`: OLS,
  t-intervals) over cells in equilibrium, c·η·λ·T ≥ ``equilibrium``.
* the measured relaxation of a norm history (:func:`relaxation_index`).

Every fit returns a result object of :mod:`l2bn.analysis.results`; :func:`verdict` compares
an estimate with the theory.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy import optimize, stats

from l2bn.analysis.results import (
    CONSISTENT,
    INCONSISTENT,
    UNDETERMINED,
    AnalyzeConfig,
    Cell,
    CollapseFit,
    Estimate,
    NormFit,
    Optimum,
    ScalingFit,
)

FloatArray = npt.NDArray[np.float64]

# A λ whose error varies over its η grid by less than this fraction of the group's whole
# error range has no minimum to speak of (see optimum).
FLAT_FRACTION = 0.1

# The measured counterpart of c·η·λ·T (see relaxation_index): how many time constants a norm
# history has relaxed through by the end of phase 1, read off the trajectory itself. It needs
# no clock, so it also speaks for Adam/RMSProp, whose clock depends on the gradient scale.
RELAXATION_CAP = 20.0  # beyond ~20 time constants the last quarter is pure noise


# --- measured relaxation ------------------------------------------------------------------


def _last_quarter_share(x: float, n: int) -> float:
    """Share of an exponential relaxation's movement over epochs 1..n that falls in the
    last quarter (epochs n − n//4 .. n), with x = r·n time constants over the phase."""
    q = n // 4
    if x <= 0:
        return q / (n - 1)  # a straight-line drift
    start, mid = 1 / n, (n - q) / n  # epoch 1 is the first record, not the phase's start
    # (e^(−x·mid) − e^(−x)) / (e^(−x·start) − e^(−x)), scaled by e^x
    return math.expm1(x * (1 - mid)) / math.expm1(x * (1 - start))


def relaxation_index(history: Sequence[float]) -> float:
    """Time constants r·T a phase-1 norm history (one value per epoch) has relaxed through.

    Model: ‖w‖ approaches its equilibrium exponentially, n(t) = n∞ + (n0 − n∞)·e^(−r·t).
    Then the share of the recorded movement that falls in the last quarter of the phase,
    |n(T) − n(3T/4)| / |n(T) − n(1 epoch)|, is a known decreasing function of r·T (about
    0.25 for a straight drift, 0.017 at r·T = 5), and is inverted here. The denominator is
    the history's range, so an overshoot (a norm that first grows on the gradient, then
    decays) counts its whole excursion. A norm that fluctuates or cycles around its
    equilibrium keeps moving in the last quarter and reads as less relaxed than it is, once
    the fluctuations are a few % of the excursion (at large η·λ, where the excursion is
    short): there the index says "not settled" for a settled norm. NaN for fewer than 4
    epochs or a history that never moved; capped at ``RELAXATION_CAP``.
    """
    h = np.asarray(history, dtype=np.float64)
    n = h.size
    if n < 4 or not np.isfinite(h).all():
        return math.nan
    span = float(h.max() - h.min())
    if span <= 0:
        return math.nan
    share = abs(float(h[-1] - h[-1 - n // 4])) / span
    if share >= _last_quarter_share(0.0, n):
        return 0.0
    if share <= _last_quarter_share(RELAXATION_CAP, n):
        return RELAXATION_CAP
    return float(optimize.brentq(lambda x: _last_quarter_share(x, n) - share, 0.0, RELAXATION_CAP))


# --- building blocks ----------------------------------------------------------------------


def parabolic_argmin(x: FloatArray, y: FloatArray) -> tuple[FloatArray, FloatArray]:
    """Vertex of the parabola through each row's three points ``x[..., 0:3]``, ``y[..., 0:3]``.

    Returns (vertex, curvature). Where the parabola is not convex (flat or concave: ties,
    noise) the middle point is returned, since no interior minimum is defined.
    """
    x0, x1, x2 = x[..., 0], x[..., 1], x[..., 2]
    y0, y1, y2 = y[..., 0], y[..., 1], y[..., 2]
    denom = (x0 - x1) * (x0 - x2) * (x1 - x2)
    with np.errstate(divide="ignore", invalid="ignore"):
        a = (x2 * (y1 - y0) + x1 * (y0 - y2) + x0 * (y2 - y1)) / denom
        b = (x2**2 * (y0 - y1) + x1**2 * (y2 - y0) + x0**2 * (y1 - y2)) / denom
        vertex = -b / (2 * a)
    ok = np.isfinite(vertex) & (a > 0)
    vertex = np.where(ok, np.clip(vertex, np.minimum(x0, x2), np.maximum(x0, x2)), x1)
    return vertex, np.where(ok, a, 0.0)


def grid_minimum(log_lr: FloatArray, err: FloatArray) -> tuple[FloatArray, FloatArray]:
    """Refined log η* per row of ``err`` (rows: resamples; columns: the η grid).

    Returns (log η*, edge) with edge = 1.0 where the minimum is on the grid's edge.
    """
    n = log_lr.size
    i = np.argmin(err, axis=-1)
    edge = (i == 0) | (i == n - 1)
    j = np.clip(i, 1, n - 2)
    idx = np.stack([j - 1, j, j + 1], axis=-1)
    xs = log_lr[idx]
    ys = np.take_along_axis(err, idx, axis=-1)
    vertex, _ = parabolic_argmin(xs, ys)
    return np.where(edge, log_lr[i], vertex), edge.astype(np.float64)


@dataclass(frozen=True)
class OLS:
    coef: FloatArray
    stderr: FloatArray
    dof: int
    r_squared: float
    rank: int


def ols(design: FloatArray, y: FloatArray) -> OLS:
    """Ordinary least squares with classical standard errors (what statsmodels would give)."""
    n, p = design.shape
    solution, _, rank, _ = np.linalg.lstsq(design, y, rcond=None)
    coef = np.asarray(solution, dtype=np.float64)
    resid = y - design @ coef
    dof = n - p
    ss_tot = float(np.sum((y - y.mean()) ** 2))
    r2 = 1.0 - float(resid @ resid) / ss_tot if ss_tot > 0 else math.nan
    if rank < p or dof <= 0:
        return OLS(coef, np.full(p, math.nan), dof, r2, int(rank))
    sigma2 = float(resid @ resid) / dof
    cov = sigma2 * np.linalg.inv(design.T @ design)
    return OLS(coef, np.sqrt(np.clip(np.diag(cov), 0.0, None)), dof, r2, int(rank))


def t_estimate(value: float, stderr: float, dof: int, n: int, confidence: float) -> Estimate:
    """``value`` ± the Student-t half-width for ``dof`` degrees of freedom."""
    if not (math.isfinite(value) and math.isfinite(stderr)) or dof <= 0:
        return Estimate(value, math.nan, math.nan, math.nan, n, "ols-t", confidence)
    half = float(stats.t.ppf(0.5 + confidence / 2, dof)) * stderr
    return Estimate(value, stderr, value - half, value + half, n, "ols-t", confidence)


def verdict(est: Estimate, theory: float | None, tolerance: float) -> str:
    """Whether the CI of ``est`` comes within ``tolerance`` of ``theory`` (see results)."""
    if theory is None or not est.determined:
        return UNDETERMINED
    return CONSISTENT if est.covers(theory, tolerance) else INCONSISTENT


# --- η* and k -----------------------------------------------------------------------------


@dataclass(frozen=True)
class LambdaGrid:
    """One λ's η grid: η per column and each cell's per-seed errors."""

    weight_decay: float
    lrs: FloatArray
    cell_values: tuple[FloatArray, ...]

    @property
    def log_lr(self) -> FloatArray:
        return np.log(self.lrs)

    def means(self) -> FloatArray:
        return np.array([v.mean() for v in self.cell_values])


def optimum(grid: LambdaGrid, group_range: float) -> tuple[Optimum, str | None]:
    """η* of one λ, and a warning when it cannot enter the k fit for a reason worth telling.

    ``group_range``: the spread of the seed-averaged error over the whole group, against
    which a flat column (:data:`FLAT_FRACTION`) is judged.
    """
    means = grid.means()
    i = int(np.argmin(means))
    n = grid.lrs.size
    wd = grid.weight_decay
    if n < 3:
        lr = float(grid.lrs[i])
        found = Optimum(wd, lr, lr, float(means[i]), n, edge=False, used=False,
                        note="fewer than 3 η values")  # fmt: skip
        return found, f"λ={wd:.3g}: only {n} η value(s); η* needs ≥ 3"
    log_opt, edge = grid_minimum(grid.log_lr, means[None, :])
    is_edge = bool(edge[0])
    note: str | None = None
    warning: str | None = None
    if is_edge:
        side = "lower" if i == 0 else "upper"
        note = f"η* on the {side} edge of the η grid (extend the grid)"
        warning = f"λ={wd:.3g}: {note}"
    elif float(means.max() - means.min()) < FLAT_FRACTION * group_range:
        # A column at chance level everywhere (all diverged, or the optimum far off the grid)
        # still has an argmin: noise. Its η* would drag k anywhere.
        note = "no clear minimum: the error is flat over this λ's η grid (extend the grid)"
        warning = f"λ={wd:.3g}: {note}"
    elif wd <= 0:
        note = "λ = 0 has no logarithm"
    found = Optimum(
        weight_decay=wd,
        lr_opt=float(np.exp(log_opt[0])),
        lr_grid=float(grid.lrs[i]),
        val_error=float(means[i]),
        n_lr=n,
        edge=is_edge,
        used=note is None,
        note=note,
    )
    return found, warning


def fit_k(
    grids: Sequence[LambdaGrid],
    optima: Sequence[Optimum],
    cfg: AnalyzeConfig,
    theory: float | None,
    median_seeds: float,
) -> ScalingFit:
    """k from the used optima (one per grid in ``grids``, same order)."""
    n = len(optima)
    if n < 2:
        return ScalingFit(Estimate.missing(n), math.nan, math.nan, n, theory, UNDETERMINED)
    log_wd = np.log([o.weight_decay for o in optima])
    log_opt = np.log([o.lr_opt for o in optima])
    fit = stats.linregress(log_wd, log_opt)
    k = -float(fit.slope)
    r2 = float(fit.rvalue**2) if n > 2 else 1.0
    # linregress's stderr is NaN-free only for n > 2; with 2 points the interval is unbounded.
    se = float(fit.stderr) if n > 2 else math.nan
    est = t_estimate(k, se, n - 2, n, cfg.confidence)
    if median_seeds >= 2 and cfg.bootstrap > 0:
        boot = bootstrap_k(grids, log_wd, k, cfg)
        # Resampling seeds cannot see the grid's resolution; the residuals can. Report the
        # wider interval, so that a coarse grid cannot pass for a precise k.
        if not est.determined or (
            boot.determined and boot.ci_high - boot.ci_low >= est.ci_high - est.ci_low
        ):
            est = boot
        else:
            est = Estimate(
                k, est.stderr, est.ci_low, est.ci_high, n, "bootstrap|ols-t", cfg.confidence
            )
    return ScalingFit(est, float(fit.intercept), r2, n, theory, verdict(est, theory, cfg.tolerance))


def bootstrap_k(
    grids: Sequence[LambdaGrid], log_wd: FloatArray, k: float, cfg: AnalyzeConfig
) -> Estimate:
    """Percentile CI of k: resample seeds within each cell, redo η* and the fit."""
    rng = np.random.default_rng(cfg.seed)
    b = cfg.bootstrap
    ys = np.empty((b, len(grids)))
    for j, g in enumerate(grids):
        means = np.empty((b, len(g.cell_values)))
        for c, vals in enumerate(g.cell_values):
            means[:, c] = vals[rng.integers(0, vals.size, size=(b, vals.size))].mean(axis=1)
        log_opt, edge = grid_minimum(g.log_lr, means)
        # A resample whose minimum lands on the edge has no η* for this λ.
        ys[:, j] = np.where(edge > 0, np.nan, log_opt)
    mask = np.isfinite(ys)
    w = mask.astype(np.float64)
    cnt = w.sum(axis=1)
    x = np.broadcast_to(log_wd, ys.shape)
    y0 = np.where(mask, ys, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        xm = (w * x).sum(axis=1) / cnt
        ym = (w * y0).sum(axis=1) / cnt
        sxy = (w * (x - xm[:, None]) * (y0 - ym[:, None])).sum(axis=1)
        sxx = (w * (x - xm[:, None]) ** 2).sum(axis=1)
        ks = -sxy / sxx
    ks = ks[(cnt >= 2) & np.isfinite(ks)]
    if ks.size < max(20, b // 2):
        # Too many resamples lost their η*: the percentile interval would be biased.
        return Estimate(k, math.nan, math.nan, math.nan, len(grids), "bootstrap", cfg.confidence)
    alpha = (1 - cfg.confidence) / 2
    lo, hi = np.quantile(ks, [alpha, 1 - alpha])
    return Estimate(
        k, float(ks.std(ddof=1)), float(lo), float(hi), len(grids), "bootstrap", cfg.confidence
    )


# --- the collapse k -----------------------------------------------------------------------


def collapse_rss(
    log_lr: FloatArray, log_wd: FloatArray, err: FloatArray, degree: int
) -> Callable[[float], float]:
    """RSS(k) of a degree-``degree`` polynomial fit of error against log η + k log λ."""

    def rss(k: float) -> float:
        x = log_lr + k * log_wd
        # Polynomial.fit rescales x to [-1, 1]: well conditioned at any degree we allow.
        _, info = np.polynomial.Polynomial.fit(x, err, degree, full=True)
        resid = np.asarray(info[0], dtype=np.float64)
        return float(resid[0]) if resid.size else 0.0

    return rss


def fit_collapse(
    cells: Sequence[Cell], cfg: AnalyzeConfig, theory: float | None
) -> CollapseFit | None:
    """The collapse k over every cell with λ > 0; None with fewer than 2 such λ values."""
    usable = [c for c in cells if c.weight_decay > 0]
    if len({c.weight_decay for c in usable}) < 2:
        return None
    log_lr = np.log([c.lr for c in usable])
    log_wd = np.log([c.weight_decay for c in usable])
    err = np.array([c.val_error for c in usable])
    n = err.size
    degree = min(cfg.collapse_degree, len({c.lr for c in usable}) - 1)
    dof = n - (degree + 1) - 1  # polynomial coefficients + k
    if dof < 1:
        return CollapseFit(
            Estimate.missing(n, "profile"), theory, UNDETERMINED, degree, n, math.nan
        )
    rss = collapse_rss(log_lr, log_wd, err, degree)
    lo, hi = cfg.k_bounds
    # Scan first: RSS(k) can have several dips, and bounded Brent only finds a local one.
    grid = np.linspace(lo, hi, 71)
    values = np.array([rss(float(k)) for k in grid])
    i = int(np.argmin(values))
    a, b = grid[max(i - 1, 0)], grid[min(i + 1, grid.size - 1)]
    res = optimize.minimize_scalar(rss, bounds=(a, b), method="bounded", options={"xatol": 1e-5})
    k_hat = float(res.x)
    rss_min = float(res.fun)
    t = float(stats.t.ppf(0.5 + cfg.confidence / 2, dof))
    # Profile interval: k values whose extra RSS is within t² residual variances
    # (the F(1, dof) test of k against the best fit).
    threshold = rss_min + t**2 * rss_min / dof

    def excess(k: float) -> float:
        return rss(k) - threshold

    ci_low = _profile_edge(excess, k_hat, grid[grid < k_hat][::-1], lo)
    ci_high = _profile_edge(excess, k_hat, grid[grid > k_hat], hi)
    stderr = (ci_high - ci_low) / (2 * t)
    est = Estimate(k_hat, stderr, ci_low, ci_high, n, "profile", cfg.confidence)
    if ci_low <= lo or ci_high >= hi:
        # The interval ran into the search bounds: it is not a real confidence interval.
        est = Estimate(k_hat, math.nan, math.nan, math.nan, n, "profile", cfg.confidence)
    return CollapseFit(est, theory, verdict(est, theory, cfg.tolerance), degree, n, rss_min)


def _profile_edge(
    excess: Callable[[float], float], k_hat: float, outward: FloatArray, bound: float
) -> float:
    prev = k_hat
    for k in outward:
        if excess(float(k)) > 0:
            return float(optimize.brentq(excess, min(prev, k), max(prev, k)))
        prev = float(k)
    return bound


# --- norm exponents -----------------------------------------------------------------------


def fit_norms(
    cells: Sequence[Cell], layer: str, cfg: AnalyzeConfig, theory: float | None
) -> NormFit:
    """a and b of ``layer`` over the cells with c·η·λ·T ≥ ``cfg.equilibrium``."""
    have = [
        c
        for c in cells
        if c.weight_decay > 0 and math.isfinite(v := c.phase1_norms.get(layer, math.nan)) and v > 0
    ]
    used = [c for c in have if c.equilibrium_index >= cfg.equilibrium]
    n = len(used)
    excluded = len(have) - n
    if n < 4:  # 3 coefficients need at least one residual degree of freedom
        miss = Estimate.missing(n, "ols-t")
        return NormFit(layer, miss, miss, math.nan, math.nan, n, excluded, theory, UNDETERMINED)
    log_lr = np.log([c.lr for c in used])
    log_wd = np.log([c.weight_decay for c in used])
    y = np.log([c.phase1_norms[layer] for c in used])
    design = np.column_stack([np.ones(n), log_lr, -log_wd])
    fit = ols(design, y)
    if fit.rank < 3:  # a single η or a single λ among equilibrium cells
        miss = Estimate.missing(n, "ols-t")
        return NormFit(layer, miss, miss, math.nan, fit.r_squared, n, excluded, theory,
                       UNDETERMINED)  # fmt: skip
    a = t_estimate(float(fit.coef[1]), float(fit.stderr[1]), fit.dof, n, cfg.confidence)
    b = t_estimate(float(fit.coef[2]), float(fit.stderr[2]), fit.dof, n, cfg.confidence)
    if theory is None or not (a.determined and b.determined):
        found = UNDETERMINED
    else:
        tol = cfg.tolerance
        found = CONSISTENT if a.covers(theory, tol) and b.covers(theory, tol) else INCONSISTENT
    return NormFit(layer, a, b, float(fit.coef[0]), fit.r_squared, n, excluded, theory, found)


__all__ = [
    "FLAT_FRACTION",
    "OLS",
    "RELAXATION_CAP",
    "LambdaGrid",
    "bootstrap_k",
    "collapse_rss",
    "fit_collapse",
    "fit_k",
    "fit_norms",
    "grid_minimum",
    "ols",
    "optimum",
    "parabolic_argmin",
    "relaxation_index",
    "t_estimate",
    "verdict",
]
