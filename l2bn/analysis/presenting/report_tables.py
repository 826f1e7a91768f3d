"""The tables and text of the ``--report`` page (:mod:`l2bn.analysis.presenting.report`): fits
found in a group's JSON, known and unknown entries alike; η* per λ; cells; escaping."""

from __future__ import annotations

import html
import json
import re
from collections.abc import Callable, Mapping
from math import expm1
from typing import Any

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
        "k_by_epoch",  # its figure says it; 25 rows of a table would not
        "primary",
        "noise_source",
        "independent_rows",
        "metric",
        "noise_sd",
    }
)
_QUANTITY = {
    "k": "k (η* ∝ λ^-k), the primary: the whole-surface collapse",
    "collapse": "k  (whole-surface collapse)",
    "k_estimates.joint": "k, cross-check: joint parabola near each η*",
    "k_estimates.per_lambda": "k, cross-check: η* per λ, then a regression",
}
_NORM_QUANTITY = {
    "a": "a  (‖w_{layer}‖ ∝ η^a)",
    "b": "b  (‖w_{layer}‖ ∝ λ^-b)",
    "p": "p  (‖w_{layer}‖·λ^s ∝ (η·λ^k)^p)",
    "q": "q  (‖w_{layer}‖ memory of w₀: λ^q)",
}
_NORM_VERDICTS = ("verdict", "memory")
# Keys that name an item of a list of fits (k_by_epoch's epoch, a column test's quantity).
_TAGS = ("name", "layer", "epoch", "method", "quantity", "log_x")
_EQUILIBRIUM_RATIO = {"angle": "⟨θ²⟩/θ_eq²", "balance": "growth ÷ shrink"}

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
            name = f"{label}.{k}"
            rows.extend(_fit_rows(str(k), v, _QUANTITY.get(name, name)))
    return rows


def _fits(g: Mapping[str, Any]) -> str:
    rows, empty = [], []
    for key, value in g.items():
        if key in _LAID_OUT or key == "collapse":  # the primary is "k"; its rows have a table
            continue
        if key == "k_estimates" and isinstance(value, Mapping):
            value = {k: v for k, v in value.items() if k != "collapse"}  # = "k", the primary
        for label, fit in _fit_rows(key, value):
            est = fit["estimate"]
            if not (isinstance(est, Mapping) and isinstance(est.get("value"), int | float)):
                empty.append(label)
                continue
            method = est.get("method")
            conf = est.get("confidence")
            used = ", ".join(
                f"{k} {_text(v)}"
                for k, v in fit.items()
                if k not in ("estimate", "theory", "verdict") and not isinstance(v, Mapping | list)
            )
            verdict = fit.get("verdict")
            rows.append(
                f"<tr><td>{_e(label)}</td><td class='num'>{_estimate_html(est)}</td>"
                f"<td>{_e(_text(method)) if method else ''}"
                f"{' ' + _e(f'{conf:.0%}') if isinstance(conf, int | float) else ''}</td>"
                f"<td class='num'>{_e(_text(fit.get('theory')))}</td>"
                f"<td>{_verdict(verdict) if verdict is not None else ''}</td>"
                f"<td class='used'>{_e(used)}</td></tr>"
            )
    if not rows and not empty:
        return ""
    note = (
        f"<p class='note'>Not fitted (no estimate: too few cells in equilibrium, or too few λ "
        f"rows; the warnings say which): {_e(', '.join(empty))}.</p>"
        if empty
        else ""
    )
    return (
        "<div class='scroll'><table class='fits'><thead><tr><th>quantity</th>"
        "<th>estimate [CI]</th><th>method</th><th>theory</th><th>verdict</th><th>data used</th>"
        f"</tr></thead><tbody>{''.join(rows)}</tbody></table></div>{note}"
    )


_OPTIMA_COLUMNS = (
    ("weight_decay", "λ"),
    ("lr_grid", "η* on the grid"),
    ("lr_opt", "η* refined"),
    ("val_error", "metric there"),
    ("used", "in the primary"),
    ("note", "note"),
    ("equilibrium", "its cell's equilibrium"),
)


def _optima(optima: Any) -> str:
    items = [o for o in optima or () if isinstance(o, Mapping)]
    if not items:
        return ""
    head = "".join(f"<th>{_e(name)}</th>" for _, name in _OPTIMA_COLUMNS)
    body = []
    for o in items:
        cells = []
        for key, _ in _OPTIMA_COLUMNS:
            if key == "lr_opt":
                lo, hi = o.get("lr_ci_low"), o.get("lr_ci_high")
                ci = (
                    f" [{lo:.3g}, {hi:.3g}]"
                    if isinstance(lo, int | float) and isinstance(hi, int | float)
                    else ""
                )
                cells.append(f"<td class='num'>{_e(_text(o.get(key)))}{_e(ci)}</td>")
            else:
                cells.append(_record_cell(key, o.get(key)))
        cls = "" if o.get("used", True) else " class='unused'"
        body.append(f"<tr{cls}>{''.join(cells)}</tr>")
    return (
        "<h3>η* per λ, and its cell's equilibrium</h3><div class='scroll'><table>"
        f"<thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table></div>"
        "<p class='note'>Equilibrium: the verdict (stationary norms), then the layer farthest "
        "from it: ‖w‖² still to go to its equilibrium (or: no pull toward it was measured) "
        "and growth ÷ shrink; then, beside it, the θ test's worst ratio.</p>"
    )


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
    """One cell of a records table; an equilibrium verdict as a badge with its numbers."""
    if key == "equilibrium" and isinstance(value, Mapping) and "verdict" in value:
        detail = ""
        moving = value.get("moving_layer")
        memory = _sub(value, "memory").get(moving) if moving else None
        balance = _sub(value, "balance").get(moving) if moving else None
        if moving is not None and isinstance(memory, int | float):
            shown = f"{balance:.3g}" if isinstance(balance, int | float) else "–"
            detail += f" {_e(moving)}: ‖w‖² {expm1(memory):+.0%}, growth ÷ shrink {shown}"
        elif moving is not None:
            # JSON has no ∞: an unpulled layer's memory is null and its sign is lost; the
            # balance (also null) says no more. The words, without the direction.
            detail += f" {_e(moving)}: no pull toward equilibrium measured"
        seeds = value.get("n_seeds")
        if isinstance(seeds, int) and seeds > 1:
            detail += f" · {_e(value.get('n_in'))}/{_e(seeds)} seeds in"
        ratio, layer = value.get("ratio"), value.get("layer")
        what = _EQUILIBRIUM_RATIO.get(str(value.get("test")), "θ test")
        if isinstance(ratio, int | float) and layer is not None:
            detail += f" · {_e(what)} {ratio:.3g} ({_e(layer)})"
            predicted = _sub(value, "predicted").get(layer)
            if isinstance(predicted, int | float):  # what correlated gradients account for
                detail += f", {predicted:.3g} by update correlation"
        elif layer is not None:
            detail += f" · {_e(what)} ∞ ({_e(layer)}: θ_eq = 0 or nothing shrank)"
        return f"<td>{_verdict(value['verdict'])}<span class='detail'>{detail}</span></td>"
    if key == "used" and isinstance(value, bool):
        return f"<td>{'yes' if value else 'left out'}</td>"
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


def _estimate_html(est: Any) -> str:
    """An estimate, escaped; a value without an interval says why there is none."""
    text = _estimate(est)
    if text.endswith(" [?]"):
        return (
            f"{_e(text[:-4])} <span class='note' title='one seed: no clusters to resample, or "
            "an interval that ran into the bounds of k'>(no interval)</span>"
        )
    return _e(text)


def _verdict(v: Any) -> str:
    if v is None:
        return ""
    css = re.sub(r"[^a-z0-9-]", "-", str(v).lower())
    return f"<span class='verdict v-{css}'>{_e(v)}</span>"


def _json_block(x: Any) -> str:
    return f"<pre>{_e(json.dumps(x, indent=2, default=str, ensure_ascii=False))}</pre>"


__all__ = [
    "_EQUILIBRIUM_RATIO",
    "_LAID_OUT",
    "_cells",
    "_e",
    "_estimate",
    "_estimate_html",
    "_fit_rows",
    "_fits",
    "_is_estimate",
    "_is_fit",
    "_json_block",
    "_label",
    "_optima",
    "_record_cell",
    "_records_table",
    "_sub",
    "_text",
    "_verdict",
]
