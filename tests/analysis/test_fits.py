"""l2bn.analysis.fits: the numbers alone, no storage."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest

from l2bn.analysis.fits import (
    LambdaGrid,
    fit_collapse,
    grid_minimum,
    ols,
    optimum,
    parabolic_argmin,
    relaxation_index,
    verdict,
)
from l2bn.analysis.results import CONSISTENT, INCONSISTENT, AnalyzeConfig, Cell, Estimate

from .planting import error_surface, relaxing


def test_fits_import_neither_optuna_nor_torch() -> None:
    code = "import sys, l2bn.analysis.fits; print(sorted({'optuna', 'torch'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# --- verdicts -----------------------------------------------------------------------------


def test_tolerance_is_a_practical_equivalence_margin() -> None:
    tight = Estimate(0.249, 0.0005, 0.248, 0.2499, 20, "ols-t")
    assert verdict(tight, 0.25, tolerance=0.0) == INCONSISTENT
    assert verdict(tight, 0.25, tolerance=0.05) == CONSISTENT
    far = Estimate(0.40, 0.01, 0.38, 0.42, 20, "ols-t")
    assert verdict(far, 0.25, tolerance=0.05) == INCONSISTENT


# --- η* -----------------------------------------------------------------------------------


def test_parabolic_argmin_finds_the_vertex_between_uneven_points() -> None:
    x = np.array([[0.0, 1.0, 3.0]])
    y = (x - 1.4) ** 2 + 2.0
    vertex, curvature = parabolic_argmin(x, y)
    assert vertex[0] == pytest.approx(1.4) and curvature[0] == pytest.approx(1.0)
    flat, _ = parabolic_argmin(x, np.zeros((1, 3)))
    assert flat[0] == 1.0  # no interior minimum: keep the grid point


def test_grid_minimum_refines_inside_and_flags_the_edges() -> None:
    log_lr = np.log(np.geomspace(1e-3, 1.0, 7))
    inside = (log_lr - log_lr[3] - 0.3) ** 2
    rising = log_lr - log_lr[0]  # lowest at the first η
    vertex, edge = grid_minimum(log_lr, np.stack([inside, rising]))
    assert vertex[0] == pytest.approx(log_lr[3] + 0.3) and edge[0] == 0.0
    assert vertex[1] == log_lr[0] and edge[1] == 1.0


def _grid(wd: float, lrs: list[float], values: list[float]) -> LambdaGrid:
    return LambdaGrid(wd, np.array(lrs), tuple(np.array([v]) for v in values))


def test_optimum_says_why_a_lambda_is_left_out() -> None:
    lrs = [1e-3, 1e-2, 1e-1, 1.0]
    found, warning = optimum(_grid(0.01, lrs, [0.5, 0.2, 0.4, 0.8]), group_range=0.6)
    assert found.used and warning is None and found.lr_grid == 1e-2
    edge, warning = optimum(_grid(0.01, lrs, [0.1, 0.2, 0.4, 0.8]), group_range=0.7)
    assert edge.edge and not edge.used
    assert warning == "λ=0.01: η* on the lower edge of the η grid (extend the grid)"
    flat, warning = optimum(_grid(0.1, lrs, [0.9, 0.89, 0.9, 0.9]), group_range=0.7)
    assert not flat.used and "no clear minimum" in (warning or "")
    few, warning = optimum(_grid(0.1, lrs[:2], [0.9, 0.5]), group_range=0.7)
    assert not few.used and warning == "λ=0.1: only 2 η value(s); η* needs ≥ 3"
    zero, warning = optimum(_grid(0.0, lrs, [0.5, 0.2, 0.4, 0.8]), group_range=0.6)
    assert not zero.used and warning is None and zero.note == "λ = 0 has no logarithm"


# --- regressions --------------------------------------------------------------------------


def test_ols_matches_numpy_and_gives_classical_standard_errors() -> None:
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, size=(30, 2))
    y = 0.5 + 2.0 * x[:, 0] - 1.0 * x[:, 1] + 0.1 * rng.standard_normal(30)
    design = np.column_stack([np.ones(30), x])
    fit = ols(design, y)
    coef, *_ = np.linalg.lstsq(design, y, rcond=None)
    assert fit.coef == pytest.approx(coef)
    resid = y - design @ coef
    cov = resid @ resid / 27 * np.linalg.inv(design.T @ design)
    assert fit.stderr == pytest.approx(np.sqrt(np.diag(cov)))
    assert fit.dof == 27 and fit.rank == 3 and 0.9 < fit.r_squared < 1
    # A rank-deficient design has no standard errors.
    assert np.isnan(ols(np.column_stack([design, x[:, 0]]), y).stderr).all()


def _cell(lr: float, wd: float, err: float) -> Cell:
    return Cell(lr, wd, 1, err, math.nan, math.nan, 0, math.nan, math.nan, {}, {})


def test_collapse_recovers_the_planted_k() -> None:
    cells = [
        _cell(lr, wd, error_surface(lr, wd, 0.5))
        for wd in (1e-4, 1e-3, 1e-2)
        for lr in np.geomspace(math.exp(-6) * wd**-0.5 / 30, math.exp(-6) * wd**-0.5 * 30, 9)
    ]
    fit = fit_collapse(cells, AnalyzeConfig(), theory=0.5)
    assert fit is not None and fit.k.method == "profile"
    assert fit.k.value == pytest.approx(0.5, abs=0.01) and fit.verdict == CONSISTENT
    assert fit_collapse(cells[:9], AnalyzeConfig(), theory=0.5) is None  # one λ only


# --- measured relaxation ------------------------------------------------------------------


@pytest.mark.parametrize("n", [5, 20, 50])
@pytest.mark.parametrize("x", [0.3, 2.0, 5.0, 12.0])
def test_relaxation_index_recovers_planted_time_constants(n: int, x: float) -> None:
    assert relaxation_index(relaxing(x, n)) == pytest.approx(x, rel=1e-6)
    # Growing or shrinking, at any scale and offset: only the shape counts.
    assert relaxation_index(relaxing(x, n, n0=0.5, n_inf=7.0)) == pytest.approx(x, rel=1e-6)


def test_relaxation_index_limits() -> None:
    assert relaxation_index(np.linspace(2.0, 2.5, 50)) == pytest.approx(0.0, abs=1e-6)  # drift
    assert relaxation_index(relaxing(60.0, 50)) == 20.0  # capped: the last quarter is flat
    for unusable in ([1.0, 1.0, 1.0, 1.0], [1.0, 2.0, 3.0], [1.0, math.nan, 2.0, 3.0]):
        assert math.isnan(relaxation_index(unusable))
    # A norm that first grows on the gradient and then decays: the range covers the excursion.
    overshoot = np.concatenate([[1.0, 2.0, 3.0], relaxing(12.0, 47, n0=3.0, n_inf=2.0)])
    assert relaxation_index(overshoot) > 5
    # A norm that cycles around its equilibrium (Lobacheva et al. 2021) keeps moving in the
    # last quarter: it reads as less relaxed, and as unsettled once the cycles are ~5 % of
    # the excursion.
    cycles = np.sin(2 * np.pi * np.arange(1, 51) / 20)
    readings = [relaxation_index(relaxing(12.0, 50) + a * cycles) for a in (0.01, 0.03, 0.1)]
    assert 12.0 > readings[0] > readings[1] > 5.0 > readings[2]
