"""One training run, read top to bottom. It neither prints nor knows about Optuna: it reports
each epoch (and, cheaply, each batch) through callbacks, which may raise to stop it."""

from __future__ import annotations

import contextlib
import functools
import math
import time
from collections.abc import Callable
from pathlib import Path

import torch

from l2bn import __version__
from l2bn.config import DatasetName, DeviceName, Precision, TrainConfig
from l2bn.errors import ConfigError
from l2bn.models import weight_tensors
from l2bn.norms import layer_records
from l2bn.optim import SPECS, build_optimizer, project_to_unit_norm, projection_targets
from l2bn.records import EpochRecord, TrainResult
from l2bn.tasks import make_task

EpochCallback = Callable[[EpochRecord], None]
BatchCallback = Callable[[int, int, int], None]  # (epoch, batch, batches per epoch), 1-based


def resolve_device(name: DeviceName) -> torch.device:
    if name is DeviceName.cuda and not torch.cuda.is_available():
        raise ConfigError(
            "--device cuda was asked for but no CUDA GPU is visible; use --device cpu"
        )
    if name is DeviceName.auto:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name.value)


def fast_bf16(device: torch.device) -> bool:
    """Whether bf16 autocast pays here: CUDA GPUs with bf16, and CPUs with AMX or AVX512-BF16."""
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    return bool(cpu_flags() & {"avx512_bf16", "amx_bf16"})


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags from /proc/cpuinfo (empty elsewhere). torch's own
    get_cpu_capability() stops at "AVX512" and cannot tell a CPU with bf16 dot products
    (where bf16 convolutions run ~1.5× faster) from one without (where they are emulated)."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="ascii", errors="replace")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return frozenset(value.split())
    return frozenset()


def resolve_precision(precision: Precision, device: torch.device) -> Precision:
    if precision is Precision.auto:
        return Precision.bf16 if fast_bf16(device) else Precision.fp32
    return precision


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
            layers=layer_records(weights, lr, spec.eff_lr_power),
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
