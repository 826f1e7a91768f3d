"""Studies with planted scaling laws, written with plain Optuna, for the analysis tests.

The studies are written the way any Optuna client following the study layout would
(docs/study-layout.md), so the analysis is tested against that contract, not against
l2bn's own sweep code; :func:`sweep_attrs` alone borrows the sweep's own study attrs, for the
tests of grouping by training identity.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import optuna

from l2bn.analysis.pipeline import AnalyzeConfig, GroupReport, analyze

optuna.logging.set_verbosity(optuna.logging.WARNING)

STEPS_PER_EPOCH = 1000
EPOCHS = 10
PHASE1 = 5  # epochs 1-5 at η, 6-8 at η/10, 9-10 at η/100: T = 5000 steps


def error_surface(lr: float, wd: float, k: float, x0: float = -6.0) -> float:
    """Validation error depending on η·λ^k only: a dip of depth 0.8 at log(η·λ^k) = x0."""
    x = math.log(lr) + k * math.log(wd)
    return 0.9 - 0.8 * math.exp(-((x - x0) ** 2) / 2.0)


def planted_history(lr: float, wd: float, layer_norms: dict[str, float]) -> list[dict[str, Any]]:
    """Per-epoch records whose phase-1 norms are ``layer_norms`` in equilibrium cells.

    Cells with η·λ·T < 5 get norm 1 (still at their initialization), unrelated to the law: a
    fit that let them in would miss the planted exponents. After phase 1 the norms move on,
    so reading the wrong epoch would miss them too.
    """
    in_eq = lr * wd * STEPS_PER_EPOCH * PHASE1 >= 5
    history = []
    for epoch in range(1, EPOCHS + 1):
        drops = (epoch > PHASE1) + (epoch > 8)
        layers = {}
        for name, target in layer_norms.items():
            final = target if in_eq else 1.0
            norm = final * (epoch / PHASE1) ** 0.5 if epoch <= PHASE1 else final * 1.3
            layers[name] = {"norm": norm, "unit_norm": norm / 4, "eff_lr": lr / norm**2}
        history.append(
            {"epoch": epoch, "lr": lr * 0.1**drops, "train_loss": 1.0, "train_error": 0.3,
             "seconds": 0.1, "layers": layers}  # no per-epoch val_error: no k over training
        )  # fmt: skip
    return history


def with_dynamics(
    history: list[dict[str, Any]],
    wd: float,
    ratio: Callable[[int], float],
    invariant: Sequence[str] = ("conv1", "conv2"),
    rate: float = 2.0,
    balance: bool = False,
    norms_follow: bool = False,
) -> list[dict[str, Any]]:
    """``history`` with the per-layer update records of l2bn.train.records added: in each
    layer of ``invariant``, θ_eq = √(rate·η·λ) with η the epoch's, and θ = θ_eq·√ratio(epoch)
    (so θ²/θ_eq² = ratio(epoch)); ``balance`` = ratio(epoch) too when asked, else null (as for
    optimizers with a θ_eq). Other layers: angle_eq null (not scale-invariant).
    ``norms_follow``: the invariant layers' ‖w‖² moves with the ratio too over phase 1,
    ‖w‖ = its planted value at the end of phase 1 × √(ratio(epoch)/ratio(end)) (a norm
    settling as its angular update does, onto the planted law), so that the stationarity
    verdict and the θ test tell one story."""
    end = {
        name: rec["norm"]
        for e in history
        if e["epoch"] == PHASE1
        for name, rec in e["layers"].items()
    }
    out = []
    for e in history:
        e = json.loads(json.dumps(e))
        eq = math.sqrt(rate * e["lr"] * wd)
        r = ratio(e["epoch"])
        for name, rec in e["layers"].items():
            inv = name in invariant
            if norms_follow and inv and e["epoch"] <= PHASE1:
                rec["norm"] = end[name] * math.sqrt(ratio(e["epoch"]) / ratio(PHASE1))
            rec.update(
                angle=(eq if inv else 0.01) * math.sqrt(r),
                angle_eq=None if balance or not inv else eq,
                radial=-0.5 * eq**2,
                tangential=eq,
                grad_norm=1.0,
                balance=r if balance else None,
            )
        e["val_loss"] = 2 * e.get("val_error", 0.5)
        out.append(e)
    return out


def plant_study(
    storage: str | optuna.storages.BaseStorage,
    name: str,
    optimizer: str,
    lrs: Callable[[float], Sequence[float]] | Sequence[float],
    wds: Sequence[float],
    error: Callable[[float, float], float],
    seeds: int = 2,
    noise: float = 0.005,
    norms: Callable[[float, float], dict[str, float]] | None = None,
    rng_seed: int = 0,
    history: Callable[[float, float], list[dict[str, Any]]] | None = None,
    attrs: dict[str, Any] | None = None,
    dynamics: Callable[[float, float], Callable[[int], float]] | None = None,
    norms_follow: bool = False,
) -> int:
    """Write every (η, λ, seed) as a COMPLETE trial in one ``add_trials``; return the count.

    The dataset attr is the name's prefix, so one optimizer's studies in different test
    scenarios are not pooled into one group. ``attrs``: study user attrs on top of those.
    ``dynamics``: per cell, θ²/θ_eq² per epoch of its conv layers (:func:`with_dynamics`).
    """
    rng = np.random.default_rng(rng_seed)
    study = optuna.create_study(storage=storage, study_name=name)
    base = {"optimizer": optimizer, "norm": "bn", "dataset": name.split("/")[0], "epochs": EPOCHS}
    for key, value in {**base, **(attrs or {})}.items():
        study.set_user_attr(key, value)
    dists = {
        "lr": optuna.distributions.FloatDistribution(1e-8, 1e6, log=True),
        "weight_decay": optuna.distributions.FloatDistribution(1e-8, 10.0, log=True),
        "seed": optuna.distributions.IntDistribution(0, 100),
    }
    trials = []
    for wd in wds:
        for lr in lrs(wd) if callable(lrs) else lrs:
            for seed in range(seeds):
                value = error(lr, wd) + noise * float(rng.standard_normal())
                ua: dict[str, Any] = {
                    "test_error": value + 0.01,
                    "train_loss": 0.5,
                    "diverged": False,
                    "steps_per_epoch": STEPS_PER_EPOCH,
                }
                if norms is not None:
                    jitter = {
                        layer: v * math.exp(0.01 * float(rng.standard_normal()))
                        for layer, v in norms(lr, wd).items()
                    }
                    ua["history"] = planted_history(lr, wd, jitter)
                if history is not None:
                    ua["history"] = history(lr, wd)
                if dynamics is not None and "history" in ua:
                    ua["history"] = with_dynamics(
                        ua["history"], wd, dynamics(lr, wd), norms_follow=norms_follow
                    )
                trials.append(
                    optuna.trial.create_trial(
                        params={"lr": lr, "weight_decay": wd, "seed": seed},
                        distributions=dists,
                        value=value,
                        user_attrs=ua,
                    )
                )
    study.add_trials(trials)
    return len(trials)


def sweep_attrs(optimizer: str, drop: Sequence[str] = (), **train: Any) -> dict[str, Any]:
    """The study user attrs ``l2bn sweep`` writes for a sweep with these training settings;
    ``drop``: TrainConfig fields to take out of its ``config`` (a study written before they
    existed)."""
    from l2bn.sweep.spec import parse_sweep
    from l2bn.sweep.study import study_attrs

    data = {"name": "s", "lr": [0.1], "weight_decay": [0.01], "optimizers": {optimizer: {}}}
    (sweep,) = parse_sweep({**data, **train}).optimizers.values()
    attrs = study_attrs(sweep)
    config = json.loads(attrs["config"])
    for key in drop:
        del config["train"][key]
    attrs["config"] = json.dumps(config, sort_keys=True)
    return attrs


def log_grid(lo: float, hi: float, n: int) -> list[float]:
    return [float(x) for x in np.geomspace(lo, hi, n)]


def centred_grid(k: float, x0: float = -6.0, n: int = 11) -> Callable[[float], list[float]]:
    """η grids in η·λ^k coordinates (3 decades around η*), shifted by a λ-dependent offset
    so that η* falls between grid points and the parabola refinement matters."""

    def lrs(wd: float) -> list[float]:
        centre = math.exp(x0) * wd**-k * 10 ** ((0.37 * math.log10(wd)) % 0.3)
        return log_grid(centre / 10**1.5, centre * 10**1.5, n)

    return lrs


def surface(k: float, x0: float = -6.0) -> Callable[[float, float], float]:
    return lambda lr, wd: error_surface(lr, wd, k, x0)


def norms_law(a: float) -> Callable[[float, float], dict[str, float]]:
    """Layer norms at equilibrium: conv1 ∝ (η/λ)^a; conv2 twice as steep in η; fc constant
    (not scale-invariant). First key "stem"-free on purpose: conv1 is first, fc last."""
    return lambda lr, wd: {
        "conv1": 2.0 * (lr / wd) ** a,
        "conv2": 3.0 * lr ** (2 * a) * wd**-a,
        "fc": 1.5,
    }


def fast_sqlite(url: str) -> optuna.storages.RDBStorage:
    """A writer for throw-away test files: no fsync, journal in memory (~30 % faster writes).

    Only the test data's writer uses it; the analysis opens the file the ordinary way.
    """
    import sqlalchemy

    storage = optuna.storages.RDBStorage(url)

    @sqlalchemy.event.listens_for(storage.engine, "connect")
    def _no_sync(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.execute("PRAGMA synchronous=OFF")
        dbapi_connection.execute("PRAGMA journal_mode=MEMORY")

    storage.engine.dispose()  # connections opened while creating the schema predate the hook
    return storage


NORM_LRS = log_grid(1e-2, 1.0, 7)
NORM_WDS = log_grid(1e-3, 1e-1, 5)


def expected_equilibrium_cells(threshold: float) -> int:
    return sum(
        lr * wd * STEPS_PER_EPOCH * PHASE1 >= threshold for lr in NORM_LRS for wd in NORM_WDS
    )


def relaxing(x: float, n: int, n0: float = 3.0, n_inf: float = 1.0) -> np.ndarray:
    """Norms after epochs 1..n of an exponential approach with x time constants over n."""
    t = np.arange(1, n + 1) / n
    return n_inf + (n0 - n_inf) * np.exp(-x * t)


def one_group(url: str, study: str, **settings: Any) -> GroupReport:
    report = analyze(AnalyzeConfig(storage=url, studies=(study,), **settings))
    assert len(report.groups) == 1
    return report.groups[0]
