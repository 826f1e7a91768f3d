"""The headline run's summary (sweeps/headline.toml): its registered reading rule, applied.

    .venv/bin/python scripts/headline_summary.py docs/reproduction/headline

Reads each part's `l2bn analyze --json` output (``<folder>/<optimizer>/analysis.json``, and
``analysis-val_loss.json``, the registered second analysis) and the part's ``trials.csv``;
writes into ``<folder>``:

* ``summary.md``: the headline table (k with its 95 % CI per optimizer, by the primary and the
  two other estimators and by val_loss; theory; the registered target; the equilibrium test at
  the optimum cells), the reading rule's three conditions, and the norm law at the end of
  phase 1;
* ``summary.json``: the same numbers;
* ``k.png``: k with its CI per optimizer and estimator, theory dashed, the target shaded.

The reading rule (registered in sweeps/headline.toml before any trial): (1) nesterov's and
adamw's k in [0.9, 1.1], adam's in [0.4, 0.6] (point estimates, primary estimator); (2) adam's
95 % CI disjoint from nesterov's; (3) the optimum cells in equilibrium by the measured test.

The norm law is descriptive, not an analyze estimator: an OLS fit of log ‖w‖ = c + a·log η −
b·log λ over every cell's seed-mean norm at the last epoch of phase 1 (t-intervals), whether
or not the cell is in equilibrium. The theory's a = b is ¼ (nesterov), ⅓ (adam), ½ (adamw).
Parts not run yet are listed as missing.
"""

from __future__ import annotations

import csv
import json
import math
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from l2bn.analysis.estimating.equilibrium import tail_window
from l2bn.analysis.estimating.stats import ols, t_estimate
from l2bn.files import atomic_open
from l2bn.theory import theory_of

PARTS = ("nesterov", "adam", "adamw")
# The registered reading rule: the range each point estimate must lie in.
TARGETS = {"nesterov": (0.9, 1.1), "adam": (0.4, 0.6), "adamw": (0.9, 1.1)}
ESTIMATORS = (  # (label, where in analysis.json)
    ("joint (primary)", ("k_estimates", "joint")),
    ("per-λ quadratic", ("k_estimates", "per_lambda")),
    ("whole-grid collapse", ("collapse",)),
)


def _get(d: dict[str, Any], path: tuple[str, ...]) -> dict[str, Any]:
    for key in path:
        d = d[key]
    return d["estimate"]


def _fmt(e: dict[str, Any] | None) -> str:
    if not e or e.get("value") is None:
        return "–"
    return f"{e['value']:.2f} [{e['ci_low']:.2f}, {e['ci_high']:.2f}]"


def _ratio(x: float | None, verdict: str) -> str:
    """The JSON holds ∞ (growth with no shrink: ‖w‖ only grew) as null, like "unmeasured"."""
    if x is None:
        return "∞" if verdict == "out" else "–"
    return f"{x:.2f}"


def read_trials(trials_csv: Path) -> tuple[list[dict[str, str]], list[str]]:
    """The part's trials that did not diverge, and the layers whose norms they record."""
    rows = list(csv.DictReader(trials_csv.open()))
    layers = [
        c[5:-3] for c in (rows[0] if rows else ()) if c.startswith("norm_") and c.endswith("_e1")
    ]
    return [r for r in rows if r.get("diverged") in ("0", "False", "")], layers


def norm_law(
    rows: list[dict[str, str]], layers: list[str], phase1_epochs: int
) -> dict[str, dict[str, float]]:
    """Per layer, a and b of ‖w‖ ∝ η^a·λ^-b over the cells' seed-mean norms at the last
    epoch of phase 1, with 95 % t-intervals."""
    cells: dict[tuple[float, float], list[dict[str, str]]] = defaultdict(list)
    for r in rows:
        cells[(float(r["lr"]), float(r["weight_decay"]))].append(r)
    out = {}
    for layer in layers:
        col = f"norm_{layer}_e{phase1_epochs}"
        x, y = [], []
        for (lr, wd), rs in cells.items():
            vals = [float(r[col]) for r in rs if r.get(col) not in (None, "")]
            vals = [v for v in vals if math.isfinite(v) and v > 0]
            if vals:
                x.append((1.0, math.log(lr), math.log(wd)))
                y.append(float(np.mean(np.log(vals))))
        if len(y) < 4:
            continue
        fit = ols(np.array(x), np.array(y))
        a = t_estimate(float(fit.coef[1]), float(fit.stderr[1]), fit.dof, len(y), 0.95)
        b = t_estimate(float(-fit.coef[2]), float(fit.stderr[2]), fit.dof, len(y), 0.95)
        out[layer] = {
            "a": a.value, "a_low": a.ci_low, "a_high": a.ci_high,
            "b": b.value, "b_low": b.ci_low, "b_high": b.ci_high,
            "r_squared": fit.r_squared, "n_cells": len(y), "epoch": phase1_epochs,
        }  # fmt: skip
    return out


def norm_drift(
    rows: list[dict[str, str]], layers: list[str], weight_decay: float, lr: float, window: range
) -> dict[str, float]:
    """Per layer, the median over seeds of the change of log ‖w‖ over the equilibrium window
    (0-based epochs ``window``: from the end of the epoch before it to the end of its last) at
    one cell: how far from stationary the norm still is."""
    cell = [
        r for r in rows
        if math.isclose(float(r["weight_decay"]), weight_decay, rel_tol=1e-6)
        and math.isclose(float(r["lr"]), lr, rel_tol=1e-6)
    ]  # fmt: skip
    out = {}
    for layer in layers:
        start, end = f"norm_{layer}_e{window.start}", f"norm_{layer}_e{window.stop}"
        d = [math.log(float(r[end]) / float(r[start])) for r in cell if r.get(start) and r.get(end)]
        if d:
            out[layer] = float(np.median(d))
    return out


class BadInput(Exception):
    """What is wrong with a part, in one line (exit 2)."""


def load_part(folder: Path, opt: str) -> dict[str, Any] | None:
    """One part's numbers; None when it has not run (no analysis.json); BadInput when its files
    are there but cannot be read."""
    path = folder / opt / "analysis.json"
    if not path.exists():
        return None
    trials = folder / opt / "trials.csv"
    if not trials.is_file():
        raise BadInput(f"{trials}: missing (the part's `l2bn analyze --csv` export)")
    try:
        return _part(folder, opt, path)
    except (ValueError, KeyError, IndexError, TypeError) as e:
        raise BadInput(
            f"{folder / opt}: not a part's analysis.json and trials.csv ({type(e).__name__}: {e})"
        ) from None


def _part(folder: Path, opt: str, path: Path) -> dict[str, Any]:
    report = json.loads(path.read_text())
    group = report["groups"][0]
    loss_path = folder / opt / "analysis-val_loss.json"
    loss = json.loads(loss_path.read_text())["groups"][0] if loss_path.exists() else None
    rows, layers = read_trials(folder / opt / "trials.csv")
    phase1 = int(rows[0]["phase1_epochs"])  # the engine's own count, as the export wrote it
    window = tail_window(phase1, report["settings"]["equilibrium_tail"])  # analyze's window
    eq = group["optima_equilibrium"]
    per_lambda = [
        {
            "weight_decay": o["weight_decay"], "lr_opt": o["lr_opt"], "edge": o["edge"],
            "verdict": o["equilibrium"]["verdict"], "ratio": o["equilibrium"]["ratio"],
            "layer": o["equilibrium"]["layer"], "ratios": o["equilibrium"]["ratios"],
            "drift": norm_drift(rows, layers, o["weight_decay"], o["lr_grid"], window),
        }
        for o in group["optima"]
    ]  # fmt: skip
    theory = theory_of(opt)
    return {
        "optimizer": opt,
        "theory": group["k"]["theory"],
        "target": TARGETS[opt],
        "estimates": {label: _get(group, path) for label, path in ESTIMATORS},
        "val_loss": _get(loss, ("k_estimates", "joint")) if loss else None,
        "r_squared": group["k"]["r_squared"],
        "equilibrium": {"test": eq["test"], "in": eq["in"], "total": eq["total"]},
        "optima": per_lambda,
        "edges": sum(1 for o in group["optima"] if o["edge"]),
        "n_trials": group["n_trials"],
        "norm_law": norm_law(rows, layers, phase1),
        "norm_theory": theory.norm_exponent if theory else math.nan,  # a = b: ‖w‖ ∝ (η/λ)^a
    }


def reading_rule(parts: dict[str, dict[str, Any]]) -> list[tuple[str, str]]:
    """The registered conditions, each with "met", "missed" or "not run"."""
    out = []
    for opt in PARTS:
        p = parts.get(opt)
        lo, hi = TARGETS[opt]
        if p is None:
            out.append((f"(1) {opt}'s k in [{lo}, {hi}]", "not run"))
            continue
        k = p["estimates"]["joint (primary)"]["value"]
        ok = k is not None and lo <= k <= hi
        out.append((f"(1) {opt}'s k in [{lo}, {hi}]: {_fmt(p['estimates']['joint (primary)'])}",
                    "met" if ok else "missed"))  # fmt: skip
    n, a = parts.get("nesterov"), parts.get("adam")
    if n is None or a is None:
        out.append(("(2) adam's 95 % CI disjoint from nesterov's", "not run"))
    else:
        en, ea = n["estimates"]["joint (primary)"], a["estimates"]["joint (primary)"]
        disjoint = ea["ci_high"] < en["ci_low"] or en["ci_high"] < ea["ci_low"]
        gap = en["ci_low"] - ea["ci_high"]
        out.append((f"(2) adam's 95 % CI disjoint from nesterov's (gap {gap:+.2f})",
                    "met" if disjoint else "missed"))  # fmt: skip
    for opt in PARTS:
        p = parts.get(opt)
        if p is None:
            continue
        e = p["equilibrium"]
        text = (
            f"(3) {opt}: optimum cells in equilibrium ({e['test']} test): {e['in']} of {e['total']}"
        )
        out.append((text, "met" if e["in"] == e["total"] else "missed"))
    return out


def markdown(parts: dict[str, dict[str, Any]]) -> str:
    lines = [
        "| optimizer | k, primary (joint), 95 % CI | per-λ quadratic | whole-grid collapse "
        "| val_loss (joint) | theory | registered target | optimum cells in equilibrium "
        "| ‖w‖ drift over the window |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for opt in PARTS:
        p = parts.get(opt)
        if p is None:
            lines.append(f"| {opt} | not run | | | | | | | |")
            continue
        est = p["estimates"]
        drift = ", ".join(
            f"{100 * max(o['drift'].values(), key=abs):+.1f} % "
            f"({max(o['drift'], key=lambda x: abs(o['drift'][x]))})"
            for o in p["optima"]
            if o["drift"]
        )
        worst = ", ".join(
            f"λ {o['weight_decay']:.3g}: {_ratio(o['ratio'], o['verdict'])} ({o['layer']})"
            for o in p["optima"]
        )
        lines.append(
            f"| {opt} | **{_fmt(est['joint (primary)'])}** (R² {p['r_squared']:.2f}) "
            f"| {_fmt(est['per-λ quadratic'])} | {_fmt(est['whole-grid collapse'])} "
            f"| {_fmt(p['val_loss'])} | {p['theory']:g} | {p['target'][0]}–{p['target'][1]} "
            f"| {p['equilibrium']['in']} of {p['equilibrium']['total']} ({p['equilibrium']['test']}"
            f"; worst layer's ratio {worst}) | {drift} |"
        )
    lines += ["", "Reading rule (registered):", ""]
    lines += [f"- {text}: **{verdict}**" for text, verdict in reading_rule(parts)]
    lines += [
        "",
        "Norm law at the end of phase 1, ‖w‖ ∝ η^a·λ^-b (OLS over every cell's seed-mean "
        "norm, 95 % t-intervals; not equilibrium-filtered):",
        "",
        "| optimizer | theory a = b | layer | a | b | R² | cells |",
        "|---|---|---|---|---|---|---|",
    ]
    for opt in PARTS:
        p = parts.get(opt)
        if p is None:
            continue
        for layer, f in p["norm_law"].items():
            lines.append(
                f"| {opt} | {p['norm_theory']:.2f} | {layer} "
                f"| {f['a']:.2f} [{f['a_low']:.2f}, {f['a_high']:.2f}] "
                f"| {f['b']:.2f} [{f['b_low']:.2f}, {f['b_high']:.2f}] "
                f"| {f['r_squared']:.2f} | {f['n_cells']} |"
            )
    return "\n".join(lines) + "\n"


def plot(parts: dict[str, dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [*(label for label, _ in ESTIMATORS), "val_loss (joint)"]
    rows = sum(len(labels) + 1 for opt in PARTS if opt in parts)
    fig, ax = plt.subplots(figsize=(7, 1.2 + 0.3 * rows), dpi=110)
    y = 0.0
    ticks, names = [], []
    for opt in PARTS:
        p = parts.get(opt)
        if p is None:
            continue
        lo, hi = p["target"]
        top = y + len(labels) - 0.5
        ax.fill_betweenx([y - 0.5, top], lo, hi, color="tab:green", alpha=0.12, lw=0)
        ax.plot([p["theory"]] * 2, [y - 0.5, top], "k--", lw=1)
        ests = [*(p["estimates"][label] for label, _ in ESTIMATORS), p["val_loss"]]
        for i, (label, e) in enumerate(zip(labels, ests, strict=True)):
            if e and e.get("value") is not None:
                ax.errorbar(e["value"], y + i, xerr=[[e["value"] - e["ci_low"]],
                            [e["ci_high"] - e["value"]]], fmt="o" if i == 0 else "s",
                            color=f"C{i}", ms=6 if i == 0 else 4, capsize=3)  # fmt: skip
            ticks.append(y + i)
            names.append(f"{opt}: {label}")
        y += len(labels) + 1
    ax.set_yticks(ticks, names, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("k in η* ∝ λ^-k (95 % CI); dashed: theory; shaded: registered target")
    ax.set_title("Headline run: real CIFAR-10 subset, every weight scale-invariant", fontsize=9)
    fig.tight_layout()
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png")
    plt.close(fig)


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: headline_summary.py FOLDER (docs/reproduction/headline)", file=sys.stderr)
        return 2
    folder = Path(argv[0])
    try:
        parts = {opt: p for opt in PARTS if (p := load_part(folder, opt)) is not None}
    except BadInput as e:
        print(f"headline_summary.py: {e}", file=sys.stderr)
        return 2
    if not parts:
        print(f"headline_summary.py: no <optimizer>/analysis.json under {folder}", file=sys.stderr)
        return 2
    text = markdown(parts)
    summary = {"parts": parts, "reading_rule": reading_rule(parts)}
    try:  # all three or none: each is written whole (atomic), the first failure stops the rest
        with atomic_open(folder / "summary.md", "w") as f:
            f.write(text)
        with atomic_open(folder / "summary.json", "w") as f:
            json.dump(summary, f, indent=1)
        plot(parts, folder / "k.png")
    except OSError as e:
        print(f"headline_summary.py: cannot write into {folder}: {e.strerror}", file=sys.stderr)
        return 2
    print(text, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
