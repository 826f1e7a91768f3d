"""l2bn.sweep.worker: one lifecycle at every K, and the same fault handling at every K.

Each test runs a worker in this process (run_worker) on a tiny synthetic grid, at K = 1 and
K = 4 where K matters, and injects its fault where the worker meets it: a training exception,
a non-finite result, a signal, a dropped database connection, a trial failed as stale.
"""

from __future__ import annotations

import dataclasses
import math
import os
import signal
import sqlite3
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import optuna
import psycopg
import pytest
import sqlalchemy
from optuna.trial import TrialState

import l2bn.sweep.worker as worker
import l2bn.train.engine as engine
from l2bn.errors import StorageError
from l2bn.sweep.spec import OptimizerSweep, Point, parse_sweep
from l2bn.sweep.storage import open_storage
from l2bn.sweep.study import ERROR_ATTR, RequeueCallback, point_of, prepare_study
from l2bn.sweep.worker import CUDA_FUSE, WorkerSpec, auto_fuse, round_size, run_worker

from .helpers import ATTRS, assert_exactly_once, assert_failed_ones_were_queued_again

K = pytest.mark.parametrize("k", [1, 4])


def grid(**train: Any) -> OptimizerSweep:
    """A 2 × 2 grid (4 points) of width-4 nets on synthetic data, 1 epoch unless told."""
    data = {
        "name": "w",
        "dataset": "synthetic",
        "width": 4,
        "epochs": 1,
        "device": "cpu",
        "precision": "fp32",
        "augment": False,
        "lr_drops": [],
        "lr": [0.01, 0.1],
        "weight_decay": [1e-4, 1e-2],
        "optimizers": {"sgd": {}},
        **train,
    }
    (sweep,) = parse_sweep(data).select(None)
    return sweep


@pytest.fixture
def setup(tmp_path: Path) -> Callable[..., tuple[WorkerSpec, optuna.Study]]:
    def make(k: int, sweep: OptimizerSweep | None = None) -> tuple[WorkerSpec, optuna.Study]:
        sweep = sweep or grid()
        spec = WorkerSpec(f"sqlite:///{tmp_path / 'w.db'}", sweep.study_name, sweep, fuse=k)
        return spec, prepare_study(open_storage(spec.storage), sweep)

    return make


def lost_connection() -> sqlalchemy.exc.OperationalError:
    """What SQLAlchemy raises when a PostgreSQL server goes away under a query."""
    return sqlalchemy.exc.OperationalError(
        "UPDATE trials", {}, psycopg.OperationalError("server closed the connection")
    )


@pytest.fixture
def waits(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the worker's waits for a lost database server (SQLite never goes away)."""
    calls: list[int] = []
    monkeypatch.setattr(worker, "wait_for_storage", lambda storage: calls.append(1))
    return calls


@pytest.fixture
def storage_faults(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Callable[[Any], None]]]:
    """Hooks run on the worker's storage right after it is opened (to inject faults)."""
    hooks: list[Callable[[Any], None]] = []

    def opened(*args: Any, **kwargs: Any) -> Any:
        storage = open_storage(*args, **kwargs)
        for hook in hooks:
            hook(storage)
        return storage

    monkeypatch.setattr(worker, "open_storage", opened)
    yield hooks


def always(*args: Any, **kwargs: Any) -> bool:
    return True


def fail_first(storage: Any, method: str, times: int, when: Callable[..., bool]) -> list[int]:
    """Make ``storage.method`` raise a lost connection the first ``times`` calls that ``when``
    accepts; returns the list of those calls, to check they happened."""
    real = getattr(storage, method)
    hits: list[int] = []

    def flaky(*args: Any, **kwargs: Any) -> Any:
        if len(hits) < times and when(*args, **kwargs):
            hits.append(1)
            raise lost_connection()
        return real(*args, **kwargs)

    setattr(storage, method, flaky)
    return hits


# --- the lifecycle ---------------------------------------------------------------------------


@K
def test_each_point_completes_once_as_its_own_trial(setup: Any, k: int) -> None:
    spec, study = setup(k, grid(epochs=2))
    assert run_worker(spec) == worker.WorkerReport(trials=4, interrupted=False)
    assert_exactly_once(study, 4)
    assert len(study.trials) == 4  # no empty slot, no retry
    for t in study.trials:
        assert set(t.params) == {"lr", "weight_decay", "seed"}
        assert set(t.user_attrs) == ATTRS
        assert sorted(t.intermediate_values) == [1, 2]
        assert t.value == t.intermediate_values[2] == t.user_attrs["history"][-1]["val_error"]
        assert math.isfinite(t.value)


@pytest.mark.parametrize(
    "train",
    [{"affine": False}, {"dataset": "tracking", "epochs": 3}, {"norm": "ln", "head": "bn"}],
    ids=["no-affine", "tracking", "ln"],
)
def test_every_option_trains_fused(setup: Any, train: dict[str, Any]) -> None:
    # Defect 2: K > 1 (the CUDA default) claimed no-affine points and failed every one.
    spec, study = setup(4, grid(**train))
    assert run_worker(spec).trials == 4
    assert_exactly_once(study, 4)
    assert not study.get_trials(states=(TrialState.FAIL, TrialState.PRUNED))


def test_auto_fuse_is_one_on_a_cpu_and_cuda_fuse_on_cuda_whatever_the_options(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import torch

    import l2bn.train.device as device

    for sweep in (grid(), grid(affine=False), grid(dataset="tracking")):
        assert auto_fuse(sweep) == 1
    monkeypatch.setattr(device, "resolve_device", lambda name: torch.device("cuda"))
    for sweep in (grid(), grid(affine=False), grid(dataset="tracking")):
        assert auto_fuse(sweep) == CUDA_FUSE == 16


@pytest.mark.parametrize(
    ("waiting", "k", "rounds"),
    [
        (49, 16, [13, 12, 12, 12]),  # not 16, 16, 16, 1
        (32, 16, [16, 16]),
        (17, 16, [9, 8]),
        (3, 16, [3]),
        (5, 1, [1, 1, 1, 1, 1]),  # the CPU's K = 1: unchanged
    ],
)
def test_rounds_take_the_queue_in_even_shares_of_at_most_k(
    waiting: int, k: int, rounds: list[int]
) -> None:
    sizes = []
    while waiting:
        sizes.append(round_size(waiting, k))
        waiting -= sizes[-1]
    assert sizes == rounds


def test_a_fused_grid_of_49_points_trains_in_rounds_of_13_12_12_12(
    setup: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The tracking toy: 49 real runs in seconds.
    lrs, wds = [0.01 * 2**i for i in range(7)], [1e-4 * 2**i for i in range(7)]
    spec, study = setup(CUDA_FUSE, grid(dataset="tracking", lr=lrs, weight_decay=wds))
    real = engine.train_many
    trained: list[int] = []

    def counted(configs: Any, *args: Any, **kw: Any) -> Any:
        trained.append(len(configs))
        return real(configs, *args, **kw)

    monkeypatch.setattr(engine, "train_many", counted)
    assert run_worker(spec).trials == 49
    assert trained == [13, 12, 12, 12]
    assert_exactly_once(study, 49)


# --- failures are never swallowed -------------------------------------------------------------


@K
def test_a_training_exception_fails_requeues_and_is_raised(
    setup: Any, monkeypatch: pytest.MonkeyPatch, k: int
) -> None:
    spec, study = setup(k)
    real = engine.train_many

    def broken(configs: Any, on_epoch: Any, on_batch: Any, **kw: Any) -> Any:
        def epoch_then_crash(m: int, record: Any) -> None:
            on_epoch(m, record)
            raise ValueError("a bug in the engine\nsecond line")

        return real(configs, epoch_then_crash, on_batch, **kw)

    monkeypatch.setattr(engine, "train_many", broken)
    with pytest.raises(ValueError, match="a bug in the engine"):
        run_worker(spec)
    failed = study.get_trials(states=(TrialState.FAIL,))
    assert len(failed) == k  # every point of the round, not only the one reporting
    for t in failed:
        assert t.user_attrs[ERROR_ATTR] == "ValueError: a bug in the engine"
    assert_failed_ones_were_queued_again(study)
    assert not study.get_trials(states=(TrialState.RUNNING, TrialState.COMPLETE))
    assert len(study.get_trials(states=(TrialState.WAITING,))) == 4


@K
def test_a_non_finite_result_is_a_fail_and_an_error(
    setup: Any, monkeypatch: pytest.MonkeyPatch, k: int
) -> None:
    spec, study = setup(k)
    real = engine.train_many

    def nan_first(configs: Any, *args: Any, **kw: Any) -> Any:
        results = real(configs, *args, **kw)
        first = (0.01, 1e-4)  # the grid's first point: in the first round at any K
        return [
            dataclasses.replace(r, val_error=math.nan)
            if (r.config.lr, r.config.weight_decay) == first
            else r
            for r in results
        ]

    monkeypatch.setattr(engine, "train_many", nan_first)
    with pytest.raises(RuntimeError, match=r"training returned val_error nan at lr=0\.01,"):
        run_worker(spec)
    (bad,) = study.get_trials(states=(TrialState.FAIL,))
    assert point_of(bad) == Point(0.01, 1e-4, 0)
    assert bad.user_attrs[ERROR_ATTR] == "training returned val_error nan"
    # The round's other points were told; nothing is left running.
    done = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(done) == k - 1 and all(math.isfinite(t.value) for t in done)  # type: ignore[arg-type]
    assert not study.get_trials(states=(TrialState.RUNNING,))


def test_reports_are_written_in_order_off_the_training_thread_and_before_the_tell(
    setup: Any, storage_faults: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec, study = setup(4, grid(dataset="tracking", epochs=3))
    real = engine.train_many
    trained = threading.Event()

    def timed(*args: Any, **kw: Any) -> Any:
        results = real(*args, **kw)
        trained.set()
        return results

    monkeypatch.setattr(engine, "train_many", timed)
    log: list[tuple[str, int, Any]] = []  # (what, trial id, step or state), as written

    def watch(s: Any) -> None:
        report, set_state = s.set_trial_intermediate_value, s.set_trial_state_values

        def slow_report(trial_id: int, step: int, value: float) -> None:
            assert threading.current_thread() is not threading.main_thread(), (
                "on the training thread"
            )
            # Held until the round's training ends (600 s: a hang guard): training never
            # waits for a report.
            assert trained.wait(timeout=600), "training waited for a report"
            log.append(("report", trial_id, step))
            report(trial_id, step, value)

        def logged(trial_id: int, state: TrialState, values: Any = None) -> bool:
            log.append(("state", trial_id, state))
            return bool(set_state(trial_id, state, values))

        s.set_trial_intermediate_value, s.set_trial_state_values = slow_report, logged

    storage_faults.append(watch)
    assert run_worker(spec).trials == 4
    assert_exactly_once(study, 4)
    for t in study.trials:
        mine = [(what, x) for what, trial_id, x in log if trial_id == t._trial_id]
        # Claimed, its epochs in order, then told.
        assert mine == [
            ("state", TrialState.RUNNING),
            ("report", 1),
            ("report", 2),
            ("report", 3),
            ("state", TrialState.COMPLETE),
        ]


@K
def test_a_report_the_database_refuses_is_a_storage_error_and_fails_the_round(
    setup: Any, storage_faults: Any, k: int
) -> None:
    # A full disk at the second epoch's first report, written on the reports thread: the
    # same StorageError as when the training thread wrote it, the round's trials failed (a
    # resume queues them again) and none of the reports queued after it written.
    spec, study = setup(k, grid(dataset="tracking", epochs=3))
    where: list[bool] = []

    def full_disk(s: Any) -> None:
        real = s.set_trial_intermediate_value

        def refuse(trial_id: int, step: int, value: float) -> None:
            if step == 2:
                where.append(threading.current_thread() is threading.main_thread())
                raise sqlalchemy.exc.OperationalError(
                    "INSERT", {}, sqlite3.OperationalError("database or disk is full")
                )
            real(trial_id, step, value)

        s.set_trial_intermediate_value = refuse

    storage_faults.append(full_disk)
    with pytest.raises(StorageError, match=r"^storage sqlite:///.*: database or disk is full$"):
        run_worker(spec)
    assert where == [False]  # refused once, off the training thread; nothing written after
    failed = study.get_trials(states=(TrialState.FAIL,))
    assert len(failed) == k and all(sorted(t.intermediate_values) == [1] for t in failed)
    assert not study.get_trials(states=(TrialState.RUNNING, TrialState.COMPLETE))
    assert len(study.get_trials(states=(TrialState.WAITING,))) == 4 - k


# --- signals --------------------------------------------------------------------------------


@K
def test_sigterm_requeues_every_claimed_point(
    setup: Any, monkeypatch: pytest.MonkeyPatch, k: int
) -> None:
    spec, study = setup(k, grid(epochs=3))
    real = engine.train_many

    def signalled(configs: Any, on_epoch: Any, on_batch: Any, **kw: Any) -> Any:
        def epoch_then_sigterm(m: int, record: Any) -> None:
            os.kill(os.getpid(), signal.SIGTERM)  # the worker's handler notes it
            on_epoch(m, record)

        return real(configs, epoch_then_sigterm, on_batch, **kw)

    monkeypatch.setattr(engine, "train_many", signalled)
    report = run_worker(spec)
    assert report.interrupted and report.trials == 0
    failed = study.get_trials(states=(TrialState.FAIL,))
    assert len(failed) == k and all(ERROR_ATTR not in t.user_attrs for t in failed)
    # Stopped at the first epoch's end: its report is kept, nothing trained further.
    assert sorted(failed[0].intermediate_values) == [1]
    assert all(set(t.intermediate_values) <= {1} for t in failed)
    assert_failed_ones_were_queued_again(study)
    assert not study.get_trials(states=(TrialState.RUNNING,))
    assert len(study.get_trials(states=(TrialState.WAITING,))) == 4


# --- a dropped database connection ---------------------------------------------------------------


@K
def test_writes_that_meet_a_dropped_connection_wait_and_are_repeated(
    setup: Any, storage_faults: Any, waits: list[int], k: int
) -> None:
    spec, study = setup(k, grid(epochs=2))
    hits: list[list[int]] = []
    storage_faults.append(
        lambda s: hits.extend(
            [
                fail_first(s, "set_trial_intermediate_value", 2, always),
                fail_first(s, "set_trial_user_attr", 2, always),
                fail_first(s, "set_trial_state_values", 2, always),
            ]
        )
    )
    assert run_worker(spec).trials == 4
    assert [len(h) for h in hits] == [2, 2, 2] and len(waits) == 6
    assert_exactly_once(study, 4)
    assert not study.get_trials(states=(TrialState.FAIL,))  # nothing retrained
    for t in study.trials:
        assert set(t.user_attrs) == ATTRS and sorted(t.intermediate_values) == [1, 2]


@K
def test_a_connection_lost_while_claiming_settles_the_round(
    setup: Any, monkeypatch: pytest.MonkeyPatch, waits: list[int], k: int
) -> None:
    # Lost just after the second claim committed, where no write is repeated: the worker
    # waits for the server, fails the trials claimed so far, queues their points again, and
    # carries on.
    spec, study = setup(k)
    real = worker._Round._skip_reason
    calls: list[int] = []

    def second_claim_lost(self: Any, trial_id: int) -> str | None:
        calls.append(trial_id)
        if len(calls) == 2:
            raise lost_connection()
        return real(self, trial_id)

    monkeypatch.setattr(worker._Round, "_skip_reason", second_claim_lost)
    assert run_worker(spec).trials == 4
    assert waits == [1]
    assert_exactly_once(study, 4)
    failed = study.get_trials(states=(TrialState.FAIL,))
    # The round's claims so far: the first two at K = 4; at K = 1 the second round's one.
    assert len(failed) == min(k, 2)
    assert_failed_ones_were_queued_again(study)
    assert all(not t.intermediate_values for t in failed)  # lost before training


@K
def test_a_result_computed_before_the_server_went_away_is_told_after_it_returns(
    setup: Any, storage_faults: Any, waits: list[int], k: int
) -> None:
    # The final tell meets a connection lost for longer than the repeated writes: the worker
    # waits once more, then tells the result it has rather than training the point again.
    spec, study = setup(k)
    hits: list[list[int]] = []

    def completing(trial_id: int, state: TrialState, values: Any = None) -> bool:
        return state == TrialState.COMPLETE

    storage_faults.append(
        lambda s: hits.append(fail_first(s, "set_trial_state_values", 6, completing))
    )
    assert run_worker(spec).trials == 4
    assert hits == [[1] * 6] and len(waits) == 6
    assert_exactly_once(study, 4)
    assert not study.get_trials(states=(TrialState.FAIL,)) and len(study.trials) == 4


# --- trials failed as stale meanwhile ----------------------------------------------------------


@K
def test_a_trial_failed_as_stale_meanwhile_is_dropped_and_its_retry_completes(
    setup: Any, monkeypatch: pytest.MonkeyPatch, k: int
) -> None:
    # Its heartbeats starved (a stalled node), another worker failed it and queued it again:
    # this worker must not tell it, and the copy trains it exactly once.
    spec, study = setup(k, grid(epochs=2))
    real = engine.train_many
    stolen: list[int] = []

    def starved(configs: Any, on_epoch: Any, on_batch: Any, **kw: Any) -> Any:
        def steal_then_report(m: int, record: Any) -> None:
            if not stolen:
                (running, *_) = study.get_trials(states=(TrialState.RUNNING,))
                study._storage.set_trial_state_values(running._trial_id, TrialState.FAIL)
                RequeueCallback()(study, study._storage.get_trial(running._trial_id))
                stolen.append(running.number)
            on_epoch(m, record)

        return real(configs, steal_then_report, on_batch, **kw)

    monkeypatch.setattr(engine, "train_many", starved)
    run_worker(spec)
    assert_exactly_once(study, 4)
    assert [t.number for t in study.get_trials(states=(TrialState.FAIL,))] == stolen
    assert_failed_ones_were_queued_again(study)
    (retry,) = [t for t in study.trials if t.system_attrs.get("failed_trial") == stolen[0]]
    assert retry.state == TrialState.COMPLETE


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")
@K
def test_stale_trials_of_a_dead_worker_are_failed_and_retried(setup: Any, k: int) -> None:
    spec, study = setup(k)
    spec = dataclasses.replace(spec, heartbeat_interval=1, grace_period=2)
    dead = study.ask()  # claimed by a worker that died after one heartbeat
    study._storage.record_heartbeat(dead._trial_id)
    assert run_worker(spec).trials == 4
    assert_exactly_once(study, 4)
    assert study.trials[dead.number].state == TrialState.FAIL
    assert_failed_ones_were_queued_again(study)


# --- the objective and the tied initial scale --------------------------------------------------


@K
def test_the_objective_val_loss_is_the_value_and_the_intermediate_values(
    setup: Any, k: int
) -> None:
    spec, study = setup(k, grid(epochs=2, objective="val_loss"))
    assert run_worker(spec).trials == 4
    assert_exactly_once(study, 4)
    for t in study.trials:
        assert set(t.user_attrs) == ATTRS
        history = t.user_attrs["history"]
        assert t.value == t.user_attrs["val_loss"] == history[-1]["val_loss"]
        assert t.intermediate_values == {e["epoch"]: e["val_loss"] for e in history}
        assert t.user_attrs["val_error"] == history[-1]["val_error"] != t.value
        assert t.value is not None and math.isfinite(t.value)


@K
def test_each_trial_records_the_initial_scale_its_lambda_row_trained_with(
    setup: Any, k: int
) -> None:
    # e = ½, λ_ref = 1e-2: S = 4·(λ/1e-2)^-½, so 40 at λ = 1e-4 and 4 at 1e-2; at K = 4 the two
    # rows train side by side as one network.
    sweep = grid(init_scale_exponent=0.5, reference_weight_decay=1e-2, init_scale=4.0)
    spec, study = setup(k, sweep)
    assert run_worker(spec).trials == 4
    assert_exactly_once(study, 4)
    for t in study.trials:
        assert set(t.params) == {"lr", "weight_decay", "seed"}  # what analyze reads
        expected = {1e-4: 40.0, 1e-2: 4.0}[t.params["weight_decay"]]
        assert t.user_attrs["init_scale"] == expected


def _diverged_or_nan(real: Callable[..., Any], nan_only: bool) -> Callable[..., Any]:
    """train_many whose run at the grid's first point (lr 0.01, λ 1e-4) ends with a NaN
    validation loss: as a diverged run (the engine's way), or, ``nan_only``, without having
    diverged (a bug)."""

    def train_many(configs: Any, *args: Any, **kw: Any) -> Any:
        results = real(configs, *args, **kw)
        changes = {"val_loss": math.nan} if nan_only else {"val_loss": math.nan, "diverged": True}
        return [
            dataclasses.replace(r, **changes)
            if (r.config.lr, r.config.weight_decay) == (0.01, 1e-4)
            else r
            for r in results
        ]

    return train_many


def test_under_val_loss_a_diverged_run_completes_with_the_worst_value(
    setup: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec, study = setup(1, grid(objective="val_loss"))
    monkeypatch.setattr(engine, "train_many", _diverged_or_nan(engine.train_many, False))
    assert run_worker(spec).trials == 4
    assert_exactly_once(study, 4)
    (bad,) = [t for t in study.trials if point_of(t) == Point(0.01, 1e-4, 0)]
    assert bad.value == math.inf and bad.user_attrs["diverged"] is True
    assert bad.user_attrs["val_loss"] is None


def test_under_val_loss_a_nan_without_divergence_is_a_fail_and_an_error(
    setup: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec, study = setup(1, grid(objective="val_loss"))
    monkeypatch.setattr(engine, "train_many", _diverged_or_nan(engine.train_many, True))
    with pytest.raises(RuntimeError, match=r"training returned val_loss nan at lr=0\.01,"):
        run_worker(spec)
    (bad,) = study.get_trials(states=(TrialState.FAIL,))
    assert point_of(bad) == Point(0.01, 1e-4, 0)
    assert bad.user_attrs[ERROR_ATTR] == "training returned val_loss nan"
