"""analyze v2 through the pipeline: --metric, k over training, --from-csv."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from l2bn.analysis.pipeline import (
    AnalysisReport,
    AnalyzeConfig,
    GroupData,
    analyze,
    analyze_group,
    run_analysis,
)
from l2bn.analysis.reading.csvfile import load_csv_export
from l2bn.analysis.reading.records import TrialRecord
from l2bn.errors import AnalysisError, ConfigError

from .planting import centred_grid, error_surface

EPOCHS = 12


def _surface(lr: float, wd: float, k: float) -> float:
    """The planted dip, its optimum pinned at λ = 1e-3 whatever k (on the k = 1 grid)."""
    return error_surface(lr, wd, k, x0=-6.0 + (k - 1) * math.log(1e-3))


def _trials(with_loss: bool = True, seeds: int = 2) -> tuple[TrialRecord, ...]:
    """k drifts from 0.4 (epoch 1) to 1.0 (epoch 8 on): the error's optimum moves over
    training; val_loss has its optimum at k = 0.5 throughout."""
    rng = np.random.default_rng(0)
    out = []
    for wd in (1e-4, 1e-3, 1e-2):
        for lr in centred_grid(1.0, n=13)(wd):
            for s in range(seeds):
                ks = [min(1.0, 0.4 + 0.6 * e / 7) for e in range(EPOCHS)]
                err = [_surface(lr, wd, k) + 0.003 * rng.standard_normal() for k in ks]
                loss = [2 * _surface(lr, wd, 0.5) + 0.003 * rng.standard_normal()] * EPOCHS
                metrics = {"val_error": tuple(err)} | (
                    {"val_loss": tuple(loss)} if with_loss else {}
                )
                out.append(TrialRecord(
                    study="v2/sgd", number=len(out), lr=lr, weight_decay=wd, seed=s,
                    val_error=err[-1], test_error=math.nan, train_loss=math.nan, diverged=False,
                    steps_per_epoch=None, epoch_lrs=(), norms={},
                    val_loss=loss[-1] if with_loss else math.nan, metrics=metrics,
                ))  # fmt: skip
    return tuple(out)


def _group(trials: tuple[TrialRecord, ...], **settings: object) -> GroupData:
    del settings
    return GroupData("sgd", "bn", "v2", ("v2/sgd",), trials)


def test_k_by_epoch_follows_the_optimum_and_converges() -> None:
    g = analyze_group(_group(_trials()))
    rows = g.k_by_epoch
    assert [r.epoch for r in rows] == list(range(1, EPOCHS + 1))
    assert rows[0].k.value == pytest.approx(0.4, abs=0.07)
    for r in rows[8:]:  # settled at 1 from epoch 8 on, each with an interval
        assert r.k.value == pytest.approx(1.0, abs=0.02) and r.k.determined
    assert g.scaling.k.value == pytest.approx(rows[-1].k.value)  # the last epoch is the value


def test_metric_val_loss_locates_the_losss_optimum() -> None:
    g = analyze_group(_group(_trials()), AnalyzeConfig(metric="val_loss"))
    assert g.metric == "val_loss" and g.scaling.k.value == pytest.approx(0.5, abs=0.05)
    assert all(r.k.value == pytest.approx(0.5, abs=0.05) for r in g.k_by_epoch)
    assert g.cells[0].value == pytest.approx(g.cells[0].value)  # the loss, not the error
    assert g.cells[0].value > 1.0 > g.cells[0].val_error


def test_metric_val_loss_without_it_is_one_config_error() -> None:
    with pytest.raises(ConfigError, match=r"^--metric val_loss: no trial of v2/sgd recorded"):
        analyze_group(_group(_trials(with_loss=False)), AnalyzeConfig(metric="val_loss"))
    with pytest.raises(ConfigError, match="metric must be one of val_error, val_loss"):
        AnalyzeConfig(metric="accuracy")


def test_csv_export_reads_back_into_the_same_analysis(planted: str, tmp_path: Path) -> None:
    out = tmp_path / "trials.csv"
    first = run_analysis(AnalyzeConfig(storage=planted, studies=("p/sgd", "n/sgd"), csv_path=out))
    again = analyze(AnalyzeConfig(from_csv=out))
    assert again.storage == f"csv:{out}"
    assert {g.optimizer for g in again.groups} == {"sgd"}
    by_study = {g.studies: g for g in again.groups}
    for g in first.groups:
        twin = by_study[g.studies]
        assert twin.n_trials == g.n_trials
        assert twin.scaling.k.value == pytest.approx(g.scaling.k.value, abs=1e-9)
        assert twin.scaling.k.ci_low == pytest.approx(g.scaling.k.ci_low, abs=1e-9, nan_ok=True)
        for a, b in zip(twin.norms, g.norms, strict=True):
            assert a.p.value == pytest.approx(b.p.value, abs=1e-9)
    studies, _ = load_csv_export(out, ["n/sgd"])
    assert [s.name for s in studies] == ["n/sgd"]
    with pytest.raises(AnalysisError, match="no study named 'x'"):
        load_csv_export(out, ["x"])


def test_csv_export_keeps_per_epoch_metrics(tmp_path: Path) -> None:
    g = analyze_group(_group(_trials()))
    report = AnalysisReport("mem", AnalyzeConfig(), (g,), ())
    from l2bn.analysis.presenting.export import write_csv

    path = write_csv(report, tmp_path / "t.csv")
    (study,), _ = load_csv_export(path)
    rec = study.trials[0]
    assert len(rec.metrics["val_error"]) == EPOCHS
    assert rec.val_loss == pytest.approx(_trials()[0].val_loss)  # type: ignore[attr-defined]
    back = analyze_group(GroupData("sgd", "bn", "v2", ("v2/sgd",), study.trials))
    assert [r.k.value for r in back.k_by_epoch] == pytest.approx([r.k.value for r in g.k_by_epoch])


def test_k_by_epoch_figure_is_written(tmp_path: Path) -> None:
    from l2bn.analysis.presenting.plots import write_plots

    g = analyze_group(_group(_trials()))
    report = AnalysisReport("mem", AnalyzeConfig(), (g,), ())
    paths = write_plots(report, tmp_path)
    assert tmp_path / f"{g.slug}_k_by_epoch.png" in paths


def test_a_storage_named_beside_exports_is_read_with_them(
    planted: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from cli_run import run_cli

    from .planting import fast_sqlite, plant_study, surface

    out = tmp_path / "trials.csv"  # an export of p/sgd, as a committed run would be
    run_analysis(AnalyzeConfig(storage=planted, studies=("p/sgd",), csv_path=out))
    live = f"sqlite:///{tmp_path / 'live.db'}"  # a live sweep beside it
    plant_study(fast_sqlite(live), "live/adam", "adam", centred_grid(0.5), [1e-4, 1e-3, 1e-2],
                surface(0.5), rng_seed=7)  # fmt: skip
    both = analyze(AnalyzeConfig(storage=live, from_csv=out, storage_too=True))
    assert {g.studies: g.sources for g in both.groups} == {
        ("p/sgd",): (f"export {out}",),
        ("live/adam",): (f"storage {live}",),
    }
    assert both.storage == f"csv:{out} + {live}"
    with pytest.raises(ConfigError, match="storage_too needs from_csv"):
        AnalyzeConfig(storage=live, storage_too=True)
    # One study in two sources would count its trials twice: refused, with both named.
    with pytest.raises(AnalysisError, match=r"study 'p/sgd' is read twice: from export .*"
                       r"trials.csv and from storage sqlite"):  # fmt: skip
        analyze(AnalyzeConfig(storage=planted, from_csv=out, storage_too=True))
    # The CLI reads the storage beside exports only when its command line names it: the
    # Docker image sets L2BN_STORAGE for every command.
    monkeypatch.setenv("L2BN_STORAGE", live)
    code, _, err = run_cli(["analyze", "--from-csv", str(out), "--json", str(tmp_path / "a.json")],
                           capsys)  # fmt: skip
    assert code == 0, err
    groups = json.loads((tmp_path / "a.json").read_text())["groups"]
    assert [g["sources"] for g in groups] == [[f"export {out}"]]
    code, _, err = run_cli(["analyze", "--from-csv", str(out), "--storage", live,
                            "--json", str(tmp_path / "b.json")], capsys)  # fmt: skip
    assert code == 0, err
    groups = json.loads((tmp_path / "b.json").read_text())["groups"]
    assert [g["sources"] for g in groups] == [[f"export {out}"], [f"storage {live}"]]


def test_a_group_apart_in_many_settings_gets_a_short_file_name() -> None:
    from l2bn.analysis.results import SLUG_MAX

    g = analyze_group(_group(_trials()))
    many = {f"field_{i}": "a-long-value" * 3 for i in range(12)}
    long, other = replace(g, distinct=many), replace(g, distinct={**many, "field_11": "b"})
    assert len(long.slug) <= SLUG_MAX + 50 and long.slug.startswith("sgd-bn-v2-field_0_")
    assert long.slug != other.slug  # the hash tells them apart
    assert replace(g, distinct={"epochs": 5}).slug == "sgd-bn-v2-epochs_5"  # short: as it was
