"""Does the SGD family's norm law hold once the gradient's own size is measured?

The theory's equilibrium (SGD with momentum α, coupled L2 λ) balances growth η²‖g‖² against
shrink 2ηλ‖w‖²/(1 − α) per step; with G = ‖g‖·‖w‖, the gradient at unit weight scale, that is
‖w‖⁴ = η·G²/(2λ(1 − α)) up to the update correlation's constant, so

    ‖w‖ ∝ (η/λ)^¼ · G^½.

The table's ‖w‖ ∝ (η/λ)^¼ assumes G the same in every cell. It is not if G depends on the
effective learning rate (on η·λ, the collapse coordinate): then the fitted exponent of η·λ is
¼ + ½·s, with s the slope of log G against log(η·λ). This script fits, from a part's
trials.csv (seed-averaged cells, the norm at the end of phase 1, G the tail summary that the
equilibrium test uses):

* log‖w‖ on log η and log λ (what analyze's a and b measure);
* log G on log(η·λ^k) and log λ (s, and t: a λ dependence at fixed η·λ^k would break the
  symmetry);
* the residual of log‖w‖ about ¼·log(η/λ) + ½·log G: its spread across cells says whether
  the law holds with G measured.

    .venv/bin/python scripts/norm_gradient.py docs/reproduction/headline2/nesterov/trials.csv
"""

from __future__ import annotations

import csv
import math
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from l2bn.analysis.estimating.stats import ols
from l2bn.theory import theory_of


@dataclass(frozen=True)
class NormGradientFit:
    """One layer's fits over a part's seed-averaged cells (estimates with their OLS stderr)."""

    optimizer: str
    layer: str
    n_cells: int
    a: tuple[float, float]  # ‖w‖ ∝ η^a …
    b: tuple[float, float]  # … λ^-b
    s: tuple[float, float]  # G ∝ (η·λ^k)^s …
    t: tuple[float, float]  # … λ^t (0 under the symmetry)
    residual_sd: float  # of log[‖w‖ ÷ ((η/λ)^¼·G^½)] across cells
    spread_sd: float  # of log‖w‖ across cells


def _slopes(x: np.ndarray, y: np.ndarray) -> list[tuple[float, float]]:
    """(estimate, stderr) per slope of y on the columns of x, with an intercept."""
    r = ols(np.column_stack([np.ones(len(y)), x]), y)
    return [(float(e), float(se)) for e, se in zip(r.coef[1:], r.stderr[1:], strict=True)]


def fit(path: Path, layer: str = "conv1") -> NormGradientFit:
    rows = list(csv.DictReader(path.open()))
    cells: dict[tuple[float, float], list[tuple[float, float]]] = defaultdict(list)
    for r in rows:
        try:
            norm = float(r[f"norm_{layer}_e{r['phase1_epochs']}"])
            grad = float(r[f"grad_norm_{layer}"])
        except (KeyError, ValueError):
            continue
        if r["diverged"].lower() != "true" and norm > 0 and grad > 0 and math.isfinite(norm):
            key = (float(r["lr"]), float(r["weight_decay"]))
            cells[key].append((math.log(norm), math.log(grad)))
    if len(cells) < 4:
        raise ValueError(f"{path} has {len(cells)} cells with {layer}'s norm and gradient (≥ 4)")
    optimizer = rows[0]["optimizer"]
    theory = theory_of(optimizer)
    k = 1.0 if theory is None else theory.k  # the collapse coordinate η·λ^k
    lr = np.log([c[0] for c in cells])
    wd = np.log([c[1] for c in cells])
    log_norm = np.array([np.mean([n for n, _ in v]) for v in cells.values()])
    log_grad = np.array([np.mean([g for _, g in v]) for v in cells.values()])
    a, minus_b = _slopes(np.column_stack([lr, wd]), log_norm)
    s, t = _slopes(np.column_stack([lr + k * wd, wd]), log_grad)
    resid = log_norm - ((lr - wd) / 4 + log_grad / 2)
    return NormGradientFit(
        optimizer, layer, len(cells), a, (-minus_b[0], minus_b[1]), s, t,
        float(resid.std(ddof=1)), float(log_norm.std(ddof=1)),
    )  # fmt: skip


def _pm(x: tuple[float, float]) -> str:
    return f"{x[0]:.3f} ± {x[1]:.3f}"


def report(f: NormGradientFit, path: Path) -> str:
    theory = theory_of(f.optimizer)
    k = 1.0 if theory is None else theory.k
    lines = [
        f"{path}: {f.optimizer}, {f.layer}, {f.n_cells} cells, norm at the end of phase 1",
        f"  ‖w‖ ∝ η^a λ^-b:         a = {_pm(f.a)}, b = {_pm(f.b)}",
        f"  G ∝ (η·λ^{k:g})^s · λ^t:  s = {_pm(f.s)}, t = {_pm(f.t)}",
    ]
    if theory is not None and theory.eff_lr_power == 2:  # the SGD family's law, above
        lines += [
            f"  ¼ + ½·s = {0.25 + f.s[0] / 2:.3f}: the η exponent the law predicts with G measured",
            f"  log[‖w‖ ÷ ((η/λ)^¼·G^½)] across cells: sd {f.residual_sd:.3f}"
            f" (log‖w‖ itself: sd {f.spread_sd:.3f})",
        ]
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) not in (2, 3):
        print("usage: norm_gradient.py TRIALS_CSV [LAYER]", file=sys.stderr)
        sys.exit(2)
    csv_path = Path(sys.argv[1])
    try:
        print(report(fit(csv_path, *sys.argv[2:]), csv_path))
    except (OSError, ValueError) as e:
        print(f"norm_gradient.py: {e}", file=sys.stderr)
        sys.exit(2)
