"""l2bn.analysis.loading: reading studies read-only, their records and training identities."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import optuna
import pytest

from l2bn.analysis.loading import (
    IDENTITY_FIELDS,
    load_studies,
    parse_history,
    training_identity,
)
from l2bn.analysis.pipeline import AnalyzeConfig, analyze
from l2bn.errors import AnalysisError, StorageError
from l2bn.train.config import TrainConfig

from .planting import log_grid, plant_study, surface, sweep_attrs


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
        "lr", "weight_decay", "seed", "data_dir", "device",
    }  # fmt: skip
    identity, from_config = training_identity(sweep_attrs("adam", affine=False, epochs=7))
    assert from_config and set(identity) == set(IDENTITY_FIELDS)
    assert identity["optimizer"] == "adam" and identity["affine"] is False
    assert identity["epochs"] == 7 and identity["lr_drops"] == (0.5, 0.8)  # hashable


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
