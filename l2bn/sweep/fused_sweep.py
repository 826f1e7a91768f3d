"""A sweep worker's fused round: claim up to K queued grid points, train them as one fused net
(l2bn.train.fused), and finish each as its own Optuna trial.

Each point keeps the unfused layout exactly (README, "Study layout"): params, one report per
epoch, the same user attrs, one COMPLETE trial. Claiming goes through ``study.ask()``, which
pops a WAITING trial with the same atomic compare-and-set as ``study.optimize`` (see
l2bn.sweep.storage); a heartbeat thread beats for every claimed trial, so a killed worker's points
go stale and are queued again exactly as unfused ones are. On SIGINT/SIGTERM or a crash every
unfinished trial of the round is failed and its point queued again.
"""

from __future__ import annotations

import contextlib
import math
import threading
import warnings
from collections.abc import Callable
from types import TracebackType

import optuna
from optuna.trial import TrialState

from l2bn.sweep.spec import OptimizerSweep
from l2bn.sweep.study import SKIPPED_ATTR, RequeueCallback, point_of, result_attrs
from l2bn.train.config import TrainConfig
from l2bn.train.records import EpochRecord


class Heartbeats:
    """One thread beating for every trial in ``trial_ids`` each ``interval`` seconds."""

    def __init__(self, storage: optuna.storages.RDBStorage, interval: int) -> None:
        self.storage, self.interval = storage, interval
        self.trial_ids: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            for trial_id in list(self.trial_ids):
                # A lost connection: the next beat retries, and the grace period covers it.
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


CUDA_FUSE = 16  # HFTA-sized; not yet measured here (no GPU session): tune with bench_grid.py


def auto_fuse(sweep: OptimizerSweep) -> int:
    """How many points a worker fuses when --fuse is not given: 1 where fusing was measured
    slower per model (the CPU, see benchmarks/bench_grid.py) or is not supported."""
    from l2bn.train.config import DatasetName
    from l2bn.train.device import resolve_device

    base = sweep.base_config()
    if base.dataset is DatasetName.tracking or resolve_device(base.device).type != "cuda":
        return 1
    return CUDA_FUSE


def claim(
    study: optuna.Study, sweep: OptimizerSweep, k: int, beats: Heartbeats
) -> list[tuple[optuna.Trial, TrainConfig]]:
    """Pop up to k queued points as RUNNING trials (fewer when the queue runs dry)."""
    lr_lo, lr_hi = sweep.lr_range()
    wd_lo, wd_hi = sweep.weight_decay.low, sweep.weight_decay.high
    claimed: list[tuple[optuna.Trial, TrainConfig]] = []
    for _ in range(k):
        with warnings.catch_warnings():
            # "Heartbeat … supposed to be used with Study.optimize": Heartbeats beats instead.
            warnings.simplefilter("ignore", UserWarning)
            trial = study.ask()
        beats.storage.record_heartbeat(trial._trial_id)  # at once: stale-checks see it alive
        beats.trial_ids.append(trial._trial_id)
        frozen = beats.storage.get_trial(trial._trial_id)
        if point_of(frozen) is None:
            # ask() made a fresh trial: the queue is empty (as in worker.make_objective).
            trial.set_user_attr(SKIPPED_ATTR, "queue empty")
            study.tell(trial, state=TrialState.PRUNED)
            beats.trial_ids.remove(trial._trial_id)
            break
        lr = trial.suggest_float("lr", lr_lo, lr_hi, log=True)  # the queued (fixed) params
        wd = trial.suggest_float("weight_decay", wd_lo, wd_hi, log=True)
        seed = trial.suggest_int("seed", min(sweep.seeds), max(sweep.seeds))
        claimed.append((trial, sweep.base_config().with_(lr=lr, weight_decay=wd, seed=seed)))
    return claimed


def run_fused_round(
    study: optuna.Study,
    storage: optuna.storages.RDBStorage,
    sweep: OptimizerSweep,
    k: int,
    heartbeat_interval: int,
    check_stop: Callable[[], None],
    requeue: RequeueCallback,
) -> int:
    """Claim and train up to k points together; returns how many trials completed."""
    from l2bn.train.fused import train_fused  # torch only in workers

    with Heartbeats(storage, heartbeat_interval) as beats:
        claimed = claim(study, sweep, k, beats)
        if not claimed:
            return 0
        trials = [t for t, _ in claimed]
        try:
            check_stop()

            def on_epoch(m: int, record: EpochRecord) -> None:
                trials[m].report(record.val_error, record.epoch)
                check_stop()

            results = train_fused(
                [c for _, c in claimed], on_epoch=on_epoch, on_batch=lambda *_: check_stop()
            )
        except BaseException:
            for trial in trials:  # the round is lost: give every point back to the queue
                try:
                    study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
                    requeue(study, storage.get_trial(trial._trial_id))
                except Exception:
                    pass  # failed as stale meanwhile: its stale callback queued it again
            raise
        done = 0
        for trial, result in zip(trials, results, strict=True):
            if not math.isfinite(result.val_error):
                study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
                continue
            try:
                for key, value in result_attrs(result).items():
                    trial.set_user_attr(key, value)
                study.tell(trial, result.val_error)
                done += 1
            except optuna.exceptions.UpdateFinishedTrialError:
                pass  # failed as stale (heartbeats starved) and retried elsewhere
            beats.trial_ids.remove(trial._trial_id)
        return done
