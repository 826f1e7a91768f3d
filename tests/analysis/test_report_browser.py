"""The report in a real browser: headless Chromium from Debian's packages, driven by Selenium
through Debian's chromium-driver (`.ci/run` installs both; this module skips cleanly where
they are absent). Built from a committed run's CSV, the page must give the answer on a
laptop's first screen and fit a phone."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO

from l2bn.analysis.pipeline import AnalyzeConfig, run_analysis

HEADLINE = REPO / "docs" / "reproduction" / "headline"


def _driver(tmp: Path) -> Any:
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium not installed")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    chromedriver = shutil.which("chromedriver")
    if chromium is None or chromedriver is None:
        pytest.skip("no chromium/chromedriver (Debian: apt-get install chromium chromium-driver)")
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = chromium
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--hide-scrollbars",
                 f"--user-data-dir={tmp / 'profile'}"):  # fmt: skip
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(chromedriver), options=options)


@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory) -> Path:
    parts = [HEADLINE / name / "trials.csv" for name in ("nesterov", "adam")]
    if not all(p.is_file() for p in parts):
        pytest.skip("the committed headline CSVs are not here")
    out = tmp_path_factory.mktemp("page") / "report.html"
    run_analysis(AnalyzeConfig(from_csv=parts[0], more_csv=(parts[1],), report_path=out))
    return out


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    driver = _driver(tmp_path_factory.mktemp("chromium"))
    try:
        yield driver
    finally:
        driver.quit()


def _at(browser: Any, page: Path, width: int, height: int) -> None:
    browser.set_window_size(width, height)
    browser.get(page.resolve().as_uri())
    # The window's size includes its frame: make the viewport itself width × height.
    inner = browser.execute_script("return [window.innerWidth, window.innerHeight]")
    browser.set_window_size(2 * width - inner[0], 2 * height - inner[1])


def test_the_answer_is_on_the_first_screen_of_a_laptop(browser: Any, page: Path) -> None:
    _at(browser, page, 1280, 720)
    assert browser.execute_script("return window.innerWidth") == 1280
    rows = browser.execute_script(
        """return [...document.querySelectorAll('table.answer tbody tr')].map(tr => {
             const r = tr.getBoundingClientRect();
             return [tr.innerText, r.top, r.bottom];
           });"""
    )
    assert len(rows) == 2
    for text, top, bottom in rows:
        # The primary k with its CI, the theory and the verdict, inside the first 720 px.
        assert top >= 0 and bottom <= 720, (text, bottom)
        assert (
            "[" in text
            and "]" in text
            and any(
                v in text for v in ("equivalent", "different", "inconclusive", "does not collapse")
            )
        ), text
    legend = browser.execute_script(
        "const n = document.querySelector('section.answer p.note');"
        "return [n.innerText, n.getBoundingClientRect().bottom];"
    )
    assert "equivalent" in legend[0] and "inconclusive" in legend[0] and legend[1] <= 720


def test_nothing_is_wider_than_a_phone(browser: Any, page: Path) -> None:
    _at(browser, page, 420, 800)
    width = browser.execute_script("return window.innerWidth")
    assert width == 420
    # The page never scrolls sideways; wide tables scroll inside their own box.
    assert browser.execute_script("return document.documentElement.scrollWidth") <= width
    wider = browser.execute_script(
        """const w = window.innerWidth;
           return [...document.body.querySelectorAll('*')]
             .filter(e => !e.closest('.scroll, pre'))
             .filter(e => e.getBoundingClientRect().right > w + 1)
             .map(e => e.tagName + '.' + e.className);"""
    )
    assert wider == []


def test_every_figure_decodes(browser: Any, page: Path) -> None:
    _at(browser, page, 1280, 720)
    n, decoded = browser.execute_script(
        """const imgs = [...document.images];
           return [imgs.length, imgs.filter(i => i.complete && i.naturalWidth > 0).length];"""
    )
    assert n >= 10 and decoded == n
