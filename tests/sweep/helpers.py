"""What the sweep tests share: a tiny sweep, the CLI as a subprocess, and the checks."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import optuna
import pytest
import sqlalchemy
from optuna.trial import TrialState

from l2bn.sweep.study import point_of

REPO = Path(__file__).resolve().parents[2]
# The user attrs a completed point carries (docs/study-layout.md).
ATTRS = {
    "val_error",
    "val_loss",
    "test_error",
    "train_loss",
    "init_scale",
    "diverged",
    "steps_per_epoch",
    "device",
    "precision",
    "graph",
    "history",
}
TESTS = REPO / "tests"
PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
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


def tiny_sweep(tmp_path: Path, n: int = 2, epochs: int = 1, **keys: str) -> Path:
    """tiny.toml: an n × n grid of width-4 nets on synthetic data. ``keys``: TOML values that
    replace the file's (device='"auto"') or are added to it."""
    lines = TINY.format(n=n, epochs=epochs).splitlines()
    for key, value in keys.items():
        line = f"{key} = {value}"
        at = [i for i, old in enumerate(lines) if old.startswith(f"{key} =")]
        if at:
            lines[at[0]] = line
        else:
            lines.insert(lines.index("[optimizers.sgd]"), line)
    path = tmp_path / "tiny.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def run_cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "l2bn", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
    )


def run_guarded(code: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Python ``code`` in a process group of its own (tests/ on its path). ``timeout`` is a
    hang guard, not a measurement: past it the group is killed and the test fails."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), str(REPO)])}
    proc = subprocess.Popen(
        [sys.executable, "-c", code],
        cwd=REPO,
        env=env,
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail(f"hung: still running after {timeout} s")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def assert_exactly_once(study: optuna.Study, n_points: int) -> None:
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    points = Counter(point_of(t) for t in complete)
    assert len(points) == n_points
    assert set(points.values()) == {1}, points
    assert not [t for t in study.trials if t.state == TrialState.WAITING]
    assert not [t for t in study.trials if t.state == TrialState.RUNNING]


def assert_failed_ones_were_queued_again(study: optuna.Study) -> None:
    """Every FAIL trial has exactly one copy queued by the retry callback (the last entry of
    its ``retry_history``; ``failed_trial`` names the first failure of a chain of retries)."""
    for t in study.get_trials(states=(TrialState.FAIL,)):
        copies = [
            c for c in study.trials if c.system_attrs.get("retry_history", [])[-1:] == [t.number]
        ]
        assert len(copies) == 1, (t.number, copies)
        assert point_of(copies[0]) == point_of(t)


def wait_for_running_trial(url: str, study_name: str, timeout: float = 120) -> int | None:
    """The number of the first trial seen RUNNING past its first epoch, or None on timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        time.sleep(0.3)
        try:
            study = optuna.load_study(study_name=study_name, storage=url)
        except KeyError:  # not created yet
            continue
        except sqlalchemy.exc.SQLAlchemyError:
            # The sweep is creating the database's tables right now: this reader's own
            # RDBStorage may race it for the schema version row (IntegrityError). Look again.
            continue
        for t in study.trials:
            if t.state == TrialState.RUNNING and t.intermediate_values:
                return t.number
    return None


def pg_available() -> bool:
    try:
        engine = sqlalchemy.create_engine(PG_URL, connect_args={"connect_timeout": 3})
        with engine.connect():
            pass
        engine.dispose()
    except Exception:
        return False
    return True


postgres = pytest.mark.skipif(not pg_available(), reason=f"no PostgreSQL at {PG_URL}")
