"""A grid's state, read from its study: each point done, diverged, running, failed or waiting.

Read-only: ``l2bn status`` and the sweep's progress display poll it; nothing here writes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

import optuna
from optuna.trial import FrozenTrial, TrialState

from l2bn.errors import ConfigError
from l2bn.sweep.edges import extension_points, recorded
from l2bn.sweep.spec import OptimizerSweep, Point
from l2bn.sweep.storage import open_storage
from l2bn.sweep.study import point_of


class PointState(StrEnum):
    done = "done"
    diverged = "diverged"  # done, and the run diverged
    running = "running"
    failed = "failed"  # its last run failed and it is not queued again
    waiting = "waiting"


@dataclass(frozen=True)
class PointStatus:
    point: Point
    state: PointState
    epoch: int = 0  # epochs reported so far, for a running point
    value: float | None = None  # the trial's value (GridStatus.objective), for a done point
    attempts: int = 0  # trials that ran for this point (FAIL ones included)


@dataclass(frozen=True)
class GridStatus:
    study_name: str
    epochs: int
    points: tuple[PointStatus, ...]
    skipped: int = 0  # PRUNED trials: queue slots that did not train
    seconds_per_run: float | None = None  # mean wall time of the completed runs
    extra: dict[str, int] = field(default_factory=dict)  # trials not on this grid, by state
    objective: str = "val_error"  # what PointStatus.value is: the sweep's objective

    def count(self, *states: PointState) -> int:
        return sum(1 for p in self.points if p.state in states)

    @property
    def total(self) -> int:
        return len(self.points)

    @property
    def finished(self) -> int:
        return self.count(PointState.done, PointState.diverged)

    @property
    def complete(self) -> bool:
        return self.finished == self.total


def grid_status(study: optuna.Study, sweep: OptimizerSweep) -> GridStatus:
    """Each grid point's state, from one read of the study's trials."""
    by_point: dict[Point, list[FrozenTrial]] = {}
    extra: dict[str, int] = {}
    skipped = 0
    durations = []
    for t in study.get_trials(deepcopy=False):
        if t.state == TrialState.PRUNED:
            skipped += 1
            continue
        p = point_of(t)
        if p is None:
            extra[t.state.name] = extra.get(t.state.name, 0) + 1
            continue
        by_point.setdefault(p, []).append(t)
    out = []
    for p in [*sweep.points(), *extension_points(sweep, recorded(study))]:
        trials = by_point.pop(p, [])
        attempts = sum(1 for t in trials if t.state in (TrialState.FAIL, TrialState.COMPLETE))
        complete = [t for t in trials if t.state == TrialState.COMPLETE]
        running = [t for t in trials if t.state == TrialState.RUNNING]
        if complete:
            t = complete[0]
            if t.duration is not None:
                durations.append(t.duration.total_seconds())
            state = PointState.diverged if t.user_attrs.get("diverged") else PointState.done
            out.append(PointStatus(p, state, value=t.value, attempts=attempts))
        elif running:
            epoch = max((max(t.intermediate_values, default=0) for t in running), default=0)
            out.append(PointStatus(p, PointState.running, epoch=epoch, attempts=attempts))
        elif any(t.state == TrialState.WAITING for t in trials) or not trials:
            out.append(PointStatus(p, PointState.waiting, attempts=attempts))
        else:
            out.append(PointStatus(p, PointState.failed, attempts=attempts))
    for trials in by_point.values():  # points of another grid: a study reused by hand
        for t in trials:
            extra[t.state.name] = extra.get(t.state.name, 0) + 1
    mean = sum(durations) / len(durations) if durations else None
    return GridStatus(
        study.study_name,
        sweep.base_config().epochs,
        tuple(out),
        skipped,
        mean,
        extra,
        sweep.objective.value,
    )


def status_of(storage_url: str, sweep: OptimizerSweep, study_name: str | None = None) -> GridStatus:
    """The grid's state, read-only (the study must exist)."""
    storage = open_storage(storage_url, read_only=True)
    name = study_name or sweep.study_name
    try:
        study = optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        raise ConfigError(f"no study {name!r} in this storage; run `l2bn sweep` first") from None
    return grid_status(study, sweep)
