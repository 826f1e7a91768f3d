"""l2bn.sweep.spec: sweep files, --set flags, and the resolved sweep a study stores."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from l2bn.errors import ConfigError
from l2bn.sweep.spec import LOCATION_FIELDS, load_sweep, parse_settings, parse_sweep, sweep_from_cli

from .helpers import REPO, tiny_sweep


def test_shipped_sweeps_parse() -> None:
    paper = load_sweep(REPO / "sweeps" / "paper.toml")
    assert {o.value for o in paper.optimizers} == {"sgd", "nesterov", "adam"}
    for s in paper.optimizers.values():
        assert len(s.points()) == 49 and s.base_config().epochs == 100
    cpu = load_sweep(REPO / "sweeps" / "cpu.toml")
    nesterov = cpu.select(["nesterov"])[0]
    assert nesterov.base_config().batch_size == 32 and nesterov.base_config().head.value == "bn"
    # η grid in η·λ coordinates: at larger λ the η values are proportionally lower.
    by_wd: dict[float, list[float]] = {}
    for p in nesterov.points():
        by_wd.setdefault(p.weight_decay, []).append(p.lr)
    assert min(by_wd[0.16]) == pytest.approx(min(by_wd[0.01]) / 16)
    assert len(load_sweep(REPO / "sweeps" / "smoke.toml").select(None)[0].points()) == 9
    # Run 2 of REPRODUCTION.md: its comment promises 84 runs, 48 of them in equilibrium
    # (c·η·λ·T ≥ 5 with c = 10 for momentum and T = 50 epochs × 145 steps).
    (long,) = load_sweep(REPO / "sweeps" / "cpu-long.toml").select(None)
    points = long.points()
    assert len(points) == 84 and long.base_config().epochs == 100
    assert sum(10 * p.lr * p.weight_decay * 50 * 145 >= 5 for p in points) == 48
    # Run 4: adam in run 2's design; by the plain η·λ·T ≥ 5 only the top column at λ ≥ 0.64.
    (adam,) = load_sweep(REPO / "sweeps" / "cpu-adam.toml").select(None)
    points = adam.points()
    assert len(points) == 60 and adam.base_config().epochs == 100
    assert adam.weight_decay.values == long.weight_decay.values
    assert sum(p.lr * p.weight_decay * 50 * 145 >= 5 for p in points) == 2 * 2
    # Run 6: run 4 with γ/β frozen, on run 4's middle 3 columns: the very same (η, λ) points,
    # so scripts/optima_shift.py compares the two runs point for point.
    (frozen,) = load_sweep(REPO / "sweeps" / "cpu-adam-noaffine.toml").select(None)
    assert not frozen.base_config().affine and adam.base_config().affine
    assert len(frozen.points()) == 48 and set(frozen.points()) < set(points)
    # AdamW's design: its comment promises 3 of 5 columns in equilibrium (c = 2, AdamW's clock).
    (adamw,) = load_sweep(REPO / "sweeps" / "cpu-adamw.toml").select(None)
    points = adamw.points()
    assert len(points) == 40 and adamw.base_config().optimizer.value == "adamw"
    assert sum(2 * p.lr * p.weight_decay * 50 * 145 >= 5 for p in points) == 3 * 4 * 2


def test_grid_values_and_overrides(tmp_path: Path) -> None:
    sweep = parse_sweep(
        {
            "name": "s",
            "lr": {"min": 1e-3, "max": 1.0, "num": 4},
            "weight_decay": [1e-3, 1e-2],
            "seeds": 2,
            "epochs": 5,
            "optimizers": {"sgd": {}, "adam": {"lr": [1e-4], "epochs": 7}},
        }
    )
    sgd, adam = sweep.select(["sgd", "adam"])
    assert [p.lr for p in sgd.points()[:8:2]] == [0.001, 0.01, 0.1, 1.0]
    assert len(sgd.points()) == 4 * 2 * 2
    assert adam.base_config().epochs == 7 and len(adam.points()) == 4
    assert sgd.study_name == "s/sgd"
    with pytest.raises(ConfigError, match="no optimizer 'adamw'"):
        sweep.select(["adamw"])


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("name = [", "not valid TOML"),
        ("bogus = 1\n[optimizers.sgd]\nlr=[1.0]\nweight_decay=[1e-3]", "unknown key 'bogus'"),
        (
            "[optimizers.sgd]\nlr=[1.0]\nweight_decay=[1e-3]\nlr_drop=1",
            r"\[optimizers.sgd\].*lr_drop",
        ),
        (
            "[optimizers.sgd]\nlr={min=1, max=0.1, num=3}\nweight_decay=[1e-3]",
            "min 1 must be < max",
        ),
        ("[optimizers.sgd]\nlr={min=0.1, max=1, num=1}\nweight_decay=[1e-3]", "num must be"),
        ("[optimizers.sgd]\nlr=[1.0]\nweight_decay=[0.0]", "numbers > 0"),
        ("[optimizers.sgd]\nlr=[1.0]\nweight_decay=[1e-3]\nseed=3", "set per grid point"),
        ("[optimizers.sgdd]\nlr=[1.0]\nweight_decay=[1e-3]", "optimizer 'sgdd'"),
        ("[optimizers.sgd]\nlr=[1.0]\nweight_decay=[1e-3]\nepochs=0", "epochs must be"),
        ("lr=[1.0]\nweight_decay=[1e-3]", "no optimizers"),
    ],
)
def test_bad_sweep_files_name_the_problem_and_the_file(
    tmp_path: Path, text: str, match: str
) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=match) as info:
        load_sweep(path)
    assert str(path) in str(info.value)


def test_set_flags_parse_toml_values_and_bare_words() -> None:
    got = parse_settings(
        ["epochs=5", "lr={min=1e-3, max=1.0, num=4}", "dataset=synthetic", "seeds=[0, 1]"]
    )
    assert got == {
        "epochs": 5,
        "lr": {"min": 1e-3, "max": 1.0, "num": 4},
        "dataset": "synthetic",
        "seeds": [0, 1],
    }
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        parse_settings(["epochs"])


def test_set_overrides_a_file_and_builds_a_sweep_without_one(tmp_path: Path) -> None:
    path = tiny_sweep(tmp_path, n=2)
    (s,) = sweep_from_cli(path, [], {"epochs": 3, "weight_decay": [1e-3]}).select([])
    assert s.config_for(s.points()[0]).epochs == 3
    assert {p.weight_decay for p in s.points()} == {1e-3}

    settings = {"dataset": "synthetic", "lr": [0.1, 1.0], "weight_decay": [1e-4, 1e-3]}
    (cli,) = sweep_from_cli(None, ["adam"], settings).select(["adam"])
    assert cli.study_name == "cli/adam" and len(cli.points()) == 4
    with pytest.raises(ConfigError, match="unknown key 'bogus'"):
        sweep_from_cli(path, [], {"bogus": 1})
    with pytest.raises(ConfigError, match="give a sweep file"):
        sweep_from_cli(None, [], settings)


def test_where_a_node_keeps_its_data_is_not_part_of_the_stored_sweep(tmp_path: Path) -> None:
    # Defect 6: two nodes with their data in different folders run one experiment.
    path = tiny_sweep(tmp_path, n=2)
    (here,) = sweep_from_cli(path, [], {"data_dir": "/node1/data", "device": "cpu"}).select([])
    (there,) = sweep_from_cli(path, [], {"data_dir": "/node2/data", "device": "auto"}).select([])
    assert set(LOCATION_FIELDS) == {"data_dir", "device", "graph"}
    assert here.to_json() == there.to_json()
    stored = json.loads(here.to_json())["train"]
    assert not set(stored) & set(LOCATION_FIELDS)
    assert stored["width"] == 4 and stored["dataset"] == "synthetic"  # the experiment is there
    # The configs the workers train still use the node's own folder and device.
    assert str(here.base_config().data_dir) == "/node1/data"
    assert there.base_config().device.value == "auto"


def _rows(sweep_data: dict[str, object]) -> dict[float, set[int]]:
    (sweep,) = parse_sweep(sweep_data).optimizers.values()
    rows: dict[float, set[int]] = {}
    for p in sweep.points():
        rows.setdefault(p.weight_decay, set()).add(p.seed)
    return rows


def test_independent_seeds_give_every_lambda_row_its_own_seeds() -> None:
    data = {
        "name": "ind", "lr": [0.1, 0.2], "weight_decay": [1e-3, 1e-2, 1e-1],
        "seeds": 2, "optimizers": {"sgd": {}},
    }  # fmt: skip
    shared = _rows(data)
    assert all(seeds == {0, 1} for seeds in shared.values())  # the default: shared seeds
    rows = _rows({**data, "independent_seeds": True})
    assert all(len(seeds) == 2 for seeds in rows.values())
    assert len(set().union(*rows.values())) == 6  # no seed in two rows
    # A λ row added later keeps the seeds the others had (their trials stay valid).
    more = _rows({**data, "independent_seeds": True, "weight_decay": [1e-4, 1e-3, 1e-2, 1e-1]})
    assert all(more[wd] == rows[wd] for wd in rows)
    (sweep,) = parse_sweep({**data, "independent_seeds": True}).optimizers.values()
    low, high = sweep.seed_range()
    assert low == min(map(min, rows.values())) and high == max(map(max, rows.values()))
    assert sweep.to_dict()["independent_seeds"] is True
    (plain,) = parse_sweep(data).optimizers.values()
    assert "independent_seeds" not in plain.to_dict()  # studies stored before it stay equal


def test_independent_seeds_must_be_a_boolean() -> None:
    data = {"name": "x", "lr": [0.1], "weight_decay": [0.01], "optimizers": {"sgd": {}}}
    with pytest.raises(ConfigError, match="independent_seeds must be true or false"):
        parse_sweep({**data, "independent_seeds": "yes"})
