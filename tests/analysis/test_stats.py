"""l2bn.analysis.estimating.stats: verdicts against the margin, OLS, and the import rule."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest

from l2bn.analysis.estimating.stats import ols, verdict
from l2bn.analysis.fitted import DIFFERENT, EQUIVALENT, INCONCLUSIVE, UNDETERMINED, Estimate


def test_estimating_imports_neither_optuna_nor_torch() -> None:
    code = (
        "import sys, l2bn.analysis.estimating.norms, l2bn.analysis.estimating.collapse; "
        "print(sorted({'optuna', 'torch'} & set(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


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
