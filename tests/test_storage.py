"""l2bn.sweep.storage: URLs, redaction, SQLite claims that are atomic, and the PostgreSQL path."""

from __future__ import annotations

import contextlib
import multiprocessing
import subprocess
import sys
import uuid
from collections import Counter
from pathlib import Path

import optuna
import pytest
import sqlalchemy
from optuna.trial import TrialState

from l2bn.errors import StorageError
from l2bn.sweep.spec import Point
from l2bn.sweep.storage import enqueue_lock, open_storage, redact
from l2bn.sweep.study import enqueue_missing, point_of

REPO = Path(__file__).resolve().parent.parent
PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


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


def _pg_available() -> bool:
    try:
        engine = sqlalchemy.create_engine(PG_URL, connect_args={"connect_timeout": 3})
        with engine.connect():
            pass
        engine.dispose()
    except Exception:
        return False
    return True


postgres = pytest.mark.skipif(not _pg_available(), reason=f"no PostgreSQL at {PG_URL}")


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
    with enqueue_lock(storage, "k"), engine.connect() as conn:
        key = __import__("l2bn.sweep.storage", fromlist=["_lock_key"])._lock_key("k")
        got = conn.execute(sqlalchemy.text("SELECT pg_try_advisory_lock(:k)"), {"k": key})
        assert got.scalar() is False
    with engine.connect() as conn:
        got = conn.execute(sqlalchemy.text("SELECT pg_try_advisory_lock(:k)"), {"k": key})
        assert got.scalar() is True
        conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:k)"), {"k": key})


@pytest.mark.postgres
@pytest.mark.slow
@postgres
def test_postgres_four_workers_exactly_once(tmp_path: Path) -> None:
    from test_sweep import assert_exactly_once, run_cli, tiny_sweep

    path = tiny_sweep(tmp_path, n=4)
    name = f"pytest-{uuid.uuid4().hex[:8]}"
    try:
        proc = run_cli("sweep", str(path), "--storage", PG_URL, "--workers", "4", "--study", name)
        assert proc.returncode == 0, proc.stderr
        study = optuna.load_study(study_name=name, storage=PG_URL)
        assert_exactly_once(study, 16)
        assert not [t for t in study.trials if t.state == TrialState.FAIL]
    finally:
        with contextlib.suppress(KeyError):
            optuna.delete_study(study_name=name, storage=PG_URL)
