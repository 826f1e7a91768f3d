"""``l2bn analyze --report FILE.html``: one self-contained page to look at, and to mail.

The first screen (1280×720) is the answer: per group, k with its 95 % interval by the primary
(the whole-surface collapse) beside the theory's k, the verdict, whether the surface
collapses, how many optimum cells are in equilibrium, the registered reading rule with each
condition met, missed or undetermined (where the run registered one), and a line saying what
the verdict words mean. Below it, per group: its fits (estimates, CIs, theory, verdicts), the
lack-of-collapse test of each λ row, η* per λ with its cell's equilibrium, its warnings, every
figure of ``--plots`` embedded as a PNG data URI; folded at the end: its training identity, its
cells, the settings.

It is built from :meth:`~l2bn.analysis.results.AnalysisReport.to_dict` (the stable JSON shape),
not from the dataclasses, and renders what it does not know generically: a group entry that is
a fit (a dict with an ``estimate``, or with one estimate among scalars such as a column test),
an estimate (a dict with ``value`` and ``ci_low``), or a list or dict of those becomes rows of
the group's table; any other unknown entry is shown as text (a number, a string) or as JSON
under "other fields". Every string from the data is HTML-escaped (study names are user input),
and a Content-Security-Policy forbids scripts and any request: the page needs no network and
no server. Every table scrolls inside its own box, so that no column is cut on a phone.
Figures come from the files ``--plots`` wrote, when it did, else they are rendered into a
temporary folder by :func:`l2bn.analysis.presenting.plots.write_plots` (matplotlib).
"""

from __future__ import annotations

import base64
import datetime as _dt
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from l2bn import files
from l2bn.analysis.presenting.report_tables import (
    _EQUILIBRIUM_RATIO,
    _LAID_OUT,
    _cells,
    _e,
    _estimate_html,
    _fit_rows,
    _fits,
    _json_block,
    _label,
    _optima,
    _sub,
    _text,
    _verdict,
)
from l2bn.analysis.results import AnalysisReport

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Nothing may be fetched or run: images are data URIs, the style sheet is inline.
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"

_FIGURE_CAPTIONS = {
    "error_heatmap": "validation (and test) error over (λ, η), η* marked",
    "eta_star": "η* per λ (a cross-check) against λ, with the primary's and the theory's slope",
    "collapse": "the primary: every cell against η·λ^k at the fitted k, ± its seed noise, "
    "with the fitted curve; beside it, at the theory's k",
    "norm_heatmap": "first-layer ‖w‖ at the end of LR phase 1; × = out of equilibrium",
    "norm_trajectories": "first-layer ‖w‖ per epoch, one panel per λ, colour = η",
    "equilibrium": "at each λ's optimum cell: ‖w‖² over its end-of-phase-1 value per epoch "
    "(stationarity, the verdict), and the θ test beside it (θ̄²/θ_eq², or Adam's per-step "
    "growth ÷ shrink); shaded: the band, and the tail of phase 1 judged",
    "k_by_epoch": "the primary k over training with its 95 % CI, against the theory",
    "k_summary": "every group's primary k with its 95 % CI, against its theory (◇) and, with "
    "a registration, its registered range (band)",
}
Figure = tuple[str, bytes]  # (figure name, PNG bytes)


# --- figures ------------------------------------------------------------------------------


def group_figures(report: AnalysisReport) -> list[list[Figure]]:
    """Per group (in report order): its figures as (name, PNG bytes)."""
    return report_figures(report)[0]


def report_figures(report: AnalysisReport) -> tuple[list[list[Figure]], list[Figure]]:
    """Per group (in report order) its figures as (name, PNG bytes), and the figures over all
    groups (``k_summary``, ``k_by_epoch`` with two groups or more).

    The PNG files of ``report.written`` when ``--plots`` wrote them, else every figure of
    :func:`~l2bn.analysis.presenting.plots.write_plots` rendered into a temporary folder.
    """
    pngs = [p for p in report.written if p.suffix == ".png" and p.is_file()]
    if pngs or report.settings.plots_dir is not None:
        return _assign(report, pngs)
    from l2bn.analysis.presenting.plots import (
        write_plots,  # matplotlib: only when figures are drawn
    )

    with tempfile.TemporaryDirectory(prefix="l2bn-report-") as tmp:
        return _assign(report, write_plots(report, Path(tmp)))


def _assign(
    report: AnalysisReport, paths: Iterable[Path]
) -> tuple[list[list[Figure]], list[Figure]]:
    """Files named ``<slug>_<figure>.png`` to their groups, longest slug first, so that no
    group takes another's files by a shared prefix; the rest are the figures over all groups."""
    out: list[list[Figure]] = [[] for _ in report.groups]
    overall: list[Figure] = []
    order = sorted(range(len(report.groups)), key=lambda i: -len(report.groups[i].slug))
    for path in paths:
        for i in order:
            prefix = f"{report.groups[i].slug}_"
            if path.name.startswith(prefix):
                out[i].append((path.stem[len(prefix) :], path.read_bytes()))
                break
        else:
            overall.append((path.stem, path.read_bytes()))
    return out, overall


# --- the page -----------------------------------------------------------------------------


def write_report(report: AnalysisReport, path: Path) -> Path:
    """The page for ``report`` at ``path`` (its folder created), written atomically."""
    per_group, overall = report_figures(report)
    page = render_html(report.to_dict(), per_group, overall=overall)
    path.parent.mkdir(parents=True, exist_ok=True)
    with files.atomic_open(path, "w", encoding="utf-8") as f:
        f.write(page)
    return path


def render_html(
    data: Mapping[str, Any],
    figures: Sequence[Sequence[Figure]] = (),
    generated: _dt.datetime | None = None,
    overall: Sequence[Figure] = (),
) -> str:
    """The page for a report's JSON form (``AnalysisReport.to_dict()``) and its figures
    (per group, in the order of ``data["groups"]``; ``overall``: those over all groups, shown
    under the answer)."""
    when = (generated or _dt.datetime.now(_dt.UTC)).strftime("%Y-%m-%d %H:%M UTC")
    groups = [g for g in data.get("groups") or () if isinstance(g, Mapping)]
    body: list[str] = [
        "<header><h1>l2bn analyze</h1>",
        f"<p class='meta'>{len(groups)} group(s) from <code>{_e(data.get('storage', '?'))}"
        f"</code> · l2bn {_e(data.get('l2bn_version', '?'))} · {_e(when)}</p>",
        "</header>",
        _answer(groups, data.get("registration")),
        _figures(overall),
        _warnings(data.get("warnings"), "Warnings"),
    ]
    for i, g in enumerate(groups):
        body.append(_group(i, g, figures[i] if i < len(figures) else ()))
    body.append(_settings(data))
    extra = {
        k: v
        for k, v in data.items()
        if k
        not in (
            "schema",
            "l2bn_version",
            "storage",
            "settings",
            "warnings",
            "groups",
            "registration",
        )
    }
    if extra:
        body.append(f"<section><h2>Other fields</h2>{_json_block(extra)}</section>")
    title = "l2bn analyze: " + ", ".join(_label(g) for g in groups)
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>\n"
        f"<meta http-equiv='Content-Security-Policy' content=\"{CSP}\">\n"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>\n"
        f"<title>{_e(title)}</title>\n<style>{_STYLE}</style></head>\n<body>\n"
        + "\n".join(part for part in body if part)
        + "\n</body></html>\n"
    )


def _settings(data: Mapping[str, Any]) -> str:
    settings = data.get("settings")
    if not isinstance(settings, Mapping):
        return ""

    def shown(key: str, value: Any) -> str:
        if key == "studies" and not value:
            return "all (every study with user attr optimizer)"
        if key == "metric" and value is None:
            return "default (each group's stored objective when its studies agree, else val_error)"
        return _text(value)

    rows = "".join(
        f"<tr><th>{_e(k)}</th><td>{_e(shown(k, v))}</td></tr>" for k, v in settings.items()
    )
    return (
        "<details class='settings'><summary>Settings of this analysis</summary>"
        f"<div class='scroll'><table class='kv'>{rows}</table></div><p class='note'>The "
        "storage URL is shown with its password redacted.</p></details>"
    )


def _warnings(warnings: Any, title: str) -> str:
    items = [w for w in warnings or () if w]
    if not items:
        return ""
    lis = "".join(f"<li>{_e(w)}</li>" for w in items)
    return f"<div class='warnings'><h3>{_e(title)}</h3><ul>{lis}</ul></div>"


VERDICT_WORDS = (
    "Verdicts against the theory ± δ: <b>equivalent</b>, the 95 % interval lies inside; "
    "<b>different</b>, entirely outside; <b>inconclusive</b>, neither; <b>does not "
    "collapse</b>, too many λ rows fail to follow one curve, so k is no test of the theory; "
    "<b>undetermined</b>, no estimate or no theory."
)


def _answer(groups: Sequence[Mapping[str, Any]], rule: Any) -> str:
    """The first screen: k per group by the primary, beside the theory, its verdict, the
    collapse, equilibrium, and the registered rule judged."""
    rows = []
    for i, g in enumerate(groups):
        fit = _sub(g, "k")
        collapse = _sub(g, "collapse")
        rows_used = [r for r in collapse.get("rows") or () if isinstance(r, Mapping)]
        n_used = sum(1 for r in rows_used if r.get("used"))
        status = collapse.get("status") or "–"
        collapse_text = f"{status}, {n_used} of {len(rows_used)} λ" if rows_used else status
        rows.append(
            f"<tr><td><a href='#group-{i}'>{_e(_label(g))}</a>{_sources(g)}</td>"
            f"<td class='num k'>{_estimate_html(fit.get('estimate'))}</td>"
            f"<td class='num'>{_e(_text(fit.get('theory')))}</td>"
            f"<td>{_verdict(fit.get('verdict'))}</td>"
            f"<td>{_e(collapse_text)}</td>"
            f"<td>{_equilibrium_count(_sub(g, 'optima_equilibrium'))}</td></tr>"
        )
    table = (
        "<div class='scroll'><table class='answer'><thead><tr><th>group</th>"
        "<th>k [95 % CI], primary</th><th>theory</th><th>verdict</th><th>surface</th>"
        "<th>optimum cells in equilibrium</th></tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table></div>"
    )
    return (
        "<section class='answer' id='answer'><h2>The answer: η* ∝ λ^-k</h2>"
        f"{table}{_rule(rule)}<p class='note'>{VERDICT_WORDS} k is read from the whole error "
        "surface (its collapse along η·λ^k; docs/method.md).</p></section>"
    )


def _sources(g: Mapping[str, Any]) -> str:
    """Where the group's trials were read, in words: a storage read now (a live sweep), or an
    export re-analyzed now (committed data)."""
    said = []
    for src in g.get("sources") or ():
        kind, _, where = str(src).partition(" ")
        if kind == "storage":
            said.append(f"a sweep's storage (live), read now: {where}")
        elif kind == "export":
            said.append(f"an export (committed data), re-analyzed now: {where}")
    return f"<br><span class='source'>{_e('; '.join(said))}</span>" if said else ""


def _rule(rule: Any) -> str:
    """The registered reading rule, judged: the whole and each condition."""
    if not isinstance(rule, Mapping):
        return ""
    items = "".join(
        f"<li>{_verdict(c.get('status'))} {_e(c.get('text', '?'))}: "
        f"<span class='numbers'>{_e(c.get('numbers', ''))}</span></li>"
        for c in rule.get("conditions") or ()
        if isinstance(c, Mapping)
    )
    return (
        f"<div class='rule'><b>Registered reading rule</b> ({_e(rule.get('source', '?'))}): "
        f"{_verdict(rule.get('status'))}<ul>{items}</ul></div>"
    )


def _equilibrium_count(s: Mapping[str, Any]) -> str:
    """ "3 of 4" with the verdict colour of the whole (all in, some out, else unknown)."""
    if not s or not isinstance(s.get("total"), int):
        return ""
    n_in, n_out, total = s.get("in", 0), s.get("out", 0), s["total"]
    css = "in" if n_in == total and total else "out" if n_out else "unknown"
    return f"<span class='verdict v-{css}'>{_e(n_in)} of {_e(total)}</span>"


def _equilibrium_summary(s: Any) -> str:
    """The group's line: the verdict's test (stationarity), the θ test beside it, the band and
    window, and the optimum cells' count."""
    if not isinstance(s, Mapping) or not s:
        return ""
    if s.get("test") == "none":
        return "<p class='meta'>Equilibrium: no measured test for this optimizer.</p>"
    theta = _EQUILIBRIUM_RATIO.get(str(s.get("theta_test", s.get("test"))), "")
    band, tail = s.get("band"), s.get("tail")
    shown_band = (
        f"[{band[0]:g}, {band[1]:g}]"
        if isinstance(band, list)
        and len(band) == 2
        and all(isinstance(x, int | float) for x in band)
        else "?"
    )
    window = f"{tail:.0%}" if isinstance(tail, int | float) else "?"
    beside = f"; {_e(theta)} beside it tests the θ_eq formula" if theta else ""
    return (
        f"<p class='meta'>Equilibrium by measurement (every scale-invariant layer's norm "
        f"stationary over the last {_e(window)} of phase 1: growth ÷ shrink in "
        f"{_e(shown_band)} and ‖w‖² within that band of its equilibrium, every seed{beside}): "
        f"{_equilibrium_count(s)} optimum cells in equilibrium, {_e(_text(s.get('out')))} out, "
        f"{_e(_text(s.get('unknown')))} unknown.</p>"
    )


def _group(i: int, g: Mapping[str, Any], figures: Sequence[Figure]) -> str:
    counts = ", ".join(
        f"{_e(_text(g.get(key)))} {name}"
        for key, name in (
            ("n_trials", "trials"),
            ("n_cells", "cells"),
            ("n_lambda", "λ values"),
            ("max_seeds", "seeds at most"),
            ("n_diverged", "diverged"),
        )
        if key in g
    )
    noise = g.get("noise_sd")
    meta = (
        f"studies: {_e(', '.join(map(str, g.get('studies') or ())) or '?')} · {counts}"
        + (f" · metric {_e(g['metric'])}" if g.get("metric") else "")
        + (f", noise sd {noise:.3g} per trial" if isinstance(noise, int | float) else "")
        + (" · independent λ rows" if g.get("independent_rows") else "")
    )
    parts = [
        f"<section class='group' id='group-{i}'><h2>{_e(_label(g))}</h2>",
        f"<p class='meta'>{meta}</p>",
        _fits(g),
        _rows(_sub(g, "collapse")),
        _optima(g.get("optima")),
        _equilibrium_summary(g.get("optima_equilibrium")),
        _warnings(g.get("warnings"), "Warnings for this group"),
    ]
    parts.append(_figures(figures))
    other = {
        k: v for k, v in g.items() if k not in _LAID_OUT and v is not None and not _fit_rows(k, v)
    }
    other.pop("collapse", None)
    scalars = {k: v for k, v in other.items() if not isinstance(v, Mapping | list)}
    if scalars:
        shown = " · ".join(f"{_e(k)}: {_e(_text(v))}" for k, v in scalars.items())
        parts.insert(2, f"<p class='meta'>{shown}</p>")
    parts.append(_identity(g))
    nested = {k: v for k, v in other.items() if k not in scalars}
    if nested:
        parts.append(f"<details><summary>Other fields</summary>{_json_block(nested)}</details>")
    parts.append(_cells(g.get("cells")))
    parts.append("</section>")
    return "\n".join(p for p in parts if p)


_FIGURE_NAMES = (
    "collapse",
    "k_by_epoch",
    "eta_star",
    "error_heatmap",
    "equilibrium",
    "norm_trajectories",
    "norm_heatmap",
)
_FIGURE_ORDER = {name: i for i, name in enumerate(_FIGURE_NAMES)}


def _figures(figures: Sequence[Figure]) -> str:
    """Figures as ``<figure>`` elements with their captions, in the documented order."""
    if not figures:
        return ""
    parts = ["<div class='figures'>"]
    for name, png in sorted(figures, key=lambda f: _FIGURE_ORDER.get(f[0], 99)):
        caption = _FIGURE_CAPTIONS.get(name, name.replace("_", " "))
        uri = "data:image/png;base64," + base64.b64encode(png).decode("ascii")
        parts.append(
            f"<figure><img src='{uri}' alt='{_e(name)}' data-figure='{_e(name)}'>"
            f"<figcaption><b>{_e(name)}</b>: {_e(caption)}</figcaption></figure>"
        )
    parts.append("</div>")
    return "".join(parts)


def _rows(collapse: Mapping[str, Any]) -> str:
    """The lack-of-collapse test: each λ row against the curve the other rows define."""
    rows = [r for r in collapse.get("rows") or () if isinstance(r, Mapping)]
    if not rows:
        return ""
    body = []
    for r in rows:
        z, lr = r.get("worst_z"), r.get("worst_lr")
        worst = (
            f"{z:+.1f} sd at η = {lr:.3g}"
            if isinstance(z, int | float) and isinstance(lr, int | float)
            else "–"
        )
        cause = f": {r['cause']}" if r.get("cause") else ""
        used = "yes" if r.get("used") else "<span class='verdict v-out'>left out</span>"
        body.append(
            f"<tr><td class='num'>{_e(_text(r.get('weight_decay')))}</td>"
            f"<td>{_verdict(r.get('verdict'))}{_e(cause)}</td>"
            f"<td class='num'>{_e(_text(r.get('p_value')))}</td><td class='num'>{_e(worst)}</td>"
            f"<td class='num'>{_e(_text(r.get('k_without')))}</td><td>{used}</td></tr>"
        )
    return (
        f"<h3>Does each λ row follow the others' curve? {_verdict(collapse.get('status'))}</h3>"
        "<div class='scroll'><table><thead><tr><th>λ</th><th>row</th><th>p (Bonferroni)</th>"
        "<th>its worst cell, beyond a tenth of the valley</th><th>k without it</th>"
        f"<th>in the primary</th></tr></thead><tbody>{''.join(body)}</tbody></table></div>"
        "<p class='note'>Each row is compared, cell by cell, with the curve the other rows "
        "define; a row that fails is left out of the primary while at least 3 rows and more "
        "than half remain (docs/method.md).</p>"
    )


def _identity(g: Mapping[str, Any]) -> str:
    identity = g.get("identity")
    if not isinstance(identity, Mapping) or not identity:
        return ""
    distinct = _sub(g, "distinct")
    cells = []
    for k, v in identity.items():
        mark = " class='distinct' title='tells this group from its optimizer&#x27;s others'"
        cells.append(f"<span{mark if k in distinct else ''}><b>{_e(k)}</b>={_e(_text(v))}</span>")
    return (
        "<details class='identity'><summary>Training identity (what the pooled studies share)"
        f"</summary><p>{' '.join(cells)}</p></details>"
    )


_STYLE = """
body{font:14px/1.45 system-ui,-apple-system,'Segoe UI',sans-serif;margin:1.5em auto;
max-width:1280px;padding:0 1em;color:#222;background:#fff}
h1{margin:0 0 .2em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:1.6em}
.meta{color:#555}.note{color:#777;font-size:12px}code{font-size:13px}.source{color:#777;font-size:12px}td.k{white-space:nowrap}
table{border-collapse:collapse;margin:.6em 0}th,td{padding:3px 9px;border-bottom:1px solid #e4e4e4;
text-align:left;vertical-align:top}th{background:#f4f4f4}td.num{text-align:right;
font-variant-numeric:tabular-nums}table.kv th{text-align:right;font-weight:normal;color:#555}
table.small{font-size:12px}td.used{color:#555;font-size:12px}tr.unused td{color:#999}
.verdict{padding:1px 7px;border-radius:9px;font-weight:600;background:#e8e8e8}
.v-consistent,.v-equivalent,.v-constant{background:#d6f2d6;color:#145214}
.v-inconsistent,.v-different,.v-varies{background:#f8d4d4;color:#7a1010}
.v-undetermined,.v-inconclusive{background:#fbeec8;color:#6b4e00}
.v-in{background:#d6f2d6;color:#145214}.v-out{background:#f8d4d4;color:#7a1010}
.v-unknown{background:#fbeec8;color:#6b4e00}
.warnings{background:#fff8e1;border-left:4px solid #e0b000;padding:.3em 1em;margin:.8em 0}
.warnings h3{margin:.3em 0;font-size:14px}.warnings li{margin:.2em 0}
.figures{display:flex;flex-wrap:wrap;gap:12px}figure{margin:0;border:1px solid #ddd;padding:6px;
max-width:100%}figure img{max-width:100%;height:auto;display:block}
figcaption{font-size:12px;color:#444;margin-top:4px}.identity span{display:inline-block;
margin:0 .9em .2em 0}.identity .distinct{background:#e3ecff;padding:0 4px;border-radius:4px}
.scroll{overflow-x:auto}pre{background:#f6f6f6;padding:.6em;overflow-x:auto}
details{margin:.6em 0}summary{cursor:pointer;color:#333}
section.answer{background:#f7f9fc;border:1px solid #dde3ee;padding:.2em 1em .6em;
border-radius:6px}section.answer h2{margin-top:.4em}table.answer td.k{font-weight:600}
.rule ul{margin:.3em 0 .3em 1.2em;padding:0}.rule li{margin:.15em 0}
.numbers{color:#444}.detail{color:#444;font-size:12px}h3{font-size:15px;margin:1.1em 0 .3em}
.v-met,.v-holds,.v-fits,.v-collapses{background:#d6f2d6;color:#145214}
.v-missed,.v-does-not-hold,.v-fails,.v-does-not-collapse{background:#f8d4d4;color:#7a1010}
.v-untested,.v-collapses-without-some-rows{background:#fbeec8;color:#6b4e00}
img{max-width:100%}.meta,.warnings,.note,.rule,.source,figcaption,code,h1,h2,h3,summary{
overflow-wrap:anywhere}@media (max-width:600px){body{padding:0 .4em;margin:.6em auto}
th,td{padding:2px 5px}}
"""

__all__ = ["CSP", "group_figures", "render_html", "report_figures", "write_report"]
