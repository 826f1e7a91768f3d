"""l2bn.sweep.status: each grid point's state, read from the study alone."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from l2bn.errors import ConfigError, StorageError
from l2bn.sweep.spec import Point, parse_sweep
from l2bn.sweep.status import PointState, grid_status, status_of
from l2bn.sweep.storage import open_storage
from l2bn.sweep.study import SKIPPED_ATTR, RequeueCallback, prepare_study

from .helpers import run_cli, tiny_sweep

SIX = {
    "name": "st",
    "dataset": "synthetic",
    "epochs": 3,
    "lr": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6],
    "weight_decay": [1e-3],
    "optimizers": {"sgd": {}},
}


def claim(study: optuna.Study, lr: float) -> optuna.Trial:
    """Claim the queued trial of the point at ``lr`` (the queue is in grid order)."""
    trial = study.ask()
    assert (
        trial.params == {} and study.trials[trial.number].system_attrs["fixed_params"]["lr"] == lr
    )
    return trial


def test_each_point_state_is_read_from_its_trials(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'x.db'}"
    (sweep,) = parse_sweep(SIX).select(None)
    study = prepare_study(open_storage(url), sweep)
    done = claim(study, 0.1)
    study.tell(done, 0.25)
    diverged = claim(study, 0.2)
    diverged.set_user_attr("diverged", True)
    study.tell(diverged, 0.9)
    running = claim(study, 0.3)
    running.report(0.5, 1)
    running.report(0.4, 2)
    lost = claim(study, 0.4)  # failed, and queued again (below): waiting, after 1 attempt
    study.tell(lost, state=TrialState.FAIL)
    given_up = claim(study, 0.5)  # failed and not queued again (retries spent)
    study.tell(given_up, state=TrialState.FAIL)
    claim(study, 0.6)  # claimed, no epoch reported yet
    spare = study.ask()  # the queue is empty: Optuna makes a trial of no point
    spare.set_user_attr(SKIPPED_ATTR, "queue empty")
    study.tell(spare, state=TrialState.PRUNED)
    RequeueCallback()(study, study.trials[lost.number])
    other = optuna.create_study(storage=url, study_name="elsewhere")  # not this study's
    other.enqueue_trial({"lr": 9.0, "weight_decay": 1e-3, "seed": 0})
    study.enqueue_trial({"lr": 9.0, "weight_decay": 1e-3, "seed": 0})  # a point of no grid

    status = grid_status(study, sweep)
    by_lr = {p.point.lr: p for p in status.points}
    assert [p.point for p in status.points] == sweep.points()
    assert by_lr[0.1].state is PointState.done and by_lr[0.1].value == 0.25
    assert by_lr[0.2].state is PointState.diverged and by_lr[0.2].attempts == 1
    assert by_lr[0.3].state is PointState.running and by_lr[0.3].epoch == 2
    assert by_lr[0.4].state is PointState.waiting and by_lr[0.4].attempts == 1
    assert by_lr[0.5].state is PointState.failed and by_lr[0.5].attempts == 1
    assert by_lr[0.6].state is PointState.running and by_lr[0.6].epoch == 0
    assert (status.total, status.finished, status.complete) == (6, 2, False)
    assert status.count(PointState.running) == 2 and status.skipped == 1
    assert status.extra == {"WAITING": 1}
    assert status.epochs == 3 and status.study_name == "st/sgd"
    assert status.seconds_per_run is not None and status.seconds_per_run >= 0
    assert Point(0.1, 1e-3, 0) in {p.point for p in status.points}


def test_status_of_reads_without_writing_and_names_a_missing_study(tmp_path: Path) -> None:
    (sweep,) = parse_sweep(SIX).select(None)
    with pytest.raises(StorageError, match="run `l2bn sweep` first"):
        status_of(f"sqlite:///{tmp_path / 'none.db'}", sweep)
    assert not (tmp_path / "none.db").exists()
    url = f"sqlite:///{tmp_path / 'x.db'}"
    prepare_study(open_storage(url), sweep)
    with pytest.raises(ConfigError, match="no study 'other'"):
        status_of(url, sweep, "other")
    status = status_of(url, sweep)
    assert status.count(PointState.waiting) == 6 and not status.complete


def test_cli_status_prints_the_grid(tmp_path: Path) -> None:
    path = tiny_sweep(tmp_path, n=2)
    url = f"sqlite:///{tmp_path / 'x.db'}"
    assert run_cli("sweep", str(path), "--storage", url).returncode == 0
    proc = run_cli("status", str(path), "--storage", url)
    assert proc.returncode == 0, proc.stderr
    assert "tiny/sgd: 4/4 done" in proc.stdout and proc.stdout.count("done") >= 4


def test_the_value_column_is_named_after_the_sweeps_objective(tmp_path: Path) -> None:
    from rich.console import Console

    from l2bn.render import status_table

    url = f"sqlite:///{tmp_path / 'x.db'}"
    for objective in ("val_error", "val_loss"):
        (sweep,) = parse_sweep({**SIX, "name": objective, "objective": objective}).select(None)
        prepare_study(open_storage(url), sweep)
        status = status_of(url, sweep)
        assert status.objective == objective
        console = Console(width=200, record=True)
        console.print(status_table(status))
        header = console.export_text().splitlines()[1]
        assert objective in header and ({"val_error", "val_loss"} - {objective}).pop() not in header
