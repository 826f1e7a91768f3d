"""Pieces the benchmarks share. Run them as scripts (``python benchmarks/bench_step.py``),
which puts this folder on sys.path."""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from l2bn.train import data as D
from l2bn.train.engine import Engine

T = TypeVar("T")
SHARED = Path(__file__).resolve().parent.parent.parent / "shared" / "data"


def data_dir() -> Path:
    return Path(os.environ.get("L2BN_DATA", SHARED))


def has_cifar(folder: Path) -> bool:
    return (folder / D.CIFAR10_FOLDER / D.TEST_FILE).is_file()


def endless(batches: Callable[[int], Iterable[T]]) -> Iterator[T]:
    """``batches(0)``, then ``batches(1)``, …: epochs back to back, for timing steps."""
    epoch = 0
    while True:
        yield from batches(epoch)
        epoch += 1


def engine_step(engine: Engine, layout: Callable[[Any], Any] | None = None) -> Callable[[], None]:
    """The training loop's own step (l2bn.train.engine.Engine.step, what train_many runs):
    autocast around the forward pass only, fp32 weights and optimizer, no host sync (l2bn
    fetches metrics once per epoch). ``layout`` may rewrite each batch first (an ablation)."""
    engine.set_lr(0, 0)
    it = endless(engine.task.batches)

    def step() -> None:
        batch = next(it)
        engine.step(batch if layout is None else layout(batch))

    return step


def interleaved(
    variants: dict[str, Callable[[], Any]], seconds: float, steps: int, sync: Callable[[], None]
) -> dict[str, list[float]]:
    """ms/step of each variant, timed in rounds that alternate between them (the machine is
    shared: never compare numbers from different runs). Two warm-up steps each first."""
    for step in variants.values():  # warm-up: oneDNN primitive caches, loader workers
        step()
        step()
    sync()
    times: dict[str, list[float]] = {k: [] for k in variants}
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        for name, step in variants.items():
            sync()
            t = time.perf_counter()
            for _ in range(steps):
                step()
            sync()
            times[name].append((time.perf_counter() - t) / steps * 1e3)
    return times


def median(ts: list[float]) -> float:
    return statistics.median(ts)
