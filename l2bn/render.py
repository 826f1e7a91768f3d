"""Every rich view l2bn shows, in one place: a train result, a sweep's live progress and status
table (fed by the runner's ``on_status`` callback; nothing here touches a storage), an
analysis report and a transfer. Computing lives in the library; this module only renders, and
cli.py prints.
"""

from __future__ import annotations

import math
import time
from types import TracebackType

from rich.console import Console, Group
from rich.live import Live
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

from l2bn.analysis.fitted import (
    ANGLE_TEST,
    BALANCE_TEST,
    CONSTANT,
    DIFFERENT,
    EQUIVALENT,
    IN_EQUILIBRIUM,
    INCONCLUSIVE,
    OUT_OF_EQUILIBRIUM,
    UNDETERMINED,
    UNKNOWN,
    VARIES,
    Equilibrium,
    Estimate,
    RuleOutcome,
    unpulled_words,
)
from l2bn.analysis.results import AnalysisReport, GroupReport
from l2bn.analysis.settings import AnalyzeConfig
from l2bn.analysis.transfer import Transfer
from l2bn.sweep.status import GridStatus, PointState
from l2bn.train.records import EpochRecord, TrainResult

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
    for col in ("lr", "weight_decay", "seed", "state", "epoch", status.objective, "runs"):
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
        if not self._live.console.is_terminal:
            # Off a terminal, Live prints its last frame without a line end: the next study's
            # line (or a shell prompt) would run on from it.
            self._live.console.line()

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


# --- l2bn train ----------------------------------------------------------------------


class TrainProgress:
    """Epoch and batch bars fed by the training loop's callbacks."""

    def __init__(self, epochs: int) -> None:
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=Console(stderr=True),  # stdout stays for the result table
            transient=False,
        )
        self.epochs = self.progress.add_task("epochs", total=epochs, info="")
        self.batches = self.progress.add_task("batches", total=None, info="")

    def __enter__(self) -> TrainProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.progress.live.is_started:  # stopping a bar never started prints a blank line
            self.progress.stop()

    def batch(self, epoch: int, batch: int, total: int) -> None:
        # Started on the first batch, so that an error while loading data stays one line.
        if not self.progress.live.is_started:
            self.progress.start()
        self.progress.update(self.batches, completed=batch, total=total)

    def epoch(self, record: EpochRecord) -> None:
        info = f"val err {record.val_error:.3f}  loss {record.train_loss:.3f}"
        self.progress.update(self.epochs, completed=record.epoch, info=info)


def render_result(result: TrainResult) -> Table:
    c = result.config
    table = Table(
        title=f"{c.optimizer.value}  η={c.lr:g}  λ={c.weight_decay:g}  {c.dataset.value}  "
        f"{result.device}/{result.precision}  {result.seconds:.1f} s"
    )
    table.add_column("layer")
    table.add_column("‖w‖", justify="right")
    table.add_column("mean unit ‖w‖", justify="right")
    table.add_column("η_eff", justify="right")
    table.add_column("angle/step", justify="right")  # RMS θ, radians
    table.add_column("÷ θ_eq", justify="right")  # 1 at equilibrium (where the theory has θ_eq)
    table.add_column("balance", justify="right")  # growth ÷ shrink of ‖w‖: 1 when stationary
    last = result.history[-1]
    for name, rec in last.layers.items():
        table.add_row(
            name,
            f"{rec.norm:.4g}",
            f"{rec.unit_norm:.4g}",
            f"{rec.eff_lr:.4g}",
            _num(rec.angle),
            _num(rec.angle / rec.angle_eq if rec.angle_eq > 0 else math.nan, ".3f"),
            _num(rec.balance, ".3f"),
        )
    status = "[red]diverged[/red]" if result.diverged else "ok"
    # One short line each (a caption wraps at the table's width).
    table.caption = (
        f"{status} after {last.epoch} epochs · train loss {last.train_loss:.4f} · "
        f"val loss {result.val_loss:.4f}\n"
        f"val error {result.val_error:.4f} · test error {result.test_error:.4f}\n"
        "angle, θ_eq, balance: the last epoch's per-step means"
    )
    return table


def _num(x: float, spec: str = ".3g") -> str:
    """A record's number, or "–" where it is not measured or not defined (NaN)."""
    return "–" if math.isnan(x) else format(x, spec)


# --- l2bn analyze --------------------------------------------------------------------


def _est(e: Estimate, digits: int = 2) -> str:
    if not math.isfinite(e.value):
        return "–"
    if not e.determined:
        return f"{e.value:.{digits}f} [?]"
    return f"{e.value:.{digits}f} [{e.ci_low:.{digits}f}, {e.ci_high:.{digits}f}]"


_VERDICT_STYLE = {
    EQUIVALENT: "green",
    DIFFERENT: "red",
    INCONCLUSIVE: "yellow",
    UNDETERMINED: "yellow",
    CONSTANT: "green",
    VARIES: "red",
}
_ESTIMATOR_LABEL = {
    "collapse": "k  whole-surface collapse (primary)",
    "joint": "k  cross-check: joint parabola near η*",
    "per_lambda": "k  cross-check: per-λ η*, regression",
}


def render_report(report: AnalysisReport) -> Group:
    """Rich renderables: one table per group (studies of one training identity), then its
    warnings. The caller prints them."""
    parts: list[Table | Text] = []
    if report.warnings:
        parts.append(Text("\n".join(f"• {w}" for w in report.warnings), style="yellow"))
    if report.rule is not None:
        parts.append(render_rule(report.rule))
    for g in report.groups:
        parts.append(render_group(g, report.settings))
        if g.collapse is not None and g.collapse.rows:
            parts.append(render_rows(g))
        if g.optima:
            parts.append(render_optima(g))
        parts.append(equilibrium_line(g))
        if g.columns:
            parts.append(render_columns(g))
        if g.k_by_epoch:
            parts.append(Text(_k_by_epoch_line(g)))
        if g.warnings:
            parts.append(Text("\n".join(f"• {w}" for w in g.warnings), style="yellow"))
    if len(report.groups) > 1:
        parts.append(render_answer(report))
    if report.written:
        parts.append(Text("wrote: " + ", ".join(str(p) for p in report.written)))
    return Group(*parts)


def render_answer(report: AnalysisReport) -> Table:
    """The answer, one row per group, last on screen: the primary k with its interval, the
    theory, the verdict, whether the surface collapses, equilibrium at the optima and (when
    the groups were read from several places) where each was read."""
    sources = {s for g in report.groups for s in g.sources}
    table = Table(title="The answer: η* ∝ λ^-k", title_justify="left", title_style="bold")
    for col in ("group", f"k [{report.settings.confidence:.0%} CI]", "theory", "verdict",
                "surface", "optima in eq."):  # fmt: skip
        table.add_column(col, justify="right" if col.startswith(("k", "theory")) else "left",
                         no_wrap=col == "group")  # fmt: skip
    if len(sources) > 1:
        table.add_column("read from")
    for g in report.groups:
        k = g.scaling
        eq = g.optima_equilibrium
        row: list[str | Text] = [
            Text(g.label),
            _est(k.k),
            "–" if k.theory is None else f"{k.theory:g}",
            Text(k.verdict, style=_VERDICT_STYLE.get(k.verdict, "")),
            "–" if g.collapse is None else g.collapse.status,
            f"{eq.get('in', 0)} of {eq.get('total', 0)}" if eq else "–",
        ]
        if len(sources) > 1:
            row.append(Text("; ".join(g.sources)))
        table.add_row(*row)
    return table


_RULE_STYLE = {"met": "green", "missed": "red", "undetermined": "yellow",
               "holds": "bold green", "does not hold": "bold red"}  # fmt: skip


def render_rule(rule: RuleOutcome) -> Table:
    """The registered reading rule, judged: each condition with its numbers, then the whole."""
    table = Table(
        title=Text.assemble(
            "Registered reading rule (",
            rule.source,
            "): ",
            (rule.status, _RULE_STYLE.get(rule.status, "")),
        ),
        title_justify="left",
        title_style="bold",
    )
    table.add_column("condition")
    table.add_column("outcome")
    table.add_column("on")
    for o in rule.outcomes:
        table.add_row(
            o.condition.describe(), Text(o.status, style=_RULE_STYLE.get(o.status, "")), o.numbers
        )
    return table


def _k_by_epoch_line(g: GroupReport) -> str:
    """k over training, a few epochs: enough to see whether it still moves."""
    rows = g.k_by_epoch
    n = len(rows)
    picks = sorted({0, n // 4, n // 2, (3 * n) // 4, n - 1})
    shown = ", ".join(f"e{rows[i].epoch}: {_est(rows[i].k)}" for i in picks if 0 <= i < n)
    return f"k over training ({g.metric}): {shown}"


def render_group(g: GroupReport, settings: AnalyzeConfig) -> Table:
    """One group as a rich Table: estimates with CI, theory, verdict, data used. The title
    names the group's studies and, in its label, what tells it from the optimizer's other
    groups (``sgd / bn / cifar10 [affine=false]``)."""
    seeds = f"≤ {g.max_seeds} seeds" if g.max_seeds > 1 else "1 seed"
    rows_kind = ", independent λ rows" if g.independent_rows else ""
    table = Table(
        # Text, not markup: "[affine=false]" in a label is not a style.
        title=Text(
            f"{g.label}  ({', '.join(g.studies)}: {g.n_trials} trials, "
            f"{len(g.cells)} cells, {seeds}{rows_kind}; metric {g.metric}, "
            f"noise sd {g.noise_sd:.3g})"
        ),
        title_justify="left",
        title_style="bold",
    )
    table.add_column("quantity")
    table.add_column(f"estimate [{settings.confidence:.0%} CI]", justify="right")
    table.add_column("theory", justify="right")
    table.add_column(f"verdict (±{settings.margin:g})")
    table.add_column("data used", justify="right")

    def verdict(v: str) -> Text:
        return Text(v, style=_VERDICT_STYLE.get(v, ""))

    def theory(x: float | None) -> str:
        return "–" if x is None else f"{x:.3g}"

    def method(e: Estimate) -> str:
        return f" {e.method}" if math.isfinite(e.value) else ""

    s = g.scaling
    if not g.k_estimates:
        table.add_row("k  (η* ∝ λ^-k)", _est(s.k), theory(s.theory), verdict(s.verdict), "")
    for name, ke in g.k_estimates.items():
        used = f"{ke.k.n}/{g.n_lambda} λ"
        if name == "collapse" and g.collapse is not None:
            used += f", {g.collapse.n_cells} cells; {g.collapse.status}"
            if math.isfinite(s.r_squared):
                used += f", R² {s.r_squared:.2f}"
        table.add_row(
            _ESTIMATOR_LABEL.get(name, name),
            _est(ke.k) + method(ke.k),
            theory(ke.theory),
            verdict(ke.verdict),
            used,
        )
    nf = g.first_layer_norm
    if nf is not None:
        # Which filter chose the cells: "measured" or "clock c·η·λ·T ≥ 5" (no verdicts).
        used = f"{nf.n_cells} cells ({nf.n_excluded} excl.; {nf.cell_filter or 'clock'})"
        table.add_row(
            f"p  (‖w_{nf.layer}‖·λ^{nf.s:g} ∝ (η·λ^{nf.k:g})^p)",
            _est(nf.p),
            theory(nf.theory),
            Text(nf.verdict, style=_VERDICT_STYLE.get(nf.verdict, "")),
            used,
        )
        table.add_row(
            "q  (memory of w₀: · λ^q)",
            _est(nf.q),
            "0",
            Text(nf.memory, style=_VERDICT_STYLE.get(nf.memory, "")),
            used,
        )
        table.add_row(f"a  (old: ‖w_{nf.layer}‖ ∝ η^a)", _est(nf.a), theory(nf.theory), "", used)
        table.add_row(f"b  (old: ‖w_{nf.layer}‖ ∝ λ^-b)", _est(nf.b), theory(nf.theory), "", used)
    return table


_EQUILIBRIUM_STYLE = {IN_EQUILIBRIUM: "green", OUT_OF_EQUILIBRIUM: "red", UNKNOWN: "yellow"}
_EQUILIBRIUM_RATIO = {ANGLE_TEST: "⟨θ²⟩/θ_eq²", BALANCE_TEST: "growth ÷ shrink"}


def _ratio(x: float) -> str:
    if math.isnan(x):
        return "–"
    return "∞" if math.isinf(x) else f"{x:.2f}"


def _memory(m: float) -> str:
    if math.isnan(m):
        return "–"
    return "∞" if math.isinf(m) else f"{math.expm1(m):+.0%}"


def equilibrium_cell(e: Equilibrium) -> Text:
    """One cell's equilibrium: the stationarity verdict and its layer farthest from it (‖w‖²
    still to go, growth ÷ shrink), seeds in equilibrium, and the θ test's worst ratio."""
    text = Text(e.verdict, style=_EQUILIBRIUM_STYLE.get(e.verdict, ""))
    moving = e.moving_layer
    if moving is not None and math.isinf(e.memory[moving]):
        text.append(f" {moving}: {unpulled_words(e.memory[moving])}")
    elif moving is not None:
        text.append(
            f" {moving}: ‖w‖² {_memory(e.memory[moving])}, "
            f"g÷s {_ratio(e.balance.get(moving, math.nan))}"
        )
    if e.n_seeds > 1:
        text.append(f" {e.n_in}/{e.n_seeds} seeds", style="dim")
    layer = e.worst_layer
    if layer is not None:
        what = _EQUILIBRIUM_RATIO.get(e.test, e.test)
        text.append(f"; {what} {_ratio(e.ratio)} ({layer})", style="dim")
        predicted = e.predicted.get(layer, math.nan)
        if not math.isnan(predicted):  # what correlated successive gradients account for
            text.append(f", {_ratio(predicted)} by update correlation", style="dim")
    return text


def equilibrium_line(g: GroupReport) -> Text:
    """The group's summary: how many optimum cells are in equilibrium, by measurement."""
    s = g.optima_equilibrium
    what = _EQUILIBRIUM_RATIO.get(g.equilibrium_test)
    if what is None:
        return Text(f"equilibrium: no measured test for {g.optimizer}", style="dim")
    lo, hi = g.equilibrium_band
    text = Text(
        f"equilibrium (norms stationary over the last {g.equilibrium_tail:.0%} of phase 1, "
        f"band [{lo:g}, {hi:g}]; {what} beside it): "
    )
    style = "green" if s["in"] == s["total"] else "red" if s["out"] else "yellow"
    text.append(f"{s['in']} of {s['total']} optimum cells in equilibrium", style=style)
    text.append(f", {s['out']} out, {s['unknown']} unknown")
    return text


def render_optima(g: GroupReport) -> Table:
    """η* per λ, and whether its cell is in equilibrium (the worst layer's ratio)."""
    table = Table(title=Text(f"{g.label}: η* per λ ({g.metric})"), title_justify="left")
    table.add_column("λ", justify="right")
    table.add_column("η* [CI]", justify="right")
    table.add_column("η grid", justify="right")
    table.add_column(g.metric, justify="right")
    table.add_column("used / note")
    table.add_column("equilibrium (stationarity; θ test)")
    for o in g.optima:
        ci = (
            f" [{o.lr_ci_low:.3g}, {o.lr_ci_high:.3g}]"
            if math.isfinite(o.lr_ci_low) and math.isfinite(o.lr_ci_high)
            else ""
        )
        table.add_row(
            f"{o.weight_decay:.3g}",
            f"{o.lr_opt:.3g}{ci}",
            f"{o.lr_grid:.3g}",
            f"{o.val_error:.4g}",
            ("in the primary" if o.used else Text("left out of the primary", style="dim"))
            if o.note is None
            else Text(f"{'in the primary' if o.used else 'left out'}; {o.note}", style="dim"),
            equilibrium_cell(o.equilibrium),
        )
    return table


_ROW_STYLE = {"fits": "green", "fails": "red", "untested": "yellow"}


def render_rows(g: GroupReport) -> Table:
    """The lack-of-collapse test: each λ row against the curve the other rows define."""
    assert g.collapse is not None
    table = Table(
        title=Text(f"{g.label}: does each λ row follow the others' curve? ({g.collapse.status})"),
        title_justify="left",
    )
    table.add_column("λ", justify="right")
    table.add_column("row")
    table.add_column("p (Bonferroni)", justify="right")
    table.add_column("worst cell", justify="right")
    table.add_column("k without it", justify="right")
    table.add_column("in the primary")
    for r in g.collapse.rows:
        worst = f"{r.worst_z:+.1f} sd at η={r.worst_lr:.3g}" if math.isfinite(r.worst_z) else "–"
        table.add_row(
            f"{r.weight_decay:.3g}",
            Text(r.verdict + (f": {r.cause}" if r.cause else ""),
                 style=_ROW_STYLE.get(r.verdict, "")),
            _num(r.p_value, ".2g"),
            worst,
            _num(r.k_without, ".2f"),
            "yes" if r.used else Text("left out", style="red"),
        )  # fmt: skip
    return table


def render_columns(g: GroupReport) -> Table:
    """The column test: slope against log λ along η·λ^k = const, per column and quantity."""
    table = Table(
        title=Text(f"{g.label}: columns η·λ^k = const (slope against log λ; theory 0)"),
        title_justify="left",
    )
    table.add_column("quantity")
    table.add_column("log(η·λ^k)", justify="right")
    table.add_column("slope [CI]", justify="right")
    table.add_column("band", justify="right")
    table.add_column("verdict")
    table.add_column("λ values", justify="right")
    for c in g.columns:
        table.add_row(
            c.quantity,
            f"{c.log_x:.2f}",
            _est(c.slope, 3),
            f"±{c.band:.3g}",
            Text(c.verdict, style=_VERDICT_STYLE.get(c.verdict, "")),
            str(c.n_lambda),
        )
    return table


# --- l2bn transfer -------------------------------------------------------------------


def render_transfer(t: Transfer) -> Table:
    """A :class:`~l2bn.analysis.transfer.Transfer` as a rich Table: k and where it came from,
    the tuned pair, the answer, and the band from k's CI (a fitted k only)."""
    k = t.k
    level = "exact" if k.is_theory else f"{k.confidence:.0%} CI"
    what, unit = ("η", "lr") if t.target == "lr" else ("λ", "weight_decay")
    table = Table(title=Text(f"{t.optimizer}: {what} along η* ∝ λ^-k"), title_justify="left",
                  title_style="bold", show_header=False)  # fmt: skip
    table.add_column("", style="dim")
    table.add_column("", justify="right")
    ci = "" if k.is_theory else f" [{k.ci_low:.3g}, {k.ci_high:.3g}]"
    table.add_row("k", Text(f"{k.k:.3g}{ci}  ({level}; {k.source})"))
    if k.lambda_range is not None:
        table.add_row("fitted λ range", f"{k.lambda_range[0]:.3g} … {k.lambda_range[1]:.3g}")
    table.add_row("tuned", f"lr = {t.lr:.4g}, weight_decay = {t.weight_decay:.4g}")
    given = "weight_decay" if t.target == "lr" else "lr"
    table.add_row(f"new {given}", f"{t.given:.4g}")
    style = "bold yellow" if t.extrapolated else "bold green"
    table.add_row(f"→ {unit}", Text(f"{t.estimate:.4g}", style=style))
    if not k.is_theory:
        high = "∞" if t.high == float("inf") else f"{t.high:.4g}"
        table.add_row(f"  band ({level})", f"{t.low:.4g} … {high}")
    if t.extrapolated:
        table.caption = "extrapolated beyond the fitted λ range"
    return table
