"""l2bn.analysis.pipeline: grouping and the per-group analysis, on planted scaling laws."""

from __future__ import annotations

import math
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from l2bn.analysis.estimating.collapse import COLLAPSES
from l2bn.analysis.estimating.stats import verdict
from l2bn.analysis.fitted import FITS, INCONCLUSIVE
from l2bn.analysis.pipeline import (
    DIFFERENT,
    EQUIVALENT,
    UNDETERMINED,
    AnalysisReport,
    AnalyzeConfig,
    GroupData,
    analyze,
    analyze_group,
    group_studies,
)
from l2bn.analysis.reading.records import TrialRecord
from l2bn.analysis.reading.studies import load_studies
from l2bn.errors import AnalysisError
from l2bn.render import render_report

from .planting import (
    EPOCHS,
    NORM_LRS,
    NORM_WDS,
    PHASE1,
    STEPS_PER_EPOCH,
    centred_grid,
    error_surface,
    expected_equilibrium_cells,
    log_grid,
    norms_law,
    one_group,
    plant_study,
    planted_history,
    relaxing,
    surface,
    sweep_attrs,
)


def test_the_analysis_imports_no_training_code() -> None:
    code = (
        "import sys, l2bn.analysis.pipeline, l2bn.analysis.presenting.export; "
        "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('l2bn.train')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "['l2bn.train', 'l2bn.train.config']"  # defaults of old studies


# --- η* and k -----------------------------------------------------------------------------


@pytest.mark.parametrize(("study", "k"), [("p/sgd", 1.0), ("p/adam", 0.5)])
def test_planted_k_is_recovered_with_a_covering_ci(planted: str, study: str, k: float) -> None:
    g = one_group(planted, study)
    est = g.scaling.k
    assert est.method == "collapse/seed-jackknife-t"  # 2 seeds per cell, shared across λ
    assert est.value == pytest.approx(k, abs=0.01)
    # Two seeds of one surface with independent noise 0.005: the interval is a few thousandths
    # wide, and does not hold the curve's own approximation error (≤ 0.002 in k here).
    assert est.ci_low - 0.002 <= k <= est.ci_high + 0.002
    assert est.ci_high - est.ci_low < 0.1  # informative, not just wide
    assert g.scaling.n_lambda == 3 and g.scaling.r_squared > 0.99
    assert g.scaling.theory == k and g.scaling.verdict == EQUIVALENT
    # The primary is the whole-surface collapse; every row follows its curve.
    assert g.collapse is not None and g.collapse.k == est and g.collapse.status == COLLAPSES
    assert all(r.verdict == FITS and r.used for r in g.collapse.rows)
    assert len(g.collapse.curve_x) == len(g.collapse.curve_y) > 10
    # The floor estimators beside it, each with its interval, agree.
    assert set(g.k_estimates) == {"collapse", "joint", "per_lambda"}
    assert g.k_estimates["collapse"].k == est
    for name, ke in g.k_estimates.items():
        assert ke.k.value == pytest.approx(k, abs=0.05), name
        assert ke.k.determined and ke.verdict == EQUIVALENT, name
    assert g.k_estimates["joint"].k.method == "joint/seed-jackknife-t"
    assert not any("disagree" in w for w in g.warnings)
    # η* itself: the planted optimum exp(-6)·λ^-k, found between grid points, in its CI.
    for o in g.optima:
        assert o.used and not o.edge and o.n_band >= 3
        # (within a tenth of a grid step: the local quadratic's misfit of the dip)
        assert math.log(o.lr_opt) == pytest.approx(-6.0 - k * math.log(o.weight_decay), abs=0.07)
        assert o.lr_ci_low < o.lr_opt < o.lr_ci_high
    assert any(o.lr_opt != o.lr_grid for o in g.optima)
    assert g.noise_source == "seeds" and g.noise_sd == pytest.approx(0.005, rel=0.3)
    assert not g.independent_rows


def test_cluster_bootstrap_is_deterministic(planted: str) -> None:
    # --interval bootstrap is the floor estimators' (the primary's is the jackknife).
    a = one_group(planted, "p/adam", interval="bootstrap").k_estimates["joint"].k
    b = one_group(planted, "p/adam", interval="bootstrap").k_estimates["joint"].k
    assert a.method == "joint/seed-cluster-bootstrap"
    assert (a.ci_low, a.ci_high) == (b.ci_low, b.ci_high)
    # The bootstrap's seed does not move the estimate.
    c = one_group(planted, "p/adam", interval="bootstrap", seed=1).k_estimates["joint"].k
    assert c.value == a.value


def test_theory_mismatch_is_different(planted: str) -> None:
    # Adam's data, labelled as SGD (k = 1 predicted, ½ planted): the verdict must say so.
    report = analyze(AnalyzeConfig(storage=planted, studies=("p/adam",)))
    g = report.groups[0]
    assert not g.scaling.k.covers(1.0)
    assert verdict(g.scaling.k, 1.0, margin=0.1) == DIFFERENT


def test_normalized_sgd_eta_star_does_not_depend_on_lambda(planted: str) -> None:
    g = one_group(planted, "p/normalized-sgd")
    assert g.scaling.theory == 0.0
    # Its η grid steps 1.5 times the dip's width (7 η over 4 decades): the curve cannot quite
    # follow a valley that spans two cells, and k is off by a few hundredths, beyond its
    # narrow interval (docs/method.md: the interval holds no approximation error), but well
    # within the verdict's margin. (3 seeds: t on 2 degrees of freedom, 4.3 × a stderr of
    # 0.002; before the profile's third pass the replicates' k snapped to its 0.025 lattice and
    # the interval was half as wide.)
    assert abs(g.scaling.k.value) < 0.05 and g.scaling.k.ci_high - g.scaling.k.ci_low < 0.08
    assert g.scaling.verdict == EQUIVALENT


def test_one_seed_uses_the_joint_fits_t_interval_and_says_what_it_cannot_see(
    planted: str,
) -> None:
    g = one_group(planted, "one/momentum")
    est = g.scaling.k
    # The primary: no clusters to resample, so no interval, rather than one of cells.
    assert est.method == "collapse/none" and est.n == 4
    assert est.value == pytest.approx(1.0, abs=0.05) and not est.determined
    assert g.scaling.verdict == INCONCLUSIVE
    joint = g.k_estimates["joint"].k
    assert joint.method == "joint/delta-t" and joint.covers(1.0)
    assert any(w.startswith("1 seed: no independent clusters to resample") for w in g.warnings)
    assert g.noise_source == "joint-fit residuals"


def test_independent_lambda_rows_are_detected_from_the_seeds(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'ind.db'}"
    wds = [1e-4, 1e-3, 1e-2]
    rng = np.random.default_rng(0)
    trials = [
        _record(lr, wd, row * 2 + s, error_surface(lr, wd, 1.0) + 0.005 * rng.standard_normal())
        for row, wd in enumerate(wds)
        for lr in centred_grid(1.0)(wd)
        for s in range(2)
    ]
    g = analyze_group(GroupData("sgd", "bn", "ind", ("ind/sgd",), tuple(trials)))
    assert g.independent_rows and g.scaling.k.method == "collapse/(λ, seed)-jackknife-t"
    assert g.scaling.k.covers(1.0) and g.scaling.verdict == EQUIVALENT
    assert any("independent seeds" in w for w in g.warnings)
    del url


def _record(lr: float, wd: float, seed: int, value: float, **extra: Any) -> TrialRecord:
    return TrialRecord(
        study="mem/sgd", number=seed, lr=lr, weight_decay=wd, seed=seed, val_error=float(value),
        test_error=math.nan, train_loss=math.nan, diverged=False, steps_per_epoch=None,
        epoch_lrs=(), norms={}, **extra,
    )  # fmt: skip


def test_edge_minimum_is_flagged_and_the_whole_surface_still_reads_k(planted: str) -> None:
    g = one_group(planted, "edge/nesterov")
    edges = [o for o in g.optima if o.edge]
    assert [o.weight_decay for o in edges] == [0.1]
    assert "extend the grid" in (edges[0].note or "")
    assert any("λ=0.1" in w and "extend the grid" in w for w in g.warnings)
    # The floor estimators leave the edge row out; the primary reads its wall.
    assert g.k_estimates["joint"].k.n == 3
    assert edges[0].used and g.scaling.n_lambda == 4
    assert g.scaling.k.value == pytest.approx(1.0, abs=0.05)


def test_one_interior_optimum_leaves_the_floor_estimators_undetermined(planted: str) -> None:
    # With λ restricted so that only one interior η* is left, η* per λ has no slope; nor has
    # the whole surface: the other row sits at chance level but for one cell, so any k puts it
    # on the curve's plateau, and the profile's minimum runs to a bound: no estimate, said.
    studies, _ = load_studies(planted, ["edge/nesterov"])
    (data,) = group_studies(studies)
    kept = tuple(t for t in data.trials if t.weight_decay in (1e-4, 1e-1))
    g = analyze_group(type(data)(data.optimizer, data.norm, data.dataset, data.studies, kept))
    joint = g.k_estimates["joint"]
    assert joint.verdict == UNDETERMINED and math.isnan(joint.k.value)
    assert math.isnan(g.scaling.k.value) and g.scaling.verdict == UNDETERMINED
    assert g.collapse is not None and "bound" in (g.collapse.reason or "")
    assert any("primary k: the profile's minimum lies on a bound" in w for w in g.warnings)


def test_single_lambda_study_is_a_clear_error(planted: str) -> None:
    with pytest.raises(AnalysisError, match=r"single weight_decay value \(0\.001\).*≥ 2 λ"):
        analyze(AnalyzeConfig(storage=planted, studies=("single/sgd",)))


def test_flat_lambda_column_has_no_minimum_and_is_left_out() -> None:
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
    # λ = 1: every η at chance level (say, all diverged); its argmin is pure noise: its range
    # over η is within the noise of the cell means.
    trials += [
        record(lr, 1.0, s, 0.9 + 0.005 * float(rng.standard_normal()))
        for lr in lrs(1e-2)
        for s in range(2)
    ]
    g = analyze_group(GroupData("sgd", "bn", "mem", ("mem/sgd",), tuple(trials)))
    flat = next(o for o in g.optima if o.weight_decay == 1.0)
    assert "no clear minimum" in (flat.note or "") or flat.edge
    assert any("λ=1: " in w and "extend the grid" in w for w in g.warnings)
    assert g.k_estimates["joint"].k.n == 3  # the floor estimators leave it out
    # On the whole surface the flat row lies beyond the others' span (chance level, far up the
    # wall): nothing to compare it with, and nothing it moves.
    assert g.scaling.k.covers(1.0) and g.scaling.k.value == pytest.approx(1.0, abs=0.05)


# --- norm exponents -----------------------------------------------------------------------


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
    for est in (conv1.a, conv1.b, conv1.p):
        assert est.value == pytest.approx(a, abs=0.02) and est.covers(a)
        assert est.method == "ols-t" and est.n == n_eq
    assert conv1.q.value == pytest.approx(0.0, abs=0.02) and conv1.memory == EQUIVALENT
    assert conv1.theory == pytest.approx(a) and conv1.verdict == EQUIVALENT
    assert conv1.r_squared > 0.99
    # Each layer gets its own fit: conv2 grows as η^{2a} λ^-a, so p = 2a and q = s − a − 2a·k;
    # fc not at all.
    assert conv2.p.value == pytest.approx(2 * a, abs=0.02) and conv2.verdict == DIFFERENT
    q = conv2.s - a - 2 * a * conv2.k
    assert conv2.q.value == pytest.approx(q, abs=0.02) and conv2.memory == DIFFERENT
    assert fc.a.covers(0.0) and fc.b.covers(0.0)
    # The column test: along η·λ^k = const, conv1's ‖w‖·λ^s is constant.
    cols = [c for c in g.columns if c.quantity == "norm:conv1"]
    assert cols and all(c.verdict != "varies" for c in cols)
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


def test_diverged_trials_are_counted_and_kept_out_of_norm_fits() -> None:
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


# --- grouping by training identity --------------------------------------------------------


def test_default_selects_every_l2bn_study_and_groups_them(planted: str) -> None:
    report = analyze(AnalyzeConfig(storage=planted, bootstrap=50))
    labels = {(g.optimizer, g.dataset) for g in report.groups}
    assert ("sgd", "p") in labels and ("rmsprop", "n") in labels
    assert all(g.optimizer for g in report.groups)  # "not-l2bn" was not picked up
    assert any("single/sgd" in w for w in report.warnings)  # skipped, not fatal
    # Planted studies have no config: each is its own group, and none is told apart further.
    assert all(g.distinct == {} and len(g.studies) == 1 for g in report.groups)


def plant_identities(url: str, **studies: dict[str, Any]) -> None:
    """One small SGD study per keyword (name "<key>/sgd"), with the attrs of a sweep with
    those training settings (``drop``: fields its config lacks)."""
    for i, (name, train) in enumerate(studies.items()):
        attrs = sweep_attrs("sgd", **train)
        plant_study(url, f"{name}/sgd", "sgd", centred_grid(1.0, n=7), [1e-4, 1e-3, 1e-2],
                    surface(1.0), seeds=1, rng_seed=i, attrs=attrs)  # fmt: skip


@pytest.mark.parametrize(
    ("field", "a", "b"), [("affine", True, False), ("epochs", 100, 40), ("head", "linear", "bn")]
)
def test_one_optimizer_with_different_training_is_never_pooled(
    tmp_path: Path, field: str, a: object, b: object
) -> None:
    url = f"sqlite:///{tmp_path}/g.db"
    plant_identities(url, a={field: a}, b={field: b}, c={field: a})
    report = analyze(AnalyzeConfig(storage=url, bootstrap=0))
    groups = {g.studies: g for g in report.groups}
    assert set(groups) == {("a/sgd", "c/sgd"), ("b/sgd",)}
    pooled, apart = groups[("a/sgd", "c/sgd")], groups[("b/sgd",)]
    assert pooled.n_trials == 2 * apart.n_trials
    assert pooled.identity[field] == a and apart.identity[field] == b
    assert pooled.distinct == {field: a} and apart.distinct == {field: b}
    assert pooled.slug != apart.slug  # their plots do not overwrite each other
    # Said in the report's warnings, shown in the JSON and in each table's title.
    assert any(
        "2 groups of 'sgd' studies" in w and "a/sgd, c/sgd" in w and f"b/sgd ({field}=" in w
        for w in report.warnings
    )
    d = apart.to_dict()
    assert d["distinct"] == {field: b} and d["identity"][field] == b and d["studies"] == ["b/sgd"]
    from rich.console import Console

    console = Console(record=True, width=200)
    console.print(render_report(report))
    text = console.export_text()
    assert apart.label.startswith("sgd / bn / cifar10 [") and f"{apart.label}  (b/sgd: " in text
    assert f"{pooled.label}  (a/sgd, c/sgd: " in text


def test_data_location_and_device_do_not_split_a_group(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/g.db"
    plant_identities(
        url, a={"data_dir": "/data/a", "device": "cpu"}, b={"data_dir": "/b", "device": "cuda"}
    )
    report = analyze(AnalyzeConfig(storage=url, bootstrap=0))
    (g,) = report.groups
    assert g.studies == ("a/sgd", "b/sgd") and g.distinct == {}
    assert "data_dir" not in g.identity and "device" not in g.identity
    assert not any("groups of" in w for w in report.warnings)


def test_old_studies_group_with_new_ones_holding_the_defaults(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/g.db"
    plant_identities(
        url,
        old={"drop": ("affine", "head", "precision")},
        new={},
        frozen={"affine": False},
    )
    report = analyze(AnalyzeConfig(storage=url, bootstrap=0))
    groups = {g.studies: g for g in report.groups}
    assert set(groups) == {("frozen/sgd",), ("new/sgd", "old/sgd")}
    assert groups[("new/sgd", "old/sgd")].identity["affine"] is True


def test_studies_without_config_are_pooled_on_their_attrs_with_a_warning(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/g.db"
    for i, name in enumerate(("x/sgd", "y/sgd")):
        plant_study(url, name, "sgd", centred_grid(1.0, n=7), [1e-4, 1e-3, 1e-2], surface(1.0),
                    seeds=1, rng_seed=i, attrs={"dataset": "cifar10"})  # fmt: skip
    report = analyze(AnalyzeConfig(storage=url, bootstrap=0))
    (g,) = report.groups
    assert g.studies == ("x/sgd", "y/sgd")
    assert any("pooled x/sgd, y/sgd" in w and "'config'" in w for w in report.warnings)


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
    assert "nesterov" in text and "equivalent" in text and "extend the grid" in text
    assert "whole-surface collapse (primary)" in text and "follow the others' curve" in text
    assert "joint" in text and "per-λ" in text and "columns" in text


def test_every_trial_diverged_is_a_verdict_that_says_so_not_a_traceback() -> None:
    trials = tuple(
        replace(_record(lr, wd, s, 0.9), diverged=True)
        for wd in (1e-4, 1e-3, 1e-2)
        for lr in centred_grid(1.0, n=7)(wd)
        for s in range(2)
    )
    g = analyze_group(GroupData("sgd", "bn", "mem", ("mem/sgd",), trials))
    assert math.isnan(g.scaling.k.value) and g.scaling.verdict == UNDETERMINED
    assert g.collapse is None and g.k_by_epoch == ()
    assert any(
        "fewer than 2 λ rows with ≥ 3 non-diverged cells" in w and "42 of 42 trials diverged" in w
        for w in g.warnings
    )
