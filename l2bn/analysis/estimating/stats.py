"""Small statistical building blocks shared by the fits: OLS with classical standard errors,
Student-t estimates, and the three-outcome verdict against the theory."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy import stats

from l2bn.analysis.fitted import DIFFERENT, EQUIVALENT, INCONCLUSIVE, UNDETERMINED, Estimate

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True)
class OLS:
    coef: FloatArray
    stderr: FloatArray
    dof: int
    r_squared: float
    rank: int


def ols(design: FloatArray, y: FloatArray) -> OLS:
    """Ordinary least squares with classical standard errors (what statsmodels would give)."""
    n, p = design.shape
    solution, _, rank, _ = np.linalg.lstsq(design, y, rcond=None)
    coef = np.asarray(solution, dtype=np.float64)
    resid = y - design @ coef
    dof = n - p
    ss_tot = float(np.sum((y - y.mean()) ** 2))
    r2 = 1.0 - float(resid @ resid) / ss_tot if ss_tot > 0 else math.nan
    if rank < p or dof <= 0:
        return OLS(coef, np.full(p, math.nan), dof, r2, int(rank))
    sigma2 = float(resid @ resid) / dof
    cov = sigma2 * np.linalg.inv(design.T @ design)
    return OLS(coef, np.sqrt(np.clip(np.diag(cov), 0.0, None)), dof, r2, int(rank))


def t_estimate(value: float, stderr: float, dof: int, n: int, confidence: float) -> Estimate:
    """``value`` ± the Student-t half-width for ``dof`` degrees of freedom."""
    if not (math.isfinite(value) and math.isfinite(stderr)) or dof <= 0:
        return Estimate(value, math.nan, math.nan, math.nan, n, "ols-t", confidence)
    half = float(stats.t.ppf(0.5 + confidence / 2, dof)) * stderr
    return Estimate(value, stderr, value - half, value + half, n, "ols-t", confidence)


def verdict(est: Estimate, theory: float | None, margin: float) -> str:
    """Three outcomes against theory ± ``margin`` (see results): "equivalent" (the CI lies
    inside), "different" (entirely outside), "inconclusive" (otherwise, or no finite CI);
    "undetermined" only without an estimate or a theory."""
    if theory is None or not math.isfinite(est.value):
        return UNDETERMINED
    if est.within(theory - margin, theory + margin):
        return EQUIVALENT
    if est.outside(theory - margin, theory + margin):
        return DIFFERENT
    return INCONCLUSIVE


__all__ = ["OLS", "ols", "t_estimate", "verdict"]
