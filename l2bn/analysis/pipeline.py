"""``l2bn analyze``: measure how η* and ‖w‖ scale with λ in swept Optuna studies.

Pipeline (every step is a function of its inputs; nothing here prints):

1. **Read** (:mod:`l2bn.analysis.reading`): the storage read-only and in bulk, or a ``--csv``
   export; studies pool into groups of equal training identity (every TrainConfig field but
   η, λ, seed, data_dir and device), and studies of one optimizer that differ in anything else
   form separate groups, with a warning.
2. **Estimate** (:mod:`l2bn.analysis.estimating`), per group (:func:`analyze_group`):
   seed-averaged cells, each judged in or out of equilibrium by the stationarity of its norms;
   the primary k, the **whole-surface collapse** error = T(log η + k·log λ) with its cluster
   jackknife interval and the lack-of-collapse test of every λ row
   (:mod:`~l2bn.analysis.estimating.collapse`); the floor estimators (joint parabola, per-λ
   quadratics) as cross-checks; the norm laws of every layer over cells in equilibrium; the
   column test; k over training by the primary.
3. **Present** (:mod:`l2bn.analysis.presenting`): ``--json``, ``--csv``, ``--plots``,
   ``--report``; :func:`l2bn.render.render_report` turns a report into rich renderables.

The settings: :mod:`l2bn.analysis.settings`; the results and their JSON shape:
:mod:`l2bn.analysis.results`.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from l2bn.analysis.estimating import collapse as primary
from l2bn.analysis.estimating.cells import (
    grid_key,
    layer_order,
    locate_optima,
    make_cell,
    relaxation_summary,
    trial_panel,
)
from l2bn.analysis.estimating.equilibrium import (
    CellFilter,
    equilibrium_test,
    norm_cell_filter,
    scale_invariant_layers,
)
from l2bn.analysis.estimating.floor import ESTIMATORS, JOINT, KResult, estimate_k
from l2bn.analysis.estimating.intervals import Interval
from l2bn.analysis.estimating.norms import column_checks, fit_norms
from l2bn.analysis.estimating.panel import Panel, noise_sd
from l2bn.analysis.estimating.stats import verdict
from l2bn.analysis.fitted import (
    DIFFERENT,
    EQUIVALENT,
    FAILS,
    FITS,
    INCONCLUSIVE,
    NOT_COLLAPSED,
    OUT_OF_EQUILIBRIUM,
    UNDETERMINED,
    UNKNOWN,
    UNTESTED,
    VARIES,
    Cell,
    CollapseFit,
    ColumnCheck,
    EpochK,
    Estimate,
    KEstimate,
    NormFit,
    Optimum,
    RowCheck,
    ScalingFit,
)
from l2bn.analysis.reading.grouping import GroupData, group_studies, grouping_warnings
from l2bn.analysis.reading.records import TrialRecord, trial_history, trial_value
from l2bn.analysis.reading.studies import load_studies
from l2bn.analysis.results import PRIMARY, AnalysisReport, GroupReport
from l2bn.analysis.settings import DEFAULT_METRIC, AnalyzeConfig
from l2bn.errors import AnalysisError, ConfigError
from l2bn.sweep.storage import redact
from l2bn.theory import Theory, theory_of

# k over training: the primary at most this many epochs (evenly spaced, the last always in).
K_BY_EPOCH_POINTS = 25
# Estimators of k that differ by less than this are not flagged, whatever their precision.
DISAGREEMENT_FLOOR = 0.025


# --- step 1: the metric and the trials that have it ------------------------------------------


def group_metric(data: GroupData, settings: AnalyzeConfig) -> tuple[str, str | None]:
    """The metric that locates this group's η*, and a note when it is not what the studies
    asked for: ``--metric`` when given; else the studies' stored objective when they agree
    (a study that stored none counts as val_error), else val_error."""
    if settings.metric is not None:
        return settings.metric, None
    stored = {o or DEFAULT_METRIC for o in data.objectives} or {DEFAULT_METRIC}
    if len(stored) == 1:
        return stored.pop(), None
    return DEFAULT_METRIC, (
        f"the studies' stored objectives differ ({', '.join(sorted(stored))}): η* located by "
        f"{DEFAULT_METRIC}; choose with --metric"
    )


def _trials_with_metric(
    data: GroupData, cfg: AnalyzeConfig, warnings: list[str]
) -> tuple[AnalyzeConfig, tuple[TrialRecord, ...], list[float]]:
    """The metric every step reads (in the returned settings), the trials that recorded it and
    their values."""
    metric, note = group_metric(data, cfg)
    if note is not None:
        warnings.append(note)
    values = [trial_value(t, metric) for t in data.trials]
    if metric != DEFAULT_METRIC and not any(math.isfinite(v) for v in values):
        if cfg.metric is not None:
            raise ConfigError(
                f"--metric {metric}: no trial of {', '.join(data.studies)} recorded {metric} "
                "(studies written before it was recorded); use --metric val_error"
            )
        warnings.append(
            f"the studies' objective is {metric}, but no trial recorded it: η* located by "
            f"{DEFAULT_METRIC}"
        )
        metric = DEFAULT_METRIC
        values = [trial_value(t, metric) for t in data.trials]
    keep = [(t, v) for t, v in zip(data.trials, values, strict=True) if math.isfinite(v)]
    if len(keep) < len(data.trials):
        warnings.append(f"{len(data.trials) - len(keep)} trial(s) without {metric} left out")
    if not keep:
        raise AnalysisError(f"{', '.join(data.studies)}: no complete trials to analyze")
    return replace(cfg, metric=metric), tuple(t for t, _ in keep), [v for _, v in keep]


# --- step 2: cells --------------------------------------------------------------------------


def _cells(
    data: GroupData, trials: Sequence[TrialRecord], values: Sequence[float], cfg: AnalyzeConfig
) -> tuple[Cell, ...]:
    theory = theory_of(data.optimizer)
    rate = 1.0 if theory is None else theory.relaxation_rate
    test = equilibrium_test(data.optimizer)
    invariant = scale_invariant_layers(data.identity)
    by_cell: dict[tuple[float, float], list[tuple[TrialRecord, float]]] = defaultdict(list)
    for t, v in zip(trials, values, strict=True):
        by_cell[(grid_key(t.weight_decay), grid_key(t.lr))].append((t, v))
    return tuple(
        make_cell(tv, rate, test, invariant, cfg.equilibrium_band, cfg.equilibrium_tail,
                  data.optimizer)
        for _, tv in sorted(by_cell.items())
    )  # fmt: skip


def _trial_warnings(trials: Sequence[TrialRecord], cells: Sequence[Cell]) -> list[str]:
    notes = []
    n_diverged = sum(t.diverged for t in trials)
    if n_diverged:
        notes.append(
            f"{n_diverged} diverged trial(s) in {sum(c.n_diverged > 0 for c in cells)} cell(s): "
            "left out of the primary; the floor estimators count their error as reported "
            "(chance level); their norms are left out"
        )
    steps = {s for t in trials if (s := t.steps_per_epoch) is not None}
    if len(steps) > 1:
        notes.append(f"steps_per_epoch differs between trials: {sorted(steps)}")
    return notes


# --- step 3: the primary k, the whole-surface collapse ---------------------------------------


@dataclass(frozen=True)
class Primary:
    """The primary's fit as analyze reports it, with the rows it kept (by λ)."""

    fit: CollapseFit
    scaling: ScalingFit
    rows_used: frozenset[float]


def _collapse_panel(trials: Sequence[TrialRecord], values: Sequence[float]) -> Panel | None:
    """The λ > 0, non-diverged trials: the primary reads every non-diverged cell."""
    keep = [(t, v) for t, v in zip(trials, values, strict=True) if not t.diverged]
    return trial_panel([t for t, _ in keep], [v for _, v in keep])


def _primary(
    panel: Panel | None,
    cfg: AnalyzeConfig,
    theory: Theory | None,
    cells: Sequence[Cell],
    optima: Sequence[Optimum],
) -> Primary | None:
    if panel is None:
        return None
    sigma, _ = noise_sd(panel)
    result = primary.collapse_fit(panel, sigma, cfg.confidence, cfg.k_bounds)
    if result is None:
        return None
    iv = result.interval
    theory_k = None if theory is None else theory.k
    n_rows = int(result.rows.sum())
    est = _estimate(iv, n_rows, cfg.confidence)
    if result.status == primary.NOT_COLLAPSED:
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
            state = FAILS if t.p_value < primary.LACK_LEVEL else FITS
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
    curve_y = primary.template_curve(result, curve_x)
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
    return Primary(fit, scaling, used)


def _r_squared(panel: Panel, result: primary.CollapseResult, k: float, centre: float) -> float:
    """The share of the used cells' (seed-mean) variance the curve explains."""
    if not math.isfinite(k):
        return math.nan
    means = np.nanmean(np.where(panel.present, panel.values, np.nan), axis=-1)
    x = panel.log_lr + k * (panel.log_wd - centre)[:, None]
    ok = np.isfinite(means) & result.rows[:, None]
    if ok.sum() < 3:
        return math.nan
    fitted = primary.template_curve(result, x[ok])
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


def _estimate(iv: Interval, n: int, confidence: float) -> Estimate:
    return Estimate(iv.value, iv.stderr, iv.ci_low, iv.ci_high, n, iv.method, confidence)


# --- step 4: the floor estimators, cross-checks ---------------------------------------------


def _floor(
    panel: Panel | None, cfg: AnalyzeConfig, theory_k: float | None
) -> tuple[KResult | None, dict[str, KEstimate]]:
    if panel is None:
        return None, {}
    result = estimate_k(panel, cfg.confidence, cfg.interval, cfg.bootstrap, cfg.seed)
    out = {}
    for name in ESTIMATORS:
        n = (
            int(result.full.joint.n_rows[0]) if name == JOINT
            else int(np.isfinite(result.full.per_lambda.log_opt[0]).sum())
        )  # fmt: skip
        est = _estimate(result.intervals[name], n, cfg.confidence)
        est = replace(est, method=f"{name}/{est.method}")
        out[name] = KEstimate(est, theory_k, verdict(est, theory_k, cfg.margin))
    return result, out


# --- step 5: norms and columns ----------------------------------------------------------------


def _norms(
    cells: Sequence[Cell],
    trials: Sequence[TrialRecord],
    cfg: AnalyzeConfig,
    theory: Theory | None,
    sigma: float,
    warnings: list[str],
) -> tuple[tuple[NormFit, ...], tuple[ColumnCheck, ...]]:
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


# --- warnings -------------------------------------------------------------------------------


def _equilibrium_warnings(optima: Sequence[Optimum], cfg: AnalyzeConfig) -> list[str]:
    """Optimum cells measured out of equilibrium (and, beside measured ones, unmeasured)."""
    judged = [o for o in optima if o.weight_decay > 0]
    out = [o for o in judged if o.equilibrium.verdict == OUT_OF_EQUILIBRIUM]
    unknown = [o for o in judged if o.equilibrium.verdict == UNKNOWN]
    notes = []
    if out:
        shown = ", ".join(
            f"λ={o.weight_decay:.3g} ({o.equilibrium.describe()}, "
            f"{o.equilibrium.n_seeds - o.equilibrium.n_in} of {o.equilibrium.n_seeds} seed(s) "
            "out)"
            for o in out
        )
        notes.append(
            f"{len(out)} of {len(judged)} optimum cell(s) not in equilibrium (their norms still "
            f"move over the last {cfg.equilibrium_tail:.0%} of phase 1): {shown}; η* there is "
            "not the equilibrium optimum the theory's k describes (a longer phase 1 or a "
            "larger η·λ)"
        )
    if unknown and len(unknown) < len(judged):
        notes.append(
            f"equilibrium unknown at {len(unknown)} of {len(judged)} optimum cell(s) "
            f"(λ={', '.join(f'{o.weight_decay:.3g}' for o in unknown)}): unmeasured records"
        )
    return notes


def _unsettled(optima: Sequence[Optimum], scaling: ScalingFit) -> str | None:
    """Where most optimum cells of the primary's rows are measured out of equilibrium, its k
    describes runs that still remember w₀: a fact about them, not a test of the theory."""
    used = [o for o in optima if o.used and o.weight_decay > 0]
    out = [o for o in used if o.equilibrium.verdict == OUT_OF_EQUILIBRIUM]
    if not used or 2 * len(out) <= len(used) or not math.isfinite(scaling.k.value):
        return None
    return (
        f"{len(out)} of {len(used)} optimum cells of the primary's rows are out of equilibrium: "
        f"k = {scaling.k.value:.2f} describes runs that still remember w₀, and tests the "
        "theory's k only as far as they have forgotten it (a longer phase 1 settles it)"
    )


def _k_warnings(
    p: Primary | None,
    floor: dict[str, KEstimate],
    panel: Panel | None,
    diverged: int = 0,
    total: int = 0,
) -> list[str]:
    notes: list[str] = []
    if panel is not None and panel.n_seeds < 2:
        notes.append(
            "1 seed: no independent clusters to resample, so the primary has no interval; the "
            "floor estimators' delta-t interval sees grid and fit noise only"
        )
    if panel is not None and panel.independent_rows:
        notes.append(
            "λ rows use independent seeds (no seed shared between rows): intervals resample "
            "(λ, seed) pairs"
        )
    if p is None:
        notes.append(
            "fewer than 2 λ rows with ≥ 3 non-diverged cells: the primary k is undetermined"
            + (f" ({diverged} of {total} trials diverged)" if diverged else "")
        )
        return notes
    fit = p.fit
    if fit.reason:
        notes.append(f"primary k: {fit.reason}")
    failed = [r for r in fit.rows if r.verdict == FAILS]
    if failed:
        shown = "; ".join(
            f"λ={r.weight_decay:.3g} ({'left out' if not r.used else 'kept'}: cell at "
            f"η={r.worst_lr:.3g} off the others' curve by {r.worst_z:+.1f} noise sds, "
            f"p={r.p_value:.2g}; {r.cause})"
            for r in failed
        )
        if fit.status == NOT_COLLAPSED:
            notes.append(
                f"the surface does not collapse: {shown}; its k describes these runs, it is "
                "not a test of the theory"
            )
        else:
            notes.append(f"lack of collapse: {shown}")
    primary_k = fit.k
    for name, ke in floor.items():
        other = ke.k
        if not (primary_k.determined and other.determined):
            continue
        # Half-widths, not stderrs; the two share their data, so the root-sum-square is
        # conservative: a flag, not a test.
        half = math.hypot(
            (primary_k.ci_high - primary_k.ci_low) / 2, (other.ci_high - other.ci_low) / 2
        )
        if abs(primary_k.value - other.value) > max(half, DISAGREEMENT_FLOOR):
            notes.append(
                f"k estimators disagree beyond their uncertainty: collapse {primary_k.value:.2f}"
                f" vs {name} {other.value:.2f} (combined CI half-width {half:.2f})"
            )
    return notes


# --- step 6: k over training ------------------------------------------------------------------


def _k_by_epoch(
    trials: Sequence[TrialRecord], cfg: AnalyzeConfig, rows: frozenset[float]
) -> tuple[EpochK, ...]:
    """The primary k from the validation metric after each of up to K_BY_EPOCH_POINTS epochs,
    over the λ rows the final fit kept (no lack-of-collapse tests per epoch)."""
    healthy = [t for t in trials if not t.diverged]
    histories = [trial_history(t, cfg.metric or DEFAULT_METRIC) for t in healthy]
    lengths = [len(h) for h in histories if h]
    if not lengths or len(lengths) < len(healthy) // 2:
        return ()
    epochs = min(lengths)
    have = [(t, h) for t, h in zip(healthy, histories, strict=True) if len(h) >= epochs]
    picks = sorted({round(x) for x in np.linspace(0, epochs - 1, min(epochs, K_BY_EPOCH_POINTS))})
    out = []
    for e in picks:
        panel = trial_panel([t for t, _ in have], [h[e] for _, h in have])
        if panel is None:
            return ()
        sigma, _ = noise_sd(panel)
        use = np.array([float(w) in rows for w in panel.weight_decay]) if rows else None
        result = primary.collapse_fit(
            panel, sigma, cfg.confidence, cfg.k_bounds, rows=use, test=False
        )
        if result is None:
            continue
        out.append(EpochK(e + 1, _estimate(result.interval, int(result.rows.sum()),
                                           cfg.confidence)))  # fmt: skip
    return tuple(out)


# --- the per-group analysis -----------------------------------------------------------------


def analyze_group(data: GroupData, settings: AnalyzeConfig | None = None) -> GroupReport:
    """One group: its cells and their equilibrium, the primary k (the whole-surface collapse)
    with its row tests, the floor estimators, the norm laws, the column test and k over
    training."""
    warnings: list[str] = []
    cfg, trials, values = _trials_with_metric(data, settings or AnalyzeConfig(), warnings)
    cells = _cells(data, trials, values, cfg)
    warnings.extend(_trial_warnings(trials, cells))
    theory = theory_of(data.optimizer)
    theory_k = None if theory is None else theory.k
    if theory is None:
        warnings.append(f"no theory for optimizer {data.optimizer!r}: verdicts undetermined")

    floor_panel = trial_panel(trials, values)
    floor, floor_estimates = _floor(floor_panel, cfg, theory_k)
    sigma = math.nan if floor is None else floor.sigma
    source = "none" if floor is None else floor.sigma_source
    noise_dof = _noise_dof(floor_panel)
    optima = locate_optima(cells, floor_panel, floor, cfg.confidence, noise_dof)
    p = _primary(_collapse_panel(trials, values), cfg, theory, cells, optima)
    if p is None:
        scaling = ScalingFit(Estimate.missing(0), math.nan, math.nan, 0, theory_k, UNDETERMINED)
        collapse_fit = None
        rows_used: frozenset[float] = frozenset()
    else:
        scaling, collapse_fit, rows_used = p.scaling, p.fit, p.rows_used
    optima = [replace(o, used=o.weight_decay in rows_used) for o in optima]
    k_estimates = {PRIMARY: KEstimate(scaling.k, theory_k, scaling.verdict), **floor_estimates}
    n_diverged = sum(t.diverged for t in trials)
    warnings.extend(_k_warnings(p, floor_estimates, floor_panel, n_diverged, len(trials)))
    for o in optima:
        if o.note is not None and o.weight_decay > 0 and (o.edge or "flat" in o.note):
            warnings.append(f"λ={o.weight_decay:.3g}: {o.note}")
    warnings.extend(_equilibrium_warnings(optima, cfg))
    unsettled = _unsettled(optima, scaling)
    if unsettled:
        warnings.append(unsettled)

    norms, columns = _norms(cells, trials, cfg, theory, sigma, warnings)
    k_by_epoch = _k_by_epoch(trials, cfg, rows_used) if p is not None else ()
    if p is not None and not k_by_epoch:
        warnings.append(f"no per-epoch {cfg.metric} in the histories: k over training not fitted")
    layers = layer_order(trials)
    return GroupReport(
        optimizer=data.optimizer,
        norm=data.norm,
        dataset=data.dataset,
        studies=data.studies,
        n_trials=len(trials),
        max_seeds=max(c.n_seeds for c in cells),
        n_diverged=n_diverged,
        cells=cells,
        optima=tuple(optima),
        scaling=scaling,
        collapse=collapse_fit,
        norms=norms,
        first_layer=layers[0] if layers else None,
        warnings=tuple(warnings),
        trials=trials,
        identity=data.identity,
        distinct=data.distinct,
        k_estimates=k_estimates,
        columns=columns,
        k_by_epoch=k_by_epoch,
        noise_sd=sigma,
        noise_source=source,
        independent_rows=floor_panel is not None and floor_panel.independent_rows,
        metric=cfg.metric or DEFAULT_METRIC,
        equilibrium_test=equilibrium_test(data.optimizer),
        equilibrium_band=cfg.equilibrium_band,
        equilibrium_tail=cfg.equilibrium_tail,
        objectives=dict(zip(data.studies, data.objectives, strict=False)),
    )


def _noise_dof(panel: Panel | None) -> float:
    """Degrees of freedom of the seeds' pooled variance (∞ without seeds to pool)."""
    if panel is None:
        return math.inf
    n = panel.present.sum(axis=-1)
    dof = float((n[n >= 2] - 1).sum())
    return dof if dof > 0 else math.inf


# --- entry points -------------------------------------------------------------------------


def analyze(config: AnalyzeConfig | None = None) -> AnalysisReport:
    """Load the chosen studies and analyze every group of equal training identity."""
    cfg = config or AnalyzeConfig()
    if cfg.from_csv is not None:
        from l2bn.analysis.reading.csvfile import load_csv_export

        studies, warnings = load_csv_export(cfg.from_csv, cfg.studies)
    else:
        studies, warnings = load_studies(cfg.storage, cfg.studies)
    groups = group_studies(studies)
    notes = [*warnings, *grouping_warnings(groups, studies)]
    reports: list[GroupReport] = []
    reasons: list[str] = []
    for data in groups:
        where = ", ".join(data.studies)
        lambdas = sorted({t.weight_decay for t in data.trials if t.weight_decay > 0})
        if not data.trials:
            reasons.append(f"{where}: no complete trials")
        elif len(lambdas) < 2:
            shown = ", ".join(f"{x:.3g}" for x in lambdas) or "none > 0"
            reasons.append(
                f"{where}: a single weight_decay value ({shown}); η* ∝ λ^-k needs ≥ 2 λ values"
            )
        else:
            reports.append(analyze_group(data, cfg))
    if not reports:
        raise AnalysisError("nothing to analyze: " + "; ".join(reasons))
    notes.extend(f"skipped {r}" for r in reasons)
    source = redact(cfg.storage) if cfg.from_csv is None else f"csv:{cfg.from_csv}"
    return AnalysisReport(source, cfg, tuple(reports), tuple(notes))


def run_analysis(config: AnalyzeConfig | None = None) -> AnalysisReport:
    """:func:`analyze`, then write the --json, --csv, --plots and --report outputs that were
    asked for (in that order)."""
    cfg = config or AnalyzeConfig()
    report = analyze(cfg)
    from l2bn.analysis.presenting.export import write_csv, write_json

    written: list[Path] = []
    if cfg.json_path is not None:
        written.append(write_json(report, cfg.json_path))
    if cfg.csv_path is not None:
        written.append(write_csv(report, cfg.csv_path))
    if cfg.plots_dir is not None:
        # matplotlib costs a second to import: only for --plots.
        from l2bn.analysis.presenting.plots import write_plots

        written.extend(write_plots(report, cfg.plots_dir))
    result = AnalysisReport(report.storage, cfg, report.groups, report.warnings, tuple(written))
    if cfg.report_path is None:
        return result
    # The page embeds the PNGs --plots wrote (result.written), else draws its own figures.
    from l2bn.analysis.presenting.report import write_report

    page = write_report(result, cfg.report_path)
    return AnalysisReport(result.storage, cfg, result.groups, result.warnings, (*written, page))


__all__ = [
    "DIFFERENT",
    "EQUIVALENT",
    "INCONCLUSIVE",
    "NOT_COLLAPSED",
    "UNDETERMINED",
    "AnalysisReport",
    "AnalyzeConfig",
    "GroupData",
    "GroupReport",
    "analyze",
    "analyze_group",
    "group_studies",
    "grouping_warnings",
    "run_analysis",
    "trial_history",
    "trial_value",
]
