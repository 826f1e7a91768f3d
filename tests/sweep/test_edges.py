"""l2bn.sweep.edges: a λ row whose best η lies on its grid's edge gains points beyond it,
once, with the row's seeds; recorded in the study before they are queued."""

from __future__ import annotations

import json
import math
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

import l2bn.sweep.runner as runner
from l2bn.errors import ConfigError
from l2bn.sweep.edges import EXTENSIONS_ATTR, extension_points, plan
from l2bn.sweep.runner import run_sweep
from l2bn.sweep.spec import Point, load_sweep

from . import fakes
from .helpers import tiny_sweep
from .test_runner import spec_for


def _sweep(tmp_path: Path, extend: int = 2, seeds: str = "[0, 1]"):  # type: ignore[no-untyped-def]
    path = tiny_sweep(tmp_path, n=3, extend_edges=str(extend), seeds=seeds)
    (sweep,) = load_sweep(path).select(None)
    return sweep


def test_a_row_best_on_an_edge_gains_points_beyond_it_with_its_own_step(tmp_path: Path) -> None:
    sweep = _sweep(tmp_path)
    grid = sorted({p.lr for p in sweep.points()})  # 0.01, 0.1, 1
    low, mid, high = sweep.weight_decay.values
    best = {low: grid[-1], mid: grid[1], high: grid[0]}
    values = {p: abs(math.log(p.lr / best[p.weight_decay])) + 0.01 * p.seed for p in sweep.points()}
    new = plan(sweep, values, {})
    assert set(new) == {repr(low), repr(high)}  # the middle row's best is inside
    assert new[repr(low)] == {"side": "high", "lr": [10.0, 100.0]}  # the step continued
    assert new[repr(high)] == {"side": "low", "lr": [0.001, 0.0001]}
    points = extension_points(sweep, new)
    assert len(points) == 2 * 2 * 2 and {p.seed for p in points} == {0, 1}
    # Once: a recorded row is not extended again; an unfinished row waits.
    assert plan(sweep, values, new) == {}
    partial = {p: v for p, v in values.items() if p != Point(grid[-1], low, 1)}
    assert repr(low) not in plan(sweep, partial, {})
    # A diverged run on the edge is not a best η; a sweep without extend_edges never extends.
    diverged = {p: math.inf if p.weight_decay == high and p.lr == grid[0] else v
                for p, v in values.items()}  # fmt: skip
    assert repr(high) not in plan(sweep, diverged, {})
    assert plan(_sweep(tmp_path, extend=0), values, {}) == {}


@pytest.mark.parametrize("bad", ["-1", "1.5", "true", '"two"'])
def test_a_bad_extend_edges_is_one_clear_error(tmp_path: Path, bad: str) -> None:
    path = tiny_sweep(tmp_path, extend_edges=bad)
    with pytest.raises(ConfigError, match="extend_edges must be a whole number ≥ 0"):
        load_sweep(path)


def test_a_sweep_extends_its_edge_row_once_and_a_resume_trains_nothing_more(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Real training with a planted value: λ = 1e-4 is best at its lowest η, the others inside.
    monkeypatch.setattr(runner, "_worker_main", fakes.planted_engine)
    path = tiny_sweep(tmp_path, n=3, extend_edges="1", seeds="[0, 1]")
    url = f"sqlite:///{tmp_path / 'x.db'}"
    first = run_sweep(spec_for(path, url, fuse=1, torch_threads=1), workers=1)
    assert first.exit_codes == [0] and first.status.complete, first.errors
    study = optuna.load_study(study_name="tiny/sgd", storage=url)
    done = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(done) == 3 * 3 * 2 + 2  # the grid, then η = 0.001 at λ = 1e-4 with both seeds
    recorded = json.loads(study.user_attrs[EXTENSIONS_ATTR])
    assert recorded == {repr(1e-4): {"side": "low", "lr": [0.001]}}
    extra = [t for t in done if t.params["lr"] == 0.001]
    assert {(t.params["weight_decay"], t.params["seed"]) for t in extra} == {(1e-4, 0), (1e-4, 1)}
    assert first.status.total == 20  # the status counts the extension's points
    # Its value is even lower, but an extension never extends again; a resume trains nothing.
    again = run_sweep(spec_for(path, url, fuse=1, torch_threads=1), workers=1)
    assert again.status.complete and again.exit_codes in ([], [0])
    assert len(study.get_trials(states=(TrialState.COMPLETE,))) == 20
    assert len(study.get_trials()) == 20  # nothing queued twice, nothing failed
