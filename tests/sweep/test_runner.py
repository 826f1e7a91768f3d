"""l2bn.sweep.runner: checks before anything is written, worker processes, GPUs, polling, and
whole sweeps through the CLI (several workers, kill -9, SIGTERM)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import uuid
from collections import Counter
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState
from typer.testing import CliRunner

import l2bn.sweep.runner as runner
from l2bn.cli import app, main
from l2bn.errors import ConfigError, StorageError
from l2bn.sweep.runner import (
    check_spec,
    gpu_assignment,
    parse_nvidia_smi,
    run_sweep,
    visible_gpus,
)
from l2bn.sweep.spec import load_sweep
from l2bn.sweep.status import PointState
from l2bn.sweep.study import point_of
from l2bn.sweep.worker import WorkerSpec

from . import fakes
from .helpers import (
    PG_URL,
    REPO,
    TINY,
    assert_exactly_once,
    assert_failed_ones_were_queued_again,
    postgres,
    run_cli,
    run_guarded,
    tiny_sweep,
    wait_for_running_trial,
)

K = pytest.mark.parametrize("k", [1, 4])


def spec_for(path: Path, url: str, **kw: object) -> WorkerSpec:
    (sweep,) = load_sweep(path).select(None)
    return WorkerSpec(url, sweep.study_name, sweep, **kw)  # type: ignore[arg-type]


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


# --- checked before anything is written ------------------------------------------------------


@pytest.mark.parametrize(
    ("fuse", "workers", "match"),
    [
        (0, 1, "--fuse must be an integer ≥ 1, got 0"),
        (-2, 1, "--fuse must be"),
        (True, 1, "--fuse must be"),
        (2.0, 1, "--fuse must be"),
        (None, 0, "--workers must be an integer ≥ 1, got 0"),
    ],
)
def test_bad_fuse_or_workers_are_refused_before_the_storage_is_touched(
    tmp_path: Path, fuse: object, workers: int, match: str
) -> None:
    spec = spec_for(tiny_sweep(tmp_path), f"sqlite:///{tmp_path / 'x.db'}", fuse=fuse)
    with pytest.raises(ConfigError, match=match):
        run_sweep(spec, workers=workers)
    assert not (tmp_path / "x.db").exists()
    check_spec(spec_for(tiny_sweep(tmp_path), "sqlite:///unused.db", fuse=4))  # a good one


@pytest.mark.parametrize("existing", [False, True], ids=["new-storage", "existing-storage"])
def test_a_sweep_that_cannot_be_fused_writes_nothing_and_is_one_line_exit_2(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    existing: bool,
) -> None:
    # Defect 2's cure: any refusal comes before a point is claimed (or anything written).
    path = tiny_sweep(tmp_path)
    url = f"sqlite:///{tmp_path / 'x.db'}"
    if existing:
        assert run_cli("sweep", str(path), "--storage", url).returncode == 0
    before = snapshot(tmp_path)

    def refuse(configs: object) -> None:
        raise ConfigError(
            "runs trained together may differ only in lr, weight-decay, seed and init-scale"
        )

    monkeypatch.setattr(runner, "check_batchable", refuse)
    with pytest.raises(SystemExit) as info:
        main(["sweep", str(path), "--storage", url, "--fuse", "4"])
    _, err = capsys.readouterr()
    assert info.value.code == 2
    assert len(err.splitlines()) == 1 and "cannot be trained fused" in err, err
    assert snapshot(tmp_path) == before  # no file made, no byte changed


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
    assert isinstance(result.exception, ConfigError | StorageError)
    assert not db.exists()
    proc = run_cli("sweep", str(path), "--storage", url)
    assert proc.returncode == 2, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "secret" not in proc.stderr
    assert not db.exists()


# --- GPUs -------------------------------------------------------------------------------------


def test_workers_take_the_visible_gpus_in_turn() -> None:
    assert gpu_assignment(5, ["0", "1"]) == ["0", "1", "0", "1", "0"]
    assert gpu_assignment(2, ["3", "1", "2"]) == ["3", "1"]  # the visible list's own order
    assert gpu_assignment(3, ["GPU-abc"]) == ["GPU-abc"] * 3
    assert gpu_assignment(2, []) == [None, None]  # no GPU: CUDA_VISIBLE_DEVICES left alone


@pytest.mark.parametrize(
    ("value", "visible"),
    [
        ("2,3", ["2", "3"]),
        (" 1 , 0 ", ["1", "0"]),
        ("", []),
        ("-1", []),
        ("0,foo,1", ["0"]),  # CUDA stops at the first invalid entry
        ("GPU-8f3a,MIG-77c1", ["GPU-8f3a", "MIG-77c1"]),
    ],
)
def test_visible_gpus_read_cuda_visible_devices_as_cuda_does(
    value: str, visible: list[str]
) -> None:
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": value}) == visible


NVIDIA_SMI = """GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-5d7c0c4e-aaaa)
GPU 1: NVIDIA H100 80GB HBM3 (UUID: GPU-9e1f2b3c-bbbb)
  MIG 3g.40gb     Device  0: (UUID: MIG-11111111-2222)
  MIG 3g.40gb     Device  1: (UUID: MIG-33333333-4444)
GPU 2: NVIDIA H100 80GB HBM3 (UUID: GPU-0a0b0c0d-cccc)
"""


def test_without_cuda_visible_devices_the_gpus_nvidia_smi_lists_are_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert parse_nvidia_smi(NVIDIA_SMI) == ["0", "MIG-11111111-2222", "MIG-33333333-4444", "2"]
    assert parse_nvidia_smi("") == []
    fake = tmp_path / "bin" / "nvidia-smi"
    fake.parent.mkdir()
    fake.write_text(
        f"#!{sys.executable}\nimport sys\nif sys.argv[1:] == ['-L']:\n    print({NVIDIA_SMI!r})\n"
    )
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", str(fake.parent))
    assert visible_gpus({}) == ["0", "MIG-11111111-2222", "MIG-33333333-4444", "2"]
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert visible_gpus({}) == []  # no nvidia-smi: no GPU, CUDA_VISIBLE_DEVICES left unset


def test_each_spawned_worker_sees_its_assigned_gpu(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Defect 8: --workers N put every worker on cuda:0.
    monkeypatch.setattr(runner, "_worker_main", fakes.report_gpu)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,7")
    url = f"sqlite:///{tmp_path / 'x.db'}"
    auto = spec_for(tiny_sweep(tmp_path, device='"auto"'), url)
    result = run_sweep(auto, workers=3)
    assert sorted(result.errors) == [("gpu", "4"), ("gpu", "4"), ("gpu", "7")]
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "4,7"  # the parent's own is untouched
    # A CPU sweep leaves the GPUs as they are.
    cpu = spec_for(tiny_sweep(tmp_path), f"sqlite:///{tmp_path / 'y.db'}")
    result = run_sweep(cpu, workers=2)
    assert result.errors == [("gpu", "4,7"), ("gpu", "4,7")]


def test_a_worker_is_told_its_gpu_and_a_node_set_to_cpu_gives_none(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(runner, "_worker_main", fakes.report_assigned_gpu)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,7")
    monkeypatch.delenv("L2BN_DEVICE", raising=False)
    auto = tiny_sweep(tmp_path, device='"auto"')
    result = run_sweep(spec_for(auto, f"sqlite:///{tmp_path / 'x.db'}"), workers=2)
    assert sorted(result.errors) == [("gpu", "4 4"), ("gpu", "7 7")]  # each must train on it
    # L2BN_DEVICE=cpu makes auto the CPU: the GPUs are left as they are, and nobody is held.
    monkeypatch.setenv("L2BN_DEVICE", "cpu")
    result = run_sweep(spec_for(auto, f"sqlite:///{tmp_path / 'y.db'}"), workers=2)
    assert result.errors == [("gpu", "4,7 None"), ("gpu", "4,7 None")]


def test_a_bad_device_variable_is_refused_before_the_storage_is_touched(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("L2BN_DEVICE", "gpu")
    spec = spec_for(tiny_sweep(tmp_path, device='"auto"'), f"sqlite:///{tmp_path / 'x.db'}")
    with pytest.raises(ConfigError, match="L2BN_DEVICE='gpu' is not one of"):
        run_sweep(spec)
    assert not (tmp_path / "x.db").exists()


def test_a_worker_given_a_gpu_torch_cannot_use_stops_the_sweep_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Where the driver is too old for torch's CUDA, nvidia-smi (or the scheduler) still shows
    # the GPU while torch sees none: device auto trained on the CPU behind one warning. Here a
    # torch without CUDA plays that torch, CUDA_VISIBLE_DEVICES the scheduler.
    import torch

    if torch.cuda.is_available():
        pytest.skip("needs a machine without CUDA")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    monkeypatch.delenv("L2BN_DEVICE", raising=False)
    sweep = tiny_sweep(tmp_path, device='"auto"')
    url = f"sqlite:///{tmp_path / 'x.db'}"
    proc = run_cli("sweep", str(sweep), "--storage", url, "--workers", "2")
    assert proc.returncode == 2, proc.stderr
    (line,) = proc.stderr.strip().splitlines()  # both workers' error, said once
    assert line.startswith("l2bn: error: the sweep gave its workers this node's GPUs, but no "
                           "CUDA GPU is visible"), line  # fmt: skip
    assert "Traceback" not in proc.stderr
    study = optuna.load_study(study_name="tiny/sgd", storage=url)
    assert Counter(t.state for t in study.trials) == {TrialState.WAITING: 4}  # none claimed


# --- the poll loop -----------------------------------------------------------------------------


def test_a_worker_crashing_with_a_huge_traceback_does_not_hang_the_runner(tmp_path: Path) -> None:
    # Defect 4: messages were read only after joining the workers, and a child blocked
    # writing a traceback longer than a pipe holds never exits.
    path = tiny_sweep(tmp_path)
    url = f"sqlite:///{tmp_path / 'x.db'}"
    code = f"""
import l2bn.sweep.runner as runner
from sweep import fakes
from sweep.test_runner import spec_for
runner._worker_main = fakes.huge_traceback
result = runner.run_sweep(spec_for({str(path)!r}, {url!r}), workers=2)
print([(kind, len(message)) for kind, message in result.errors], result.exit_codes)
"""
    proc = run_guarded(code, timeout=240)
    assert proc.returncode == 0, proc.stderr
    size = len("Traceback (most recent call last):\n") + fakes.HUGE
    assert proc.stdout.split() == f"[('crash', {size}), ('crash', {size})] [1, 1]".split()


@pytest.mark.parametrize("k", [1, 4])
def test_a_training_error_in_a_worker_is_reported_and_its_points_requeued(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, k: int
) -> None:
    monkeypatch.setattr(runner, "_worker_main", fakes.broken_engine)
    url = f"sqlite:///{tmp_path / 'x.db'}"
    result = run_sweep(spec_for(tiny_sweep(tmp_path), url, fuse=k), workers=1)
    assert result.exit_codes == [1] and not result.interrupted
    ((kind, message),) = result.errors
    assert kind == "crash" and "ArithmeticError: the engine broke" in message
    assert "Traceback" in message
    assert result.status.count(PointState.waiting) == 4 and not result.status.complete
    study = optuna.load_study(study_name="tiny/sgd", storage=url)
    failed = study.get_trials(states=(TrialState.FAIL,))
    assert len(failed) == k
    assert {t.user_attrs["l2bn_error"] for t in failed} == {"ArithmeticError: the engine broke"}
    assert_failed_ones_were_queued_again(study)


@pytest.mark.parametrize("k", [1, 2])
def test_an_error_in_the_poll_loop_stops_the_workers_requeues_and_is_raised(
    tmp_path: Path, k: int
) -> None:
    # Defect 4: it joined workers that were never told to stop, waiting for the whole grid
    # (here: forever, 10 000 epochs a point).
    path = tiny_sweep(tmp_path, n=2, epochs=10_000)
    url = f"sqlite:///{tmp_path / 'x.db'}"
    code = f"""
from l2bn.sweep.status import PointState
from l2bn.sweep.runner import run_sweep
from sweep.test_runner import spec_for

def display(status):
    if any(p.state is PointState.running and p.epoch >= 1 for p in status.points):
        raise RuntimeError("the display broke")

try:
    run_sweep(spec_for({str(path)!r}, {url!r}, fuse={k}, torch_threads=1), on_status=display)
except RuntimeError as e:
    print("raised:", e)
"""
    proc = run_guarded(code, timeout=240)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "raised: the display broke"
    study = optuna.load_study(study_name="tiny/sgd", storage=url)
    assert not study.get_trials(states=(TrialState.RUNNING, TrialState.COMPLETE))
    assert len(study.get_trials(states=(TrialState.FAIL,))) == k  # the points it had claimed
    assert_failed_ones_were_queued_again(study)
    assert len(study.get_trials(states=(TrialState.WAITING,))) == 4


def test_the_parent_process_never_imports_torch(tmp_path: Path) -> None:
    path = tiny_sweep(tmp_path)
    url = f"sqlite:///{tmp_path / 'x.db'}"
    code = f"""
import sys
from l2bn.cli import main
main(["sweep", {str(path)!r}, "--storage", {url!r}, "--workers", "2", "--fuse", "2"])
main(["status", {str(path)!r}, "--storage", {url!r}])
print("torch imported:", "torch" in sys.modules)
"""
    proc = run_guarded(code, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().endswith("torch imported: False")
    assert_exactly_once(optuna.load_study(study_name="tiny/sgd", storage=url), 4)


# --- whole sweeps --------------------------------------------------------------------------------


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


@pytest.mark.slow
@K
def test_kill_minus_9_then_resume_completes_exactly_once(tmp_path: Path, k: int) -> None:
    path = tiny_sweep(tmp_path, n=2, epochs=6)
    url = f"sqlite:///{tmp_path / 'x.db'}"
    args = [sys.executable, "-m", "l2bn", "sweep", str(path), "--storage", url,
            "--heartbeat", "1", "--fuse", str(k), "--threads", "1"]  # fmt: skip
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
    lost = [t.number for t in study.trials if t.state == TrialState.RUNNING]
    assert killed in lost  # what a dead worker leaves
    assert len(lost) == k  # all of its round's points

    done = run_cli("sweep", str(path), "--storage", url, "--heartbeat", "1", "--workers", "2",
                   "--fuse", str(k), "--threads", "1")  # fmt: skip
    assert done.returncode == 0, done.stderr
    study = optuna.load_study(study_name="tiny/sgd", storage=url)
    assert_exactly_once(study, 4)
    for number in lost:
        assert study.trials[number].state == TrialState.FAIL
        retries = [t for t in study.trials if t.system_attrs.get("failed_trial") == number]
        assert len(retries) == 1 and retries[0].state == TrialState.COMPLETE
        assert point_of(retries[0]) == point_of(study.trials[number])


@pytest.mark.slow
@K
def test_sigterm_requeues_the_running_points(tmp_path: Path, k: int) -> None:
    path = tiny_sweep(tmp_path, n=2, epochs=100)  # long enough not to finish first
    url = f"sqlite:///{tmp_path / 'x.db'}"
    args = [sys.executable, "-m", "l2bn", "sweep", str(path), "--storage", url,
            "--fuse", str(k), "--threads", "1"]  # fmt: skip
    proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    stopped = wait_for_running_trial(url, "tiny/sgd")
    if stopped is not None:
        proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 130
    assert stopped is not None
    study = optuna.load_study(study_name="tiny/sgd", storage=url)
    assert study.trials[stopped].state == TrialState.FAIL
    failed = study.get_trials(states=(TrialState.FAIL,))
    assert len(failed) == k and not study.get_trials(states=(TrialState.RUNNING,))
    for t in failed:
        copies = [c for c in study.trials if c.system_attrs.get("failed_trial") == t.number]
        assert len(copies) == 1 and copies[0].state == TrialState.WAITING
        assert point_of(copies[0]) == point_of(t)


@pytest.mark.postgres
@pytest.mark.slow
@postgres
def test_postgres_four_workers_exactly_once(tmp_path: Path) -> None:
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


def test_cli_prints_each_worker_error_once(tmp_path: Path) -> None:
    # Every worker stops with the same one-line error (no GPU on a --device cuda sweep, on a
    # machine without one): said once, exit 2, and no point was claimed.
    pytest.importorskip("torch")
    import torch

    if torch.cuda.is_available():
        pytest.skip("needs a machine without CUDA")
    sweep = tiny_sweep(tmp_path, device='"cuda"')
    url = f"sqlite:///{tmp_path / 'x.db'}"
    proc = run_cli("sweep", str(sweep), "--storage", url, "--workers", "2")
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "no CUDA GPU is visible" in lines[0], proc.stderr
    study = optuna.load_study(study_name="tiny/sgd", storage=url)
    assert Counter(t.state for t in study.trials) == {TrialState.WAITING: 4}
    assert json.loads(study.user_attrs["config"])["train"]["width"] == 4


def test_every_point_gets_the_same_bits_however_the_sweep_grouped_it(tmp_path: Path) -> None:
    # 3 × 3 = 9 points: --fuse 1 trains them one by one, --fuse 2 in four pairs and one alone,
    # --fuse 4 in two rounds of four and one alone, --fuse 9 in one round. On the CPU every
    # point's value and history are the same bits in all four (augmentation on: the data path
    # too; width 4, whose 4 channels per model fell mid-vector among partners' in BN).
    path = tiny_sweep(tmp_path, n=3, epochs=2, augment="true", head='"bn"', affine="false")
    values = {}
    for k in (1, 2, 4, 9):
        url = f"sqlite:///{tmp_path / f'k{k}.db'}"
        result = run_sweep(spec_for(path, url, fuse=k, torch_threads=1), workers=1)
        assert result.exit_codes == [0] and result.status.complete, result.errors
        trials = optuna.load_study(study_name="tiny/sgd", storage=url).get_trials()
        values[k] = {
            (t.params["lr"], t.params["weight_decay"]): (
                t.value,
                [{**e, "seconds": None} for e in t.user_attrs["history"]],
            )
            for t in trials
        }
        assert len(values[k]) == 9
    assert values[1] == values[2] == values[4] == values[9]


def test_cpu_fusion_grouped_trains_the_grouped_network_and_a_bad_value_is_one_line(
    tmp_path: Path,
) -> None:
    # cpu_fusion = "grouped": the faster grouped network on a CPU, stored in the study's config;
    # its values agree with the exact path's to training's float noise, not bit for bit.
    values = {}
    for fusion in ("exact", "grouped"):
        folder = tmp_path / fusion
        folder.mkdir()
        path = tiny_sweep(folder, n=2, epochs=1, cpu_fusion=f'"{fusion}"')
        url = f"sqlite:///{folder / 'x.db'}"
        result = run_sweep(spec_for(path, url, fuse=4, torch_threads=1), workers=1)
        assert result.exit_codes == [0] and result.status.complete, result.errors
        study = optuna.load_study(study_name="tiny/sgd", storage=url)
        assert json.loads(study.user_attrs["config"])["cpu_fusion"] == fusion
        values[fusion] = {
            (t.params["lr"], t.params["weight_decay"]): t.value for t in study.get_trials()
        }
    assert values["grouped"].keys() == values["exact"].keys()
    for point, value in values["grouped"].items():
        assert value == pytest.approx(values["exact"][point], abs=0.05), point
    bad = tiny_sweep(tmp_path, cpu_fusion='"fast"')
    with pytest.raises(ConfigError, match="cpu_fusion 'fast' is not one of: exact, grouped"):
        load_sweep(bad)
