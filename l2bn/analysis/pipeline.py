"""``l2bn analyze``: measure how η* and ‖w‖ scale with λ in swept Optuna studies.

Pipeline (every step is a function of its inputs; nothing here prints):

1. :func:`l2bn.analysis.loading.load_studies` opens the storage read-only and reads every
   chosen study in bulk, with its training identity (every TrainConfig field but η, λ, seed,
   data_dir and device).
2. :func:`group_studies` pools studies whose training identities are equal; studies of one
   optimizer that differ in anything else (affine, head, width, epochs, batch size, LR drops …)
   form separate groups, and :func:`grouping_warnings` says so.
3. :func:`analyze_group` averages seeds per (η, λ) cell and fits η* per λ, k two ways and the
   norm exponents of every layer (:mod:`l2bn.analysis.fits`), with ‖w‖ the Frobenius norm
   after the last epoch whose η equals the first epoch's, averaged geometrically over a cell's
   non-diverged seeds, over cells in equilibrium: c·η·λ·T ≥ ``equilibrium`` with
   T = steps_per_epoch × epochs in that first phase and c the optimizer's
   :attr:`l2bn.theory.Theory.relaxation_rate` (10 for momentum 0.9, 2 for AdamW, else 1).
4. :func:`analyze` runs 1-3; :func:`run_analysis` also writes the ``--json`` and ``--csv``
   (:mod:`l2bn.analysis.export`) and ``--plots`` (:mod:`l2bn.analysis.plots`) outputs;
   :func:`l2bn.render.render_report` turns a report into rich renderables.

The results and their JSON shape: :mod:`l2bn.analysis.results`. This module is the entry
point: :class:`AnalyzeConfig`, :class:`AnalysisReport` and the verdicts are exported here too.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from l2bn.analysis.estimators import (
    COLLAPSE_BAND,
    ESTIMATORS,
    JOINT,
    PER_LAMBDA,
    Interval,
    KResult,
    Panel,
    build_panel,
    estimate_k,
)
from l2bn.analysis.export import write_csv, write_json
from l2bn.analysis.fits import column_checks, fit_collapse, fit_norms, verdict
from l2bn.analysis.loading import StudyData, TrialRecord, load_studies
from l2bn.analysis.results import (
    DIFFERENT,
    EQUIVALENT,
    INCONCLUSIVE,
    LABEL_FIELDS,
    UNDETERMINED,
    VARIES,
    AnalysisReport,
    AnalyzeConfig,
    Cell,
    ColumnCheck,
    EpochK,
    Estimate,
    GroupReport,
    KEstimate,
    Optimum,
    ScalingFit,
    show_fields,
)
from l2bn.analysis.trials import trial_history, trial_value
from l2bn.errors import AnalysisError, ConfigError
from l2bn.sweep.storage import redact
from l2bn.theory import theory_of


@dataclass(frozen=True)
class GroupData:
    """Studies analyzed together: one training identity, pooled trials."""

    optimizer: str
    norm: str | None
    dataset: str | None
    studies: tuple[str, ...]
    trials: tuple[TrialRecord, ...]
    identity: Mapping[str, Any] = field(default_factory=dict)
    distinct: Mapping[str, Any] = field(default_factory=dict)  # see results.GroupReport


# --- grouping -----------------------------------------------------------------------------


def _identity(s: StudyData) -> Mapping[str, Any]:
    # A StudyData made by hand may lack one: then it is what it was before identities.
    return s.identity or {"optimizer": s.optimizer, "norm": s.norm, "dataset": s.dataset}


def group_studies(studies: Iterable[StudyData]) -> tuple[GroupData, ...]:
    """Pool studies with equal training identities, in first-seen order."""
    pools: dict[frozenset[tuple[str, Any]], list[StudyData]] = defaultdict(list)
    for s in studies:
        pools[frozenset(_identity(s).items())].append(s)
    identities = [_identity(members[0]) for members in pools.values()]
    distinct = _distinct(identities, exclude=LABEL_FIELDS)
    return tuple(
        GroupData(
            optimizer=members[0].optimizer,
            norm=members[0].norm,
            dataset=members[0].dataset,
            studies=tuple(s.name for s in members),
            trials=tuple(t for s in members for t in s.trials),
            identity=identity,
            distinct=d,
        )
        for members, identity, d in zip(pools.values(), identities, distinct, strict=True)
    )


def _distinct(
    identities: Sequence[Mapping[str, Any]], exclude: Sequence[str]
) -> list[dict[str, Any]]:
    """Per identity: its fields (not in ``exclude``) that differ among identities of the same
    optimizer."""
    by_optimizer: dict[Any, list[Mapping[str, Any]]] = defaultdict(list)
    for ident in identities:
        by_optimizer[ident.get("optimizer")].append(ident)
    out = []
    for ident in identities:
        peers = by_optimizer[ident.get("optimizer")]
        keys = dict.fromkeys(k for p in peers for k in p)  # first-seen field order
        varying = [k for k in keys if k not in exclude and len({p.get(k) for p in peers}) > 1]
        out.append({k: ident.get(k) for k in varying})
    return out


def grouping_warnings(groups: Sequence[GroupData], studies: Sequence[StudyData]) -> list[str]:
    """What the grouping did that a reader must know: one optimizer's studies analyzed apart,
    and studies pooled on their attrs alone (no ``config`` attr to compare)."""
    notes: list[str] = []
    by_optimizer: dict[str, list[GroupData]] = defaultdict(list)
    for g in groups:
        by_optimizer[g.optimizer].append(g)
    for opt, gs in by_optimizer.items():
        if len(gs) < 2:
            continue
        differ = _distinct([g.identity for g in gs], exclude=("optimizer",))
        parts = "; ".join(
            f"{', '.join(g.studies)} ({show_fields(d)})" for g, d in zip(gs, differ, strict=True)
        )
        notes.append(
            f"{len(gs)} groups of {opt!r} studies with different training settings, analyzed "
            f"apart, not pooled: {parts}"
        )
    guessed = {s.name for s in studies if not s.has_config}
    for g in groups:
        blind = [n for n in g.studies if n in guessed]
        if len(g.studies) > 1 and blind:
            notes.append(
                f"pooled {', '.join(g.studies)} on their optimizer, norm, dataset, epochs and "
                f"width attrs alone: {', '.join(blind)} without a 'config' user attr (not "
                "written by `l2bn sweep`), so their other training settings are unknown"
            )
    return notes


# --- the per-group analysis ---------------------------------------------------------------


def _key(x: float) -> float:
    # Grid values come back from the database as floats; 10 significant digits merge
    # round-off twins without merging distinct grid points.
    return float(f"{x:.10g}")


def _panel(trials: Sequence[TrialRecord], values: Sequence[float]) -> Panel | None:
    keep = [
        (t, v)
        for t, v in zip(trials, values, strict=True)
        if t.weight_decay > 0 and math.isfinite(v)
    ]
    if len({_key(t.weight_decay) for t, _ in keep}) < 2:
        return None
    return build_panel(
        [_key(t.weight_decay) for t, _ in keep],
        [_key(t.lr) for t, _ in keep],
        [t.seed for t, _ in keep],
        [v for _, v in keep],
    )


def _estimate(iv: Interval, n: int, confidence: float) -> Estimate:
    return Estimate(iv.value, iv.stderr, iv.ci_low, iv.ci_high, n, iv.method, confidence)


def analyze_group(data: GroupData, settings: AnalyzeConfig | None = None) -> GroupReport:
    """Fit η*(λ), k (three ways, plus the whole-grid collapse), the norm laws of every layer,
    the column test and k over training for one group."""
    cfg = settings or AnalyzeConfig()
    warnings: list[str] = []
    values_all = [trial_value(t, cfg.metric) for t in data.trials]
    if cfg.metric != "val_error" and not any(math.isfinite(v) for v in values_all):
        raise ConfigError(
            f"--metric {cfg.metric}: no trial of {', '.join(data.studies)} recorded {cfg.metric} "
            "(studies written before it was recorded); use --metric val_error"
        )
    trials = tuple(t for t, v in zip(data.trials, values_all, strict=True) if math.isfinite(v))
    values = [v for v in values_all if math.isfinite(v)]
    if len(trials) < len(data.trials):
        warnings.append(f"{len(data.trials) - len(trials)} trial(s) without {cfg.metric} left out")
    by_cell: dict[tuple[float, float], list[tuple[TrialRecord, float]]] = defaultdict(list)
    for t, v in zip(trials, values, strict=True):
        by_cell[(_key(t.weight_decay), _key(t.lr))].append((t, v))
    if not by_cell:
        raise AnalysisError(f"{', '.join(data.studies)}: no complete trials to analyze")

    theory = theory_of(data.optimizer)
    rate = 1.0 if theory is None else theory.relaxation_rate
    cells = tuple(_make_cell(tv, rate) for _, tv in sorted(by_cell.items()))
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
    panel = _panel(trials, values)
    optima = _optima(cells, panel, None)
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
        optima = _optima(cells, panel, result)
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
    if scaling.n_lambda < 2:
        warnings.append(
            f"only {scaling.n_lambda} λ value(s) with an interior η* (need ≥ 2): k undetermined"
        )
    collapse = fit_collapse(cells, cfg, theory_k)

    # --- norms, in the optimizer's invariant coordinates, and the column test
    layers = _layer_order(trials)
    theory_p = None if theory is None else theory.norm_exponent
    s_pow = 0.5 if theory is None else theory.norm_scale_power
    k_col = 1.0 if theory is None else theory.k
    norms = tuple(fit_norms(cells, layer, cfg, theory_p, s_pow, k_col) for layer in layers)
    if norms:
        first = norms[0]
        if first.n_excluded:
            warnings.append(
                f"{first.n_excluded} cell(s) out of equilibrium (c·η·λ·T < {cfg.equilibrium:g}) "
                f"left out of the norm fit; {first.n_cells} used"
            )
        if first.n_cells < 4:
            warnings.append(
                f"only {first.n_cells} equilibrium cell(s) for {first.layer}: the norm fit "
                "needs ≥ 4 (longer phase 1, larger η·λ, or a lower --equilibrium)"
            )
        warnings.append(_relaxation_summary(cells, first.layer, cfg.equilibrium))
    elif trials:
        warnings.append("no per-epoch histories with layer norms: norm exponents not fitted")
    columns: tuple[ColumnCheck, ...] = ()
    if theory is not None:
        columns = tuple(column_checks(cells, k_col, s_pow, layers[:1], cfg, sigma))
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
        metric=cfg.metric,
    )


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


def _optima(cells: Sequence[Cell], panel: Panel | None, result: KResult | None) -> list[Optimum]:
    """η* per λ: the grid minimum, the per-λ local quadratic's vertex and CI, and why a λ is
    left out of the joint fit."""
    by_wd: dict[float, list[Cell]] = defaultdict(list)
    for c in cells:
        by_wd[c.weight_decay].append(c)
    row_of = {} if panel is None else {float(w): i for i, w in enumerate(panel.weight_decay)}
    z = 1.959963984540054
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
                lr_ci_low=lo, lr_ci_high=hi, n_band=n_band,
            )
        )  # fmt: skip
    return out


def _k_by_epoch(trials: Sequence[TrialRecord], cfg: AnalyzeConfig) -> tuple[EpochK, ...]:
    """The primary k from each epoch's validation metric (history), with its interval."""
    histories = [trial_history(t, cfg.metric) for t in trials]
    lengths = [len(h) for h in histories if h]
    if not lengths or len(lengths) < len(trials) // 2:
        return ()
    epochs = min(lengths)
    have = [(t, h) for t, h in zip(trials, histories, strict=True) if len(h) >= epochs]
    out = []
    for e in range(epochs):
        panel = _panel([t for t, _ in have], [h[e] for _, h in have])
        if panel is None:
            return ()
        r = estimate_k(panel, cfg.confidence, cfg.interval, cfg.bootstrap, cfg.seed,
                       cfg.k_bounds, which=(JOINT,))  # fmt: skip
        est = _estimate(r.intervals[JOINT], int(r.full.joint.n_rows[0]), cfg.confidence)
        out.append(EpochK(e + 1, est))
    return tuple(out)


def _make_cell(pairs: Sequence[tuple[TrialRecord, float]], relaxation_rate: float) -> Cell:
    trials = [t for t, _ in pairs]
    metric = np.array([v for _, v in pairs])
    vals = np.array([t.val_error for t in trials])
    tests = [t.test_error for t in trials if math.isfinite(t.test_error)]
    healthy = [t for t in trials if not t.diverged]
    norms: dict[str, float] = {}
    relaxation: dict[str, float] = {}
    for layer in _layer_order(healthy):
        logs = [math.log(x) for t in healthy if (x := t.phase1_norm(layer)) > 0]
        norms[layer] = math.exp(statistics.fmean(logs)) if logs else math.nan
        measured = [x for t in healthy if math.isfinite(x := t.relaxation(layer))]
        relaxation[layer] = statistics.median(measured) if measured else math.nan
    eq = [x for t in trials if math.isfinite(x := t.eta_lambda_t)]
    eta_lambda_t = statistics.fmean(eq) if eq else math.nan
    return Cell(
        # The grouping keys, not one trial's raw floats: plots and optima match on them.
        lr=_key(trials[0].lr),
        weight_decay=_key(trials[0].weight_decay),
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
    )


def _relaxation_summary(cells: Sequence[Cell], layer: str, threshold: float) -> str:
    """The measured check of the clock: how many cells relaxed ≥ threshold time constants."""
    measured = [c for c in cells if math.isfinite(c.relaxation.get(layer, math.nan))]
    settled = sum(c.relaxation[layer] >= threshold for c in measured)
    clocked = sum(c.equilibrium_index >= threshold for c in measured)
    return (
        f"measured relaxation of {layer} over phase 1: {settled} of {len(measured)} cell(s) "
        f"≥ {threshold:g} time constants (c·η·λ·T says {clocked}); a diagnostic, no fit uses it"
    )


def _layer_order(trials: Iterable[TrialRecord]) -> tuple[str, ...]:
    names: dict[str, None] = {}
    for t in trials:
        names.update(dict.fromkeys(t.norms))
    return tuple(names)


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
    """:func:`analyze`, then write the --json, --csv and --plots outputs that were asked for."""
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
    return AnalysisReport(report.storage, cfg, report.groups, report.warnings, tuple(written))


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
