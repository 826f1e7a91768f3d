"""``l2bn analyze --plots``: every documented figure is written, as a real, non-empty PNG."""

from __future__ import annotations

import math
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import REPO

from l2bn.analysis.pipeline import AnalyzeConfig, analyze, run_analysis
from l2bn.analysis.presenting.k_figures import plot_k_by_epoch_all, plot_k_summary
from l2bn.analysis.presenting.plots import FIGURES, plot_eta_star, write_plots

from .planting import NORM_LRS, NORM_WDS, fast_sqlite, log_grid, norms_law, plant_study, surface

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def relaxing_ratio(lr: float, wd: float) -> Callable[[int], float]:
    """θ²/θ_eq² per epoch: from far above 1 towards 1 at a rate set by η·λ."""
    return lambda epoch: 1 + 20 * math.exp(-lr * wd * 1000 * epoch)


@pytest.fixture(scope="module")
def storage(tmp_path_factory: pytest.TempPathFactory) -> str:
    url = f"sqlite:///{tmp_path_factory.mktemp('plots') / 'plots.db'}"
    rdb = fast_sqlite(url)
    # With per-epoch histories and update records (every figure) …
    plant_study(rdb, "pl/sgd", "sgd", NORM_LRS, NORM_WDS, surface(1.0, -4.0), seeds=1,
                norms=norms_law(0.25), dynamics=relaxing_ratio)  # fmt: skip
    # … and without (no norm figures), for normalized SGD's own heatmap.
    plant_study(rdb, "pl/normalized-sgd", "normalized-sgd", log_grid(1e-5, 1e-1, 9),
                [1e-4, 1e-3, 1e-2], surface(0.0, math.log(1e-3)), seeds=1)  # fmt: skip
    return url


def assert_png(path: Path) -> None:
    from matplotlib.image import imread

    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC, path
    assert len(data) > 10_000, f"{path} is suspiciously small ({len(data)} bytes)"
    img = imread(path)
    assert img.shape[0] >= 300 and img.shape[1] >= 400
    # Not a blank canvas: a drawn figure has many distinct colours.
    assert len({tuple(px) for px in img[::7, ::7].reshape(-1, img.shape[2])}) > 20


def test_plots_need_no_pipeline() -> None:
    code = (
        "import sys, l2bn.analysis.presenting.plots; print('l2bn.analysis.pipeline' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_plots_dir_gets_every_documented_figure(storage: str, tmp_path: Path) -> None:
    out = tmp_path / "figs"  # does not exist yet: created
    report = run_analysis(AnalyzeConfig(storage=storage, plots_dir=out, bootstrap=0))
    names = {p.name for p in out.iterdir()}
    # No per-epoch val_error in these histories (loading does not read it yet): no k_by_epoch.
    sgd = {f"sgd-bn-pl_{f}.png" for f in FIGURES if f != "k_by_epoch"}
    nsgd = {
        "normalized-sgd-bn-pl_error_heatmap.png",
        "normalized-sgd-bn-pl_eta_star.png",
        "normalized-sgd-bn-pl_collapse.png",
    }
    # Two groups: the summary of k across them (no k_by_epoch across them either).
    assert names == sgd | nsgd | {"k_summary.png"}  # no norm figures without histories
    assert {p.name for p in report.written} == names
    for p in out.iterdir():
        assert_png(p)


def test_eta_star_figure_shows_fit_and_theory(storage: str) -> None:
    (g,) = analyze(AnalyzeConfig(storage=storage, studies=("pl/sgd",), bootstrap=0)).groups
    fig = plot_eta_star(g)
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert any(lbl.startswith("primary: k = ") for lbl in labels)
    assert "theory: k = 1" in labels
    assert ax.get_xscale() == "log" and ax.get_yscale() == "log"
    assert "λ" in ax.get_xlabel() and "η" in ax.get_ylabel()


@pytest.mark.slow
def test_across_groups_one_k_figure_and_one_k_over_training_figure(tmp_path: Path) -> None:
    # Real runs: the first headline's committed exports, judged by headline v2's registration
    # (its k ranges drawn as bands).
    parts = [REPO / "docs" / "reproduction" / "headline" / o / "trials.csv"
             for o in ("nesterov", "adam")]  # fmt: skip
    if not all(p.is_file() for p in parts):
        pytest.skip("the first headline's exports are not committed")
    config = AnalyzeConfig(from_csv=parts[0], more_csv=(parts[1],), bootstrap=0,
                           registration_path=REPO / "sweeps" / "headline2.toml")  # fmt: skip
    report = analyze(config)
    assert len(report.groups) == 2 and all(g.k_by_epoch for g in report.groups)
    written = write_plots(report, tmp_path)
    for name in ("k_summary.png", "k_by_epoch.png"):
        assert tmp_path / name in written
        assert_png(tmp_path / name)
    # One panel per group, on one shared k axis; the summary has a row per group.
    fig = plot_k_by_epoch_all(report)
    assert len(fig.axes) == 2 and fig.axes[0].get_ylim() == fig.axes[1].get_ylim()
    summary = plot_k_summary(report).axes[0]
    assert [t.get_text() for t in summary.get_yticklabels()] == [
        g.label for g in reversed(report.groups)
    ]
    # The registered ranges ([0.9, 1.1] and [0.4, 0.6]) are drawn as bands.
    from matplotlib.collections import PolyCollection

    def x_span(c: PolyCollection) -> tuple[float, float]:
        x = c.get_paths()[0].vertices[:, 0]
        return round(float(x.min()), 2), round(float(x.max()), 2)

    spans = {x_span(c) for c in summary.collections if isinstance(c, PolyCollection)}
    assert spans == {(0.9, 1.1), (0.4, 0.6)}, spans
