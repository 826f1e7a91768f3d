"""Pieces the benchmarks share. Run them as scripts (``python benchmarks/bench_step.py``),
which puts this folder on sys.path."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

import torch

T = TypeVar("T")


def endless(batches: Callable[[int], Iterable[T]]) -> Iterator[T]:
    """``batches(0)``, then ``batches(1)``, …: epochs back to back, for timing steps."""
    epoch = 0
    while True:
        yield from batches(epoch)
        epoch += 1


def l2bn_step(task: Any, opt: torch.optim.Optimizer, bf16: bool) -> Callable[[], None]:
    """One step of l2bn.train.engine's loop: bf16 autocast around the forward pass only (fp32
    weights and optimizer), no host sync (l2bn fetches metrics once per epoch)."""
    it = endless(task.batches)
    device_type = next(task.model.parameters()).device.type
    autocast = torch.autocast(device_type, dtype=torch.bfloat16, enabled=bf16)

    def step() -> None:
        with autocast:
            loss, _ = task.loss(next(it))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step
