"""l2bn.sweep.study: the study's layout, its stored identity, and its queue."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from l2bn import __version__
from l2bn.errors import ConfigError
from l2bn.sweep.spec import Point, parse_sweep
from l2bn.sweep.storage import open_storage
from l2bn.sweep.study import MAX_RETRY, RequeueCallback, enqueue_missing, point_of, prepare_study

from .helpers import ATTRS, TINY, assert_exactly_once, run_cli, tiny_sweep

SMALL = {
    "name": "s",
    "dataset": "synthetic",
    "epochs": 1,
    "width": 4,
    "lr": [0.1, 1.0],
    "weight_decay": [1e-3],
    "optimizers": {"sgd": {}},
}


def test_enqueue_skips_points_with_live_trials_but_requeues_failed_ones(tmp_path: Path) -> None:
    storage = open_storage(f"sqlite:///{tmp_path / 'x.db'}")
    study = optuna.create_study(storage=storage, study_name="s")
    points = [Point(0.1, 1e-3, 0), Point(0.2, 1e-3, 0)]
    assert enqueue_missing(study, points) == 2
    assert enqueue_missing(study, points) == 0
    trial = study.ask()  # claims the first point
    study.tell(trial, state=TrialState.FAIL)
    # Optuna's skip_if_exists would count the FAIL trial as existing; we queue it again.
    assert enqueue_missing(study, points) == 1
    waiting = study.get_trials(states=(TrialState.WAITING,))
    assert sorted(p for t in waiting if (p := point_of(t)) is not None) == points


def test_requeue_retries_a_point_at_most_max_retry_times_and_never_twice(tmp_path: Path) -> None:
    storage = open_storage(f"sqlite:///{tmp_path / 'x.db'}")
    study = optuna.create_study(storage=storage, study_name="s")
    enqueue_missing(study, [Point(0.1, 1e-3, 0)])
    requeue = RequeueCallback()
    for attempt in range(MAX_RETRY + 1):
        trial = study.ask()
        assert point_of(study.trials[trial.number]) == Point(0.1, 1e-3, 0), attempt
        study.tell(trial, state=TrialState.FAIL)
        failed = study.trials[trial.number]
        requeue(study, failed)
        requeue(study, failed)  # a second call (another worker's stale check): no second copy
        waiting = study.get_trials(states=(TrialState.WAITING,))
        assert len(waiting) == (1 if attempt < MAX_RETRY else 0), attempt
    assert len(study.get_trials(states=(TrialState.FAIL,))) == MAX_RETRY + 1
    # A resume queues it again: retries spent are no reason to leave a point out for good.
    assert enqueue_missing(study, [Point(0.1, 1e-3, 0)]) == 1


def test_a_second_node_with_its_data_elsewhere_joins_the_same_study(tmp_path: Path) -> None:
    # Defect 6: the data folder (and the device) were part of the study's stored identity.
    storage = open_storage(f"sqlite:///{tmp_path / 'x.db'}")
    (first,) = parse_sweep({**SMALL, "data_dir": "/node1/data"}).select(None)
    (second,) = parse_sweep({**SMALL, "data_dir": "/node2/data", "device": "cpu"}).select(None)
    study = prepare_study(storage, first)
    stored = study.user_attrs["config"]
    again = prepare_study(storage, second)
    assert again.study_name == study.study_name
    assert again.user_attrs["config"] == stored and "config_history" not in again.user_attrs
    assert len(again.trials) == 2  # the same queue, not a second copy of it
    assert "/node1" not in stored and "data_dir" not in json.loads(stored)["train"]
    # Anything else that differs is another experiment: still refused.
    (other,) = parse_sweep({**SMALL, "data_dir": "/node2/data", "width": 8}).select(None)
    with pytest.raises(ConfigError, match="its training settings differ"):
        prepare_study(storage, other)


def test_a_study_stored_with_a_data_folder_by_an_older_l2bn_is_joined(tmp_path: Path) -> None:
    storage = open_storage(f"sqlite:///{tmp_path / 'x.db'}")
    (sweep,) = parse_sweep(SMALL).select(None)
    study = prepare_study(storage, sweep)
    old = json.loads(study.user_attrs["config"])
    old["train"] |= {"data_dir": "/somewhere/else", "device": "cuda"}
    study.set_user_attr("config", json.dumps(old, sort_keys=True))
    prepare_study(storage, sweep)  # not refused
    old["train"]["epochs"] = 2
    study.set_user_attr("config", json.dumps(old, sort_keys=True))
    with pytest.raises(ConfigError, match="its training settings differ"):
        prepare_study(storage, sweep)


def test_a_larger_grid_extends_the_study_and_runs_only_the_new_points(tmp_path: Path) -> None:
    # What `analyze` asks for when an η* sits on the grid's edge: the same file with more
    # points, on the same study. Done trials stay as they are; only the new points run.
    url = f"sqlite:///{tmp_path / 'x.db'}"
    small = tiny_sweep(tmp_path, n=2)
    assert run_cli("sweep", str(small), "--storage", url).returncode == 0
    before = {
        t.number: (point_of(t), t.value)
        for t in optuna.load_study(study_name="tiny/sgd", storage=url).get_trials(
            states=(TrialState.COMPLETE,)
        )
    }
    old_config = optuna.load_study(study_name="tiny/sgd", storage=url).user_attrs["config"]

    large = tmp_path / "large.toml"  # num 3: {0.01, 0.1, 1.0} ⊇ {0.01, 1.0} on both axes
    large.write_text(TINY.format(n=3, epochs=1))
    proc = run_cli("sweep", str(large), "--storage", url)
    assert proc.returncode == 0, proc.stderr
    study = optuna.load_study(study_name="tiny/sgd", storage=url)
    assert_exactly_once(study, 9)
    for t in study.get_trials(states=(TrialState.COMPLETE,)):
        if t.number in before:
            assert (point_of(t), t.value) == before[t.number]
    assert len(study.trials) == 9  # 4 kept + 5 new, nothing rerun
    assert json.loads(study.user_attrs["config"])["lr"]["num"] == 3
    assert json.loads(study.user_attrs["config_history"]) == [old_config]

    # Going back to the smaller grid would orphan 5 points; other training settings would
    # mix two experiments: both refused, one line, exit 2, nothing run.
    proc = run_cli("sweep", str(small), "--storage", url)
    assert proc.returncode == 2 and "5 of its points are not in this grid" in proc.stderr
    longer = tmp_path / "longer.toml"
    longer.write_text(TINY.format(n=3, epochs=2))
    proc = run_cli("sweep", str(longer), "--storage", url)
    assert proc.returncode == 2 and "its training settings differ" in proc.stderr
    assert len(optuna.load_study(study_name="tiny/sgd", storage=url).trials) == 9


def test_a_study_stored_before_a_new_training_field_still_resumes(tmp_path: Path) -> None:
    # Studies made by an older l2bn lack fields added since (e.g. `affine`); they ran with
    # the field's default, so the same sweep file resumes them instead of being refused.
    url = f"sqlite:///{tmp_path / 'x.db'}"
    path = tiny_sweep(tmp_path, n=2)
    assert run_cli("sweep", str(path), "--storage", url).returncode == 0
    study = optuna.load_study(study_name="tiny/sgd", storage=url)
    old = json.loads(study.user_attrs["config"])
    del old["train"]["affine"]
    study.set_user_attr("config", json.dumps(old, sort_keys=True))
    proc = run_cli("sweep", str(path), "--storage", url)
    assert proc.returncode == 0, proc.stderr
    assert len(optuna.load_study(study_name="tiny/sgd", storage=url).trials) == 4
    # A non-default value is a different experiment.
    path.write_text(path.read_text().replace("augment = false", "augment = false\naffine = false"))
    proc = run_cli("sweep", str(path), "--storage", url)
    assert proc.returncode == 2 and "its training settings differ" in proc.stderr


@pytest.mark.slow
@pytest.mark.parametrize("fuse", [1, 4])
def test_study_layout_readable_with_plain_optuna(tmp_path: Path, fuse: int) -> None:
    path = tiny_sweep(tmp_path, n=2, epochs=2)
    url = f"sqlite:///{tmp_path / 'x.db'}"
    proc = run_cli(
        "sweep", str(path), "--storage", url, "--study", "mine", "--optimizer", "sgd",
        "--fuse", str(fuse),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    study = optuna.load_study(study_name="mine", storage=url)
    assert study.direction == optuna.study.StudyDirection.MINIMIZE
    attrs = study.user_attrs
    assert attrs["optimizer"] == "sgd" and attrs["norm"] == "bn" and attrs["dataset"] == "synthetic"
    assert attrs["epochs"] == 2 and attrs["width"] == 4 and attrs["l2bn_version"] == __version__
    config = json.loads(attrs["config"])
    assert config["lr"] == {"min": 0.01, "max": 1.0, "num": 2} and config["train"]["epochs"] == 2
    trials = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(trials) == 4 and len(study.trials) == 4  # no empty slot, no retry
    for t in trials:
        assert set(t.params) == {"lr", "weight_decay", "seed"}
        assert isinstance(t.distributions["lr"], optuna.distributions.FloatDistribution)
        assert t.distributions["lr"].log and t.distributions["weight_decay"].log
        assert isinstance(t.distributions["seed"], optuna.distributions.IntDistribution)
        assert set(t.intermediate_values) == {1, 2}
        assert t.value == t.intermediate_values[2] == t.user_attrs["history"][-1]["val_error"]
        assert set(t.user_attrs) == ATTRS
        assert (t.user_attrs["device"], t.user_attrs["precision"]) == ("cpu", "fp32")
        assert isinstance(t.user_attrs["diverged"], bool)
        assert [e["epoch"] for e in t.user_attrs["history"]] == [1, 2]
        assert "layers" in t.user_attrs["history"][0]


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"objective": "val_loss"}, "objective"),
        ({"init_scale_exponent": 0.5}, "init_scale_exponent"),
        ({"reference_weight_decay": 1e-3, "lr_scale_exponent": 1.0}, "lr_scale_exponent"),
        ({"schedule": "constant"}, "train.schedule"),
        ({"init_scale": 2.0}, "train.init_scale"),
    ],
)
def test_changing_the_objective_or_a_tie_of_a_study_is_refused(
    tmp_path: Path, change: dict[str, object], named: str
) -> None:
    storage = open_storage(f"sqlite:///{tmp_path / 'x.db'}")
    (first,) = parse_sweep(SMALL).select(None)
    study = prepare_study(storage, first)
    assert json.loads(study.user_attrs["config"])["objective"] == "val_error"
    (other,) = parse_sweep({**SMALL, **change}).select(None)
    with pytest.raises(ConfigError, match=f"its training settings differ: .*{named}"):
        prepare_study(storage, other)
    # The other way round too: a study made for val_loss is not resumed for val_error.
    (loss,) = parse_sweep({**SMALL, "objective": "val_loss"}).select(None)
    again = prepare_study(storage, loss, "by-loss")
    assert json.loads(again.user_attrs["config"])["objective"] == "val_loss"
    with pytest.raises(ConfigError, match="its training settings differ: objective"):
        prepare_study(storage, first, "by-loss")


def test_a_study_stored_before_the_objective_and_the_ties_existed_still_resumes(
    tmp_path: Path,
) -> None:
    storage = open_storage(f"sqlite:///{tmp_path / 'x.db'}")
    (sweep,) = parse_sweep(SMALL).select(None)
    study = prepare_study(storage, sweep)
    old = json.loads(study.user_attrs["config"])
    for key in ("objective", "init_scale_exponent", "reference_weight_decay"):
        del old[key]
    for key in ("schedule", "decay_fraction", "init_scale"):
        del old["train"][key]
    study.set_user_attr("config", json.dumps(old, sort_keys=True))
    again = prepare_study(storage, sweep)  # not refused: it ran with every default
    assert "config_history" not in again.user_attrs and len(again.trials) == 2
    (loss,) = parse_sweep({**SMALL, "objective": "val_loss"}).select(None)
    with pytest.raises(ConfigError, match="its training settings differ: objective"):
        prepare_study(storage, loss)
