"""``l2bn analyze``: measure how η* and ‖w‖ scale with λ in swept Optuna studies.

Pipeline (every step is a function of its inputs; nothing here prints):

1. :func:`l2bn.analysis.loading.load_studies` opens the storage read-only and reads every
   chosen study in bulk, with its training identity (every TrainConfig field but η, λ, seed,
   data_dir and device).
2. :func:`~l2bn.analysis.grouping.group_studies` pools studies whose training identities are
   equal; studies of one optimizer that differ in anything else (affine, head, width, epochs,
   batch size, LR drops …) form separate groups, and
   :func:`~l2bn.analysis.grouping.grouping_warnings` says so (:mod:`l2bn.analysis.grouping`).
3. :func:`analyze_group` averages seeds per (η, λ) cell (:mod:`l2bn.analysis.cells`) and fits
   η* per λ, k three ways (:func:`~l2bn.analysis.intervals.estimate_k`) plus the whole-grid
   collapse, and the norm exponents of every layer (:mod:`l2bn.analysis.fits`), with ‖w‖ the
   Frobenius norm after the last epoch whose η equals the first epoch's, averaged
   geometrically over a cell's non-diverged seeds, over cells in equilibrium. Each cell is
   judged in or out of equilibrium by measurement (the angular update against θ_eq, or
   Adam's growth ÷ shrink, over the tail of phase 1: :mod:`l2bn.analysis.equilibrium`); the
   norm fit takes the cells measured "in" where the group's cells carry verdicts, and where
   every verdict is unknown (studies without the update records) the clock
   c·η·λ·T ≥ ``equilibrium``, with T = steps_per_epoch × epochs in that first phase and c the
   optimizer's :attr:`l2bn.theory.Theory.relaxation_rate` (10 for momentum 0.9, 2 for AdamW,
   else 1); ``norms[].cell_filter`` says which
   (:func:`~l2bn.analysis.equilibrium.norm_cell_filter`). The optimum cells' verdicts are
   counted and warned about. The metric is ``--metric``, else the studies' stored objective
   (:func:`group_metric`).
4. :func:`analyze` runs 1-3; :func:`run_analysis` also writes the ``--json`` and ``--csv``
   (:mod:`l2bn.analysis.export`), ``--plots`` (:mod:`l2bn.analysis.plots`) and ``--report``
   (:mod:`l2bn.analysis.report`) outputs; :func:`l2bn.render.render_report` turns a report
   into rich renderables.

The settings: :mod:`l2bn.analysis.settings`; the results and their JSON shape:
:mod:`l2bn.analysis.results`. This module is the entry point: :class:`AnalyzeConfig`,
:class:`AnalysisReport`, :class:`GroupData`, :func:`group_studies` and the verdicts are
exported here too.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np

from l2bn.analysis.cells import (
    grid_key,
    layer_order,
    locate_optima,
    make_cell,
    relaxation_summary,
    trial_panel,
)
from l2bn.analysis.equilibrium import (
    CellFilter,
    equilibrium_test,
    norm_cell_filter,
    scale_invariant_layers,
)
from l2bn.analysis.estimators import COLLAPSE_BAND, ESTIMATORS, JOINT, PER_LAMBDA
from l2bn.analysis.export import write_csv, write_json
from l2bn.analysis.fits import column_checks, fit_collapse, fit_norms, verdict
from l2bn.analysis.fitted import (
    ANGLE_TEST,
    DIFFERENT,
    EQUIVALENT,
    INCONCLUSIVE,
    OUT_OF_EQUILIBRIUM,
    UNDETERMINED,
    UNKNOWN,
    VARIES,
    Cell,
    ColumnCheck,
    EpochK,
    Estimate,
    KEstimate,
    NormFit,
    Optimum,
    ScalingFit,
)
from l2bn.analysis.grouping import GroupData, group_studies, grouping_warnings
from l2bn.analysis.intervals import Interval, KResult, estimate_k
from l2bn.analysis.loading import TrialRecord, load_studies
from l2bn.analysis.panel import Panel
from l2bn.analysis.results import AnalysisReport, GroupReport
from l2bn.analysis.settings import DEFAULT_METRIC, AnalyzeConfig
from l2bn.analysis.trials import trial_history, trial_value
from l2bn.errors import AnalysisError, ConfigError
from l2bn.sweep.storage import redact
from l2bn.theory import theory_of

# --- the per-group analysis ---------------------------------------------------------------


def _estimate(iv: Interval, n: int, confidence: float) -> Estimate:
    return Estimate(iv.value, iv.stderr, iv.ci_low, iv.ci_high, n, iv.method, confidence)


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


def analyze_group(data: GroupData, settings: AnalyzeConfig | None = None) -> GroupReport:
    """Fit η*(λ), k (three ways, plus the whole-grid collapse), the norm laws of every layer,
    the column test and k over training for one group, and judge its cells' equilibrium."""
    cfg = settings or AnalyzeConfig()
    warnings: list[str] = []
    metric, note = group_metric(data, cfg)
    if note is not None:
        warnings.append(note)
    values_all = [trial_value(t, metric) for t in data.trials]
    if metric != "val_error" and not any(math.isfinite(v) for v in values_all):
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
        values_all = [trial_value(t, metric) for t in data.trials]
    cfg = replace(cfg, metric=metric)  # what every step below (and k over training) reads
    trials = tuple(t for t, v in zip(data.trials, values_all, strict=True) if math.isfinite(v))
    values = [v for v in values_all if math.isfinite(v)]
    if len(trials) < len(data.trials):
        warnings.append(f"{len(data.trials) - len(trials)} trial(s) without {metric} left out")
    by_cell: dict[tuple[float, float], list[tuple[TrialRecord, float]]] = defaultdict(list)
    for t, v in zip(trials, values, strict=True):
        by_cell[(grid_key(t.weight_decay), grid_key(t.lr))].append((t, v))
    if not by_cell:
        raise AnalysisError(f"{', '.join(data.studies)}: no complete trials to analyze")

    theory = theory_of(data.optimizer)
    rate = 1.0 if theory is None else theory.relaxation_rate
    test = equilibrium_test(data.optimizer)
    invariant = scale_invariant_layers(data.identity)
    cells = tuple(
        make_cell(tv, rate, test, invariant, cfg.equilibrium_band, cfg.equilibrium_tail)
        for _, tv in sorted(by_cell.items())
    )
    n_diverged = sum(t.diverged for t in trials)
    max_seeds = max(c.n_seeds for c in cells)
    if n_diverged:
        warnings.append(
            f"{n_diverged} diverged trial(s) in {sum(c.n_diverged > 0 for c in cells)} cell(s); "
            "their error counts as reported (chance level), their norms are left out"
        )
    mixed = {s for t in trials if (s := t.steps_per_epoch) is not None}
    if len(mixed) > 1:
        warnings.append(f"steps_per_epoch differs between trials: {sorted(mixed)}")
    theory_k = None if theory is None else theory.k
    if theory is None:
        warnings.append(f"no theory for optimizer {data.optimizer!r}: verdicts undetermined")

    # --- k: the panel of λ > 0 trials, three estimators, intervals over independent units
    panel = trial_panel(trials, values)
    optima = locate_optima(cells, panel, None)
    if panel is None:
        miss = Estimate.missing(0)
        scaling = ScalingFit(miss, math.nan, math.nan, 0, theory_k, UNDETERMINED)
        k_estimates: dict[str, KEstimate] = {}
        sigma, source, independent = math.nan, "none", False
    else:
        result = estimate_k(
            panel, cfg.confidence, cfg.interval, cfg.bootstrap, cfg.seed, cfg.k_bounds
        )
        sigma, source, independent = result.sigma, result.sigma_source, panel.independent_rows
        optima = locate_optima(cells, panel, result)
        joint = result.full.joint
        n_rows = int(joint.n_rows[0])
        k_estimates = {}
        for name in ESTIMATORS:
            iv = result.intervals[name]
            n = (
                n_rows
                if name != PER_LAMBDA
                else int(np.isfinite(result.full.per_lambda.log_opt[0]).sum())
            )
            est = _estimate(iv, n, cfg.confidence)
            k_estimates[name] = KEstimate(est, theory_k, verdict(est, theory_k, cfg.margin))
        primary = k_estimates[JOINT].k
        primary = Estimate(primary.value, primary.stderr, primary.ci_low, primary.ci_high,
                           primary.n, f"joint/{primary.method}", cfg.confidence)  # fmt: skip
        k_estimates[JOINT] = KEstimate(primary, theory_k, k_estimates[JOINT].verdict)
        intercept = float(joint.centre[0] + primary.value * joint.v_bar)
        scaling = ScalingFit(
            primary, intercept, float(joint.r_squared[0]), n_rows, theory_k,
            k_estimates[JOINT].verdict,
        )  # fmt: skip
        warnings.extend(_k_warnings(result, k_estimates, panel))
    for o in optima:
        if o.note is not None and o.weight_decay > 0 and (o.edge or "flat" in o.note):
            warnings.append(f"λ={o.weight_decay:.3g}: {o.note}")
    warnings.extend(_equilibrium_warnings(optima, test, cfg))
    if scaling.n_lambda < 2:
        warnings.append(
            f"only {scaling.n_lambda} λ value(s) with an interior η* (need ≥ 2): k undetermined"
        )
    collapse = fit_collapse(cells, cfg, theory_k)

    # --- norms, in the optimizer's invariant coordinates, and the column test
    layers = layer_order(trials)
    theory_p = None if theory is None else theory.norm_exponent
    s_pow = 0.5 if theory is None else theory.norm_scale_power
    k_col = 1.0 if theory is None else theory.k
    # Equilibrium cells by measurement where the cells carry verdicts, else by the clock.
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
    columns: tuple[ColumnCheck, ...] = ()
    if theory is not None:
        columns = tuple(column_checks(cells, k_col, s_pow, layers[:1], cfg, sigma, chosen))
        varies = sorted({c.quantity for c in columns if c.verdict == VARIES})
        if varies:
            warnings.append(
                f"column test: {', '.join(varies)} not constant along η·λ^{k_col:g} = const "
                "in some column (see columns)"
            )

    k_by_epoch = _k_by_epoch(trials, cfg) if panel is not None else ()
    if panel is not None and not k_by_epoch:
        warnings.append(f"no per-epoch {cfg.metric} in the histories: k over training not fitted")

    return GroupReport(
        optimizer=data.optimizer,
        norm=data.norm,
        dataset=data.dataset,
        studies=data.studies,
        n_trials=len(trials),
        max_seeds=max_seeds,
        n_diverged=n_diverged,
        cells=cells,
        optima=tuple(optima),
        scaling=scaling,
        collapse=collapse,
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
        independent_rows=independent,
        metric=metric,
        equilibrium_test=test,
        equilibrium_band=cfg.equilibrium_band,
        equilibrium_tail=cfg.equilibrium_tail,
        objectives=dict(zip(data.studies, data.objectives, strict=False)),
    )


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


def _equilibrium_warnings(optima: Sequence[Optimum], test: str, cfg: AnalyzeConfig) -> list[str]:
    """Optimum cells measured out of equilibrium (and, beside measured ones, unmeasured)."""
    judged = [o for o in optima if o.weight_decay > 0]
    out = [o for o in judged if o.equilibrium.verdict == OUT_OF_EQUILIBRIUM]
    unknown = [o for o in judged if o.equilibrium.verdict == UNKNOWN]
    lo, hi = cfg.equilibrium_band
    what = "⟨θ²⟩/θ_eq²" if test == ANGLE_TEST else "growth ÷ shrink"
    notes = []
    if out:
        shown = ", ".join(
            f"λ={o.weight_decay:.3g} ({what} {o.equilibrium.ratio:.3g} in "
            f"{o.equilibrium.worst_layer}, {o.equilibrium.n_seeds - o.equilibrium.n_in} of "
            f"{o.equilibrium.n_seeds} seed(s) out)"
            for o in out
        )
        notes.append(
            f"{len(out)} of {len(judged)} optimum cell(s) not in equilibrium: {what} outside "
            f"[{lo:g}, {hi:g}] over the last {cfg.equilibrium_tail:.0%} of phase 1 at {shown}; "
            "η* there is not the equilibrium optimum the theory's k describes (a longer phase 1 "
            "or a larger η·λ)"
        )
    if unknown and len(unknown) < len(judged):
        notes.append(
            f"equilibrium unknown at {len(unknown)} of {len(judged)} optimum cell(s) "
            f"(λ={', '.join(f'{o.weight_decay:.3g}' for o in unknown)}): unmeasured records"
        )
    return notes


# k estimators that differ by less than this are not flagged, whatever their precision: the
# parabola's misfit of a non-parabolic dip shifts each by ~0.01 on noise-free data.
DISAGREEMENT_FLOOR = 0.025


def _k_warnings(result: KResult, k_estimates: Mapping[str, KEstimate], panel: Panel) -> list[str]:
    notes: list[str] = []
    if result.n_clusters < 2 or (panel.independent_rows and panel.n_seeds < 2):
        notes.append(
            "1 seed: the interval sees grid and fit noise only, not seed-to-seed variation"
        )
    if panel.independent_rows:
        notes.append(
            "λ rows use independent seeds (no seed shared between rows): intervals resample "
            "(λ, seed) pairs"
        )
    primary = k_estimates[JOINT].k
    for name in (PER_LAMBDA, COLLAPSE_BAND):
        other = k_estimates[name].k
        if not (math.isfinite(primary.value) and math.isfinite(other.value)):
            continue
        if not (primary.determined and other.determined):
            continue
        # Half-widths, not stderrs: with 2 seeds the t quantile is 12.7, not 1.96. The two share
        # their data, so the root-sum-square is conservative: a flag, not a test.
        half = math.hypot(
            (primary.ci_high - primary.ci_low) / 2, (other.ci_high - other.ci_low) / 2
        )
        # DISAGREEMENT_FLOOR: differences too small to matter are not worth a warning.
        if abs(primary.value - other.value) > max(half, DISAGREEMENT_FLOOR):
            notes.append(
                f"k estimators disagree beyond their uncertainty: joint {primary.value:.2f} vs "
                f"{name} {other.value:.2f} (combined CI half-width {half:.2f})"
            )
    return notes


def _k_by_epoch(trials: Sequence[TrialRecord], cfg: AnalyzeConfig) -> tuple[EpochK, ...]:
    """The primary k from each epoch's validation metric (history), with its interval."""
    histories = [trial_history(t, cfg.metric or DEFAULT_METRIC) for t in trials]
    lengths = [len(h) for h in histories if h]
    if not lengths or len(lengths) < len(trials) // 2:
        return ()
    epochs = min(lengths)
    have = [(t, h) for t, h in zip(trials, histories, strict=True) if len(h) >= epochs]
    out = []
    for e in range(epochs):
        panel = trial_panel([t for t, _ in have], [h[e] for _, h in have])
        if panel is None:
            return ()
        r = estimate_k(panel, cfg.confidence, cfg.interval, cfg.bootstrap, cfg.seed,
                       cfg.k_bounds, which=(JOINT,))  # fmt: skip
        est = _estimate(r.intervals[JOINT], int(r.full.joint.n_rows[0]), cfg.confidence)
        out.append(EpochK(e + 1, est))
    return tuple(out)


# --- entry points -------------------------------------------------------------------------


def analyze(config: AnalyzeConfig | None = None) -> AnalysisReport:
    """Load the chosen studies and analyze every group of equal training identity."""
    cfg = config or AnalyzeConfig()
    if cfg.from_csv is not None:
        from l2bn.analysis.csvload import load_csv_export

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
    written: list[Path] = []
    if cfg.json_path is not None:
        written.append(write_json(report, cfg.json_path))
    if cfg.csv_path is not None:
        written.append(write_csv(report, cfg.csv_path))
    if cfg.plots_dir is not None:
        # matplotlib costs a second to import: only for --plots.
        from l2bn.analysis.plots import write_plots

        written.extend(write_plots(report, cfg.plots_dir))
    result = AnalysisReport(report.storage, cfg, report.groups, report.warnings, tuple(written))
    if cfg.report_path is None:
        return result
    # The page embeds the PNGs --plots wrote (result.written), else draws its own figures.
    from l2bn.analysis.report import write_report

    page = write_report(result, cfg.report_path)
    return AnalysisReport(result.storage, cfg, result.groups, result.warnings, (*written, page))


__all__ = [
    "DIFFERENT",
    "EQUIVALENT",
    "INCONCLUSIVE",
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
