"""l2bn.sweep.storage: URLs, redaction, SQLite claims that are atomic, the PostgreSQL path,
and heartbeats that fail trials of dead workers."""

from __future__ import annotations

import multiprocessing
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path

import optuna
import pytest
import sqlalchemy
from optuna.trial import TrialState

from l2bn.errors import StorageError
from l2bn.sweep.spec import Point
from l2bn.sweep.storage import _lock_key, enqueue_lock, open_storage, redact
from l2bn.sweep.study import RequeueCallback, enqueue_missing, point_of

from .helpers import PG_URL, REPO, postgres


def test_redact_hides_the_password() -> None:
    assert redact("postgresql+psycopg://bob:s3cret@db/x") == "postgresql+psycopg://bob:***@db/x"
    assert redact("not a url") == "<not a database URL>"


@pytest.mark.parametrize(
    ("url", "match"),
    [
        ("not a url", "not a database URL"),
        ("nosuchdb://h/x", "unknown database kind"),
        ("sqlite:////no/such/folder/x.db", "does not exist"),
        ("postgresql+psycopg://bob:s3cret@127.0.0.1:1/x", "cannot open storage"),
    ],
)
def test_bad_storage_is_a_storage_error_without_password(url: str, match: str) -> None:
    with pytest.raises(StorageError, match=match) as info:
        open_storage(url)
    assert "s3cret" not in str(info.value)
    assert len(str(info.value).splitlines()) == 1


def _claim(url: str, study_name: str, out: multiprocessing.Queue[list[int]]) -> None:
    storage = open_storage(url)
    study = optuna.load_study(study_name=study_name, storage=storage)
    claimed = []
    while True:
        trial = study.ask()
        if not study.get_trials(deepcopy=False)[trial.number].system_attrs.get("fixed_params"):
            study.tell(trial, state=TrialState.PRUNED)  # the queue is empty
            break
        claimed.append(trial.number)
        study.tell(trial, 0.0)
    out.put(claimed)


def _claims(url: str, n_points: int = 60, n_procs: int = 4) -> Counter[int]:
    storage = open_storage(url)
    name = f"claims-{uuid.uuid4().hex[:8]}"
    study = optuna.create_study(storage=storage, study_name=name)
    enqueue_missing(study, [Point(0.1, 1e-3, s) for s in range(n_points)])
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_claim, args=(url, name, out)) for _ in range(n_procs)]
    for p in procs:
        p.start()
    claims: Counter[int] = Counter()
    for _ in procs:
        claims.update(out.get(timeout=120))
    for p in procs:
        p.join()
        assert p.exitcode == 0
    if url.startswith("postgresql"):
        optuna.delete_study(study_name=name, storage=storage)
    return claims


@pytest.mark.slow
def test_sqlite_claims_are_atomic_and_never_locked(tmp_path: Path) -> None:
    # 4 processes race for 60 queued trials: each is claimed once, and no process sees
    # "database is locked" (it would exit non-zero).
    claims = _claims(f"sqlite:///{tmp_path / 'x.db'}")
    assert len(claims) == 60 and set(claims.values()) == {1}


@pytest.mark.slow
def test_enqueue_is_idempotent_across_processes(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'x.db'}"
    storage = open_storage(url)
    optuna.create_study(storage=storage, study_name="s")
    code = (
        "import optuna, sys\n"
        "from l2bn.sweep.storage import open_storage\n"
        "from l2bn.sweep.study import enqueue_missing\n"
        "from l2bn.sweep.spec import Point\n"
        f"s = optuna.load_study(study_name='s', storage=open_storage({url!r}))\n"
        "enqueue_missing(s, [Point(lr, 1e-3, 0) for lr in (0.1, 0.2, 0.3, 0.4, 0.5)])\n"
    )
    procs = [subprocess.Popen([sys.executable, "-c", code], cwd=REPO) for _ in range(4)]
    assert [p.wait(timeout=120) for p in procs] == [0] * 4
    study = optuna.load_study(study_name="s", storage=url)
    points = Counter(point_of(t) for t in study.trials)
    assert len(points) == 5 and set(points.values()) == {1}


@pytest.mark.postgres
@pytest.mark.slow
@postgres
def test_postgres_claims_are_atomic() -> None:
    claims = _claims(PG_URL, n_points=40)
    assert len(claims) == 40 and set(claims.values()) == {1}


@pytest.mark.postgres
@postgres
def test_postgres_enqueue_lock_excludes() -> None:
    storage = open_storage(PG_URL)
    engine = storage.engine
    key = _lock_key("k")
    with enqueue_lock(storage, "k"), engine.connect() as conn:
        got = conn.execute(sqlalchemy.text("SELECT pg_try_advisory_lock(:k)"), {"k": key})
        assert got.scalar() is False
    with engine.connect() as conn:
        got = conn.execute(sqlalchemy.text("SELECT pg_try_advisory_lock(:k)"), {"k": key})
        assert got.scalar() is True
        conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:k)"), {"k": key})


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")
def test_a_trial_whose_worker_died_before_its_first_heartbeat_goes_stale(
    tmp_path: Path,
) -> None:
    # Optuna alone never fails a RUNNING trial without any heartbeat: a worker killed between
    # its claim and its first beat would leave a point every other worker waits for forever.
    requeue = RequeueCallback()
    storage = open_storage(
        f"sqlite:///{tmp_path / 'x.db'}",
        heartbeat_interval=1,
        grace_period=1,
        stale_callback=requeue,
    )
    study = optuna.create_study(storage=storage, study_name="s")
    enqueue_missing(study, [Point(0.1, 1e-3, 0)])
    silent = study.ask()  # claimed, and its worker died before beating
    assert study.trials[silent.number].state == TrialState.RUNNING
    optuna.storages.fail_stale_trials(study)  # gives it a heartbeat: from now on it can go stale
    assert study.trials[silent.number].state == TrialState.RUNNING
    deadline = time.monotonic() + 60  # a hang guard: stale after the 1 s grace period
    while study.trials[silent.number].state == TrialState.RUNNING:
        assert time.monotonic() < deadline, "the silent trial never went stale"
        time.sleep(0.5)
        optuna.storages.fail_stale_trials(study)
    assert study.trials[silent.number].state == TrialState.FAIL
    (copy,) = study.get_trials(states=(TrialState.WAITING,))
    assert copy.system_attrs["failed_trial"] == silent.number
    assert point_of(copy) == Point(0.1, 1e-3, 0)


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")
def test_a_live_worker_keeps_its_silent_trial_when_it_beats(tmp_path: Path) -> None:
    # The heartbeat the stale check gives a silent trial is the owner's to update: one that
    # beats within the grace period keeps its trial.
    storage = open_storage(f"sqlite:///{tmp_path / 'x.db'}", heartbeat_interval=1, grace_period=5)
    study = optuna.create_study(storage=storage, study_name="s")
    enqueue_missing(study, [Point(0.1, 1e-3, 0)])
    trial = study.ask()
    for _ in range(14):  # 7 s in all: longer than the grace period, never silent as long
        optuna.storages.fail_stale_trials(study)
        storage.record_heartbeat(trial._trial_id)
        time.sleep(0.5)
    assert study.trials[trial.number].state == TrialState.RUNNING
