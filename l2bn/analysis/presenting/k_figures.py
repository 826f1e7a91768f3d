"""The figures over all groups of a report (``analyze --plots`` with two groups or more):
every group's primary k against its theory and registered range, and k over training, one
panel per group on one axis. matplotlib is imported by :func:`figure` only."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np

from l2bn.analysis.presenting.figures import figure as _figure
from l2bn.analysis.results import AnalysisReport
from l2bn.registration import K_IN_RANGE

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def _targets(report: AnalysisReport) -> dict[str, tuple[float, float]]:
    """The registered k ranges, by optimizer (empty without a registration)."""
    if report.rule is None:
        return {}
    return {
        c.optimizers[0]: (c.low, c.high)
        for c in report.rule.registration.conditions
        if c.kind == K_IN_RANGE
    }


def plot_k_summary(report: AnalysisReport) -> Figure:
    """Every group's primary k with its CI, one row each, against its theory (a diamond) and
    its registered range (a band), so the answer over all parts reads at a glance."""
    groups = report.groups
    fig, axes = _figure(width=7.0, height=1.9 + 0.45 * len(groups), left_in=2.4)
    ax = axes[0]
    targets = _targets(report)
    ci_name = f"{report.settings.confidence:.0%} CI"
    legend: dict[str, Any] = {}  # one legend entry per kind of mark
    for i, g in enumerate(groups):
        y = len(groups) - 1 - i
        k = g.scaling.k
        if g.optimizer in targets:
            lo, hi = targets[g.optimizer]
            legend["registered range"] = ax.fill_betweenx(
                [y - 0.3, y + 0.3], lo, hi, color="C2", alpha=0.18, lw=0
            )
        if g.scaling.theory is not None:
            (legend["theory"],) = ax.plot(g.scaling.theory, y, "D", color="0.35", ms=6,
                                          mfc="none")  # fmt: skip
        if math.isfinite(k.value):
            ci = math.isfinite(k.ci_low) and math.isfinite(k.ci_high)
            xerr = [[k.value - k.ci_low], [k.ci_high - k.value]] if ci else None
            legend[f"k [{ci_name}]"] = ax.errorbar(k.value, y, xerr=xerr, fmt="o", color="C0",
                                                capsize=3)  # fmt: skip
            ax.annotate(f"{k.value:.2f}", (k.value, y), xytext=(0, 7),
                        textcoords="offset points", ha="center", fontsize=8)  # fmt: skip
    ax.set_yticks(range(len(groups)), [g.label for g in reversed(groups)], fontsize=8)
    ax.set_ylim(-0.7, len(groups) - 0.3)
    ax.set_xlabel("k (η* ∝ λ^-k), the primary: whole-surface collapse")
    ax.set_title("k per group, against its theory", fontsize=9)
    ax.grid(True, axis="x", alpha=0.3)
    # Below the axes, in the figure's bottom margin: never on the data.
    fig.legend(list(legend.values()), list(legend), fontsize=8, loc="lower center",
               ncol=len(legend), frameon=False)  # fmt: skip
    return fig


def plot_k_by_epoch_all(report: AnalysisReport) -> Figure:
    """Every group's primary k after each epoch, one panel each on one k axis, with its
    theory: whether each optimizer's k reaches its theory, and how early."""
    groups = [g for g in report.groups if g.k_by_epoch]
    fig, axes = _figure(ncols=len(groups), width=3.6, height=3.6)
    finite = [v for g in groups for r in g.k_by_epoch
              for v in (r.k.value, r.k.ci_low, r.k.ci_high) if math.isfinite(v)]  # fmt: skip
    lo, hi = np.percentile(finite, [5, 95]) if finite else (0.0, 1.5)
    pad = 0.1 * (hi - lo) + 0.05
    for ax, g in zip(axes, groups, strict=True):
        rows = g.k_by_epoch
        epochs = [r.epoch for r in rows]
        ax.plot(epochs, [r.k.value for r in rows], "o-", ms=3, color="C0")
        ax.fill_between(epochs, [r.k.ci_low for r in rows], [r.k.ci_high for r in rows],
                        color="C0", alpha=0.2)  # fmt: skip
        if g.scaling.theory is not None:
            ax.axhline(g.scaling.theory, color="0.4", ls="--")
        ax.set_ylim(lo - pad, hi + pad)
        ax.set_title(g.label, fontsize=8)
        ax.set_xlabel("epoch")
        ax.grid(True, alpha=0.3)
    axes[0].set_ylabel(f"k (band: {report.settings.confidence:.0%} CI; dashed: theory)")
    fig.suptitle("k over training, from each epoch's validation metric", fontsize=9)
    return fig


__all__ = ["plot_k_by_epoch_all", "plot_k_summary"]
