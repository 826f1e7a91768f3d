"""Reading swept studies for ``l2bn analyze``: read-only, in bulk, into plain records.

:func:`load_studies` opens the storage once through :func:`l2bn.sweep.storage.open_storage`
(``read_only=True``: a missing SQLite file is an error, never created; transactions are plain
readers beside running sweep workers) and reads every chosen study's COMPLETE trials in one
call each (``study.get_trials(deepcopy=False, states=(COMPLETE,))``). Studies are the l2bn
ones (user attr ``optimizer``) unless named explicitly. Each trial becomes a
:class:`TrialRecord` (params, user attrs, per-epoch η and layer norms from ``history``), each
study a :class:`StudyData` with its training identity (:func:`training_identity`).
"""

from __future__ import annotations

import json
import math
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

    @property
    def layers(self) -> tuple[str, ...]:
        return tuple(self.norms)

    @property
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
    storage: str | optuna.storages.BaseStorage, names: Sequence[str] = ()
) -> tuple[tuple[StudyData, ...], tuple[str, ...]]:
    """Read the chosen studies' COMPLETE trials; return them and warnings about skipped ones.

    ``names`` empty: every study with user attr ``optimizer``. A name that is not in the
    storage, or no l2bn study at all, raises :class:`AnalysisError`.
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

    out: list[StudyData] = []
    for name in chosen:
        attrs = summaries[name].user_attrs
        try:
            study = optuna.load_study(study_name=name, storage=store)
            frozen = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        except SQLAlchemyError as e:
            raise StorageError(f"cannot read study {name!r}: {describe(e)}") from None
        trials = [rec for t in frozen if (rec := _trial_record(name, t)) is not None]
        n_skipped = len(frozen) - len(trials)
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


def _trial_record(study: str, t: optuna.trial.FrozenTrial) -> TrialRecord | None:
    lr = _as_float(t.params.get("lr"))
    wd = _as_float(t.params.get("weight_decay"))
    value = _as_float(t.value)
    if not (lr > 0 and wd >= 0 and math.isfinite(lr) and math.isfinite(wd)):
        return None
    if not math.isfinite(value):
        return None
    ua = t.user_attrs
    epoch_lrs, norms = parse_history(ua.get("history"))
    steps = ua.get("steps_per_epoch")
    return TrialRecord(
        study=study,
        number=t.number,
        lr=lr,
        weight_decay=wd,
        seed=int(t.params.get("seed", 0)),
        val_error=value,
        test_error=_as_float(ua.get("test_error")),
        train_loss=_as_float(ua.get("train_loss")),
        diverged=bool(ua.get("diverged", False)),
        steps_per_epoch=int(steps) if isinstance(steps, int | float) and steps > 0 else None,
        epoch_lrs=epoch_lrs,
        norms=norms,
    )


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
    "training_identity",
]
