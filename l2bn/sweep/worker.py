"""Sweep workers: processes that claim queued grid points and train them, until none is left.

A worker is ``study.optimize(objective, n_trials=1)`` in a loop, so Optuna itself claims the
next WAITING trial (an atomic compare-and-set, see :mod:`l2bn.sweep.storage`), runs the heartbeat
thread, fails stale trials of dead workers (whose points the stale callback queues again) and
records the result. The loop stops when nothing is queued and nothing is running; while
another worker's trial runs it waits, because that trial may yet go stale and need a retry.
"""

from __future__ import annotations

import contextlib
import functools
import math
import multiprocessing
import os
import signal
import time
import traceback
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

import optuna
from optuna.trial import TrialState

from l2bn.errors import L2bnError, StorageError
from l2bn.sweep.spec import OptimizerSweep
from l2bn.sweep.storage import (
    database_error,
    is_connection_error,
    open_storage,
    redact,
    scrub,
    wait_for_storage,
)
from l2bn.sweep.study import (
    LIVE,
    SKIPPED_ATTR,
    GridStatus,
    RequeueCallback,
    grid_status,
    point_of,
    prepare_study,
    result_attrs,
)
from l2bn.train.records import EpochRecord

DEFAULT_HEARTBEAT_S = 30
POLL_S = 1.0


class Interrupted(Exception):
    """SIGINT or SIGTERM reached a worker: stop training, give the point back to the queue."""


@dataclass(frozen=True)
class WorkerSpec:
    storage: str
    study_name: str
    sweep: OptimizerSweep
    heartbeat_interval: int = DEFAULT_HEARTBEAT_S
    grace_period: int | None = None  # None: 4 heartbeats
    torch_threads: int | None = None  # None: torch's default
    fuse: int | None = None  # points trained together in one fused net; None: auto (fused_sweep)

    @property
    def grace(self) -> int:
        return self.grace_period or 4 * self.heartbeat_interval


@dataclass
class WorkerReport:
    trials: int = 0  # trials this worker finished (COMPLETE)
    interrupted: bool = False


class _StopFlag:
    def __init__(self) -> None:
        self.requested = False

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        self.requested = True

    def check(self) -> None:
        if self.requested:
            raise Interrupted(signal.Signals(signal.SIGTERM).name)


class _Current:
    number: int | None = None  # the trial the objective last started
    value: float | None = None  # its result, once every user attr of it is written


def _retry_on_disconnect(storage: optuna.storages.RDBStorage, write: Callable[[], None]) -> None:
    """Run an idempotent storage write; when the database server is lost, wait and repeat."""
    for _ in range(5):
        try:
            write()
            return
        except Exception as e:
            if not is_connection_error(e):
                raise
            wait_for_storage(storage)
    write()


def make_objective(
    sweep: OptimizerSweep,
    stop: _StopFlag,
    current: _Current,
    storage: optuna.storages.RDBStorage | None = None,
) -> Callable[[optuna.Trial], float]:
    from l2bn.train.engine import train  # imported here: the parent process never needs torch

    lr_lo, lr_hi = sweep.lr_range()
    wd_lo, wd_hi = sweep.weight_decay.low, sweep.weight_decay.high

    def write(action: Callable[[], None]) -> None:
        if storage is None:
            action()
        else:
            _retry_on_disconnect(storage, action)

    def objective(trial: optuna.Trial) -> float:
        stop.check()
        current.number = trial.number
        current.value = None
        live = trial.study.get_trials(deepcopy=False, states=LIVE)
        me = next(t for t in live if t.number == trial.number)
        point = point_of(me)
        if point is None:
            # Optuna's ask() makes a fresh trial when the last queued one was claimed between
            # our look at the queue and its claim: an empty slot, not a grid point.
            trial.set_user_attr(SKIPPED_ATTR, "queue empty")
            raise optuna.TrialPruned("queue empty")
        for t in live:
            # Never expected (points are queued once, under a lock): a guard, not a mechanism.
            if t.number != trial.number and point_of(t) == point and t.state != TrialState.WAITING:
                trial.set_user_attr(SKIPPED_ATTR, f"duplicate of trial {t.number}")
                raise optuna.TrialPruned(f"duplicate of trial {t.number}")
        # Suggesting a queued trial's params returns them (Optuna's fixed_params) and records
        # them with the sweep's distributions, so any Optuna client sees ordinary params.
        lr = trial.suggest_float("lr", lr_lo, lr_hi, log=True)
        wd = trial.suggest_float("weight_decay", wd_lo, wd_hi, log=True)
        seed = trial.suggest_int("seed", min(sweep.seeds), max(sweep.seeds))
        config = sweep.base_config().with_(lr=lr, weight_decay=wd, seed=seed)

        def on_epoch(record: EpochRecord) -> None:
            write(lambda: trial.report(record.val_error, record.epoch))
            stop.check()

        def on_batch(epoch: int, batch: int, batches: int) -> None:
            stop.check()

        result = train(config, on_epoch=on_epoch, on_batch=on_batch)
        for key, value in result_attrs(result).items():
            write(functools.partial(trial.set_user_attr, key, value))
        if not math.isfinite(result.val_error):  # a NaN value would make Optuna FAIL the trial
            raise RuntimeError(f"train returned val_error {result.val_error}")
        current.value = result.val_error
        return result.val_error

    return objective


def run_worker(spec: WorkerSpec) -> WorkerReport:
    """Train queued points of ``spec.study_name`` until none is left (or a signal arrives)."""
    stop = _StopFlag()
    old = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        return _loop(spec, stop)
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)


def _loop(spec: WorkerSpec, stop: _StopFlag) -> WorkerReport:
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # the parent shows progress
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    if spec.torch_threads:
        import torch

        torch.set_num_threads(spec.torch_threads)
    requeue = RequeueCallback()
    storage = open_storage(
        spec.storage,
        heartbeat_interval=spec.heartbeat_interval,
        grace_period=spec.grace,
        stale_callback=requeue,
    )
    study = optuna.load_study(
        study_name=spec.study_name, storage=storage, sampler=optuna.samplers.RandomSampler()
    )
    current = _Current()
    objective = make_objective(spec.sweep, stop, current, storage)
    from l2bn.sweep.fused_sweep import auto_fuse, run_fused_round  # torch only in workers

    fuse = spec.fuse or auto_fuse(spec.sweep)
    report = WorkerReport()
    while not stop.requested:
        current.number = None
        current.value = None
        try:
            optuna.storages.fail_stale_trials(study)
            states = {t.state for t in study.get_trials(deepcopy=False, states=LIVE)}
        except Exception as e:
            _recover(e, storage, study, current, requeue)
            continue
        if TrialState.WAITING not in states:
            if TrialState.RUNNING not in states:
                break
            time.sleep(min(POLL_S * 5, spec.heartbeat_interval))
            continue
        try:
            if fuse > 1:  # K points at once, each still its own trial (l2bn.sweep.fused_sweep)
                report.trials += run_fused_round(
                    study, storage, spec.sweep, fuse, spec.heartbeat_interval, stop.check, requeue
                )
                continue
            study.optimize(objective, n_trials=1)
        except Interrupted:
            report.interrupted = True
            last = _trial(study, current.number)
            if last is not None and last.state == TrialState.FAIL:
                requeue(study, last)
            break
        except optuna.exceptions.UpdateFinishedTrialError:
            # Our trial was failed as stale (heartbeats starved) and retried elsewhere.
            continue
        except Exception as e:
            _recover(e, storage, study, current, requeue)
        last = _trial(study, current.number)
        if last is not None and last.state == TrialState.COMPLETE:
            report.trials += 1
    report.interrupted = report.interrupted or stop.requested
    return report


def _recover(
    error: Exception,
    storage: optuna.storages.RDBStorage,
    study: optuna.Study,
    current: _Current,
    requeue: RequeueCallback,
) -> None:
    """After an error from a worker's storage calls: wait for a lost database server and settle
    our trial; stop with one line on any other database error (a full disk, a read-only file),
    failing our trial if the database still lets us; re-raise anything else (a bug)."""
    if is_connection_error(error):
        wait_for_storage(storage)
        _settle(study, current, requeue)
        return
    reason = database_error(error)
    if reason is None:
        raise error
    if current.number is not None:
        with contextlib.suppress(Exception):  # best effort: else it goes stale, then retried
            study.tell(current.number, state=TrialState.FAIL, skip_if_finished=True)
    raise StorageError(f"storage {redact(storage.url)}: {reason}") from None


def _settle(study: optuna.Study, current: _Current, requeue: RequeueCallback) -> None:
    """Finish our trial after a lost connection: tell its result if the run had finished,
    else fail it and queue its point again (unless another worker did already)."""
    last = _trial(study, current.number)
    if last is None:
        return  # lost before a trial was ours: a claim that did not commit, or one gone stale
    try:
        if last.state == TrialState.RUNNING:
            if current.value is not None:
                study.tell(last.number, current.value, skip_if_finished=True)
                return
            study.tell(last.number, state=TrialState.FAIL, skip_if_finished=True)
            last = _trial(study, last.number)
        if last is not None and last.state == TrialState.FAIL:
            requeue(study, last)
    except optuna.exceptions.UpdateFinishedTrialError:
        pass  # failed as stale by another worker meanwhile, whose callback queued it again


def _trial(study: optuna.Study, number: int | None) -> optuna.trial.FrozenTrial | None:
    if number is None:
        return None
    found = [t for t in study.get_trials(deepcopy=False) if t.number == number]
    return found[0] if found else None


# --- processes -----------------------------------------------------------------------------


def _worker_main(spec: WorkerSpec, errors: Any) -> None:
    try:
        report = run_worker(spec)
    except L2bnError as e:
        errors.put((type(e).__name__, scrub(str(e))))
        os._exit(2)
    except BaseException:
        errors.put(("crash", scrub(traceback.format_exc())))
        os._exit(1)
    os._exit(3 if report.interrupted else 0)


@dataclass
class SweepResult:
    status: GridStatus
    exit_codes: list[int | None] = field(default_factory=list)
    errors: list[tuple[str, str]] = field(default_factory=list)
    interrupted: bool = False
    seconds: float = 0.0


def run_sweep(
    spec: WorkerSpec,
    workers: int = 1,
    on_status: Callable[[GridStatus], None] | None = None,
    poll_s: float = POLL_S,
) -> SweepResult:
    """Queue the grid's missing points, run ``workers`` processes on it, poll until they stop.

    Raises ConfigError/StorageError before anything is written when the input is bad. The
    same call on other machines (same PostgreSQL URL) joins the same study.
    """
    start = time.perf_counter()
    storage = open_storage(spec.storage)
    study = prepare_study(storage, spec.sweep, spec.study_name)
    status = grid_status(study, spec.sweep)
    if on_status is not None:
        on_status(status)
    ctx = multiprocessing.get_context("spawn")
    errors = ctx.SimpleQueue()
    procs = []
    result = SweepResult(status)
    forward = _Forwarder()
    old_term = signal.signal(signal.SIGTERM, forward)
    try:
        if not status.complete:
            for _ in range(workers):
                p = ctx.Process(target=_worker_main, args=(spec, errors), daemon=False)
                p.start()
                procs.append(p)
        while any(p.is_alive() for p in procs):
            try:
                if forward.signalled:
                    forward.send(procs)
                    result.interrupted = True
                time.sleep(poll_s)
                if on_status is not None:
                    on_status(grid_status(study, spec.sweep))
            except Exception as e:
                # The database server restarting: the workers wait for it; so does the display.
                if not is_connection_error(e):
                    raise
            except KeyboardInterrupt:
                # Ctrl-C reached the workers too (same process group); make sure, then wait.
                forward.signalled = True
    finally:
        signal.signal(signal.SIGTERM, old_term)
        for p in procs:
            p.join()
    while not errors.empty():
        result.errors.append(errors.get())
    result.exit_codes = [p.exitcode for p in procs]
    result.interrupted = result.interrupted or any(c == 3 for c in result.exit_codes)
    try:
        result.status = grid_status(study, spec.sweep)
    except Exception as e:
        if not is_connection_error(e):
            raise
        wait_for_storage(storage)
        result.status = grid_status(study, spec.sweep)
    result.seconds = time.perf_counter() - start
    if on_status is not None:
        on_status(result.status)
    return result


class _Forwarder:
    def __init__(self) -> None:
        self.signalled = False
        self._sent = False

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        self.signalled = True

    def send(self, procs: list[Any]) -> None:
        if self._sent:
            return
        self._sent = True
        for p in procs:
            if p.is_alive() and p.pid is not None:
                os.kill(p.pid, signal.SIGTERM)


def status_of(storage_url: str, sweep: OptimizerSweep, study_name: str | None = None) -> GridStatus:
    """The grid's state, read-only (the study must exist)."""
    storage = open_storage(storage_url, read_only=True)
    name = study_name or sweep.study_name
    try:
        study = optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        from l2bn.errors import ConfigError

        raise ConfigError(f"no study {name!r} in this storage; run `l2bn sweep` first") from None
    return grid_status(study, sweep)
