"""The docs against the code: numbers the README states, files the repository cites, and the
README's first two commands (they must run on a fresh machine: no path outside the repo)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
README = (REPO / "README.md").read_text(encoding="utf-8")


def _section(title: str) -> str:
    start = README.index(title)
    end = README.find("\n#", start + len(title))
    return README[start : end if end >= 0 else None]


def test_readme_states_the_tracking_toys_constants() -> None:
    from l2bn.train.tasks import TrackingTask

    text = " ".join(_section("### The tracking toy").split())
    # "16 unit vectors u = w/‖w‖ in R³², … turns at 5·10⁻³ rad/step … σ = 1 … (200 steps)"
    assert f"{TrackingTask.UNITS} unit vectors" in text
    assert "R" + str(TrackingTask.DIM).translate(str.maketrans("0123456789", "⁰¹²³⁴⁵⁶⁷⁸⁹")) in text
    mantissa, exponent = f"{TrackingTask.OMEGA:.0e}".split("e")
    sup = str(int(exponent)).translate(str.maketrans("-0123456789", "⁻⁰¹²³⁴⁵⁶⁷⁸⁹"))
    assert f"{mantissa}·10{sup} rad/step" in text
    assert f"σ = {TrackingTask.SIGMA:g}" in text
    assert f"({TrackingTask.STEPS_PER_EPOCH} steps)" in text


def _cited_files() -> list[tuple[Path, str]]:
    """Every `something.md` a tracked text file of ours names, with the file that names it."""
    out = []
    for path in [*REPO.glob("*.md"), *REPO.glob("docs/*.md"), *REPO.glob("sweeps/*.toml"),
                 *REPO.glob("l2bn/**/*.py")]:  # fmt: skip
        for name in re.findall(r"(?<![\w/.-])((?:[\w-]+/)*[\w-]+\.md)\b", path.read_text("utf-8")):
            out.append((path, name))
    return out


def test_every_cited_markdown_file_is_in_the_repository() -> None:
    missing = [
        f"{path.relative_to(REPO)} cites {name}"
        for path, name in _cited_files()
        if not (REPO / name).is_file() and not (path.parent / name).is_file()
    ]
    assert not missing, missing


def test_the_citation_check_catches_a_missing_file(tmp_path: Path) -> None:
    text = "see NOTES.md and docs/background.md"
    names = re.findall(r"(?<![\w/.-])((?:[\w-]+/)*[\w-]+\.md)\b", text)
    assert names == ["NOTES.md", "docs/background.md"]
    assert not (REPO / "NOTES.md").exists()  # so the test above would flag the first


@pytest.mark.parametrize("line", [0, 1])
def test_the_first_two_commands_stay_inside_the_repository(line: int) -> None:
    block = README.split("```bash\n", 1)[1].split("```", 1)[0]
    command = block.splitlines()[line].split("#", 1)[0].strip()
    assert command in ("scripts/demo.sh", "scripts/test.sh")
    assert ".." not in command and not command.startswith("/")
    assert (REPO / command).is_file()


def test_the_readme_stays_short_enough_for_a_newcomer() -> None:
    # What it is, the two commands, the result, one example per command; the rest is docs/.
    assert README.count("\n") <= 220
    for page in ("cli", "method", "study-layout", "deployment", "performance", "development"):
        assert f"(docs/{page}.md)" in README, page
