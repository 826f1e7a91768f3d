"""l2bn.analysis.presenting.export: the --json and --csv files."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from l2bn.analysis.pipeline import (
    DIFFERENT,
    EQUIVALENT,
    INCONCLUSIVE,
    UNDETERMINED,
    AnalyzeConfig,
    analyze,
    run_analysis,
)
from l2bn.analysis.presenting.export import CSV_FIXED_COLUMNS, write_csv, write_json

from .planting import EPOCHS, NORM_LRS, NORM_WDS, PHASE1, STEPS_PER_EPOCH

ESTIMATE_KEYS = {"value", "stderr", "ci_low", "ci_high", "n", "method", "confidence"}
GROUP_KEYS = {
    "optimizer", "norm", "dataset", "identity", "distinct", "studies", "n_trials", "n_cells",
    "n_lambda", "max_seeds", "n_diverged", "first_layer", "k", "collapse", "optima", "norms",
    "cells", "warnings",
    # analyze v2
    "metric", "noise_sd", "noise_source", "independent_rows", "k_estimates", "columns",
    "k_by_epoch",
    # equilibrium by measurement
    "optima_equilibrium",
    # analyze v3
    "primary", "sources",
}  # fmt: skip
EQUILIBRIUM_KEYS = {
    "verdict", "test", "ratio", "layer", "ratios", "n_in", "n_seeds", "memory", "balance",
    "moving_layer", "predicted",
}  # fmt: skip


def test_json_has_the_documented_shape(planted: str, tmp_path: Path) -> None:
    out = tmp_path / "out" / "report.json"
    report = run_analysis(
        AnalyzeConfig(storage=planted, studies=("p/adam", "n/sgd"), json_path=out, bootstrap=100)
    )
    assert out in report.written
    d = json.loads(out.read_text())
    assert set(d) == {
        "schema", "l2bn_version", "storage", "settings", "warnings", "groups", "registration",
    }  # fmt: skip
    assert d["schema"] == 3
    assert d["registration"] is None  # the planted studies were never registered
    assert set(d["settings"]) >= {
        "storage", "studies", "equilibrium", "bootstrap", "seed", "interval", "margin",
        "norm_margin", "metric", "from_csv",
    }  # fmt: skip
    assert len(d["groups"]) == 2
    for g in d["groups"]:
        assert set(g) == GROUP_KEYS
        assert g["sources"] == [f"storage {planted}"]  # read now, from this storage
        assert set(g["k"]) == {
            "estimate",
            "intercept",
            "r_squared",
            "n_lambda",
            "theory",
            "verdict",
        }
        assert set(g["k"]["estimate"]) == ESTIMATE_KEYS
        assert set(g["collapse"]) == {
            "estimate", "theory", "verdict", "status", "rows", "n_cells", "x_centre", "curve",
            "reason",
        }  # fmt: skip
        assert set(g["collapse"]["estimate"]) == ESTIMATE_KEYS
        assert g["collapse"]["estimate"] == g["k"]["estimate"]
        for row in g["collapse"]["rows"]:
            assert set(row) == {
                "weight_decay", "used", "verdict", "p_value", "worst_z", "worst_lr",
                "n_tested", "k_without", "cause",
            }  # fmt: skip
        assert len(g["collapse"]["curve"]["x"]) == len(g["collapse"]["curve"]["y"])
        assert g["k"]["verdict"] in (EQUIVALENT, DIFFERENT, INCONCLUSIVE, UNDETERMINED)
        assert set(g["k_estimates"]) == {"collapse", "joint", "per_lambda"}
        for est in g["k_estimates"].values():
            assert set(est) == {"estimate", "theory", "verdict"}
            assert set(est["estimate"]) == ESTIMATE_KEYS
        assert g["k_estimates"]["collapse"]["estimate"] == g["k"]["estimate"]
        assert g["primary"] == {"estimator": "collapse", "method": g["k"]["estimate"]["method"]}
        assert g["k"]["estimate"]["method"].startswith("collapse/")
        assert set(g["optima"][0]) == {
            "weight_decay", "lr_opt", "lr_grid", "val_error", "n_lr", "edge", "used", "note",
            "lr_ci_low", "lr_ci_high", "n_band", "equilibrium",
        }  # fmt: skip
        assert set(g["optima"][0]["equilibrium"]) == EQUILIBRIUM_KEYS
        assert set(g["cells"][0]) == {
            "lr", "weight_decay", "n_seeds", "val_error", "val_error_std", "test_error",
            "n_diverged", "eta_lambda_T", "equilibrium_index", "phase1_norms", "relaxation",
            "value", "value_std", "equilibrium",
        }  # fmt: skip
        assert set(g["cells"][0]["equilibrium"]) == EQUILIBRIUM_KEYS
        # Planted histories record no angles: equilibrium unknown, never "in".
        assert {c["equilibrium"]["verdict"] for c in g["cells"]} == {"unknown"}
        assert set(g["optima_equilibrium"]) == {
            "test", "theta_test", "band", "tail", "in", "out", "unknown", "total",
        }  # fmt: skip
        assert g["optima_equilibrium"]["in"] == 0
        for c in g["columns"]:
            assert set(c) == {"quantity", "log_x", "slope", "band", "n_lambda", "verdict"}
        assert g["k_by_epoch"] == []  # planted histories hold no per-epoch val_error
        assert g["n_cells"] == len(g["cells"])
        # Planted studies have no config attr: known by their attrs alone.
        assert g["identity"]["optimizer"] == g["optimizer"] and g["identity"]["epochs"] == EPOCHS
        assert g["identity"]["affine"] is None and g["distinct"] == {}
    adam, nsgd = sorted(d["groups"], key=lambda g: g["optimizer"] != "adam")
    assert adam["k"]["estimate"]["value"] == pytest.approx(0.5, abs=0.05)
    assert adam["norms"] == [] and adam["first_layer"] is None
    assert nsgd["first_layer"] == "conv1"
    norm = nsgd["norms"][0]
    assert set(norm) == {
        "layer", "a", "b", "intercept", "r_squared", "n_cells", "n_excluded", "theory", "verdict",
        "p", "q", "s", "k", "memory", "cell_filter",
    }  # fmt: skip
    # No update records in these histories: the clock picks the equilibrium cells.
    assert norm["cell_filter"] == "clock c·η·λ·T ≥ 5"
    assert set(norm["a"]) == ESTIMATE_KEYS and norm["a"]["value"] == pytest.approx(0.25, abs=0.02)


def test_csv_has_one_row_per_trial_with_per_epoch_norms(planted: str, tmp_path: Path) -> None:
    out = tmp_path / "trials.csv"
    run_analysis(AnalyzeConfig(storage=planted, studies=("n/sgd",), csv_path=out, bootstrap=0))
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == len(NORM_LRS) * len(NORM_WDS)
    cols = list(rows[0])
    assert cols[:3] == ["study", "trial", "optimizer"]
    assert tuple(cols[: len(CSV_FIXED_COLUMNS)]) == CSV_FIXED_COLUMNS
    assert [c for c in cols if c.startswith("norm_conv1_")] == [
        f"norm_conv1_e{e}" for e in range(1, EPOCHS + 1)
    ]
    row = max(rows, key=lambda r: float(r["lr"]) * float(r["weight_decay"]))  # in equilibrium
    lr, wd = float(row["lr"]), float(row["weight_decay"])
    assert int(row["phase1_epochs"]) == PHASE1
    assert float(row["eta_lambda_T"]) == pytest.approx(lr * wd * STEPS_PER_EPOCH * PHASE1)
    assert float(row["norm_conv1_e5"]) == pytest.approx(2.0 * (lr / wd) ** 0.25, rel=0.05)
    # No update records in these histories: no summary columns (tests/analysis/
    # test_equilibrium.py checks them where the records are).
    assert not [c for c in cols if c.startswith(("angle_", "grad_norm_", "balance_"))]


def test_writers_make_folders_and_leave_no_temporary_file(planted: str, tmp_path: Path) -> None:
    report = analyze(AnalyzeConfig(storage=planted, studies=("p/sgd",), bootstrap=0))
    target = tmp_path / "new" / "dir" / "r.json"  # folders made as needed
    assert write_json(report, target) == target
    assert json.loads(target.read_text())["groups"][0]["studies"] == ["p/sgd"]
    table = write_csv(report, tmp_path / "t.csv")
    assert {p.name for p in tmp_path.iterdir()} == {"new", "t.csv"}  # no temporary file left
    assert len(table.read_text().splitlines()) == 1 + report.groups[0].n_trials
