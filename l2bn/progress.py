"""Rich views of a sweep's grid: a live progress display and a status table.

Fed by :func:`l2bn.worker.run_sweep`'s ``on_status`` callback (the parent polls the storage);
nothing here touches a storage.
"""

from __future__ import annotations

import time
from types import TracebackType

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from l2bn.study import GridStatus, PointState

_STYLE = {
    PointState.done: "green",
    PointState.diverged: "yellow",
    PointState.running: "cyan",
    PointState.failed: "red",
    PointState.waiting: "dim",
}


def summary_line(status: GridStatus, eta_s: float | None = None) -> Text:
    s = status
    text = Text(f"{s.study_name}: ")
    text.append(f"{s.finished}/{s.total} done", style="bold")
    text.append(f" ({s.count(PointState.diverged)} diverged)", style="yellow")
    text.append(f", {s.count(PointState.running)} running", style="cyan")
    text.append(f", {s.count(PointState.failed)} failed", style="red")
    text.append(f", {s.count(PointState.waiting)} waiting")
    if eta_s is not None:
        text.append(f", ETA {_hms(eta_s)}")
    return text


def status_table(status: GridStatus, running_only: bool = False) -> Table:
    table = Table(title=None if running_only else status.study_name, show_edge=False)
    for col in ("lr", "weight_decay", "seed", "state", "epoch", "val_error", "runs"):
        table.add_column(col, justify="right" if col != "state" else "left")
    for p in status.points:
        if running_only and p.state is not PointState.running:
            continue
        epoch = f"{p.epoch}/{status.epochs}" if p.state is PointState.running else ""
        value = "" if p.value is None else f"{p.value:.4f}"
        table.add_row(
            f"{p.point.lr:.4g}",
            f"{p.point.weight_decay:.4g}",
            str(p.point.seed),
            Text(p.state.value, style=_STYLE[p.state]),
            epoch,
            value,
            str(p.attempts),
        )
    return table


class LiveProgress:
    """A context manager; call it with each polled GridStatus."""

    def __init__(self, console: Console | None = None) -> None:
        self._live = Live(console=console, refresh_per_second=2, transient=False)
        self._start = time.monotonic()
        self._first_finished: int | None = None

    def __enter__(self) -> LiveProgress:
        self._live.__enter__()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._live.__exit__(exc_type, exc, tb)

    def __call__(self, status: GridStatus) -> None:
        if self._first_finished is None:
            self._first_finished = status.finished  # points done by earlier runs: no rate
        done_now = status.finished - self._first_finished
        left = status.total - status.finished
        eta = None
        if done_now > 0 and left > 0:
            eta = (time.monotonic() - self._start) / done_now * left
        parts: list[Table | Text] = [summary_line(status, eta)]
        if status.count(PointState.running):
            parts.append(status_table(status, running_only=True))
        self._live.update(Group(*parts))


def _hms(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"
