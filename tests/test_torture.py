"""Torture: many workers, SIGKILLs, a PostgreSQL restart, a full disk, a read-only storage.

Every test runs the real `l2bn sweep` command (subprocesses, as users run it) on width-4 nets
and synthetic data (an epoch takes about a second on a CPU), once with each worker training
one point at a time (K = 1) and once with K = 4 side by side (``--fuse``), and then checks the
study with plain Optuna: every grid point COMPLETE exactly once, nothing WAITING or RUNNING,
and every COMPLETE trial holding its whole per-epoch record. Figures (workers, kills, seconds)
are printed: `pytest -s` shows them.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState
from sweep.helpers import PG_URL, REPO, assert_exactly_once, pg_available, postgres, run_cli

SYNTHETIC = """
name = "torture"
dataset = "synthetic"
width = 4
batch_size = 128
precision = "fp32"
augment = false
epochs = {epochs}
device = "cpu"
lr_drops = []
lr = {{ min = 0.01, max = 0.05, num = {n_lr} }}
weight_decay = {{ min = 1e-3, max = 1e-2, num = {n_wd} }}
seeds = [0]

[optimizers.sgd]
"""
STUDY = "torture/sgd"
K = pytest.mark.parametrize("k", [1, 4])


def torture_sweep(tmp_path: Path, n_lr: int, n_wd: int, epochs: int) -> Path:
    path = tmp_path / "torture.toml"
    path.write_text(SYNTHETIC.format(n_lr=n_lr, n_wd=n_wd, epochs=epochs))
    return path


def assert_records_complete(study: optuna.Study, epochs: int) -> None:
    """No COMPLETE trial lost its per-epoch records."""
    for t in study.get_trials(states=(TrialState.COMPLETE,)):
        history = t.user_attrs.get("history")
        assert history is not None, f"trial {t.number} has no history"
        assert [e["epoch"] for e in history] == list(range(1, epochs + 1)), t.number
        assert sorted(t.intermediate_values) == list(range(1, epochs + 1)), t.number
        assert t.value == history[-1]["val_error"]


def assert_nothing_failed(study: optuna.Study) -> None:
    """No FAIL trial and no PRUNED one: workers claim only queued points (l2bn.sweep.worker
    never lets Optuna make a fresh trial when the queue runs dry), so no empty slot either."""
    assert not study.get_trials(states=(TrialState.FAIL, TrialState.PRUNED))


def assert_clean_stderr(stderr: str) -> None:
    assert "Traceback" not in stderr, stderr
    assert "database is locked" not in stderr, stderr
    assert "error" not in stderr.lower(), stderr


def popen_sweep(*args: str) -> subprocess.Popen[str]:
    # Its own session: killing its process group is losing the node.
    return subprocess.Popen(
        [sys.executable, "-m", "l2bn", "sweep", *args],
        cwd=REPO,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def worker_pids(parent: int) -> list[int]:
    """The sweep's worker processes (multiprocessing spawn children, not its resource tracker)."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            cmdline = (stat.parent / "cmdline").read_bytes()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == parent and b"spawn_main" in cmdline:
            pids.append(int(stat.parent.name))
    return pids


def running_with_epochs(url: str, study_name: str) -> list[optuna.trial.FrozenTrial]:
    try:
        study = optuna.load_study(study_name=study_name, storage=url)
    except KeyError:
        return []
    return [t for t in study.trials if t.state == TrialState.RUNNING and t.intermediate_values]


def wait_until(predicate: Callable[[], object], timeout: float, poll: float = 0.25) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(poll)
    return False


def kill_group(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


# --- many workers ------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.postgres
@postgres
@K
def test_eight_workers_on_postgres_train_each_point_exactly_once(tmp_path: Path, k: int) -> None:
    path = torture_sweep(tmp_path, n_lr=4, n_wd=4, epochs=5)
    name = f"pytest-torture-{uuid.uuid4().hex[:8]}"
    start = time.perf_counter()
    try:
        proc = run_cli(
            "sweep", str(path), "--storage", PG_URL, "--study", name, "--workers", "8",
            "--threads", "1", "--heartbeat", "2", "--fuse", str(k),
        )  # fmt: skip
        seconds = time.perf_counter() - start
        assert proc.returncode == 0, proc.stderr
        assert_clean_stderr(proc.stderr)
        study = optuna.load_study(study_name=name, storage=PG_URL)
        assert_exactly_once(study, 16)
        assert_nothing_failed(study)
        assert_records_complete(study, 5)
        print(f"\n8 workers on PostgreSQL, K = {k}: 16 points in {seconds:.1f} s")
    finally:
        with contextlib.suppress(KeyError):
            optuna.delete_study(study_name=name, storage=PG_URL)


@pytest.mark.slow
@K
def test_four_workers_on_sqlite_never_see_database_is_locked(tmp_path: Path, k: int) -> None:
    path = torture_sweep(tmp_path, n_lr=5, n_wd=4, epochs=6)
    url = f"sqlite:///{tmp_path / 'x.db'}"
    start = time.perf_counter()
    # --heartbeat 1: four processes also write a heartbeat each second, on top of their claims,
    # reports and user attrs; a "database is locked" anywhere (heartbeats included, which are
    # logged, not raised) would reach this stderr.
    proc = run_cli(
        "sweep", str(path), "--storage", url, "--workers", "4", "--threads", "1",
        "--heartbeat", "1", "--fuse", str(k),
    )  # fmt: skip
    seconds = time.perf_counter() - start
    assert proc.returncode == 0, proc.stderr
    assert_clean_stderr(proc.stderr)
    study = optuna.load_study(study_name=STUDY, storage=url)
    assert_exactly_once(study, 20)
    assert_nothing_failed(study)
    assert_records_complete(study, 6)
    print(f"\n4 workers on SQLite, K = {k}: 20 points in {seconds:.1f} s")


# --- SIGKILL ------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds workers through /proc")
@K
def test_random_sigkills_then_one_resume_lose_nothing(tmp_path: Path, k: int) -> None:
    epochs = 12
    path = torture_sweep(tmp_path, n_lr=4, n_wd=3, epochs=epochs)
    url = f"sqlite:///{tmp_path / 'x.db'}"
    rng = random.Random(int(os.environ.get("L2BN_TORTURE_SEED", "6")))
    kills = 0
    killed_trials: set[int] = set()
    start = time.perf_counter()
    for _round in range(3):
        proc = popen_sweep(str(path), "--storage", url, "--workers", "2", "--threads", "1",
                           "--heartbeat", "1", "--fuse", str(k))  # fmt: skip
        try:
            assert wait_until(lambda: running_with_epochs(url, STUDY), 120), "nothing ran"
            time.sleep(rng.uniform(0.0, 2.0))
            # A random worker dies (killed for memory, say); the other one goes on ...
            running = {t.number for t in running_with_epochs(url, STUDY)}
            victims = worker_pids(proc.pid)
            if victims:
                os.kill(rng.choice(victims), signal.SIGKILL)
                kills += 1
                killed_trials |= running
            time.sleep(rng.uniform(0.5, 2.5))
            # ... until the whole node is lost: parent and workers at once.
            killed_trials |= {t.number for t in running_with_epochs(url, STUDY)}
            kills += len(worker_pids(proc.pid)) if proc.poll() is None else 0
        finally:
            kill_group(proc)
    study = optuna.load_study(study_name=STUDY, storage=url)
    lost = [t.number for t in study.trials if t.state == TrialState.RUNNING]
    assert lost, "the kills never hit a running trial: the test tested nothing"

    done = run_cli("sweep", str(path), "--storage", url, "--workers", "2", "--threads", "1",
                   "--heartbeat", "1", "--fuse", str(k))  # fmt: skip
    seconds = time.perf_counter() - start
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    study = optuna.load_study(study_name=STUDY, storage=url)
    assert_exactly_once(study, 12)
    assert_records_complete(study, epochs)
    # Every trial a kill left RUNNING was failed (as stale) and its point trained again.
    for number in lost:
        assert study.trials[number].state == TrialState.FAIL
    print(
        f"\nK = {k}: {kills} SIGKILLs in 3 rounds, {len(lost)} running trials lost and retried, "
        f"{len(study.trials)} trials for 12 points, {seconds:.1f} s"
    )


# --- PostgreSQL restarted under running workers -------------------------------------------------


def _pg_cluster() -> str | None:
    conf = Path("/etc/postgresql")
    if shutil.which("pg_ctlcluster") is None or os.geteuid() != 0 or not conf.is_dir():
        return None
    versions = sorted(p.name for p in conf.iterdir() if (p / "main").is_dir())
    return versions[-1] if versions else None


@pytest.fixture
def pg_restart() -> Iterator[list[str]]:
    version = _pg_cluster()
    if version is None:
        pytest.skip("needs root and a local pg_ctlcluster-managed PostgreSQL to restart")
    command = ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main"]
    yield command
    if not pg_available():  # whatever happened, leave the server running
        subprocess.run([*command, "start"], check=False, capture_output=True)
        wait_until(pg_available, 60, poll=1)


@pytest.mark.slow
@pytest.mark.postgres
@postgres
@K
def test_postgres_restart_mid_sweep_workers_reconnect(
    tmp_path: Path, pg_restart: list[str], k: int
) -> None:
    epochs = 40
    path = torture_sweep(tmp_path, n_lr=2, n_wd=2, epochs=epochs)
    name = f"pytest-restart-{uuid.uuid4().hex[:8]}"
    start = time.perf_counter()
    try:
        proc = popen_sweep(str(path), "--storage", PG_URL, "--study", name, "--workers", "2",
                           "--threads", "1", "--heartbeat", "2", "--fuse", str(k))  # fmt: skip
        try:
            assert wait_until(lambda: running_with_epochs(PG_URL, name), 120), "nothing ran"
            during = {t.number for t in running_with_epochs(PG_URL, name)}
            restart = subprocess.run([*pg_restart, "restart"], capture_output=True, text=True)
            assert restart.returncode == 0, restart.stderr
            _, stderr = proc.communicate(timeout=240)
        finally:
            kill_group(proc)
        seconds = time.perf_counter() - start
        # The workers waited for the server and went on: the same run completes the grid.
        assert proc.returncode == 0, stderr
        assert "Traceback" not in stderr, stderr
        study = optuna.load_study(study_name=name, storage=PG_URL)
        assert_exactly_once(study, 4)
        assert_records_complete(study, epochs)
        # A trial that trained through the restart either finished (reconnected) or was
        # failed and trained again: never lost, never twice.
        for number in during:
            t = study.trials[number]
            assert t.state in (TrialState.COMPLETE, TrialState.FAIL)
        # A resume finds nothing to do.
        again = run_cli("sweep", str(path), "--storage", PG_URL, "--study", name)
        assert again.returncode == 0, again.stderr
        assert len(optuna.load_study(study_name=name, storage=PG_URL).trials) == len(study.trials)
        print(f"\nPostgreSQL restarted under 2 workers, K = {k}: grid complete in {seconds:.1f} s")
    finally:
        with contextlib.suppress(KeyError):
            optuna.delete_study(study_name=name, storage=PG_URL)


# --- full disk, read-only storage ---------------------------------------------------------------


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs (needs root and mount; skipped elsewhere)."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("needs root to mount a small tmpfs")
    made = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True
    )
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {made.stderr.decode().strip()}")
    try:
        yield mnt
    finally:
        if subprocess.run(["umount", str(mnt)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def _prepare(path: Path, url: str) -> None:
    from l2bn.sweep.spec import load_sweep
    from l2bn.sweep.storage import open_storage
    from l2bn.sweep.study import prepare_study

    storage = open_storage(url)
    prepare_study(storage, load_sweep(path).select(None)[0])
    storage.engine.dispose()  # no open file left: the file system can be remounted read-only


def _fill(folder: Path, leave: int) -> Path:
    st = os.statvfs(folder)
    filler = folder / "filler"
    filler.write_bytes(b"\0" * (st.f_bavail * st.f_frsize - leave))
    return filler


@pytest.mark.slow
@K
def test_disk_full_mid_sweep_is_one_line_and_the_study_survives(
    tmp_path: Path, small_fs: Path, k: int
) -> None:
    epochs = 10
    path = torture_sweep(tmp_path, n_lr=4, n_wd=3, epochs=epochs)
    db = small_fs / "x.db"
    url = f"sqlite:///{db}"
    _prepare(path, url)
    filler = _fill(small_fs, leave=24 * 1024)  # room for a trial or two, not for twelve
    start = time.perf_counter()
    fuse = ("--fuse", str(k))
    proc = run_cli("sweep", str(path), "--storage", url, "--workers", "2", "--threads", "1", *fuse)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "database or disk is full" in lines[0], proc.stderr
    assert "grid not complete" in lines[0]
    # Not corrupted: SQLite's own check passes, Optuna reads it, no trial is left RUNNING.
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    study = optuna.load_study(study_name=STUDY, storage=url)
    assert not study.get_trials(states=(TrialState.RUNNING,))
    assert len(study.get_trials(states=(TrialState.COMPLETE,))) < 12
    assert_records_complete(study, epochs)

    filler.unlink()  # the user frees space and runs the same command again
    done = run_cli("sweep", str(path), "--storage", url, "--workers", "2", "--threads", "1", *fuse)
    assert done.returncode == 0, done.stderr
    study = optuna.load_study(study_name=STUDY, storage=url)
    assert_exactly_once(study, 12)
    assert_records_complete(study, epochs)
    print(f"\nK = {k}: disk full, then resumed: {time.perf_counter() - start:.1f} s")


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.mark.slow
def test_read_only_file_system_is_one_line_exit_2_and_nothing_changes(
    tmp_path: Path, small_fs: Path
) -> None:
    path = torture_sweep(tmp_path, n_lr=2, n_wd=2, epochs=2)
    url = f"sqlite:///{small_fs / 'x.db'}"
    _prepare(path, url)
    subprocess.run(["mount", "-o", "remount,ro", str(small_fs)], check=True)
    before = _snapshot(small_fs)
    for storage in (url, f"sqlite:///{small_fs / 'new.db'}"):
        proc = run_cli("sweep", str(path), "--storage", storage)
        assert proc.returncode == 2, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
        assert "Traceback" not in proc.stderr
        assert "readonly" in proc.stderr or "unable to open" in proc.stderr, proc.stderr
    assert _snapshot(small_fs) == before
    # Reading still works: `l2bn status` on the read-only copy.
    status = run_cli("status", str(path), "--storage", url)
    assert status.returncode == 0 and "0/4 done" in status.stdout, status.stderr


# --- connections that survive, passwords that do not leak ---------------------------------------


def test_postgres_engine_settings_survive_long_runs() -> None:
    from sqlalchemy.engine import make_url

    from l2bn.sweep.storage import _engine_kwargs

    kwargs = _engine_kwargs(make_url("postgresql+psycopg://u:p@db.example.org/l2bn"))
    assert kwargs["pool_pre_ping"] is True and 0 < kwargs["pool_recycle"] <= 3600
    args = kwargs["connect_args"]
    assert args["connect_timeout"] > 0 and args["keepalives"] == 1
    # What the URL says wins: ?connect_timeout=3 is not overridden.
    url = make_url("postgresql+psycopg://u:p@h/db?connect_timeout=3&keepalives_idle=5")
    args = _engine_kwargs(url)["connect_args"]
    assert "connect_timeout" not in args and "keepalives_idle" not in args


def test_connection_errors_are_told_apart_from_database_errors() -> None:
    import psycopg
    import sqlalchemy

    from l2bn.errors import StorageError
    from l2bn.sweep.storage import database_error, is_connection_error

    lost = sqlalchemy.exc.OperationalError("SELECT 1", {}, psycopg.OperationalError("refused"))
    wrapped = optuna.exceptions.StorageInternalError("commit failed")
    wrapped.__cause__ = lost
    assert is_connection_error(lost) and is_connection_error(wrapped)
    full = sqlalchemy.exc.OperationalError(
        "INSERT", {}, sqlite3.OperationalError("database or disk is full")
    )
    assert not is_connection_error(full)
    assert database_error(full) == "database or disk is full"
    try:
        try:
            raise lost
        except sqlalchemy.exc.OperationalError:
            raise StorageError("gave up") from None
    except StorageError as e:
        assert not is_connection_error(e)  # an answer already given, not one to wait for
    assert database_error(ValueError("x")) is None


def test_scrub_removes_every_form_of_a_parsed_password() -> None:
    from l2bn.sweep.storage import parse_url, scrub

    parse_url("postgresql+psycopg://bob:p%40ss%2Fw0rd@db.example.org/x")
    text = "failed: p@ss/w0rd, as typed: p%40ss%2Fw0rd"
    assert "w0rd" not in scrub(text) and scrub(text).count("***") == 2


def test_unreachable_storage_gives_up_in_bounded_time_without_the_password() -> None:
    import types

    import sqlalchemy

    from l2bn.errors import StorageError
    from l2bn.sweep.storage import open_storage, wait_for_storage

    url = "postgresql+psycopg://bob:Sup3rS3cret@127.0.0.1:1/x"
    with pytest.raises(StorageError) as info:
        open_storage(url)
    assert "Sup3rS3cret" not in str(info.value) and "bob:***@" in str(info.value)
    # A worker whose database server vanished: its wait ends, with one clean line.
    gone = types.SimpleNamespace(
        url=url, engine=sqlalchemy.create_engine(url, connect_args={"connect_timeout": 1})
    )
    start = time.monotonic()
    with pytest.raises(StorageError, match="lost storage") as info:
        wait_for_storage(gone, timeout_s=2)  # type: ignore[arg-type]
    assert time.monotonic() - start < 30
    assert "Sup3rS3cret" not in str(info.value) and len(str(info.value).splitlines()) == 1


@pytest.mark.postgres
@postgres
def test_bad_role_and_password_on_the_real_server_are_not_printed(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from l2bn.cli import main

    url = "postgresql+psycopg://no_such_role_l2bn:Sup3rS3cret@127.0.0.1:5432/test"
    with pytest.raises(SystemExit) as info:
        main(["status", str(REPO / "sweeps" / "smoke.toml"), "--storage", url])
    _, err = capsys.readouterr()
    assert info.value.code == 2
    assert len(err.splitlines()) == 1 and "no_such_role_l2bn" in err, err
    assert "Sup3rS3cret" not in err


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")
def test_failed_heartbeats_are_skipped_not_a_dead_thread(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from l2bn.sweep.storage import open_storage

    storage = open_storage(f"sqlite:///{tmp_path / 'x.db'}", heartbeat_interval=1)
    study = optuna.create_study(storage=storage, study_name="s")
    trial = study.ask()
    storage.record_heartbeat(trial._trial_id)  # works
    (tmp_path / "x.db").unlink()
    storage.engine.dispose()
    (tmp_path / "x.db").mkdir()  # the database file is gone: every write now fails
    storage.record_heartbeat(trial._trial_id)  # logged, not raised
    assert f"heartbeat not recorded (trial id {trial._trial_id})" in caplog.text


def test_storage_url_can_come_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from l2bn.cli import main

    monkeypatch.setenv("L2BN_STORAGE", f"sqlite:///{tmp_path / 'from-env.db'}")
    with pytest.raises(SystemExit) as info:
        main(["status", str(REPO / "sweeps" / "smoke.toml")])
    _, err = capsys.readouterr()
    assert info.value.code == 2 and "from-env.db" in err
    assert not (tmp_path / "from-env.db").exists()


def test_analyze_reads_the_storage_url_from_the_environment_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from l2bn.cli import main

    monkeypatch.setenv("L2BN_STORAGE", f"sqlite:///{tmp_path / 'from-env.db'}")
    with pytest.raises(SystemExit) as info:
        main(["analyze"])
    _, err = capsys.readouterr()
    assert info.value.code == 2 and "from-env.db" in err
    assert not (tmp_path / "from-env.db").exists()
