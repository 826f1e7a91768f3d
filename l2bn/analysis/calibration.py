"""Calibration of the primary k by simulation: planted studies that look like real ones.

A planted study is a :class:`~l2bn.analysis.estimating.panel.Panel` whose error surface is
known, run through the same :func:`~l2bn.analysis.estimating.collapse.collapse_fit` that
``l2bn analyze`` runs. What makes one look like real data (measured on the first headline run's
CSVs, ``docs/reproduction/headline/*/trials.csv``, by :func:`measure_valley`):

* **the valley's shape**: error(x) = floor + s_hi·w·softplus((x − x*)/w) + s_lo·w·softplus(
  (x* − x)/w), a gentle low-η side (slope s_lo per unit ln η), a steep high-η wall (s_hi) and
  a rounded knee (w); :data:`SHAPES` holds nesterov's and adam's;
* **its noise**: independent cell noise, and per seed (per (λ, seed) with independent rows) a
  level shift and a shift of log η*, correlated (:class:`Valley`); the noise-only part of the
  per-seed shifts was taken out by simulating the same fits on planted data;
* **the design**: the headline's (4 λ over 2 decades, 7 η spaced 2× in the theory's
  coordinates, 3 seeds, independent rows), the same with 5 seeds, or a dense grid; the grids
  in η·λ^k coordinates, each study's at a random offset;
* **memory of w₀**: one λ row (the smallest) deformed on its low-η side, +``deform`` at its
  lowest η, halving with each step up (the headline's nesterov λ = 0.001 row: +0.04).

:func:`run` plants ``n`` studies per k ∈ {1, ½} of a :class:`Scenario` and tabulates coverage,
width, error, how often k = 1 and k = ½ are told apart, and the lack-of-collapse test's
naming. ``scripts/calibrate.py`` runs :data:`SCENARIOS` and writes docs/calibration-table.md;
tests/analysis/test_calibration.py runs a fast subset. NumPy and SciPy only.
"""

from __future__ import annotations

import csv
import math
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import optimize

from l2bn.analysis.estimating.collapse import NOT_COLLAPSED, collapse_fit
from l2bn.analysis.estimating.panel import FloatArray, Panel, noise_sd


def softplus(z: FloatArray) -> FloatArray:
    return np.logaddexp(0.0, z)


@dataclass(frozen=True)
class Shape:
    """An asymmetric valley in x = ln η + k ln λ, its minimum region at x = 0."""

    floor: float
    knee: float  # w: the width of the rounded corner (ln units)
    slope_low: float  # error per unit ln η on the low-η side
    slope_high: float  # on the high-η wall

    def __call__(self, z: FloatArray) -> FloatArray:
        w = self.knee
        return (
            self.floor
            + self.slope_high * w * softplus(z / w)
            + self.slope_low * w * softplus(-z / w)
        )


# Measured on docs/reproduction/headline/{nesterov,adam}/trials.csv by measure_valley (each
# optimizer's cells at its theory's k; `python scripts/calibrate.py --measure` prints them).
SHAPES = {
    "nesterov": Shape(floor=0.310, knee=0.49, slope_low=0.0131, slope_high=0.0392),
    "adam": Shape(floor=0.250, knee=1.18, slope_low=0.0254, slope_high=0.108),
}


@dataclass(frozen=True)
class Valley:
    """A valley and its noise: one trial = shape(x − x* − shift) + level + noise."""

    shape: Shape
    noise: float  # sd of one trial's independent noise
    shift_sd: float  # sd of a seed's shift of ln η*
    level_sd: float  # sd of a seed's level shift
    correlation: float = 0.5  # between a seed's level and shift


# The noise as measured (the per-(λ, seed) fits' spread less what noise alone gives them):
# nesterov within-cell sd 0.011, seed shift of ln η* sd 0.16, level sd 0.007; adam 0.013, 0.10,
# 0.004 (docs/method.md, "Calibration", has the measurement).
VALLEYS = {
    "nesterov": Valley(SHAPES["nesterov"], noise=0.011, shift_sd=0.16, level_sd=0.007),
    "adam": Valley(SHAPES["adam"], noise=0.013, shift_sd=0.10, level_sd=0.004),
}


def gaussian_dip(
    depth: float = 0.8, width: float = 1.5, floor: float = 0.3
) -> Callable[[FloatArray], FloatArray]:
    """The clean symmetric valley of the issue's probe: floor + depth·(1 − e^{−z²/2w²})."""
    return lambda z: floor + depth * (1 - np.exp(-(z**2) / (2 * width**2)))


@dataclass(frozen=True)
class Scenario:
    """One design and one kind of valley: the rows of the calibration table."""

    name: str
    valley: Valley | None  # None: the clean symmetric dip
    n_lambda: int = 4
    decades: float = 2.0
    n_lr: int = 7
    step: float = math.log(2.0)  # the η grid's step (ln)
    above: float = 2.5  # steps of the grid above x* (the wall's points)
    seeds: int = 3
    independent: bool = True
    deform: float = 0.0  # the smallest λ row's low-η side raised by this much at its lowest η
    clean_noise: float = 0.004  # the clean dip's noise (valley None)
    ks: tuple[float, float] = (1.0, 0.5)  # the planted k of each pair
    targets: dict[str, float] = field(default_factory=dict)


def planted_shape(s: Scenario) -> Callable[[FloatArray], FloatArray]:
    """The planted valley's shape, as a function of z = ln η + k·(ln λ − mean) − x*."""
    return gaussian_dip() if s.valley is None else s.valley.shape


X_STAR = -8.0  # where the planted valleys sit (ln η at the mean ln λ)


def plant(s: Scenario, k: float, rng: np.random.Generator) -> Panel:
    """One planted study of scenario ``s`` with true k."""
    wds = np.geomspace(1e-3, 10 ** (-3 + s.decades), s.n_lambda)
    v = np.log(wds) - np.log(wds).mean()
    x_star = X_STAR
    base = rng.uniform(0.0, s.step)  # where the grid sits against x*
    xg = x_star + s.step * (np.arange(s.n_lr) - (s.n_lr - 1 - s.above)) - base  # (M,)
    log_lr = xg[None, :] - k * v[:, None]  # every row's grid in the theory's coordinates
    units = (s.n_lambda, s.seeds) if s.independent else (1, s.seeds)
    z = np.asarray(xg[None, :, None] - x_star, dtype=np.float64)  # (1, M, 1)
    if s.valley is None:
        err = np.broadcast_to(planted_shape(s)(z), (s.n_lambda, s.n_lr, s.seeds)).copy()
        noise = s.clean_noise
    else:
        a, b = rng.standard_normal(units), rng.standard_normal(units)
        c = s.valley.correlation
        level = np.broadcast_to(s.valley.level_sd * a, (s.n_lambda, s.seeds))
        shift = np.broadcast_to(
            s.valley.shift_sd * (c * a + math.sqrt(1 - c * c) * b), (s.n_lambda, s.seeds)
        )
        err = s.valley.shape(z - shift[:, None, :]) + level[:, None, :]
        noise = s.valley.noise
    if s.deform:
        err[0] += (s.deform * 0.5 ** np.arange(s.n_lr))[:, None]
    err = err + noise * rng.standard_normal(err.shape)
    return Panel(wds, log_lr, err, s.independent)


def oracle_k(panel: Panel, shape: Callable[[FloatArray], FloatArray]) -> float:
    """k by least squares with the planted template known: only k, the valley's position and a
    level are fitted. No estimator that must learn the template's shape from the data can do
    much better, so the spread of this k̂ over studies is the design's floor: how narrow a
    correct interval for k can be in this design, whatever the estimator."""
    v = panel.log_wd - panel.log_wd.mean()
    ok = panel.present

    def resid(p: FloatArray) -> FloatArray:
        k, x0, c = p
        z = panel.log_lr + k * v[:, None] - x0
        return np.asarray((panel.values - shape(z)[:, :, None] - c)[ok], dtype=np.float64)

    start = np.array([0.75, X_STAR, 0.0])
    return float(optimize.least_squares(resid, start, xtol=1e-12, ftol=1e-12, gtol=1e-12).x[0])


@dataclass(frozen=True)
class Outcome:
    k: float  # planted
    value: float
    ci_low: float
    ci_high: float
    status: str
    left_out: tuple[int, ...]
    oracle: float  # k̂ with the template known (oracle_k)


def simulate(
    s: Scenario, n: int, seed: int = 0, ks: Sequence[float] = (1.0, 0.5)
) -> list[tuple[Outcome, ...]]:
    """``n`` studies per k, in pairs (one per k, drawn from the same generator)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        pair = []
        for k in ks:
            panel = plant(s, k, rng)
            sigma, _ = noise_sd(panel)
            r = collapse_fit(panel, sigma)
            assert r is not None
            iv = r.interval
            oracle = oracle_k(panel, planted_shape(s))
            pair.append(Outcome(k, iv.value, iv.ci_low, iv.ci_high, r.status, r.left_out, oracle))
        out.append(tuple(pair))
    return out


@dataclass(frozen=True)
class Summary:
    """One row of the calibration table."""

    scenario: str
    studies: int
    coverage: float  # of the planted k by the 95 % interval, over studies with one
    with_interval: float
    median_width: float
    median_abs_error: float
    bias: float
    sd: float  # of k̂ − k over the studies
    oracle_sd: float  # of the known-template k̂ − k (oracle_k): the design's floor
    disjoint: float  # pairs whose k = 1 and k = ½ intervals do not overlap
    row0_left_out: float  # the first (smallest λ) row left out by the rule
    any_left_out: float  # some row left out
    not_collapsed: float  # "does not collapse"

    def cells(self) -> list[str]:
        return [
            self.scenario,
            str(self.studies),
            f"{self.coverage:.3f}",
            f"{self.with_interval:.2f}",
            f"{self.median_width:.3f}",
            f"{self.median_abs_error:.4f}",
            f"{self.bias:+.4f}",
            f"{self.sd:.4f}",
            f"{self.oracle_sd:.4f}",
            f"{self.disjoint:.3f}",
            f"{self.row0_left_out:.2f}",
            f"{self.any_left_out:.2f}",
            f"{self.not_collapsed:.2f}",
        ]


HEADER = [
    "scenario",
    "studies",
    "coverage",
    "with CI",
    "median CI width",
    "median |k̂ − k|",
    "bias",
    "sd(k̂)",
    "oracle sd",
    "k = 1 vs ½ disjoint",
    "row λ₁ left out",
    "any row left out",
    "does not collapse",
]


def summarize(name: str, pairs: Sequence[tuple[Outcome, ...]]) -> Summary:
    flat = [o for p in pairs for o in p]
    ci = [o for o in flat if math.isfinite(o.ci_low) and math.isfinite(o.ci_high)]
    err = [o.value - o.k for o in flat if math.isfinite(o.value)]

    def share(xs: Sequence[bool]) -> float:
        return float(np.mean(xs)) if xs else math.nan

    disjoint = [
        a.ci_low > b.ci_high or b.ci_low > a.ci_high
        for a, b in (p for p in pairs if len(p) == 2)
        if all(math.isfinite(x) for x in (a.ci_low, a.ci_high, b.ci_low, b.ci_high))
    ]
    n_disjoint = sum(disjoint)
    return Summary(
        scenario=name,
        studies=len(flat),
        coverage=share([o.ci_low <= o.k <= o.ci_high for o in ci]),
        with_interval=len(ci) / len(flat) if flat else math.nan,
        median_width=float(np.median([o.ci_high - o.ci_low for o in ci])) if ci else math.nan,
        median_abs_error=float(np.median(np.abs(err))) if err else math.nan,
        bias=float(np.mean(err)) if err else math.nan,
        sd=float(np.std(err, ddof=1)) if len(err) > 1 else math.nan,
        oracle_sd=float(np.std([o.oracle - o.k for o in flat], ddof=1)) if flat else math.nan,
        # a pair without both intervals counts as not told apart
        disjoint=n_disjoint / len(pairs) if pairs else math.nan,
        row0_left_out=share([0 in o.left_out for o in flat]),
        any_left_out=share([bool(o.left_out) for o in flat]),
        not_collapsed=share([o.status == NOT_COLLAPSED for o in flat]),
    )


HEADLINE_TARGETS = {"coverage_low": 0.92, "coverage_high": 0.98, "width": 0.2, "disjoint": 0.95}
SCENARIOS = (
    Scenario("clean symmetric dip, 23 η × 7 λ over 3 decades, 2 shared seeds", None,
             n_lambda=7, decades=3.0, n_lr=23, step=math.log(10) / 4, above=11.0, seeds=2,
             independent=False, targets={"abs_error": 0.02}),
    # k off the theory's values: the fit's k scan has a 0.025 lattice that holds 1 and ½.
    Scenario("clean symmetric dip as above, planted k 0.87 and 0.63", None,
             n_lambda=7, decades=3.0, n_lr=23, step=math.log(10) / 4, above=11.0, seeds=2,
             independent=False, ks=(0.87, 0.63), targets={"abs_error": 0.02}),
    Scenario("headline design, nesterov's valley", VALLEYS["nesterov"],
             targets=HEADLINE_TARGETS),
    Scenario("headline design, adam's valley", VALLEYS["adam"], targets=HEADLINE_TARGETS),
    Scenario("headline design, nesterov's valley, shared seeds", VALLEYS["nesterov"],
             independent=False),
    Scenario("dense: 15 η × 7 λ over 3 decades, 2 shared seeds, nesterov's valley",
             VALLEYS["nesterov"], n_lambda=7, decades=3.0, n_lr=15, above=5.0, seeds=2,
             independent=False),
    Scenario("headline design, nesterov's valley, row λ₁ deformed +0.04", VALLEYS["nesterov"],
             deform=0.04, targets={"coverage_or_named": 0.9}),
    Scenario("headline design, adam's valley, row λ₁ deformed +0.04", VALLEYS["adam"],
             deform=0.04, targets={"coverage_or_named": 0.9}),
    Scenario("headline design, nesterov's valley, row λ₁ deformed +0.02", VALLEYS["nesterov"],
             deform=0.02, targets={"coverage_or_named": 0.9}),
    # The same design with 5 seeds per λ row, for the next registered run's design: each row's
    # jackknife then has 4 degrees of freedom instead of 2, and the row test 5 seeds.
    Scenario("5 seeds per row, nesterov's valley", VALLEYS["nesterov"], seeds=5,
             targets=HEADLINE_TARGETS),
    Scenario("5 seeds per row, adam's valley", VALLEYS["adam"], seeds=5,
             targets=HEADLINE_TARGETS),
    Scenario("5 seeds per row, nesterov's valley, row λ₁ deformed +0.04", VALLEYS["nesterov"],
             seeds=5, deform=0.04, targets={"coverage_or_named": 0.9}),
    Scenario("5 seeds per row, adam's valley, row λ₁ deformed +0.04", VALLEYS["adam"],
             seeds=5, deform=0.04, targets={"coverage_or_named": 0.9}),
)  # fmt: skip


def scenario_seed(s: Scenario) -> int:
    """The full table's seed for ``s``: from its name, so that no scenario's draw depends on
    the others (an index-based seed redrew every later scenario when one was inserted)."""
    return zlib.crc32(s.name.encode())


def run(s: Scenario, n: int, seed: int = 0) -> Summary:
    return summarize(s.name, simulate(s, n, seed, s.ks))


# --- measuring the valley on committed runs ------------------------------------------------


def measure_valley(trials_csv: Path, k: float) -> Shape:
    """The :class:`Shape` that fits a run's trials (an ``analyze --csv`` export) at k, by least
    squares over every non-diverged trial (x* is where the fitted valley sits)."""
    with trials_csv.open(newline="") as f:
        rows = [r for r in csv.DictReader(f) if r.get("diverged", "False") != "True"]
    x = np.array([math.log(float(r["lr"])) + k * math.log(float(r["weight_decay"])) for r in rows])
    y = np.array([float(r["val_error"]) for r in rows])

    def resid(p: FloatArray) -> FloatArray:
        f, x0, w, lo, hi = p
        return np.asarray(Shape(f, w, lo, hi)(x - x0) - y, dtype=np.float64)

    start = np.array([float(np.min(y)), float(np.median(x)), 0.5, 0.01, 0.04])
    fit = optimize.least_squares(resid, start, bounds=([0.25, -30, 0.1, 0, 0], [0.4, 0, 1.5, 1, 1]))
    f, _, w, lo, hi = fit.x
    return Shape(float(f), float(w), float(lo), float(hi))


__all__ = [
    "HEADER",
    "SCENARIOS",
    "SHAPES",
    "VALLEYS",
    "Outcome",
    "Scenario",
    "Shape",
    "Summary",
    "Valley",
    "measure_valley",
    "oracle_k",
    "plant",
    "run",
    "scenario_seed",
    "simulate",
    "summarize",
]
