"""Equilibrium by measurement: planted update records whose ratio is known give the verdicts
in / out / unknown, over the right window, through loading, the pipeline, the exports and the
views; and the metric's default follows the studies' stored objective."""

from __future__ import annotations

import csv
import json
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from l2bn import render
from l2bn.analysis.estimating.equilibrium import (
    cell_equilibrium,
    equilibrium_test,
    scale_invariant_layers,
    tail_ratios,
    tail_summary,
    tail_window,
    trial_verdict,
)
from l2bn.analysis.estimating.stationarity import stationarity
from l2bn.analysis.fitted import (
    ANGLE_TEST,
    BALANCE_TEST,
    IN_EQUILIBRIUM,
    NO_TEST,
    OUT_OF_EQUILIBRIUM,
    UNKNOWN,
    Equilibrium,
)
from l2bn.analysis.pipeline import AnalyzeConfig, analyze, run_analysis
from l2bn.analysis.presenting.export import write_csv
from l2bn.analysis.reading.records import TrialRecord, read_history
from l2bn.analysis.reading.studies import load_studies
from l2bn.errors import ConfigError
from l2bn.theory import MOMENTUM, THEORY, gradient_correlation, momentum_rate

from .planting import (
    EPOCHS,
    NORM_LRS,
    NORM_WDS,
    PHASE1,
    STEPS_PER_EPOCH,
    centred_grid,
    fast_sqlite,
    norms_law,
    plant_study,
    surface,
    sweep_attrs,
    with_dynamics,
)

# --- planted records ------------------------------------------------------------------------


def history(
    lrs: Sequence[float],
    wd: float,
    ratio: Callable[[int], float],
    layers: Sequence[str] = ("conv1", "conv2", "fc"),
    invariant: Sequence[str] = ("conv1", "conv2"),
    balance: bool = False,
    rate: float = 2.0,
    norms_follow: bool = False,
) -> list[dict[str, Any]]:
    """Per-epoch records with η = lrs[epoch − 1] and θ²/θ_eq² = ratio(epoch) in the
    ``invariant`` layers (the records l2bn.train.records writes); ``norms_follow``: see
    :func:`planting.with_dynamics`."""
    base = [
        {"epoch": e, "lr": lr, "train_loss": 1.0, "train_error": 0.3, "val_error": 0.2,
         "seconds": 0.1,
         "layers": {n: {"norm": 2.0, "unit_norm": 0.5, "eff_lr": lr} for n in layers}}
        for e, lr in enumerate(lrs, start=1)
    ]  # fmt: skip
    return with_dynamics(base, wd, ratio, invariant, rate, balance, norms_follow)


def record(
    h: list[dict[str, Any]], lr: float = 0.1, wd: float = 1e-3, seed: int = 0, **kw: Any
) -> TrialRecord:
    r = read_history(h)
    return TrialRecord(
        study="t/sgd", number=seed, lr=lr, weight_decay=wd, seed=seed, val_error=0.2,
        test_error=math.nan, train_loss=math.nan, diverged=kw.pop("diverged", False),
        steps_per_epoch=100, epoch_lrs=r.lrs, norms=r.norms, metrics=r.metrics,
        dynamics=r.dynamics, **kw,
    )  # fmt: skip


def step_lrs(lr: float = 0.1, epochs: int = 20, drop: int = 10) -> list[float]:
    return [lr if e <= drop else lr / 10 for e in range(1, epochs + 1)]


def wsd_lrs(
    lr: float = 0.1, epochs: int = 20, steps: int = 100, decay: float = 0.15
) -> list[float]:
    """Each epoch's mean η under wsd (TrainConfig.lr_at), as the engine records it."""
    from l2bn.train.config import Schedule, TrainConfig

    cfg = TrainConfig(lr=lr, epochs=epochs, schedule=Schedule.wsd, decay_fraction=decay)
    return [sum(cfg.lr_at(e, s, steps) for s in range(steps)) / steps for e in range(epochs)]


def only(epochs: Sequence[int], inside: float, outside: float) -> Callable[[int], float]:
    return lambda e: inside if e in epochs else outside


# --- the window -------------------------------------------------------------------------------


def test_window_is_the_last_fifth_of_phase_one_at_least_one_epoch() -> None:
    assert tail_window(10) == range(8, 10)
    assert tail_window(15) == range(12, 15)  # 0.2·15 in floating point is 3.0000000000000004
    assert tail_window(3) == range(2, 3)  # at least one epoch
    assert tail_window(1) == range(0, 1)
    assert tail_window(0) == range(0)
    assert tail_window(10, 0.5) == range(5, 10)


def test_step_schedule_judges_the_tail_of_phase_one_only() -> None:
    # Phase 1: epochs 1-10; its last 20 %: epochs 9 and 10 (1-based).
    inside = record(history(step_lrs(), 1e-3, only((9, 10), 1.0, 5.0)))
    assert inside.phase1_epochs == 10
    assert trial_verdict(inside, ANGLE_TEST, ())[0] == IN_EQUILIBRIUM
    # One epoch early: epoch 10 is out of the band, so is the mean (1 + 5)/2.
    early = record(history(step_lrs(), 1e-3, only((8, 9), 1.0, 5.0)))
    verdict, ratios = trial_verdict(early, ANGLE_TEST, ())
    assert verdict == OUT_OF_EQUILIBRIUM and ratios["conv1"] == pytest.approx(3.0)
    # After the drop θ_eq changes and θ is far from it: phase 2 is not judged.
    settled = record(history(step_lrs(), 1e-3, lambda e: 1.0 if e <= 10 else 0.01))
    assert trial_verdict(settled, ANGLE_TEST, ())[0] == IN_EQUILIBRIUM


def test_wsd_schedule_judges_the_epochs_before_the_decay() -> None:
    lrs = wsd_lrs()  # 20 epochs, decay over the last 15 % of the steps: from step 1700
    rec = record(history(lrs, 1e-3, only((15, 16, 17), 1.0, 9.0)))
    assert rec.phase1_epochs == 17  # epochs 18-20 have a lower mean η
    assert tail_window(rec.phase1_epochs) == range(13, 17)  # ceil(3.4) = 4 epochs: 14-17
    # Epoch 14 (9.0) is in the window: mean (9 + 1 + 1 + 1)/4 = 3.
    verdict, ratios = trial_verdict(rec, ANGLE_TEST, ())
    assert verdict == OUT_OF_EQUILIBRIUM and ratios["conv1"] == pytest.approx(3.0)
    good = record(history(lrs, 1e-3, only((14, 15, 16, 17), 1.1, 9.0)))
    assert trial_verdict(good, ANGLE_TEST, ())[0] == IN_EQUILIBRIUM


# --- the verdicts -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ratio", "verdict"),
    [(1.0, IN_EQUILIBRIUM), (0.8, IN_EQUILIBRIUM), (1.25, IN_EQUILIBRIUM),
     (0.79, OUT_OF_EQUILIBRIUM), (1.26, OUT_OF_EQUILIBRIUM), (0.1, OUT_OF_EQUILIBRIUM),
     (30.0, OUT_OF_EQUILIBRIUM)],
)  # fmt: skip
def test_the_ratio_of_mean_square_angle_to_theta_eq_squared_is_judged_by_the_band(
    ratio: float, verdict: str
) -> None:
    rec = record(history([0.1] * 5, 1e-3, lambda e: ratio))
    got, ratios = trial_verdict(rec, ANGLE_TEST, ())
    assert got == verdict
    assert set(ratios) == {"conv1", "conv2"}  # fc has no θ_eq: not scale-invariant
    assert ratios["conv1"] == pytest.approx(ratio)


def test_theta_eq_comes_from_the_records_whatever_the_optimizer_constant() -> None:
    # Nesterov's c ≈ 1.41: the records carry θ_eq, so the ratio does not depend on c here.
    c = THEORY["nesterov"].angular_rate
    assert c is not None
    rec = record(history([0.1] * 5, 1e-3, lambda e: 1.1, rate=c))
    assert tail_ratios(rec, ANGLE_TEST, ())["conv1"] == pytest.approx(1.1)


def test_adam_is_judged_by_the_balance_of_its_scale_invariant_layers() -> None:
    assert equilibrium_test("adam") == equilibrium_test("rmsprop") == BALANCE_TEST
    assert equilibrium_test("sgd") == equilibrium_test("adamw") == ANGLE_TEST
    assert equilibrium_test("normalized-sgd") == equilibrium_test("lion") == NO_TEST
    invariant = scale_invariant_layers({"dataset": "cifar10", "norm": "bn", "head": "linear"})
    good = record(history([1e-3] * 10, 1e-3, only((9, 10), 1.1, 3.0), balance=True))
    verdict, ratios = trial_verdict(good, BALANCE_TEST, invariant)
    # conv3/conv4 are not in this model's records; fc (linear head) is not scale-invariant.
    assert verdict == IN_EQUILIBRIUM and set(ratios) == {"conv1", "conv2"}
    assert ratios["conv2"] == pytest.approx(1.1)
    growing = record(history([1e-3] * 10, 1e-3, lambda e: 2.0, balance=True))
    assert trial_verdict(growing, BALANCE_TEST, invariant)[0] == OUT_OF_EQUILIBRIUM
    # The angle test finds no layer with a θ_eq in Adam's records: unknown, never "in".
    assert trial_verdict(good, ANGLE_TEST, invariant)[0] == UNKNOWN
    # With a BN head the classifier is judged too: its balance is in the records.
    with_fc = scale_invariant_layers({"dataset": "cifar10", "norm": "bn", "head": "bn"})
    assert trial_verdict(good, BALANCE_TEST, with_fc)[1].keys() == {"conv1", "conv2", "fc"}


def test_old_histories_without_update_records_are_unknown() -> None:
    old = [
        {"epoch": e, "lr": 0.1, "train_loss": 1.0, "train_error": 0.3, "val_error": 0.2,
         "seconds": 0.1, "layers": {"conv1": {"norm": 2.0, "unit_norm": 0.5, "eff_lr": 0.1}}}
        for e in range(1, 6)
    ]  # fmt: skip
    rec = record(old)
    assert rec.dynamics == {}
    for test in (ANGLE_TEST, BALANCE_TEST, NO_TEST):
        assert trial_verdict(rec, test, ("conv1",))[0] == UNKNOWN
    assert cell_equilibrium([rec], ANGLE_TEST, ()).verdict == UNKNOWN
    assert record([]).phase1_epochs == 0
    assert trial_verdict(record([]), ANGLE_TEST, ())[0] == UNKNOWN  # no history at all


def test_an_unmeasured_layer_makes_unknown_and_an_out_layer_makes_out() -> None:
    h = history([0.1] * 5, 1e-3, lambda e: 1.0)
    for e in h:
        e["layers"]["conv2"]["angle"] = None  # a θ_eq but no θ (a gap in the records)
    assert trial_verdict(record(h), ANGLE_TEST, ())[0] == UNKNOWN
    for e in h:
        e["layers"]["conv1"]["angle"] *= 3  # 9× θ_eq²: out, whatever conv2
    verdict, ratios = trial_verdict(record(h), ANGLE_TEST, ())
    assert verdict == OUT_OF_EQUILIBRIUM and math.isnan(ratios["conv2"])


def test_without_decay_theta_eq_is_zero_and_nothing_is_in_equilibrium() -> None:
    rec = record(history([0.1] * 5, 0.0, lambda e: 1.0), wd=0.0)
    assert rec.dynamics["angle_eq"]["conv1"] == (0.0,) * 5
    # θ_eq = 0 and θ > 0 (planted θ = θ_eq·1 = 0 here): make θ positive.
    h = history([0.1] * 5, 0.0, lambda e: 1.0)
    for epoch in h:
        epoch["layers"]["conv1"]["angle"] = 0.01
    verdict, ratios = trial_verdict(record(h, wd=0.0), ANGLE_TEST, ())
    assert verdict == OUT_OF_EQUILIBRIUM and ratios["conv1"] == math.inf


def test_the_update_correlation_predicts_nesterovs_ratio_and_nothing_for_other_optimizers() -> None:
    # Three seeds whose conv1 updates correlate by 0.10, 0.12, 0.14 over the window (conv2:
    # 0.658, what uncorrelated gradients give Nesterov): the prediction is the theory's for the
    # mean, 0.12, independently computed from ρ, the lag-1 gradient correlation it implies.
    trials = []
    for seed, c in enumerate((0.10, 0.12, 0.14)):
        h = history([0.1] * 10, 1e-3, lambda e: 1.5)
        for epoch in h:
            epoch["layers"]["conv1"]["update_corr"] = c
            epoch["layers"]["conv2"]["update_corr"] = 0.658
        trials.append(record(h, seed=seed))
    cell = cell_equilibrium(trials, ANGLE_TEST, ("conv1", "conv2"), optimizer="nesterov")
    rho = gradient_correlation(MOMENTUM, True, 0.12)
    assert cell.predicted["conv1"] == pytest.approx(
        momentum_rate(MOMENTUM, True, rho) / momentum_rate(MOMENTUM, True)
    )
    assert 1.25 < cell.predicted["conv1"] < 1.35 and cell.predicted["conv2"] == pytest.approx(
        1.0, abs=0.01
    )
    assert cell.to_dict()["predicted"]["conv1"] == pytest.approx(cell.predicted["conv1"])
    # Heavy ball: correlated gradients leave its θ_eq alone; AdamW has no such formula.
    heavy = cell_equilibrium(trials, ANGLE_TEST, ("conv1", "conv2"), optimizer="momentum")
    assert heavy.predicted["conv1"] == pytest.approx(1.0)
    assert cell_equilibrium(trials, ANGLE_TEST, ("conv1",), optimizer="adamw").predicted == {}


def test_a_cell_is_in_equilibrium_when_every_healthy_seed_is() -> None:
    h_in = history([0.1] * 5, 1e-3, lambda e: 1.1)
    h_out = history([0.1] * 5, 1e-3, lambda e: 0.5)
    seeds_in = [record(h_in, seed=s) for s in range(3)]
    cell = cell_equilibrium(seeds_in, ANGLE_TEST, ())
    assert (cell.verdict, cell.n_in, cell.n_seeds) == (IN_EQUILIBRIUM, 3, 3)
    assert cell.ratio == pytest.approx(1.1) and cell.worst_layer in ("conv1", "conv2")
    mixed = cell_equilibrium([*seeds_in, record(h_out, seed=3)], ANGLE_TEST, ())
    assert (mixed.verdict, mixed.n_in, mixed.n_seeds) == (OUT_OF_EQUILIBRIUM, 3, 4)
    assert mixed.ratio == pytest.approx(0.5)  # the seed farthest from 1
    # A diverged seed does not count; an unmeasured one makes the cell unknown.
    diverged = cell_equilibrium([*seeds_in, record(h_out, seed=3, diverged=True)], ANGLE_TEST, ())
    assert (diverged.verdict, diverged.n_seeds) == (IN_EQUILIBRIUM, 3)
    old = record([{"epoch": 1, "lr": 0.1, "layers": {"conv1": {"norm": 1.0}}}], seed=4)
    unknown = cell_equilibrium([*seeds_in, old], ANGLE_TEST, ())
    assert (unknown.verdict, unknown.n_in, unknown.n_seeds) == (UNKNOWN, 3, 4)
    assert cell_equilibrium([], ANGLE_TEST, ()).verdict == UNKNOWN


# --- the invariant layers: the training code's rule, without torch ---------------------------


def test_the_invariant_layers_of_a_study_are_the_training_codes_rule() -> None:
    # One rule (l2bn.train.config), applied to the stored settings; written out here by hand.
    convs = ("conv1", "conv2", "conv3", "conv4")
    want = {
        ("bn", "linear"): convs, ("bn", "bn"): (*convs, "fc"), ("wn", "bn"): (*convs, "fc"),
        ("ln", "linear"): convs, ("none", "linear"): (), ("none", "bn"): ("fc",),
    }  # fmt: skip
    for (norm, head), layers in want.items():
        identity = {"dataset": "cifar10", "norm": norm, "head": head}
        assert scale_invariant_layers(identity) == layers, (norm, head)
    assert scale_invariant_layers({"dataset": "tracking", "norm": "bn"}) == ("w",)
    # A study without a config attr, or with a value this version does not know: TrainConfig's
    # defaults (bn, linear head).
    assert scale_invariant_layers({"norm": None, "head": None}) == convs
    assert scale_invariant_layers({"norm": "groupnorm", "head": "mlp"}) == convs


def test_analysis_never_imports_torch() -> None:
    import subprocess
    import sys

    code = (
        "import sys, l2bn.analysis.pipeline, l2bn.analysis.estimating.equilibrium, "
        "l2bn.analysis.reading.csvfile;"
        "print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# --- through the storage, the pipeline and the views -----------------------------------------


def relaxing(lr: float, wd: float) -> Callable[[int], float]:
    """θ²/θ_eq² per epoch: starts 20× too large and relaxes at η·λ per step (as a run from
    a small init would): in equilibrium by the end of phase 1 when η·λ·T ≳ 5."""
    return lambda epoch: 1 + 20 * math.exp(-2 * lr * wd * STEPS_PER_EPOCH * min(epoch, PHASE1))


def expected(lr: float, wd: float) -> str | None:
    """The planted truth where it is clear: ‖w‖² within 1 % of equilibrium at the end of phase
    1, or still twice it (None in between: a verdict near its band's edge)."""
    left = relaxing(lr, wd)(PHASE1)
    if left <= 1.01:
        return IN_EQUILIBRIUM
    return OUT_OF_EQUILIBRIUM if left >= 2 else None


@pytest.fixture(scope="module")
def storage(tmp_path_factory: pytest.TempPathFactory) -> str:
    url = f"sqlite:///{tmp_path_factory.mktemp('eq') / 'eq.db'}"
    rdb = fast_sqlite(url)
    plant_study(rdb, "eq/sgd", "sgd", NORM_LRS, NORM_WDS, surface(1.0, -4.0), seeds=2,
                norms=norms_law(0.25), dynamics=relaxing, rng_seed=7,
                norms_follow=True)  # fmt: skip

    # Adam: the balance (growth ÷ shrink) is the test, in every conv of the bn net.
    def adam_history(lr: float, wd: float) -> list[dict[str, Any]]:
        lrs = [lr if e <= PHASE1 else lr / 10 for e in range(1, EPOCHS + 1)]
        return history(lrs, wd, relaxing(lr, wd), balance=True, norms_follow=True)

    plant_study(rdb, "eq/adam", "adam", NORM_LRS, NORM_WDS, surface(0.5, -3.0), seeds=1,
                history=adam_history, rng_seed=8)  # fmt: skip
    # Old studies: histories without update records.
    plant_study(rdb, "old/sgd", "sgd", NORM_LRS, NORM_WDS, surface(1.0, -4.0), seeds=1,
                norms=norms_law(0.25), rng_seed=9)  # fmt: skip
    plant_study(rdb, "old/adam", "adam", NORM_LRS, NORM_WDS, surface(0.5, -3.0), seeds=1,
                norms=norms_law(1 / 3), rng_seed=10)  # fmt: skip
    return url


@pytest.mark.parametrize("bulk_sql", [True, False])
def test_loading_reads_every_update_record(storage: str, bulk_sql: bool) -> None:
    (study,) = load_studies(storage, ("eq/sgd",), bulk_sql=bulk_sql)[0]
    t = study.trials[0]
    assert set(t.dynamics) == {"angle", "angle_eq", "radial", "tangential", "grad_norm"}
    assert set(t.dynamics["angle"]) == {"conv1", "conv2", "fc"}
    assert set(t.dynamics["angle_eq"]) == {"conv1", "conv2"}  # fc: null, not recorded
    eq = math.sqrt(2 * t.lr * t.weight_decay)
    assert t.dynamics["angle_eq"]["conv1"][0] == pytest.approx(eq)
    assert len(t.dynamics["angle"]["conv1"]) == EPOCHS
    assert t.metrics["val_loss"]  # the history's per-epoch val_loss


def test_storage_cells_get_the_planted_verdicts(storage: str) -> None:
    report = analyze(AnalyzeConfig(storage=storage, studies=("eq/sgd", "eq/adam"), bootstrap=0))
    groups = {g.optimizer: g for g in report.groups}
    for name, test in (("sgd", ANGLE_TEST), ("adam", BALANCE_TEST)):
        g = groups[name]
        assert g.equilibrium_test == test
        clear = [c for c in g.cells if expected(c.lr, c.weight_decay) is not None]
        verdicts = {(c.lr, c.weight_decay): c.equilibrium.verdict for c in clear}
        want = {(c.lr, c.weight_decay): expected(c.lr, c.weight_decay) for c in clear}
        assert len(clear) >= 25 and verdicts == want, name
        assert IN_EQUILIBRIUM in verdicts.values() and OUT_OF_EQUILIBRIUM in verdicts.values()
        for o in g.optima:  # the optimum's verdict is its grid cell's
            cell = next(
                c for c in g.cells if c.weight_decay == o.weight_decay and c.lr == o.lr_grid
            )
            assert o.equilibrium == cell.equilibrium
        s = g.optima_equilibrium
        assert s["total"] == len(g.optima) and s["in"] + s["out"] + s["unknown"] == s["total"]
        assert s["in"] == sum(o.equilibrium.verdict == IN_EQUILIBRIUM for o in g.optima)
        if s["out"]:
            assert any("not in equilibrium" in w for w in g.warnings)
    sgd = groups["sgd"]
    assert all(c.equilibrium.n_seeds == 2 for c in sgd.cells)
    assert set(groups["adam"].cells[0].equilibrium.ratios) == {"conv1", "conv2"}


@pytest.mark.parametrize("study", ["old/sgd", "old/adam"])
def test_old_studies_are_unknown_and_still_analyzed(storage: str, study: str) -> None:
    (g,) = analyze(AnalyzeConfig(storage=storage, studies=(study,), bootstrap=0)).groups
    assert {c.equilibrium.verdict for c in g.cells} == {UNKNOWN}
    assert g.optima_equilibrium["in"] == 0
    assert g.optima_equilibrium["unknown"] == g.optima_equilibrium["total"]
    assert not any("equilibrium" in w and "optimum" in w for w in g.warnings)
    assert g.norms and g.norms[0].n_cells > 0  # the clock still picks the norm fit's cells
    assert {n.cell_filter for n in g.norms} == {"clock c·η·λ·T ≥ 5"}


def test_json_table_and_page_show_the_verdicts(storage: str, tmp_path: Path) -> None:
    from rich.console import Console

    from l2bn.render import render_report

    report = run_analysis(
        AnalyzeConfig(
            storage=storage, studies=("eq/sgd",), bootstrap=0,
            json_path=tmp_path / "r.json", report_path=tmp_path / "r.html",
            plots_dir=tmp_path / "figs",
        )
    )  # fmt: skip
    (g,) = report.groups
    d = json.loads((tmp_path / "r.json").read_text())["groups"][0]
    s = d["optima_equilibrium"]
    assert s["test"] == "stationarity" and s["theta_test"] == "angle"
    assert s["band"] == [0.8, 1.25] and s["tail"] == 0.2
    assert [o["equilibrium"]["verdict"] for o in d["optima"]] == [
        o.equilibrium.verdict for o in g.optima
    ]
    console = Console(record=True, width=200)
    console.print(render_report(report))
    text = console.export_text()
    assert "equilibrium (stationarity; θ test)" in text and "⟨θ²⟩/θ_eq²" in text
    assert f"{s['in']} of {s['total']} optimum cells in equilibrium" in text
    page = (tmp_path / "r.html").read_text()
    assert "Equilibrium by measurement" in page and "class='verdict v-in'" in page
    assert "data-figure='equilibrium'" in page
    assert (tmp_path / "figs" / f"{g.slug}_equilibrium.png").stat().st_size > 10_000


def test_export_and_csvload_keep_the_verdicts(storage: str, tmp_path: Path) -> None:
    out = tmp_path / "trials.csv"
    studies = ("eq/sgd", "eq/adam", "old/sgd", "old/adam")
    cfg = AnalyzeConfig(storage=storage, studies=studies, bootstrap=0)
    first = run_analysis(replace(cfg, csv_path=out))
    rows = list(csv.DictReader(out.open()))
    assert {"eq_ratio_conv1", "eq_ratio_conv2", "equilibrium_test", "val_loss"} <= set(rows[0])
    assert "eq_ratio_fc" not in rows[0]  # judges no trial (sgd: no θ_eq; adam: linear head)
    by_study = {r["study"]: r for r in rows}
    assert by_study["eq/sgd"]["equilibrium_test"] == "angle"
    assert by_study["eq/adam"]["equilibrium_test"] == "balance"
    # No θ_eq in an old study's records: no layer judges it (unknown when read back).
    assert by_study["old/sgd"]["eq_ratio_conv1"] == ""
    nan_rows = [r for r in rows if r["study"] == "eq/sgd" and r["eq_ratio_conv1"] == "nan"]
    assert not nan_rows  # every planted sgd trial measured its judged layers
    # Adam's judged layers come from the settings: unmeasured in an old study, "nan".
    assert by_study["old/adam"]["eq_ratio_conv1"] == "nan"
    again = analyze(AnalyzeConfig(from_csv=out, bootstrap=0))
    for a, b in zip(first.groups, again.groups, strict=True):
        assert a.optimizer == b.optimizer and a.equilibrium_test == b.equilibrium_test
        for ca, cb in zip(a.cells, b.cells, strict=True):
            assert (ca.equilibrium.verdict, ca.equilibrium.n_in, ca.equilibrium.n_seeds) == (
                cb.equilibrium.verdict, cb.equilibrium.n_in, cb.equilibrium.n_seeds,
            )  # fmt: skip
            assert ca.equilibrium.ratios.keys() == cb.equilibrium.ratios.keys()
            for layer, r in ca.equilibrium.ratios.items():
                assert cb.equilibrium.ratios[layer] == pytest.approx(r, nan_ok=True)
        # The norm fit picks its cells by the same measured verdicts on both sides.
        assert [(n.cell_filter, n.n_cells) for n in a.norms] == [
            (n.cell_filter, n.n_cells) for n in b.norms
        ]
        # eq/*: measured verdicts; old/*: every verdict unknown, so the clock.
        chosen = "measured" if a.studies[0].startswith("eq/") else "clock c·η·λ·T ≥ 5"
        assert {n.cell_filter for n in a.norms} == {chosen}
    # The update records, summarized per layer over the same window (here the last epoch of
    # phase 1), are the planted ones (planting.with_dynamics), in closed form.
    cols = [c for c in rows[0] if SUMMARY_COLUMN.match(c)]
    quantities = ("angle", "angle_eq", "grad_norm", "radial", "tangential", "balance")
    assert cols == [f"{q}_{layer}" for q in quantities for layer in ("conv1", "conv2", "fc")
                    if (q, layer) != ("angle_eq", "fc")]  # fmt: skip
    for row in rows:
        want = planted_summary(row["study"], float(row["lr"]), float(row["weight_decay"]))
        got = {c: float(row[c]) for c in cols if row[c] != ""}
        assert got.keys() == want.keys(), row["study"]
        for c, value in want.items():
            assert got[c] == pytest.approx(value, rel=1e-12), (row["study"], c)
    # Read back and written again: the same summaries, to the last digit.
    assert all(t.tail_summary is not None for g in again.groups for t in g.trials)
    out2 = tmp_path / "again.csv"
    write_csv(again, out2)
    rows2 = {(r["study"], r["trial"]): r for r in csv.DictReader(out2.open())}
    assert len(rows2) == len(rows)
    for row in rows:
        back = rows2[(row["study"], row["trial"])]
        assert {c: back.get(c, "") for c in cols} == {c: row[c] for c in cols}
    # An export from before the columns existed: every cell unknown, nothing breaks, and the
    # norm fit falls back to the clock.
    old = tmp_path / "old.csv"
    with old.open("w", newline="") as f:
        keep = [
            c for c in rows[0]
            if not c.startswith("eq_ratio_") and c != "equilibrium_test"
            and not SUMMARY_COLUMN.match(c)
        ]  # fmt: skip
        w = csv.DictWriter(f, keep, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    for g in analyze(AnalyzeConfig(from_csv=old, bootstrap=0)).groups:
        assert {c.equilibrium.verdict for c in g.cells} == {UNKNOWN}
        assert {n.cell_filter for n in g.norms} == {"clock c·η·λ·T ≥ 5"}
        assert all(t.tail_summary is None for t in g.trials)


SUMMARY_COLUMN = re.compile(r"^(angle|angle_eq|grad_norm|radial|tangential|balance)_")


def planted_summary(study: str, lr: float, wd: float) -> dict[str, float]:
    """The export's summaries of a trial of the ``storage`` fixture over the last epoch of
    phase 1, from how planting.with_dynamics planted them (θ_eq = √(2·η·λ), θ = θ_eq·√r in
    conv1/conv2 and 0.01·√r in fc, radial −θ_eq²/2, tangential θ_eq, G̃ = 1, balance = r
    for Adam); none for the old studies."""
    if study.startswith("old/"):
        return {}
    eq, r = math.sqrt(2 * lr * wd), relaxing(lr, wd)(PHASE1)
    out: dict[str, float] = {}
    for layer in ("conv1", "conv2", "fc"):
        invariant = layer != "fc"
        out[f"angle_{layer}"] = (eq if invariant else 0.01) * math.sqrt(r)
        out[f"grad_norm_{layer}"] = 1.0
        out[f"radial_{layer}"] = -0.5 * eq**2
        out[f"tangential_{layer}"] = eq
        if study == "eq/adam":
            out[f"balance_{layer}"] = r  # Adam's records: a balance, no θ_eq
        elif invariant:
            out[f"angle_eq_{layer}"] = eq  # SGD's: θ_eq in conv1/conv2; no balance recorded
    return out


def test_the_summaries_reduce_the_window_by_rms_and_mean() -> None:
    # Phase 1 = 10 epochs, window = epochs 9 and 10 (1-based), which differ.
    h = history(step_lrs(), 1e-3, only((9,), 1.0, 4.0), balance=True)
    for e in h:
        for layer, rec in e["layers"].items():
            rec.update(grad_norm=float(e["epoch"]), radial=-0.1 * e["epoch"],
                       tangential=0.2 * e["epoch"])  # fmt: skip
            if layer == "conv2":
                rec["angle_eq"] = 0.03  # (with balance=True the planted θ_eq is null)
    # Epoch 10: fc only grew (radial ≥ 0, no balance recorded): ∞, as in the balance test.
    h[9]["layers"]["fc"].update(balance=None, radial=0.5)
    got = tail_summary(record(h))
    eq = math.sqrt(2 * 0.1 * 1e-3)
    assert got["angle"]["conv1"] == pytest.approx(eq * math.sqrt((1.0 + 4.0) / 2))  # √mean θ²
    assert got["angle_eq"] == {"conv2": pytest.approx(0.03)}  # only where recorded
    assert got["grad_norm"]["conv1"] == pytest.approx(math.sqrt((9**2 + 10**2) / 2))  # RMS
    assert got["radial"]["conv2"] == pytest.approx(-0.95)  # mean
    assert got["radial"]["fc"] == pytest.approx((-0.9 + 0.5) / 2)
    assert got["tangential"]["fc"] == pytest.approx(math.sqrt((1.8**2 + 2**2) / 2))  # RMS
    assert got["balance"]["conv1"] == pytest.approx((1.0 + 4.0) / 2)  # mean
    assert got["balance"]["fc"] == math.inf
    assert tail_summary(record(h), tail=0.1)["grad_norm"]["conv1"] == pytest.approx(10.0)
    # Old histories: no summary at all.
    old = [{"epoch": 1, "lr": 0.1, "layers": {"conv1": {"norm": 1.0}}}]
    assert tail_summary(record(old)) == {}


def test_committed_exports_still_analyze() -> None:
    exports = sorted((Path(__file__).resolve().parents[2] / "docs").rglob("trials.csv"))
    if not exports:
        pytest.skip("no committed export")
    report = analyze(AnalyzeConfig(from_csv=exports[0], bootstrap=0))
    for g in report.groups:
        assert {c.equilibrium.verdict for c in g.cells} == {UNKNOWN}
        assert all(n.cell_filter.startswith("clock c·η·λ·T ≥ ") for n in g.norms)


def test_band_and_tail_are_settings() -> None:
    cfg = AnalyzeConfig()
    assert cfg.equilibrium_band == (0.8, 1.25) and cfg.equilibrium_tail == 0.2
    assert cfg.to_dict()["equilibrium_band"] == [0.8, 1.25]
    with pytest.raises(ConfigError, match="equilibrium-band"):
        AnalyzeConfig(equilibrium_band=(1.1, 1.25))
    with pytest.raises(ConfigError, match="equilibrium-tail"):
        AnalyzeConfig(equilibrium_tail=0.0)
    wide = AnalyzeConfig(equilibrium_band=(0.04, 25.0))
    rec = record(history([0.1] * 5, 1e-3, lambda e: 10.0))
    band = wide.equilibrium_band
    assert trial_verdict(rec, ANGLE_TEST, (), band)[0] == IN_EQUILIBRIUM


# --- the metric's default: the studies' stored objective ---------------------------------------


def _objective_attrs(objective: str | None, where: str = "top") -> dict[str, Any]:
    attrs = sweep_attrs("sgd")  # stores the sweep's objective at the config's top level
    config = json.loads(attrs["config"])
    del config["objective"]  # an older study's config
    if where == "top" and objective is not None:
        config["objective"] = objective
    elif where == "attr" and objective is not None:
        attrs["objective"] = objective
    attrs["config"] = json.dumps(config)
    return attrs


def _plant_objective(url: str, name: str, objective: str | None, where: str = "top") -> None:
    """A study whose trials' value is its objective: the loss dips at k = ½, the error at 1."""
    loss, error = surface(0.5, -6.0 - 0.5 * math.log(1e-3)), surface(1.0)  # equal at λ = 1e-3
    rng = np.random.default_rng(len(name))

    def h(lr: float, wd: float) -> list[dict[str, Any]]:  # called once per seed
        return [{"epoch": 1, "lr": lr, "val_error": error(lr, wd) + 0.003 * rng.standard_normal(),
                 "val_loss": 2 * loss(lr, wd), "layers": {}}]  # fmt: skip

    value = (lambda lr, wd: 2 * loss(lr, wd)) if objective == "val_loss" else error
    attrs = _objective_attrs(objective, where) | {"dataset": "obj"}
    plant_study(url, name, "sgd", centred_grid(1.0, n=13), [1e-4, 1e-3, 1e-2], value,
                seeds=2, noise=0.003, history=h, attrs=attrs)  # fmt: skip


@pytest.mark.parametrize("where", ["top", "attr"])
def test_the_default_metric_is_the_stored_objective(tmp_path: Path, where: str) -> None:
    url = f"sqlite:///{tmp_path / 'o.db'}"
    _plant_objective(url, "a/sgd", "val_loss", where)
    (study,) = load_studies(url)[0]
    assert study.objective == "val_loss"
    t = study.trials[0]
    assert t.val_loss > 1.0 > t.val_error  # the value is the loss; the error from the history
    (g,) = analyze(AnalyzeConfig(storage=url, bootstrap=0)).groups
    assert g.metric == "val_loss"
    assert g.scaling.k.value == pytest.approx(0.5, abs=0.05)
    explicit = analyze(AnalyzeConfig(storage=url, metric="val_error", bootstrap=0)).groups[0]
    assert explicit.metric == "val_error"  # --metric wins
    assert explicit.scaling.k.value == pytest.approx(1.0, abs=0.05)


def test_studies_that_disagree_fall_back_to_val_error_with_a_note(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'o.db'}"
    _plant_objective(url, "a/sgd", "val_loss")
    _plant_objective(url, "b/sgd", "val_error")
    groups = analyze(AnalyzeConfig(storage=url, bootstrap=0)).groups
    # The objective is not a training setting: one group, pooled.
    (g,) = groups
    assert g.metric == "val_error"
    assert any("stored objectives differ (val_error, val_loss)" in w for w in g.warnings)


def test_old_studies_default_to_val_error(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'o.db'}"
    _plant_objective(url, "a/sgd", None)
    (study,) = load_studies(url)[0]
    assert study.objective is None
    (g,) = analyze(AnalyzeConfig(storage=url, bootstrap=0)).groups
    assert g.metric == "val_error" and not any("objective" in w for w in g.warnings)


# --- the tracking toy: real runs whose answer is known ----------------------------------------


def _sweep_study(storage: Any, name: str, optimizer: str, **data: Any) -> None:
    """Train a sweep's grid with the engine (l2bn.train.engine.train_many, every point side by
    side) and store it as ``l2bn sweep`` does: its study attrs, params, value and user attrs."""
    import optuna

    from l2bn.sweep.spec import parse_sweep
    from l2bn.sweep.study import distributions, objective_value, result_attrs, study_attrs
    from l2bn.train.engine import train_many

    spec = {"name": name, "dataset": "tracking", "device": "cpu", "seeds": [0],
            "optimizers": {optimizer: {}}, **data}  # fmt: skip
    (sweep,) = parse_sweep(spec).optimizers.values()
    points = sweep.points()
    results = train_many([sweep.config_for(p) for p in points])
    study = optuna.create_study(storage=storage, study_name=sweep.study_name)
    for key, value in study_attrs(sweep).items():
        study.set_user_attr(key, value)
    dists = distributions(sweep)
    study.add_trials([
        optuna.trial.create_trial(
            params=p.params(), distributions=dists, value=objective_value(sweep.objective, r),
            user_attrs=result_attrs(r),
        )
        for p, r in zip(points, results, strict=True)
    ])  # fmt: skip


@pytest.fixture(scope="module")
def tracking(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Studies of the tracking toy: long runs with η·λ·T ≫ 1 (equilibrium), and short ones
    started 8× too large (‖w₀‖ far above its equilibrium, η·λ·T ≪ 1)."""
    pytest.importorskip("torch")
    url = f"sqlite:///{tmp_path_factory.mktemp('toy') / 'toy.db'}"
    rdb = fast_sqlite(url)
    long = {"epochs": 10, "schedule": "constant", "weight_decay": [0.01, 0.03]}
    far = {"epochs": 2, "schedule": "constant", "init_scale": 8.0,
           "weight_decay": [1e-3, 3e-3]}  # fmt: skip
    _sweep_study(rdb, "long", "sgd", lr=[0.1, 0.2], **long)
    _sweep_study(rdb, "far", "sgd", lr=[0.003, 0.01], **far)
    _sweep_study(rdb, "long", "adam", lr=[0.3, 1.0], **long)
    _sweep_study(rdb, "far", "adam", lr=[3e-4, 1e-3], **far)
    # η ÷ 10 after epoch 6, or a linear decay over the last 30 %: phase 1 is judged, not the
    # epochs after it, where θ falls 10× faster than θ_eq.
    _sweep_study(rdb, "step", "sgd", lr=[0.1, 0.2], epochs=10, lr_drops=[0.6],
                 weight_decay=[0.01, 0.03])  # fmt: skip
    _sweep_study(rdb, "wsd", "sgd", lr=[0.1, 0.2], epochs=10, schedule="wsd",
                 decay_fraction=0.3, weight_decay=[0.01, 0.03])  # fmt: skip
    return url


def test_tracking_toy_long_runs_are_in_equilibrium_and_far_ones_are_not(tracking: str) -> None:
    (studies, _) = load_studies(tracking)
    sample = studies[0].trials[0]
    if "angle" not in sample.dynamics:
        pytest.fail("the engine's records carry no per-layer angle: l2bn.train.records")
    report = analyze(AnalyzeConfig(storage=tracking, bootstrap=0))
    groups = {g.studies[0]: g for g in report.groups}
    assert set(groups) == {"long/sgd", "far/sgd", "long/adam", "far/adam", "step/sgd", "wsd/sgd"}
    expected_verdict = {"long": IN_EQUILIBRIUM, "far": OUT_OF_EQUILIBRIUM,
                        "step": IN_EQUILIBRIUM, "wsd": IN_EQUILIBRIUM}  # fmt: skip
    for name, g in groups.items():
        want = expected_verdict[name.split("/")[0]]
        test = BALANCE_TEST if g.optimizer == "adam" else ANGLE_TEST
        assert g.equilibrium_test == test, name
        for c in g.cells:
            e = c.equilibrium
            assert set(e.ratios) == {"w"}, name  # the toy's one scale-invariant layer
            assert e.verdict == want, (name, c.lr, c.weight_decay, e.ratios)
            if want == IN_EQUILIBRIUM:
                assert e.ratio == pytest.approx(1.0, abs=0.2), (name, c.lr, c.weight_decay)
            else:  # ‖w‖ 8× too large: θ² two orders below θ_eq², the norm still shrinking
                assert e.ratio < 0.2, (name, c.lr, c.weight_decay)
        s = g.optima_equilibrium
        assert s["total"] == 2 and s[want] == 2, name
        far_out = [w for w in g.warnings if "not in equilibrium" in w]
        assert bool(far_out) == (want == OUT_OF_EQUILIBRIUM), name
    # The window matters: after the drop (and in the decay) θ falls below θ_eq.
    for name in ("step/sgd", "wsd/sgd"):
        for t in groups[name].trials:
            assert t.phase1_epochs == (6 if name == "step/sgd" else 7)
            last = t.dynamics["angle"]["w"][-1] ** 2 / t.dynamics["angle_eq"]["w"][-1] ** 2
            assert not 0.8 <= last <= 1.25, (name, t.lr, t.weight_decay, last)


def test_a_growing_norm_without_shrink_is_out_not_unknown() -> None:
    # The records write no balance when nothing shrinks (mean radial change ≥ 0): ‖w‖ only
    # grew, growth ÷ shrink is infinite, not unmeasured.
    h = history([1e-3] * 5, 1e-3, lambda e: 1.0, balance=True)
    for e in h:
        e["layers"]["conv1"].update(balance=None, radial=0.002)
    invariant = ("conv1", "conv2")
    verdict, ratios = trial_verdict(record(h), BALANCE_TEST, invariant)
    assert verdict == OUT_OF_EQUILIBRIUM and ratios["conv1"] == math.inf
    for e in h:
        e["layers"]["conv1"].update(radial=None)  # nothing recorded at all: unknown
    assert trial_verdict(record(h), BALANCE_TEST, invariant)[0] == UNKNOWN


def test_a_layer_with_no_measured_pull_is_told_in_words_not_as_infinity() -> None:
    # Adam's conv1 in headline v2: the measured shrink (−2 × mean radial change) is ≤ 0 and
    # the norm grew, so no distance to an equilibrium exists to print; "∞"/"inf" misled.
    h = history([1e-3] * 10, 1e-3, lambda e: 1.0, balance=True)
    for e in h:
        e["layers"]["conv1"].update(balance=None, radial=0.002, norm=2.0 * 1.01 ** e["epoch"])
    st = stationarity(record(h), "conv1", "adam")
    assert st.balance == math.inf and st.memory == -math.inf
    e = Equilibrium(OUT_OF_EQUILIBRIUM, BALANCE_TEST, memory={"conv1": st.memory},
                    balance={"conv1": st.balance})  # fmt: skip
    words = e.describe()
    assert words == "conv1: no pull toward equilibrium measured, ‖w‖ grew over the window"
    shown = render.equilibrium_cell(e).plain
    assert "no pull toward equilibrium measured" in shown and "∞" not in shown
    # A pulled layer still reads as its distance to equilibrium and its balance.
    pulled = Equilibrium(OUT_OF_EQUILIBRIUM, BALANCE_TEST, memory={"conv1": math.log(2.61)},
                         balance={"conv1": 0.0207})  # fmt: skip
    assert pulled.describe() == "conv1: ‖w‖² +161% from equilibrium, growth ÷ shrink 0.0207"
