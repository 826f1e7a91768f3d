"""From a group's trials to its grid: seed-averaged cells, the k panel, and η* per λ.

* :func:`grid_key`: the grid value a trial's η or λ is filed under (round-off twins merged).
* :func:`make_cell`: one (η, λ) grid point, its seeds averaged: the metric, the errors, the
  phase-1 norms of every layer (geometric mean over non-diverged seeds), the measured
  relaxation (:func:`relaxation_summary` reports it), the equilibrium index c·η·λ·T, and
  whether it is at equilibrium by measurement (:mod:`l2bn.analysis.estimating.equilibrium`).
* :func:`trial_panel`: the λ > 0 trials as a :class:`~l2bn.analysis.estimating.panel.Panel`,
  the input of every estimator of k.
* :func:`locate_optima`: η* per λ, the grid minimum refined by the per-λ local quadratic of the
  k fit, and why a λ is left out of the joint fit.

The per-group analysis (:func:`l2bn.analysis.pipeline.analyze_group`) calls these.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
from scipy import stats

from l2bn.analysis.estimating.equilibrium import cell_equilibrium
from l2bn.analysis.estimating.floor import KResult
from l2bn.analysis.estimating.panel import Panel, build_panel
from l2bn.analysis.estimating.relaxation import relaxation_indices
from l2bn.analysis.fitted import NO_TEST, Cell, Optimum
from l2bn.analysis.reading.records import TrialRecord
from l2bn.analysis.settings import EQUILIBRIUM_BAND, EQUILIBRIUM_TAIL


def grid_key(x: float) -> float:
    # Grid values come back from the database as floats; 10 significant digits merge
    # round-off twins without merging distinct grid points.
    return float(f"{x:.10g}")


def trial_panel(trials: Sequence[TrialRecord], values: Sequence[float]) -> Panel | None:
    keep = [
        (t, v)
        for t, v in zip(trials, values, strict=True)
        if t.weight_decay > 0 and math.isfinite(v)
    ]
    if len({grid_key(t.weight_decay) for t, _ in keep}) < 2:
        return None
    return build_panel(
        [grid_key(t.weight_decay) for t, _ in keep],
        [grid_key(t.lr) for t, _ in keep],
        [t.seed for t, _ in keep],
        [v for _, v in keep],
    )


def locate_optima(
    cells: Sequence[Cell],
    panel: Panel | None,
    result: KResult | None,
    confidence: float = 0.95,
    noise_dof: float = math.inf,
) -> list[Optimum]:
    """η* per λ: the grid minimum, the per-λ local quadratic's vertex and its ``confidence``
    interval (delta method, t on ``noise_dof``: the seeds' pooled degrees of freedom), and why
    a λ is left out of the joint fit. ``used`` here is the joint fit's; the pipeline sets it to
    the primary's."""
    by_wd: dict[float, list[Cell]] = defaultdict(list)
    for c in cells:
        by_wd[c.weight_decay].append(c)
    row_of = {} if panel is None else {float(w): i for i, w in enumerate(panel.weight_decay)}
    z = float(stats.t.ppf(0.5 + confidence / 2, noise_dof))
    out = []
    for wd, cs in sorted(by_wd.items()):
        cs = sorted(cs, key=lambda c: c.lr)
        means = np.array([c.value for c in cs])
        finite = np.isfinite(means)
        i = int(np.nanargmin(np.where(finite, means, np.inf)))
        n = len(cs)
        lr_grid = cs[i].lr
        note: str | None = None
        edge = (
            n >= 3
            and finite.any()
            and i in (int(np.argmax(finite)), n - 1 - int(np.argmax(finite[::-1])))
        )
        lr_opt, lo, hi, used, n_band = lr_grid, math.nan, math.nan, False, 0
        r = row_of.get(wd)
        if wd <= 0:
            note = "λ = 0 has no logarithm"
        elif n < 3:
            note = "fewer than 3 η values"
        elif edge:
            side = "lower" if i == int(np.argmax(finite)) else "upper"
            note = f"η* on the {side} edge of the η grid (extend the grid)"
        elif result is not None and r is not None:
            band = result.full.band
            if bool(band.flat[0, r]):
                note = (
                    "no clear minimum: the error range over this λ's η grid is within what "
                    "noise alone gives (flat; extend the grid)"
                )
            used = bool(band.rows[0, r])
            n_band = int(band.mask[0, r].sum())
            per = result.full.per_lambda
            log_opt, se = float(per.log_opt[0, r]), float(per.log_opt_se[0, r])
            if math.isfinite(log_opt):
                lr_opt = math.exp(log_opt)
                if math.isfinite(se):
                    lo, hi = math.exp(log_opt - z * se), math.exp(log_opt + z * se)
        out.append(
            Optimum(
                weight_decay=wd, lr_opt=lr_opt, lr_grid=lr_grid, val_error=float(means[i]),
                n_lr=n, edge=bool(edge), used=used and note is None, note=note,
                lr_ci_low=lo, lr_ci_high=hi, n_band=n_band, equilibrium=cs[i].equilibrium,
            )
        )  # fmt: skip
    return out


def make_cell(
    pairs: Sequence[tuple[TrialRecord, float]],
    relaxation_rate: float,
    test: str = NO_TEST,
    invariant: Sequence[str] = (),
    band: tuple[float, float] = EQUILIBRIUM_BAND,
    tail: float = EQUILIBRIUM_TAIL,
    optimizer: str | None = None,
    measured: Mapping[str, Mapping[int, float]] | None = None,
) -> Cell:
    """One grid point from its (trial, metric value) pairs; ``test``, ``invariant``, ``band``,
    ``tail`` and ``optimizer`` (its stationarity verdict; None: the θ test's) judge its
    equilibrium
    (:func:`~l2bn.analysis.estimating.equilibrium.cell_equilibrium`). ``measured``: each
    trial's :func:`trial_relaxation` per layer, by ``id(trial)``, when the caller computed
    them for many cells at once (else computed here)."""
    trials = [t for t, _ in pairs]
    metric = np.array([v for _, v in pairs])
    vals = np.array([t.val_error for t in trials])
    tests = [t.test_error for t in trials if math.isfinite(t.test_error)]
    healthy = [t for t in trials if not t.diverged]
    norms: dict[str, float] = {}
    relaxation: dict[str, float] = {}
    for layer in layer_order(healthy):
        logs = [math.log(x) for t in healthy if (x := t.phase1_norm(layer)) > 0]
        norms[layer] = math.exp(statistics.fmean(logs)) if logs else math.nan
        if measured is not None and layer in measured:
            ours = [measured[layer].get(id(t), math.nan) for t in healthy]
        else:
            ours = seeds_relaxation(healthy, layer)
        finite = [float(x) for x in ours if math.isfinite(x)]
        relaxation[layer] = statistics.median(finite) if finite else math.nan
    eq = [x for t in trials if math.isfinite(x := t.eta_lambda_t)]
    eta_lambda_t = statistics.fmean(eq) if eq else math.nan
    return Cell(
        # The grouping keys, not one trial's raw floats: plots and optima match on them.
        lr=grid_key(trials[0].lr),
        weight_decay=grid_key(trials[0].weight_decay),
        n_seeds=len(trials),
        val_error=float(vals.mean()),
        val_error_std=float(vals.std(ddof=1)) if len(vals) > 1 else math.nan,
        test_error=statistics.fmean(tests) if tests else math.nan,
        n_diverged=sum(t.diverged for t in trials),
        eta_lambda_t=eta_lambda_t,
        equilibrium_index=eta_lambda_t * relaxation_rate,
        phase1_norms=norms,
        relaxation=relaxation,
        value=float(metric.mean()),
        value_std=float(metric.std(ddof=1)) if len(metric) > 1 else math.nan,
        equilibrium=cell_equilibrium(trials, test, invariant, band, tail, optimizer),
    )


def trial_relaxation(t: TrialRecord, layer: str) -> float:
    """Measured time constants of ``layer``'s norm over phase 1 (:func:`relaxation_index`)."""
    return float(seeds_relaxation([t], layer)[0])


def seeds_relaxation(trials: Sequence[TrialRecord], layer: str) -> list[float]:
    """:func:`trial_relaxation` of each trial, the histories of equal length at once."""
    out = [math.nan] * len(trials)
    by_length: dict[int, list[int]] = defaultdict(list)
    for i, t in enumerate(trials):
        n = t.phase1_epochs
        if 0 < n <= len(t.norms.get(layer, ())):
            by_length[n].append(i)
    for n, idx in by_length.items():
        rows = np.array([trials[i].norms[layer][:n] for i in idx], dtype=np.float64)
        for i, x in zip(idx, relaxation_indices(rows), strict=True):
            out[i] = float(x)
    return out


def relaxation_summary(cells: Sequence[Cell], layer: str, threshold: float) -> str:
    """The measured check of the clock: how many cells relaxed ≥ threshold time constants."""
    measured = [c for c in cells if math.isfinite(c.relaxation.get(layer, math.nan))]
    settled = sum(c.relaxation[layer] >= threshold for c in measured)
    clocked = sum(c.equilibrium_index >= threshold for c in measured)
    return (
        f"measured relaxation of {layer} over phase 1: {settled} of {len(measured)} cell(s) "
        f"≥ {threshold:g} time constants (c·η·λ·T says {clocked}); a diagnostic, no fit uses it"
    )


def layer_order(trials: Iterable[TrialRecord]) -> tuple[str, ...]:
    names: dict[str, None] = {}
    for t in trials:
        names.update(dict.fromkeys(t.norms))
    return tuple(names)


__all__ = [
    "grid_key",
    "layer_order",
    "locate_optima",
    "make_cell",
    "relaxation_summary",
    "seeds_relaxation",
    "trial_panel",
]
