"""``l2bn analyze --plots``: every documented figure is written, as a real, non-empty PNG."""

from __future__ import annotations

import math
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from l2bn.analysis.pipeline import AnalyzeConfig, analyze, run_analysis
from l2bn.analysis.presenting.plots import FIGURES, plot_eta_star

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
    assert names == sgd | nsgd  # no norm figures without histories
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
