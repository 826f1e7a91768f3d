"""Reading swept studies for ``l2bn analyze``: read-only, in bulk, into plain records.

:func:`load_studies` opens the storage once through :func:`l2bn.sweep.storage.open_storage`
(``read_only=True``: a missing SQLite file is an error, never created; transactions are plain
readers beside running sweep workers). Studies are the l2bn ones (user attr ``optimizer``)
unless named explicitly. Each COMPLETE trial becomes a :class:`TrialRecord` (params, user
attrs, per-epoch η and layer norms from ``history``), each study a :class:`StudyData` with its
training identity (:func:`training_identity`).

How the trials are read: on an RDB storage (SQLite, PostgreSQL, MySQL), with one SQL query per
table for all chosen studies together (trials, trial_values, trial_params, and only the five
user attrs a record needs), through SQLAlchemy on the storage's own engine and Optuna's table
definitions: no FrozenTrial is built, nothing analyze does not use (system attrs, intermediate
values, distributions of other params, other user attrs) is read, and each ``history`` JSON is
decoded once: 2.4× less CPU than through Optuna's per-trial objects on 10 000 trials with
20-epoch histories (benchmarks/bench_analyze.py), most of what is left being that JSON.
Other storages, and ``bulk_sql=False``, read through Optuna's API
(``study.get_trials(deepcopy=False, states=(COMPLETE,))``); both give the same records
(tests/analysis/test_loading.py).
"""

from __future__ import annotations

import functools
import json
import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import optuna

from l2bn.analysis.fits import relaxation_index
from l2bn.errors import AnalysisError, StorageError
from l2bn.sweep.storage import describe, open_storage, parse_url, redact, sqlite_path
from l2bn.train.config import TrainConfig  # torch-free: the defaults of fields old studies lack

# TrainConfig fields that do not make two runs different experiments: the grid's own axes
# (η, λ), the seed, and where the data sits or what ran it.
NOT_IDENTITY = ("lr", "weight_decay", "seed", "data_dir", "device")
IDENTITY_FIELDS = tuple(f.name for f in fields(TrainConfig) if f.name not in NOT_IDENTITY)
_TRAIN_FIELDS = frozenset(f.name for f in fields(TrainConfig))
# What a study without a ``config`` attr tells of its training (README, "Study layout").
ATTR_FIELDS = ("optimizer", "norm", "dataset", "epochs", "width")


@dataclass(frozen=True)
class TrialRecord:
    """One COMPLETE trial, with what analyze needs from its params and user attrs."""

    study: str
    number: int
    lr: float  # η
    weight_decay: float  # λ
    seed: int
    val_error: float  # the trial's value
    test_error: float  # NaN when absent
    train_loss: float  # NaN when absent or not finite
    diverged: bool
    steps_per_epoch: int | None
    epoch_lrs: tuple[float, ...]  # η during each epoch (from history)
    norms: Mapping[str, tuple[float, ...]]  # layer → Frobenius ‖w‖ after each epoch
    val_loss: float = math.nan  # final validation loss (NLL); NaN where not recorded
    # Per-epoch validation metrics from the history ("val_error", "val_loss"; NaN for gaps).
    metrics: Mapping[str, tuple[float, ...]] = field(default_factory=dict)

    @property
    def layers(self) -> tuple[str, ...]:
        return tuple(self.norms)

    @functools.cached_property  # read for every layer and every fit: computed once
    def phase1_epochs(self) -> int:
        """Epochs in the first LR phase: the leading run whose η equals the first epoch's."""
        if not self.epoch_lrs:
            return 0
        first = self.epoch_lrs[0]
        n = 0
        for lr in self.epoch_lrs:
            if not math.isclose(lr, first, rel_tol=1e-9):
                break
            n += 1
        return n

    @property
    def eta_lambda_t(self) -> float:
        """η·λ·T with T = steps in phase 1; NaN when steps are unknown."""
        if self.steps_per_epoch is None or self.phase1_epochs == 0:
            return math.nan
        return self.lr * self.weight_decay * self.steps_per_epoch * self.phase1_epochs

    def relaxation(self, layer: str) -> float:
        """Measured time constants of ``layer``'s norm over phase 1 (:func:`relaxation_index`)."""
        n = self.phase1_epochs
        values = self.norms.get(layer, ())
        return relaxation_index(values[:n]) if 0 < n <= len(values) else math.nan

    def phase1_norm(self, layer: str) -> float:
        """‖w‖ of ``layer`` at the end of phase 1 (NaN when unknown)."""
        n = self.phase1_epochs
        values = self.norms.get(layer, ())
        return values[n - 1] if 0 < n <= len(values) else math.nan


@dataclass(frozen=True)
class StudyData:
    name: str
    optimizer: str
    norm: str | None
    dataset: str | None
    epochs: int | None
    trials: tuple[TrialRecord, ...]
    n_skipped: int  # COMPLETE trials without usable lr / weight_decay / value
    # IDENTITY_FIELDS → value (JSON values; lists as tuples); see training_identity.
    identity: Mapping[str, Any] = field(default_factory=dict)
    has_config: bool = False  # identity read from the ``config`` attr, not guessed from attrs


def training_identity(attrs: Mapping[str, Any]) -> tuple[dict[str, Any], bool]:
    """What makes a study's runs one experiment, from its user attrs; and whether it came
    from the ``config`` attr.

    ``config`` (the resolved sweep as JSON, written by ``l2bn sweep``) holds the TrainConfig
    fields in its ``train`` dict; fields an older l2bn did not write yet (``affine``, ``head``,
    ``precision`` …) ran with their default and get it here, as
    :func:`l2bn.sweep.study._with_new_defaults` does. Without a readable ``config``, only the
    attrs of :data:`ATTR_FIELDS` are known; every other field is None. The attrs
    ``optimizer``, ``norm`` and ``dataset`` win over the config's: they name the group.
    """
    train = _config_train(attrs.get("config"))
    if train is not None:
        defaults = TrainConfig().to_dict()
        # A field of a newer l2bn, unknown here, still tells two experiments apart.
        newer = sorted(set(train) - _TRAIN_FIELDS)
        identity = {
            k: _frozen(train[k] if k in train else defaults[k]) for k in IDENTITY_FIELDS
        } | {k: _frozen(train[k]) for k in newer}
    else:
        identity = {k: _frozen(attrs.get(k)) if k in ATTR_FIELDS else None for k in IDENTITY_FIELDS}
    for key in ("optimizer", "norm", "dataset"):
        if attrs.get(key) is not None:
            identity[key] = str(attrs[key])
    return identity, train is not None


def _config_train(raw: Any) -> dict[str, Any] | None:
    if not isinstance(raw, str):
        return None
    try:
        config = json.loads(raw)
    except json.JSONDecodeError:
        return None
    train = config.get("train") if isinstance(config, dict) else None
    if not isinstance(train, dict):
        return None
    return {k: v for k, v in train.items() if k not in NOT_IDENTITY}


def _frozen(value: Any) -> Any:
    """A JSON value made hashable (lists become tuples), so that identities can be keys."""
    if isinstance(value, list | tuple):
        return tuple(_frozen(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((k, _frozen(v)) for k, v in value.items()))
    return value


def open_for_reading(url: str) -> optuna.storages.BaseStorage:
    """The storage at ``url``, read-only; a missing SQLite file is a :class:`StorageError`."""
    path = sqlite_path(parse_url(url))  # StorageError for a malformed URL or a missing driver
    if path is not None and not path.is_file():
        raise StorageError(
            f"no such storage file {str(path)!r} ({redact(url)}); "
            "run `l2bn sweep` first or pass --storage"
        )
    return open_storage(url, read_only=True)


def load_studies(
    storage: str | optuna.storages.BaseStorage, names: Sequence[str] = (), *, bulk_sql: bool = True
) -> tuple[tuple[StudyData, ...], tuple[str, ...]]:
    """Read the chosen studies' COMPLETE trials; return them and warnings about skipped ones.

    ``names`` empty: every study with user attr ``optimizer``. A name that is not in the
    storage, or no l2bn study at all, raises :class:`AnalysisError`. ``bulk_sql=False`` reads
    through Optuna's API even from an RDB storage (the reference the SQL reader is tested
    against).
    """
    from sqlalchemy.exc import SQLAlchemyError

    url = redact(storage) if isinstance(storage, str) else type(storage).__name__
    store = open_for_reading(storage) if isinstance(storage, str) else storage
    try:
        summaries = {s.study_name: s for s in store.get_all_studies()}
    except SQLAlchemyError as e:
        raise StorageError(f"cannot read studies from {url}: {describe(e)}") from None

    warnings: list[str] = []
    if names:
        missing = [n for n in names if n not in summaries]
        if missing:
            available = ", ".join(sorted(summaries)) or "none"
            raise AnalysisError(
                f"no study named {', '.join(map(repr, missing))} in {url}; available: {available}"
            )
        chosen = list(dict.fromkeys(names))
        for n in chosen:
            if "optimizer" not in summaries[n].user_attrs:
                raise AnalysisError(
                    f"study {n!r} has no user attr 'optimizer' (not an l2bn study); "
                    "set it with study.set_user_attr('optimizer', ...)"
                )
    else:
        chosen = sorted(n for n, s in summaries.items() if "optimizer" in s.user_attrs)
        if not chosen:
            if summaries:
                raise AnalysisError(
                    f"no l2bn study in {url} (none has user attr 'optimizer'); "
                    f"studies there: {', '.join(sorted(summaries))}"
                )
            raise AnalysisError(f"no studies in {url}; run `l2bn sweep` first")

    read = None
    if bulk_sql and isinstance(store, optuna.storages.RDBStorage):
        try:
            read = _read_rdb(store, {n: store.get_study_id_from_name(n) for n in chosen})
        except SQLAlchemyError as e:
            raise StorageError(f"cannot read studies from {url}: {describe(e)}") from None
    out: list[StudyData] = []
    for name in chosen:
        attrs = summaries[name].user_attrs
        if read is not None:
            trials, n_complete = read[name]
        else:
            try:
                study = optuna.load_study(study_name=name, storage=store)
                frozen = study.get_trials(
                    deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)
                )
            except SQLAlchemyError as e:
                raise StorageError(f"cannot read study {name!r}: {describe(e)}") from None
            trials = [rec for t in frozen if (rec := _frozen_record(name, t)) is not None]
            n_complete = len(frozen)
        n_skipped = n_complete - len(trials)
        if n_skipped:
            warnings.append(
                f"study {name!r}: {n_skipped} complete trial(s) without a finite value and "
                "positive params lr, weight_decay ≥ 0 were skipped"
            )
        if "config" in attrs and _config_train(attrs["config"]) is None:
            warnings.append(
                f"study {name!r}: its 'config' user attr is not a sweep's JSON; its training "
                f"settings are read from the attrs {', '.join(ATTR_FIELDS)} alone"
            )
        identity, has_config = training_identity(attrs)
        epochs = attrs.get("epochs")
        out.append(
            StudyData(
                name=name,
                optimizer=str(attrs["optimizer"]),
                norm=None if identity["norm"] is None else str(identity["norm"]),
                dataset=None if identity["dataset"] is None else str(identity["dataset"]),
                epochs=int(epochs) if isinstance(epochs, int | float) else None,
                trials=tuple(trials),
                n_skipped=n_skipped,
                identity=identity,
                has_config=has_config,
            )
        )
    return tuple(out), tuple(warnings)


# The params and user attrs a TrialRecord is made of: nothing else is read.
RECORD_PARAMS = ("lr", "weight_decay", "seed")
RECORD_ATTRS = (
    "test_error",
    "train_loss",
    "val_loss",
    "diverged",
    "steps_per_epoch",
    "history",
)


def _frozen_record(study: str, t: optuna.trial.FrozenTrial) -> TrialRecord | None:
    values = t.values
    value = values[0] if values is not None and len(values) == 1 else None
    return _trial_record(study, t.number, t.params, value, t.user_attrs)


def _read_rdb(
    store: optuna.storages.RDBStorage, study_ids: Mapping[str, int]
) -> dict[str, tuple[list[TrialRecord], int]]:
    """Per study: its COMPLETE trials' records (by trial id, as Optuna orders them) and how
    many COMPLETE trials it has; one query per table for all studies together."""
    import sqlalchemy as sa
    from optuna.distributions import json_to_distribution
    from optuna.storages._rdb import models

    trials_t = models.TrialModel.__table__
    values_t = models.TrialValueModel.__table__
    params_t = models.TrialParamModel.__table__
    attrs_t = models.TrialUserAttributeModel.__table__
    names = {sid: name for name, sid in study_ids.items()}
    chosen = sa.and_(
        trials_t.c.study_id.in_(list(names)),
        trials_t.c.state == optuna.trial.TrialState.COMPLETE,
    )

    def of_chosen(table: sa.Table, *columns: sa.ColumnElement[Any]) -> sa.Select[Any]:
        on = table.c.trial_id == trials_t.c.trial_id
        return sa.select(*columns).select_from(table.join(trials_t, on)).where(chosen)

    with store.engine.connect() as conn:
        rows = conn.execute(
            sa.select(trials_t.c.trial_id, trials_t.c.study_id, trials_t.c.number)
            .where(chosen)
            .order_by(trials_t.c.trial_id)
        ).all()
        value_rows = conn.execute(
            of_chosen(
                values_t,
                values_t.c.trial_id,
                values_t.c.objective,
                values_t.c.value,
                values_t.c.value_type,
            )
        ).all()
        param_rows = conn.execute(
            of_chosen(
                params_t,
                params_t.c.trial_id,
                params_t.c.param_name,
                params_t.c.param_value,
                params_t.c.distribution_json,
            ).where(params_t.c.param_name.in_(RECORD_PARAMS))
        ).all()
        attr_rows = conn.execute(
            of_chosen(attrs_t, attrs_t.c.trial_id, attrs_t.c.key, attrs_t.c.value_json).where(
                attrs_t.c.key.in_(RECORD_ATTRS)
            )
        ).all()

    # Values as FrozenTrial.value has them: the single objective's, ±inf decoded; a trial
    # with several objectives has no single value (None: skipped, as through the API).
    to_value = models.TrialValueModel.stored_repr_to_value
    by_trial: dict[int, list[Any]] = defaultdict(list)
    for trial_id, objective, stored, kind in value_rows:
        by_trial[trial_id].append((objective, to_value(stored, kind)))
    values = {
        tid: vs[0][1] if len(vs) == 1 and vs[0][0] == 0 else None for tid, vs in by_trial.items()
    }
    # Params in their external form, through their distribution (a categorical η is stored
    # as its index); a handful of distinct distributions, each decoded once.
    dists: dict[str, Any] = {}
    params: dict[int, dict[str, Any]] = defaultdict(dict)
    for trial_id, pname, internal, dist_json in param_rows:
        dist = dists.get(dist_json)
        if dist is None:
            dist = dists[dist_json] = json_to_distribution(dist_json)
        params[trial_id][pname] = dist.to_external_repr(internal)
    user_attrs: dict[int, dict[str, Any]] = defaultdict(dict)
    loads = json.loads
    for trial_id, key, value_json in attr_rows:
        user_attrs[trial_id][key] = loads(value_json)

    out: dict[str, tuple[list[TrialRecord], int]] = {name: ([], 0) for name in study_ids}
    counts: dict[str, int] = defaultdict(int)
    empty: dict[str, Any] = {}
    for trial_id, sid, number in rows:
        name = names[sid]
        counts[name] += 1
        rec = _trial_record(
            name,
            number,
            params.get(trial_id, empty),
            values.get(trial_id),
            user_attrs.get(trial_id, empty),
        )
        if rec is not None:
            out[name][0].append(rec)
    return {name: (recs, counts[name]) for name, (recs, _) in out.items()}


def _trial_record(
    study: str, number: int, params: Mapping[str, Any], value: Any, ua: Mapping[str, Any]
) -> TrialRecord | None:
    lr = _as_float(params.get("lr"))
    wd = _as_float(params.get("weight_decay"))
    val = _as_float(value)
    if not (lr > 0 and wd >= 0 and math.isfinite(lr) and math.isfinite(wd)):
        return None
    if not math.isfinite(val):
        return None
    epoch_lrs, norms = parse_history(ua.get("history"))
    metrics = parse_metrics(ua.get("history"))
    steps = ua.get("steps_per_epoch")
    seed = _as_float(params.get("seed", 0))
    return TrialRecord(
        study=study,
        number=number,
        lr=lr,
        weight_decay=wd,
        seed=int(seed) if math.isfinite(seed) else 0,
        val_error=val,
        test_error=_as_float(ua.get("test_error")),
        train_loss=_as_float(ua.get("train_loss")),
        diverged=bool(ua.get("diverged", False)),
        steps_per_epoch=int(steps) if isinstance(steps, int | float) and steps > 0 else None,
        epoch_lrs=epoch_lrs,
        norms=norms,
        val_loss=_as_float(ua.get("val_loss")),
        metrics=metrics,
    )


METRICS = ("val_error", "val_loss")  # the per-epoch validation metrics a history may hold


def parse_metrics(raw: Any) -> dict[str, tuple[float, ...]]:
    """Per-epoch validation metrics from a ``history`` user attr: metric → one value per
    epoch (NaN for gaps), only the metrics some epoch recorded."""
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError:
            return {}
    if not isinstance(raw, list):
        return {}
    epochs = sorted((e for e in raw if isinstance(e, dict)), key=lambda e: e.get("epoch", 0))
    out = {m: tuple(_as_float(e.get(m)) for e in epochs) for m in METRICS}
    return {m: v for m, v in out.items() if any(math.isfinite(x) for x in v)}


def parse_history(raw: Any) -> tuple[tuple[float, ...], dict[str, tuple[float, ...]]]:
    """Per-epoch η and per-layer ‖w‖ from a ``history`` user attr (tolerant of gaps)."""
    if isinstance(raw, str):  # foreign writers may store the JSON text itself
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError:
            return (), {}
    if not isinstance(raw, list) or not raw:
        return (), {}
    epochs = [e for e in raw if isinstance(e, dict)]
    epochs.sort(key=lambda e: e.get("epoch", 0))
    lrs = tuple(_as_float(e.get("lr")) for e in epochs)
    # One pass over epochs × layers (10 000 trials × 100 epochs × 5 layers is 5M values);
    # dict order keeps the first layer seen first.
    columns: dict[str, list[float]] = {}
    nan = math.nan
    for i, e in enumerate(epochs):
        layers = e.get("layers")
        if not isinstance(layers, dict):
            continue
        for name, rec in layers.items():
            col = columns.get(name)
            if col is None:
                col = columns[name] = [nan] * len(epochs)
            v = rec.get("norm") if isinstance(rec, dict) else None
            if v is not None and v.__class__ is not bool and isinstance(v, int | float):
                col[i] = float(v)
    return lrs, {name: tuple(col) for name, col in columns.items()}


def _as_float(x: Any) -> float:
    if isinstance(x, bool) or not isinstance(x, int | float):
        return math.nan
    return float(x)


__all__ = [
    "IDENTITY_FIELDS",
    "NOT_IDENTITY",
    "StudyData",
    "TrialRecord",
    "load_studies",
    "open_for_reading",
    "parse_history",
    "parse_metrics",
    "training_identity",
]
