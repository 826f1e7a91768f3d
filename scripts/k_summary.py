"""REPRODUCTION.md's summary figure: k (η* ∝ λ^-k) with its 95 % CI for every run and optimizer.

    .venv/bin/python scripts/k_summary.py docs/reproduction/k_summary.png \
        docs/reproduction/*/analysis.json

Reads the `l2bn analyze --json` files given (one run each; the run is named by the file's
folder), prints one markdown row per group, sorted by optimizer and run (run, optimizer,
k [CI], theory, λ used, verdict), and draws them as a forest plot: one line per group, its
theory k dashed, the issue's target range shaded. Groups whose k is undetermined are listed
and not drawn.
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from l2bn.files import atomic_open

# Issue 7's target ranges, per theory k (the table of README.md: k = 1 and k = ½).
TARGETS = {1.0: (0.8, 1.2), 0.5: (0.35, 0.65)}


@dataclass(frozen=True)
class Row:
    run: str
    optimizer: str
    k: float
    ci_low: float
    ci_high: float
    theory: float | None
    n_used: int
    n_lambda: int
    verdict: str

    @property
    def label(self) -> str:
        return f"{self.run} · {self.optimizer}"


def rows_of(path: Path) -> list[Row]:
    report: dict[str, Any] = json.loads(path.read_text())
    out = []
    for g in report["groups"]:
        est = g["k"]["estimate"]
        out.append(
            Row(
                run=path.parent.name,
                optimizer=g["optimizer"],
                k=float(est["value"]),
                ci_low=float(est["ci_low"]),
                ci_high=float(est["ci_high"]),
                theory=g["k"]["theory"],
                n_used=int(est["n"]),
                n_lambda=int(g["n_lambda"]),
                verdict=g["k"]["verdict"],
            )
        )
    return out


def markdown(rows: list[Row]) -> str:
    lines = [
        "| run | optimizer | k, 95 % CI | theory | λ used | verdict |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        k = f"{r.k:.2f} [{r.ci_low:.2f}, {r.ci_high:.2f}]" if math.isfinite(r.k) else "–"
        theory = "–" if r.theory is None else f"{r.theory:g}"
        lines.append(
            f"| {r.run} | {r.optimizer} | {k} | {theory} | {r.n_used}/{r.n_lambda} | {r.verdict} |"
        )
    return "\n".join(lines)


def plot(rows: list[Row], path: Path) -> None:
    from matplotlib.figure import Figure

    drawn = [r for r in rows if math.isfinite(r.k)]
    width, height = 6.5, 0.4 * len(drawn) + 1.3
    fig = Figure(figsize=(width, height))
    ax = fig.subplots()
    # Margins in inches: room for the run labels, the x label and the title.
    fig.subplots_adjust(left=1.9 / width, right=1 - 0.2 / width, bottom=0.7 / height,
                        top=1 - 0.45 / height)  # fmt: skip
    for theory, (lo, hi) in TARGETS.items():
        ax.axvspan(lo, hi, color="0.9", zorder=0)
        ax.axvline(theory, ls="--", color="0.5", lw=1, zorder=1)
    for i, r in enumerate(drawn):
        color = "C0" if r.theory == 1.0 else "C1"
        xerr = [[r.k - r.ci_low], [r.ci_high - r.k]]
        ax.errorbar(r.k, i, xerr=xerr, fmt="o", color=color, capsize=3, zorder=2)
    ax.set_yticks(range(len(drawn)), [r.label for r in drawn], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("k in η* ∝ λ^-k, with 95 % CI", fontsize=9)
    ax.set_title("every run: dashed = theory, shaded = issue 7's target", fontsize=9)
    ax.grid(True, axis="x", alpha=0.3)
    with atomic_open(path, "wb") as f:
        fig.savefig(f, dpi=120, format="png")


def main(argv: list[str]) -> int:
    if len(argv) < 2 or not argv[0].endswith(".png"):
        print("usage: k_summary.py OUT.png ANALYSIS.json [ANALYSIS.json …]", file=sys.stderr)
        return 2
    out, paths = Path(argv[0]), [Path(p) for p in argv[1:]]
    try:
        rows = sorted((r for p in paths for r in rows_of(p)), key=lambda r: (r.optimizer, r.run))
    except (OSError, ValueError, KeyError, TypeError) as e:
        why = f"cannot read an analysis JSON ({e!r}); give `l2bn analyze --json` files"
        print(f"k_summary.py: {why}", file=sys.stderr)
        return 2
    print(markdown(rows))
    try:
        plot(rows, out)
    except OSError as e:
        print(
            f"k_summary.py: cannot write {out} ({e.strerror}); give a writable path",
            file=sys.stderr,
        )
        return 2
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
