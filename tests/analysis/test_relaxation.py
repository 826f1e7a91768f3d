"""l2bn.analysis.estimating.relaxation: planted time constants recovered, and the limits."""

from __future__ import annotations

import math

import numpy as np
import pytest

from l2bn.analysis.estimating.relaxation import relaxation_index

from .planting import relaxing


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
