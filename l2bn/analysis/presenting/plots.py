"""PNG figures of an :class:`~l2bn.analysis.results.AnalysisReport` (``l2bn analyze --plots``).

One file per figure per group, named ``<optimizer>-<norm>-<dataset>_<figure>.png``
(:attr:`GroupReport.slug`; "any" stands for a missing norm/dataset attr; a group whose
optimizer has other groups gets its distinguishing fields too, e.g.
``sgd-bn-cifar10-affine_false_<figure>.png``):

==========================  ================================================================
``_error_heatmap.png``      seed-averaged validation (and test) error over (λ, η), η* marked
``_eta_star.png``           η* against λ, log-log, with the fitted and the theory slope
``_collapse.png``           the primary: seed-mean error (± seed noise) against η·λ^k at the
                            fitted k, with the fitted curve, and at the theory's k
``_norm_heatmap.png``       first-layer ‖w‖ at the end of LR phase 1 over (λ, η); cells the
                            norm fit leaves out crossed: not measured in equilibrium, or
                            (no verdicts: older studies) c·η·λ·T below the threshold
``_norm_trajectories.png``  first-layer ‖w‖ per epoch, one panel per λ, colour = η
``_k_by_epoch.png``         the primary k from each epoch's validation metric, with its CI
``_equilibrium.png``        at each λ's optimum cell, per scale-invariant layer: ‖w‖²
                            over its value at the end of phase 1 per epoch (stationarity,
                            the verdict), and the θ test beside it (θ̄²/θ_eq²; Adam and
                            RMSProp: the per-step growth ÷ shrink), the band shaded
==========================  ================================================================

The two norm figures need per-epoch histories and are skipped without them; so is
``_k_by_epoch.png`` without per-epoch validation metrics, and ``_equilibrium.png`` without
per-layer angle (or balance) records. normalized-sgd
is a group like any other, so its heatmaps come out as ``normalized-sgd-…_*.png``.

matplotlib is imported inside the functions (the CLI should not pay for it unless --plots is
given), and only its object-oriented API is used: no pyplot state, no backend switching, so
figures render with Agg wherever this runs.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from l2bn.analysis.estimating.equilibrium import (
    norm_cell_filter,
)
from l2bn.analysis.fitted import Cell
from l2bn.analysis.presenting.equilibrium_figure import (
    equilibrium_curves,
    plot_equilibrium,
    stationarity_curves,
)
from l2bn.analysis.presenting.figures import figure as _figure
from l2bn.analysis.presenting.figures import margins
from l2bn.analysis.results import AnalysisReport, GroupReport
from l2bn.files import atomic_open

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

FIGURES = (
    "error_heatmap",
    "eta_star",
    "collapse",
    "norm_heatmap",
    "norm_trajectories",
    "k_by_epoch",
    "equilibrium",
)
DPI = 120


def write_plots(report: AnalysisReport, out_dir: Path) -> list[Path]:
    """Write every figure of every group into ``out_dir`` (created); return the paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for g in report.groups:
        written.append(_save(plot_error_heatmap(g), out_dir / f"{g.slug}_error_heatmap.png"))
        written.append(_save(plot_eta_star(g), out_dir / f"{g.slug}_eta_star.png"))
        if g.collapse is not None:
            written.append(_save(plot_collapse(g), out_dir / f"{g.slug}_collapse.png"))
        if g.first_layer is not None:
            eq = report.settings.equilibrium
            written.append(_save(plot_norm_heatmap(g, eq), out_dir / f"{g.slug}_norm_heatmap.png"))
            written.append(
                _save(plot_norm_trajectories(g), out_dir / f"{g.slug}_norm_trajectories.png")
            )
        if g.k_by_epoch:
            written.append(_save(plot_k_by_epoch(g), out_dir / f"{g.slug}_k_by_epoch.png"))
        if any(t.dynamics or t.tail_ratios is not None for t in g.trials):
            written.append(_save(plot_equilibrium(g), out_dir / f"{g.slug}_equilibrium.png"))
    # Across groups (optimizers, settings): the answer in one picture each.
    if len(report.groups) >= 2:
        from l2bn.analysis.presenting.k_figures import plot_k_by_epoch_all, plot_k_summary

        written.append(_save(plot_k_summary(report), out_dir / "k_summary.png"))
        if sum(bool(g.k_by_epoch) for g in report.groups) >= 2:
            written.append(_save(plot_k_by_epoch_all(report), out_dir / "k_by_epoch.png"))
    return written


def _save(fig: Figure, path: Path) -> Path:
    with atomic_open(path, "wb") as f:  # a reader never sees half a PNG
        fig.savefig(f, dpi=DPI, format="png")
    return path


# Legends go below the axes, in the figure's bottom margin: never on the data.
LEGEND_BELOW = 0.9  # inches of bottom margin a legend below the axes takes


# --- heatmaps -----------------------------------------------------------------------------


def _lambda_columns(cells: Sequence[Cell]) -> dict[float, list[Cell]]:
    by_wd: dict[float, list[Cell]] = defaultdict(list)
    for c in cells:
        by_wd[c.weight_decay].append(c)
    return {wd: sorted(cs, key=lambda c: c.lr) for wd, cs in sorted(by_wd.items())}


def _edges(lrs: Sequence[float]) -> Any:
    """Cell boundaries in η: geometric midpoints, half a step beyond the ends."""
    x = np.log(np.asarray(lrs))
    if x.size == 1:
        return np.exp(np.array([x[0] - 0.5, x[0] + 0.5]))
    mids = (x[1:] + x[:-1]) / 2
    return np.exp(np.concatenate([[2 * x[0] - mids[0]], mids, [2 * x[-1] - mids[-1]]]))


def _heatmap(
    ax: Axes,
    group: GroupReport,
    values: dict[tuple[float, float], float],
    label: str,
    log_color: bool = False,
    crossed: set[tuple[float, float]] | None = None,
    mark_optima: bool = True,
) -> None:
    """Columns = λ (categorical, so λ = 0 fits), rows = each λ's own η grid on a log axis.

    Each λ has its own η edges: sweeps whose grid follows η·λ^k are drawn as they are.
    """
    from matplotlib.colors import LogNorm, Normalize

    columns = _lambda_columns(group.cells)
    finite = [v for v in values.values() if math.isfinite(v) and (v > 0 or not log_color)]
    if not finite:
        ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
        return
    lo, hi = min(finite), max(finite)
    extend = "neither"
    if not log_color and len(finite) >= 8:
        # Robust: a few cells far up the wall (or diverged) must not make the valley one
        # colour; the scale stops at the 90th percentile, and the colour bar says so.
        top = float(np.percentile(finite, 90))
        if top < hi:
            hi, extend = top, "max"
            label = f"{label} (clipped at {top:.3g})"
    norm = LogNorm(lo, hi if hi > lo else lo * 1.01) if log_color else Normalize(lo, hi)
    mesh = None
    for j, (wd, cs) in enumerate(columns.items()):
        lrs = [c.lr for c in cs]
        z = np.array([[values.get((wd, c.lr), math.nan)] for c in cs])
        mesh = ax.pcolormesh(
            [j - 0.5, j + 0.5], _edges(lrs), np.ma.masked_invalid(z), norm=norm, cmap="viridis"
        )
        for c in cs:
            if crossed and (wd, c.lr) in crossed:
                ax.plot(j, c.lr, marker="x", color="white", ms=6, mew=1.2, ls="none")
    if mark_optima:
        for used in (True, False):
            js = [j for j, o in enumerate(group.optima) if o.used == used]
            if js:
                ax.plot(js, [group.optima[j].lr_opt for j in js], marker="*", ms=13, ls="none",
                        color="red", mec="white" if used else "red",
                        mfc="red" if used else "none",
                        label="η* (in the primary)" if used else "η* (row left out)")  # fmt: skip
        for j, o in enumerate(group.optima):
            why = "edge" if o.edge else "flat" if o.note and "flat" in o.note else ""
            if why:
                ax.annotate(why, (j, o.lr_opt), xytext=(6, 0), textcoords="offset points",
                            color="red", fontsize=8, va="center")  # fmt: skip
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2, fontsize=8,
                  frameon=False)  # fmt: skip
    ax.set_yscale("log")
    ax.set_xticks(range(len(columns)), [f"{wd:.3g}" for wd in columns])
    ax.set_xlim(-0.5, len(columns) - 0.5)
    ax.set_xlabel("λ (weight_decay)")
    ax.set_ylabel("η (learning rate)")
    if mesh is not None:
        ax.figure.colorbar(mesh, ax=ax, label=label, extend=extend)


def plot_error_heatmap(group: GroupReport) -> Figure:
    """Seed-averaged validation error (and test error, when recorded) over (λ, η)."""
    has_test = any(math.isfinite(c.test_error) for c in group.cells)
    fig, axes = _figure(2 if has_test else 1, height=5.0, bottom_in=1.2, right_in=0.4)
    val = {(c.weight_decay, c.lr): c.val_error for c in group.cells}
    _heatmap(axes[0], group, val, "validation error")
    axes[0].set_title("validation error")
    if has_test:
        test = {(c.weight_decay, c.lr): c.test_error for c in group.cells}
        _heatmap(axes[1], group, test, "test error")
        axes[1].set_title("test error")
    fig.suptitle(f"{group.label}: error over (λ, η)")
    return fig


def plot_norm_heatmap(group: GroupReport, equilibrium: float) -> Figure:
    """First-layer ‖w‖ at the end of phase 1; × marks the cells the norm fit leaves out
    (:func:`~l2bn.analysis.estimating.equilibrium.norm_cell_filter`): not measured in
    equilibrium, or,
    where no cell carries a verdict, c·η·λ·T < ``equilibrium``."""
    layer = group.first_layer or ""
    fig, axes = _figure(width=6.2, height=5.2, top_in=1.0, right_in=0.4)
    values = {(c.weight_decay, c.lr): c.phase1_norms.get(layer, math.nan) for c in group.cells}
    chosen = norm_cell_filter(group.cells, equilibrium)
    young = {(c.weight_decay, c.lr) for c in group.cells if not chosen.admits(c)}
    _heatmap(axes[0], group, values, f"‖w‖ of {layer}", log_color=True, crossed=young,
             mark_optima=False)  # fmt: skip
    if chosen.measured:
        why = "measured: its norms not stationary, or unmeasured"
    else:
        why = f"c·η·λ·T < {equilibrium:g}; c = 10 with momentum"
    axes[0].set_title(
        f"{group.label}: ‖w_{layer}‖ at the end of LR phase 1\n× = out of equilibrium ({why})",
        fontsize=9,
    )
    return fig


# --- η* and the collapse ------------------------------------------------------------------


def plot_eta_star(group: GroupReport) -> Figure:
    """η* against λ (log-log) with the least-squares fit and the theory slope."""
    fig, axes = _figure()
    ax = axes[0]
    used = [o for o in group.optima if o.used]
    left = [o for o in group.optima if not o.used and o.weight_decay > 0]
    if used:
        # The per-λ CI of η* (local quadratic, cell noise) where there is one.
        low = [o.lr_opt - o.lr_ci_low if math.isfinite(o.lr_ci_low) else 0.0 for o in used]
        high = [o.lr_ci_high - o.lr_opt if math.isfinite(o.lr_ci_high) else 0.0 for o in used]
        ax.errorbar([o.weight_decay for o in used], [o.lr_opt for o in used],
                    yerr=[low, high], fmt="o", color="C0", ms=7, capsize=3,
                    label="η* per λ (bar: its CI; a cross-check)")  # fmt: skip
    if left:
        ax.plot([o.weight_decay for o in left], [o.lr_opt for o in left], "v", color="red",
                mfc="none", ms=8, label="λ left out of the primary")  # fmt: skip
    s = group.scaling
    if used and math.isfinite(s.k.value):
        wd = np.geomspace(min(o.weight_decay for o in group.optima if o.weight_decay > 0),
                          max(o.weight_decay for o in group.optima), 50)  # fmt: skip
        ci = f" [{s.k.ci_low:.2f}, {s.k.ci_high:.2f}]" if s.k.determined else ""
        if math.isfinite(s.intercept):
            ax.plot(wd, np.exp(s.intercept) * wd**-s.k.value, "-", color="C0",
                    label=f"primary: k = {s.k.value:.2f}{ci}")  # fmt: skip
        if s.theory is not None:
            # Theory fixes the slope only: draw it through the centroid of the used points.
            x0 = float(np.mean(np.log([o.weight_decay for o in used])))
            y0 = float(np.mean(np.log([o.lr_opt for o in used])))
            ax.plot(wd, np.exp(y0 - s.theory * (np.log(wd) - x0)), "--", color="0.4",
                    label=f"theory: k = {s.theory:g}")  # fmt: skip
    ax.set_xscale("log")
    ax.set_yscale("log")
    _decade_labels(ax)
    ax.set_xlabel("λ (weight_decay)")
    ax.set_ylabel("η* (best learning rate)")
    ax.set_title(f"{group.label}: η* ∝ λ^-k ({s.verdict}, {s.k.method})", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="upper right")
    return fig


def _decade_labels(ax: Axes) -> None:
    """Label a log axis at its decades only when it spans one or more: matplotlib also labels
    the minor ticks of a short log axis, and they overlap (2×10⁻³ 3×10⁻³ …)."""
    from matplotlib.ticker import NullFormatter

    for axis, (lo, hi) in ((ax.xaxis, ax.get_xlim()), (ax.yaxis, ax.get_ylim())):
        if lo > 0 and hi / lo >= 10:
            axis.set_minor_formatter(NullFormatter())


def plot_collapse(group: GroupReport) -> Figure:
    """The primary: seed-mean error against x = log(η·λ^k) at the fitted k, one colour per λ,
    each cell with its seed noise (±1 sd of a cell mean, the pooled sd over √seeds), the fitted
    curve T(x) drawn through them; rows the rule left out hollow and grey. Beside it the same
    at the theory's k: whether the theory's columns collapse too."""
    from matplotlib import colormaps

    fit = group.collapse
    assert fit is not None
    ks: list[tuple[str, float]] = []
    if math.isfinite(fit.k.value):
        ks.append((f"fitted: k = {fit.k.value:.2f}", fit.k.value))
    if group.scaling.theory is not None:
        ks.append((f"theory: k = {group.scaling.theory:g}", group.scaling.theory))
    if not ks:
        ks.append(("k = 0 (raw η)", 0.0))
    fig, axes = _figure(len(ks), height=5.2, bottom_in=0.65 + LEGEND_BELOW)
    columns = {wd: cs for wd, cs in _lambda_columns(group.cells).items() if wd > 0}
    used = {r.weight_decay: r.used for r in fit.rows}
    cmap = colormaps["viridis"]
    sigma = fit.noise_sd if math.isfinite(fit.noise_sd) else group.noise_sd
    centre = fit.x_centre
    for ax, (name, k) in zip(axes, ks, strict=True):
        for i, (wd, cs) in enumerate(columns.items()):
            keep = used.get(wd, True)
            color = cmap(i / max(len(columns) - 1, 1)) if keep else "0.6"
            x = [math.log(c.lr) + k * (math.log(wd) - centre) for c in cs]
            y = [c.value if math.isfinite(c.value) else c.val_error for c in cs]
            err = [sigma / math.sqrt(max(c.n_seeds, 1)) if math.isfinite(sigma) else 0.0
                   for c in cs]  # fmt: skip
            label = f"λ = {wd:.3g}" + ("" if keep else " (left out)")
            ax.errorbar(x, y, yerr=err, fmt="o" if keep else "o--", ms=3.5, lw=0.8,
                        capsize=2, color=color, mfc=color if keep else "none",
                        label=label)  # fmt: skip
        if fit.curve_x and math.isclose(k, fit.k.value):
            ax.plot(fit.curve_x, fit.curve_y, "-", color="black", lw=1.6, label="fitted curve T")
        ax.set_xlabel(f"log(η·λ^k), k = {k:.2f}, λ centred on {math.exp(centre):.3g}")
        ax.set_ylabel(group.metric.replace("_", " "))
        ax.set_title(name, fontsize=9)
        ax.grid(True, alpha=0.3)
    # One legend below the panels, off the data (an explicit place: loc="best" scans every
    # point and triples the render time).
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 4), fontsize=8,
               frameon=False)  # fmt: skip
    fig.suptitle(
        f"{group.label}: the whole surface against η·λ^k ({fit.status}); bars: ± the seed "
        "noise of a cell mean",
        fontsize=10,
    )
    return fig


def plot_k_by_epoch(group: GroupReport) -> Figure:
    """The primary k after each epoch (the validation metric's history), CI as a band, the
    theory as a line: whether k approaches the theory as the runs forget w₀."""
    fig, axes = _figure()
    ax = axes[0]
    rows = group.k_by_epoch
    epochs = [r.epoch for r in rows]
    ax.plot(epochs, [r.k.value for r in rows], "o-", ms=3, color="C0",
            label="k (whole-surface collapse)")  # fmt: skip
    ax.fill_between(epochs, [r.k.ci_low for r in rows], [r.k.ci_high for r in rows],
                    color="C0", alpha=0.2, label="its CI")  # fmt: skip
    theory = group.scaling.theory
    if theory is not None:
        ax.axhline(theory, color="0.4", ls="--", label=f"theory: k = {theory:g}")
    finite = [v for r in rows for v in (r.k.value, r.k.ci_low, r.k.ci_high) if math.isfinite(v)]
    if finite:  # a wild early epoch must not flatten the rest
        lo, hi = np.percentile(finite, [5, 95])
        pad = 0.1 * (hi - lo) + 0.05
        ax.set_ylim(lo - pad, hi + pad)
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"k from {group.metric}")
    ax.set_title(f"{group.label}: k over training", fontsize=9)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    return fig


# --- trajectories -------------------------------------------------------------------------


def plot_norm_trajectories(group: GroupReport, max_panels: int = 6) -> Figure:
    """First-layer ‖w‖ per epoch (seed-averaged, geometric), one panel per λ, colour = η."""
    from matplotlib import colormaps
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import LogNorm

    layer = group.first_layer or ""
    curves: dict[tuple[float, float], list[Sequence[float]]] = defaultdict(list)
    phase1: dict[float, int] = {}
    for t in group.trials:
        values = t.norms.get(layer)
        if values and not t.diverged:
            curves[(t.weight_decay, t.lr)].append(values)
            phase1[t.weight_decay] = t.phase1_epochs
    wds = sorted({wd for wd, _ in curves})
    if len(wds) > max_panels:  # keep the figure readable: evenly spaced λ values
        wds = [wds[i] for i in np.linspace(0, len(wds) - 1, max_panels).round().astype(int)]
    from matplotlib.figure import Figure

    ncols = min(max(len(wds), 1), 3)
    nrows = math.ceil(max(len(wds), 1) / ncols)
    fig = Figure(figsize=(4.2 * ncols + 1.0, 3.6 * nrows + 0.5))
    # A shared y axis: the norm's λ dependence is read across panels.
    grid = fig.subplots(nrows, ncols, squeeze=False, sharey=True)
    margins(fig, hspace=0.45, right_in=1.0, bottom_in=1.1)  # colorbar; legend below
    axes = list(grid.ravel())
    for ax in axes[len(wds) :]:
        ax.set_visible(False)
    lrs = [lr for _, lr in curves]
    norm = LogNorm(min(lrs), max(lrs) if max(lrs) > min(lrs) else min(lrs) * 1.01) if lrs else None
    cmap = colormaps["plasma"]
    best = {o.weight_decay: o.lr_grid for o in group.optima}
    for ax, wd in zip(axes, wds, strict=False):
        for (w, lr), runs in sorted(curves.items()):
            if w != wd:
                continue
            n = min(len(r) for r in runs)
            arr = np.array([r[:n] for r in runs], dtype=float)
            with np.errstate(divide="ignore", invalid="ignore"):
                mean = np.exp(np.nanmean(np.log(arr), axis=0))
            ax.plot(np.arange(1, n + 1), mean, color=cmap(norm(lr)) if norm else None, lw=1.2)
            if wd in best and math.isclose(lr, best[wd], rel_tol=1e-9):
                # η*'s cell: the run the theory is about, drawn over the others.
                ax.plot(np.arange(1, n + 1), mean, color="black", lw=2.4, ls="--", zorder=5,
                        label="η* (the best η at this λ)")  # fmt: skip
        if phase1.get(wd):
            ax.axvline(phase1[wd], color="0.5", ls=":", lw=1.2, label="end of LR phase 1")
        ax.set_yscale("log")
        ax.set_xlabel("epoch")
        ax.set_title(f"λ = {wd:.3g}")
        ax.grid(True, alpha=0.3)
    for row in grid:
        row[0].set_ylabel(f"‖w‖ of {layer}")
    if norm is not None:
        fig.colorbar(
            ScalarMappable(norm=norm, cmap=cmap),
            ax=list(grid.ravel()),
            label="η (learning rate)",
            fraction=0.03,
            pad=0.02,
        )
    handles, labels = axes[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="lower center", ncol=2, fontsize=8, frameon=False)
    fig.suptitle(f"{group.label}: weight norm of {layer} over training")
    return fig


__all__ = [
    "FIGURES",
    "equilibrium_curves",
    "plot_collapse",
    "plot_equilibrium",
    "plot_error_heatmap",
    "plot_eta_star",
    "plot_k_by_epoch",
    "plot_norm_heatmap",
    "plot_norm_trajectories",
    "stationarity_curves",
    "write_plots",
]
