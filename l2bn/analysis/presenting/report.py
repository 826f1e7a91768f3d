"""``l2bn analyze --report FILE.html``: one self-contained page to look at, and to mail.

The page holds, from top to bottom: the settings and studies behind the analysis (storage
redacted), the warnings, a summary of k per group (with how many optimum cells are in
equilibrium), then per group its training identity and studies, a table of every fitted
quantity (estimate, CI, theory, verdict, data used), η* per λ with its cell's equilibrium
verdict, the group's equilibrium summary, its warnings, every figure of ``--plots`` embedded as
a PNG data URI, and its cells (folded).

It is built from :meth:`~l2bn.analysis.results.AnalysisReport.to_dict` (the stable JSON shape),
not from the dataclasses, and renders what it does not know generically: a group entry that is
a fit (a dict with an ``estimate``, or with one estimate among scalars such as a column test),
an estimate (a dict with ``value`` and ``ci_low``), or a list or dict of those becomes rows of
the group's table; any other unknown entry is shown as text (a number, a string) or as JSON
under "other fields". Every string from the data is HTML-escaped (study names are user input),
and a Content-Security-Policy forbids scripts and any request: the page needs no network and
no server. Figures come from the files ``--plots`` wrote, when it did, else they are rendered
into a temporary folder by :func:`l2bn.analysis.presenting.plots.write_plots` (matplotlib).
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import json
import re
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from l2bn import files
from l2bn.analysis.results import AnalysisReport

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Nothing may be fetched or run: images are data URIs, the style sheet is inline.
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"

# Entries of a group's dict shown in their own places, not as fits or "other fields".
_LAID_OUT = frozenset(
    {
        "optimizer",
        "norm",
        "dataset",
        "identity",
        "distinct",
        "studies",
        "n_trials",
        "n_cells",
        "n_lambda",
        "max_seeds",
        "n_diverged",
        "first_layer",
        "optima",
        "optima_equilibrium",
        "cells",
        "warnings",
    }
)
_QUANTITY = {"k": "k  (η* ∝ λ^-k), the primary", "collapse": "k  (whole-surface collapse)"}
_NORM_QUANTITY = {
    "a": "a  (‖w_{layer}‖ ∝ η^a)",
    "b": "b  (‖w_{layer}‖ ∝ λ^-b)",
    "p": "p  (‖w_{layer}‖·λ^s ∝ (η·λ^k)^p)",
    "q": "q  (‖w_{layer}‖ memory of w₀: λ^q)",
}
_NORM_VERDICTS = ("verdict", "memory")
# Keys that name an item of a list of fits (k_by_epoch's epoch, a column test's quantity).
_TAGS = ("name", "layer", "epoch", "method", "quantity", "log_x")
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
}
_EQUILIBRIUM_RATIO = {"angle": "⟨θ²⟩/θ_eq²", "balance": "growth ÷ shrink"}

Figure = tuple[str, bytes]  # (figure name, PNG bytes)


# --- figures ------------------------------------------------------------------------------


def group_figures(report: AnalysisReport) -> list[list[Figure]]:
    """Per group (in report order): its figures as (name, PNG bytes).

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


def _assign(report: AnalysisReport, paths: Iterable[Path]) -> list[list[Figure]]:
    """Files named ``<slug>_<figure>.png`` to their groups; longest slug first, so that no
    group takes another's files by a shared prefix."""
    out: list[list[Figure]] = [[] for _ in report.groups]
    order = sorted(range(len(report.groups)), key=lambda i: -len(report.groups[i].slug))
    for path in paths:
        for i in order:
            prefix = f"{report.groups[i].slug}_"
            if path.name.startswith(prefix):
                out[i].append((path.stem[len(prefix) :], path.read_bytes()))
                break
    return out


# --- the page -----------------------------------------------------------------------------


def write_report(report: AnalysisReport, path: Path) -> Path:
    """The page for ``report`` at ``path`` (its folder created), written atomically."""
    page = render_html(report.to_dict(), group_figures(report))
    path.parent.mkdir(parents=True, exist_ok=True)
    with files.atomic_open(path, "w", encoding="utf-8") as f:
        f.write(page)
    return path


def render_html(
    data: Mapping[str, Any],
    figures: Sequence[Sequence[Figure]] = (),
    generated: _dt.datetime | None = None,
) -> str:
    """The page for a report's JSON form (``AnalysisReport.to_dict()``) and its figures
    (per group, in the order of ``data["groups"]``)."""
    when = (generated or _dt.datetime.now(_dt.UTC)).strftime("%Y-%m-%d %H:%M UTC")
    groups = [g for g in data.get("groups") or () if isinstance(g, Mapping)]
    body: list[str] = [
        "<header><h1>l2bn analyze</h1>",
        f"<p class='meta'>l2bn {_e(data.get('l2bn_version', '?'))} · generated {_e(when)} · "
        f"storage <code>{_e(data.get('storage', '?'))}</code> · {len(groups)} group(s)</p>",
        "</header>",
        _settings(data),
        _warnings(data.get("warnings"), "Warnings"),
        _summary(groups),
    ]
    for i, g in enumerate(groups):
        body.append(_group(i, g, figures[i] if i < len(figures) else ()))
    extra = {
        k: v
        for k, v in data.items()
        if k not in ("schema", "l2bn_version", "storage", "settings", "warnings", "groups")
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
        "<section><h2>Settings</h2><table class='kv'>"
        f"{rows}</table><p class='note'>The storage URL is shown with its password redacted."
        "</p></section>"
    )


def _warnings(warnings: Any, title: str) -> str:
    items = [w for w in warnings or () if w]
    if not items:
        return ""
    lis = "".join(f"<li>{_e(w)}</li>" for w in items)
    return f"<div class='warnings'><h3>{_e(title)}</h3><ul>{lis}</ul></div>"


def _summary(groups: Sequence[Mapping[str, Any]]) -> str:
    rows = []
    for i, g in enumerate(groups):
        fit = _sub(g, "k")
        rows.append(
            f"<tr><td><a href='#group-{i}'>{_e(_label(g))}</a></td>"
            f"<td>{_e(', '.join(map(str, g.get('studies') or ())))}</td>"
            f"<td class='num'>{_e(_text(g.get('n_trials')))}</td>"
            f"<td class='num'>{_e(_estimate(fit.get('estimate')))}</td>"
            f"<td class='num'>{_e(_text(fit.get('theory')))}</td>"
            f"<td>{_verdict(fit.get('verdict'))}</td>"
            f"<td>{_equilibrium_count(_sub(g, 'optima_equilibrium'))}</td></tr>"
        )
    return (
        "<section><h2>Summary: η* ∝ λ^-k</h2><table><thead><tr><th>group</th><th>studies</th>"
        "<th>trials</th><th>k [CI]</th><th>theory</th><th>verdict</th>"
        "<th>η* cells in equilibrium</th></tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table></section>"
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
    parts = [
        f"<section class='group' id='group-{i}'><h2>{_e(_label(g))}</h2>",
        f"<p class='meta'>studies: {_e(', '.join(map(str, g.get('studies') or ())) or '?')}"
        f" · {counts}"
        + (f" · first layer {_e(g['first_layer'])}" if g.get("first_layer") else "")
        + "</p>",
        _identity(g),
        _fits(g),
        _optima(g.get("optima")),
        _equilibrium_summary(g.get("optima_equilibrium")),
        _warnings(g.get("warnings"), "Warnings for this group"),
    ]
    if figures:
        parts.append("<div class='figures'>")
        for name, png in figures:
            caption = _FIGURE_CAPTIONS.get(name, name.replace("_", " "))
            uri = "data:image/png;base64," + base64.b64encode(png).decode("ascii")
            parts.append(
                f"<figure><img src='{uri}' alt='{_e(name)}' data-figure='{_e(name)}'>"
                f"<figcaption><b>{_e(name)}</b>: {_e(caption)}</figcaption></figure>"
            )
        parts.append("</div>")
    other = {
        k: v for k, v in g.items() if k not in _LAID_OUT and v is not None and not _fit_rows(k, v)
    }
    scalars = {k: v for k, v in other.items() if not isinstance(v, Mapping | list)}
    if scalars:
        shown = " · ".join(f"{_e(k)}: {_e(_text(v))}" for k, v in scalars.items())
        parts.insert(2, f"<p class='meta'>{shown}</p>")
    nested = {k: v for k, v in other.items() if k not in scalars}
    if nested:
        parts.append(f"<details><summary>Other fields</summary>{_json_block(nested)}</details>")
    parts.append(_cells(g.get("cells")))
    parts.append("</section>")
    return "\n".join(p for p in parts if p)


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


# --- fits: known and unknown entries alike ------------------------------------------------


def _sub(d: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = d.get(key)
    return value if isinstance(value, Mapping) else {}


def _is_estimate(x: Any) -> bool:
    return isinstance(x, Mapping) and "value" in x and "ci_low" in x


def _is_fit(x: Any) -> bool:
    return isinstance(x, Mapping) and _is_estimate(x.get("estimate"))


def _fit_rows(
    key: str, value: Any, label: str | None = None
) -> list[tuple[str, Mapping[str, Any]]]:
    """(quantity, fit) rows found in a group entry; a fit is a dict with an ``estimate`` and
    maybe ``theory``, ``verdict`` and scalars telling the data used."""
    label = label or _QUANTITY.get(key, key)
    if _is_fit(value):
        return [(label, value)]
    if _is_estimate(value):
        return [(label, {"estimate": value})]
    if isinstance(value, Mapping) and key != "norms":
        # One estimate among scalars (a column test: its slope, band and verdict): one row.
        ests = [k for k, v in value.items() if _is_estimate(v)]
        flat = all(not isinstance(v, Mapping | list) for k, v in value.items() if k not in ests)
        if len(ests) == 1 and flat:
            (name,) = ests
            rest = {k: v for k, v in value.items() if k != name}
            return [(f"{label}.{name}", {"estimate": value[name], **rest})]
    rows: list[tuple[str, Mapping[str, Any]]] = []
    if key == "norms" and isinstance(value, list):
        for n in value:
            if not isinstance(n, Mapping):
                continue
            layer = str(n.get("layer", "?"))
            ests = [k for k, v in n.items() if _is_estimate(v)]
            extra = {
                k: v
                for k, v in n.items()
                if k not in ests and k not in _NORM_VERDICTS and k not in ("layer", "theory")
            }
            # The layer's verdict goes with p when there is one (it is p's), else with a.
            judged = "p" if "p" in ests else "a"
            for name in ests:
                fit: dict[str, Any] = {"estimate": n[name]}
                if name == judged:
                    fit |= {"theory": n.get("theory"), "verdict": n.get("verdict")}
                elif name == "q" and "memory" in n:
                    fit |= {"theory": 0.0, "verdict": n.get("memory")}
                template = _NORM_QUANTITY.get(name, "{name}  ({layer})")
                rows.append((template.format(name=name, layer=layer), fit | extra))
        return rows
    if isinstance(value, list):
        for j, item in enumerate(value):
            if isinstance(item, Mapping):
                tag = ", ".join(
                    f"{k}={_text(item[k])}"
                    for k in _TAGS
                    if k in item and not isinstance(item[k], Mapping | list)
                ) or str(j)
                rows.extend(_fit_rows(str(j), item, f"{label} [{tag}]"))
    elif isinstance(value, Mapping):
        for k, v in value.items():
            rows.extend(_fit_rows(str(k), v, f"{label}.{k}"))
    return rows


def _fits(g: Mapping[str, Any]) -> str:
    rows = []
    for key, value in g.items():
        if key in _LAID_OUT:
            continue
        for label, fit in _fit_rows(key, value):
            est = fit["estimate"]
            method = est.get("method") if isinstance(est, Mapping) else None
            conf = est.get("confidence") if isinstance(est, Mapping) else None
            used = ", ".join(
                f"{k} {_text(v)}"
                for k, v in fit.items()
                if k not in ("estimate", "theory", "verdict") and not isinstance(v, Mapping | list)
            )
            verdict = fit.get("verdict")
            rows.append(
                f"<tr><td>{_e(label)}</td><td class='num'>{_e(_estimate(est))}</td>"
                f"<td>{_e(_text(method)) if method else ''}"
                f"{' ' + _e(f'{conf:.0%}') if isinstance(conf, int | float) else ''}</td>"
                f"<td class='num'>{_e(_text(fit.get('theory')))}</td>"
                f"<td>{_verdict(verdict) if verdict is not None else ''}</td>"
                f"<td class='used'>{_e(used)}</td></tr>"
            )
    if not rows:
        return ""
    return (
        "<table class='fits'><thead><tr><th>quantity</th><th>estimate [CI]</th><th>method</th>"
        "<th>theory</th><th>verdict</th><th>data used</th></tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table>"
    )


def _optima(optima: Any) -> str:
    items = [o for o in optima or () if isinstance(o, Mapping)]
    if not items:
        return ""
    table = _records_table(items, lambda o: "" if o.get("used", True) else "unused")
    summary = "η* per λ (grey: not used in the fit of k)"
    return f"<details open><summary>{summary}</summary>{table}</details>"


def _cells(cells: Any) -> str:
    items = [c for c in cells or () if isinstance(c, Mapping)]
    if not items:
        return ""
    table = _records_table(items, lambda c: "", table_class="small")
    return (
        f"<details><summary>All {len(items)} cells (seed-averaged (η, λ) grid points)</summary>"
        f"<div class='scroll'>{table}</div></details>"
    )


def _records_table(
    items: list[Mapping[str, Any]],
    row_class: Callable[[Mapping[str, Any]], str],
    table_class: str = "",
) -> str:
    """One row per record, one column per key any record has (first seen first)."""
    keys = list(dict.fromkeys(k for item in items for k in item))
    head = "".join(f"<th>{_e(k)}</th>" for k in keys)
    rows = []
    for item in items:
        cls = row_class(item)
        cells = "".join(_record_cell(k, item.get(k)) for k in keys)
        rows.append(f"<tr class='{cls}'>{cells}</tr>" if cls else f"<tr>{cells}</tr>")
    attr = f" class='{table_class}'" if table_class else ""
    return f"<table{attr}><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def _record_cell(key: str, value: Any) -> str:
    """One cell of a records table; an equilibrium verdict as a badge with its worst ratio."""
    if key == "equilibrium" and isinstance(value, Mapping) and "verdict" in value:
        ratio, layer = value.get("ratio"), value.get("layer")
        detail = ""
        if isinstance(ratio, int | float) and layer is not None:
            detail = f" {ratio:.3g} ({_e(layer)})"
        elif layer is not None:
            detail = f" ∞ ({_e(layer)})"  # a measured layer with a null ratio: θ_eq = 0
        seeds = value.get("n_seeds")
        if isinstance(seeds, int) and seeds > 1:
            detail += f" {_e(value.get('n_in'))}/{_e(seeds)} seeds"
        return f"<td>{_verdict(value['verdict'])}{detail}</td>"
    return f"<td class='num'>{_e(_text(value))}</td>"


# --- text ---------------------------------------------------------------------------------


def _e(x: Any) -> str:
    """Escaped for HTML text and attribute values alike."""
    return html.escape(str(x), quote=True)


def _label(g: Mapping[str, Any]) -> str:
    base = " / ".join(str(g[k]) for k in ("optimizer", "norm", "dataset") if g.get(k))
    distinct = g.get("distinct")
    if isinstance(distinct, Mapping) and distinct:
        base += " [" + ", ".join(f"{k}={_text(v)}" for k, v in distinct.items()) + "]"
    return base or "?"


def _text(x: Any) -> str:
    if x is None:
        return "–"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, float):
        return f"{x:.4g}"
    if isinstance(x, list | tuple):
        return ", ".join(_text(v) for v in x) or "none"
    if isinstance(x, Mapping):
        return "; ".join(f"{k}: {_text(v)}" for k, v in x.items())
    return str(x)


def _estimate(est: Any) -> str:
    if not isinstance(est, Mapping):
        return "–"
    value, lo, hi = est.get("value"), est.get("ci_low"), est.get("ci_high")
    if not isinstance(value, int | float):
        return "–"
    if not (isinstance(lo, int | float) and isinstance(hi, int | float)):
        return f"{value:.3g} [?]"
    return f"{value:.3g} [{lo:.3g}, {hi:.3g}]"


def _verdict(v: Any) -> str:
    if v is None:
        return ""
    css = re.sub(r"[^a-z0-9-]", "-", str(v).lower())
    return f"<span class='verdict v-{css}'>{_e(v)}</span>"


def _json_block(x: Any) -> str:
    return f"<pre>{_e(json.dumps(x, indent=2, default=str, ensure_ascii=False))}</pre>"


_STYLE = """
body{font:14px/1.45 system-ui,-apple-system,'Segoe UI',sans-serif;margin:1.5em auto;
max-width:1280px;padding:0 1em;color:#222;background:#fff}
h1{margin:0 0 .2em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:1.6em}
.meta{color:#555}.note{color:#777;font-size:12px}code{font-size:13px}
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
"""

__all__ = ["CSP", "group_figures", "render_html", "write_report"]
