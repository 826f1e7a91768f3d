"""Which validation metric locates η* with less noise? Compare two analyses of the same trials.

    python scripts/metric_noise.py ERROR.json LOSS.json [--json OUT.json]

ERROR.json and LOSS.json are ``l2bn analyze --json`` of the same studies with ``--metric
val_error`` and ``--metric val_loss``. The registered reading (sweeps/metric-noise.toml): a
metric's noise is the median over (optimizer, λ) of the width of η*'s 95 % CI in log10 η (the
per-λ local quadratic, weighted by the cells' measured seed noise); the loss "halves the noise"
when its median width is at most half the error's. The width of k's CI per optimizer is printed
beside it as a second view.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

HALVES = 0.5  # the registered threshold: loss width ≤ ½ error width


def eta_ci_widths(report: dict[str, Any]) -> dict[tuple[str, float], float]:
    """(optimizer, λ) → width of η*'s CI in decades (NaN where the fit gave none)."""
    out = {}
    for group in report["groups"]:
        for o in group["optima"]:
            low, high = o.get("lr_ci_low"), o.get("lr_ci_high")
            ok = low is not None and high is not None and low > 0 and high > 0
            width = math.log10(high / low) if ok else math.nan
            out[(group["optimizer"], o["weight_decay"])] = width
    return out


def k_ci(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {g["optimizer"]: g["k"]["estimate"] for g in report["groups"]}


def _finite(x: Any) -> Any:
    """NaN and infinities as null: strict JSON."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_finite(v) for v in x]
    return x


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("error", type=Path, help="analyze --json with --metric val_error")
    parser.add_argument("loss", type=Path, help="analyze --json with --metric val_loss")
    parser.add_argument("--json", type=Path, help="write the comparison here")
    args = parser.parse_args(argv)
    reports = {
        m: json.loads(p.read_text())
        for m, p in (("val_error", args.error), ("val_loss", args.loss))
    }
    for metric, report in reports.items():
        got = {g.get("metric") for g in report["groups"]}
        if got != {metric}:
            print(
                f"metric_noise.py: {metric} file analysed {sorted(map(str, got))}", file=sys.stderr
            )
            return 2
    widths = {m: eta_ci_widths(r) for m, r in reports.items()}
    keys = sorted(set(widths["val_error"]) & set(widths["val_loss"]))
    table = Table(title="η*'s 95 % CI width per λ (decades of η)")
    for col in ("optimizer", "λ", "val_error", "val_loss", "loss ÷ error"):
        table.add_column(col, justify="right")
    for key in keys:
        e, loss = widths["val_error"][key], widths["val_loss"][key]
        table.add_row(key[0], f"{key[1]:.4g}", f"{e:.3f}", f"{loss:.3f}", f"{loss / e:.2f}")
    medians = {
        m: statistics.median([w[k] for k in keys if math.isfinite(w[k])] or [math.nan])
        for m, w in widths.items()
    }
    ratio = medians["val_loss"] / medians["val_error"]
    ks = {m: k_ci(r) for m, r in reports.items()}
    k_table = Table(title="k (joint estimator) per metric")
    for col in ("optimizer", "metric", "k", "95 % CI", "CI width"):
        k_table.add_column(col, justify="right")
    k_rows = []
    for opt in sorted(ks["val_error"]):
        for metric in reports:
            est = ks[metric].get(opt)
            if est is None:
                continue
            width = (est["ci_high"] or math.nan) - (est["ci_low"] or math.nan)
            k_rows.append({"optimizer": opt, "metric": metric, **est, "ci_width": width})
            k_table.add_row(
                opt,
                metric,
                f"{est['value']:.3f}",
                f"[{est['ci_low']:.3f}, {est['ci_high']:.3f}]",
                f"{width:.3f}",
            )
    console = Console()
    console.print(table)
    console.print(
        f"median width: val_error {medians['val_error']:.3f}, val_loss {medians['val_loss']:.3f}"
        f" decades; loss ÷ error = {ratio:.2f}"
        f" (registered: the loss halves the noise if ≤ {HALVES})"
    )
    console.print(k_table)
    verdict = "val_loss" if ratio <= HALVES else "val_error"
    console.print(f"objective for the headline run: {verdict}")
    if args.json:
        out = {
            "eta_ci_width": [
                {"optimizer": k[0], "weight_decay": k[1], **{m: widths[m][k] for m in widths}}
                for k in keys
            ],
            "median_width": medians,
            "ratio": ratio,
            "threshold": HALVES,
            "k": k_rows,
            "objective": verdict,
        }
        args.json.write_text(json.dumps(_finite(out), indent=1, allow_nan=False) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
