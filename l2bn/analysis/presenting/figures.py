"""Shared layout of the analysis figures: fixed margins in inches."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure


def margins(
    fig: Figure,
    top_in: float = 0.75,
    hspace: float = 0.35,
    right_in: float = 0.3,
    bottom_in: float = 0.65,
    wspace: float = 0.45,
    left_in: float = 0.95,
) -> None:
    """Fixed margins in inches (room for labels, titles and a suptitle).

    Not a layout engine: constrained layout redraws every tick label several times and
    doubles the rendering time, for figures whose layout is known in advance.
    """
    w, h = fig.get_size_inches()
    fig.subplots_adjust(
        left=left_in / w, right=1 - right_in / w, bottom=bottom_in / h, top=1 - top_in / h,
        wspace=wspace, hspace=hspace,
    )  # fmt: skip


def figure(
    ncols: int = 1, width: float = 5.5, height: float = 4.5, **margin: float
) -> tuple[Figure, list[Axes]]:
    """A figure of ``ncols`` axes side by side, each ``width`` × ``height`` inches, with
    :func:`margins` (``margin``: its keyword arguments)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width * ncols, height))
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    margins(fig, **margin)
    return fig, list(axes)


__all__ = ["figure", "margins"]
