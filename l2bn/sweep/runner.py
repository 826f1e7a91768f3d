"""Running a sweep on one node: check it, queue its points, start worker processes, poll.

The parent process never imports torch (workers do, in :mod:`l2bn.sweep.worker`). It checks
everything it can before writing anything (the storage URL, the sweep, whether the workers can
train ``--fuse`` points side by side), queues the grid's missing points, starts ``workers``
spawned processes, one GPU each in turn (:func:`gpu_assignment`), and polls the grid until
they stop, reading their error messages as they come. SIGTERM (and Ctrl-C) is forwarded to the
workers, which queue their unfinished points again; so is any error of the parent's own.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import multiprocessing.connection
import os
import re
import shutil
import signal
import subprocess
import time
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from l2bn.errors import ConfigError, L2bnError
from l2bn.sweep.edges import extend
from l2bn.sweep.spec import parse_settings, sweep_from_cli
from l2bn.sweep.status import GridStatus, grid_status
from l2bn.sweep.storage import is_connection_error, open_storage, scrub, wait_for_storage
from l2bn.sweep.study import prepare_study
from l2bn.sweep.worker import POLL_S, WorkerSpec, run_worker
from l2bn.train.config import DeviceName, check_batchable, node_device

if TYPE_CHECKING:
    import optuna

GPU_ENV = "CUDA_VISIBLE_DEVICES"
EXIT_INTERRUPTED = 3  # a worker stopped by SIGINT/SIGTERM (its points queued again)


def worker_specs(
    path: Path | None,
    optimizers: Sequence[str],
    storage: str,
    study: str | None,
    settings: Sequence[str] = (),
    epochs: int | None = None,
    heartbeat: int = 30,
    threads: int | None = None,
    fuse: int | None = None,
) -> list[WorkerSpec]:
    """One WorkerSpec per study that ``l2bn sweep``/``status`` name: the sweep file ``path``
    (or the default sweep) with the ``--set`` ``settings`` and ``epochs`` applied, cut to
    ``optimizers`` (empty: all). ``study`` renames the one study: it needs exactly one."""
    overrides = parse_settings(settings)
    if epochs is not None:
        overrides["epochs"] = epochs
    names = [str(o) for o in optimizers]
    chosen = sweep_from_cli(path, names, overrides).select(names)
    if study is not None and len(chosen) != 1:
        raise ConfigError("--study names one study: give exactly one --optimizer with it")
    return [
        WorkerSpec(
            storage,
            study or s.study_name,
            s,
            heartbeat_interval=heartbeat,
            torch_threads=threads,
            fuse=fuse,
        )
        for s in chosen
    ]


def check_spec(spec: WorkerSpec, workers: int = 1) -> None:
    """Raise ConfigError unless the workers can run ``spec``: called before anything is
    written or claimed, so that a refusal costs nothing. ``--fuse K`` needs an integer K ≥ 1
    and a sweep whose runs may be trained side by side (they differ in η, λ and seed only)."""
    _positive_int("--workers", workers)
    node_device(spec.sweep.base_config().device)  # a bad $L2BN_DEVICE
    if spec.fuse is not None:  # None: auto_fuse, in the workers
        _positive_int("--fuse", spec.fuse)
    try:
        check_batchable([spec.sweep.config_for(p) for p in spec.sweep.points()])
    except ConfigError as e:
        raise ConfigError(f"study {spec.study_name!r} cannot be trained fused: {e}") from None


def _positive_int(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{name} must be an integer ≥ 1, got {value!r}")


# --- GPUs ----------------------------------------------------------------------------------


def visible_gpus(environ: Mapping[str, str] | None = None) -> list[str]:
    """The GPUs this node's workers may use, found without importing torch: the entries of
    CUDA_VISIBLE_DEVICES when it is set (up to its first invalid one, as CUDA reads it: "" or
    "-1" mean none), else each GPU that ``nvidia-smi -L`` lists (its MIG instances instead,
    by UUID, when it has some), else none."""
    env = os.environ if environ is None else environ
    value = env.get(GPU_ENV)
    if value is not None:
        out = []
        for entry in (e.strip() for e in value.split(",")):
            if not (entry.isdigit() or entry.startswith(("GPU-", "MIG-"))):
                break
            out.append(entry)
        return out
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return []
    try:
        listed = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return []
    return parse_nvidia_smi(listed.stdout) if listed.returncode == 0 else []


def parse_nvidia_smi(text: str) -> list[str]:
    """CUDA_VISIBLE_DEVICES entries from ``nvidia-smi -L``: "GPU 0: NVIDIA H100 (UUID: …)"
    gives "0"; a GPU's "  MIG 1g.10gb Device 0: (UUID: MIG-…)" lines replace it by those."""
    gpus: list[tuple[str, list[str]]] = []
    for line in text.splitlines():
        gpu = re.match(r"\s*GPU (\d+):", line)
        mig = re.match(r"\s*MIG .*\(UUID:\s*(MIG-[^)\s]+)\)", line)
        if gpu:
            gpus.append((gpu.group(1), []))
        elif mig and gpus:
            gpus[-1][1].append(mig.group(1))
    return [entry for index, migs in gpus for entry in (migs or [index])]


def gpu_assignment(workers: int, visible: Sequence[str]) -> list[str | None]:
    """Worker i's CUDA_VISIBLE_DEVICES: the (i mod G)-th of the G visible GPUs; None (left
    as it is) for every worker when no GPU is visible. A worker given a GPU trains on it or
    stops (WorkerSpec.gpu): a driver too old for torch must not turn a GPU node's sweep into a
    CPU sweep."""
    if not visible:
        return [None] * workers
    return [visible[i % len(visible)] for i in range(workers)]


@contextlib.contextmanager
def _environ(name: str, value: str | None) -> Iterator[None]:
    """``os.environ[name] = value`` while starting a process (spawned children inherit the
    environment at exec: set before the child imports anything); None leaves it alone."""
    if value is None:
        yield
        return
    old = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if old is None:
            del os.environ[name]
        else:
            os.environ[name] = old


# --- worker processes ------------------------------------------------------------------------


def _worker_main(spec: WorkerSpec, conn: multiprocessing.connection.Connection) -> None:
    code = 0
    try:
        code = EXIT_INTERRUPTED if run_worker(spec).interrupted else 0
    except L2bnError as e:
        _send(conn, (type(e).__name__, scrub(str(e))))
        code = 2
    except BaseException:
        _send(conn, ("crash", scrub(traceback.format_exc())))
        code = 1
    os._exit(code)  # no atexit or thread joins: torch's threads have nothing left to do


def _send(conn: multiprocessing.connection.Connection, message: tuple[str, str]) -> None:
    with contextlib.suppress(OSError):  # the parent is gone: nobody to tell
        conn.send(message)


class _Workers:
    """The worker processes, each with a pipe for its error message, read as it comes: a
    long traceback fills a pipe, and a child blocked writing it would never exit."""

    def __init__(self, spec: WorkerSpec) -> None:
        self.spec = spec
        self.procs: list[Any] = []
        self.readers: list[multiprocessing.connection.Connection] = []
        self._signalled = False

    def start(self, gpus: Sequence[str | None]) -> None:
        ctx = multiprocessing.get_context("spawn")
        for gpu in gpus:
            reader, writer = ctx.Pipe(duplex=False)
            with _environ(GPU_ENV, gpu):
                spec = replace(self.spec, gpu=gpu)
                p = ctx.Process(target=_worker_main, args=(spec, writer), daemon=False)
                p.start()
            writer.close()  # the child's copy alone: its exit is the pipe's end
            self.procs.append(p)
            self.readers.append(reader)

    def alive(self) -> bool:
        return any(p.is_alive() for p in self.procs)

    def drain(self, into: list[tuple[str, str]], timeout: float) -> None:
        """Read the messages that came within ``timeout`` seconds (at most)."""
        if not self.readers:
            time.sleep(timeout)
            return
        for reader in multiprocessing.connection.wait(self.readers, timeout):
            assert isinstance(reader, multiprocessing.connection.Connection)
            try:
                into.append(reader.recv())
            except (EOFError, OSError):  # its worker exited (or died mid-message)
                reader.close()
                self.readers.remove(reader)

    def terminate(self) -> None:
        """SIGTERM every live worker, once: each fails its claimed trials and queues them."""
        if self._signalled:
            return
        self._signalled = True
        for p in self.procs:
            if p.is_alive() and p.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p.pid, signal.SIGTERM)

    def join(self, into: list[tuple[str, str]]) -> list[int | None]:
        while self.readers:
            self.drain(into, POLL_S)
        for p in self.procs:
            p.join()
        return [p.exitcode for p in self.procs]


class _Forwarder:
    """The parent's SIGTERM handler: noted here, forwarded to the workers by the poll loop."""

    def __init__(self) -> None:
        self.signalled = False

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        self.signalled = True


@dataclass
class SweepResult:
    status: GridStatus
    exit_codes: list[int | None] = field(default_factory=list)
    errors: list[tuple[str, str]] = field(default_factory=list)  # (kind, one message)
    interrupted: bool = False
    seconds: float = 0.0


def run_sweep(
    spec: WorkerSpec,
    workers: int = 1,
    on_status: Callable[[GridStatus], None] | None = None,
    poll_s: float = POLL_S,
) -> SweepResult:
    """Queue the grid's missing points, run ``workers`` processes on it, poll until they stop.

    Raises ConfigError/StorageError before anything is written when the input is bad. The
    same call on other machines (same PostgreSQL URL) joins the same study. An error here
    (``on_status`` raising, say) stops the workers, which queue their points again, and is
    re-raised once they have exited.
    """
    check_spec(spec, workers)
    start = time.perf_counter()
    storage = open_storage(spec.storage)
    study = prepare_study(storage, spec.sweep, spec.study_name)
    result = SweepResult(grid_status(study, spec.sweep))
    if on_status is not None:
        on_status(result.status)
    while True:
        _run_workers(spec, workers, study, storage, result, on_status, poll_s)
        if result.interrupted or result.errors or any(result.exit_codes):
            break
        # A row whose best η lies on its grid's edge gains points beyond it, once
        # (l2bn.sweep.edges; never without the sweep file's extend_edges).
        if not extend(study, spec.sweep):
            break
    result.seconds = time.perf_counter() - start
    if on_status is not None:
        on_status(result.status)
    return result


def _run_workers(
    spec: WorkerSpec,
    workers: int,
    study: optuna.Study,
    storage: optuna.storages.RDBStorage,
    result: SweepResult,
    on_status: Callable[[GridStatus], None] | None,
    poll_s: float,
) -> None:
    """Run the workers until the queue is empty or they stop; ``result`` gets their errors,
    exit codes and the final status."""
    result.status = grid_status(study, spec.sweep)
    pool = _Workers(spec)
    forward = _Forwarder()
    old_term = signal.signal(signal.SIGTERM, forward)
    try:
        if not result.status.complete:
            on_cpu = node_device(spec.sweep.base_config().device) is DeviceName.cpu
            pool.start(gpu_assignment(workers, [] if on_cpu else visible_gpus()))
        while pool.alive():
            try:
                if forward.signalled:
                    pool.terminate()
                    result.interrupted = True
                pool.drain(result.errors, poll_s)
                if on_status is not None:
                    on_status(grid_status(study, spec.sweep))
            except KeyboardInterrupt:
                # Ctrl-C reached the workers too (same process group); make sure, then wait.
                forward.signalled = True
            except Exception as e:
                # The database server restarting: the workers wait for it; so does the display.
                if not is_connection_error(e):
                    raise
    except BaseException:
        pool.terminate()
        raise
    finally:
        signal.signal(signal.SIGTERM, old_term)
        result.exit_codes = pool.join(result.errors)
    result.interrupted = result.interrupted or EXIT_INTERRUPTED in result.exit_codes
    try:
        result.status = grid_status(study, spec.sweep)
    except Exception as e:
        if not is_connection_error(e):
            raise
        wait_for_storage(storage)
        result.status = grid_status(study, spec.sweep)


@dataclass
class SweepOutcomes:
    """The runs of one ``l2bn sweep`` (one per study), gathered for its last word: the one-line
    errors of workers that stopped (a full disk), each once, and the status lines of the
    studies whose grid is not complete."""

    stopped: list[str] = field(default_factory=list)
    incomplete: list[str] = field(default_factory=list)

    def add(self, result: SweepResult, summary: str) -> list[str]:
        """Take in one study's run (``summary``: its status line). Returns the messages of its
        crashed workers (bugs, with their tracebacks), for the caller to show at once."""
        crashes: list[str] = []
        for kind, message in result.errors:
            if kind == "crash":
                crashes.append(message.strip())
            elif message.strip() not in self.stopped:
                self.stopped.append(message.strip())
        if not result.status.complete:
            self.incomplete.append(summary)
        return crashes

    def check(self) -> None:
        """Raise ConfigError when some grid is not complete (the stopped workers say why)."""
        if self.incomplete:
            raise ConfigError(
                "; ".join(self.stopped)
                + ("; " if self.stopped else "")
                + "grid not complete ("
                + "; ".join(self.incomplete)
                + "); run the same command to resume"
            )
