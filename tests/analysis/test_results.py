"""l2bn.analysis.{settings,fitted,results}: settings, result types, labels and their JSON form."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

from l2bn.analysis.fitted import UNDETERMINED, Estimate, ScalingFit
from l2bn.analysis.results import GroupReport
from l2bn.analysis.settings import DEFAULT_STORAGE, AnalyzeConfig
from l2bn.errors import ConfigError


def test_bad_settings_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="equilibrium"):
        AnalyzeConfig(equilibrium=-1.0)
    with pytest.raises(ConfigError, match="confidence"):
        AnalyzeConfig(confidence=1.5)


def test_default_storage_is_the_sweeps() -> None:
    from l2bn.sweep.storage import DEFAULT_STORAGE as SWEEP_DEFAULT

    assert DEFAULT_STORAGE == SWEEP_DEFAULT == AnalyzeConfig().storage


def test_results_import_no_storage_code() -> None:
    code = "import sys, l2bn.analysis.results; print({'optuna', 'scipy'} & set(sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "set()"


def test_settings_never_show_a_password() -> None:
    cfg = AnalyzeConfig(storage="postgresql+psycopg://bob:hunter2@db/x", studies=["a/sgd"])
    d = cfg.to_dict()
    assert d["storage"] == "postgresql+psycopg://bob:***@db/x"
    assert d["studies"] == ["a/sgd"] and d["k_bounds"] == [-1.0, 2.5]


def test_estimate_covers_within_a_tolerance_and_writes_nan_as_null() -> None:
    e = Estimate(0.5, 0.05, 0.4, 0.6, 10, "ols-t")
    assert e.determined and e.covers(0.6) and not e.covers(0.65) and e.covers(0.65, 0.05)
    missing = Estimate.missing(3)
    assert not missing.determined and not missing.covers(math.nan)
    assert json.dumps(missing.to_dict(), allow_nan=False)  # no NaN reaches the JSON
    assert missing.to_dict()["value"] is None and missing.to_dict()["n"] == 3


def _group(**changes: object) -> GroupReport:
    scaling = ScalingFit(Estimate.missing(), math.nan, math.nan, 0, None, UNDETERMINED)
    base: dict[str, object] = dict(
        optimizer="sgd", norm="bn", dataset="cifar10", studies=("a/sgd",), n_trials=0,
        max_seeds=1, n_diverged=0, cells=(), optima=(), scaling=scaling, collapse=None,
        norms=(), first_layer=None, warnings=(),
    )  # fmt: skip
    return GroupReport(**{**base, **changes})  # type: ignore[arg-type]


def test_label_and_slug_name_what_tells_a_group_apart() -> None:
    plain = _group()
    assert plain.label == "sgd / bn / cifar10" and plain.slug == "sgd-bn-cifar10"
    apart = _group(distinct={"affine": False, "lr_drops": (0.5, 0.8)})
    assert apart.label == "sgd / bn / cifar10 [affine=false, lr_drops=0.5,0.8]"
    assert apart.slug == "sgd-bn-cifar10-affine_false-lr_drops_0.5_0.8"
    assert _group(norm=None, dataset=None).slug == "sgd-any-any"


def test_group_json_holds_its_identity_as_json_values() -> None:
    identity = {"optimizer": "sgd", "lr_drops": (0.5, 0.8), "affine": False, "head": None}
    d = _group(identity=identity, distinct={"affine": False}).to_dict()
    assert d["identity"] == {"optimizer": "sgd", "lr_drops": [0.5, 0.8], "affine": False,
                             "head": None}  # fmt: skip
    assert d["distinct"] == {"affine": False}
    assert json.loads(json.dumps(d["identity"])) == d["identity"]
