"""Sweep keys that tie a run's settings to λ, and the sweep's objective: ``schedule``,
``decay_fraction`` and ``init_scale`` as train keys, ``init_scale_exponent`` (e) and
``reference_weight_decay`` (λ_ref) beside ``lr_scale_exponent`` (k), the exactness of
power-of-two ties, and ``objective``."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from l2bn.errors import ConfigError
from l2bn.sweep.spec import (
    STORED_DEFAULTS,
    OptimizerSweep,
    canonical,
    load_sweep,
    parse_settings,
    parse_sweep,
    sweep_from_cli,
)
from l2bn.train.config import Objective, Schedule, check_batchable

from .helpers import REPO, tiny_sweep


def one(data: dict[str, Any]) -> OptimizerSweep:
    (sweep,) = parse_sweep({"name": "t", "optimizers": {"sgd": {}}, **data}).select(None)
    return sweep


def rows(sweep: OptimizerSweep) -> dict[float, list[float]]:
    """λ → its η values, ascending."""
    out: dict[float, list[float]] = {}
    for p in sweep.points():
        out.setdefault(p.weight_decay, []).append(p.lr)
    return {wd: sorted(set(lrs)) for wd, lrs in out.items()}


def legacy_points(sweep: OptimizerSweep) -> set[tuple[float, float, int]]:
    """The grid as l2bn computed it before λ_ref and exact ties existed: η = value·λ^-k,
    rounded to 10 significant digits."""
    k = sweep.lr_scale_exponent
    return {
        (canonical(base * wd ** (-k)), wd, seed)
        for wd in sweep.weight_decay.values
        for base in sweep.lr.values
        for seed in sweep.seeds_for(wd)
    }


# --- TrainConfig settings as sweep keys ------------------------------------------------------


def test_schedule_decay_fraction_and_init_scale_are_sweep_file_and_set_keys(tmp_path: Path) -> None:
    path = tiny_sweep(tmp_path, schedule='"wsd"', decay_fraction="0.25", init_scale="2.0")
    (s,) = load_sweep(path).select(None)
    config = s.config_for(s.points()[0])
    assert config.schedule is Schedule.wsd and config.decay_fraction == 0.25
    assert config.init_scale == 2.0
    stored = json.loads(s.to_json())["train"]
    assert stored["schedule"] == "wsd" and stored["decay_fraction"] == 0.25
    assert stored["init_scale"] == 2.0
    # --set, on top of the file (bare words are strings) and without a file.
    settings = parse_settings(["schedule=constant", "decay_fraction=0.5", "init_scale=0.5"])
    (s,) = sweep_from_cli(path, [], settings).select(None)
    config = s.config_for(s.points()[-1])
    assert (config.schedule, config.decay_fraction, config.init_scale) == (
        Schedule.constant, 0.5, 0.5,
    )  # fmt: skip
    grid = {"lr": [0.1], "weight_decay": [1e-3], "dataset": "synthetic", **settings}
    (cli,) = sweep_from_cli(None, ["adam"], grid).select(None)
    assert cli.base_config().schedule is Schedule.constant and cli.base_config().init_scale == 0.5


@pytest.mark.parametrize(
    ("key", "value", "match"),
    [
        ("schedule", '"cosine"', "schedule 'cosine' is not one of: step, wsd, constant"),
        ("decay_fraction", "0.0", "decay-fraction must be in"),
        ("init_scale", "-1.0", "init-scale must be a finite number > 0"),
        ("init_scale_exponent", '"half"', "init_scale_exponent must be a number"),
        ("reference_weight_decay", "0.0", "reference_weight_decay must be a number > 0"),
        ("reference_weight_decay", "nan", "reference_weight_decay must be a number > 0"),
        ("objective", '"val_acc"', "objective 'val_acc' is not one of: val_error, val_loss"),
    ],
)
def test_bad_values_of_the_new_keys_name_the_key_and_the_file(
    tmp_path: Path, key: str, value: str, match: str
) -> None:
    path = tiny_sweep(tmp_path, **{key: value})
    with pytest.raises(ConfigError, match=match) as info:
        load_sweep(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


# --- init_scale_exponent, reference_weight_decay ----------------------------------------------


def test_e_ties_the_initial_scale_to_lambda_as_k_ties_eta() -> None:
    # λ_ref = 1e-2: at λ = 4e-2 (ratio 4) k = 1 gives η = lr/4, e = ½ gives S = init_scale/2;
    # at λ = 1e-3 (ratio 0.1, not a power of two) both are rounded to 10 digits.
    s = one(
        {
            "lr": [0.2, 0.8], "weight_decay": [1e-3, 1e-2, 4e-2], "seeds": [0, 1],
            "lr_scale_exponent": 1, "init_scale_exponent": 0.5,
            "reference_weight_decay": 1e-2, "init_scale": 3.0,
        }
    )  # fmt: skip
    assert rows(s) == {4e-2: [0.05, 0.2], 1e-2: [0.2, 0.8], 1e-3: [2.0, 8.0]}
    by_wd = {p.weight_decay: s.config_for(p).init_scale for p in s.points()}
    assert by_wd[1e-2] == 3.0 and by_wd[4e-2] == 1.5
    assert by_wd[1e-3] == canonical(3.0 * 0.1**-0.5) == 9.486832981
    # The config a worker trains carries the point's S; points of different λ train fused.
    configs = [s.config_for(p) for p in s.points()]
    check_batchable(configs)
    assert {c.init_scale for c in configs} == {1.5, 3.0, 9.486832981}
    stored = json.loads(s.to_json())
    assert stored["init_scale_exponent"] == 0.5 and stored["reference_weight_decay"] == 1e-2
    assert stored["train"]["init_scale"] == 3.0  # the file's S, at λ_ref


def test_without_e_every_point_keeps_the_files_init_scale() -> None:
    s = one({"lr": [0.1], "weight_decay": [1e-4, 0.3], "init_scale": 0.7})
    assert {s.config_for(p).init_scale for p in s.points()} == {0.7}


def test_the_default_reference_keeps_every_shipped_grid_as_it_was() -> None:
    # λ_ref = 1 (the default) is today's η = lr·λ^-k, rounded: the stored points of existing
    # studies are the points the new code computes, in every shipped sweep but symmetry.toml.
    for path in sorted((REPO / "sweeps").glob("*.toml")):
        if path.stem == "symmetry":
            continue
        for s in load_sweep(path).select(None):
            assert s.reference_weight_decay == 1.0 and s.init_scale_exponent == 0.0
            points = {(p.lr, p.weight_decay, p.seed) for p in s.points()}
            assert points == legacy_points(s), (path.name, s.optimizer)
            # No tie: every point starts from the file's own S (headline.toml: 1/8).
            assert {s.config_for(p).init_scale for p in s.points()} == {s.base_config().init_scale}
    # Log-spaced grids, k = ½ and 1, λ not powers of two: the values are rounded as before.
    for k in (0.5, 1.0, 0.37):
        s = one(
            {
                "lr": {"min": 1e-4, "max": 1.0, "num": 9},
                "weight_decay": {"min": 3e-4, "max": 2.56, "num": 5},
                "lr_scale_exponent": k, "seeds": 2,
            }
        )  # fmt: skip
        points = {(p.lr, p.weight_decay, p.seed) for p in s.points()}
        assert points == legacy_points(s)
        assert all(p.lr == canonical(p.lr) for p in s.points())


def test_power_of_two_ties_are_exact_and_others_rounded() -> None:
    # Rows a factor 4 apart below λ_ref = 5e-4: k = 1 gives η = lr·4^n and e = ½ gives
    # S = 2^n·init_scale, exactly (==); rounding to 10 digits would break both.
    lrs = [0.003162277661, 0.0125, 0.1]  # the first has 10 digits: ×4 needs 11
    s = one(
        {
            "lr": lrs, "weight_decay": [5e-4, 1.25e-4, 3.125e-5],
            "lr_scale_exponent": 1.0, "init_scale_exponent": 0.5,
            "reference_weight_decay": 5e-4, "init_scale": 0.3,
        }
    )  # fmt: skip
    got = rows(s)
    for n, wd in enumerate([5e-4, 1.25e-4, 3.125e-5]):
        assert got[wd] == [lr * 4**n for lr in lrs]
        (scale,) = {s.config_for(p).init_scale for p in s.points() if p.weight_decay == wd}
        assert scale == 0.3 * 2**n
    # ... which rounding would not have given: these have 11 significant digits.
    assert got[1.25e-4][0] == 0.012649110644 != canonical(0.012649110644)
    assert got[3.125e-5][0] == 0.050596442576 != canonical(0.050596442576)
    # A factor that is not a power of two (ratio 2, e = ½: √2) is rounded as before.
    half = one(
        {
            "lr": [0.1], "weight_decay": [5e-4, 2.5e-4], "lr_scale_exponent": 0.5,
            "reference_weight_decay": 5e-4,
        }
    )  # fmt: skip
    assert rows(half)[2.5e-4] == [canonical(0.1 * 0.5**-0.5)] == [0.1414213562]


def test_the_exactness_rule_reads_the_ratio_not_a_rounded_power() -> None:
    from l2bn.sweep.spec import power_of_two, tied

    assert power_of_two(0.25, 1.0) == 2 and power_of_two(0.25, 0.5) == 1
    assert power_of_two(4.0, 1.5) == -3 and power_of_two(1.0, 0.37) == 0
    assert power_of_two(2.0, 0.5) is None  # √2
    assert power_of_two(0.1, 1.0) is None and power_of_two(1.0000000000000002, 1.0) is None
    assert tied(0.3, 0.25, 1.0) == 0.3 * 4 and tied(0.3, 0.25, 0.0) == 0.3
    assert tied(0.3, 3.0, 1.0) == canonical(0.1)
    assert math.isinf(tied(1.0, 2.0**-1000, 2.0))  # out of range: left to TrainConfig


def test_a_tie_that_leaves_the_valid_range_names_the_setting(tmp_path: Path) -> None:
    path = tiny_sweep(
        tmp_path,
        init_scale_exponent="400.0",
        weight_decay="[1e-300, 1e-2]",
    )
    with pytest.raises(ConfigError, match="init-scale must be a finite number > 0"):
        load_sweep(path)


# --- objective ---------------------------------------------------------------------------------


def test_objective_is_a_shared_setting_stored_in_the_config(tmp_path: Path) -> None:
    path = tiny_sweep(tmp_path, objective='"val_loss"')
    text = path.read_text() + '\n[optimizers.adam]\nobjective = "val_error"\n'
    path.write_text(text)
    sgd, adam = load_sweep(path).select(["sgd", "adam"])
    assert sgd.objective is Objective.val_loss and adam.objective is Objective.val_error
    assert json.loads(sgd.to_json())["objective"] == "val_loss"
    assert json.loads(adam.to_json())["objective"] == "val_error"
    (s,) = sweep_from_cli(path, ["sgd"], {"objective": "val_error"}).select(["sgd"])
    assert s.objective is Objective.val_error
    (default,) = load_sweep(tiny_sweep(tmp_path)).select(None)
    assert default.objective is Objective.val_error
    stored = json.loads(default.to_json())
    assert {k: stored[k] for k in STORED_DEFAULTS} == STORED_DEFAULTS
