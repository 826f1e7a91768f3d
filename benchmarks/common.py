"""Pieces the benchmarks share. Run them as scripts (``python benchmarks/bench_step.py``),
which puts this folder on sys.path.

Every benchmark that trains takes ``--device`` (cpu, the default; cuda; auto) and times its
steps as l2bn trains: on CUDA each timed region starts and ends with
``torch.cuda.synchronize()`` (kernels run asynchronously: without it a timer measures the
launches), and the steps run under the backend settings of the training loop
(:func:`as_training`). Precision follows each Engine's device (bf16 autocast on the device
type the engine trains on), as in training.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import torch

from l2bn.errors import ConfigError
from l2bn.train import data as D
from l2bn.train.config import DeviceName, Precision
from l2bn.train.device import resolve_device
from l2bn.train.engine import Engine, training_flags

T = TypeVar("T")
SHARED = Path(__file__).resolve().parent.parent.parent / "shared" / "data"


def data_dir() -> Path:
    return Path(os.environ.get("L2BN_DATA", SHARED))


def has_cifar(folder: Path) -> bool:
    return (folder / D.CIFAR10_FOLDER / D.TEST_FILE).is_file()


def add_device(ap: argparse.ArgumentParser) -> None:
    ap.add_argument(
        "--device",
        choices=[d.value for d in DeviceName],
        default=DeviceName.cpu.value,
        help="where to train: cpu (default), cuda, or auto (cuda where torch sees a GPU)",
    )


def device_of(name: str) -> torch.device:
    """The torch device for ``--device``, as l2bn resolves it; no GPU for ``--device cuda``
    is one line on stderr and exit 2, as in the CLI."""
    try:
        return resolve_device(DeviceName(name))
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None


def synchronizer(device: torch.device) -> Callable[[], None]:
    """Waits for the device's queued kernels (CUDA); nothing to wait for on a CPU."""
    return torch.cuda.synchronize if device.type == "cuda" else (lambda: None)


def device_line(device: torch.device) -> str:
    """``, GPU <name>`` on CUDA, for a benchmark's machine line (empty on a CPU: unchanged)."""
    return f", GPU {torch.cuda.get_device_name(device)}" if device.type == "cuda" else ""


@contextlib.contextmanager
def as_training(device: torch.device, precision: Precision = Precision.fp32) -> Iterator[None]:
    """The backend settings l2bn.train.engine.train_many runs its loop under, around timed
    steps (:func:`l2bn.train.engine.training_flags`): on CUDA cuDNN's autotuner (unless
    deterministic algorithms were asked for), which a benchmark without it would time on
    cuDNN's heuristic choices instead, and TF32 only for precision tf32, so that "fp32" is
    timed as IEEE fp32, as it trains."""
    with training_flags(device, precision):
        yield


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
    variants: dict[str, Callable[[], Any]], seconds: float, steps: int, device: torch.device
) -> dict[str, list[float]]:
    """ms/step of each variant on ``device``, timed in rounds that alternate between them (the
    machine is shared: never compare numbers from different runs), under the training loop's
    settings (:func:`as_training`). Two warm-up steps each first: oneDNN's primitive caches,
    the loader's workers, cuDNN's autotuning of each shape."""
    sync = synchronizer(device)
    with as_training(device):
        for step in variants.values():
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
