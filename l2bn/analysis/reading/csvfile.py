"""``l2bn analyze --from-csv``: read an ``analyze --csv`` export back into study records.

The export (:func:`l2bn.analysis.presenting.export.write_csv`) holds one row per trial: the
columns of :data:`~l2bn.analysis.presenting.export.CSV_FIXED_COLUMNS` (``val_loss`` only in
newer exports), then ``norm_<layer>_e<epoch>``, and in newer exports ``val_error_e<epoch>`` /
``val_loss_e<epoch>``. Each ``study`` becomes a
:class:`~l2bn.analysis.reading.records.StudyData` whose training identity is what the rows
tell: optimizer, norm, dataset and the epochs seen (the rest unknown, None), so
studies of one optimizer with equal attrs pool as studies without a ``config`` attr do.

η after the first LR phase is not in the export: a record's per-epoch η is η for the
``phase1_epochs`` first epochs and NaN after, which is all the analysis reads of it.

Equilibrium: the per-epoch angles are not in the export either, but each judged layer's ratio
over the tail of phase 1 is (``eq_ratio_<layer>``, newer exports): a record carries them as
:attr:`~l2bn.analysis.reading.records.TrialRecord.tail_ratios`, judged as the storage's would be. An
export without them (older ones) leaves every cell's equilibrium unknown, and the norm fit
picks its cells by the clock c·η·λ·T as before
(:func:`~l2bn.analysis.estimating.equilibrium.norm_cell_filter`).
The per-layer summaries of the update records over that window (``angle_<layer>``,
``angle_eq_<layer>``, ``grad_norm_<layer>``, ``radial_<layer>``, ``tangential_<layer>``,
``balance_<layer>``; newer exports) are read into
:attr:`~l2bn.analysis.reading.records.TrialRecord.tail_summary`, so that an export of a report read
from an export writes them again. ``objective`` (newer exports) is the study's stored
objective, so ``--metric``'s default follows it here too.
"""

from __future__ import annotations

import csv
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from l2bn.analysis.estimating.equilibrium import SUMMARIES
from l2bn.analysis.reading.records import IDENTITY_FIELDS, METRICS, StudyData, TrialRecord
from l2bn.errors import AnalysisError

_NORM = re.compile(r"^norm_(.+)_e(\d+)$")
_METRIC = re.compile(r"^(val_error|val_loss)_e(\d+)$")
_RATIO = re.compile(r"^eq_ratio_(.+)$")
# angle_eq before angle: "angle_eq_conv1" is θ_eq of conv1, not θ of a layer "eq_conv1".
_SUMMARY = re.compile(
    r"^(" + "|".join(sorted((q for q, _ in SUMMARIES), key=len, reverse=True)) + r")_(.+)$"
)
REQUIRED = ("study", "optimizer", "lr", "weight_decay", "seed", "val_error")


def _num(raw: str | None) -> float:
    if raw is None or raw.strip() == "":
        return math.nan
    try:
        return float(raw)
    except ValueError:
        return math.nan


def load_csv_export(
    path: Path, names: Sequence[str] = ()
) -> tuple[tuple[StudyData, ...], tuple[str, ...]]:
    """The studies of an export at ``path`` (all, or those in ``names``), and warnings."""
    if not path.is_file():
        raise AnalysisError(f"no such CSV export {str(path)!r}")
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        header = reader.fieldnames or []
        missing = [c for c in REQUIRED if c not in header]
        if missing:
            raise AnalysisError(
                f"{path}: not an `l2bn analyze --csv` export (missing column(s) "
                f"{', '.join(missing)})"
            )
        norm_cols: dict[str, list[tuple[int, str]]] = {}
        metric_cols: dict[str, list[tuple[int, str]]] = {}
        ratio_cols: dict[str, str] = {}  # layer → column
        summary_cols: dict[str, dict[str, str]] = {}  # quantity → layer → column
        for col in header:
            if m := _NORM.match(col):
                norm_cols.setdefault(m.group(1), []).append((int(m.group(2)), col))
            elif m := _METRIC.match(col):
                metric_cols.setdefault(m.group(1), []).append((int(m.group(2)), col))
            elif m := _RATIO.match(col):
                ratio_cols[m.group(1)] = col
            elif m := _SUMMARY.match(col):
                summary_cols.setdefault(m.group(1), {})[m.group(2)] = col
        for cols in (*norm_cols.values(), *metric_cols.values()):
            cols.sort()
        rows = list(reader)
    by_study: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_study.setdefault(row["study"], []).append(row)
    if names:
        unknown = [n for n in names if n not in by_study]
        if unknown:
            raise AnalysisError(
                f"no study named {', '.join(map(repr, unknown))} in {path}; available: "
                f"{', '.join(sorted(by_study))}"
            )
        by_study = {n: by_study[n] for n in dict.fromkeys(names)}
    warnings: list[str] = []
    out: list[StudyData] = []
    for name, study_rows in by_study.items():
        trials: list[TrialRecord] = []
        skipped = 0
        for i, row in enumerate(study_rows):
            rec = _record(name, i, row, norm_cols, metric_cols, ratio_cols, summary_cols)
            if rec is None:
                skipped += 1
            else:
                trials.append(rec)
        if skipped:
            warnings.append(
                f"study {name!r}: {skipped} row(s) without a finite val_error and positive "
                "lr, weight_decay ≥ 0 were skipped"
            )
        first = study_rows[0]
        epochs = max((len(v) for v in norm_cols.values()), default=0) or None
        identity: dict[str, Any] = dict.fromkeys(IDENTITY_FIELDS)
        identity.update(
            optimizer=first["optimizer"],
            norm=first.get("norm") or None,
            dataset=first.get("dataset") or None,
            epochs=epochs,
        )
        out.append(
            StudyData(
                name=name,
                optimizer=first["optimizer"],
                norm=identity["norm"],
                dataset=identity["dataset"],
                epochs=epochs,
                trials=tuple(trials),
                n_skipped=skipped,
                identity=identity,
                has_config=False,
                objective=_objective(study_rows),
                source=f"export {path}",
            )
        )
    if not out:
        raise AnalysisError(f"{path}: no trials")
    return tuple(out), tuple(warnings)


def _objective(rows: Sequence[Mapping[str, str]]) -> str | None:
    """The study's stored objective, from its rows' ``objective`` column (None: absent)."""
    found = {(row.get("objective") or "").strip() for row in rows}
    return found.pop() if len(found) == 1 and found <= set(METRICS) else None


def _record(
    study: str,
    index: int,
    row: Mapping[str, str],
    norm_cols: Mapping[str, list[tuple[int, str]]],
    metric_cols: Mapping[str, list[tuple[int, str]]],
    ratio_cols: Mapping[str, str] | None = None,
    summary_cols: Mapping[str, Mapping[str, str]] | None = None,
) -> TrialRecord | None:
    lr, wd, value = _num(row["lr"]), _num(row["weight_decay"]), _num(row["val_error"])
    if not (lr > 0 and wd >= 0 and math.isfinite(lr) and math.isfinite(wd)):
        return None
    # A study whose objective is val_loss may lack a trial's val_error: its loss stands in.
    judged = value if math.isfinite(value) else _num(row.get("val_loss"))
    if not math.isfinite(judged) or not (
        math.isfinite(value) or (row.get("objective") or "").strip() == "val_loss"
    ):
        return None
    norms: dict[str, tuple[float, ...]] = {}
    for layer, cols in norm_cols.items():
        values = [_num(row.get(c)) for _, c in cols]
        while values and not math.isfinite(values[-1]):  # a shorter run's empty tail
            values.pop()
        if values:
            norms[layer] = tuple(values)
    metrics: dict[str, tuple[float, ...]] = {}
    for metric, cols in metric_cols.items():
        values = [_num(row.get(c)) for _, c in cols]
        while values and not math.isfinite(values[-1]):
            values.pop()
        if values:
            metrics[metric] = tuple(values)
    n_epochs = max([len(v) for v in (*norms.values(), *metrics.values())], default=0)
    phase1 = int(_num(row.get("phase1_epochs")) or 0) if row.get("phase1_epochs") else 0
    epoch_lrs = (lr,) * phase1 + (math.nan,) * max(n_epochs - phase1, 0) if phase1 else ()
    tail: dict[str, float] | None = None
    test = (row.get("equilibrium_test") or "").strip() or None
    if ratio_cols and test is not None:
        # "" = the layer does not judge this trial; "nan" = it does, unmeasured.
        tail = {
            layer: _num(raw)
            for layer, col in ratio_cols.items()
            if (raw := (row.get(col) or "").strip()) != ""
        }
    summary: dict[str, dict[str, float]] | None = None
    if summary_cols:
        # "" = not recorded in the window: left out, as tail_summary leaves it out.
        summary = {}
        for quantity, by_layer in summary_cols.items():
            got = {layer: _num(raw) for layer, col in by_layer.items()
                   if (raw := (row.get(col) or "").strip()) != ""}  # fmt: skip
            if got:
                summary[quantity] = got
    steps = _num(row.get("steps_per_epoch"))
    trial = _num(row.get("trial"))
    seed = _num(row.get("seed"))
    return TrialRecord(
        study=study,
        number=int(trial) if math.isfinite(trial) else index,
        lr=lr,
        weight_decay=wd,
        seed=int(seed) if math.isfinite(seed) else 0,
        val_error=value,
        test_error=_num(row.get("test_error")),
        train_loss=_num(row.get("train_loss")),
        diverged=row.get("diverged", "0").strip() in ("1", "True", "true"),
        steps_per_epoch=int(steps) if math.isfinite(steps) and steps > 0 else None,
        epoch_lrs=epoch_lrs,
        norms=norms,
        val_loss=_num(row.get("val_loss")),
        metrics=metrics,
        tail_ratios=tail,
        tail_test=test,
        tail_summary=summary,
    )


__all__ = ["load_csv_export"]
