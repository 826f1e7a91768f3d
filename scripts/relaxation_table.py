"""Measured relaxation of the reproduction runs, from their exported trials.csv.

`l2bn analyze` reports the measured relaxation
(l2bn.analysis.estimating.relaxation.relaxation_index) for the
studies it reads; runs 1–3 of REPRODUCTION.md were analyzed before it existed and their
databases are not kept, so this reads the per-epoch norms from the committed CSV instead:

    .venv/bin/python scripts/relaxation_table.py docs/reproduction/cpu-long/trials.csv

Per optimizer: for every (λ, η) cell, c·η·λ·T (the clock) and the median over seeds of the
measured time constants of conv1 over phase 1; then the counts at ≥ 5 by each, and the cell
with the lowest seed-averaged validation error per λ (η* on the grid).
"""

from __future__ import annotations

import csv
import statistics
import sys
from collections import defaultdict
from pathlib import Path

from l2bn.analysis.estimating.relaxation import relaxation_index
from l2bn.theory import theory_of


def main(path: str, layer: str = "conv1", threshold: float = 5.0) -> None:
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    by_opt: dict[str, dict[tuple[float, float], list[dict[str, str]]]] = defaultdict(
        lambda: defaultdict(list)
    )
    for r in rows:
        by_opt[r["optimizer"]][(float(r["weight_decay"]), float(r["lr"]))].append(r)
    for opt, cells in sorted(by_opt.items()):
        theory = theory_of(opt)
        c = 1.0 if theory is None else theory.relaxation_rate
        print(f"{opt}: c = {c:g}, layer {layer}; cells as c·η·λ·T / measured r·T")
        clocked = measured = 0
        best: dict[float, tuple[float, float, float, float]] = {}
        for wd in sorted({k[0] for k in cells}):
            line = []
            for lr in sorted(lr for w, lr in cells if w == wd):
                trials = cells[(wd, lr)]
                n1 = int(trials[0]["phase1_epochs"])
                xs = [
                    relaxation_index([float(t[f"norm_{layer}_e{e}"]) for e in range(1, n1 + 1)])
                    for t in trials
                    if t["diverged"] == "0"
                ]
                x = statistics.median(xs) if xs else float("nan")
                clock = c * statistics.fmean(float(t["eta_lambda_T"]) for t in trials)
                err = statistics.fmean(float(t["val_error"]) for t in trials)
                clocked += clock >= threshold
                measured += x >= threshold
                if wd not in best or err < best[wd][0]:
                    best[wd] = (err, lr, clock, x)
                line.append(f"{clock:6.3g}/{x:4.1f}")
            print(f"  λ={wd:<7g}", " ".join(line))
        print(f"  cells ≥ {threshold:g}: {clocked} of {len(cells)} by the clock, "
              f"{measured} measured")  # fmt: skip
        for wd, (err, lr, clock, x) in sorted(best.items()):
            print(f"  η* cell at λ={wd:g}: η={lr:.3g}, error {err:.3f}, clock {clock:.3g}, "
                  f"measured {x:.1f}")  # fmt: skip


if __name__ == "__main__":
    if len(sys.argv) != 2 or not Path(sys.argv[1]).is_file():
        print("usage: relaxation_table.py RUN/trials.csv (an existing file)", file=sys.stderr)
        sys.exit(2)
    main(sys.argv[1])
