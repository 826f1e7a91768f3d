"""One training run, read top to bottom. It neither prints nor knows about Optuna: it reports
each epoch (and, cheaply, each batch) through callbacks, which may raise to stop it."""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable

import torch

from l2bn import __version__
from l2bn.theory import THEORY
from l2bn.train.config import DatasetName, Precision, TrainConfig
from l2bn.train.device import resolve_device, resolve_precision
from l2bn.train.models import weight_tensors
from l2bn.train.norms import layer_records
from l2bn.train.optim import SPECS, build_optimizer, project_to_unit_norm, projection_targets
from l2bn.train.records import EpochRecord, TrainResult
from l2bn.train.tasks import make_task

EpochCallback = Callable[[EpochRecord], None]
BatchCallback = Callable[[int, int, int], None]  # (epoch, batch, batches per epoch), 1-based


def train(
    config: TrainConfig,
    on_epoch: EpochCallback | None = None,
    on_batch: BatchCallback | None = None,
    download: bool = False,
) -> TrainResult:
    start = time.perf_counter()
    device = resolve_device(config.device)
    precision = resolve_precision(config.precision, device)
    bf16 = precision is Precision.bf16 and config.dataset is not DatasetName.tracking
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed shapes: pick the fastest kernels once
    # channels_last (NHWC) in every precision: bf16 kernels need it, and on a 2-core AVX2 CPU
    # fp32 NCHW was measured 2-3x slower per step (oneDNN reorders every conv's input).
    task = make_task(config, device, channels_last=True, download=download)
    model = task.model
    optimizer = build_optimizer(model, config)
    spec = SPECS[config.optimizer]
    to_project = projection_targets(model) if spec.project else []
    if to_project:
        project_to_unit_norm(to_project)  # start on the sphere, as every later step ends
    weights = weight_tensors(model)
    autocast = (
        torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    )

    history: list[EpochRecord] = []
    diverged = False
    model.train()
    for epoch in range(config.epochs):
        epoch_start = time.perf_counter()
        lr = config.lr_at(epoch)  # ÷10 at each of config.lr_drops
        for group in optimizer.param_groups:
            group["lr"] = lr

        # Sums stay on the device: one host sync per epoch, not per step.
        loss_sum = torch.zeros((), device=device)
        wrong_sum = torch.zeros((), device=device)
        seen = 0
        for step, batch in enumerate(task.batches(epoch)):
            with autocast:
                loss, wrong = task.loss(batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if to_project:
                project_to_unit_norm(to_project)
            n = task.batch_size(batch)
            loss_sum += loss.detach() * n
            wrong_sum += wrong
            seen += n
            if on_batch is not None:
                on_batch(epoch + 1, step + 1, task.steps_per_epoch)

        train_loss = loss_sum.item() / seen
        train_error = wrong_sum.item() / seen
        diverged = not math.isfinite(train_loss)
        # A diverged net predicts nothing: report chance level, a result rather than a crash.
        val_error = task.chance_error if diverged else task.evaluate("val")
        record = EpochRecord(
            epoch=epoch + 1,
            lr=lr,
            train_loss=train_loss,
            train_error=task.chance_error if diverged else train_error,
            val_error=val_error,
            seconds=time.perf_counter() - epoch_start,
            layers=layer_records(weights, lr, THEORY[config.optimizer].eff_lr_power),
        )
        history.append(record)
        if on_epoch is not None:
            on_epoch(record)
        if diverged:
            break

    last = history[-1]
    return TrainResult(
        config=config,
        history=tuple(history),
        val_error=last.val_error,
        test_error=task.chance_error if diverged else task.evaluate("test"),
        train_loss=last.train_loss,
        diverged=diverged,
        steps_per_epoch=task.steps_per_epoch,
        seconds=time.perf_counter() - start,
        device=str(device),
        precision=precision.value,
        version=__version__,
    )


ManyEpochCallback = Callable[[int, EpochRecord], None]  # (run index, its record)


def train_many(
    configs: list[TrainConfig],
    on_epoch: ManyEpochCallback | None = None,
    on_batch: BatchCallback | None = None,
    download: bool = False,
) -> list[TrainResult]:
    """Train K runs that differ only in η, λ and seed side by side; one result per config.

    TRANSITIONAL (the one-engine work replaces this body): fused where the fused engine
    accepts the configs, else one plain run after another."""
    from l2bn.errors import ConfigError
    from l2bn.train.fused import check_fusable, train_fused

    try:
        check_fusable(configs)
    except ConfigError:
        results = []
        for m, c in enumerate(configs):
            cb = None if on_epoch is None else (lambda r, m=m: on_epoch(m, r))
            results.append(train(c, on_epoch=cb, on_batch=on_batch, download=download))
        return results
    return train_fused(configs, on_epoch=on_epoch, on_batch=on_batch, download=download)
