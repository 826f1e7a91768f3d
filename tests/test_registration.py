"""l2bn.registration and its life: a sweep file's [registration] table parsed (bad ones are
one clear error), stored with the study before its first trial and never changed after,
and judged by `l2bn analyze` (l2bn.analysis.registered): met, missed or undetermined, with
the numbers behind each condition."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import optuna
import pytest
from analysis.planting import centred_grid, fast_sqlite, plant_study, surface
from optuna.trial import TrialState

from l2bn.analysis.pipeline import AnalyzeConfig, analyze, run_analysis
from l2bn.errors import ConfigError
from l2bn.registration import (
    CI_DISJOINT,
    K_IN_RANGE,
    Registration,
    load_registration,
    parse_registration,
    stored_registration,
)
from l2bn.sweep.spec import parse_sweep
from l2bn.sweep.storage import open_storage
from l2bn.sweep.study import prepare_study

RULE: dict[str, Any] = {
    "primary": "collapse",
    "metric": "val_error",
    "conditions": [
        {"kind": "k_in_range", "optimizer": "sgd", "range": [0.9, 1.1]},
        {"kind": "k_in_range", "optimizer": "adam", "range": [0.9, 1.1]},  # planted ½: missed
        {"kind": "ci_disjoint", "optimizers": ["adam", "sgd"]},
        {"kind": "rows_collapse", "optimizer": "sgd", "at_least": 3},
        {"kind": "optima_in_equilibrium", "optimizer": "sgd"},  # no records: undetermined
        {"kind": "k_in_range", "optimizer": "nesterov", "range": [0.9, 1.1]},  # not swept
    ],
}
SMALL = {
    "name": "r",
    "dataset": "synthetic",
    "epochs": 1,
    "width": 4,
    "lr": [0.1, 1.0],
    "weight_decay": [1e-3, 1e-2],
    "optimizers": {"sgd": {}},
}


def test_a_rule_round_trips_through_its_stored_json() -> None:
    r = parse_registration(RULE)
    assert [c.kind for c in r.conditions][:3] == [K_IN_RANGE, K_IN_RANGE, CI_DISJOINT]
    assert stored_registration(r.to_json()) == r
    assert r.conditions[0].describe() == "sgd's k in [0.9, 1.1]"
    assert r.conditions[2].describe() == "adam's 95 % CI disjoint from sgd's"
    assert stored_registration("not json") is None and stored_registration(None) is None


@pytest.mark.parametrize(
    ("table", "needle"),
    [
        ({"primary": "joint"}, "primary must be one of collapse"),
        ({"metric": "accuracy"}, "metric must be one of val_error, val_loss"),
        ({"targets": {}}, "unknown key(s) targets"),
        ({"conditions": {"kind": "k_in_range"}}, "conditions must be a list"),
        ({"conditions": [{"kind": "k_between"}]}, "kind must be one of"),
        ({"conditions": [{"kind": "k_in_range", "optimizer": "sgd"}]}, "exactly the keys"),
        (
            {"conditions": [{"kind": "k_in_range", "optimizer": "sgd", "range": [1.1, 0.9]}]},
            "range must be [low, high] with low < high",
        ),
        (
            {"conditions": [{"kind": "ci_disjoint", "optimizers": ["adam", "adam"]}]},
            "two different optimizers",
        ),
        (
            {"conditions": [{"kind": "rows_collapse", "optimizer": "sgd", "at_least": 1}]},
            "at_least must be an integer ≥ 2",
        ),
        (
            {"conditions": [{"kind": "optima_in_equilibrium", "optimizer": "lion"}]},
            "optimizer must be an optimizer's name",
        ),
    ],
)
def test_a_bad_table_is_one_error_naming_what_is_wrong(table: dict[str, Any], needle: str) -> None:
    with pytest.raises(ConfigError, match=None) as info:
        parse_sweep({**SMALL, "registration": table}, source="r.toml")
    assert str(info.value).startswith("r.toml: [registration]") and needle in str(info.value)
    assert "\n" not in str(info.value)


def test_the_registration_is_stored_with_a_new_study_and_frozen_once_a_trial_ran(
    tmp_path: Path,
) -> None:
    storage = open_storage(f"sqlite:///{tmp_path / 'x.db'}")
    (sweep,) = parse_sweep({**SMALL, "registration": RULE}).select(None)
    study = prepare_study(storage, sweep)
    assert stored_registration(study.user_attrs["registration"]) == parse_registration(RULE)
    # Not a trial has run: the study is new, and its rule may still be changed.
    tighter = {**RULE, "conditions": RULE["conditions"][:1]}
    (changed,) = parse_sweep({**SMALL, "registration": tighter}).select(None)
    study = prepare_study(storage, changed)
    assert stored_registration(study.user_attrs["registration"]) == parse_registration(tighter)
    trial = study.ask()  # one runs
    study.tell(trial, 0.5)
    for table in (RULE, None):  # a change, or the table dropped: refused, and nothing written
        data = {**SMALL, **({"registration": table} if table else {})}
        (again,) = parse_sweep(data).select(None)
        with pytest.raises(ConfigError, match="a reading rule is registered before the first"):
            prepare_study(storage, again)
    stored = optuna.load_study(study_name=study.study_name, storage=storage).user_attrs
    assert stored_registration(stored["registration"]) == parse_registration(tighter)
    # The same rule again: resumes.
    (same,) = parse_sweep({**SMALL, "registration": tighter}).select(None)
    assert len(prepare_study(storage, same).get_trials(states=(TrialState.COMPLETE,))) == 1
    # A study that ran without a rule cannot be given one afterwards.
    (plain,) = parse_sweep({**SMALL, "name": "p"}).select(None)
    bare = prepare_study(storage, plain)
    bare.tell(bare.ask(), 0.5)
    (late,) = parse_sweep({**SMALL, "name": "p", "registration": RULE}).select(None)
    with pytest.raises(ConfigError, match="this sweep file adds one"):
        prepare_study(storage, late)


@pytest.fixture(scope="module")
def registered(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Planted sgd (k = 1) and adam (k = ½) studies carrying RULE, as a sweep would store it."""
    url = f"sqlite:///{tmp_path_factory.mktemp('reg') / 'reg.db'}"
    rdb = fast_sqlite(url)
    attrs = {"registration": Registration().to_json()}
    attrs["registration"] = parse_registration(RULE).to_json()
    wds = [1e-4, 1e-3, 1e-2, 1e-1]
    plant_study(rdb, "reg/sgd", "sgd", centred_grid(1.0, n=9), wds, surface(1.0), seeds=3,
                noise=0.01, attrs=attrs)  # fmt: skip
    plant_study(rdb, "reg/adam", "adam", centred_grid(0.5, n=9), wds, surface(0.5), seeds=3,
                noise=0.01, rng_seed=1, attrs=attrs)  # fmt: skip
    return url


def test_analyze_judges_each_condition_with_its_numbers(registered: str, tmp_path: Path) -> None:
    report = run_analysis(AnalyzeConfig(storage=registered, json_path=tmp_path / "r.json"))
    rule = report.rule
    assert rule is not None and rule.source == "studies"
    got = [(o.condition.kind, o.status) for o in rule.outcomes]
    assert got == [
        ("k_in_range", "met"),
        ("k_in_range", "missed"),
        ("ci_disjoint", "met"),
        ("rows_collapse", "met"),
        ("optima_in_equilibrium", "undetermined"),  # planted studies record no updates
        ("k_in_range", "undetermined"),  # nesterov was not swept
    ]
    assert rule.status == "does not hold"  # one missed condition is enough
    sgd = next(g for g in report.groups if g.optimizer == "sgd")
    k = sgd.scaling.k
    assert rule.outcomes[0].numbers == f"k = {k.value:.2f} [{k.ci_low:.2f}, {k.ci_high:.2f}]"
    assert "apart by" in rule.outcomes[2].numbers
    assert rule.outcomes[3].numbers.startswith("4 of 4 rows follow one curve")
    assert rule.outcomes[5].numbers == "no nesterov group in this analysis"
    saved = json.loads((tmp_path / "r.json").read_text())["registration"]
    assert saved["status"] == "does not hold" and saved["source"] == "studies"
    assert [c["status"] for c in saved["conditions"]] == [s for _, s in got]
    from rich.console import Console

    from l2bn.render import render_report

    console = Console(record=True, width=200)
    console.print(render_report(report))
    text = console.export_text()
    assert "Registered reading rule (studies): does not hold" in text
    assert "adam's 95 % CI disjoint from sgd's" in text


def test_exports_are_judged_by_a_registration_file_and_read_as_parts(
    registered: str, tmp_path: Path
) -> None:
    parts = []
    for name in ("sgd", "adam"):
        out = tmp_path / f"{name}.csv"
        run_analysis(AnalyzeConfig(storage=registered, studies=(f"reg/{name}",), csv_path=out))
        parts.append(out)
    sweep = tmp_path / "run.toml"
    sweep.write_text(
        'name = "reg"\n[registration]\nconditions = [\n'
        '  { kind = "ci_disjoint", optimizers = ["adam", "sgd"] },\n'
        '  { kind = "k_in_range", optimizer = "adam", range = [0.4, 0.6] },\n]\n'
    )
    assert load_registration(sweep).conditions[1].low == 0.4
    report = analyze(
        AnalyzeConfig(from_csv=parts[0], more_csv=(parts[1],), registration_path=sweep)
    )
    assert {g.optimizer for g in report.groups} == {"sgd", "adam"}
    assert report.storage == f"csv:{parts[0]},{parts[1]}"
    assert report.rule is not None and report.rule.source == str(sweep)
    assert [o.status for o in report.rule.outcomes] == ["met", "met"]
    assert report.rule.status == "holds"
    # Without a rule file an export is judged by none: it carries no study attrs.
    assert analyze(AnalyzeConfig(from_csv=parts[0])).rule is None
    for bad, needle in (
        (tmp_path / "none.toml", "no such file"),
        (parts[0], "not valid TOML"),
    ):
        with pytest.raises(ConfigError, match=needle):
            analyze(AnalyzeConfig(from_csv=parts[0], registration_path=bad))
    nothing = tmp_path / "plain.toml"
    nothing.write_text('name = "x"\n')
    with pytest.raises(ConfigError, match=r"has no \[registration\] table"):
        analyze(AnalyzeConfig(from_csv=parts[0], registration_path=nothing))
    assert math.isfinite(report.groups[0].scaling.k.value)
