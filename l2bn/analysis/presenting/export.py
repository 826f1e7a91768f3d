"""``l2bn analyze --json`` and ``--csv``: a report as files, each written atomically.

JSON (:func:`write_json`): :meth:`~l2bn.analysis.results.AnalysisReport.to_dict`, whose shape
is documented in :mod:`l2bn.analysis.results`.

CSV (:func:`write_csv`): one row per COMPLETE trial, wide format: the columns
:data:`CSV_FIXED_COLUMNS`, then ``norm_<layer>_e<epoch>`` (Frobenius ‖w‖ after that 1-based
epoch) for every layer and epoch seen, then ``val_error_e<epoch>`` and ``val_loss_e<epoch>``
where histories record them, then ``eq_ratio_<layer>``: the layer's equilibrium ratio over the
last ``equilibrium_tail`` of phase 1 (⟨θ²⟩/θ_eq² or the growth ÷ shrink balance, as the
``equilibrium_test`` column says; :mod:`l2bn.analysis.estimating.equilibrium`) for each layer
that judges
the trial, ``nan`` where that layer was not measured, ``inf`` where θ_eq = 0, empty where the
layer does not judge the trial; empty where a trial has no such value. Then the update
records (:data:`~l2bn.analysis.reading.records.DYNAMICS`), summarized per layer over the same window
(:func:`~l2bn.analysis.estimating.equilibrium.tail_summary`; per-epoch columns of six
quantities would be
thousands): ``angle_<layer>`` (√mean θ², the RMS angular update per step, rad),
``angle_eq_<layer>`` (√mean θ_eq²), ``grad_norm_<layer>`` (RMS G̃ = ‖∇w L‖·‖w‖),
``radial_<layer>`` (mean), ``tangential_<layer>`` (RMS) and ``balance_<layer>`` (mean growth
÷ shrink; ``inf`` where nothing shrank), each over the window's epochs that recorded it, for
every layer some trial recorded it for; empty where a trial did not (older histories, layers
without a θ_eq). ``objective`` is the study's stored objective (empty: not stored,
val_error). A trial's group is the one of its ``study``. ``l2bn analyze --from-csv`` reads
such a file back (:mod:`l2bn.analysis.reading.csvfile`), equilibrium verdicts and the summaries
included.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

from l2bn import files
from l2bn.analysis.estimating.equilibrium import (
    SUMMARIES,
    scale_invariant_layers,
    tail_ratios,
    tail_summary,
)
from l2bn.analysis.fitted import NO_TEST
from l2bn.analysis.reading.records import trial_history, trial_value
from l2bn.analysis.results import AnalysisReport

CSV_FIXED_COLUMNS = (
    "study",
    "trial",
    "optimizer",
    "norm",
    "dataset",
    "lr",
    "weight_decay",
    "seed",
    "val_error",
    "test_error",
    "train_loss",
    "diverged",
    "steps_per_epoch",
    "phase1_epochs",
    "eta_lambda_T",
    "val_loss",
    "objective",
    "equilibrium_test",
)
# Per-epoch validation metrics (TrialRecord.metrics, where loading provides them), after the
# norm columns: ``<metric>_e<epoch>``.
METRIC_COLUMNS = ("val_error", "val_loss")


def write_json(report: AnalysisReport, path: Path) -> Path:
    """The whole report as JSON at ``path`` (its folder created); NaN written as null."""
    _mkparent(path)
    files.write_json(path, report.to_dict())
    return path


def write_csv(report: AnalysisReport, path: Path) -> Path:
    """One row per trial (wide): fixed columns, then ``norm_<layer>_e<epoch>`` (1-based)."""
    layers: dict[str, int] = {}  # layer → most epochs seen, in first-seen layer order
    for g in report.groups:
        for t in g.trials:
            for name, values in t.norms.items():
                layers[name] = max(layers.get(name, 0), len(values))
    norm_cols = [(n, e) for n, count in layers.items() for e in range(count)]
    metric_len = {
        m: max((len(trial_history(t, m)) for g in report.groups for t in g.trials), default=0)
        for m in METRIC_COLUMNS
    }
    metric_cols = [(m, e) for m, count in metric_len.items() for e in range(count)]
    ratios: dict[tuple[str, int], dict[str, float]] = {}  # (study, trial) → layer → ratio
    for g in report.groups:
        if g.equilibrium_test == NO_TEST:
            continue
        invariant = scale_invariant_layers(g.identity)
        for t in g.trials:
            got = tail_ratios(t, g.equilibrium_test, invariant, g.equilibrium_tail)
            ratios[(t.study, t.number)] = got
    ratio_cols = list(dict.fromkeys(layer for r in ratios.values() for layer in r))
    summaries = {
        (t.study, t.number): tail_summary(t, g.equilibrium_tail)
        for g in report.groups
        for t in g.trials
    }
    summary_cols = [
        (q, layer)
        for q, _ in SUMMARIES
        for layer in dict.fromkeys(x for got in summaries.values() for x in got.get(q, {}))
    ]
    _mkparent(path)
    with files.atomic_open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(
            [
                *CSV_FIXED_COLUMNS,
                *(f"norm_{n}_e{e + 1}" for n, e in norm_cols),
                *(f"{m}_e{e + 1}" for m, e in metric_cols),
                *(f"eq_ratio_{n}" for n in ratio_cols),
                *(f"{q}_{n}" for q, n in summary_cols),
            ]
        )
        for g in report.groups:
            for t in g.trials:
                fixed = (
                    t.study,
                    t.number,
                    g.optimizer,
                    g.norm or "",
                    g.dataset or "",
                    repr(t.lr),
                    repr(t.weight_decay),
                    t.seed,
                    repr(t.val_error),
                    _csv_num(t.test_error),
                    _csv_num(t.train_loss),
                    int(t.diverged),
                    "" if t.steps_per_epoch is None else t.steps_per_epoch,
                    t.phase1_epochs,
                    _csv_num(t.eta_lambda_t),
                    _csv_num(trial_value(t, "val_loss")),
                    g.objectives.get(t.study) or "",
                    "" if g.equilibrium_test == NO_TEST else g.equilibrium_test,
                )
                norms = [
                    _csv_num(vals[e]) if e < len(vals := t.norms.get(n, ())) else ""
                    for n, e in norm_cols
                ]
                histories = {m: trial_history(t, m) for m in metric_len}
                metrics = [
                    _csv_num(h[e]) if e < len(h := histories[m]) else "" for m, e in metric_cols
                ]
                mine = ratios.get((t.study, t.number), {})
                eq = [repr(mine[n]) if n in mine else "" for n in ratio_cols]
                summary = summaries[(t.study, t.number)]
                records = [
                    "" if math.isnan(x := summary.get(q, {}).get(n, math.nan)) else repr(x)
                    for q, n in summary_cols
                ]
                w.writerow([*fixed, *norms, *metrics, *eq, *records])
    return path


def _csv_num(x: float) -> str:
    return repr(x) if math.isfinite(x) else ""


def _mkparent(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)


__all__ = ["CSV_FIXED_COLUMNS", "write_csv", "write_json"]
