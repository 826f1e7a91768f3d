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

from l2bn.analysis.export import write_csv, write_json
from l2bn.analysis.fits import LambdaGrid, fit_collapse, fit_k, fit_norms, optimum
from l2bn.analysis.loading import StudyData, TrialRecord, load_studies
from l2bn.analysis.results import (
    CONSISTENT,
    INCONSISTENT,
    LABEL_FIELDS,
    UNDETERMINED,
    AnalysisReport,
    AnalyzeConfig,
    Cell,
    GroupReport,
    show_fields,
)
from l2bn.errors import AnalysisError
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


def analyze_group(data: GroupData, settings: AnalyzeConfig | None = None) -> GroupReport:
    """Fit η*(λ), k (two ways) and the norm exponents for one group."""
    cfg = settings or AnalyzeConfig()
    warnings: list[str] = []
    by_cell: dict[tuple[float, float], list[TrialRecord]] = defaultdict(list)
    for t in data.trials:
        by_cell[(_key(t.weight_decay), _key(t.lr))].append(t)
    if not by_cell:
        raise AnalysisError(f"{', '.join(data.studies)}: no complete trials to analyze")

    theory = theory_of(data.optimizer)
    rate = 1.0 if theory is None else theory.relaxation_rate
    cells = tuple(_make_cell(ts, rate) for _, ts in sorted(by_cell.items()))
    n_diverged = sum(t.diverged for t in data.trials)
    max_seeds = max(c.n_seeds for c in cells)
    if n_diverged:
        warnings.append(
            f"{n_diverged} diverged trial(s) in {sum(c.n_diverged > 0 for c in cells)} cell(s); "
            "their error counts as reported (chance level), their norms are left out"
        )
    mixed = {s for t in data.trials if (s := t.steps_per_epoch) is not None}
    if len(mixed) > 1:
        warnings.append(f"steps_per_epoch differs between trials: {sorted(mixed)}")

    grids: list[LambdaGrid] = []
    for wd in sorted({k[0] for k in by_cell}):
        lrs = sorted(k[1] for k in by_cell if k[0] == wd)
        grids.append(
            LambdaGrid(
                weight_decay=wd,
                lrs=np.array(lrs),
                cell_values=tuple(np.array([t.val_error for t in by_cell[(wd, lr)]]) for lr in lrs),
            )
        )
    all_means = np.array([c.val_error for c in cells])
    group_range = float(all_means.max() - all_means.min())
    optima = []
    for g in grids:
        found, warning = optimum(g, group_range)
        optima.append(found)
        if warning is not None:
            warnings.append(warning)
    used = [g for g, o in zip(grids, optima, strict=True) if o.used]
    theory_k = None if theory is None else theory.k
    if theory is None:
        warnings.append(f"no theory for optimizer {data.optimizer!r}: verdicts undetermined")

    scaling = fit_k(
        used, [o for o in optima if o.used], cfg, theory_k, np.median([c.n_seeds for c in cells])
    )
    if scaling.n_lambda < 2:
        warnings.append(
            f"only {scaling.n_lambda} λ value(s) with an interior η* (need ≥ 2): k undetermined"
        )
    collapse = fit_collapse(cells, cfg, theory_k)

    layers = _layer_order(data.trials)
    theory_ab = None if theory is None else theory.norm_exponent
    norms = tuple(fit_norms(cells, layer, cfg, theory_ab) for layer in layers)
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
    elif data.trials:
        warnings.append("no per-epoch histories with layer norms: norm exponents not fitted")

    return GroupReport(
        optimizer=data.optimizer,
        norm=data.norm,
        dataset=data.dataset,
        studies=data.studies,
        n_trials=len(data.trials),
        max_seeds=max_seeds,
        n_diverged=n_diverged,
        cells=cells,
        optima=tuple(optima),
        scaling=scaling,
        collapse=collapse,
        norms=norms,
        first_layer=layers[0] if layers else None,
        warnings=tuple(warnings),
        trials=data.trials,
        identity=data.identity,
        distinct=data.distinct,
    )


def _make_cell(trials: Sequence[TrialRecord], relaxation_rate: float) -> Cell:
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
    return AnalysisReport(redact(cfg.storage), cfg, tuple(reports), tuple(notes))


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
    "CONSISTENT",
    "INCONSISTENT",
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
]
