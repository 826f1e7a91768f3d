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
from dataclasses import replace
from pathlib import Path

import numpy as np

from l2bn.analysis.estimating.cells import (
    grid_key,
    layer_order,
    locate_optima,
    make_cell,
    seeds_relaxation,
    trial_panel,
)
from l2bn.analysis.estimating.equilibrium import (
    equilibrium_test,
    scale_invariant_layers,
)
from l2bn.analysis.estimating.floor import ESTIMATORS, JOINT, KResult, estimate_k
from l2bn.analysis.estimating.norms import norm_laws
from l2bn.analysis.estimating.panel import Panel
from l2bn.analysis.estimating.primary import (
    Primary,
    as_estimate,
    collapse_panel,
    k_by_epoch,
    primary_fit,
)
from l2bn.analysis.estimating.stats import verdict
from l2bn.analysis.fitted import (
    DIFFERENT,
    EQUIVALENT,
    FAILS,
    INCONCLUSIVE,
    NOT_COLLAPSED,
    OUT_OF_EQUILIBRIUM,
    UNDETERMINED,
    UNKNOWN,
    Cell,
    Estimate,
    KEstimate,
    Optimum,
    ScalingFit,
)
from l2bn.analysis.reading.grouping import GroupData, group_studies, grouping_warnings
from l2bn.analysis.reading.records import StudyData, TrialRecord, trial_history, trial_value
from l2bn.analysis.reading.studies import load_studies
from l2bn.analysis.registered import evaluate
from l2bn.analysis.results import PRIMARY, AnalysisReport, GroupReport
from l2bn.analysis.settings import DEFAULT_METRIC, AnalyzeConfig
from l2bn.errors import AnalysisError, ConfigError
from l2bn.registration import Registration, load_registration
from l2bn.sweep.storage import redact
from l2bn.theory import theory_of

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
    # Every trial's measured relaxation per layer in one vectorized pass per layer (per cell
    # it was a tenth of the fitting time on 10 000 trials).
    healthy = [t for t in trials if not t.diverged]
    measured = {
        layer: dict(zip(map(id, healthy), seeds_relaxation(healthy, layer), strict=True))
        for layer in layer_order(healthy)
    }
    return tuple(
        make_cell(tv, rate, test, invariant, cfg.equilibrium_band, cfg.equilibrium_tail,
                  data.optimizer, measured)
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
        est = as_estimate(result.intervals[name], n, cfg.confidence)
        est = replace(est, method=f"{name}/{est.method}")
        out[name] = KEstimate(est, theory_k, verdict(est, theory_k, cfg.margin))
    return result, out


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
    p = primary_fit(collapse_panel(trials, values), cfg, theory, cells, optima)
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

    norms, columns = norm_laws(cells, trials, cfg, theory, sigma, warnings)
    epochs = k_by_epoch(trials, cfg, rows_used, p.smoothing) if p is not None else ()
    if p is not None and not epochs:
        warnings.append(f"no per-epoch {cfg.metric} in the histories: k over training not fitted")
    layers = layer_order(trials)
    return GroupReport(
        optimizer=data.optimizer,
        norm=data.norm,
        dataset=data.dataset,
        studies=data.studies,
        sources=data.sources,
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
        k_by_epoch=epochs,
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

        read: list[StudyData] = []
        said: list[str] = []
        for path in (cfg.from_csv, *cfg.more_csv):
            alone = not cfg.more_csv and not cfg.storage_too  # then it must hold --study's
            found, their_notes = load_csv_export(path, cfg.studies if alone else ())
            read.extend(found)
            said.extend(their_notes)
        if cfg.storage_too:  # its studies beside the exports' (--study selects among all)
            live, live_notes = load_studies(cfg.storage)
            read.extend(live)
            said.extend(live_notes)
        studies: tuple[StudyData, ...] = _select(tuple(read), cfg.studies)
        _once(studies)
        warnings: tuple[str, ...] = tuple(said)
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
    exports = "csv:" + ",".join(str(p) for p in (cfg.from_csv, *cfg.more_csv))
    if cfg.from_csv is None:
        source = redact(cfg.storage)
    else:
        source = exports + (f" + {redact(cfg.storage)}" if cfg.storage_too else "")
    registration, where = _registration(cfg, studies, notes)
    rule = None if registration is None else evaluate(registration, reports, where)
    return AnalysisReport(source, cfg, tuple(reports), tuple(notes), rule=rule)


def _once(studies: Sequence[StudyData]) -> None:
    """Refuse a study read from two sources (an export and the storage, or two exports): its
    trials would count twice."""
    seen: dict[str, str] = {}
    for s in studies:
        if s.name in seen:
            raise AnalysisError(
                f"study {s.name!r} is read twice: from {seen[s.name]} and from {s.source}; "
                "pass one of them, or --study to pick the others"
            )
        seen[s.name] = s.source


def _select(studies: tuple[StudyData, ...], names: Sequence[str]) -> tuple[StudyData, ...]:
    """The studies named (all when none is), each found in some export."""
    if not names:
        return studies
    have = {s.name for s in studies}
    missing = [n for n in names if n not in have]
    if missing:
        raise AnalysisError(
            f"no study named {', '.join(map(repr, missing))} in the exports; available: "
            f"{', '.join(sorted(have)) or 'none'}"
        )
    return tuple(s for s in studies if s.name in names)


def _registration(
    cfg: AnalyzeConfig, studies: Sequence[StudyData], notes: list[str]
) -> tuple[Registration | None, str]:
    """The reading rule to judge: ``--registration FILE``'s, else the studies' own (one rule;
    studies that registered different ones are judged by none, with a note)."""
    if cfg.registration_path is not None:
        return load_registration(cfg.registration_path), str(cfg.registration_path)
    found = {s.registration.to_json(): s.registration for s in studies if s.registration}
    if len(found) > 1:
        notes.append(
            f"the studies registered {len(found)} different reading rules: none is judged; "
            "pick one with --registration SWEEP.toml"
        )
        return None, ""
    return (next(iter(found.values())), "studies") if found else (None, "")


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
    result = replace(report, written=tuple(written))
    if cfg.report_path is None:
        return result
    # The page embeds the PNGs --plots wrote (result.written), else draws its own figures.
    from l2bn.analysis.presenting.report import write_report

    page = write_report(result, cfg.report_path)
    return replace(result, written=(*written, page))


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
