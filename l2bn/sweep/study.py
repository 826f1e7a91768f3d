"""The Optuna study of one (sweep, optimizer): its layout and its queue.

Layout (docs/study-layout.md; any Optuna client can read it):

* study ``<sweep>/<optimizer>``, direction minimize; user attrs ``optimizer``, ``norm``,
  ``dataset``, ``epochs``, ``width``, ``config`` (the resolved sweep as JSON, without the
  node-local ``data_dir`` and ``device``), ``l2bn_version``, and ``registration`` where the
  sweep file registers a reading rule (:mod:`l2bn.registration`: written when the study is
  made, never changed once a trial has run).
* ``edge_extensions``, where the sweep extends a row's grid beyond an edge that holds its best
  η (``extend_edges``; :mod:`l2bn.sweep.edges`): the η added per λ row, recorded before they
  were queued; their trials are grid points like the others.
* one COMPLETE trial per grid point: params ``lr``, ``weight_decay`` (log float) and ``seed``
  (int); value = the sweep's objective (``config``'s ``objective``: final validation error by
  default, or final validation loss, +inf for a diverged run); intermediate values = that
  metric per epoch (step = 1-based epoch); user attrs ``val_error``, ``test_error``,
  ``val_loss`` and ``train_loss`` (None if not finite), ``diverged``, ``steps_per_epoch``,
  ``init_scale`` (S, which a sweep with ``init_scale_exponent`` ties to λ), ``device``,
  ``precision``, ``history``.
* FAIL trials are runs that were interrupted or lost (their point was queued again, as a
  WAITING copy with the system attrs ``failed_trial``/``retry_history`` of Optuna's retry
  callback; ``l2bn_error`` says what failed when an error did); PRUNED trials never trained
  (``l2bn_skipped`` says why). Read COMPLETE trials.

Every WAITING trial is created here, under :func:`l2bn.storage.enqueue_lock`, and only for a
point that has no WAITING, RUNNING or COMPLETE trial: so each point has at most one live trial.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from typing import Any, Protocol

import optuna
from optuna.distributions import FloatDistribution, IntDistribution
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial, TrialState

from l2bn import __version__
from l2bn.errors import ConfigError, StorageError
from l2bn.files import finite_or_none
from l2bn.sweep.edges import extension_points, recorded
from l2bn.sweep.spec import LOCATION_FIELDS, STORED_DEFAULTS, TRAIN_KEYS, OptimizerSweep, Point
from l2bn.sweep.storage import describe, enqueue_lock
from l2bn.train.config import Objective, TrainConfig
from l2bn.train.records import EpochRecord, TrainResult

LIVE = (TrialState.WAITING, TrialState.RUNNING, TrialState.COMPLETE)
SKIPPED_ATTR = "l2bn_skipped"
ERROR_ATTR = "l2bn_error"
MAX_RETRY = 3  # a point whose runs are lost this often (e.g. killed for memory) waits for a resume


def distributions(sweep: OptimizerSweep) -> dict[str, optuna.distributions.BaseDistribution]:
    lr_lo, lr_hi = sweep.lr_range()
    return {
        "lr": FloatDistribution(lr_lo, lr_hi, log=True),
        "weight_decay": FloatDistribution(
            sweep.weight_decay.low, sweep.weight_decay.high, log=True
        ),
        "seed": IntDistribution(*sweep.seed_range()),
    }


def study_attrs(sweep: OptimizerSweep) -> dict[str, Any]:
    base = sweep.base_config()
    attrs: dict[str, Any] = {
        "optimizer": sweep.optimizer.value,
        "norm": base.norm.value,
        "dataset": base.dataset.value,
        "epochs": base.epochs,
        "width": base.width,
        "config": sweep.to_json(),
        "l2bn_version": __version__,
    }
    if sweep.registration is not None:
        attrs["registration"] = sweep.registration.to_json()
    return attrs


class _HasParams(Protocol):
    @property
    def params(self) -> dict[str, Any]: ...
    @property
    def system_attrs(self) -> dict[str, Any]: ...


def point_of(trial: _HasParams) -> Point | None:
    """The grid point a trial is for (queued trials carry it as Optuna's ``fixed_params``)."""
    params = trial.system_attrs.get("fixed_params") or trial.params
    try:
        return Point(float(params["lr"]), float(params["weight_decay"]), int(params["seed"]))
    except (KeyError, TypeError, ValueError):
        return None  # an empty slot (see worker) or a trial not made by l2bn


def prepare_study(
    storage: optuna.storages.BaseStorage, sweep: OptimizerSweep, study_name: str | None = None
) -> optuna.Study:
    """Create or load the study, check it is this sweep's, and queue its missing points."""
    name = study_name or sweep.study_name
    attrs = study_attrs(sweep)
    try:
        study = optuna.create_study(
            storage=storage, study_name=name, direction="minimize", load_if_exists=True
        )
        _adopt_config(study, sweep, attrs)
        _adopt_registration(study, attrs.get("registration"))
        # With the points of recorded edge extensions (l2bn.sweep.edges): a run killed after
        # recording one trains it on resume.
        enqueue_missing(study, [*sweep.points(), *extension_points(sweep, recorded(study))])
    except optuna.exceptions.StorageInternalError as e:
        # What the database said (read-only, disk full), not Optuna's generic wrapper text.
        raise StorageError(f"cannot create study {name!r}: {describe(e)}") from None
    return study


GRID_KEYS = ("lr", "weight_decay", "seeds")  # what a sweep file may add to without a new study


def _with_new_defaults(config: dict[str, Any]) -> dict[str, Any]:
    """A study stored before a TrainConfig field (or a sweep key such as ``objective``)
    existed ran with that field's default."""
    defaults = TrainConfig().to_dict()
    missing = {k: defaults[k] for k in TRAIN_KEYS if k not in config.get("train", {})}
    return {**STORED_DEFAULTS, **config, "train": {**missing, **config.get("train", {})}}


def _without_grid(config: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in config.items() if k not in GRID_KEYS}


def _identity(config: dict[str, Any]) -> dict[str, Any]:
    """What makes two stored sweeps the same experiment: all but the node-local fields (a study
    stored by an older l2bn holds them; nodes with data in other folders share one study)."""
    train = {k: v for k, v in config.get("train", {}).items() if k not in LOCATION_FIELDS}
    return {**config, "train": train}


def _differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """The keys (train keys as ``train.<key>``) whose values differ, outside the grid."""
    a, b = _without_grid(old), _without_grid(new)
    train_a, train_b = a.pop("train", {}), b.pop("train", {})
    out = [k for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
    return out + [
        f"train.{k}"
        for k in sorted(set(train_a) | set(train_b))
        if train_a.get(k) != train_b.get(k)
    ]


def _adopt_config(study: optuna.Study, sweep: OptimizerSweep, attrs: dict[str, Any]) -> None:
    """Record this sweep on a new study, or check that it is the stored one or extends it.

    Extending means: the same training settings and η layout, and a grid that still holds
    every point the study has trials for (``l2bn analyze`` asks for that when an η* sits on
    the grid's edge). The study's ``config`` becomes the new definition; the ones it replaced
    are kept, oldest first, in the user attr ``config_history``. Any other change would mix
    two experiments in one study, so it is refused. Where a node keeps its data and which
    device it trains on are not compared (spec.LOCATION_FIELDS): nodes whose data lie in
    different folders join one study.
    """
    stored = study.user_attrs.get("config")
    if stored is None:
        for key, value in attrs.items():
            study.set_user_attr(key, value)
        return
    old = _identity(_with_new_defaults(json.loads(stored)))
    new = _identity(json.loads(attrs["config"]))
    if old == new:
        return
    same_training = _without_grid(old) == _without_grid(new)
    grid = set(sweep.points()) | set(extension_points(sweep, recorded(study)))
    orphans = {point_of(t) for t in study.get_trials(deepcopy=False)} - grid - {None}
    if not same_training or orphans:
        why = (
            f"{len(orphans)} of its points are not in this grid"
            if same_training
            else f"its training settings differ: {', '.join(_differences(old, new))}"
        )
        raise ConfigError(
            f"study {study.study_name!r} in this storage was made by a different sweep "
            f"definition ({why}); use --study NEW_NAME for a new grid (or restore the sweep file)"
        )
    history = json.loads(study.user_attrs.get("config_history", "[]"))
    study.set_user_attr("config_history", json.dumps([*history, stored]))
    study.set_user_attr("config", attrs["config"])


def _adopt_registration(study: optuna.Study, registration: str | None) -> None:
    """Store the sweep's registration on a study that has not run a trial yet; on one that
    has, refuse any change (a reading rule is registered before the first trial, or not at
    all). A study that never ran a trial is new: its registration may still be written."""
    stored = study.user_attrs.get("registration")
    if stored == registration:
        return
    ran = [t for t in study.get_trials(deepcopy=False) if t.state != TrialState.WAITING]
    if ran:
        what = (
            "adds one" if stored is None else "drops it" if registration is None else "changes it"
        )
        raise ConfigError(
            f"study {study.study_name!r} has run {len(ran)} trial(s) under "
            f"{'no registration' if stored is None else 'its registration'}, and this sweep "
            f"file {what}: a reading rule is registered before the first trial; restore the "
            "file's [registration] table, or use --study NEW_NAME for a new registered run"
        )
    study.set_user_attr("registration", registration)


def enqueue_missing(study: optuna.Study, points: Iterable[Point]) -> int:
    """Queue every point without a live trial; returns how many were queued."""
    with enqueue_lock(rdb_of(study), study.study_name):
        live = {point_of(t) for t in study.get_trials(deepcopy=False, states=LIVE)}
        missing = [p for p in points if p not in live]
        for p in missing:
            study.enqueue_trial(p.params())
    return len(missing)


class RequeueCallback:
    """Queue a failed trial's point again, once, with the same params.

    Used for heartbeat-stale trials (as the storage's stale callback) and for interrupted
    ones. Delegates to Optuna's :class:`RetryHeartbeatStaleTrialCallback`, which records
    ``failed_trial`` and ``retry_history``, but first checks, under the enqueue lock, that
    nothing else has queued the point meanwhile (a resume starting on another node).
    """

    def __init__(self, max_retry: int | None = MAX_RETRY) -> None:
        self._retry = RetryHeartbeatStaleTrialCallback(max_retry=max_retry)

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        point = point_of(trial)
        if point is None:
            return  # an empty slot: nothing to retry
        with enqueue_lock(rdb_of(study), study.study_name):
            live = {point_of(t) for t in study.get_trials(deepcopy=False, states=LIVE)}
            if point not in live:
                self._retry(study, trial)


def rdb_of(study: optuna.Study) -> optuna.storages.RDBStorage:
    storage = study._storage
    # load_study wraps an RDBStorage in a cache; the lock needs the database behind it.
    backend = getattr(storage, "_backend", storage)
    if not isinstance(backend, optuna.storages.RDBStorage):
        raise StorageError("l2bn sweeps need a database storage (sqlite, postgresql, mysql)")
    return backend


def objective_value(objective: Objective, result: TrainResult | EpochRecord) -> float:
    """The trial value (of a finished run) or intermediate value (of an epoch) under
    ``objective``. A diverged run has chance-level errors but no loss (NaN): under val_loss
    its value is +inf, the worst, so that it completes as diverged like under val_error."""
    if objective is Objective.val_error:
        return result.val_error
    if isinstance(result, TrainResult) and result.diverged:
        return math.inf
    return result.val_loss


def result_attrs(result: TrainResult) -> dict[str, Any]:
    """A finished run's trial user attrs, as docs/study-layout.md documents them."""
    return {
        # Both validation metrics, whichever the objective (the trial's value): analyze may
        # read either.
        "val_error": result.val_error,
        "val_loss": finite_or_none(result.val_loss),
        "test_error": result.test_error,
        "train_loss": finite_or_none(result.train_loss),
        # The initial scale S the run used: the file's init_scale, tied to λ by
        # init_scale_exponent (not a param: the grid point is (lr, weight_decay, seed)).
        "init_scale": result.config.init_scale,
        "diverged": result.diverged,
        "steps_per_epoch": result.steps_per_epoch,
        # What auto resolved to on the node that ran it: a study may span CPUs and GPUs.
        "device": result.device,
        "precision": result.precision,
        "graph": result.graph,
        "history": [e.to_dict() for e in result.history],
    }
