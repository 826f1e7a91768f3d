"""l2bn.analysis.estimating.norms: the norm law in invariant coordinates and the column test."""

from __future__ import annotations

import math

import numpy as np
import pytest

from l2bn.analysis.estimating.norms import column_slopes, column_verdict, fit_norms
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
