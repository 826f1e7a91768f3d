"""Planted panels for the calibration of k's intervals: no Optuna, straight into estimators."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from l2bn.analysis.estimating.panel import Panel

DEPTH = 0.8  # the error dip's depth
WIDTH = 1.5  # its sd in log η·λ^k (natural log)
STEP = math.log(10) / 2  # the η grid: half a decade per point
N_LR = 7
WDS = (1e-2, 4e-2, 1.6e-1, 6.4e-1)  # the reproduction's λ values (factor 4 apart)
ADJACENT = DEPTH * (1 - math.exp(-(STEP**2) / (2 * WIDTH**2)))  # error step at the optimum


@dataclass(frozen=True)
class Planted:
    k: float
    noise: float  # sd of one trial, in units of ADJACENT
    seeds: int
    independent_rows: bool = False
    seed_sd: float = 0.1  # the largest sd of a seed's shift of log η* and of its tilt of k
    random_sd: bool = True  # draw each study's sds from U(0, seed_sd); False: exactly seed_sd


def planted_panel(p: Planted, rng: np.random.Generator) -> Panel:
    """One study: η grids centred on the theory column (as the sweeps lay them out), each λ
    shifted by a random fraction of a step; every seed (or, with independent rows, every
    (λ, seed)) shifts log η* and tilts k by its own amount, shared by all its cells."""
    log_wd = np.log(np.array(WDS))
    v = log_wd - log_wd.mean()
    n_l = v.size
    x0 = -7.0
    offset = rng.uniform(-STEP / 2, STEP / 2, size=n_l)
    centre = x0 - p.k * v + offset
    grid = centre[:, None] + STEP * (np.arange(N_LR) - (N_LR - 1) / 2)  # (L, M)
    sd_shift, sd_tilt = rng.uniform(0, p.seed_sd, size=2) if p.random_sd else (p.seed_sd,) * 2
    shape = (n_l, p.seeds) if p.independent_rows else (1, p.seeds)
    shift = rng.normal(0, sd_shift, size=shape)
    tilt = rng.normal(0, sd_tilt, size=shape)
    opt = x0 - (p.k + tilt) * v[:, None] + shift  # (L or 1 → L, S): log η* per row and seed
    opt = np.broadcast_to(opt, (n_l, p.seeds))
    z = (grid[:, :, None] - opt[:, None, :]) / WIDTH
    floor = rng.uniform(0.25, 0.35, size=(n_l, 1, 1))  # each λ's own best error
    err = floor + DEPTH * (1 - np.exp(-(z**2) / 2))
    err = err + p.noise * ADJACENT * rng.standard_normal(err.shape)
    return Panel(np.array(WDS), grid, err, p.independent_rows)
