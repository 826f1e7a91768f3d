"""l2bn.analysis.fits: the numbers alone, no storage."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest

from l2bn.analysis.fits import (
    column_slopes,
    column_verdict,
    fit_collapse,
    fit_norms,
    grid_minimum,
    ols,
    parabolic_argmin,
    relaxation_index,
    verdict,
)
from l2bn.analysis.fitted import (
    CONSTANT,
    DIFFERENT,
    EQUIVALENT,
    INCONCLUSIVE,
    UNDETERMINED,
    VARIES,
    Cell,
    Estimate,
)
from l2bn.analysis.settings import AnalyzeConfig

from .planting import error_surface, relaxing


def test_fits_import_neither_optuna_nor_torch() -> None:
    code = "import sys, l2bn.analysis.fits; print(sorted({'optuna', 'torch'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# --- verdicts -----------------------------------------------------------------------------


def test_verdicts_have_three_outcomes_against_the_margin() -> None:
    def est(lo: float, hi: float) -> Estimate:
        return Estimate((lo + hi) / 2, (hi - lo) / 4, lo, hi, 10, "t")

    assert verdict(est(0.95, 1.05), 1.0, margin=0.1) == EQUIVALENT  # inside theory ± δ
    assert verdict(est(0.5, 0.8), 1.0, margin=0.1) == DIFFERENT  # entirely outside
    assert verdict(est(1.15, 1.4), 1.0, margin=0.1) == DIFFERENT  # above, too
    # Imprecision is not agreement: a CI that reaches both sides of the band says nothing.
    assert verdict(est(0.01, 1.58), 1.0, margin=0.1) == INCONCLUSIVE
    assert verdict(est(0.85, 1.05), 1.0, margin=0.1) == INCONCLUSIVE  # straddles an edge
    # A very precise but physically irrelevant 0.249 vs ¼ is equivalent, not different.
    assert verdict(Estimate(0.249, 1e-4, 0.2488, 0.2492, 20, "t"), 0.25, 0.05) == EQUIVALENT
    # A value without a finite CI: inconclusive; no value or no theory: undetermined.
    assert verdict(Estimate(1.0, math.nan, math.nan, math.nan, 2, "t"), 1.0, 0.1) == INCONCLUSIVE
    assert verdict(Estimate.missing(), 1.0, 0.1) == UNDETERMINED
    assert verdict(est(0.95, 1.05), None, 0.1) == UNDETERMINED


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
    assert fit.k.value == pytest.approx(0.5, abs=0.01) and fit.verdict == EQUIVALENT
    assert fit_collapse(cells[:9], AnalyzeConfig(), theory=0.5) is None  # one λ only


# --- norms and columns --------------------------------------------------------------------


def _norm_cell(lr: float, wd: float, norm: float) -> Cell:
    return Cell(lr, wd, 1, 0.3, math.nan, math.nan, 0, 1e3, 1e3, {"conv1": norm}, {})


@pytest.mark.parametrize(("s", "k", "p", "q"), [(0.5, 1.0, 0.25, 0.0), (0.5, 0.5, 1 / 3, 0.1),
                                                  (1.0, 1.0, 0.5, -0.2)])  # fmt: skip
def test_norm_law_in_invariant_coordinates_recovers_planted_p_and_q(
    s: float, k: float, p: float, q: float
) -> None:
    rng = np.random.default_rng(0)
    cells = [
        _norm_cell(lr, wd, math.exp(0.3 + p * math.log(lr * wd**k) + q * math.log(wd)) / wd**s
                   * math.exp(0.002 * rng.standard_normal()))
        for wd in (1e-3, 1e-2, 1e-1)
        for lr in (1e-2, 1e-1, 1.0)
    ]  # fmt: skip
    fit = fit_norms(cells, "conv1", AnalyzeConfig(), theory=p, scale_power=s, k=k)
    assert fit.p.value == pytest.approx(p, abs=0.01) and fit.q.value == pytest.approx(q, abs=0.01)
    assert fit.verdict == EQUIVALENT
    assert fit.memory == (EQUIVALENT if q == 0 else DIFFERENT)
    # The old parametrization beside it: a = p, b = s − p·k − q.
    assert fit.a.value == pytest.approx(p, abs=0.01)
    assert fit.b.value == pytest.approx(s - p * k - q, abs=0.01)


def test_column_slopes_read_through_offset_grids_and_flag_a_tilt() -> None:
    log_wd = np.log([1e-3, 1e-2, 1e-1])
    # Grids offset per λ in x = log η + log λ: the columns interpolate (quadratically).
    grids = [np.linspace(-3, 3, 13) + 0.17 * i - wd for i, wd in enumerate(log_wd)]
    flat = [np.exp(-((g + wd) ** 2) / 4) for g, wd in zip(grids, log_wd, strict=True)]
    tilted = [f + 0.05 * wd for f, wd in zip(flat, log_wd, strict=True)]
    for values, expected in ((flat, 0.0), (tilted, 0.05)):
        out = column_slopes(grids, log_wd, values, k=1.0, confidence=0.95)
        assert len(out) >= 10
        for _, est, n in out:
            assert n == 3 and est.value == pytest.approx(expected, abs=2e-3)
    # Verdicts: inside the band, outside it, or neither.
    assert column_verdict(Estimate(0.0, 1e-3, -0.002, 0.002, 3, "t"), 0.01) == CONSTANT
    assert column_verdict(Estimate(0.05, 1e-3, 0.04, 0.06, 3, "t"), 0.01) == VARIES
    assert column_verdict(Estimate(0.0, 0.1, -0.2, 0.2, 3, "t"), 0.01) == INCONCLUSIVE
    assert column_verdict(Estimate.missing(), 0.01) == UNDETERMINED


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
