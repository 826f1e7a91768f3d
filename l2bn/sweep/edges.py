"""Edge extension: a λ row whose best η lies on its grid's edge gains points beyond it, once.

A sweep file's ``extend_edges = N`` (0, the default: never) asks for it. When every seed of
every η of a λ row has a COMPLETE trial and the row's best η (the lowest mean value over its
seeds; a diverged run counts +∞) is the row's lowest or highest η, the row gains N η beyond
that edge, continuing its own η step on that side (geometric), each with the row's seeds.

Once per row: the extension is recorded in the study's user attr ``edge_extensions`` (JSON,
``{"<λ>": {"side": "low" | "high", "lr": [η, …]}}``) under the enqueue lock, before its points
are queued; points of an extension never extend again, and a resumed sweep queues recorded
points that have no live trial (:func:`l2bn.sweep.study.prepare_study`). An export of the
study (``l2bn analyze --csv``) holds the extension's trials like any other.
"""

from __future__ import annotations

import json
import math
from typing import Any

import optuna
from optuna.trial import TrialState

from l2bn.sweep.spec import OptimizerSweep, Point, canonical
from l2bn.sweep.storage import enqueue_lock

EXTENSIONS_ATTR = "edge_extensions"


def recorded(study: optuna.Study) -> dict[str, dict[str, Any]]:
    """The study's recorded extensions, by λ (its repr)."""
    return dict(json.loads(study.user_attrs.get(EXTENSIONS_ATTR, "{}")))


def extension_points(sweep: OptimizerSweep, extensions: dict[str, dict[str, Any]]) -> list[Point]:
    """The points of recorded ``extensions``: each new η of a row with the row's seeds."""
    out: list[Point] = []
    for key, ext in sorted(extensions.items()):
        wd = float(key)
        out.extend(Point(float(lr), wd, s) for lr in ext["lr"] for s in sweep.seeds_for(wd))
    return out


def plan(
    sweep: OptimizerSweep, values: dict[Point, float], extensions: dict[str, dict[str, Any]]
) -> dict[str, dict[str, Any]]:
    """The rows to extend now, from ``values`` (each finished point's value; +∞ diverged):
    rows complete, not yet extended, whose best η lies on an edge."""
    if sweep.extend_edges <= 0:
        return {}
    out: dict[str, dict[str, Any]] = {}
    for wd in sweep.weight_decay.values:
        key = repr(wd)
        grid = sorted({sweep.lr_for(base, wd) for base in sweep.lr.values})
        seeds = sweep.seeds_for(wd)
        if key in extensions or len(grid) < 2:
            continue
        found = [[values.get(Point(lr, wd, s)) for s in seeds] for lr in grid]
        if any(v is None for row in found for v in row):
            continue  # the row is not finished
        cells = [[float(v) for v in row if v is not None] for row in found]
        means = [math.fsum(row) / len(row) if all(math.isfinite(v) for v in row) else math.inf
                 for row in cells]  # fmt: skip
        best = min(range(len(grid)), key=lambda i: means[i])
        if not math.isfinite(means[best]) or 0 < best < len(grid) - 1:
            continue
        n = sweep.extend_edges
        if best == 0:
            step = grid[0] / grid[1]
            new = [canonical(grid[0] * step**i) for i in range(1, n + 1)]
            out[key] = {"side": "low", "lr": new}
        else:
            step = grid[-1] / grid[-2]
            new = [canonical(grid[-1] * step**i) for i in range(1, n + 1)]
            out[key] = {"side": "high", "lr": new}
    return out


def extend(study: optuna.Study, sweep: OptimizerSweep) -> int:
    """Record and queue the extensions the finished rows ask for (none when the sweep does not
    extend); returns how many points were queued."""
    if sweep.extend_edges <= 0:
        return 0
    from l2bn.sweep.study import LIVE, point_of, rdb_of  # study imports this module

    with enqueue_lock(rdb_of(study), study.study_name):
        extensions = recorded(study)
        values: dict[Point, float] = {}
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            p = point_of(t)
            if p is not None:
                diverged = bool(t.user_attrs.get("diverged")) or t.value is None
                values[p] = math.inf if diverged or t.value is None else float(t.value)
        new = plan(sweep, values, extensions)
        if new:
            extensions.update(new)
            study.set_user_attr(EXTENSIONS_ATTR, json.dumps(extensions, sort_keys=True))
        live = {point_of(t) for t in study.get_trials(deepcopy=False, states=LIVE)}
        missing = [p for p in extension_points(sweep, extensions) if p not in live]
        for p in missing:
            study.enqueue_trial(p.params())
    return len(missing)


__all__ = ["EXTENSIONS_ATTR", "extend", "extension_points", "plan", "recorded"]
