"""The ``_equilibrium.png`` figure (``l2bn analyze --plots``): at each λ's optimum cell, per
scale-invariant layer, the stationarity the verdict reads and the θ test beside it."""

from __future__ import annotations

import math
from collections import defaultdict
from typing import TYPE_CHECKING

import numpy as np

from l2bn.analysis.estimating.equilibrium import (
    epoch_ratios,
    scale_invariant_layers,
    tail_window,
    trial_layers,
)
from l2bn.analysis.fitted import ANGLE_TEST, NO_TEST, Optimum
from l2bn.analysis.presenting.figures import margins
from l2bn.analysis.results import GroupReport

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from l2bn.analysis.reading.records import TrialRecord


def equilibrium_curves(group: GroupReport) -> dict[str, dict[float, list[float]]]:
    """Per scale-invariant layer, per λ (> 0): the per-epoch ratio (θ̄²/θ_eq² or the balance)
    of that λ's optimum cell, the mean over its non-diverged seeds (epochs where none is
    finite: NaN). Empty without per-epoch angle or balance records."""
    test = group.equilibrium_test
    if test == NO_TEST or not any(t.dynamics for t in group.trials):
        return {}
    invariant = scale_invariant_layers(group.identity)
    out: dict[str, dict[float, list[float]]] = defaultdict(dict)
    for o in group.optima:
        if o.weight_decay <= 0:
            continue
        runs = _optimum_runs(group, o)
        layers = dict.fromkeys(x for t in runs for x in trial_layers(t, test, invariant))
        for layer in layers:
            series = [r for t in runs if (r := epoch_ratios(t, layer, test))]
            if not series or not any(math.isfinite(x) for r in series for x in r):
                continue
            n = max(len(r) for r in series)
            arr = np.full((len(series), n), np.nan)
            for i, r in enumerate(series):
                arr[i, : len(r)] = r
            arr[~np.isfinite(arr)] = np.nan  # θ_eq = 0 (λ = 0) is not drawn
            with np.errstate(all="ignore"):
                finite = np.isfinite(arr).any(axis=0)
                mean = np.where(finite, np.nanmean(np.where(finite, arr, 0.0), axis=0), np.nan)
            out[layer][o.weight_decay] = [float(x) for x in mean]
    return dict(out)


def _optimum_runs(group: GroupReport, o: Optimum) -> list[TrialRecord]:
    """The non-diverged trials of λ's optimum cell."""
    return [
        t
        for t in group.trials
        if not t.diverged
        and math.isclose(t.weight_decay, o.weight_decay, rel_tol=1e-9)
        and math.isclose(t.lr, o.lr_grid, rel_tol=1e-9)
    ]


def stationarity_curves(group: GroupReport) -> dict[str, dict[float, list[float]]]:
    """Per scale-invariant layer, per λ (> 0): ‖w‖² over its value at the end of phase 1, per
    epoch of phase 1, at that λ's optimum cell (geometric mean over its non-diverged seeds)."""
    invariant = scale_invariant_layers(group.identity)
    out: dict[str, dict[float, list[float]]] = defaultdict(dict)
    for o in group.optima:
        if o.weight_decay <= 0:
            continue
        runs = [t for t in _optimum_runs(group, o) if t.phase1_epochs > 0]
        for layer in invariant:
            series = []
            for t in runs:
                values = t.norms.get(layer, ())[: t.phase1_epochs]
                end = values[-1] if values else math.nan
                if values and math.isfinite(end) and end > 0:
                    series.append([(v / end) ** 2 if v > 0 else math.nan for v in values])
            if not series:
                continue
            n = min(len(r) for r in series)
            arr = np.log(np.array([r[:n] for r in series], dtype=float))
            with np.errstate(all="ignore"):
                mean = np.exp(np.nanmean(arr, axis=0))
            out[layer][o.weight_decay] = [float(x) for x in mean]
    return dict(out)


def plot_equilibrium(group: GroupReport, max_panels: int = 5) -> Figure:
    """Per scale-invariant layer (columns), at each λ's optimum cell: top, ‖w‖² over its value
    at the end of phase 1 per epoch, the stationarity the verdict reads (its window shaded,
    the band around 1); bottom, the θ test beside it, θ̄²/θ_eq² (Adam/RMSProp: the per-step
    growth ÷ shrink) per epoch, the band shaded. Log scales."""
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    theta = equilibrium_curves(group)
    norms = stationarity_curves(group)
    layers = [x for x in dict.fromkeys([*norms, *theta])][:max_panels]
    ncols = max(len(layers), 1)
    fig = Figure(figsize=(3.6 * ncols + 0.6, 6.6))
    grid = fig.subplots(2, ncols, squeeze=False, sharey="row")
    margins(fig, hspace=0.5, top_in=0.85)
    lo, hi = group.equilibrium_band
    wds = sorted({wd for per in (*theta.values(), *norms.values()) for wd in per})
    cmap = colormaps["viridis"]
    colors = {wd: cmap(i / max(len(wds) - 1, 1)) for i, wd in enumerate(wds)}
    phase1 = max((t.phase1_epochs for t in group.trials), default=0)
    window = tail_window(phase1, group.equilibrium_tail)
    ylabel = "θ̄² / θ_eq²" if group.equilibrium_test == ANGLE_TEST else "growth ÷ shrink (steps)"
    finite_all: list[float] = []
    for col, layer in enumerate(layers):
        for row, curves in enumerate((norms, theta)):
            ax = grid[row][col]
            ax.axhspan(lo, hi, color="green", alpha=0.15, lw=0)
            ax.axhline(1.0, color="green", lw=0.8)
            if window:
                ax.axvspan(window.start + 0.5, window.stop + 0.5, color="0.5", alpha=0.15, lw=0)
            for wd, values in sorted(curves.get(layer, {}).items()):
                shown = [v if v > 0 else math.nan for v in values]  # log scale
                if row == 1:
                    finite_all.extend(v for v in shown if math.isfinite(v))
                ax.plot(np.arange(1, len(values) + 1), shown, "-", lw=1.2, color=colors[wd],
                        label=f"λ = {wd:.3g}")  # fmt: skip
            if row == 1 and layer not in theta and window:
                # An export holds the window's ratio, not its epochs: one segment per λ.
                for o in group.optima:
                    r = o.equilibrium.ratios.get(layer, math.nan)
                    if o.weight_decay in colors and 0 < r < math.inf:
                        finite_all.append(r)
                        ax.plot([window.start + 0.5, window.stop + 0.5], [r, r], "-", lw=2.5,
                                color=colors[o.weight_decay])  # fmt: skip
            ax.set_yscale("log")
            ax.set_xlabel("epoch")
            ax.set_title(f"{layer}: {'‖w‖² / end of phase 1' if row == 0 else ylabel}",
                         fontsize=8)  # fmt: skip
            ax.grid(True, which="both", alpha=0.3)
            if phase1:
                ax.set_xlim(0.5, phase1 + 0.5)
    if finite_all:  # the band always in view, a wild first epoch not dominating
        low = min(lo / 1.5, float(np.percentile(finite_all, 2)))
        high = max(hi * 1.5, 1.5 * float(np.percentile(finite_all, 98)))
        grid[1][0].set_ylim(low, high)
    grid[0][0].set_ylabel("stationarity (the verdict)")
    grid[1][0].set_ylabel("θ test (beside it)")
    handles, labels = grid[0][0].get_legend_handles_labels()
    if handles:  # one legend for the figure, below the title: off the data
        fig.legend(handles, labels, loc="upper center", ncol=min(len(labels), 6), fontsize=7,
                   bbox_to_anchor=(0.5, 1 - 0.42 / 6.6), frameon=False)  # fmt: skip
    fig.suptitle(f"{group.label}: equilibrium at each λ's η* over phase 1 (grey: the window "
                 f"judged, green: the band [{lo:g}, {hi:g}])", fontsize=9)  # fmt: skip
    return fig


__all__ = ["equilibrium_curves", "plot_equilibrium", "stationarity_curves"]
