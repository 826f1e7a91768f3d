"""The norm law and the column test: how ‖w‖ and the metric scale along the theory's columns.

* norm exponents log ‖w‖ = c + a log η − b log λ for one layer, in the optimizer's invariant
  coordinates log(‖w‖·λ^s) = c + p·log(η·λ^k) + q·log λ (:func:`fit_norms`: OLS,
  t-intervals) over cells in equilibrium: measured "in" where the group's cells carry
  verdicts, else c·η·λ·T ≥ ``equilibrium``
  (:func:`l2bn.analysis.estimating.equilibrium.norm_cell_filter`);
* the column test (:func:`column_checks`): the metric and log(‖w‖·λ^s) must be constant along
  η·λ^k = const.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from l2bn.analysis.estimating.cells import layer_order, relaxation_summary
from l2bn.analysis.estimating.equilibrium import CellFilter, norm_cell_filter
from l2bn.analysis.estimating.stats import ols, t_estimate, verdict
from l2bn.analysis.fitted import (
    CONSTANT,
    INCONCLUSIVE,
    OUT_OF_EQUILIBRIUM,
    UNDETERMINED,
    VARIES,
    Cell,
    ColumnCheck,
    Estimate,
    NormFit,
)
from l2bn.analysis.reading.records import TrialRecord
from l2bn.analysis.settings import AnalyzeConfig
from l2bn.theory import Theory

FloatArray = npt.NDArray[np.float64]


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
    (:func:`~l2bn.analysis.estimating.equilibrium.norm_cell_filter`) those measured in
    equilibrium where
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
    the norm fit's: :func:`~l2bn.analysis.estimating.equilibrium.norm_cell_filter`), must be
    constant
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


# --- the norm laws of a group, with their warnings -------------------------------------------


def norm_laws(
    cells: Sequence[Cell],
    trials: Sequence[TrialRecord],
    cfg: AnalyzeConfig,
    theory: Theory | None,
    sigma: float,
    warnings: list[str],
) -> tuple[tuple[NormFit, ...], tuple[ColumnCheck, ...]]:
    """The norm law of every layer over the cells in equilibrium (by measurement, else the
    clock) and the column test of the metric and the first layer, with their warnings."""
    layers = layer_order(trials)
    theory_p = None if theory is None else theory.norm_exponent
    s_pow = 0.5 if theory is None else theory.norm_scale_power
    k_col = 1.0 if theory is None else theory.k
    chosen = norm_cell_filter(cells, cfg.equilibrium)
    norms = tuple(fit_norms(cells, layer, cfg, theory_p, s_pow, k_col, chosen) for layer in layers)
    if norms:
        first = norms[0]
        if first.n_excluded:
            warnings.append(_excluded_note(cells, first, chosen))
        if first.n_cells < 4:
            remedy = "" if chosen.measured else ", or a lower --equilibrium"
            warnings.append(
                f"only {first.n_cells} equilibrium cell(s) for {first.layer}: the norm fit "
                f"needs ≥ 4 (longer phase 1, larger η·λ{remedy})"
            )
        warnings.append(relaxation_summary(cells, first.layer, cfg.equilibrium))
    elif trials:
        warnings.append("no per-epoch histories with layer norms: norm exponents not fitted")
    if theory is None:
        return norms, ()
    columns = tuple(column_checks(cells, k_col, s_pow, layers[:1], cfg, sigma, chosen))
    varies = sorted({c.quantity for c in columns if c.verdict == VARIES})
    if varies:
        warnings.append(
            f"column test: {', '.join(varies)} not constant along η·λ^{k_col:g} = const "
            "in some column (see columns)"
        )
    return norms, columns


def _excluded_note(cells: Sequence[Cell], fit: NormFit, chosen: CellFilter) -> str:
    """How many cells the norm fit left out, and by which filter."""
    if not chosen.measured:  # the clock: the words of every l2bn before the records
        return (
            f"{fit.n_excluded} cell(s) out of equilibrium (c·η·λ·T < {chosen.threshold:g}) "
            f"left out of the norm fit; {fit.n_cells} used"
        )
    fitted = [
        c
        for c in cells
        if c.weight_decay > 0 and math.isfinite(v := c.phase1_norms.get(fit.layer, math.nan))
        and v > 0
    ]  # fmt: skip
    n_out = sum(c.equilibrium.verdict == OUT_OF_EQUILIBRIUM for c in fitted)
    clock = sum(c.equilibrium_index >= chosen.threshold for c in fitted)
    return (
        f"{fit.n_excluded} cell(s) not measured in equilibrium ({n_out} out, "
        f"{fit.n_excluded - n_out} unmeasured) left out of the norm fit; {fit.n_cells} used "
        f"(cells chosen by measurement; the clock c·η·λ·T ≥ {chosen.threshold:g} would take "
        f"{clock})"
    )


__all__ = [
    "column_checks",
    "column_slopes",
    "column_verdict",
    "fit_norms",
    "norm_laws",
]
