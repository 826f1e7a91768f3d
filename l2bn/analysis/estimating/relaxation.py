"""The measured relaxation of a norm history: how many time constants it has relaxed through.

:func:`relaxation_index` reads it off the trajectory itself (no clock), a diagnostic beside the
equilibrium verdicts (:mod:`l2bn.analysis.estimating.equilibrium`); no fit uses it.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]

# The measured counterpart of c·η·λ·T (see relaxation_index): how many time constants a norm
# history has relaxed through by the end of phase 1, read off the trajectory itself. It needs
# no clock, so it also speaks for Adam/RMSProp, whose clock depends on the gradient scale.
RELAXATION_CAP = 20.0  # beyond ~20 time constants the last quarter is pure noise


# --- measured relaxation ------------------------------------------------------------------


def _last_quarter_share(x: float, n: int) -> float:
    """Share of an exponential relaxation's movement over epochs 1..n that falls in the
    last quarter (epochs n − n//4 .. n), with x = r·n time constants over the phase."""
    q = n // 4
    if x <= 0:
        return q / (n - 1)  # a straight-line drift
    start, mid = 1 / n, (n - q) / n  # epoch 1 is the first record, not the phase's start
    # (e^(−x·mid) − e^(−x)) / (e^(−x·start) − e^(−x)), scaled by e^x
    return math.expm1(x * (1 - mid)) / math.expm1(x * (1 - start))


def relaxation_index(history: Sequence[float]) -> float:
    """Time constants r·T a phase-1 norm history (one value per epoch) has relaxed through.

    Model: ‖w‖ approaches its equilibrium exponentially, n(t) = n∞ + (n0 − n∞)·e^(−r·t).
    Then the share of the recorded movement that falls in the last quarter of the phase,
    |n(T) − n(3T/4)| / |n(T) − n(1 epoch)|, is a known decreasing function of r·T (about
    0.25 for a straight drift, 0.017 at r·T = 5), and is inverted here. The denominator is
    the history's range, so an overshoot (a norm that first grows on the gradient, then
    decays) counts its whole excursion. A norm that fluctuates or cycles around its
    equilibrium keeps moving in the last quarter and reads as less relaxed than it is, once
    the fluctuations are a few % of the excursion (at large η·λ, where the excursion is
    short): there the index says "not settled" for a settled norm. NaN for fewer than 4
    epochs or a history that never moved; capped at ``RELAXATION_CAP``.
    """
    return float(relaxation_indices(np.asarray(history, dtype=np.float64)[None, :])[0])


def relaxation_indices(histories: FloatArray) -> FloatArray:
    """:func:`relaxation_index` of each row of ``histories`` (T, n), at once (one call per
    cell, not per trial and layer: 10 000 scalar calls were a fifth of analyze's fitting)."""
    h = np.asarray(histories, dtype=np.float64)
    n = h.shape[-1]
    out = np.full(h.shape[0], np.nan)
    if n < 4 or h.shape[0] == 0:
        return out
    with np.errstate(invalid="ignore"):
        span = h.max(axis=-1) - h.min(axis=-1)
        ok = np.isfinite(h).all(axis=-1) & (span > 0)
        share = np.abs(h[:, -1] - h[:, -1 - n // 4]) / np.where(ok, span, 1.0)
    drift, capped = _last_quarter_share(0.0, n), _last_quarter_share(RELAXATION_CAP, n)
    out[ok & (share >= drift)] = 0.0
    out[ok & (share <= capped)] = RELAXATION_CAP
    inside = ok & (share < drift) & (share > capped)
    out[inside] = _invert_share(share[inside], n)
    return out


@functools.cache
def _share_table(n: int) -> tuple[FloatArray, FloatArray]:
    """(share, x) on a fine grid of x, share increasing: the inverse's first guess."""
    xs = np.linspace(RELAXATION_CAP, 0.0, 2001)
    return np.array([_last_quarter_share(float(x), n) for x in xs]), xs


def _invert_share(share: FloatArray, n: int) -> FloatArray:
    """The x with _last_quarter_share(x, n) = share, for each share: interpolated on a table,
    then polished by Newton steps on the closed form (a scalar root-finder per history was
    half of analyze's fitting time on 10 000 trials)."""
    shares, xs = _share_table(n)
    x = np.interp(share, shares, xs)
    a, b = (n // 4) / n, 1 - 1 / n  # _last_quarter_share = expm1(x·a) / expm1(x·b)
    for _ in range(4):
        live = x > 0
        ea, eb = np.expm1(x * a), np.expm1(np.where(live, x, 1.0) * b)
        f = ea / eb - share
        slope = (a * (ea + 1) * eb - b * (eb + 1) * ea) / eb**2
        step = np.where(
            live & (slope != 0) & (np.abs(f) >= 1e-15), f / np.where(slope != 0, slope, 1.0), 0.0
        )
        x = np.clip(x - step, 0.0, RELAXATION_CAP)
    return np.asarray(x, dtype=np.float64)


__all__ = ["RELAXATION_CAP", "relaxation_index", "relaxation_indices"]
