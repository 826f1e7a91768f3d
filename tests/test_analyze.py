"""``l2bn analyze`` on studies with planted scaling laws, written with plain Optuna.

The studies are written the way any Optuna client following the study layout would
(README, "Study layout"), so the analysis is tested against that contract, not against
l2bn's own sweep code.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pytest

from l2bn.analysis.pipeline import (
    CONSISTENT,
    INCONSISTENT,
    UNDETERMINED,
    AnalysisReport,
    AnalyzeConfig,
    GroupReport,
    analyze,
    parabolic_argmin,
    relaxation_index,
    run_analysis,
)
from l2bn.errors import AnalysisError, ConfigError, StorageError
from l2bn.render import render_report

optuna.logging.set_verbosity(optuna.logging.WARNING)

STEPS_PER_EPOCH = 1000
EPOCHS = 10
PHASE1 = 5  # epochs 1-5 at η, 6-8 at η/10, 9-10 at η/100: T = 5000 steps


# --- planting -----------------------------------------------------------------------------


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
             "val_error": 0.3, "seconds": 0.1, "layers": layers}
        )  # fmt: skip
    return history


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
) -> int:
    """Write every (η, λ, seed) as a COMPLETE trial in one ``add_trials``; return the count.

    The dataset attr is the name's prefix, so one optimizer's studies in different test
    scenarios are not pooled into one group.
    """
    rng = np.random.default_rng(rng_seed)
    study = optuna.create_study(storage=storage, study_name=name)
    attrs = {"optimizer": optimizer, "norm": "bn", "dataset": name.split("/")[0], "epochs": EPOCHS}
    for key, value in attrs.items():
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


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One SQLite storage holding every planted study (SQLite costs ~20 ms per trial)."""
    url = f"sqlite:///{tmp_path_factory.mktemp('analyze') / 'planted.db'}"
    storage = fast_sqlite(url)  # one engine for every study: the schema is set up once
    wds = [1e-4, 1e-3, 1e-2]
    plant_study(storage, "p/sgd", "sgd", centred_grid(1.0), wds, surface(1.0))
    plant_study(storage, "p/adam", "adam", centred_grid(0.5), wds, surface(0.5), rng_seed=1)
    # normalized SGD: the error depends on η only.
    plant_study(
        storage, "p/normalized-sgd", "normalized-sgd", log_grid(1e-5, 1e-1, 7), wds,
        surface(0.0, math.log(1e-3)), rng_seed=2,
    )  # fmt: skip
    # One seed: the regression's t-interval instead of the bootstrap.
    plant_study(
        storage, "one/momentum", "momentum", centred_grid(1.0, n=9),
        [1e-4, 1e-3, 1e-2, 1e-1], surface(1.0), seeds=1, noise=0.002, rng_seed=3,
    )  # fmt: skip
    # A fixed η grid: at λ = 0.1, η* = 1e-4 lies below the lowest η, an edge minimum.
    plant_study(
        storage, "edge/nesterov", "nesterov", log_grid(1e-3, 10.0, 9),
        [1e-4, 3e-4, 1e-3, 1e-1], surface(1.0, math.log(1e-5)), seeds=1, noise=0.002,
        rng_seed=4,
    )  # fmt: skip
    plant_study(storage, "single/sgd", "sgd", log_grid(1e-3, 1.0, 5), [1e-3], surface(1.0))
    # Norm studies: η·λ·T spans 0.05 … 500, so the equilibrium filter has work to do.
    plant_study(
        storage, "n/sgd", "sgd", NORM_LRS, NORM_WDS, surface(1.0, -4.0), seeds=1,
        norms=norms_law(0.25), rng_seed=5,
    )  # fmt: skip
    plant_study(
        storage, "n/rmsprop", "rmsprop", NORM_LRS, NORM_WDS, surface(0.5, -3.0), seeds=1,
        norms=norms_law(1 / 3), rng_seed=6,
    )  # fmt: skip
    optuna.create_study(storage=storage, study_name="not-l2bn")  # no 'optimizer' attr
    return url


def one_group(url: str, study: str, **settings: Any) -> GroupReport:
    report = analyze(AnalyzeConfig(storage=url, studies=(study,), **settings))
    assert len(report.groups) == 1
    return report.groups[0]


# --- η* and k -----------------------------------------------------------------------------


@pytest.mark.parametrize(("study", "k"), [("p/sgd", 1.0), ("p/adam", 0.5)])
def test_planted_k_is_recovered_with_a_covering_ci(planted: str, study: str, k: float) -> None:
    g = one_group(planted, study)
    est = g.scaling.k
    assert est.method in ("bootstrap", "bootstrap|ols-t")  # 2 seeds per cell
    assert est.value == pytest.approx(k, abs=0.05)
    assert est.ci_low <= k <= est.ci_high
    assert est.ci_high - est.ci_low < 0.2  # informative, not just wide
    assert g.scaling.n_lambda == 3 and g.scaling.r_squared > 0.99
    assert g.scaling.theory == k and g.scaling.verdict == CONSISTENT
    # The collapse estimate is independent of η* and must agree.
    assert g.collapse is not None
    assert g.collapse.k.value == pytest.approx(k, abs=0.05)
    assert g.collapse.k.covers(k) and g.collapse.verdict == CONSISTENT
    # η* itself: the planted optimum exp(-6)·λ^-k, found between grid points.
    for o in g.optima:
        assert o.used and not o.edge
        assert math.log(o.lr_opt) == pytest.approx(-6.0 - k * math.log(o.weight_decay), abs=0.05)
    assert any(o.lr_opt != o.lr_grid for o in g.optima)


def test_bootstrap_is_deterministic(planted: str) -> None:
    a = one_group(planted, "p/adam").scaling.k
    b = one_group(planted, "p/adam").scaling.k
    assert (a.ci_low, a.ci_high) == (b.ci_low, b.ci_high)
    # The bootstrap's seed moves neither the estimate nor, here, where the t-interval is the
    # wider one, the reported interval.
    c = one_group(planted, "p/adam", seed=1).scaling.k
    assert c.value == a.value


def test_theory_mismatch_is_inconsistent(planted: str) -> None:
    # Adam's data, labelled as SGD (k = 1 predicted, ½ planted): the verdict must say so.
    report = analyze(AnalyzeConfig(storage=planted, studies=("p/adam",)))
    g = report.groups[0]
    assert not g.scaling.k.covers(1.0)
    from l2bn.analysis.pipeline import _verdict

    assert _verdict(g.scaling.k, 1.0, tolerance=0.05) == INCONSISTENT


def test_tolerance_is_a_practical_equivalence_margin() -> None:
    from l2bn.analysis.pipeline import Estimate, _verdict

    tight = Estimate(0.249, 0.0005, 0.248, 0.2499, 20, "ols-t")
    assert _verdict(tight, 0.25, tolerance=0.0) == INCONSISTENT
    assert _verdict(tight, 0.25, tolerance=0.05) == CONSISTENT
    far = Estimate(0.40, 0.01, 0.38, 0.42, 20, "ols-t")
    assert _verdict(far, 0.25, tolerance=0.05) == INCONSISTENT


def test_normalized_sgd_eta_star_does_not_depend_on_lambda(planted: str) -> None:
    g = one_group(planted, "p/normalized-sgd")
    assert g.scaling.theory == 0.0
    assert g.scaling.k.covers(0.0) and abs(g.scaling.k.value) < 0.05
    assert g.scaling.verdict == CONSISTENT
    assert g.collapse is not None and g.collapse.k.covers(0.0)


def test_one_seed_uses_the_regression_t_interval(planted: str) -> None:
    g = one_group(planted, "one/momentum")
    est = g.scaling.k
    assert est.method == "ols-t" and est.n == 4
    assert est.value == pytest.approx(1.0, abs=0.05) and est.covers(1.0)
    assert g.scaling.verdict == CONSISTENT


def test_with_seeds_the_wider_of_bootstrap_and_regression_interval_is_reported(
    planted: str,
) -> None:
    from scipy import stats

    from l2bn.analysis.pipeline import AnalyzeConfig, analyze_group, group_studies, load_studies

    studies, _ = load_studies(planted, ["p/sgd"])
    (data,) = group_studies(studies)
    g = analyze_group(data, AnalyzeConfig(storage=planted))
    used = [o for o in g.optima if o.used]
    fit = stats.linregress(np.log([o.weight_decay for o in used]), np.log([o.lr_opt for o in used]))
    half_t = float(stats.t.ppf(0.975, len(used) - 2)) * fit.stderr
    est = g.scaling.k
    assert est.ci_high - est.ci_low >= 2 * half_t - 1e-12
    no_boot = analyze_group(data, AnalyzeConfig(storage=planted, bootstrap=0)).scaling.k
    assert no_boot.method == "ols-t"
    assert no_boot.ci_high - no_boot.ci_low == pytest.approx(2 * half_t)


def test_edge_minimum_is_flagged_and_left_out(planted: str) -> None:
    g = one_group(planted, "edge/nesterov")
    edges = [o for o in g.optima if o.edge]
    assert [o.weight_decay for o in edges] == [0.1]
    assert not edges[0].used and "extend the grid" in (edges[0].note or "")
    assert any("λ=0.1" in w and "extend the grid" in w for w in g.warnings)
    # k from the three interior λ values only: still the planted 1.
    assert g.scaling.n_lambda == 3
    assert g.scaling.k.value == pytest.approx(1.0, abs=0.05)


def test_too_few_interior_optima_is_undetermined(planted: str) -> None:
    # With λ restricted so that only one interior η* is left, there is no slope to fit.
    from l2bn.analysis.pipeline import analyze_group, group_studies, load_studies

    studies, _ = load_studies(planted, ["edge/nesterov"])
    (data,) = group_studies(studies)
    kept = tuple(t for t in data.trials if t.weight_decay in (1e-4, 1e-1))
    g = analyze_group(type(data)(data.optimizer, data.norm, data.dataset, data.studies, kept))
    assert g.scaling.n_lambda == 1
    assert g.scaling.verdict == UNDETERMINED and math.isnan(g.scaling.k.value)


def test_single_lambda_study_is_a_clear_error(planted: str) -> None:
    with pytest.raises(AnalysisError, match=r"single weight_decay value \(0\.001\).*≥ 2 λ"):
        analyze(AnalyzeConfig(storage=planted, studies=("single/sgd",)))


def test_parabolic_argmin_finds_the_vertex_between_uneven_points() -> None:
    x = np.array([[0.0, 1.0, 3.0]])
    y = (x - 1.4) ** 2 + 2.0
    vertex, curvature = parabolic_argmin(x, y)
    assert vertex[0] == pytest.approx(1.4) and curvature[0] == pytest.approx(1.0)
    flat, _ = parabolic_argmin(x, np.zeros((1, 3)))
    assert flat[0] == 1.0  # no interior minimum: keep the grid point


# --- norm exponents -----------------------------------------------------------------------


def expected_equilibrium_cells(threshold: float) -> int:
    return sum(
        lr * wd * STEPS_PER_EPOCH * PHASE1 >= threshold for lr in NORM_LRS for wd in NORM_WDS
    )


@pytest.mark.parametrize(("study", "a"), [("n/sgd", 0.25), ("n/rmsprop", 1 / 3)])
def test_norm_exponents_are_recovered_on_equilibrium_cells(
    planted: str, study: str, a: float
) -> None:
    g = one_group(planted, study)
    assert g.first_layer == "conv1"
    assert [n.layer for n in g.norms] == ["conv1", "conv2", "fc"]
    conv1, conv2, fc = g.norms
    n_eq = expected_equilibrium_cells(5.0)
    assert 6 <= n_eq < len(NORM_LRS) * len(NORM_WDS)  # the filter has cells on both sides
    assert conv1.n_cells == n_eq
    assert conv1.n_excluded == len(NORM_LRS) * len(NORM_WDS) - n_eq
    for est in (conv1.a, conv1.b):
        assert est.value == pytest.approx(a, abs=0.02) and est.covers(a)
        assert est.method == "ols-t" and est.n == n_eq
    assert conv1.theory == pytest.approx(a) and conv1.verdict == CONSISTENT
    assert conv1.r_squared > 0.99
    # Each layer gets its own fit: conv2 grows as η^{2a}, fc not at all.
    assert conv2.a.value == pytest.approx(2 * a, abs=0.02) and conv2.verdict == INCONSISTENT
    assert fc.a.covers(0.0) and fc.b.covers(0.0)
    assert any("out of equilibrium" in w for w in g.warnings)


def test_equilibrium_threshold_is_configurable(planted: str) -> None:
    g = one_group(planted, "n/sgd", equilibrium=50.0)
    assert g.norms[0].n_cells == expected_equilibrium_cells(50.0)
    # Without the filter the initialization norms of young cells spoil the fit.
    g0 = one_group(planted, "n/sgd", equilibrium=0.0)
    assert g0.norms[0].n_excluded == 0
    assert not g0.norms[0].a.covers(0.25)


@pytest.mark.parametrize(("optimizer", "rate"), [("sgd", 1.0), ("nesterov", 10.0), ("adamw", 2.0)])
def test_equilibrium_time_follows_the_optimizer(
    tmp_path: Path, optimizer: str, rate: float
) -> None:
    """Steps to equilibrium ~(1−α)/(ηλ) with momentum α = 0.9 and 1/(2ηλ) for AdamW: the same
    grid has 10× (2×) the η·λ·T reach there, so a threshold of 5 admits the cells an SGD
    study would admit at 0.5 (2.5)."""
    url = f"sqlite:///{tmp_path}/eq.db"
    plant_study(url, f"eq/{optimizer}", optimizer, NORM_LRS, NORM_WDS, surface(1.0, -4.0),
                seeds=1, norms=norms_law(0.25))  # fmt: skip
    g = one_group(url, f"eq/{optimizer}")
    assert g.norms[0].n_cells == expected_equilibrium_cells(5.0 / rate)
    for c in g.cells:
        assert c.equilibrium_index == pytest.approx(rate * c.eta_lambda_t)
    assert (
        expected_equilibrium_cells(0.5)
        > expected_equilibrium_cells(2.5)
        > (expected_equilibrium_cells(5.0))
    )


# --- measured relaxation ------------------------------------------------------------------


def relaxing(x: float, n: int, n0: float = 3.0, n_inf: float = 1.0) -> np.ndarray:
    """Norms after epochs 1..n of an exponential approach with x time constants over n."""
    t = np.arange(1, n + 1) / n
    return n_inf + (n0 - n_inf) * np.exp(-x * t)


@pytest.mark.parametrize("n", [5, 20, 50])
@pytest.mark.parametrize("x", [0.3, 2.0, 5.0, 12.0])
def test_relaxation_index_recovers_planted_time_constants(n: int, x: float) -> None:
    assert relaxation_index(relaxing(x, n)) == pytest.approx(x, rel=1e-6)
    # Growing or shrinking, at any scale and offset: only the shape counts.
    assert relaxation_index(relaxing(x, n, n0=0.5, n_inf=7.0)) == pytest.approx(x, rel=1e-6)


def test_relaxation_index_limits() -> None:
    assert relaxation_index(np.linspace(2.0, 2.5, 50)) == pytest.approx(0.0, abs=1e-6)  # drift
    assert relaxation_index(relaxing(60.0, 50)) == 20.0  # capped: the last quarter is flat
    for unusable in ([1.0, 1.0, 1.0, 1.0], [1.0, 2.0, 3.0], [1.0, math.nan, 2.0, 3.0]):
        assert math.isnan(relaxation_index(unusable))
    # A norm that first grows on the gradient and then decays: the range covers the excursion.
    overshoot = np.concatenate([[1.0, 2.0, 3.0], relaxing(12.0, 47, n0=3.0, n_inf=2.0)])
    assert relaxation_index(overshoot) > 5
    # A norm that cycles around its equilibrium (Lobacheva et al. 2021) keeps moving in the
    # last quarter: it reads as less relaxed, and as unsettled once the cycles are ~5 % of
    # the excursion.
    cycles = np.sin(2 * np.pi * np.arange(1, 51) / 20)
    readings = [relaxation_index(relaxing(12.0, 50) + a * cycles) for a in (0.01, 0.03, 0.1)]
    assert 12.0 > readings[0] > readings[1] > 5.0 > readings[2]


def test_cells_measure_back_the_clock_they_relaxed_on(tmp_path: Path) -> None:
    """Histories relaxing with exactly c·η·λ·T time constants over phase 1 (then flat): the
    measured index of every cell is that number (up to the cap), and the summary line counts
    the same cells on both sides."""

    def history(lr: float, wd: float) -> list[dict[str, Any]]:
        x = 10.0 * lr * wd * STEPS_PER_EPOCH * PHASE1  # nesterov: c = 10
        norms = relaxing(x, PHASE1)
        return [
            {"epoch": e, "lr": lr * 0.1 ** ((e > PHASE1) + (e > 8)), "val_error": 0.3,
             "layers": {"conv1": {"norm": float(norms[min(e, PHASE1) - 1])}}}
            for e in range(1, EPOCHS + 1)
        ]  # fmt: skip

    url = f"sqlite:///{tmp_path}/relax.db"
    lrs = log_grid(1e-3, 1e-1, 5)  # c·η·λ·T = 0.1 … 10 at λ = 0.002 and 1 … 100 at λ = 0.02
    plant_study(url, "r/nesterov", "nesterov", lrs, [2e-3, 2e-2], surface(1.0, -4.0),
                seeds=2, history=history)  # fmt: skip
    g = one_group(url, "r/nesterov", bootstrap=0)
    for c in g.cells:
        assert c.relaxation["conv1"] == pytest.approx(min(c.equilibrium_index, 20.0), rel=1e-6)
    settled = sum(c.equilibrium_index >= 5 for c in g.cells)
    assert settled == 4
    assert f"{settled} of {len(g.cells)} cell(s) ≥ 5 time constants (c·η·λ·T says {settled})" in (
        " ".join(g.warnings)
    )


# --- loading and errors -------------------------------------------------------------------


def test_default_selects_every_l2bn_study_and_groups_them(planted: str) -> None:
    report = analyze(AnalyzeConfig(storage=planted, bootstrap=50))
    labels = {(g.optimizer, g.dataset) for g in report.groups}
    assert ("sgd", "p") in labels and ("rmsprop", "n") in labels
    assert all(g.optimizer for g in report.groups)  # "not-l2bn" was not picked up
    assert any("single/sgd" in w for w in report.warnings)  # skipped, not fatal


def test_missing_sqlite_file_is_not_created(tmp_path: Path) -> None:
    db = tmp_path / "nope.db"
    with pytest.raises(StorageError, match="no such storage file"):
        analyze(AnalyzeConfig(storage=f"sqlite:///{db}"))
    assert not db.exists()


def test_unknown_study_lists_the_available_ones(planted: str) -> None:
    with pytest.raises(AnalysisError, match=r"no study named 'p/sgdd'.*available: .*p/sgd"):
        analyze(AnalyzeConfig(storage=planted, studies=("p/sgdd",)))


def test_empty_storage_and_foreign_studies_are_helpful_errors(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'empty.db'}"
    storage = optuna.storages.RDBStorage(url)
    with pytest.raises(AnalysisError, match=r"no studies in .*l2bn sweep"):
        analyze(AnalyzeConfig(storage=url))
    optuna.create_study(storage=storage, study_name="foreign")
    with pytest.raises(AnalysisError, match=r"no l2bn study .*'optimizer'.*foreign"):
        analyze(AnalyzeConfig(storage=url))
    with pytest.raises(AnalysisError, match="no user attr 'optimizer'"):
        analyze(AnalyzeConfig(storage=url, studies=("foreign",)))


def test_bad_settings_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="equilibrium"):
        AnalyzeConfig(equilibrium=-1.0)
    with pytest.raises(ConfigError, match="confidence"):
        AnalyzeConfig(confidence=1.5)


# --- outputs ------------------------------------------------------------------------------

ESTIMATE_KEYS = {"value", "stderr", "ci_low", "ci_high", "n", "method", "confidence"}
GROUP_KEYS = {
    "optimizer", "norm", "dataset", "studies", "n_trials", "n_cells", "n_lambda", "max_seeds",
    "n_diverged", "first_layer", "k", "collapse", "optima", "norms", "cells", "warnings",
}  # fmt: skip


def test_json_has_the_documented_shape(planted: str, tmp_path: Path) -> None:
    out = tmp_path / "out" / "report.json"
    report = run_analysis(
        AnalyzeConfig(storage=planted, studies=("p/adam", "n/sgd"), json_path=out, bootstrap=100)
    )
    assert out in report.written
    d = json.loads(out.read_text())
    assert set(d) == {"l2bn_version", "storage", "settings", "warnings", "groups"}
    assert set(d["settings"]) >= {"storage", "studies", "equilibrium", "bootstrap", "seed"}
    assert len(d["groups"]) == 2
    for g in d["groups"]:
        assert set(g) == GROUP_KEYS
        assert set(g["k"]) == {
            "estimate",
            "intercept",
            "r_squared",
            "n_lambda",
            "theory",
            "verdict",
        }
        assert set(g["k"]["estimate"]) == ESTIMATE_KEYS
        assert set(g["collapse"]) == {"estimate", "theory", "verdict", "degree", "n_cells", "rss"}
        assert set(g["collapse"]["estimate"]) == ESTIMATE_KEYS
        assert g["k"]["verdict"] in (CONSISTENT, INCONSISTENT, UNDETERMINED)
        assert set(g["optima"][0]) == {
            "weight_decay", "lr_opt", "lr_grid", "val_error", "n_lr", "edge", "used", "note",
        }  # fmt: skip
        assert set(g["cells"][0]) == {
            "lr", "weight_decay", "n_seeds", "val_error", "val_error_std", "test_error",
            "n_diverged", "eta_lambda_T", "equilibrium_index", "phase1_norms", "relaxation",
        }  # fmt: skip
        assert g["n_cells"] == len(g["cells"])
    adam, nsgd = sorted(d["groups"], key=lambda g: g["optimizer"] != "adam")
    assert adam["k"]["estimate"]["value"] == pytest.approx(0.5, abs=0.05)
    assert adam["norms"] == [] and adam["first_layer"] is None
    assert nsgd["first_layer"] == "conv1"
    norm = nsgd["norms"][0]
    assert set(norm) == {
        "layer", "a", "b", "intercept", "r_squared", "n_cells", "n_excluded", "theory", "verdict",
    }  # fmt: skip
    assert set(norm["a"]) == ESTIMATE_KEYS and norm["a"]["value"] == pytest.approx(0.25, abs=0.02)


def test_csv_has_one_row_per_trial_with_per_epoch_norms(planted: str, tmp_path: Path) -> None:
    out = tmp_path / "trials.csv"
    run_analysis(AnalyzeConfig(storage=planted, studies=("n/sgd",), csv_path=out, bootstrap=0))
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == len(NORM_LRS) * len(NORM_WDS)
    cols = list(rows[0])
    assert cols[:3] == ["study", "trial", "optimizer"]
    assert [c for c in cols if c.startswith("norm_conv1_")] == [
        f"norm_conv1_e{e}" for e in range(1, EPOCHS + 1)
    ]
    row = max(rows, key=lambda r: float(r["lr"]) * float(r["weight_decay"]))  # in equilibrium
    lr, wd = float(row["lr"]), float(row["weight_decay"])
    assert int(row["phase1_epochs"]) == PHASE1
    assert float(row["eta_lambda_T"]) == pytest.approx(lr * wd * STEPS_PER_EPOCH * PHASE1)
    assert float(row["norm_conv1_e5"]) == pytest.approx(2.0 * (lr / wd) ** 0.25, rel=0.05)


def test_render_report_builds_a_table_without_printing(
    planted: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from rich.console import Console

    report: AnalysisReport = analyze(
        AnalyzeConfig(storage=planted, studies=("edge/nesterov", "n/sgd"), bootstrap=0)
    )
    assert capsys.readouterr().out == ""  # computing prints nothing
    console = Console(record=True, width=200)
    console.print(render_report(report))
    text = console.export_text()
    assert "nesterov" in text and "consistent" in text and "extend the grid" in text


def test_diverged_trials_are_counted_and_kept_out_of_norm_fits() -> None:
    from l2bn.analysis.pipeline import GroupData, TrialRecord, analyze_group

    def record(lr: float, wd: float, seed: int, diverged: bool) -> TrialRecord:
        history = planted_history(lr, wd, norms_law(0.25)(lr, wd))
        norms = tuple(1e6 if diverged else e["layers"]["conv1"]["norm"] for e in history)
        return TrialRecord(
            study="mem/sgd", number=seed, lr=lr, weight_decay=wd, seed=seed,
            val_error=0.9 if diverged else error_surface(lr, wd, 1.0, -4.0),
            test_error=math.nan, train_loss=math.nan, diverged=diverged,
            steps_per_epoch=STEPS_PER_EPOCH, epoch_lrs=tuple(e["lr"] for e in history),
            norms={"conv1": norms},
        )  # fmt: skip

    # The largest η of every λ diverged in one of its two seeds, with an absurd norm.
    top = NORM_LRS[-1]
    trials = tuple(
        record(lr, wd, seed, diverged=(lr == top and seed == 1))
        for lr in NORM_LRS
        for wd in NORM_WDS
        for seed in range(2)
    )
    g = analyze_group(GroupData("sgd", "bn", "mem", ("mem/sgd",), trials))
    assert g.n_diverged == len(NORM_WDS)
    assert any(f"{len(NORM_WDS)} diverged trial(s)" in w for w in g.warnings)
    assert sum(c.n_diverged for c in g.cells) == len(NORM_WDS)
    # The diverged runs' error counts (cell mean pulled towards chance) …
    cell = next(c for c in g.cells if c.lr == top and c.weight_decay == NORM_WDS[-1])
    assert cell.val_error == pytest.approx((0.9 + error_surface(top, NORM_WDS[-1], 1.0, -4.0)) / 2)
    # … but their norms do not: the planted exponent survives.
    assert g.norms[0].a.covers(0.25) and g.norms[0].b.covers(0.25)


def test_flat_lambda_column_has_no_minimum_and_is_left_out() -> None:
    from l2bn.analysis.pipeline import GroupData, TrialRecord, analyze_group

    rng = np.random.default_rng(7)
    lrs = centred_grid(1.0)

    def record(lr: float, wd: float, seed: int, value: float) -> TrialRecord:
        return TrialRecord(
            study="mem/sgd", number=seed, lr=lr, weight_decay=wd, seed=seed, val_error=value,
            test_error=math.nan, train_loss=math.nan, diverged=False, steps_per_epoch=None,
            epoch_lrs=(), norms={},
        )  # fmt: skip

    trials = [
        record(lr, wd, s, error_surface(lr, wd, 1.0) + 0.005 * float(rng.standard_normal()))
        for wd in (1e-4, 1e-3, 1e-2)
        for lr in lrs(wd)
        for s in range(2)
    ]
    # λ = 1: every η at chance level (say, all diverged); its argmin is pure noise.
    trials += [
        record(lr, 1.0, s, 0.9 + 0.005 * float(rng.standard_normal()))
        for lr in lrs(1e-2)
        for s in range(2)
    ]
    g = analyze_group(GroupData("sgd", "bn", "mem", ("mem/sgd",), tuple(trials)))
    flat = next(o for o in g.optima if o.weight_decay == 1.0)
    assert not flat.used and not flat.edge and "no clear minimum" in (flat.note or "")
    assert any("λ=1: no clear minimum" in w for w in g.warnings)
    assert g.scaling.n_lambda == 3 and g.scaling.k.covers(1.0)
