"""The primary k of one group as analyze reports it: the whole-surface collapse
(:mod:`l2bn.analysis.estimating.collapse`) turned into the report's fitted types, its rows'
tests with their likely causes, and the primary over training.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from l2bn.analysis.estimating import collapse
from l2bn.analysis.estimating.cells import grid_key, trial_panel
from l2bn.analysis.estimating.intervals import Interval
from l2bn.analysis.estimating.panel import Panel, build_panel, noise_sd
from l2bn.analysis.estimating.stats import verdict
from l2bn.analysis.fitted import (
    FAILS,
    FITS,
    NOT_COLLAPSED,
    OUT_OF_EQUILIBRIUM,
    UNKNOWN,
    UNTESTED,
    Cell,
    CollapseFit,
    EpochK,
    Estimate,
    Optimum,
    RowCheck,
    ScalingFit,
)
from l2bn.analysis.reading.records import TrialRecord, trial_history
from l2bn.analysis.settings import DEFAULT_METRIC, AnalyzeConfig
from l2bn.theory import Theory

# k over training: the primary at most this many epochs (evenly spaced, the last always in).
K_BY_EPOCH_POINTS = 12


@dataclass(frozen=True)
class Primary:
    """The primary's fit as analyze reports it, with the rows it kept (by λ)."""

    fit: CollapseFit
    scaling: ScalingFit
    rows_used: frozenset[float]
    smoothing: float  # the template's penalty, held for k over training


def collapse_panel(trials: Sequence[TrialRecord], values: Sequence[float]) -> Panel | None:
    """The λ > 0, non-diverged trials: the primary reads every non-diverged cell."""
    keep = [(t, v) for t, v in zip(trials, values, strict=True) if not t.diverged]
    return trial_panel([t for t, _ in keep], [v for _, v in keep])


def primary_fit(
    panel: Panel | None,
    cfg: AnalyzeConfig,
    theory: Theory | None,
    cells: Sequence[Cell],
    optima: Sequence[Optimum],
) -> Primary | None:
    if panel is None:
        return None
    sigma, _ = noise_sd(panel)
    result = collapse.collapse_fit(panel, sigma, cfg.confidence, cfg.k_bounds)
    if result is None:
        return None
    iv = result.interval
    theory_k = None if theory is None else theory.k
    n_rows = int(result.rows.sum())
    est = as_estimate(iv, n_rows, cfg.confidence)
    if result.status == collapse.NOT_COLLAPSED:
        judged = NOT_COLLAPSED
    else:
        judged = verdict(est, theory_k, cfg.margin)
    wds = [float(w) for w in panel.weight_decay]
    centre = float(panel.log_wd.mean())
    tested = {t.row: t for t in result.tests}
    rows = []
    for i, wd in enumerate(wds):
        t = tested.get(i)
        if t is None or not math.isfinite(t.p_value):
            state = UNTESTED
        else:
            state = FAILS if t.p_value < collapse.LACK_LEVEL else FITS
        worst_lr = (
            math.exp(float(panel.log_lr[i, t.worst_col])) if t is not None and t.worst_col >= 0
            else math.nan
        )  # fmt: skip
        rows.append(
            RowCheck(wd, bool(result.rows[i]), state,
                     math.nan if t is None else t.p_value,
                     math.nan if t is None else t.worst_z, worst_lr,
                     0 if t is None else t.n_tested,
                     math.nan if t is None else t.k_without,
                     _cause(wd, worst_lr, cells, optima) if state == FAILS else None)
        )  # fmt: skip
    used_x = np.concatenate(
        [panel.log_lr[i][np.isfinite(panel.log_lr[i])] + est.value * (panel.log_wd[i] - centre)
         for i in range(len(wds)) if result.rows[i]]
    ) if math.isfinite(est.value) else np.array([])  # fmt: skip
    curve_x = np.linspace(used_x.min(), used_x.max(), 60) if used_x.size else np.array([])
    curve_y = collapse.template_curve(result, curve_x)
    fit = CollapseFit(
        k=est, theory=theory_k, verdict=judged, status=result.status, rows=tuple(rows),
        n_cells=result.n_cells, x_centre=centre, curve_x=tuple(map(float, curve_x)),
        curve_y=tuple(map(float, curve_y)), noise_sd=sigma, reason=result.reason,
    )  # fmt: skip
    # Where the curve is lowest: log η* at log λ = 0 (the intercept of η* ∝ λ^-k).
    if curve_y.size and np.isfinite(curve_y).any():
        x_min = float(curve_x[int(np.nanargmin(curve_y))])
        intercept = x_min + est.value * centre
        r2 = _r_squared(panel, result, est.value, centre)
    else:
        intercept, r2 = math.nan, math.nan
    scaling = ScalingFit(est, intercept, r2, n_rows, theory_k, judged)
    used = frozenset(wd for wd, r in zip(wds, result.rows, strict=True) if r)
    return Primary(fit, scaling, used, result.smoothing)


def _r_squared(panel: Panel, result: collapse.CollapseResult, k: float, centre: float) -> float:
    """The share of the used cells' (seed-mean) variance the curve explains."""
    if not math.isfinite(k):
        return math.nan
    means = np.nanmean(np.where(panel.present, panel.values, np.nan), axis=-1)
    x = panel.log_lr + k * (panel.log_wd - centre)[:, None]
    ok = np.isfinite(means) & result.rows[:, None]
    if ok.sum() < 3:
        return math.nan
    fitted = collapse.template_curve(result, x[ok])
    y = means[ok]
    good = np.isfinite(fitted)
    tss = float(np.sum((y[good] - y[good].mean()) ** 2))
    return 1 - float(np.sum((y[good] - fitted[good]) ** 2)) / tss if tss > 0 else math.nan


def _cause(wd: float, worst_lr: float, cells: Sequence[Cell], optima: Sequence[Optimum]) -> str:
    """Why a row fails the collapse, as far as the analysis can tell: its worst cell, or its
    optimum cell, out of equilibrium; its η* on a grid edge; a flat row."""
    cell = next(
        (c for c in cells if c.weight_decay == wd and math.isclose(c.lr, worst_lr, rel_tol=1e-6)),
        None,
    )
    if cell is not None and cell.equilibrium.verdict == OUT_OF_EQUILIBRIUM:
        return (
            f"the cell at η={worst_lr:.3g} is out of equilibrium ({cell.equilibrium.describe()}):"
            " it still remembers w₀"
        )
    o = next((o for o in optima if o.weight_decay == wd), None)
    if o is not None and o.equilibrium.verdict == OUT_OF_EQUILIBRIUM:
        return "its optimum cell is out of equilibrium (it still remembers w₀)"
    if o is not None and o.edge:
        return "η* on a grid edge (the row's valley is not covered)"
    if o is not None and o.note is not None and "flat" in o.note:
        return "a flat row (no minimum within the noise)"
    measured = cell is not None and cell.equilibrium.verdict != UNKNOWN
    return "unexplained" + (" (its cells are measured in equilibrium)" if measured else "")


def as_estimate(iv: Interval, n: int, confidence: float) -> Estimate:
    return Estimate(iv.value, iv.stderr, iv.ci_low, iv.ci_high, n, iv.method, confidence)


def k_by_epoch(
    trials: Sequence[TrialRecord],
    cfg: AnalyzeConfig,
    rows: frozenset[float],
    smoothing: float | None = None,
) -> tuple[EpochK, ...]:
    """The primary k from the validation metric after each of up to K_BY_EPOCH_POINTS epochs,
    over the λ rows the final fit kept, at the final fit's penalty ``smoothing`` (no
    lack-of-collapse tests per epoch: one question, how k moves, asked of one curve family)."""
    healthy = [t for t in trials if not t.diverged]
    histories = [trial_history(t, cfg.metric or DEFAULT_METRIC) for t in healthy]
    lengths = [len(h) for h in histories if h]
    if not lengths or len(lengths) < len(healthy) // 2:
        return ()
    epochs = min(lengths)
    have = [
        (t, h) for t, h in zip(healthy, histories, strict=True)
        if len(h) >= epochs and t.weight_decay > 0
    ]  # fmt: skip
    wd = np.array([grid_key(t.weight_decay) for t, _ in have])
    lr = np.array([grid_key(t.lr) for t, _ in have])
    seed = np.array([t.seed for t, _ in have])
    metric = np.array([h[:epochs] for _, h in have], dtype=np.float64).reshape(len(have), epochs)
    picks = sorted({round(x) for x in np.linspace(0, epochs - 1, min(epochs, K_BY_EPOCH_POINTS))})
    out: list[EpochK] = []
    for e in picks:
        ok = np.isfinite(metric[:, e])
        if np.unique(wd[ok]).size < 2:
            return ()
        panel = build_panel(wd[ok], lr[ok], seed[ok], metric[ok, e])
        sigma, _ = noise_sd(panel)
        use = np.array([float(w) in rows for w in panel.weight_decay]) if rows else None
        result = collapse.collapse_fit(
            panel,
            sigma,
            cfg.confidence,
            cfg.k_bounds,
            rows=use,
            test=False,
            smoothing=smoothing,
            centre=out[-1].k.value if out else None,  # k moves little from one point to the next
        )
        if result is None:
            continue
        out.append(EpochK(e + 1, as_estimate(result.interval, int(result.rows.sum()),
                                           cfg.confidence)))  # fmt: skip
    return tuple(out)


__all__ = [
    "K_BY_EPOCH_POINTS",
    "Primary",
    "as_estimate",
    "collapse_panel",
    "k_by_epoch",
    "primary_fit",
]
