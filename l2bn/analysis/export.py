"""``l2bn analyze --json`` and ``--csv``: a report as files, each written atomically.

JSON (:func:`write_json`): :meth:`~l2bn.analysis.results.AnalysisReport.to_dict`, whose shape
is documented in :mod:`l2bn.analysis.results`.

CSV (:func:`write_csv`): one row per COMPLETE trial, wide format: the columns
:data:`CSV_FIXED_COLUMNS`, then ``norm_<layer>_e<epoch>`` (Frobenius ‖w‖ after that 1-based
epoch) for every layer and epoch seen, then ``val_error_e<epoch>`` and ``val_loss_e<epoch>``
where histories record them; empty where a trial has no such value. A trial's group is the one
of its ``study``. ``l2bn analyze --from-csv`` reads such a file back
(:mod:`l2bn.analysis.csvload`).
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

from l2bn import files
from l2bn.analysis.results import AnalysisReport
from l2bn.analysis.trials import trial_history, trial_value

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
    _mkparent(path)
    with files.atomic_open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(
            [
                *CSV_FIXED_COLUMNS,
                *(f"norm_{n}_e{e + 1}" for n, e in norm_cols),
                *(f"{m}_e{e + 1}" for m, e in metric_cols),
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
                )
                norms = [
                    _csv_num(vals[e]) if e < len(vals := t.norms.get(n, ())) else ""
                    for n, e in norm_cols
                ]
                histories = {m: trial_history(t, m) for m in metric_len}
                metrics = [
                    _csv_num(h[e]) if e < len(h := histories[m]) else "" for m, e in metric_cols
                ]
                w.writerow([*fixed, *norms, *metrics])
    return path


def _csv_num(x: float) -> str:
    return repr(x) if math.isfinite(x) else ""


def _mkparent(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)


__all__ = ["CSV_FIXED_COLUMNS", "write_csv", "write_json"]
