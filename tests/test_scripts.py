"""The report scripts of scripts/: run as REPRODUCTION.md runs them, on the committed outputs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from conftest import REPO

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def run_script(name: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(REPO / "scripts" / name), *args],
        capture_output=True, text=True, timeout=120, cwd=REPO,
    )  # fmt: skip


def test_k_summary_reads_analyze_json(tmp_path: Path) -> None:
    # A real `l2bn analyze --json` output (run 4), and a copy whose k is undetermined.
    real = REPO / "docs" / "reproduction" / "cpu-adam" / "analysis.json"
    report = json.loads(real.read_text())
    k = report["groups"][0]["k"]["estimate"]
    blank = tmp_path / "flat" / "analysis.json"
    blank.parent.mkdir()
    report["groups"][0]["k"]["estimate"] = {**k, "value": float("nan")}
    report["groups"][0]["k"]["verdict"] = "undetermined"
    blank.write_text(json.dumps(report))
    out = tmp_path / "k.png"

    done = run_script("k_summary.py", str(out), str(real), str(blank))

    assert done.returncode == 0, done.stderr
    rows = [line for line in done.stdout.splitlines() if line.startswith("| cpu-adam")]
    assert rows == [
        f"| cpu-adam | adam | {k['value']:.2f} [{k['ci_low']:.2f}, {k['ci_high']:.2f}] | 0.5 "
        f"| 6/6 | inconsistent |"
    ]
    assert "| flat | adam | – | 0.5 | 6/6 | undetermined |" in done.stdout
    assert out.read_bytes()[:8] == PNG_MAGIC


def test_k_summary_bad_input_is_one_line(tmp_path: Path) -> None:
    missing = run_script("k_summary.py", str(tmp_path / "k.png"), str(tmp_path / "none.json"))
    assert missing.returncode == 2
    assert len(missing.stderr.strip().splitlines()) == 1 and "analysis JSON" in missing.stderr
    assert not (tmp_path / "k.png").exists()
    real = str(REPO / "docs" / "reproduction" / "cpu-adam" / "analysis.json")
    unwritable = run_script("k_summary.py", str(tmp_path / "no" / "dir" / "k.png"), real)
    assert unwritable.returncode == 2 and "cannot write" in unwritable.stderr
    assert "Traceback" not in unwritable.stderr
    usage = run_script("k_summary.py", "not-a-png.txt")
    assert usage.returncode == 2 and usage.stderr.startswith("usage:")
