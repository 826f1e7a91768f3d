"""Reading swept studies for ``l2bn analyze``: read-only, in bulk, into plain records.

:func:`load_studies` opens the storage once through :func:`l2bn.sweep.storage.open_storage`
(``read_only=True``: a missing SQLite file is an error, never created; transactions are plain
readers beside running sweep workers). Studies are the l2bn ones (user attr ``optimizer``)
unless named explicitly. Each COMPLETE trial becomes a :class:`TrialRecord` (params, user
attrs, per-epoch η and layer norms from ``history``), each study a :class:`StudyData` with its
training identity (:func:`training_identity`).

Each study's stored ``objective`` (:func:`study_objective`) tells what its trials' value is:
under ``val_loss`` the record's ``val_error`` comes from the user attr of that name (or the
history). Besides the norms, the history's per-layer update records (``angle``, ``angle_eq``,
``balance``, ``radial``, ``tangential``, ``grad_norm``; :data:`DYNAMICS`) and per-epoch
``val_error``/``val_loss`` are kept (:func:`read_history`, one pass over the epochs).

How the trials are read: on an RDB storage (SQLite, PostgreSQL, MySQL), with one SQL query per
table for all chosen studies together (trials, trial_values, trial_params, and only the user
attrs a record needs), through SQLAlchemy on the storage's own engine and Optuna's table
definitions: no FrozenTrial is built, nothing analyze does not use (system attrs, intermediate
values, distributions of other params, other user attrs) is read, and each ``history`` JSON is
decoded once: 2.4× less CPU than through Optuna's per-trial objects on 10 000 trials with
20-epoch histories (benchmarks/bench_analyze.py), most of what is left being that JSON.
Other storages, and ``bulk_sql=False``, read through Optuna's API
(``study.get_trials(deepcopy=False, states=(COMPLETE,))``); both give the same records
(tests/analysis/test_loading.py).
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

import optuna

from l2bn.analysis.reading.records import (
    ATTR_FIELDS,
    IDENTITY_FIELDS,
    METRICS,
    NOT_IDENTITY,
    StudyData,
    TrialRecord,
    as_float,
    decode,
    read_history,
)
from l2bn.errors import AnalysisError, StorageError
from l2bn.registration import stored_registration
from l2bn.sweep.storage import describe, open_storage, parse_url, redact, sqlite_path
from l2bn.train.config import TrainConfig  # torch-free: the defaults of fields old studies lack

_TRAIN_FIELDS = frozenset(TrainConfig.__dataclass_fields__)


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
        # A sweep that ties the initial scale to λ (S = init_scale·(λ/λ_ref)^-e) trains each
        # (η, λ) from another w₀ than one that does not: a different experiment per trial.
        identity |= _init_scale_tie(attrs.get("config"))
    else:
        identity = {k: _frozen(attrs.get(k)) if k in ATTR_FIELDS else None for k in IDENTITY_FIELDS}
    for key in ("optimizer", "norm", "dataset"):
        if attrs.get(key) is not None:
            identity[key] = str(attrs[key])
    return identity, train is not None


def _init_scale_tie(raw: Any) -> dict[str, Any]:
    """{"init_scale_exponent": e, and "reference_weight_decay": λ_ref where e ≠ 0} from the
    stored sweep config (e = 0, no tie, for studies written before the key existed)."""
    try:
        config = json.loads(raw)
    except (TypeError, json.JSONDecodeError):
        return {}
    if not isinstance(config, dict):
        return {}
    e = config.get("init_scale_exponent", 0.0) or 0.0
    if e == 0:
        return {"init_scale_exponent": 0.0}
    return {
        "init_scale_exponent": e,
        "reference_weight_decay": config.get("reference_weight_decay"),
    }


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


def study_objective(attrs: Mapping[str, Any]) -> str | None:
    """The objective a study's trials report as their value, if it stored one: the user attr
    ``objective``, else the ``config`` JSON's top-level ``objective`` or its ``train`` dict's;
    None when absent or not a known metric (older studies: val_error)."""
    candidates: list[Any] = [attrs.get("objective")]
    raw = attrs.get("config")
    if isinstance(raw, str):
        try:
            config = json.loads(raw)
        except json.JSONDecodeError:
            config = None
        if isinstance(config, dict):
            candidates.append(config.get("objective"))
            train = config.get("train")
            if isinstance(train, dict):
                candidates.append(train.get("objective"))
    for c in candidates:
        if isinstance(c, str) and c in METRICS:
            return c
    return None


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

    objectives = {n: study_objective(summaries[n].user_attrs) for n in chosen}
    read = None
    if bulk_sql and isinstance(store, optuna.storages.RDBStorage):
        try:
            ids = {n: store.get_study_id_from_name(n) for n in chosen}
            read = _read_rdb(store, ids, objectives)
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
            trials = [
                rec
                for t in frozen
                if (rec := _frozen_record(name, t, objectives[name])) is not None
            ]
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
                objective=objectives[name],
                registration=stored_registration(attrs.get("registration")),
                source=f"storage {url}",
            )
        )
    return tuple(out), tuple(warnings)


# The params and user attrs a TrialRecord is made of: nothing else is read.
RECORD_PARAMS = ("lr", "weight_decay", "seed")
RECORD_ATTRS = (
    "val_error",  # where the trial's value is another objective (val_loss)
    "test_error",
    "train_loss",
    "val_loss",
    "diverged",
    "steps_per_epoch",
    "history",
)


def _frozen_record(
    study: str, t: optuna.trial.FrozenTrial, objective: str | None = None
) -> TrialRecord | None:
    values = t.values
    value = values[0] if values is not None and len(values) == 1 else None
    return _trial_record(study, t.number, t.params, value, t.user_attrs, objective)


def _read_rdb(
    store: optuna.storages.RDBStorage,
    study_ids: Mapping[str, int],
    objectives: Mapping[str, str | None] | None = None,
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
    for trial_id, key, value_json in attr_rows:
        user_attrs[trial_id][key] = decode(value_json)

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
            None if objectives is None else objectives.get(name),
        )
        if rec is not None:
            out[name][0].append(rec)
    return {name: (recs, counts[name]) for name, (recs, _) in out.items()}


def _trial_record(
    study: str,
    number: int,
    params: Mapping[str, Any],
    value: Any,
    ua: Mapping[str, Any],
    objective: str | None = None,
) -> TrialRecord | None:
    """A trial's record; ``objective``: the study's stored objective, whose value the
    trial's is (None: val_error, as every study before objectives were stored)."""
    lr = as_float(params.get("lr"))
    wd = as_float(params.get("weight_decay"))
    val = as_float(value)
    if not (lr > 0 and wd >= 0 and math.isfinite(lr) and math.isfinite(wd)):
        return None
    if not math.isfinite(val) and objective != "val_loss":
        return None
    h = read_history(ua.get("history"))
    steps = ua.get("steps_per_epoch")
    seed = as_float(params.get("seed", 0))
    val_error, val_loss = val, as_float(ua.get("val_loss"))
    if objective == "val_loss":
        # The trial's value is its validation loss (+inf for a diverged run, whose loss is
        # not finite); its error is a user attr (chance level when diverged) or the history's.
        if not math.isfinite(val_loss) and math.isfinite(val):
            val_loss = val
        val_error = as_float(ua.get("val_error"))
        if not math.isfinite(val_error):
            errors = h.metrics.get("val_error", ())
            val_error = errors[-1] if errors else math.nan
        if not (math.isfinite(val) or math.isfinite(val_error)):
            return None
    return TrialRecord(
        study=study,
        number=number,
        lr=lr,
        weight_decay=wd,
        seed=int(seed) if math.isfinite(seed) else 0,
        val_error=val_error,
        test_error=as_float(ua.get("test_error")),
        train_loss=as_float(ua.get("train_loss")),
        diverged=bool(ua.get("diverged", False)),
        steps_per_epoch=int(steps) if isinstance(steps, int | float) and steps > 0 else None,
        epoch_lrs=h.lrs,
        norms=h.norms,
        val_loss=val_loss,
        metrics=h.metrics,
        dynamics=h.dynamics,
    )


__all__ = [
    "load_studies",
    "open_for_reading",
    "study_objective",
    "training_identity",
]
