"""The template T of the whole-surface collapse: a penalized cubic B-spline, fitted in batches.

error(η, λ) = T(x), x = log η + k·log λ (:mod:`l2bn.analysis.estimating.collapse`) is fitted
for every k of a scan and every replicate of the data at once. T is a cubic B-spline on knots
a fixed distance ``h`` apart (one η step of the grid), with Eilers and Marx's second-difference
penalty (a P-spline). The knots sit on one lattice for every k, so that the template's
flexibility means the same whatever k spreads the cells over: with knots that stretched with
the cells' range, RSS(k) would reward the k whose range gave the most knots per cell.

Each fit is a banded least-squares problem: a cell touches 4 basis functions and the penalty
couples neighbours 2 apart, so the normal equations have bandwidth 3. They are solved by a
banded Cholesky factorization vectorized over every (replicate, k) pair, a few NumPy calls per
basis function, rather than one dense solve per pair: 10–50× faster for the 30–40 basis
functions a scan over k ∈ [−1, 2.5] needs. Only NumPy.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

BAND = 3  # a cubic B-spline's support spans 4 knots: the normal equations' bandwidth


@dataclass(frozen=True)
class Lattice:
    """Knots ``origin + i·h``: basis function j is nonzero on [origin + (j−3)h, origin + (j+1)h]
    and the lattice covers [origin, origin + (size − 3)·h]."""

    origin: float
    h: float
    size: int  # number of basis functions

    @classmethod
    def covering(cls, lo: float, hi: float, h: float) -> Lattice:
        """The lattice with spacing ``h`` whose span holds [lo, hi] (a margin of 1e-9·h)."""
        origin = lo - 1e-9 * h
        segments = int(np.ceil((hi - origin) / h + 1e-9))
        return cls(origin, h, max(segments, 1) + 3)

    def basis(self, x: FloatArray) -> tuple[IntArray, FloatArray]:
        """For each x: the first of its 4 nonzero basis functions, and their 4 values."""
        t = (x - self.origin) / self.h
        seg = np.clip(np.floor(t), 0, self.size - 4)
        f = t - seg
        f2 = f * f
        f3 = f2 * f
        values = (
            np.stack([(1 - f) ** 3, 3 * f3 - 6 * f2 + 4, -3 * f3 + 3 * f2 + 3 * f + 1, f3], axis=-1)
            / 6.0
        )
        return seg.astype(np.int64), values


@functools.lru_cache(maxsize=64)
def penalty_bands(size: int) -> FloatArray:
    """The second-difference penalty DᵀD (D: (size−2) × size) as lower bands (size, BAND+1):
    ``bands[j, d]`` = (DᵀD)[j, j − d]."""
    d = np.diff(np.eye(size), n=2, axis=0)
    full = d.T @ d
    bands = np.zeros((size, BAND + 1))
    for off in range(BAND + 1):
        bands[off:, off] = np.diagonal(full, -off)
    bands.flags.writeable = False  # cached: shared by every caller
    return bands


def normal_bands(
    first: IntArray, values: FloatArray, weights: FloatArray, y: FloatArray, size: int
) -> tuple[FloatArray, FloatArray]:
    """Lower bands of BᵀWB and BᵀWy for a batch of fits.

    ``first``, ``values``: :meth:`Lattice.basis` of the cells' x, shape (..., N) and (..., N, 4);
    ``weights``, ``y``: (..., N), broadcast against them. Returns (..., size, BAND+1) and
    (..., size).
    """
    w = np.broadcast_to(weights, first.shape)
    yy = np.broadcast_to(y, first.shape)
    batch = first.shape[:-1]
    n_batch = int(np.prod(batch)) if batch else 1
    base = (np.arange(n_batch) * size).reshape((*batch, 1)) if batch else np.zeros((1,), int)
    bands = np.zeros((n_batch * size, BAND + 1))
    rhs = np.zeros(n_batch * size)
    for i in range(4):
        row = (base + first + i).ravel()
        wv = (w * values[..., i]).ravel()
        rhs += np.bincount(row, wv * yy.ravel(), minlength=n_batch * size)
        for d in range(i + 1):  # column first + i − d, band d
            bands[:, d] += np.bincount(
                row, wv * values[..., i - d].ravel(), minlength=n_batch * size
            )
    return bands.reshape((*batch, size, BAND + 1)), rhs.reshape((*batch, size))


def dense(bands: FloatArray) -> FloatArray:
    """The full symmetric matrices (..., n, n) of lower ``bands`` (..., n, BAND+1)."""
    n = bands.shape[-2]
    full = np.zeros((*bands.shape[:-2], n, n))
    j = np.arange(n)
    for d in range(BAND + 1):
        full[..., j[d:], j[d:] - d] = bands[..., d:, d]
        full[..., j[d:] - d, j[d:]] = bands[..., d:, d]
    return full


def penalized_fit(
    first: IntArray,
    values: FloatArray,
    weights: FloatArray,
    y: FloatArray,
    penalty: FloatArray | float,
    size: int,
) -> FloatArray:
    """The coefficients (..., size) minimizing Σ w·(y − T)² + penalty·Σ(Δ²c)², batched.

    Only the coefficients whose basis functions touch a cell (a window of the lattice) are
    solved for: the others meet no data, and continuing the window's ends linearly makes every
    second difference that involves them 0, so the window's problem has the same minimum. At
    the ~25 cells of a row the window is a third of the lattice, and dense batched LAPACK on it
    beats a banded Cholesky swept in Python (``benchmarks/bench_analyze.py``).
    """
    batch = first.shape[:-1]
    n = first.shape[-1]
    w = np.broadcast_to(weights, first.shape).reshape(-1, n)
    first = first.reshape(-1, n)
    values = values.reshape(-1, n, 4)
    y = np.broadcast_to(y, (*batch, n)).reshape(-1, n)
    penalty = np.broadcast_to(np.asarray(penalty, dtype=np.float64), batch).reshape(-1)
    hi = np.where(w > 0, first, -1).max(axis=-1)
    lo = np.where(w > 0, first, size).min(axis=-1)
    need = np.clip(hi - lo + 4, 4, size)
    # Entries of like window widths are solved together (widths rounded up to 8 knots): the
    # scan over k mixes narrow windows (k near 0) with ones as wide as the lattice.
    widths = np.minimum(-(-need // 8) * 8, size)
    coef = np.full((first.shape[0], size), np.nan)  # NaN: an entry without a cell of weight
    for width in np.unique(widths[hi >= 0]):
        sel = (widths == width) & (hi >= 0)
        coef[sel] = _window_fit(first[sel], values[sel], w[sel], y[sel], penalty[sel],
                                lo[sel], int(width), size)  # fmt: skip
    return coef.reshape((*batch, size))


def _window_fit(
    first: IntArray,
    values: FloatArray,
    w: FloatArray,
    y: FloatArray,
    penalty: FloatArray,
    lo: IntArray,
    width: int,
    size: int,
) -> FloatArray:
    """:func:`penalized_fit` for (B, N) entries whose cells' basis functions all start within
    ``width`` − 3 knots of ``lo``."""
    lo = np.clip(np.minimum(lo, size - width), 0, None)  # (B,) window starts
    # Cells of weight 0 may lie outside the window: parked at its edge, they add nothing.
    local_first = np.clip(first - lo[..., None], 0, width - 4)
    bands, rhs = normal_bands(local_first, values, w, y, width)
    # A row with fewer than 2 cells leaves T's slope free: a trace of ridge (1e-14 of the
    # data's weight) keeps the solve defined there and moves nothing else.
    ridge = 1e-14 * bands[..., :, 0].mean(axis=-1) + 1e-300
    bands = bands + penalty[:, None, None] * penalty_bands(width)
    a = dense(bands) + ridge[..., None, None] * np.eye(width)
    local = np.linalg.solve(a, rhs[..., None])[..., 0]  # (..., width)
    # Back onto the lattice: the window, then its two ends continued linearly.
    idx = np.arange(size) - lo[..., None]  # position of each lattice coefficient in the window
    inner = np.clip(idx, 0, width - 1)
    coef = np.take_along_axis(local, inner, axis=-1)
    left = local[..., 1:2] - local[..., :1]
    right = local[..., -1:] - local[..., -2:-1]
    coef = (
        coef
        + np.where(idx < 0, idx * left, 0.0)
        + np.where(idx > width - 1, (idx - (width - 1)) * right, 0.0)
    )
    return np.asarray(coef)


def evaluate(first: IntArray, values: FloatArray, coef: FloatArray) -> FloatArray:
    """T(x) at cells of :meth:`Lattice.basis`, for coefficients ``coef`` (..., size)."""
    idx = first[..., None] + np.arange(4)
    picked = np.take_along_axis(coef[..., None, :], idx, axis=-1) if coef.ndim > 1 else coef[idx]
    return np.asarray(np.sum(picked * values, axis=-1), dtype=np.float64)


__all__ = ["BAND", "Lattice", "dense", "evaluate", "normal_bands", "penalized_fit", "penalty_bands"]
