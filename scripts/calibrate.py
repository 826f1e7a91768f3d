"""The calibration of analyze's primary k, in full: planted studies that look like real ones.

    .venv/bin/python scripts/calibrate.py [--studies N] [--out docs/calibration-table.md]
    .venv/bin/python scripts/calibrate.py --measure   # the valley shapes of the headline CSVs

Runs every scenario of l2bn.analysis.calibration.SCENARIOS (N studies per k of the pair, 300 by
default: 7800 studies, about 10 minutes on 2 cores) and writes the table, with the targets and
whether each is met, to ``--out`` (atomically). Each scenario draws from a seed of its own name
(:func:`~l2bn.analysis.calibration.scenario_seed`), so the table is the same on every run of
the same code, and adding a scenario does not redraw the others.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

from l2bn.analysis.calibration import (
    HEADER,
    SCENARIOS,
    Summary,
    measure_valley,
    run,
    scenario_seed,
)
from l2bn.files import atomic_open

REPO = Path(__file__).resolve().parent.parent


def verdicts(s: Summary, targets: dict[str, float]) -> list[str]:
    out = []
    if "abs_error" in targets:
        ok = s.median_abs_error <= targets["abs_error"]
        out.append(f"median |k̂ − k| ≤ {targets['abs_error']}: {'met' if ok else 'missed'}")
    if "coverage_low" in targets:
        lo, hi = targets["coverage_low"], targets["coverage_high"]
        ok = lo <= s.coverage <= hi
        out.append(f"coverage in [{lo}, {hi}]: {'met' if ok else 'missed'} ({s.coverage:.3f})")
        ok = s.median_width <= targets["width"]
        out.append(
            f"median width ≤ {targets['width']}: {'met' if ok else 'missed'} "
            f"({s.median_width:.3f}; the design's floor, 2 × 1.96 × oracle sd: "
            f"{2 * 1.96 * s.oracle_sd:.3f})"
        )
        ok = s.disjoint >= targets["disjoint"]
        out.append(f"disjoint ≥ {targets['disjoint']}: {'met' if ok else 'missed'}")
    if "coverage_or_named" in targets:
        t = targets["coverage_or_named"]
        ok = s.coverage >= t or s.row0_left_out >= t
        out.append(
            f"coverage ≥ {t} or the row named in ≥ {t}: {'met' if ok else 'missed'} "
            f"(coverage {s.coverage:.3f}, named {s.row0_left_out:.2f})"
        )
    return out


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=300, help="studies per k per scenario")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "calibration-table.md")
    parser.add_argument("--measure", action="store_true", help="print the measured shapes")
    args = parser.parse_args(argv)
    if args.measure:
        for opt, k in (("nesterov", 1.0), ("adam", 0.5)):
            path = REPO / "docs" / "reproduction" / "headline" / opt / "trials.csv"
            print(opt, measure_valley(path, k))
        return 0
    if args.studies < 2:
        print("calibrate.py: --studies must be ≥ 2", file=sys.stderr)
        return 2
    lines = [
        f"| {' | '.join(HEADER)} |",
        f"|{'---|' * len(HEADER)}",
    ]
    notes = []
    start = time.perf_counter()
    for scenario in SCENARIOS:
        t0 = time.perf_counter()
        s = run(scenario, args.studies, seed=scenario_seed(scenario))
        lines.append(f"| {' | '.join(s.cells())} |")
        for v in verdicts(s, scenario.targets):
            notes.append(f"- {scenario.name}: {v}")
        print(f"{scenario.name}: {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    minutes = (time.perf_counter() - start) / 60
    text = "\n".join([
        "<!-- written by scripts/calibrate.py; do not edit by hand -->",
        f"{args.studies} studies per k ∈ {{1, ½}} per scenario ({minutes:.0f} min).",
        "",
        *lines,
        "",
        "Targets (issue 22):",
        "",
        *notes,
        "",
    ])  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(args.out, "w") as f:
        f.write(text)
    print(text)
    return 0 if math.isfinite(minutes) else 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
