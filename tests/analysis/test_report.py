"""``l2bn analyze --report``: one self-contained HTML page, escaped, with every figure."""

from __future__ import annotations

import base64
import copy
import re
import shutil
import struct
import subprocess
from pathlib import Path

import pytest
from cli_run import run_cli

from l2bn.analysis.pipeline import AnalysisReport, AnalyzeConfig, run_analysis
from l2bn.analysis.presenting import report as report_mod
from l2bn.analysis.presenting.report import render_html, write_report

from .planting import NORM_LRS, NORM_WDS, centred_grid, norms_law, plant_study, surface

EVIL = "<script>alert('x')</script>&\"/"  # a study name is user input
IMG = re.compile(r"<img\b[^>]*\bsrc=(['\"])(.*?)\1", re.S)


@pytest.fixture(scope="module")
def evil_storage(tmp_path_factory: pytest.TempPathFactory) -> str:
    url = f"sqlite:///{tmp_path_factory.mktemp('report') / 'evil.db'}"
    plant_study(url, EVIL, "adam", centred_grid(0.5), [1e-4, 1e-3, 1e-2], surface(0.5))
    plant_study(
        url,
        "n/sgd",
        "sgd",
        NORM_LRS,
        NORM_WDS,
        surface(1.0, -4.0),
        seeds=1,
        norms=norms_law(0.25),
        rng_seed=5,
    )
    return url


@pytest.fixture(scope="module")
def analyzed(evil_storage: str, tmp_path_factory: pytest.TempPathFactory) -> AnalysisReport:
    plots = tmp_path_factory.mktemp("plots")
    return run_analysis(AnalyzeConfig(storage=evil_storage, bootstrap=50, plots_dir=plots))


@pytest.fixture(scope="module")
def page(analyzed: AnalysisReport, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_report(analyzed, tmp_path_factory.mktemp("page") / "report.html")


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == report_mod.PNG_SIGNATURE and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_the_page_is_self_contained(page: Path) -> None:
    html = page.read_text(encoding="utf-8")
    assert html.startswith("<!DOCTYPE html>")
    assert not re.search(r"""(src|href)\s*=\s*['"]?\s*(https?:|//|file:)""", html, re.I)
    assert "<link" not in html.lower() and "@import" not in html and "url(" not in html
    assert "<script" not in html.lower()  # no script of ours, and the study name's escaped
    assert "default-src 'none'" in html  # a CSP: nothing fetched, nothing run


def test_one_decodable_png_per_figure(analyzed: AnalysisReport, page: Path) -> None:
    html = page.read_text(encoding="utf-8")
    figures = [p for p in analyzed.written if p.suffix == ".png"]
    sources = [m.group(2) for m in IMG.finditer(html)]
    assert len(figures) >= 7  # 3 for adam (no histories), 5 for sgd with norms
    assert len(sources) == len(figures)
    embedded = sorted(
        base64.b64decode(s.removeprefix("data:image/png;base64,"), validate=True) for s in sources
    )
    assert embedded == sorted(p.read_bytes() for p in figures)  # the --plots files themselves
    for data in embedded:
        w, h = _png_size(data)
        assert w > 100 and h > 100


def test_figures_are_drawn_when_plots_were_not_asked_for(
    analyzed: AnalysisReport, page: Path
) -> None:
    bare = AnalysisReport(
        analyzed.storage,
        AnalyzeConfig(storage=analyzed.settings.storage),
        analyzed.groups,
        analyzed.warnings,
    )
    figures, overall = report_mod.report_figures(bare)
    assert [n for n, _ in overall] == ["k_summary"]  # two groups: k over both
    names = [sorted(n for n, _ in fs) for fs in figures]
    kinds = {g.optimizer: n for g, n in zip(bare.groups, names, strict=True)}
    assert kinds["adam"] == ["collapse", "error_heatmap", "eta_star"]
    assert kinds["sgd"] == [
        "collapse",
        "error_heatmap",
        "eta_star",
        "norm_heatmap",
        "norm_trajectories",
    ]
    html = render_html(bare.to_dict(), figures, overall=overall)
    assert len(IMG.findall(html)) == len(IMG.findall(page.read_text(encoding="utf-8")))


def test_data_is_escaped(page: Path) -> None:
    html = page.read_text(encoding="utf-8")
    assert EVIL not in html and "<script>alert" not in html
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;&amp;&quot;/" in html


def test_tables_settings_and_identity_are_on_the_page(analyzed: AnalysisReport, page: Path) -> None:
    html = page.read_text(encoding="utf-8")
    for g in analyzed.groups:
        assert f"{g.scaling.k.value:.3g}" in html
        assert g.scaling.verdict in html
        assert f"{g.n_trials} trials" in html
    assert "k (η* ∝ λ^-k), the primary: the whole-surface collapse" in html
    assert "a  (‖w_conv1‖ ∝ η^a)" in html and "k, cross-check: joint parabola" in html
    # The answer comes first, the settings last and folded.
    assert html.index("The answer: η* ∝ λ^-k") < html.index("<h2>") + 40
    assert html.index("Settings of this analysis") > html.index("class='group'")
    for key in analyzed.settings.to_dict():  # every AnalyzeConfig setting
        assert f"<th>{key}</th>" in html
    assert "<th>bootstrap</th><td>50</td>" in html
    assert "Training identity" in html and "<b>epochs</b>=10" in html
    for warning in analyzed.groups[1].warnings:
        assert report_mod._e(warning) in html


def test_password_is_redacted() -> None:
    data = {
        "storage": "postgresql://u:***@h/db",
        "settings": AnalyzeConfig(storage="postgresql://u:hunter2@h/db").to_dict(),
        "groups": [],
    }
    html = render_html(data)
    assert "hunter2" not in html and "postgresql://u:***@h/db" in html


def test_unknown_fields_are_rendered_generically(analyzed: AnalysisReport) -> None:
    """The shape grows (k_estimates, k_by_epoch, column tests, new verdicts): shown, not lost."""
    data = copy.deepcopy(analyzed.to_dict())
    g = data["groups"][0]
    est = {
        "value": 0.61,
        "stderr": 0.1,
        "ci_low": 0.41,
        "ci_high": 0.82,
        "n": 3,
        "method": "m",
        "confidence": 0.9,
    }
    g["k_estimates"] = {"pooled": {"estimate": est, "theory": 0.5, "verdict": "equivalent"}}
    g["k_by_batch"] = [{"epoch": 7, "estimate": {**est, "value": 0.77}}]
    g["k_by_epoch"] = [{"epoch": 3, "k": {**est, "value": 0.33}}]  # its figure says it
    g["column_tests"] = {"monotone": True, "<b>": "<i>x</i>"}
    data["new_top_level"] = [1, 2]
    html = render_html(data)
    assert "k_estimates.pooled" in html and "0.61 [0.41, 0.82]" in html
    assert "v-equivalent" in html and ">equivalent<" in html
    assert "k_by_batch [epoch=7]" in html and "0.77 [0.41, 0.82]" in html
    assert "0.33 [0.41, 0.82]" not in html  # k over training: a figure, not rows
    assert "column_tests" in html and "&lt;i&gt;x&lt;/i&gt;" in html and "<i>x" not in html
    assert "new_top_level" in html


def test_report_is_written_atomically(
    analyzed: AnalysisReport, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "r.html"
    path.write_text("old")

    class Boom(str):
        def __str__(self) -> str:
            raise RuntimeError("boom")

    def half_page(*args: object, **kwargs: object) -> str:
        return ["<html>", Boom()]  # type: ignore[return-value]  # write() fails midway

    monkeypatch.setattr(report_mod, "render_html", half_page)
    with pytest.raises(TypeError):
        write_report(analyzed, path)
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["r.html"]


# --- the command line ---------------------------------------------------------------------


def test_cli_checks_the_report_path_before_the_analysis(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    # The storage does not exist either: the report path is what is reported, so it came first.
    code, _, err = run_cli(
        [
            "analyze",
            "--storage",
            f"sqlite:///{tmp_path}/none.db",
            "--report",
            "/nonexistent/dir/r.html",
        ],
        capsys,
    )
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "folder /nonexistent/dir does not exist" in err and "Traceback" not in err
    code, _, err = run_cli(
        ["analyze", "--storage", f"sqlite:///{tmp_path}/none.db", "--report", str(tmp_path)], capsys
    )
    assert code == 2 and "it is a folder" in err


def test_cli_writes_the_report(
    evil_storage: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    out_file = tmp_path / "r.html"
    code, out, err = run_cli(
        [
            "analyze",
            "--storage",
            evil_storage,
            "--study",
            "n/sgd",
            "--bootstrap",
            "20",
            "--report",
            str(out_file),
        ],
        capsys,
    )
    assert code == 0, err
    assert "wrote:" in out and "r.html" in out
    html = out_file.read_text(encoding="utf-8")
    assert len(IMG.findall(html)) == 5 and "n/sgd" in html


# --- in a browser -------------------------------------------------------------------------

CHECK = """<script>
window.addEventListener('load', () => {
  const imgs = [...document.images];
  const ok = imgs.filter(i => i.complete && i.naturalWidth > 0).length;
  document.title = 'imgs:' + ok + '/' + imgs.length;
});
</script>"""


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        if path := shutil.which(name):
            return path
    pytest.skip("no chromium (Debian: apt-get install chromium)")


def _browse(page: Path, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = [
        _chromium(),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--hide-scrollbars",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--virtual-time-budget=10000",
        *args,
        page.resolve().as_uri(),
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=180)


def test_figures_show_in_a_browser(page: Path, tmp_path: Path) -> None:
    """Every <img> decodes in Chromium (naturalWidth > 0), and the page draws them under its
    own CSP; the study named <script> adds no script element."""
    n = len(IMG.findall(page.read_text(encoding="utf-8")))
    # A copy with a probe script (the page's CSP forbids scripts: relaxed for the probe only).
    probe = tmp_path / "probe.html"
    html = page.read_text(encoding="utf-8").replace(
        report_mod.CSP, report_mod.CSP + "; script-src 'unsafe-inline'"
    )
    probe.write_text(html.replace("</body>", CHECK + "</body>"), encoding="utf-8")
    dom = _browse(probe, tmp_path, "--dump-dom")
    assert f"<title>imgs:{n}/{n}</title>" in dom.stdout, dom.stdout[:300] + dom.stderr[-2000:]

    # The page itself: its DOM has the images and no script; a screenshot shows the figures.
    dom = _browse(page, tmp_path, "--dump-dom")
    assert dom.stdout.count("<img") == n and "<script" not in dom.stdout
    shot = tmp_path / "shot.png"
    _browse(page, tmp_path, f"--screenshot={shot}", "--window-size=1300,6000")
    import numpy as np
    from PIL import Image

    rgb = np.asarray(Image.open(shot).convert("RGB"), dtype=int)
    # Saturated pixels (viridis heatmaps, verdict badges): text alone is grey on white.
    coloured = int(((rgb.max(axis=2) - rgb.min(axis=2)) > 80).sum())
    assert coloured > 20_000, coloured
