"""The primary's calibration on planted studies that look like real ones
(:mod:`l2bn.analysis.calibration`): a fast subset here, the full table by
``scripts/calibrate.py`` (docs/calibration-table.md). The floor estimators' own calibration
(analyze v2's joint fit, now a cross-check) keeps its test below."""

from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import REPO

from l2bn.analysis.calibration import (
    SCENARIOS,
    SHAPES,
    VALLEYS,
    Scenario,
    Valley,
    measure_valley,
    oracle_k,
    plant,
    planted_shape,
    run,
)
from l2bn.analysis.estimating.floor import JOINT, estimate_k

from .simulation import Planted, planted_panel

CLEAN, CLEAN_OFF, NESTEROV, ADAM, SHARED, DENSE, DEFORMED, ADAM_DEFORMED, MILD = SCENARIOS[:9]
NESTEROV_5, ADAM_5, DEFORMED_5, ADAM_DEFORMED_5 = SCENARIOS[9:]


def test_the_planted_shapes_are_the_ones_measured_on_the_committed_headline() -> None:
    for opt, k in (("nesterov", 1.0), ("adam", 0.5)):
        path = REPO / "docs" / "reproduction" / "headline" / opt / "trials.csv"
        if not path.is_file():
            pytest.skip(f"{path} is not committed")
        got, planted = measure_valley(path, k), SHAPES[opt]
        assert got.floor == pytest.approx(planted.floor, abs=0.002)
        assert got.knee == pytest.approx(planted.knee, rel=0.02)
        assert got.slope_low == pytest.approx(planted.slope_low, rel=0.02)
        assert got.slope_high == pytest.approx(planted.slope_high, rel=0.02)
        # The shape is what the issue describes: a gentle low side, a wall 3-4x steeper.
        assert 2.5 < planted.slope_high / planted.slope_low < 5


def test_a_planted_study_has_the_design_and_the_noise_asked_for() -> None:
    rng = np.random.default_rng(0)
    p = plant(NESTEROV, 1.0, rng)
    assert p.shape == (4, 7, 3) and p.independent_rows
    assert np.allclose(np.diff(p.log_lr, axis=1), math.log(2))  # η spaced 2×
    # Rows in the theory's coordinates: log η + log λ is the same grid in every row.
    x = p.log_lr + (p.log_wd - p.log_wd.mean())[:, None]
    assert np.allclose(x, x[0])
    # The seeds' spread in a cell is the measured noise (cell noise, level and shift effects).
    sds = [np.std(plant(NESTEROV, 1.0, rng).values, axis=-1, ddof=1).mean() for _ in range(40)]
    assert 0.009 < float(np.mean(sds)) < 0.015
    shared = plant(SHARED, 0.5, rng)
    assert not shared.independent_rows
    deformed = plant(DEFORMED, 1.0, np.random.default_rng(1))
    clean = plant(NESTEROV, 1.0, np.random.default_rng(1))
    # Only the first row differs, on its low-η side: +0.04 at its lowest η, halving.
    assert np.allclose((deformed.values - clean.values)[1:], 0)
    assert np.allclose(np.mean(deformed.values - clean.values, axis=-1)[0, :3], [0.04, 0.02, 0.01])


@pytest.mark.parametrize("scenario", [CLEAN, CLEAN_OFF], ids=["k on the scan", "k off it"])
def test_the_clean_symmetric_valley_gives_k_within_0_02(scenario: Scenario) -> None:
    s = run(scenario, 3, seed=7)
    assert s.median_abs_error <= 0.02 and abs(s.bias) <= 0.02
    assert s.with_interval == 1.0 and s.disjoint == 1.0


@pytest.mark.slow
def test_realistic_valleys_in_the_headline_design_are_covered_and_told_apart() -> None:
    # 40 studies per k (the full table runs 100): loose bounds for the sampling error.
    for scenario, width in ((NESTEROV, 0.25), (ADAM, 0.16)):
        s = run(scenario, 40, seed=11)
        assert 0.86 <= s.coverage <= 1.0, s
        assert s.median_width <= width and s.disjoint >= 0.9, s
        assert abs(s.bias) < 0.03 and s.any_left_out <= 0.15, s


@pytest.mark.slow
def test_a_deformed_row_is_left_out_by_the_lack_of_collapse_rule() -> None:
    s = run(ADAM_DEFORMED, 20, seed=3)
    assert s.row0_left_out >= 0.6 and s.coverage >= 0.85, s


@pytest.mark.slow
def test_five_seeds_per_row_narrow_nesterovs_interval_and_name_its_deformed_row() -> None:
    # What the registered headline v2's design rests on: 3 seeds miss the width (0.22) and the
    # deformed row (named in 61 %) on nesterov's shallow valley; 5 seeds meet both in the table.
    s = run(NESTEROV_5, 40, seed=13)
    assert s.median_width <= 0.2 and s.coverage >= 0.86 and s.disjoint >= 0.95, s
    d = run(DEFORMED_5, 40, seed=17)
    assert d.row0_left_out >= 0.8 and d.coverage >= 0.85, d


def test_the_oracle_recovers_k_from_a_noiseless_valley_it_knows() -> None:
    quiet = Valley(SHAPES["nesterov"], noise=0.0, shift_sd=0.0, level_sd=0.0)
    for k in (1.0, 0.5):
        p = plant(Scenario("noiseless", quiet), k, np.random.default_rng(2))
        assert oracle_k(p, planted_shape(NESTEROV)) == pytest.approx(k, abs=1e-6)


@pytest.mark.slow
def test_the_design_floor_lies_below_the_primary_and_near_the_width_target_at_3_seeds() -> None:
    # The known-template oracle is the design's floor: the primary, which learns its template,
    # spreads more, but not much more (the full table: 0.0505 against 0.0427 at 3 seeds). At
    # 3 seeds even the oracle's 2 × 1.96 × sd is close to the 0.2 target; 5 seeds clear it.
    three, five = run(NESTEROV, 40, seed=19), run(NESTEROV_5, 40, seed=19)
    for s in (three, five):
        assert s.oracle_sd < s.sd < 1.4 * s.oracle_sd, s
    assert 2 * 1.96 * three.oracle_sd > 0.14 and 2 * 1.96 * five.oracle_sd < 0.16


def test_one_seed_gives_no_interval_rather_than_one_of_independent_cells() -> None:
    one = Scenario("one seed", VALLEYS["adam"], seeds=1, independent=False)
    s = run(one, 2, seed=5)
    assert s.with_interval == 0.0 and math.isfinite(s.median_abs_error)


# --- the floor estimators (cross-checks) -----------------------------------------------------


@pytest.mark.slow
def test_the_joint_floor_estimators_intervals_cover_the_planted_k() -> None:
    rng = np.random.default_rng(0)
    hits = []
    for noise in (0.3, 1.0, 2.0):
        for seeds in (2, 3, 4):
            for k in (1.0, 0.5):
                for _ in range(6):
                    iv = estimate_k(planted_panel(Planted(k, noise, seeds), rng),
                                    which=(JOINT,)).intervals[JOINT]  # fmt: skip
                    if math.isfinite(iv.ci_low):
                        hits.append(iv.ci_low <= k <= iv.ci_high)
    assert len(hits) >= 90 and 0.88 <= float(np.mean(hits)) <= 1.0
