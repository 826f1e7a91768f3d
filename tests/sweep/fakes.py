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


def report_assigned_gpu(spec: Any, conn: Connection) -> None:
    """A worker that says which GPUs it sees and which one its spec says it was given."""
    conn.send(("gpu", f"{os.environ.get('CUDA_VISIBLE_DEVICES', '<unset>')} {spec.gpu}"))
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


def planted_value(lr: float, weight_decay: float) -> float:
    """The value the planted engine gives a point: the λ = 1e-4 row is best at its lowest η
    (an edge), every other row at η = 0.1 (inside a grid of 0.01, 0.1, 1)."""
    import math

    if math.isclose(weight_decay, 1e-4):
        return lr
    return 0.1 + (math.log10(lr) + 1) ** 2


def planted_engine(spec: Any, conn: Connection) -> None:
    """The real worker, training for real, whose results' validation error is planted."""
    import dataclasses

    import l2bn.train.engine as engine
    from l2bn.sweep.runner import _worker_main

    real = engine.train_many

    def planted(configs: Any, on_epoch: Any, on_batch: Any, **kw: Any) -> Any:
        results = real(configs, on_epoch, on_batch, **kw)
        return [
            dataclasses.replace(r, val_error=planted_value(r.config.lr, r.config.weight_decay))
            for r in results
        ]

    engine.train_many = planted
    _worker_main(spec, conn)
