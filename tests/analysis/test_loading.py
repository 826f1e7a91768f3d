"""l2bn.analysis.reading.studies: reading studies read-only, their records and training
identities."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

import optuna
import pytest

from l2bn.analysis.pipeline import AnalyzeConfig, analyze
from l2bn.analysis.reading.records import IDENTITY_FIELDS, parse_history
from l2bn.analysis.reading.studies import load_studies, training_identity
from l2bn.errors import AnalysisError, StorageError
from l2bn.train.config import TrainConfig

from .planting import centred_grid, log_grid, plant_study, surface, sweep_attrs


def test_missing_sqlite_file_is_not_created(tmp_path: Path) -> None:
    db = tmp_path / "nope.db"
    with pytest.raises(StorageError, match="no such storage file"):
        analyze(AnalyzeConfig(storage=f"sqlite:///{db}"))
    assert not db.exists()


def test_unknown_study_lists_the_available_ones(planted: str) -> None:
    with pytest.raises(AnalysisError, match=r"no study named 'p/sgdd'.*available: .*p/sgd"):
        analyze(AnalyzeConfig(storage=planted, studies=("p/sgdd",)))


def test_empty_storage_and_foreign_studies_are_helpful_errors(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'empty.db'}"
    storage = optuna.storages.RDBStorage(url)
    with pytest.raises(AnalysisError, match=r"no studies in .*l2bn sweep"):
        analyze(AnalyzeConfig(storage=url))
    optuna.create_study(storage=storage, study_name="foreign")
    with pytest.raises(AnalysisError, match=r"no l2bn study .*'optimizer'.*foreign"):
        analyze(AnalyzeConfig(storage=url))
    with pytest.raises(AnalysisError, match="no user attr 'optimizer'"):
        analyze(AnalyzeConfig(storage=url, studies=("foreign",)))


def test_storage_is_opened_read_only(tmp_path: Path) -> None:
    """A read-only SQLite URL works (a writer's BEGIN IMMEDIATE would fail on it), and the
    file is byte for byte what it was."""
    db = tmp_path / "ro.db"
    plant_study(f"sqlite:///{db}", "ro/sgd", "sgd", log_grid(1e-4, 1.0, 5), [1e-3, 1e-2],
                surface(1.0), seeds=1)  # fmt: skip
    before = hashlib.sha256(db.read_bytes()).hexdigest()
    studies, warnings = load_studies(f"sqlite:///file:{db}?mode=ro&uri=true")
    assert [s.name for s in studies] == ["ro/sgd"] and warnings == ()
    assert len(studies[0].trials) == 10
    load_studies(f"sqlite:///{db}")
    assert hashlib.sha256(db.read_bytes()).hexdigest() == before


# --- records ------------------------------------------------------------------------------


def test_history_parsing_tolerates_gaps_and_foreign_encodings() -> None:
    history = [
        {"epoch": 2, "lr": 0.1, "layers": {"conv1": {"norm": 2.0}, "fc": {"norm": True}}},
        {"epoch": 1, "lr": 0.1, "layers": {"conv1": {"norm": 1}}},
        {"epoch": 3, "lr": "x"},
        "junk",
    ]
    lrs, norms = parse_history(json.dumps(history))  # stored as JSON text
    assert lrs[:2] == (0.1, 0.1) and math.isnan(lrs[2])
    assert norms["conv1"][:2] == (1.0, 2.0) and math.isnan(norms["conv1"][2])
    assert all(math.isnan(v) for v in norms["fc"])  # a bool is not a norm
    assert parse_history("{not json") == ((), {})
    assert parse_history(None) == ((), {})


# --- training identity --------------------------------------------------------------------


def test_identity_is_every_training_field_but_the_grid_seed_and_location() -> None:
    assert set(IDENTITY_FIELDS) == {f for f in TrainConfig().to_dict()} - {
        "lr", "weight_decay", "seed", "data_dir", "device", "graph",
    }  # fmt: skip
    identity, from_config = training_identity(sweep_attrs("adam", affine=False, epochs=7))
    assert from_config and set(identity) == {*IDENTITY_FIELDS, "init_scale_exponent"}
    assert identity["optimizer"] == "adam" and identity["affine"] is False
    assert identity["epochs"] == 7 and identity["lr_drops"] == (0.5, 0.8)  # hashable


def test_an_init_scale_tied_to_lambda_is_another_experiment() -> None:
    """S = init_scale·(λ/λ_ref)^-e: the same (η, λ) starts from another ‖w₀‖ when e or λ_ref
    differ, so such studies are not pooled; without a tie (e = 0) λ_ref does not matter."""
    plain, _ = training_identity(sweep_attrs("sgd"))
    tied = [
        training_identity(sweep_attrs("sgd", optimizers={"sgd": extra}))[0]
        for extra in (
            {"init_scale_exponent": 0.5, "reference_weight_decay": 0.01},
            {"init_scale_exponent": 0.5, "reference_weight_decay": 0.04},
            {"init_scale_exponent": 1.0, "reference_weight_decay": 0.01},
            {"reference_weight_decay": 0.04},
        )
    ]
    assert plain["init_scale_exponent"] == 0.0 and "reference_weight_decay" not in plain
    assert tied[0] != plain and tied[0] != tied[1] and tied[0] != tied[2]
    assert tied[3] == plain
    assert tied[0]["reference_weight_decay"] == 0.01


def test_fields_an_older_sweep_did_not_write_take_their_defaults() -> None:
    old, _ = training_identity(sweep_attrs("sgd", drop=("affine", "head", "precision")))
    new, _ = training_identity(sweep_attrs("sgd"))
    assert old == new
    assert old["affine"] is True and old["head"] == "linear" and old["precision"] == "auto"


def test_a_study_without_config_is_known_by_its_attrs_alone() -> None:
    attrs = {"optimizer": "sgd", "norm": "bn", "dataset": "x", "epochs": 10}
    identity, from_config = training_identity(attrs)
    assert not from_config
    assert identity["optimizer"] == "sgd" and identity["epochs"] == 10
    assert identity["width"] is None and identity["affine"] is None
    bad, from_config = training_identity({**attrs, "config": "{not json"})
    assert not from_config and bad == identity


def test_loaded_studies_carry_their_identity(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/id.db"
    attrs = sweep_attrs("sgd", affine=False)
    plant_study(url, "id/sgd", "sgd", log_grid(1e-4, 1.0, 3), [1e-3], surface(1.0), seeds=1,
                attrs=attrs)  # fmt: skip
    plant_study(url, "bad/sgd", "sgd", log_grid(1e-4, 1.0, 3), [1e-3], surface(1.0), seeds=1,
                attrs={"config": "[]"})  # fmt: skip
    (bad, good), warnings = load_studies(url)
    assert good.has_config and good.identity["affine"] is False
    assert good.dataset == "cifar10"  # the sweep's attr, over the planting default
    assert not bad.has_config and bad.identity["affine"] is None
    assert any("'bad/sgd'" in w and "not a sweep's JSON" in w for w in warnings)


# --- the bulk SQL reader against Optuna's API ---------------------------------------------


def _plant_mixed(storage: str | optuna.storages.BaseStorage) -> None:
    """Studies with every trial state and the odd trials a foreign writer can leave."""
    from .planting import NORM_LRS, NORM_WDS, norms_law

    plant_study(
        storage,
        "mix/sgd",
        "sgd",
        NORM_LRS[:3],
        NORM_WDS[:2],
        surface(1.0),
        seeds=2,
        norms=norms_law(0.25),
    )
    plant_study(
        storage, "mix/adam", "adam", log_grid(1e-4, 1.0, 3), [1e-3, 1e-2], surface(0.5), seeds=1
    )
    plant_study(storage, "other/sgd", "sgd", log_grid(1e-4, 1.0, 3), [1e-3], surface(1.0))
    optuna.create_study(storage=storage, study_name="foreign")  # not an l2bn study
    study = optuna.load_study(study_name="mix/sgd", storage=storage)
    lr = optuna.distributions.FloatDistribution(1e-8, 1e6, log=True)
    wd = optuna.distributions.FloatDistribution(1e-8, 10.0, log=True)
    cat = optuna.distributions.CategoricalDistribution([0.3, 0.03])
    seed = optuna.distributions.IntDistribution(0, 100)
    dists = {"lr": lr, "weight_decay": wd, "seed": seed}
    history = [
        {"epoch": 2, "lr": 0.1, "layers": {"conv1": {"norm": 2.0, "unit_norm": 1.0}}},
        {"epoch": 1, "lr": 0.1, "layers": {"conv1": {"norm": None}, "fc": 3}},
    ]

    def trial(
        state: optuna.trial.TrialState,
        value: float | None = 0.5,
        params: dict[str, Any] | None = None,
        dists: dict[str, optuna.distributions.BaseDistribution] = dists,
        user_attrs: dict[str, Any] | None = None,
        study: optuna.Study = study,
    ) -> None:
        study.add_trial(
            optuna.trial.create_trial(
                state=state,
                params=params or {"lr": 0.1, "weight_decay": 1e-3, "seed": 7},
                distributions=dists,
                value=value if state == optuna.trial.TrialState.COMPLETE else None,
                user_attrs={"history": history, "steps_per_epoch": 10}
                if user_attrs is None
                else user_attrs,
                intermediate_values={0: 0.9, 1: 0.7},
                system_attrs={"fixed_params": {"lr": 0.1}},
            )
        )

    S = optuna.trial.TrialState
    for state in (S.FAIL, S.PRUNED, S.WAITING, S.RUNNING):
        trial(state)  # never a record
    trial(S.COMPLETE)  # gaps in its history, an intermediate value, a system attr
    # A categorical η, stored as its index (in a study of its own: Optuna wants one kind
    # of distribution per param and study).
    categorical = optuna.create_study(storage=storage, study_name="mix/cat")
    categorical.set_user_attr("optimizer", "momentum")
    trial(
        S.COMPLETE,
        params={"lr": 0.3, "weight_decay": 1e-3, "seed": 1},
        dists={**dists, "lr": cat},
        study=categorical,
    )
    trial(S.COMPLETE, value=float("inf"))  # skipped: no finite value
    trial(S.COMPLETE, params={"weight_decay": 1e-3}, dists={"weight_decay": wd})  # no lr
    trial(
        S.COMPLETE,
        user_attrs={
            "history": json.dumps(history),
            "diverged": True,
            "test_error": None,
            "train_loss": float("nan"),
        },
    )
    trial(S.COMPLETE, user_attrs={"history": "not json", "steps_per_epoch": 0})
    trial(S.COMPLETE, user_attrs={})


@pytest.mark.parametrize("names", [(), ("mix/sgd", "mix/adam"), ("mix/sgd",), ("mix/cat",)])
def test_bulk_sql_reads_exactly_what_optunas_api_reads(
    tmp_path: Path, names: tuple[str, ...]
) -> None:
    url = f"sqlite:///{tmp_path / 'mix.db'}"
    _plant_mixed(url)
    fast = load_studies(url, names)
    slow = load_studies(url, names, bulk_sql=False)
    # repr: NaN == NaN; every field of every record, in order.
    assert repr(fast) == repr(slow)
    studies, warnings = fast
    every = ["mix/adam", "mix/cat", "mix/sgd", "other/sgd"]
    assert [s.name for s in studies] == (list(names) or every)
    by_name = {s.name: s for s in studies}
    if "mix/sgd" in by_name:
        mix = by_name["mix/sgd"]
        assert len(mix.trials) == 12 + 4 and mix.n_skipped == 2
        odd = [t for t in mix.trials if t.seed == 7]
        assert [t.number for t in odd] == [16, 19, 20, 21]  # the API's order: by trial id
        assert odd[0].epoch_lrs == (0.1, 0.1) and odd[0].norms["conv1"][1] == 2.0
        assert odd[1].diverged and math.isnan(odd[1].test_error)
        assert any("'mix/sgd': 2 complete trial(s)" in w for w in warnings)
    if "mix/cat" in by_name:
        assert by_name["mix/cat"].trials[0].lr == 0.3  # decoded from its index


def test_bulk_sql_builds_no_frozen_trials(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"sqlite:///{tmp_path / 'mix.db'}"
    _plant_mixed(url)

    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("the bulk reader must not go through Optuna's per-trial API")

    monkeypatch.setattr(optuna, "load_study", forbidden)
    monkeypatch.setattr(optuna.storages.RDBStorage, "get_all_trials", forbidden)
    studies, _ = load_studies(url)
    assert sum(len(s.trials) for s in studies) == 16 + 1 + 6 + 6


def test_storages_without_sql_are_read_through_optunas_api() -> None:
    storage = optuna.storages.InMemoryStorage()
    _plant_mixed(storage)
    studies, _ = load_studies(storage, ("mix/sgd",))
    assert len(studies[0].trials) == 16 and studies[0].n_skipped == 2


@pytest.mark.parametrize("bulk_sql", [True, False])
def test_per_epoch_metrics_and_val_loss_are_read_and_give_k_over_training(
    tmp_path: Path, bulk_sql: bool
) -> None:
    url = f"sqlite:///{tmp_path / 'm.db'}"

    dip = surface(1.0)

    def history(lr: float, wd: float) -> list[dict[str, Any]]:
        # Per-epoch validation error and loss with the planted dip, shifted up early on.
        return [
            {"epoch": e, "lr": lr, "val_error": dip(lr, wd) + 0.1 / e,
             "val_loss": 2 * dip(lr, wd), "layers": {}}
            for e in range(1, 5)
        ]  # fmt: skip

    plant_study(url, "m/sgd", "sgd", centred_grid(1.0), (1e-4, 1e-3, 1e-2), dip, history=history)
    studies, _ = load_studies(url, bulk_sql=bulk_sql)
    t = studies[0].trials[0]
    assert t.metrics["val_error"] == pytest.approx(
        [dip(t.lr, t.weight_decay) + 0.1 / e for e in range(1, 5)]
    )
    assert t.metrics["val_loss"] == pytest.approx([2 * dip(t.lr, t.weight_decay)] * 4)
    assert math.isnan(t.val_loss)  # no val_loss user attr here: the history's last one is used
    (g,) = analyze(AnalyzeConfig(storage=url)).groups
    assert [r.epoch for r in g.k_by_epoch] == [1, 2, 3, 4]  # was empty: loading dropped them
    assert analyze(AnalyzeConfig(storage=url, metric="val_loss")).groups[0].metric == "val_loss"
