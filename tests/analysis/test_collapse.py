"""l2bn.analysis.estimating.collapse: the primary k on planted surfaces, its interval over
clusters, the lack-of-collapse test and its rule, honesty at the bounds."""

from __future__ import annotations

import math

import numpy as np
import pytest

from l2bn.analysis.calibration import SCENARIOS, VALLEYS, Scenario, plant
from l2bn.analysis.estimating.collapse import (
    COLLAPSES,
    NOT_COLLAPSED,
    PARTIAL,
    UNTESTED,
    collapse_fit,
    template_curve,
)
from l2bn.analysis.estimating.panel import Panel, noise_sd

CLEAN, _, NESTEROV, ADAM, SHARED = SCENARIOS[:5]


def _exact(
    k: float, shape: str = "nesterov", offset: float = 0.0, noise: float = 1e-4, seed: int = 1
) -> Panel:
    """Three seeds of a surface F(ln η + k ln λ) with a small independent noise, grids not
    aligned in x."""
    valley = VALLEYS[shape].shape
    wds = np.geomspace(1e-3, 1e-1, 4)
    v = np.log(wds) - np.log(wds).mean()
    grid = -8.0 + 0.69 * (np.arange(9) - 5.0)
    log_lr = grid[None, :] - k * v[:, None] + offset * np.arange(4)[:, None]
    x = log_lr + k * v[:, None]
    rng = np.random.default_rng(seed)
    values = valley(x + 8.0)[:, :, None] + noise * rng.standard_normal((4, 9, 3))
    return Panel(wds, log_lr, values, False)


@pytest.mark.parametrize("k", [1.0, 0.5, 0.0])
@pytest.mark.parametrize("shape", ["nesterov", "adam"])
def test_a_noise_free_surface_gives_its_k(k: float, shape: str) -> None:
    panel = _exact(k, shape, offset=0.23, noise=0.002)
    r = collapse_fit(panel, noise_sd(panel)[0])
    assert r is not None
    assert r.interval.value == pytest.approx(k, abs=0.01)
    assert r.interval.ci_low <= k <= r.interval.ci_high
    assert r.status == COLLAPSES and r.rows.all()
    # The fitted curve goes through the cells, within their noise.
    x = panel.log_lr + r.interval.value * (panel.log_wd - panel.log_wd.mean())[:, None]
    means = panel.values.mean(axis=-1).ravel()
    assert template_curve(r, x.ravel()) == pytest.approx(means, abs=0.004)


def test_the_interval_resamples_clusters_not_cells() -> None:
    rng = np.random.default_rng(4)
    independent = plant(NESTEROV, 1.0, rng)
    r = collapse_fit(independent, noise_sd(independent)[0])
    assert r is not None and r.interval.method == "collapse/(λ, seed)-jackknife-t"
    assert r.interval.dof <= 4 * (3 - 1)  # Satterthwaite over 4 λ strata of 3 seeds
    shared = plant(SHARED, 1.0, rng)
    r = collapse_fit(shared, noise_sd(shared)[0])
    assert r is not None and r.interval.method == "collapse/seed-jackknife-t"
    assert r.interval.dof == pytest.approx(2.0)  # 3 seeds


def test_a_wider_seed_effect_widens_the_interval() -> None:
    # What the seeds share (w₀, batch order) is the noise that counts: planted bigger, the
    # interval grows; an interval over independent cells would not see it.
    rng = np.random.default_rng(9)
    widths = {}
    for shift in (0.05, 0.4):
        valley = VALLEYS["nesterov"]
        scenario = Scenario("s", type(valley)(valley.shape, 0.003, shift, valley.level_sd))
        w = []
        for _ in range(6):
            p = plant(scenario, 1.0, rng)
            r = collapse_fit(p, noise_sd(p)[0], test=False)
            assert r is not None
            w.append(r.interval.ci_high - r.interval.ci_low)
        widths[shift] = float(np.median(w))
    assert widths[0.4] > 2 * widths[0.05]


def test_a_deformed_row_is_named_and_left_out() -> None:
    scenario = Scenario("deformed", VALLEYS["adam"], deform=0.08)
    p = plant(scenario, 0.5, np.random.default_rng(2))
    r = collapse_fit(p, noise_sd(p)[0])
    assert r is not None and r.status == PARTIAL and r.left_out == (0,)
    assert not r.rows[0] and r.rows[1:].all()
    failed = next(t for t in r.tests if t.row == 0)
    assert failed.p_value < 0.05 and failed.worst_z > 3 and failed.worst_col == 0
    assert r.interval.value == pytest.approx(0.5, abs=0.12)


def test_too_many_failing_rows_do_not_collapse() -> None:
    # Rows shifted to and fro: no k puts them on one curve, and at most one of four may go.
    rng = np.random.default_rng(0)
    p = plant(ADAM, 0.5, rng)
    wild = p.values.copy()
    for i, shift in enumerate((0.0, 1.2, 0.0, 1.2)):
        x = p.log_lr[i] + 0.5 * (p.log_wd[i] - p.log_wd.mean()) + 8.0 - shift
        wild[i] = VALLEYS["adam"].shape(x)[:, None] + 0.002 * rng.standard_normal((7, 3))
    r = collapse_fit(Panel(p.weight_decay, p.log_lr, wild, True), 0.002)
    assert r is not None and r.status == NOT_COLLAPSED


def test_a_minimum_on_the_bound_is_no_estimate() -> None:
    panel = _exact(1.0, offset=0.23, noise=0.002)
    r = collapse_fit(panel, 0.002, k_bounds=(-1.0, 0.6))  # the truth, 1, lies beyond
    assert r is not None and math.isnan(r.interval.value)
    assert r.reason is not None and "bound" in r.reason


def test_one_seed_has_no_interval_and_no_row_tests() -> None:
    p = plant(Scenario("one", VALLEYS["adam"], seeds=1, independent=False), 0.5,
              np.random.default_rng(1))  # fmt: skip
    r = collapse_fit(p, noise_sd(p)[0])
    assert r is not None and math.isfinite(r.interval.value)
    assert math.isnan(r.interval.ci_low) and r.interval.method == "collapse/none"
    assert r.status == UNTESTED and r.reason is not None and "1 seed" in r.reason


def test_fewer_than_two_rows_is_none() -> None:
    p = _exact(1.0)
    one = Panel(p.weight_decay[:1], p.log_lr[:1], p.values[:1], False)
    assert collapse_fit(one, 1e-4) is None
