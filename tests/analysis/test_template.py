"""l2bn.analysis.estimating.template: the batched banded P-spline against dense linear algebra."""

from __future__ import annotations

import numpy as np
import pytest

from l2bn.analysis.estimating.template import (
    Lattice,
    evaluate,
    normal_bands,
    penalty_bands,
    solve_bands,
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


def test_the_banded_solve_equals_the_dense_penalized_least_squares() -> None:
    rng = np.random.default_rng(0)
    x = rng.uniform(-3, 4, size=(3, 5, 40))
    w = rng.uniform(0.5, 3, size=(3, 1, 40))
    y = rng.normal(size=(3, 1, 40))
    lat = Lattice.covering(-3.0, 4.0, 0.5)
    first, values = lat.basis(x)
    bands, rhs = normal_bands(first, values, w, y, lat.size)
    coef = solve_bands(bands + 0.7 * penalty_bands(lat.size), rhs)
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
    bands, rhs = normal_bands(first, values, np.ones(30), 0.3 + 0.1 * x, lat.size)
    coef = solve_bands(bands + 1e3 * penalty_bands(lat.size), rhs)
    assert evaluate(first, values, coef) == pytest.approx(0.3 + 0.1 * x, abs=1e-9)
