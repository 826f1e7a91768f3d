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
  t-intervals) over cells in equilibrium: measured "in" where the group's cells carry
  verdicts, else c·η·λ·T ≥ ``equilibrium`` (:func:`l2bn.analysis.equilibrium.norm_cell_filter`).
* the measured relaxation of a norm history (:func:`relaxation_index`).

Every fit returns a result object of :mod:`l2bn.analysis.fitted`; :func:`verdict` compares
an estimate with the theory.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy import optimize, stats

from l2bn.analysis.equilibrium import CellFilter, norm_cell_filter
from l2bn.analysis.fitted import (
    CONSTANT,
    DIFFERENT,
    EQUIVALENT,
    INCONCLUSIVE,
    UNDETERMINED,
    VARIES,
    Cell,
    CollapseFit,
    ColumnCheck,
    Estimate,
    NormFit,
)
from l2bn.analysis.settings import AnalyzeConfig

FloatArray = npt.NDArray[np.float64]

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
    return _invert_share(share, n)


@functools.cache
def _share_table(n: int) -> tuple[FloatArray, FloatArray]:
    """(share, x) on a fine grid of x, share increasing: the inverse's first guess."""
    xs = np.linspace(RELAXATION_CAP, 0.0, 2001)
    return np.array([_last_quarter_share(float(x), n) for x in xs]), xs


def _invert_share(share: float, n: int) -> float:
    """The x with _last_quarter_share(x, n) = share: interpolated on a table, then polished
    by Newton steps on the closed form (a scalar root-finder per history was half of
    analyze's fitting time on 10 000 trials)."""
    shares, xs = _share_table(n)
    x = float(np.interp(share, shares, xs))
    a, b = (n // 4) / n, 1 - 1 / n  # _last_quarter_share = expm1(x·a) / expm1(x·b)
    for _ in range(4):
        if x <= 0:
            break
        ea, eb = math.expm1(x * a), math.expm1(x * b)
        f = ea / eb - share
        slope = (a * (ea + 1) * eb - b * (eb + 1) * ea) / eb**2
        if slope == 0 or abs(f) < 1e-15:
            break
        x = min(max(x - f / slope, 0.0), RELAXATION_CAP)
    return x


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


def verdict(est: Estimate, theory: float | None, margin: float) -> str:
    """Three outcomes against theory ± ``margin`` (see results): "equivalent" (the CI lies
    inside), "different" (entirely outside), "inconclusive" (otherwise, or no finite CI);
    "undetermined" only without an estimate or a theory."""
    if theory is None or not math.isfinite(est.value):
        return UNDETERMINED
    if est.within(theory - margin, theory + margin):
        return EQUIVALENT
    if est.outside(theory - margin, theory + margin):
        return DIFFERENT
    return INCONCLUSIVE


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
    err = np.array([c.value if math.isfinite(c.value) else c.val_error for c in usable])
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
    return CollapseFit(est, theory, verdict(est, theory, cfg.margin), degree, n, rss_min)


def _profile_edge(
    excess: Callable[[float], float], k_hat: float, outward: FloatArray, bound: float
) -> float:
    prev = k_hat
    for k in outward:
        if excess(float(k)) > 0:
            return float(optimize.brentq(excess, min(prev, k), max(prev, k)))
        prev = float(k)
    return bound


# --- norm exponents ---------------------------------------------------------------------


def _equilibrium_cells(
    cells: Sequence[Cell], layer: str, cell_filter: CellFilter
) -> tuple[list[Cell], int]:
    have = [
        c
        for c in cells
        if c.weight_decay > 0 and math.isfinite(v := c.phase1_norms.get(layer, math.nan)) and v > 0
    ]
    used = [c for c in have if cell_filter.admits(c)]
    return used, len(have) - len(used)


def fit_norms(
    cells: Sequence[Cell],
    layer: str,
    cfg: AnalyzeConfig,
    theory: float | None,
    scale_power: float = 0.5,
    k: float = 1.0,
    cell_filter: CellFilter | None = None,
) -> NormFit:
    """The norm law of ``layer`` over the cells ``cell_filter`` admits: by default
    (:func:`~l2bn.analysis.equilibrium.norm_cell_filter`) those measured in equilibrium where
    the cells carry verdicts, else those with c·η·λ·T ≥ ``cfg.equilibrium``.

    Invariant coordinates: log(‖w‖·λ^s) = c + p·log(η·λ^k) + q·log λ (s = ``scale_power``,
    k the theory's), OLS with t-intervals; p against ``theory`` (verdict), q against 0
    (``memory``), both with ``cfg.norm_margin``. The old log ‖w‖ = c + a log η − b log λ on
    the same cells beside it (a = p, b = s − p·k − q). The cells' errors are treated as
    independent (the seed-averaged norms vary little between seeds).
    """
    chosen = cell_filter or norm_cell_filter(cells, cfg.equilibrium)
    used, excluded = _equilibrium_cells(cells, layer, chosen)
    n = len(used)
    miss = Estimate.missing(n, "ols-t")
    blank = NormFit(layer, miss, miss, math.nan, math.nan, n, excluded, theory,
                    UNDETERMINED, miss, miss, scale_power, k,
                    cell_filter=chosen.label)  # fmt: skip
    if n < 4:  # 3 coefficients need at least one residual degree of freedom
        return blank
    log_lr = np.log([c.lr for c in used])
    log_wd = np.log([c.weight_decay for c in used])
    log_norm = np.log([c.phase1_norms[layer] for c in used])
    old = ols(np.column_stack([np.ones(n), log_lr, -log_wd]), log_norm)
    new = ols(
        np.column_stack([np.ones(n), log_lr + k * log_wd, log_wd]), log_norm + scale_power * log_wd
    )
    if old.rank < 3 or new.rank < 3:  # a single η or a single λ among equilibrium cells
        return NormFit(layer, miss, miss, math.nan, old.r_squared, n, excluded, theory,
                       UNDETERMINED, miss, miss, scale_power, k,
                       cell_filter=chosen.label)  # fmt: skip
    conf = cfg.confidence
    a = t_estimate(float(old.coef[1]), float(old.stderr[1]), old.dof, n, conf)
    b = t_estimate(float(old.coef[2]), float(old.stderr[2]), old.dof, n, conf)
    p = t_estimate(float(new.coef[1]), float(new.stderr[1]), new.dof, n, conf)
    q = t_estimate(float(new.coef[2]), float(new.stderr[2]), new.dof, n, conf)
    return NormFit(
        layer=layer,
        a=a,
        b=b,
        intercept=float(new.coef[0]),
        r_squared=new.r_squared,
        n_cells=n,
        n_excluded=excluded,
        theory=theory,
        verdict=verdict(p, theory, cfg.norm_margin),
        p=p,
        q=q,
        s=scale_power,
        k=k,
        memory=verdict(q, 0.0, cfg.norm_margin),
        cell_filter=chosen.label,
    )


# --- columns ------------------------------------------------------------------------------


def column_verdict(slope: Estimate, band: float) -> str:
    """ "constant" (the CI inside ±band), "varies" (entirely outside), else "inconclusive";
    "undetermined" without an estimate."""
    if not math.isfinite(slope.value) or not math.isfinite(band):
        return UNDETERMINED
    if slope.within(-band, band):
        return CONSTANT
    if slope.outside(-band, band):
        return VARIES
    return INCONCLUSIVE


def column_slopes(
    log_lr: Sequence[FloatArray],
    log_wd: FloatArray,
    values: Sequence[FloatArray],
    k: float,
    confidence: float,
) -> list[tuple[float, Estimate, int]]:
    """Along each column log(η·λ^k) = x: the slope of ``values`` against log λ.

    Rows are λ values; row i has its η grid ``log_lr[i]`` (increasing) and ``values[i]``
    (NaN where unknown). Columns sit at the x of the row with the most finite values; each
    other row's value there is interpolated linearly in x between its two neighbouring cells
    (both finite), or left out beyond its grid. OLS slope with a t-interval (≥ 3 rows).
    """
    xs = [lr + k * wd for lr, wd in zip(log_lr, log_wd, strict=True)]
    counts = [int(np.isfinite(v).sum()) for v in values]
    if not counts or max(counts) == 0:
        return []
    ref = int(np.argmax(counts))
    out: list[tuple[float, Estimate, int]] = []
    for x_c in xs[ref][np.isfinite(values[ref])]:
        ws: list[float] = []
        ys: list[float] = []
        for x, v, wd in zip(xs, values, log_wd, strict=True):
            y = _interpolate(x, v, float(x_c))
            if math.isfinite(y):
                ws.append(float(wd))
                ys.append(y)
        n = len(ws)
        if n < 3:
            continue
        fit = ols(np.column_stack([np.ones(n), ws]), np.asarray(ys))
        est = t_estimate(float(fit.coef[1]), float(fit.stderr[1]), fit.dof, n, confidence)
        out.append((float(x_c), est, n))
    return out


def _interpolate(x: FloatArray, v: FloatArray, at: float) -> float:
    """``v`` at ``at``: the cell itself when a grid point sits there, else the parabola through
    the three nearest cells around it (all finite), so that a curved profile is not read as a
    slope; NaN beyond the row's grid."""
    tol = 1e-9 * max(1.0, abs(at))
    hit = np.flatnonzero(np.abs(x - at) <= tol)
    if hit.size:
        return float(v[hit[0]])
    i = int(np.searchsorted(x, at))
    if i == 0 or i >= x.size:
        return math.nan
    lo = i - 1
    # The third point on the side of the nearer neighbour's far side, within the grid.
    third = i + 1 if (at - x[i - 1] > x[i] - at and i + 1 < x.size) or lo == 0 else i - 2
    idx = sorted({lo, i, third} & set(range(x.size)))
    xs, ys = x[idx], v[idx]
    if not np.isfinite(ys).all():
        # Fall back to the two neighbours alone.
        y0, y1 = float(v[lo]), float(v[i])
        if not (math.isfinite(y0) and math.isfinite(y1)):
            return math.nan
        t = (at - float(x[lo])) / float(x[i] - x[lo])
        return y0 + t * (y1 - y0)
    total = 0.0
    for a in range(len(idx)):
        term = float(ys[a])
        for b in range(len(idx)):
            if a != b:
                term *= (at - float(xs[b])) / float(xs[a] - xs[b])
        total += term
    return total


def column_checks(
    cells: Sequence[Cell],
    k: float,
    scale_power: float,
    layers: Sequence[str],
    cfg: AnalyzeConfig,
    noise_sd: float,
    cell_filter: CellFilter | None = None,
) -> list[ColumnCheck]:
    """The column test (see :func:`column_slopes`): the metric's seed mean, and for each of
    ``layers`` log(‖w‖·λ^s) over equilibrium cells (those ``cell_filter`` admits, by default
    the norm fit's: :func:`~l2bn.analysis.equilibrium.norm_cell_filter`), must be constant
    along η·λ^k = const.

    Bands: the metric's slope may change it across the column's λ span by less than 2
    cell-mean noise sds; log(‖w‖·λ^s)'s slope is an exponent, held to ``cfg.norm_margin``.
    """
    by_wd: dict[float, list[Cell]] = {}
    for c in cells:
        if c.weight_decay > 0:
            by_wd.setdefault(c.weight_decay, []).append(c)
    wds = sorted(by_wd)
    if len(wds) < 3:
        return []
    rows = [sorted(by_wd[w], key=lambda c: c.lr) for w in wds]
    log_wd = np.log(np.array(wds))
    log_lr = [np.log([c.lr for c in r]) for r in rows]
    out: list[ColumnCheck] = []
    metric = [np.array([c.value if math.isfinite(c.value) else c.val_error for c in r])
              for r in rows]  # fmt: skip
    seeds = float(np.median([c.n_seeds for c in cells]))
    sd_mean = noise_sd / math.sqrt(max(seeds, 1.0))
    for x_c, est, n in column_slopes(log_lr, log_wd, metric, k, cfg.confidence):
        band = 2 * sd_mean / float(np.ptp(log_wd))
        out.append(ColumnCheck("error", x_c, est, band, n, column_verdict(est, band)))
    chosen = cell_filter or norm_cell_filter(cells, cfg.equilibrium)
    for layer in layers:
        values = [
            np.array([
                math.log(c.phase1_norms.get(layer, math.nan))
                + scale_power * math.log(c.weight_decay)
                if chosen.admits(c)
                and c.phase1_norms.get(layer, math.nan) > 0
                else math.nan
                for c in r
            ])
            for r in rows
        ]  # fmt: skip
        band = cfg.norm_margin
        for x_c, est, n in column_slopes(log_lr, log_wd, values, k, cfg.confidence):
            quantity = f"norm:{layer}"
            out.append(ColumnCheck(quantity, x_c, est, band, n, column_verdict(est, band)))
    return out


__all__ = [
    "OLS",
    "RELAXATION_CAP",
    "collapse_rss",
    "column_checks",
    "column_slopes",
    "column_verdict",
    "fit_collapse",
    "fit_norms",
    "grid_minimum",
    "ols",
    "parabolic_argmin",
    "relaxation_index",
    "t_estimate",
    "verdict",
]
