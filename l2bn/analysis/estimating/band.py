"""The band: which cells of each λ row enter the k fits, and which rows are left out.

Band: cells whose mean is within :data:`BAND_C` noise sds (of the difference of two cell
means) of the row's minimum, contiguous around it, and at least the minimum and its two
neighbours. Rows are left out when their minimum is on the grid's edge or their error range
is no larger than noise alone gives (:func:`noise_range`, flat: nothing to locate).

:func:`select_band` works on replicates of a panel's cell means
(:func:`l2bn.analysis.estimating.panel.replicate_means`); every estimator in
:mod:`l2bn.analysis.estimating.floor` fits the cells it selects.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from l2bn.analysis.estimating.panel import BoolArray, FloatArray, IntArray

# A cell is in the band when its mean is within BAND_C sds of the difference of two cell means
# above the row's minimum: ~95 % of the cells whose true error equals the minimum's get in.
BAND_C = 2.0
# A row whose error range is below what pure noise gives in 95 % of rows of its size (the
# range of M independent cell means, in cell-mean noise sds: 3.3 for 3 cells, 4.2 for 7,
# 4.6 for 11) has no minimum to locate: its argmin is noise.
FLAT_QUANTILE = 0.95


@functools.lru_cache(maxsize=64)
def noise_range(m: int, quantile: float = FLAT_QUANTILE) -> float:
    """The ``quantile`` of the range of ``m`` standard normal draws (fixed-seed Monte Carlo,
    ±0.01)."""
    if m < 2:
        return 0.0
    draws = np.random.default_rng(12345).standard_normal((100_000, m))
    return float(np.quantile(draws.max(axis=1) - draws.min(axis=1), quantile))


@dataclass(frozen=True)
class Band:
    """Which cells of each replicate enter the fits (B, L, M), and which rows (B, L)."""

    mask: BoolArray
    rows: BoolArray
    argmin: IntArray  # (B, L) column of each row's minimum
    edge: BoolArray  # (B, L) minimum on the row's first or last cell with data
    flat: BoolArray  # (B, L) range within what noise alone gives (FLAT_QUANTILE)


def select_band(
    means: FloatArray,
    n: FloatArray,
    sigma: float,
    c: float = BAND_C,
    rows: BoolArray | None = None,
) -> Band:
    """The band of each row of each replicate (see the module docstring).

    ``rows`` (L,): the rows to use, decided once on the full data; replicates then locate
    each row's band again but do not drop rows (a leave-one-seed-out replicate has noisier
    means, and would call rows flat that the full data resolves).
    """
    valid = np.isfinite(means) & (n > 0)
    y = np.where(valid, means, np.inf)
    j = np.argmin(y, axis=-1)
    b_n, n_l, n_m = means.shape
    idx = np.arange(n_m)
    any_valid = valid.any(axis=-1)
    first = np.where(any_valid, np.argmax(valid, axis=-1), 0)
    last = np.where(any_valid, n_m - 1 - np.argmax(valid[..., ::-1], axis=-1), 0)
    edge = (j == first) | (j == last)
    ymin = np.take_along_axis(y, j[..., None], axis=-1)
    nmin = np.take_along_axis(n, j[..., None], axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        sd_diff = sigma * np.sqrt(1.0 / np.where(valid, n, 1.0) + 1.0 / np.maximum(nmin, 1e-12))
        within = valid & (y - ymin <= c * sd_diff)
    # Contiguous run around the minimum.
    mask = idx[None, None, :] == j[..., None]
    left = np.ones((b_n, n_l), dtype=bool)
    right = np.ones((b_n, n_l), dtype=bool)
    for d in range(1, n_m):
        li = j - d
        ri = j + d
        lin = np.take_along_axis(within, np.clip(li, 0, n_m - 1)[..., None], axis=-1)[..., 0]
        rin = np.take_along_axis(within, np.clip(ri, 0, n_m - 1)[..., None], axis=-1)[..., 0]
        left &= (li >= 0) & lin
        right &= (ri < n_m) & rin
        mask |= (idx[None, None, :] == li[..., None]) & left[..., None]
        mask |= (idx[None, None, :] == ri[..., None]) & right[..., None]
    mask |= (np.abs(idx[None, None, :] - j[..., None]) <= 1) & valid
    mask &= valid
    with np.errstate(invalid="ignore"):
        rng_row = np.where(valid, means, -np.inf).max(axis=-1) - np.where(valid, means, np.inf).min(
            axis=-1
        )
        n_med = np.array(
            [[np.median(nn[vv]) if vv.any() else 1.0 for nn, vv in zip(nb, vb, strict=True)]
             for nb, vb in zip(n, valid, strict=True)]
        )  # fmt: skip
        m_valid = valid.sum(axis=-1)
        limit = np.vectorize(noise_range, otypes=[np.float64])(m_valid)
        flat = ~(rng_row >= limit * sigma / np.sqrt(n_med))
    enough = any_valid & (valid.sum(axis=-1) >= 3)
    use = enough & ~edge & ~flat if rows is None else enough & rows[None, :]
    return Band(mask & use[..., None], use, j.astype(np.int64), edge, flat)


__all__ = ["BAND_C", "FLAT_QUANTILE", "Band", "noise_range", "select_band"]
