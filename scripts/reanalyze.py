"""Every committed run, re-analyzed by analyze v3 (exploratory beside what each registered).

    .venv/bin/python scripts/reanalyze.py            # ~1 min on 2 cores

For each run under docs/reproduction/ (its ``trials.csv``), ``l2bn analyze --from-csv`` with the
defaults of this l2bn (the whole-surface collapse as the primary k), written as
``analysis-v3.json`` beside the run's own analysis (and ``analysis-v3-val_loss.json`` where
the run registered a val_loss analysis too), with the headline's figures under ``v3/``; then
one table, ``docs/reproduction/v3-reanalysis.md``: per run and optimizer, the k it reported
with the estimator it registered, and v3's primary, its collapse status, the rows it left out
and its optimum cells in equilibrium. v3's numbers are **exploratory** wherever the registered
primary was another estimator: they never replace the registered result.

Bad input (a run without trials.csv, an unreadable registered analysis, an unwritable folder):
one line on stderr, exit 2.
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from l2bn.analysis.pipeline import AnalyzeConfig, run_analysis
from l2bn.errors import L2bnError
from l2bn.files import atomic_open

REPO = Path(__file__).resolve().parent.parent
RUNS = REPO / "docs" / "reproduction"


@dataclass(frozen=True)
class Run:
    name: str  # folder under docs/reproduction
    registered: str  # its registered analysis file (the k it reported)
    estimator: str  # the estimator that file's k came from
    losses: bool = False  # it registered a val_loss analysis too


RUN_LIST = (
    Run("cpu", "analysis.json", "v1: η* per λ, regression (bootstrap)"),
    Run("cpu-noaffine", "analysis.json", "v1: η* per λ, regression (bootstrap)"),
    Run("cpu-long", "analysis.json", "v1: η* per λ, regression (bootstrap)"),
    Run("cpu-adam", "analysis.json", "v1: η* per λ, regression (bootstrap)"),
    Run("cpu-200ep", "analysis.json", "v1: η* per λ, regression (OLS-t)"),
    Run("cpu-adam-noaffine", "analysis.json", "v1: η* per λ, regression (OLS-t)"),
    Run("metric-noise", "analysis-val_error.json", "v2: joint parabola", losses=True),
    Run("symmetry", "analysis.json", "v2: joint parabola"),
    Run("symmetry-pytorch-eps", "analysis.json", "v2: joint parabola"),
    Run("headline/nesterov", "analysis.json", "v2: joint parabola", losses=True),
    Run("headline/adam", "analysis.json", "v2: joint parabola", losses=True),
    Run("headline/adamw", "analysis.json", "v2: joint parabola", losses=True),
)


class ScriptError(Exception):
    """Bad input: one line on stderr, exit 2."""


def _fmt(est: dict[str, Any]) -> str:
    value, lo, hi = est.get("value"), est.get("ci_low"), est.get("ci_high")
    if value is None:
        return "–"
    if lo is None or hi is None:
        return f"{value:.2f} [–]"
    return f"{value:.2f} [{lo:.2f}, {hi:.2f}]"


def registered_k(run: Run) -> dict[str, dict[str, Any]]:
    path = RUNS / run.name / run.registered
    try:
        data = json.loads(path.read_text())
        return {str(g["optimizer"]): dict(g["k"].get("estimate", g["k"])) for g in data["groups"]}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise ScriptError(f"{path}: not a readable analysis ({type(e).__name__}: {e})") from None


def analyze_run(run: Run, metric: str, suffix: str, plots: bool) -> dict[str, Any]:
    folder = RUNS / run.name
    csv_path = folder / "trials.csv"
    if not csv_path.is_file():
        raise ScriptError(f"{csv_path}: missing; every committed run keeps its trials.csv")
    cfg = AnalyzeConfig(
        from_csv=csv_path,
        metric=metric,
        json_path=folder / f"analysis-v3{suffix}.json",
        plots_dir=folder / "v3" if plots else None,
    )
    try:
        report = run_analysis(cfg)
    except PermissionError as e:
        raise ScriptError(f"{folder}: cannot write there ({e.strerror})") from None
    except L2bnError as e:
        raise ScriptError(f"{csv_path}: {e}") from None
    return {g.optimizer: g for g in report.groups}  # type: ignore[return-value]


def row_for(run: Run, optimizer: str, reg: dict[str, Any], g: Any) -> str:
    fit = g.collapse
    left = [f"{r.weight_decay:.3g}" for r in fit.rows if not r.used] if fit else []
    eq = g.optima_equilibrium
    status = fit.status if fit is not None else "–"
    label = "registered" if run.estimator.startswith("v3") else "exploratory"
    return (
        f"| {run.name} | {optimizer} | {_fmt(reg)} ({run.estimator}) | "
        f"{_fmt(g.scaling.k.to_dict())} ({label}) | {g.scaling.theory} | {status} | "
        f"{', '.join(left) or '–'} | {eq['in']}/{eq['total']} |"
    )


def main(argv: list[str]) -> int:
    if argv:
        print("reanalyze.py: takes no arguments (see its docstring)", file=sys.stderr)
        return 2
    lines = [
        "<!-- written by scripts/reanalyze.py; do not edit by hand -->",
        "# Every committed run, re-analyzed by analyze v3",
        "",
        "The registered result of each run stands as it was registered; v3's primary (the",
        "whole-surface collapse, [docs/method.md](../method.md)) is **exploratory** beside it",
        "wherever the run registered another estimator. Metric val_error; λ rows left out by",
        "the lack-of-collapse rule; optimum cells in equilibrium by stationarity.",
        "",
        "| run | optimizer | registered k [95 % CI] (estimator) | v3 primary k [95 % CI] "
        "| theory | collapse | λ rows left out | optima in eq. |",
        "|---|---|---|---|---|---|---|---|",
    ]
    loss_lines = [
        "",
        "The registered val_loss analyses, re-analyzed the same way:",
        "",
        "| run | optimizer | registered k (val_loss) | v3 primary k (val_loss) | collapse |",
        "|---|---|---|---|---|",
    ]
    try:
        for run in RUN_LIST:
            reg = registered_k(run)
            groups = analyze_run(run, "val_error", "", plots=run.name.startswith("headline/"))
            for optimizer, g in groups.items():
                lines.append(row_for(run, optimizer, reg.get(optimizer, {}), g))
            if run.losses:
                name = "analysis-val_loss.json" if run.name != "metric-noise" else None
                loss_reg = (
                    registered_k(Run(run.name, name or "analysis-val_loss.json", ""))
                    if (RUNS / run.name / "analysis-val_loss.json").is_file()
                    else {}
                )
                for optimizer, g in analyze_run(run, "val_loss", "-val_loss", False).items():
                    fit = g.collapse
                    loss_lines.append(
                        f"| {run.name} | {optimizer} | {_fmt(loss_reg.get(optimizer, {}))} | "
                        f"{_fmt(g.scaling.k.to_dict())} | {fit.status if fit else '–'} |"
                    )
        out = RUNS / "v3-reanalysis.md"
        with atomic_open(out, "w") as f:
            f.write("\n".join([*lines, *loss_lines, ""]))
    except ScriptError as e:
        print(f"reanalyze.py: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"reanalyze.py: cannot write {e.filename}: {e.strerror}", file=sys.stderr)
        return 2
    print(out.read_text())
    return 0 if math.isfinite(0.0) else 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
