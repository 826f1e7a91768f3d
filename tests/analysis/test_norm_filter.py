"""The norm fit's cells: measured in equilibrium where the cells carry verdicts, the clock
c·η·λ·T ≥ --equilibrium where every verdict is unknown (older studies and exports)."""

from __future__ import annotations

import csv
import json
import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from l2bn.analysis.estimating.equilibrium import CellFilter, norm_cell_filter
from l2bn.analysis.estimating.norms import fit_norms
from l2bn.analysis.fitted import IN_EQUILIBRIUM, OUT_OF_EQUILIBRIUM, UNKNOWN, Equilibrium
from l2bn.analysis.pipeline import AnalyzeConfig, analyze, run_analysis

from .planting import (
    NORM_LRS,
    NORM_WDS,
    PHASE1,
    STEPS_PER_EPOCH,
    fast_sqlite,
    norms_law,
    one_group,
    plant_study,
    planted_history,
    surface,
    with_dynamics,
)

CLOCK = "clock c·η·λ·T ≥ 5"


def clock(lr: float, wd: float) -> float:
    return lr * wd * STEPS_PER_EPOCH * PHASE1  # η·λ·T; c = 1 for SGD


def measured_in(lr: float, wd: float) -> bool:
    """The planted truth: settled (stationary norms, on the law) for η·λ·T ≥ 1. The clock
    (≥ 5) leaves out the cells between 1 and 5, on the law."""
    return clock(lr, wd) >= 1


def unmeasured(lr: float, wd: float) -> bool:
    return clock(lr, wd) < 0.3  # these cells' histories carry no update records


def nf_history(lr: float, wd: float, rng: np.random.Generator) -> list[dict[str, Any]]:
    """Norms on the law ‖w‖ ∝ (η/λ)^¼ and still over phase 1 where settled; elsewhere still
    growing from their initial 1 (‖w‖ ∝ epoch over phase 1: growth ÷ shrink far above 1);
    θ²/θ_eq² 1 settled, 3 not; no update records at all in the unmeasured cells."""
    law = {k: v * math.exp(0.01 * float(rng.standard_normal()))
           for k, v in norms_law(0.25)(lr, wd).items()}  # fmt: skip
    inside = measured_in(lr, wd)
    h = planted_history(lr, wd, law)
    for e in h:  # planted_history follows the clock: set every phase-1 norm by `inside`
        for name, rec in e["layers"].items():
            phase = min(e["epoch"], PHASE1)
            rec["norm"] = law[name] if inside else phase / PHASE1
            if e["epoch"] > PHASE1:
                rec["norm"] *= 1.3
    if unmeasured(lr, wd):
        return h
    return with_dynamics(h, wd, lambda epoch: 1.0 if inside else 3.0)


@pytest.fixture(scope="module")
def storage(tmp_path_factory: pytest.TempPathFactory) -> str:
    url = f"sqlite:///{tmp_path_factory.mktemp('nf') / 'nf.db'}"
    rdb = fast_sqlite(url)
    rng = np.random.default_rng(11)
    plant_study(rdb, "nf/sgd", "sgd", NORM_LRS, NORM_WDS, surface(1.0, -4.0), seeds=1,
                history=lambda lr, wd: nf_history(lr, wd, rng), rng_seed=11)  # fmt: skip
    return url


def n_cells(pred: Any) -> int:
    return sum(bool(pred(lr, wd)) for lr in NORM_LRS for wd in NORM_WDS)


def test_the_planted_filters_differ() -> None:
    n_in, n_clock = n_cells(measured_in), n_cells(lambda lr, wd: clock(lr, wd) >= 5 - 1e-9)
    assert n_in >= 8 and n_clock < n_in  # the measurement admits cells the clock does not
    assert n_cells(unmeasured) > 0


def test_measured_cells_pick_the_norm_fit_where_the_records_judge(storage: str) -> None:
    g = one_group(storage, "nf/sgd", bootstrap=0)
    verdicts = {(c.lr, c.weight_decay): c.equilibrium.verdict for c in g.cells}
    assert sum(v == IN_EQUILIBRIUM for v in verdicts.values()) == n_cells(measured_in)
    assert sum(v == UNKNOWN for v in verdicts.values()) == n_cells(unmeasured)
    conv1 = g.norms[0]
    assert {n.cell_filter for n in g.norms} == {"measured"}
    assert conv1.n_cells == n_cells(measured_in)
    assert conv1.n_excluded == len(NORM_LRS) * len(NORM_WDS) - n_cells(measured_in)
    # The planted law, recovered on the measured cells alone.
    for est in (conv1.a, conv1.b, conv1.p):
        assert est.value == pytest.approx(0.25, abs=0.02) and est.covers(0.25)
    assert conv1.q.value == pytest.approx(0.0, abs=0.02)
    n_out = n_cells(lambda lr, wd: not measured_in(lr, wd) and not unmeasured(lr, wd))
    note = next(w for w in g.warnings if "left out of the norm fit" in w)
    assert note.startswith(
        f"{conv1.n_excluded} cell(s) not measured in equilibrium ({n_out} out, "
        f"{n_cells(unmeasured)} unmeasured)"
    )
    assert "chosen by measurement" in note and "c·η·λ·T ≥ 5 would take" in note
    # The clock would have taken fewer cells.
    by_clock = fit_norms(g.cells, "conv1", AnalyzeConfig(), 0.25, 0.5, 1.0, CellFilter(False))
    assert by_clock.cell_filter == CLOCK and by_clock.n_cells < conv1.n_cells
    # The column test's norm columns read the same cells: none out of equilibrium.
    assert any(c.quantity == "norm:conv1" for c in g.columns)


def test_the_filter_is_in_the_json_the_table_and_the_page(storage: str, tmp_path: Path) -> None:
    from rich.console import Console

    from l2bn.render import render_report

    report = run_analysis(
        AnalyzeConfig(storage=storage, bootstrap=0, json_path=tmp_path / "r.json",
                      report_path=tmp_path / "r.html", plots_dir=tmp_path / "figs")
    )  # fmt: skip
    d = json.loads((tmp_path / "r.json").read_text())
    assert {n["cell_filter"] for n in d["groups"][0]["norms"]} == {"measured"}
    console = Console(record=True, width=220)
    console.print(render_report(report))
    assert "excl.; measured)" in console.export_text()
    assert "cell_filter measured" in (tmp_path / "r.html").read_text()


def test_the_heatmap_crosses_the_cells_the_fit_leaves_out(storage: str) -> None:
    from l2bn.analysis.presenting.plots import plot_norm_heatmap

    (g,) = analyze(AnalyzeConfig(storage=storage, bootstrap=0)).groups
    ax = plot_norm_heatmap(g, 5.0).axes[0]
    crosses = [line for line in ax.get_lines() if line.get_marker() == "x"]
    assert len(crosses) == g.norms[0].n_excluded == len(g.cells) - n_cells(measured_in)
    assert "measured" in ax.get_title() and "c·η·λ·T" not in ax.get_title()


def test_csv_round_trip_keeps_the_measured_cells(storage: str, tmp_path: Path) -> None:
    out = tmp_path / "trials.csv"
    (first,) = run_analysis(AnalyzeConfig(storage=storage, bootstrap=0, csv_path=out)).groups
    (again,) = analyze(AnalyzeConfig(from_csv=out, bootstrap=0)).groups
    assert [(n.cell_filter, n.n_cells) for n in again.norms] == [
        (n.cell_filter, n.n_cells) for n in first.norms
    ]
    assert again.norms[0].p.value == pytest.approx(first.norms[0].p.value, rel=1e-9)
    # Without the ratios (an export from before them): the clock, as every older analysis.
    rows = list(csv.DictReader(out.open()))
    old = tmp_path / "old.csv"
    with old.open("w", newline="") as f:
        keep = [c for c in rows[0] if not c.startswith("eq_ratio_") and c != "equilibrium_test"]
        w = csv.DictWriter(f, keep, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    (clocked,) = analyze(AnalyzeConfig(from_csv=old, bootstrap=0)).groups
    assert {n.cell_filter for n in clocked.norms} == {CLOCK}
    assert clocked.norms[0].n_cells == n_cells(lambda lr, wd: clock(lr, wd) >= 5 - 1e-9)
    assert any("out of equilibrium (c·η·λ·T < 5)" in w for w in clocked.warnings)


def test_the_group_decides_measured_or_clock(storage: str) -> None:
    (g,) = analyze(AnalyzeConfig(storage=storage, bootstrap=0)).groups
    unknown = Equilibrium(UNKNOWN, "angle")
    blank = [replace(c, equilibrium=unknown) for c in g.cells]
    assert norm_cell_filter(blank, 5.0) == CellFilter(False, 5.0)
    assert norm_cell_filter(blank, 2.5).label == "clock c·η·λ·T ≥ 2.5"
    # One measured cell (out, even) makes the group's filter measured …
    one = [replace(blank[0], equilibrium=Equilibrium(OUT_OF_EQUILIBRIUM, "angle")), *blank[1:]]
    chosen = norm_cell_filter(one, 5.0)
    assert chosen.measured and chosen.label == "measured"
    assert not any(chosen.admits(c) for c in one)  # … and admits only cells measured in
    # … but not a λ = 0 cell (no norm law there to fit).
    zero = [replace(one[0], weight_decay=0.0), *blank[1:]]
    assert not norm_cell_filter(zero, 5.0).measured
    # The clock never admits a cell whose steps are unknown (NaN).
    nan_clock = replace(blank[0], equilibrium_index=math.nan)
    assert not CellFilter(False, 5.0).admits(nan_clock)
