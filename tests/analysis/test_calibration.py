"""The calibration of k's intervals, by simulation: do 95 % intervals cover the planted k?

Planted studies (tests/analysis/simulation.py) run straight through the estimators analyze
uses (:func:`l2bn.analysis.intervals.estimate_k`), no Optuna: planted k of 1 and ½; noise
from 0.1× to 3× the error step between adjacent grid points at the optimum; 2–4 seeds; every
seed its own shift of log η* and tilt of k (sd up to 0.1), shared by all its cells.
``python -m tests.analysis.test_calibration [N]`` prints the full table (N studies per row).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator

import numpy as np
import pytest

from l2bn.analysis.estimators import JOINT
from l2bn.analysis.intervals import estimate_k

from .simulation import Planted, planted_panel

NOISES = (0.1, 0.3, 1.0, 2.0, 3.0)
SEEDS = (2, 3, 4)
KS = (1.0, 0.5)


def simulate(
    per_cell: int, seeds: tuple[int, ...] = SEEDS, independent: bool = False, rng_seed: int = 0
) -> Iterator[tuple[Planted, float, float, float]]:
    """(planted, k̂, ci_low, ci_high) for ``per_cell`` studies per (noise, seeds, k)."""
    rng = np.random.default_rng(rng_seed)
    for noise in NOISES:
        for s in seeds:
            for k in KS:
                for _ in range(per_cell):
                    p = Planted(k, noise, s, independent)
                    iv = estimate_k(planted_panel(p, rng), which=(JOINT,)).intervals[JOINT]
                    yield p, iv.value, iv.ci_low, iv.ci_high


def table(
    rows: list[tuple[Planted, float, float, float]],
) -> list[tuple[float, int, dict[str, float]]]:
    out = []
    for noise in NOISES:
        for s in sorted({p.seeds for p, *_ in rows}):
            sel = [(p, v, lo, hi) for p, v, lo, hi in rows if p.noise == noise and p.seeds == s]
            ci = [(p.k, lo, hi) for p, _, lo, hi in sel if np.isfinite(lo)]
            errs = [abs(v - p.k) for p, v, *_ in sel if np.isfinite(v)]
            out.append((noise, s, {
                "n": len(sel),
                "coverage": float(np.mean([lo <= k <= hi for k, lo, hi in ci])) if ci else np.nan,
                "no_interval": 1 - len(ci) / len(sel),
                "no_estimate": 1 - len(errs) / len(sel),
                "median_abs_error": float(np.median(errs)) if errs else np.nan,
                "median_width": float(np.median([hi - lo for _, lo, hi in ci])) if ci else np.nan,
            }))  # fmt: skip
    return out


@pytest.mark.slow
def test_95_percent_intervals_cover_the_planted_k() -> None:
    rows = list(simulate(per_cell=20))  # 5 noises × 3 seed counts × 2 k × 20 = 600 studies
    assert len(rows) >= 200
    with_ci = [(p, lo, hi) for p, _, lo, hi in rows if np.isfinite(lo)]
    coverage = np.mean([lo <= p.k <= hi for p, lo, hi in with_ci])
    assert len(with_ci) >= 200
    assert 0.92 <= coverage <= 0.98
    stats = {(noise, s): st for noise, s, st in table(rows)}
    # Up to noise = the error step at the optimum, every study gets an interval; beyond, a λ
    # whose error range is within what noise alone gives is left out (flat), and with fewer
    # than 2 λ left there is no estimate at all, rather than a made-up one.
    for (noise, _), st in stats.items():
        if noise <= 1.0:
            assert st["no_interval"] <= 0.02
    # Informative where the noise allows: at 2 seeds and the lowest noise, k̂ is within a few
    # hundredths of the planted k.
    assert stats[(0.1, 2)]["median_abs_error"] < 0.05


def main(per_cell: int = 100) -> None:
    for independent in (False, True):
        rows = list(simulate(per_cell, seeds=(1, 2, 3, 4), independent=independent))
        kind = "independent λ rows" if independent else "shared seeds"
        print(f"\n{kind}: {per_cell * len(KS)} studies per row")
        print("| noise / step | seeds | coverage | no estimate | no interval "
              "| median abs(k̂ − k) | median CI width |")  # fmt: skip
        print("|---|---|---|---|---|---|---|")
        for noise, s, st in table(rows):
            print(f"| {noise:g}× | {s} | {st['coverage']:.3f} | {st['no_estimate']:.2f} | "
                  f"{st['no_interval']:.2f} | {st['median_abs_error']:.3f} | "
                  f"{st['median_width']:.2f} |")  # fmt: skip


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 100)
