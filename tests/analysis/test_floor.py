"""l2bn.analysis.estimating.{panel,band,floor,intervals}: the floor estimators (cross-checks of
the primary) and their intervals, on planted panels."""

from __future__ import annotations

import math

import numpy as np
import pytest

from l2bn.analysis.estimating.band import select_band
from l2bn.analysis.estimating.floor import JOINT, PER_LAMBDA, estimate_k, fit_replicates
from l2bn.analysis.estimating.intervals import cluster_weights
from l2bn.analysis.estimating.panel import (
    Panel,
    build_panel,
    full_weights,
    noise_sd,
    replicate_means,
)

from .simulation import ADJACENT, WDS, Planted, planted_panel


@pytest.mark.parametrize("k", [1.0, 0.5])
def test_every_estimator_recovers_the_planted_k(k: float) -> None:
    panel = planted_panel(Planted(k, noise=0.1, seeds=3, seed_sd=0.0), np.random.default_rng(0))
    r = estimate_k(panel)
    for name in (JOINT, PER_LAMBDA):
        iv = r.intervals[name]
        assert iv.value == pytest.approx(k, abs=0.05), name
        assert iv.ci_low <= k <= iv.ci_high, name
        assert iv.method == "seed-jackknife-t" and iv.dof == pytest.approx(2)
    assert r.sigma == pytest.approx(0.1 * ADJACENT, rel=0.3) and r.sigma_source == "seeds"
    # η* per λ with its own interval, around the planted optimum x0 − k·(log λ − mean).
    per = r.full.per_lambda
    v = np.log(WDS) - np.log(WDS).mean()
    assert np.all(np.abs(per.log_opt[0] - (-7.0 - k * v)) < 4 * per.log_opt_se[0] + 0.05)


def test_rows_with_independent_seeds_are_detected_and_resampled_by_lambda_and_seed() -> None:
    wd, lr, seed = [], [], []
    for i, w in enumerate((0.01, 0.1)):
        for s in range(2):
            for x in (1e-3, 1e-2, 1e-1):
                wd.append(w), lr.append(x), seed.append(i * 2 + s)
    panel = build_panel(wd, lr, seed, np.linspace(0.2, 0.5, len(wd)).tolist())
    assert panel.independent_rows and panel.shape == (2, 3, 2)
    weights, strata = cluster_weights(panel, "jackknife")
    assert weights.shape[0] == 4 and list(strata) == [0, 0, 1, 1]  # one (λ, seed) left out each
    shared = build_panel(wd, lr, [s % 2 for s in seed], np.zeros(len(wd)).tolist())
    assert not shared.independent_rows and shared.shape == (2, 3, 2)
    assert cluster_weights(shared, "jackknife")[0].shape[0] == 2  # one seed, all its cells


def test_cluster_bootstrap_is_wider_than_the_per_cell_bootstrap_on_seed_correlated_data() -> None:
    # Seeds that tilt k (shared w₀ and batch order): resampling seeds inside each cell breaks
    # the correlation across λ and averages the tilts away.
    rng = np.random.default_rng(3)
    wider = 0
    for _ in range(10):
        panel = planted_panel(Planted(1.0, 0.1, seeds=4, seed_sd=0.1, random_sd=False), rng)
        sigma, _ = noise_sd(panel)
        spread = {}
        for kind in ("bootstrap", "cell-bootstrap"):
            w, _ = cluster_weights(panel, kind, 400, np.random.default_rng(0))
            ks = fit_replicates(panel, w, sigma, which=(JOINT,)).joint.k
            spread[kind] = float(np.subtract(*np.nanquantile(ks, [0.975, 0.025])))
        wider += spread["bootstrap"] > spread["cell-bootstrap"]
    assert wider >= 8


def test_flat_rows_are_judged_against_the_noise_not_the_groups_range() -> None:
    log_lr = np.log(np.geomspace(1e-3, 1.0, 7))[None, :].repeat(2, axis=0)
    dip = 0.3 + 0.1 * (np.arange(7) - 3) ** 2 / 9
    flat = 0.9 + np.array([0.0, 0.001, -0.001, 0.0, 0.001, 0.0, -0.001])
    values = np.stack([dip, flat])[..., None] + np.array([0.0, 0.002])  # 2 seeds, sd ≈ 0.0014
    panel = Panel(np.array([0.01, 0.1]), log_lr, values, False)
    means, n = replicate_means(panel, full_weights(panel))
    band = select_band(means, n, sigma=0.01)
    assert list(band.flat[0]) == [False, True] and list(band.rows[0]) == [True, False]
    # The same shallow row is a real minimum when the noise is 100× smaller.
    assert not select_band(means, n, sigma=1e-4).flat[0, 1]


def test_band_holds_the_minimum_and_its_neighbours_and_grows_with_the_noise() -> None:
    log_lr = np.log(np.geomspace(1e-3, 1.0, 9))[None, :]
    y = 0.3 + 0.02 * (np.arange(9) - 4.0) ** 2
    panel = Panel(np.array([0.01]), log_lr, y[None, :, None], False)
    means, n = replicate_means(panel, full_weights(panel))
    narrow = select_band(means, n, sigma=1e-4).mask[0, 0]
    wide = select_band(means, n, sigma=0.05).mask[0, 0]
    assert list(np.flatnonzero(narrow)) == [3, 4, 5]
    assert narrow.sum() < wide.sum() and wide[narrow].all()


def test_one_seed_gives_the_delta_t_interval() -> None:
    panel = planted_panel(Planted(0.5, noise=0.3, seeds=1, seed_sd=0.0), np.random.default_rng(1))
    r = estimate_k(panel)
    iv = r.intervals[JOINT]
    assert iv.method == "delta-t" and iv.ci_low <= 0.5 <= iv.ci_high
    assert r.n_clusters == 1 and math.isnan(r.intervals[PER_LAMBDA].ci_low)
