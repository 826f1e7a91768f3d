"""l2bn.analysis.estimating.template: the batched windowed P-spline against dense linear algebra
on the whole lattice."""

from __future__ import annotations

import numpy as np
import pytest

from l2bn.analysis.estimating.template import (
    Lattice,
    evaluate,
    penalized_fit,
)


def _dense(first: np.ndarray, values: np.ndarray, size: int) -> np.ndarray:
    basis = np.zeros((first.size, size))
    for n, (f, v) in enumerate(zip(first, values, strict=True)):
        basis[n, f : f + 4] = v
    return basis


def test_the_basis_is_a_partition_of_unity_on_a_fixed_lattice() -> None:
    lat = Lattice.covering(-2.0, 3.0, 0.5)
    x = np.linspace(-2.0, 3.0, 101)
    first, values = lat.basis(x)
    assert np.allclose(values.sum(axis=-1), 1.0)
    assert (values >= 0).all() and first.min() >= 0 and first.max() + 4 <= lat.size
    # The same knots whatever range is asked: a wider range adds basis functions at the end.
    wide = Lattice.covering(-2.0, 5.0, 0.5)
    assert wide.origin == lat.origin and wide.size > lat.size
    assert np.allclose(wide.basis(x)[1], values)


@pytest.mark.parametrize("span", [(-3.0, 4.0), (-1.0, 0.5)], ids=["whole", "window"])
def test_the_windowed_solve_equals_the_dense_penalized_least_squares(
    span: tuple[float, float],
) -> None:
    # "window": the cells touch a fifth of the lattice; the coefficients they do not touch
    # must come out as the whole-lattice solution's (the window's ends continued linearly).
    rng = np.random.default_rng(0)
    x = rng.uniform(*span, size=(3, 5, 40))
    w = rng.uniform(0.5, 3, size=(3, 1, 40))
    w[1, 0, :30] = 0.0  # cells of weight 0 (a left-out row) do not widen the window
    y = rng.normal(size=(3, 1, 40))
    lat = Lattice.covering(-3.0, 4.0, 0.5)
    first, values = lat.basis(x)
    coef = penalized_fit(first, values, w, y, 0.7, lat.size)
    d2 = np.diff(np.eye(lat.size), n=2, axis=0)
    for b in range(3):
        for k in (0, 4):
            basis = _dense(first[b, k], values[b, k], lat.size)
            a = basis.T @ np.diag(w[b, 0]) @ basis + 0.7 * d2.T @ d2
            dense = np.linalg.solve(a, basis.T @ (w[b, 0] * y[b, 0]))
            assert coef[b, k] == pytest.approx(dense, abs=1e-10)
            assert evaluate(first[b, k], values[b, k], coef[b, k]) == pytest.approx(
                basis @ dense, abs=1e-10
            )


def test_a_straight_line_is_free_of_the_penalty() -> None:
    # The second-difference penalty's null space: a linear T is fitted exactly at any α.
    lat = Lattice.covering(0.0, 5.0, 0.5)
    x = np.linspace(0.0, 5.0, 30)
    first, values = lat.basis(x)
    coef = penalized_fit(first, values, np.ones(30), 0.3 + 0.1 * x, 1e3, lat.size)
    assert evaluate(first, values, coef) == pytest.approx(0.3 + 0.1 * x, abs=1e-9)
