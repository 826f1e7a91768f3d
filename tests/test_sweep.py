"""l2bn sweep: the definition, the CLI's bad-input path, and whole sweeps on real storages."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState
from typer.testing import CliRunner

from l2bn import __version__
from l2bn.cli import app
from l2bn.errors import ConfigError
from l2bn.sweep.spec import load_sweep, parse_sweep
from l2bn.sweep.study import point_of

REPO = Path(__file__).resolve().parent.parent
TINY = """
name = "tiny"
dataset = "synthetic"
epochs = {epochs}
width = 4
batch_size = 128
precision = "fp32"
device = "cpu"
augment = false
lr = {{ min = 0.01, max = 1.0, num = {n} }}
weight_decay = {{ min = 1e-4, max = 1e-2, num = {n} }}
seeds = [0]

[optimizers.sgd]
"""


def tiny_sweep(tmp_path: Path, n: int = 2, epochs: int = 1) -> Path:
    path = tmp_path / "tiny.toml"
    path.write_text(TINY.format(n=n, epochs=epochs))
    return path


def run_cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "l2bn", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
    )


def assert_exactly_once(study: optuna.Study, n_points: int) -> None:
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    points = Counter(point_of(t) for t in complete)
    assert len(points) == n_points
    assert set(points.values()) == {1}, points
    assert not [t for t in study.trials if t.state == TrialState.WAITING]
    assert not [t for t in study.trials if t.state == TrialState.RUNNING]


# --- the definition ------------------------------------------------------------------------


def test_shipped_sweeps_parse() -> None:
    paper = load_sweep(REPO / "sweeps" / "paper.toml")
    assert {o.value for o in paper.optimizers} == {"sgd", "nesterov", "adam"}
    for s in paper.optimizers.values():
        assert len(s.points()) == 49 and s.base_config().epochs == 100
    cpu = load_sweep(REPO / "sweeps" / "cpu.toml")
    nesterov = cpu.select(["nesterov"])[0]
    assert nesterov.base_config().batch_size == 32 and nesterov.base_config().head.value == "bn"
    # η grid in η·λ coordinates: at larger λ the η values are proportionally lower.
    by_wd: dict[float, list[float]] = {}
    for p in nesterov.points():
        by_wd.setdefault(p.weight_decay, []).append(p.lr)
    assert min(by_wd[0.16]) == pytest.approx(min(by_wd[0.01]) / 16)
    assert len(load_sweep(REPO / "sweeps" / "smoke.toml").select(None)[0].points()) == 9
    # Run 2 of REPRODUCTION.md: its comment promises 84 runs, 48 of them in equilibrium
    # (c·η·λ·T ≥ 5 with c = 10 for momentum and T = 50 epochs × 145 steps).
    (long,) = load_sweep(REPO / "sweeps" / "cpu-long.toml").select(None)
    points = long.points()
    assert len(points) == 84 and long.base_config().epochs == 100
    assert sum(10 * p.lr * p.weight_decay * 50 * 145 >= 5 for p in points) == 48
    # Run 4: adam in run 2's design; by the plain η·λ·T ≥ 5 only the top column at λ ≥ 0.64.
    (adam,) = load_sweep(REPO / "sweeps" / "cpu-adam.toml").select(None)
    points = adam.points()
    assert len(points) == 60 and adam.base_config().epochs == 100
    assert adam.weight_decay.values == long.weight_decay.values
    assert sum(p.lr * p.weight_decay * 50 * 145 >= 5 for p in points) == 2 * 2
    # Run 6: run 4 with γ/β frozen, on run 4's middle 3 columns: the very same (η, λ) points,
    # so scripts/optima_shift.py compares the two runs point for point.
    (frozen,) = load_sweep(REPO / "sweeps" / "cpu-adam-noaffine.toml").select(None)
    assert not frozen.base_config().affine and adam.base_config().affine
    assert len(frozen.points()) == 48 and set(frozen.points()) < set(points)
    # AdamW's design: its comment promises 3 of 5 columns in equilibrium (c = 2, AdamW's clock).
    (adamw,) = load_sweep(REPO / "sweeps" / "cpu-adamw.toml").select(None)
    points = adamw.points()
    assert len(points) == 40 and adamw.base_config().optimizer.value == "adamw"
    assert sum(2 * p.lr * p.weight_decay * 50 * 145 >= 5 for p in points) == 3 * 4 * 2


def test_grid_values_and_overrides(tmp_path: Path) -> None:
    sweep = parse_sweep(
        {
            "name": "s",
            "lr": {"min": 1e-3, "max": 1.0, "num": 4},
            "weight_decay": [1e-3, 1e-2],
            "seeds": 2,
            "epochs": 5,
            "optimizers": {"sgd": {}, "adam": {"lr": [1e-4], "epochs": 7}},
        }
    )
    sgd, adam = sweep.select(["sgd", "adam"])
    assert [p.lr for p in sgd.points()[:8:2]] == [0.001, 0.01, 0.1, 1.0]
    assert len(sgd.points()) == 4 * 2 * 2
    assert adam.base_config().epochs == 7 and len(adam.points()) == 4
    assert sgd.study_name == "s/sgd"
    with pytest.raises(ConfigError, match="no optimizer 'adamw'"):
        sweep.select(["adamw"])


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("name = [", "not valid TOML"),
        ("bogus = 1\n[optimizers.sgd]\nlr=[1.0]\nweight_decay=[1e-3]", "unknown key 'bogus'"),
        (
            "[optimizers.sgd]\nlr=[1.0]\nweight_decay=[1e-3]\nlr_drop=1",
            r"\[optimizers.sgd\].*lr_drop",
        ),
        (
            "[optimizers.sgd]\nlr={min=1, max=0.1, num=3}\nweight_decay=[1e-3]",
            "min 1 must be < max",
        ),
        ("[optimizers.sgd]\nlr={min=0.1, max=1, num=1}\nweight_decay=[1e-3]", "num must be"),
        ("[optimizers.sgd]\nlr=[1.0]\nweight_decay=[0.0]", "numbers > 0"),
        ("[optimizers.sgd]\nlr=[1.0]\nweight_decay=[1e-3]\nseed=3", "set per grid point"),
        ("[optimizers.sgdd]\nlr=[1.0]\nweight_decay=[1e-3]", "optimizer 'sgdd'"),
        ("[optimizers.sgd]\nlr=[1.0]\nweight_decay=[1e-3]\nepochs=0", "epochs must be"),
        ("lr=[1.0]\nweight_decay=[1e-3]", "no optimizers"),
    ],
)
def test_bad_sweep_files_name_the_problem_and_the_file(
    tmp_path: Path, text: str, match: str
) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=match) as info:
        load_sweep(path)
    assert str(path) in str(info.value)


# --- the CLI's bad-input path: one line, exit 2, nothing written -----------------------------


@pytest.mark.parametrize(
    ("sweep_text", "storage"),
    [
        ("name = [", "sqlite:///{db}"),
        ("[optimizers.sgd]\nlr={min=1, max=0.1, num=3}\nweight_decay=[1e-3]", "sqlite:///{db}"),
        ("[optimizers.sgd]\nlr=[1.0]\nweight_decay=[1e-3]\nlrr=2", "sqlite:///{db}"),
        (TINY.format(n=2, epochs=1), "not a url"),
        (TINY.format(n=2, epochs=1), "nosuchdb://x/y"),
        (TINY.format(n=2, epochs=1), "sqlite:///{tmp}/no/such/folder/x.db"),
        (TINY.format(n=2, epochs=1), "postgresql+psycopg://u:secret@127.0.0.1:1/nodb"),
    ],
)
def test_cli_bad_input_is_one_line_exit_2(tmp_path: Path, sweep_text: str, storage: str) -> None:
    path = tmp_path / "s.toml"
    path.write_text(sweep_text)
    db = tmp_path / "out.db"
    url = storage.format(db=db, tmp=tmp_path)
    result = CliRunner().invoke(app, ["sweep", str(path), "--storage", url])
    # CliRunner bypasses main(); the L2bnError reaching it is what main() turns into exit 2.
    assert isinstance(result.exception, ConfigError | __import__("l2bn").errors.StorageError)
    assert not db.exists()
    proc = run_cli("sweep", str(path), "--storage", url)
    assert proc.returncode == 2, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "secret" not in proc.stderr
    assert not db.exists()


# --- whole sweeps ------------------------------------------------------------------------------


@pytest.mark.slow
def test_four_workers_sqlite_exactly_once_then_resume_runs_nothing(tmp_path: Path) -> None:
    path = tiny_sweep(tmp_path, n=4)
    url = f"sqlite:///{tmp_path / 'x.db'}"
    proc = run_cli("sweep", str(path), "--storage", url, "--workers", "4")
    assert proc.returncode == 0, proc.stderr
    study = optuna.load_study(study_name="tiny/sgd", storage=url)
    assert_exactly_once(study, 16)
    assert not [t for t in study.trials if t.state == TrialState.FAIL]
    n_trials = len(study.trials)

    # Resume of a finished sweep: no new trial, and it says the grid is complete.
    proc = run_cli("sweep", str(path), "--storage", url, "--workers", "2")
    assert proc.returncode == 0, proc.stderr
    assert len(optuna.load_study(study_name="tiny/sgd", storage=url).trials) == n_trials
    proc = run_cli("status", str(path), "--storage", url)
    assert proc.returncode == 0 and "16/16 done" in proc.stdout


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
def test_study_layout_readable_with_plain_optuna(tmp_path: Path) -> None:
    path = tiny_sweep(tmp_path, n=2, epochs=2)
    url = f"sqlite:///{tmp_path / 'x.db'}"
    proc = run_cli("sweep", str(path), "--storage", url, "--study", "mine", "--optimizer", "sgd")
    assert proc.returncode == 0, proc.stderr
    study = optuna.load_study(study_name="mine", storage=url)
    assert study.direction == optuna.study.StudyDirection.MINIMIZE
    attrs = study.user_attrs
    assert attrs["optimizer"] == "sgd" and attrs["norm"] == "bn" and attrs["dataset"] == "synthetic"
    assert attrs["epochs"] == 2 and attrs["width"] == 4 and attrs["l2bn_version"] == __version__
    config = json.loads(attrs["config"])
    assert config["lr"] == {"min": 0.01, "max": 1.0, "num": 2} and config["train"]["epochs"] == 2
    trials = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(trials) == 4
    for t in trials:
        assert set(t.params) == {"lr", "weight_decay", "seed"}
        assert isinstance(t.distributions["lr"], optuna.distributions.FloatDistribution)
        assert t.distributions["lr"].log and t.distributions["weight_decay"].log
        assert isinstance(t.distributions["seed"], optuna.distributions.IntDistribution)
        assert set(t.intermediate_values) == {1, 2}
        assert t.value == t.intermediate_values[2] == t.user_attrs["history"][-1]["val_error"]
        assert set(t.user_attrs) == {
            "test_error",
            "train_loss",
            "diverged",
            "steps_per_epoch",
            "device",
            "precision",
            "history",
        }
        assert (t.user_attrs["device"], t.user_attrs["precision"]) == ("cpu", "fp32")
        assert isinstance(t.user_attrs["diverged"], bool)
        assert [e["epoch"] for e in t.user_attrs["history"]] == [1, 2]
        assert "layers" in t.user_attrs["history"][0]


def wait_for_running_trial(url: str, study_name: str, timeout: float = 120) -> int | None:
    """The number of the first trial seen RUNNING past its first epoch, or None on timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        time.sleep(0.3)
        try:
            study = optuna.load_study(study_name=study_name, storage=url)
        except KeyError:  # not created yet
            continue
        for t in study.trials:
            if t.state == TrialState.RUNNING and t.intermediate_values:
                return t.number
    return None


@pytest.mark.slow
def test_kill_minus_9_then_resume_completes_exactly_once(tmp_path: Path) -> None:
    path = tiny_sweep(tmp_path, n=2, epochs=4)
    url = f"sqlite:///{tmp_path / 'x.db'}"
    args = [
        sys.executable,
        "-m",
        "l2bn",
        "sweep",
        str(path),
        "--storage",
        url,
        "--heartbeat",
        "1",
    ]
    # Its own session, so that killing its process group kills the parent and its worker:
    # a node lost mid-trial.
    proc = subprocess.Popen(
        args, cwd=REPO, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        killed = wait_for_running_trial(url, "tiny/sgd")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert killed is not None, "no trial was seen running"
    study = optuna.load_study(study_name="tiny/sgd", storage=url)
    assert study.trials[killed].state == TrialState.RUNNING  # what a dead worker leaves

    done = run_cli("sweep", str(path), "--storage", url, "--heartbeat", "1", "--workers", "2")
    assert done.returncode == 0, done.stderr
    study = optuna.load_study(study_name="tiny/sgd", storage=url)
    assert_exactly_once(study, 4)
    assert study.trials[killed].state == TrialState.FAIL
    retries = [t for t in study.trials if t.system_attrs.get("failed_trial") == killed]
    assert len(retries) == 1 and retries[0].state == TrialState.COMPLETE
    assert point_of(retries[0]) == point_of(study.trials[killed])


@pytest.mark.slow
def test_sigterm_requeues_the_running_point(tmp_path: Path) -> None:
    path = tiny_sweep(tmp_path, n=2, epochs=100)  # long enough not to finish first
    url = f"sqlite:///{tmp_path / 'x.db'}"
    args = [sys.executable, "-m", "l2bn", "sweep", str(path), "--storage", url]
    proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    stopped = wait_for_running_trial(url, "tiny/sgd")
    if stopped is not None:
        proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 130
    assert stopped is not None
    study = optuna.load_study(study_name="tiny/sgd", storage=url)
    assert study.trials[stopped].state == TrialState.FAIL
    copies = [t for t in study.trials if t.system_attrs.get("failed_trial") == stopped]
    assert len(copies) == 1 and copies[0].state == TrialState.WAITING
    assert point_of(copies[0]) == point_of(study.trials[stopped])


def test_set_flags_parse_toml_values_and_bare_words() -> None:
    from l2bn.sweep.spec import parse_settings

    got = parse_settings(
        ["epochs=5", "lr={min=1e-3, max=1.0, num=4}", "dataset=synthetic", "seeds=[0, 1]"]
    )
    assert got == {
        "epochs": 5,
        "lr": {"min": 1e-3, "max": 1.0, "num": 4},
        "dataset": "synthetic",
        "seeds": [0, 1],
    }
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        parse_settings(["epochs"])


def test_set_overrides_a_file_and_builds_a_sweep_without_one(tmp_path: Path) -> None:
    from l2bn.sweep.spec import sweep_from_cli

    path = tiny_sweep(tmp_path, n=2)
    (s,) = sweep_from_cli(path, [], {"epochs": 3, "weight_decay": [1e-3]}).select([])
    assert s.config_for(s.points()[0]).epochs == 3
    assert {p.weight_decay for p in s.points()} == {1e-3}

    settings = {"dataset": "synthetic", "lr": [0.1, 1.0], "weight_decay": [1e-4, 1e-3]}
    (cli,) = sweep_from_cli(None, ["adam"], settings).select(["adam"])
    assert cli.study_name == "cli/adam" and len(cli.points()) == 4
    with pytest.raises(ConfigError, match="unknown key 'bogus'"):
        sweep_from_cli(path, [], {"bogus": 1})
    with pytest.raises(ConfigError, match="give a sweep file"):
        sweep_from_cli(None, [], settings)
