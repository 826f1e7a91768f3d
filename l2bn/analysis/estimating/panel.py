"""A group's trials as a dense panel, and the replicate means every estimator is fitted to.

A group's trials become a :class:`Panel`: rows λ, each row's own η grid (padded with NaN), and
seed slots. Every estimator (:mod:`l2bn.analysis.estimating.floor`) takes *replicates* of the
panel's cell means at once (arrays with a leading axis B, :func:`replicate_means` of a weight
array), so that one call fits the full data (:func:`full_weights`), every jackknife
leave-one-out and every bootstrap resample
(:func:`l2bn.analysis.estimating.intervals.cluster_weights`).
:func:`noise_sd` is the sd of one trial, which sets the band's width
(:mod:`l2bn.analysis.estimating.band`) and the per-λ fits' noise.

This is the bottom of the k-estimation stack, which depends one way:
panel → band → floor (:func:`~l2bn.analysis.estimating.floor.estimate_k`, its entry
point). All of it is pure NumPy/SciPy, batched over replicates; the calibration simulation
(tests/analysis/test_calibration.py) runs planted panels through exactly these functions.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]
IntArray = npt.NDArray[np.int64]


# --- the panel ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Panel:
    """A group's trials on a dense grid.

    ``values[l, m, s]``: the metric of the trial at λ row l, η column m (row l's grid is
    ``log_lr[l]``, NaN-padded on the right), seed slot s; NaN where there is no trial. With
    shared seeds, slot s is the same seed value in every row; with independent rows, slot s
    of row l is that row's s-th seed (seeds of different rows are independent).
    """

    weight_decay: FloatArray  # (L,) λ > 0, increasing
    log_lr: FloatArray  # (L, M)
    values: FloatArray  # (L, M, S)
    independent_rows: bool

    @property
    def log_wd(self) -> FloatArray:
        return np.log(self.weight_decay)

    @property
    def shape(self) -> tuple[int, int, int]:
        n_l, n_m, n_s = self.values.shape
        return int(n_l), int(n_m), int(n_s)

    @property
    def present(self) -> BoolArray:
        return np.isfinite(self.values)

    @property
    def n_seeds(self) -> int:
        """Seeds per cell, the median over cells with any trial."""
        counts = self.present.sum(axis=-1)
        return int(np.median(counts[counts > 0])) if (counts > 0).any() else 0


def build_panel(
    weight_decay: Sequence[float] | FloatArray,
    lr: Sequence[float] | FloatArray,
    seed: Sequence[int] | IntArray,
    value: Sequence[float] | FloatArray,
) -> Panel:
    """A :class:`Panel` from one record per trial (λ > 0 only; the caller filters).

    Several trials of one (λ, η, seed) are averaged. The rows are independent when no seed
    value occurs in two λ rows.
    """
    wd = np.asarray(weight_decay, dtype=np.float64)
    lr_a = np.asarray(lr, dtype=np.float64)
    sd = np.asarray(seed, dtype=np.int64)
    val = np.asarray(value, dtype=np.float64)
    wds, row_of = np.unique(wd, return_inverse=True)
    rows = [np.unique(lr_a[row_of == i]) for i in range(wds.size)]
    seeds_per_row = [set(sd[row_of == i].tolist()) for i in range(wds.size)]
    shared = any(
        seeds_per_row[i] & seeds_per_row[j] for i in range(len(wds)) for j in range(i + 1, len(wds))
    )
    independent = len(wds) > 1 and not shared
    col = np.empty(val.size, dtype=np.int64)  # each trial's η column within its row
    slot = np.empty(val.size, dtype=np.int64)  # and its seed slot
    for i, r in enumerate(rows):
        sel = row_of == i
        col[sel] = np.searchsorted(r, lr_a[sel])
        if independent:  # each row's seeds in their own slots, in order
            slot[sel] = np.unique(sd[sel], return_inverse=True)[1]
    if independent:
        n_s = max(len(r) for r in seeds_per_row)
    else:
        all_seeds, slot = np.unique(sd, return_inverse=True)
        n_s = all_seeds.size
    n_m = max(r.size for r in rows)
    log_lr = np.full((wds.size, n_m), np.nan)
    for i, r in enumerate(rows):
        log_lr[i, : r.size] = np.log(r)
    total = np.zeros((wds.size, n_m, n_s))
    count = np.zeros((wds.size, n_m, n_s))
    np.add.at(total, (row_of, col, slot), val)
    np.add.at(count, (row_of, col, slot), 1.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        values = np.where(count > 0, total / count, np.nan)
    return Panel(wds, log_lr, values, independent)


def centres(panel: Panel) -> tuple[float, float]:
    """The mean log η over the grid and the mean log λ over the rows: the fits centre on them."""
    finite = np.isfinite(panel.log_lr)
    return float(panel.log_lr[finite].mean()), float(panel.log_wd.mean())


# --- replicates ---------------------------------------------------------------------------


def replicate_means(panel: Panel, weights: FloatArray) -> tuple[FloatArray, FloatArray]:
    """Cell means and seed counts of each replicate: ``weights`` (B, L, M or 1, S) → (B, L, M).

    A weight is how often a seed enters the replicate (0: left out; bootstrap: its count).
    """
    present = panel.present
    v0 = np.where(present, panel.values, 0.0)
    w = weights * present[None]
    n = w.sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        means = np.where(n > 0, (w * v0[None]).sum(axis=-1) / n, np.nan)
    return means, n


def full_weights(panel: Panel) -> FloatArray:
    _, _, n_s = panel.shape
    return np.ones((1, 1, 1, n_s))


# --- noise --------------------------------------------------------------------------------


def noise_sd(panel: Panel) -> tuple[float, str]:
    """The sd of one trial's metric, and where it came from.

    With seeds: the pooled within-cell sd (cells with ≥ 2 seeds). With one seed: from the
    second differences along each λ's η grid (robust: median absolute), which the curve's own
    curvature inflates, so the band is, if anything, too wide.
    """
    v = panel.values
    present = panel.present
    n = present.sum(axis=-1)
    multi = n >= 2
    if multi.any():
        with np.errstate(invalid="ignore"):
            var = np.nanvar(np.where(present, v, np.nan)[multi], axis=-1, ddof=1)
        dof = (n[multi] - 1).sum()
        pooled = float(np.sum(var * (n[multi] - 1)) / dof)
        return math.sqrt(pooled), "seeds"
    y = np.nanmean(np.where(present, v, np.nan), axis=-1) if present.any() else v[..., 0]
    d2 = y[:, :-2] - 2 * y[:, 1:-1] + y[:, 2:]
    d2 = d2[np.isfinite(d2)]
    if d2.size == 0:
        return math.nan, "none"
    return float(np.median(np.abs(d2)) / 0.6745 / math.sqrt(6.0)), "second differences"


__all__ = [
    "BoolArray",
    "FloatArray",
    "IntArray",
    "Panel",
    "build_panel",
    "centres",
    "full_weights",
    "noise_sd",
    "replicate_means",
]
