"""A sweep worker: claims queued grid points, trains them, reports each as its own trial.

One lifecycle at every K (the points a worker trains side by side, ``--fuse K``; K = 1 is a
plain run), in rounds until nothing is queued or running:

1. Fail the stale trials of dead workers (the storage's stale callback queues their points
   again). Stop when nothing is queued or running; while only other workers' trials run,
   wait: one of them may yet go stale and need a retry.
2. Claim :func:`round_size` queued points (at most K, spread evenly over the rounds the
   queue still needs): each claim is Optuna's atomic WAITING → RUNNING compare-and-set (see
   :mod:`l2bn.sweep.storage`), and one heartbeat thread beats for every claimed trial.
3. Train them with :func:`l2bn.train.engine.train_many`, one ``trial.report`` per epoch each,
   written by a thread of the round (:class:`_Reports`) so that training never waits for the
   database; every report is written, in order, before the round's trials are told or failed.
4. Finish each: the user attrs of :func:`l2bn.sweep.study.result_attrs`, then COMPLETE with
   the sweep's objective (final validation error, or loss). A non-finite one is a FAIL and an
   error, never skipped.

Faults, handled alike at every K. Every storage write that meets a dropped database
connection waits for the server and is repeated (each is idempotent); a report that fails
anyway is raised on the training thread at its next batch or epoch (or when the round's
training ends) and handled as if written there, and the reports queued after it are dropped.
SIGINT or SIGTERM fails every unfinished claimed trial and queues its point again. A training
exception does the same, then stops the worker with that exception, which the runner reports.
A connection lost anywhere else (the claim) is waited for, then the round is settled: results
already computed are told, the other claimed trials are failed and their points queued again.
Any other database error (a full disk, a read-only file) fails the round's trials, as far as
the database still lets us, and stops the worker with one line.
"""

from __future__ import annotations

import contextlib
import functools
import math
import signal
import threading
import time
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from types import FrameType, TracebackType
from typing import TypeVar

import optuna
from optuna.trial import TrialState

from l2bn.errors import StorageError
from l2bn.sweep.spec import OptimizerSweep, Point
from l2bn.sweep.storage import (
    database_error,
    is_connection_error,
    open_storage,
    redact,
    wait_for_storage,
)
from l2bn.sweep.study import (
    ERROR_ATTR,
    LIVE,
    SKIPPED_ATTR,
    RequeueCallback,
    objective_value,
    point_of,
    result_attrs,
)
from l2bn.train.config import Objective, TrainConfig
from l2bn.train.records import EpochRecord, TrainResult

DEFAULT_HEARTBEAT_S = 30
POLL_S = 1.0
CUDA_FUSE = 16
T = TypeVar("T")


class Interrupted(Exception):
    """SIGINT or SIGTERM reached a worker: stop training, give the points back to the queue."""


class _RoundLost(Exception):
    """Every trial of the round was failed as stale meanwhile (and queued again elsewhere)."""


@dataclass(frozen=True)
class WorkerSpec:
    storage: str
    study_name: str
    sweep: OptimizerSweep
    heartbeat_interval: int = DEFAULT_HEARTBEAT_S
    grace_period: int | None = None  # None: 4 heartbeats
    torch_threads: int | None = None  # None: torch's default
    fuse: int | None = None  # K, points trained side by side; None: auto_fuse
    # The CUDA_VISIBLE_DEVICES entry the runner gave this worker (None: none given). A worker
    # given a GPU must train on it: under device auto, no usable GPU stops it (resolve_device).
    gpu: str | None = None

    @property
    def grace(self) -> int:
        return self.grace_period or 4 * self.heartbeat_interval


@dataclass
class WorkerReport:
    trials: int = 0  # trials this worker finished (COMPLETE)
    interrupted: bool = False


def auto_fuse(sweep: OptimizerSweep) -> int:
    """K when ``--fuse`` is not given: 1 on a CPU, where the K models run one at a time (so
    that a point's numbers do not depend on its partners) and fusing gains ~2 %
    (docs/performance.md); CUDA_FUSE = 16 on
    CUDA, a guess sized after HFTA's results, not measured here (no GPU has been lent to this
    project yet): tune it with benchmarks/bench_grid.py. Every option trains at any K, so
    nothing else is looked at. Imports torch: call it in a worker only."""
    from l2bn.train.device import resolve_device

    if resolve_device(sweep.base_config().device).type == "cuda":
        return CUDA_FUSE
    return 1


def round_size(waiting: int, k: int) -> int:
    """How many of ``waiting`` queued points to claim at a cap of ``k``: the fewest rounds that
    take them all, ceil(waiting / k), each the same size give or take one, so that the last
    round of a fused grid is not a handful of points on an idle GPU (49 at K = 16: 13, 12, 12,
    12, not 16, 16, 16, 1). Worked out again before every round from what is waiting then: with
    several workers each sizes its round by what the others left (49 points, K = 16, two
    workers claiming in turn: 13 and 12, then 12 and 12). At K = 1 every round is 1."""
    rounds = max(1, math.ceil(waiting / k))
    return math.ceil(waiting / rounds)


class _StopFlag:
    def __init__(self) -> None:
        self.requested = False

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        self.requested = True

    def check(self) -> None:
        if self.requested:
            raise Interrupted(signal.Signals(signal.SIGTERM).name)


class Heartbeats:
    """One thread beating every ``interval`` seconds for each trial the worker holds."""

    def __init__(self, storage: optuna.storages.RDBStorage, interval: int) -> None:
        self.storage, self.interval = storage, interval
        self._ids: set[int] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def add(self, trial_id: int) -> None:
        """Hold ``trial_id``, beating for it at once: stale checks see it alive."""
        with self._lock:
            self._ids.add(trial_id)
        self.storage.record_heartbeat(trial_id)

    def discard(self, trial_id: int) -> None:
        with self._lock:
            self._ids.discard(trial_id)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            with self._lock:
                ids = sorted(self._ids)
            for trial_id in ids:
                # l2bn's storage logs a failed beat; the next one retries, the grace covers it.
                with contextlib.suppress(Exception):
                    self.storage.record_heartbeat(trial_id)

    def __enter__(self) -> Heartbeats:
        self._thread.start()
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        self._thread.join()


class _Reports:
    """The round's per-epoch reports, written in order by one thread of their own: with K
    models a round would otherwise leave the accelerator idle for K database writes an epoch.

    A write that raises (after :meth:`_Round.write`'s own waits and repeats) is kept and raised
    on the training thread by :meth:`check`, once; the writes queued after it are dropped, as
    the training thread would never have made them. :meth:`close` waits for every queued write,
    so that nothing is told, failed or requeued while a report of it may still arrive. Nothing
    reads a report back during training (sweeps use no pruner): were one added, its
    ``should_prune`` would have to wait for the writes queued before it.
    """

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="l2bn-reports")
        self._error: BaseException | None = None
        self._raised = False

    def submit(self, write: Callable[[], object]) -> None:
        self._pool.submit(self._run, write)

    def _run(self, write: Callable[[], object]) -> None:
        if self._error is None:
            try:
                write()
            except BaseException as e:  # everything reaches the training thread
                self._error = e

    def check(self) -> None:
        """Raise the first failed write, once."""
        if self._error is not None and not self._raised:
            self._raised = True
            raise self._error

    def close(self) -> None:
        """Wait for every queued write, then :meth:`check`."""
        self._pool.shutdown(wait=True)
        self.check()


@dataclass
class _Claim:
    trial: optuna.Trial
    config: TrainConfig | None = None  # None until its params are read
    value: float | None = None  # its result, once every user attr of it is written
    finished: bool = False  # told by us, or found finished by another worker (stale)


class _Round:
    """The trials one round claimed, and every storage write made for them."""

    def __init__(
        self,
        study: optuna.Study,
        storage: optuna.storages.RDBStorage,
        beats: Heartbeats,
        requeue: RequeueCallback,
        objective: Objective = Objective.val_error,
    ) -> None:
        self.study, self.storage, self.beats, self.requeue = study, storage, beats, requeue
        self.objective = objective  # what each trial's value and intermediate values are
        self.claims: list[_Claim] = []
        self.patient = True  # whether writes wait for a lost database server

    def write(self, action: Callable[[], T]) -> T:
        """Run an idempotent storage write; when the database server is lost, wait, repeat."""
        if not self.patient:
            return action()
        for _ in range(5):
            try:
                return action()
            except Exception as e:
                if not is_connection_error(e):
                    raise
                wait_for_storage(self.storage)
        return action()

    def claim(self, sweep: OptimizerSweep, k: int, stop: _StopFlag) -> None:
        """Claim up to k queued points as RUNNING trials (fewer when the queue runs dry)."""
        lr_lo, lr_hi = sweep.lr_range()
        wd_lo, wd_hi = sweep.weight_decay.low, sweep.weight_decay.high
        while len(self.claims) < k:
            stop.check()
            # What study.ask() does, less making a fresh trial when the queue is empty.
            trial_id = self.study._pop_waiting_trial_id()
            if trial_id is None:
                return
            claim = _Claim(optuna.Trial(self.study, trial_id))
            self.claims.append(claim)  # ours from here on: settled whatever happens next
            self.beats.add(trial_id)
            skip = self._skip_reason(trial_id)
            if skip is not None:  # never expected: a guard, not a mechanism
                claim.trial.set_user_attr(SKIPPED_ATTR, skip)
                self.study.tell(claim.trial, state=TrialState.PRUNED)
                self._drop(claim)
                continue
            # Suggesting a queued trial's params returns them (Optuna's fixed_params) and
            # records them with the sweep's distributions: any Optuna client sees plain params.
            lr = claim.trial.suggest_float("lr", lr_lo, lr_hi, log=True)
            wd = claim.trial.suggest_float("weight_decay", wd_lo, wd_hi, log=True)
            seed = claim.trial.suggest_int("seed", *sweep.seed_range())
            claim.config = sweep.config_for(Point(lr, wd, seed))

    def _skip_reason(self, trial_id: int) -> str | None:
        me = self.storage.get_trial(trial_id)
        point = point_of(me)
        if point is None:
            return "not a grid point"  # a WAITING trial queued by hand, without params
        for t in self.study.get_trials(deepcopy=False, states=LIVE):
            # Points are queued once, under a lock: a second live trial is a bug elsewhere.
            if t.number != me.number and point_of(t) == point and t.state != TrialState.WAITING:
                return f"duplicate of trial {t.number}"
        return None

    def train(self, stop: _StopFlag, exact: bool = True) -> None:
        """Train the claimed points side by side, reporting every epoch; then write each
        one's user attrs. A non-finite result fails its trial and raises, after the others."""
        from l2bn.train.engine import train_many  # torch only in workers

        claims = [c for c in self.claims if not c.finished]
        configs = [c.config for c in claims]
        if not claims:
            return
        assert None not in configs  # a claim without params is finished (skipped) or settled
        stop.check()

        reports = _Reports()

        def on_epoch(m: int, record: EpochRecord) -> None:
            reports.check()
            claim = claims[m]
            if not claim.finished:
                value = objective_value(self.objective, record)
                reports.submit(functools.partial(self._report, claim, value, record.epoch))
            # Claims are dropped by the reports thread, as their writes are refused: a round
            # lost in its last epoch is seen by the results loop below (finished: skipped).
            if all(c.finished for c in claims):
                raise _RoundLost
            stop.check()

        def on_batch(epoch: int, batch: int, batches: int) -> None:
            reports.check()
            stop.check()

        stopped: BaseException | None = None
        try:
            results = train_many(
                [c for c in configs if c is not None], on_epoch, on_batch, exact=exact
            )
        except BaseException as e:
            stopped = e
        # Outside the handler, so that a failed report keeps its own exception chain (what
        # _storage_failed reads); it wins over `stopped`, as it would have been raised first.
        reports.close()
        if stopped is not None:
            raise stopped
        bad = []
        for claim, result in zip(claims, results, strict=True):
            if claim.finished:
                continue
            value = objective_value(self.objective, result)
            # Optuna would FAIL a NaN: so do we, aloud. +inf is a diverged run's loss only.
            if not (math.isfinite(value) or (result.diverged and value == math.inf)):
                why = f"training returned {self.objective.value} {value}"
                self._fail(claim, why, requeue=False)
                c = result.config
                bad.append(f"{why} at lr={c.lr:g}, weight_decay={c.weight_decay:g}, seed={c.seed}")
                continue
            self._unless_finished_elsewhere(claim, functools.partial(self._record, claim, result))
        if bad:
            raise RuntimeError("; ".join(bad))

    def _report(self, claim: _Claim, value: float, epoch: int) -> None:
        """One epoch's intermediate value (on the reports thread)."""
        if not claim.finished:  # an earlier report found it failed as stale meanwhile
            report = functools.partial(claim.trial.report, value, epoch)
            self._unless_finished_elsewhere(claim, lambda: self.write(report))

    def _record(self, claim: _Claim, result: TrainResult) -> None:
        for key, value in result_attrs(result).items():
            self.write(functools.partial(claim.trial.set_user_attr, key, value))
        # Now the result can be told, even after a lost link.
        claim.value = objective_value(self.objective, result)

    def tell(self) -> int:
        """Tell every result computed (COMPLETE); returns how many trials completed."""
        return sum(self._tell(c) for c in self.claims if not c.finished and c.value is not None)

    def settle(self, why: str | None = None, requeue: bool = True, quiet: bool = False) -> int:
        """Finish the round early: tell the results already computed, fail every other
        unfinished trial (``why`` in its ``l2bn_error``) and queue its point again.

        ``quiet``: as far as the database lets us at once, without waiting for a lost server
        (a worker told to stop, or stopping on an error). A trial left RUNNING goes stale and
        is retried, so a refusal is no reason to hide the error that brought us here.
        Returns how many trials completed.
        """
        self.patient = not quiet
        done = 0
        for claim in self.claims:
            if claim.finished:
                continue
            try:
                if claim.value is not None:
                    done += self._tell(claim)
                else:
                    self._fail(claim, why, requeue)
            except Exception as e:
                if not quiet:
                    raise
                if is_connection_error(e):
                    break  # the server is gone: the rest go stale and are retried elsewhere
        return done

    def _tell(self, claim: _Claim) -> bool:
        value = claim.value
        told = self.write(lambda: self.study.tell(claim.trial, value, skip_if_finished=True))
        self._drop(claim)
        # FAIL instead: failed as stale meanwhile (heartbeats starved) and retried elsewhere.
        return bool(told.state == TrialState.COMPLETE)

    def _fail(self, claim: _Claim, why: str | None, requeue: bool) -> None:
        def fail() -> None:
            if why is not None:
                self.write(functools.partial(claim.trial.set_user_attr, ERROR_ATTR, why))
            self.write(
                lambda: self.study.tell(claim.trial, state=TrialState.FAIL, skip_if_finished=True)
            )

        self._unless_finished_elsewhere(claim, fail)
        self._drop(claim)
        if requeue:
            frozen = self.write(lambda: self.storage.get_trial(claim.trial._trial_id))
            if frozen.state == TrialState.FAIL:
                self.write(lambda: self.requeue(self.study, frozen))

    def _unless_finished_elsewhere(self, claim: _Claim, action: Callable[[], object]) -> None:
        """Run ``action``. A trial failed as stale by another worker (its heartbeats starved)
        refuses writes: it is no longer ours, and that worker queued its point again."""
        try:
            action()
        except optuna.exceptions.UpdateFinishedTrialError:
            self._drop(claim)

    def _drop(self, claim: _Claim) -> None:
        claim.finished = True
        self.beats.discard(claim.trial._trial_id)


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
    from l2bn.train.device import resolve_device

    # Before any claim: a device that is not there stops the worker, not its points.
    resolve_device(spec.sweep.base_config().device, assigned_gpu=spec.gpu)
    k = spec.fuse or auto_fuse(spec.sweep)
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
    report = WorkerReport()
    with Heartbeats(storage, spec.heartbeat_interval) as beats:
        while not stop.requested:
            try:
                optuna.storages.fail_stale_trials(study)
                states = [t.state for t in study.get_trials(deepcopy=False, states=LIVE)]
            except Exception as e:
                _storage_failed(e, storage, None)
                continue
            if TrialState.WAITING not in states:
                if TrialState.RUNNING not in states:
                    break
                time.sleep(min(POLL_S * 5, spec.heartbeat_interval))
                continue
            work = _Round(study, storage, beats, requeue, spec.sweep.objective)
            try:
                work.claim(spec.sweep, round_size(states.count(TrialState.WAITING), k), stop)
                if work.claims:
                    work.train(stop, exact=spec.sweep.cpu_fusion == "exact")
                    report.trials += work.tell()
            except Interrupted:
                report.interrupted = True
                report.trials += work.settle(quiet=True)
                break
            except _RoundLost:
                continue
            except Exception as e:
                report.trials += _storage_failed(e, storage, work)
    report.interrupted = report.interrupted or stop.requested
    return report


def _storage_failed(
    error: Exception, storage: optuna.storages.RDBStorage, work: _Round | None
) -> int:
    """After an error in a round (or in looking at the queue): wait for a lost database
    server, then settle the round; stop with one line on any other database error (a full
    disk, a read-only file); anything else (a training exception, a bug) fails the round's
    trials, queues their points again and is re-raised. Returns how many trials completed."""
    if is_connection_error(error):
        wait_for_storage(storage)
        return 0 if work is None else work.settle()
    if isinstance(error, StorageError):
        raise error  # the server stayed away: our trials go stale and are retried elsewhere
    reason = database_error(error)
    if reason is not None:
        if work is not None:
            work.settle(requeue=False, quiet=True)  # a resume queues them again
        raise StorageError(f"storage {redact(storage.url)}: {reason}") from None
    if work is not None:
        first = (str(error).strip().splitlines() or [""])[0]
        work.settle(f"{type(error).__name__}: {first}"[:500], quiet=True)
    raise error
