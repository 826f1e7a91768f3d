"""Run 5's registered reading (REPRODUCTION.md): how η*·λ moves from one run to another.

    .venv/bin/python scripts/optima_shift.py docs/reproduction/cpu-long/trials.csv \
        docs/reproduction/cpu-200ep/trials.csv

For the λ values and the η grid points the two runs share (same optimizer, seeds present in
both), η* per λ is found exactly as `l2bn analyze` finds it (seed-averaged validation error,
grid minimum refined by the parabola in log η; edge minima flagged), then printed as η*·λ in
each run with the shift in decades, and k = −d log η*/d log λ over the shared λ in each run.
"""

from __future__ import annotations

import csv
import math
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import numpy.typing as npt
from scipy import stats

FloatArray = npt.NDArray[np.float64]


# η* per λ exactly as `l2bn analyze` v1 found it (run 5 was read with it; v3 reads k from the
# whole surface instead, l2bn.analysis.estimating.collapse).
def parabolic_argmin(x: FloatArray, y: FloatArray) -> tuple[FloatArray, FloatArray]:
    """Vertex of the parabola through each row's three points ``x[..., 0:3]``, ``y[..., 0:3]``.

    Returns (vertex, curvature). Where the parabola is not convex (flat or concave: ties,
    noise) the middle point is returned, since no interior minimum is defined.
    """
    x0, x1, x2 = x[..., 0], x[..., 1], x[..., 2]
    y0, y1, y2 = y[..., 0], y[..., 1], y[..., 2]
    denom = (x0 - x1) * (x0 - x2) * (x1 - x2)
    with np.errstate(divide="ignore", invalid="ignore"):
        a = (x2 * (y1 - y0) + x1 * (y0 - y2) + x0 * (y2 - y1)) / denom
        b = (x2**2 * (y0 - y1) + x1**2 * (y2 - y0) + x0**2 * (y1 - y2)) / denom
        vertex = -b / (2 * a)
    ok = np.isfinite(vertex) & (a > 0)
    vertex = np.where(ok, np.clip(vertex, np.minimum(x0, x2), np.maximum(x0, x2)), x1)
    return vertex, np.where(ok, a, 0.0)


def grid_minimum(log_lr: FloatArray, err: FloatArray) -> tuple[FloatArray, FloatArray]:
    """Refined log η* per row of ``err`` (rows: resamples; columns: the η grid).

    Returns (log η*, edge) with edge = 1.0 where the minimum is on the grid's edge.
    """
    n = log_lr.size
    i = np.argmin(err, axis=-1)
    edge = (i == 0) | (i == n - 1)
    j = np.clip(i, 1, n - 2)
    idx = np.stack([j - 1, j, j + 1], axis=-1)
    xs = log_lr[idx]
    ys = np.take_along_axis(err, idx, axis=-1)
    vertex, _ = parabolic_argmin(xs, ys)
    return np.where(edge, log_lr[i], vertex), edge.astype(np.float64)


def _key(x: float) -> float:
    # Matches one grid point across two runs' CSVs despite round-off in η = value·λ^-k.
    return float(f"{x:.6g}")


def load(path: str) -> dict[tuple[float, float, int], float]:
    """(λ, η, seed) → validation error."""
    with open(path, newline="") as f:
        return {
            (_key(float(r["weight_decay"])), _key(float(r["lr"])), int(r["seed"])): float(
                r["val_error"]
            )
            for r in csv.DictReader(f)
        }


def optima(
    runs: list[dict[tuple[float, float, int], float]],
) -> tuple[list[float], list[list[tuple[float, bool]]]]:
    shared = set.intersection(*(set(r) for r in runs))
    grid: dict[float, set[float]] = defaultdict(set)
    for wd, lr, _ in shared:
        grid[wd].add(lr)
    wds = sorted(wd for wd, lrs in grid.items() if len(lrs) >= 3)
    out: list[list[tuple[float, bool]]] = []
    for run in runs:
        row = []
        for wd in wds:
            lrs = sorted(grid[wd])
            seeds = sorted({s for w, lr, s in shared if w == wd})
            err = np.array([[np.mean([run[(wd, lr, s)] for s in seeds]) for lr in lrs]])
            log_opt, edge = grid_minimum(np.log(np.array(lrs)), err)
            row.append((math.exp(float(log_opt[0])), bool(edge[0])))
        out.append(row)
    return wds, out


def main(a: str, b: str) -> None:
    wds, (opt_a, opt_b) = optima([load(a), load(b)])
    print(f"{'λ':>8} {'η*·λ (A)':>10} {'η*·λ (B)':>10} {'shift, decades':>15}")
    for wd, (ea, edge_a), (eb, edge_b) in zip(wds, opt_a, opt_b, strict=True):
        flag = "  (edge)" if edge_a or edge_b else ""
        print(f"{wd:8g} {ea * wd:10.3g} {eb * wd:10.3g} {math.log10(eb / ea):15.2f}{flag}")
    for name, opt in (("A", opt_a), ("B", opt_b)):
        fit = stats.linregress(np.log(wds), np.log([e for e, _ in opt]))
        print(f"k over these λ, {name}: {-fit.slope:.2f} ± {fit.stderr:.2f} (OLS stderr)")


if __name__ == "__main__":
    if len(sys.argv) != 3 or not all(Path(p).is_file() for p in sys.argv[1:]):
        print(
            "usage: optima_shift.py RUN_A/trials.csv RUN_B/trials.csv (two existing files)",
            file=sys.stderr,
        )
        sys.exit(2)
    main(*sys.argv[1:3])
