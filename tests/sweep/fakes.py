"""Stand-ins for the runner's worker process (``l2bn.sweep.runner._worker_main``), importable
by spawned children: each does one thing and exits."""

from __future__ import annotations

import os
from multiprocessing.connection import Connection
from typing import Any

HUGE = 2_000_000  # characters: far more than a pipe holds (64 KiB on Linux)


def huge_traceback(spec: Any, conn: Connection) -> None:
    """A worker that crashes with a traceback longer than a pipe holds."""
    conn.send(("crash", "Traceback (most recent call last):\n" + "x" * HUGE))
    os._exit(1)


def report_gpu(spec: Any, conn: Connection) -> None:
    """A worker that says which GPUs it was given, and stops."""
    conn.send(("gpu", os.environ.get("CUDA_VISIBLE_DEVICES", "<unset>")))
    os._exit(0)


def broken_engine(spec: Any, conn: Connection) -> None:
    """The real worker, whose training raises after the first epoch of every run."""
    import l2bn.train.engine as engine
    from l2bn.sweep.runner import _worker_main

    real = engine.train_many

    def broken(configs: Any, on_epoch: Any, on_batch: Any, **kw: Any) -> Any:
        def epoch_then_crash(m: int, record: Any) -> None:
            on_epoch(m, record)
            raise ArithmeticError("the engine broke")

        return real(configs, epoch_then_crash, on_batch, **kw)

    engine.train_many = broken
    _worker_main(spec, conn)
