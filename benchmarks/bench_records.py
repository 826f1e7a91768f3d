"""What the per-layer update records cost: the training step with l2bn.train.meter on and off.

Both sides are the loop's own step (l2bn.train.engine.Engine.step, what train_many runs) on the
paper's ConvNet (BN, linear head, Nesterov) and the synthetic images (seeded, in memory: the
same shapes as CIFAR-10), one with the UpdateMeter (a snapshot of the flat buffer before the
optimizer, per-unit sums after it: ``Engine(..., measure_updates=True)``, the default) and one
without. Timed in interleaved rounds in one process, in wall and in CPU time (the machine may
be shared: never compare numbers from different runs), for each width (default 32 and 8) and
precision (fp32, and bf16 autocast where the device has fast bf16 or with ``--bf16``); prints
the median ms/step of each and the overhead, on ÷ off − 1.

The difference of two noisy medians can hide a few per cent, so two steadier estimates are
printed too: the median of the per-round ratios (both variants ran back to back in each
round), and the meter's own work timed alone (``snapshot`` + ``measure`` on one real step's
w, w + Δw and gradient, minus the same loop without them) as a share of the off step. The
per-epoch ``take`` (a few small kernels once per epoch) is not per step and is left out.

On a CPU shared with other jobs, ``--threads 1`` makes the CPU time a clean measure of the
work (two threads spin while they wait for each other).

On ``--device cuda`` each timed region is bracketed by ``torch.cuda.synchronize()`` and the
steps run with cuDNN's autotuner, as training does (common.as_training).

Usage: ``python benchmarks/bench_records.py [--seconds 40] [--widths 32 8] [--batch-size 128]
[--k 1] [--device cpu] [--bf16] [--threads T]``
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from collections.abc import Callable

import torch

from l2bn.train.config import DatasetName, DeviceName, OptimizerName, Precision, TrainConfig
from l2bn.train.device import fast_bf16
from l2bn.train.engine import Engine

from common import (
    add_device,
    as_training,
    device_line,
    device_of,
    engine_step,
    median,
    synchronizer,
)


def rounds(
    variants: dict[str, Callable[[], object]],
    seconds: float,
    steps: int,
    sync: Callable[[], None],
) -> dict[str, list[tuple[float, float]]]:
    """(wall, CPU) ms/step of each variant per round, in rounds that alternate between them
    and reverse their order every other round (an order effect cancels). The CPU time is
    the process's: on a shared CPU it counts the work done, not the time waited for a core.
    Two warm-up steps each first."""
    for step in variants.values():
        step()
        step()
    sync()
    out: dict[str, list[tuple[float, float]]] = {k: [] for k in variants}
    names = list(variants)
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        for name in names:
            sync()
            wall, cpu = time.perf_counter(), time.process_time()
            for _ in range(steps):
                variants[name]()
            sync()
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            out[name].append((wall / steps * 1e3, cpu / steps * 1e3))
        names.reverse()
    return out


def meter_alone(engine: Engine, repeats: int, sync: Callable[[], None]) -> float:
    """ms per step of the meter's own kernels (snapshot + measure) on one real step's weights
    and gradient: the loop sets the buffer to w, snapshots, sets it to w + Δw and measures;
    the same loop without the meter is subtracted. Median of 5 blocks."""
    meter, flat = engine.meter, engine.net.params.flat
    assert meter is not None
    before = flat.detach().clone()
    engine.step(next(iter(engine.task.batches(0))))
    after = flat.detach().clone()

    def block(with_meter: bool) -> float:
        sync()
        t = time.perf_counter()
        with torch.no_grad():
            for _ in range(repeats):
                flat.copy_(before)
                if with_meter:
                    meter.snapshot()
                flat.copy_(after)
                if with_meter:
                    meter.measure(engine.alive)
        sync()
        return (time.perf_counter() - t) / repeats * 1e3

    diffs = [block(True) - block(False) for _ in range(5)]
    meter.take()
    return median(diffs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--seconds", type=float, default=40, help="timing budget per setting")
    ap.add_argument("--widths", type=int, nargs="+", default=[32, 8])
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--k", type=int, default=1, help="models trained side by side")
    ap.add_argument("--steps", type=int, default=3, help="steps per variant per round")
    add_device(ap)
    ap.add_argument("--bf16", action="store_true", help="time bf16 even where it is emulated")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: as is)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = device_of(args.device)
    sync = synchronizer(device)
    precisions = ["fp32"] + (["bf16"] if fast_bf16(device) or args.bf16 else [])
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {device}, "
        f"batch {args.batch_size}, K = {args.k}, data synthetic, precisions {precisions}"
        f"{device_line(device)}"
    )
    for width in args.widths:
        for precision in precisions:
            base = TrainConfig(
                dataset=DatasetName.synthetic,
                width=width,
                batch_size=args.batch_size,
                optimizer=OptimizerName.nesterov,
                lr=0.01,
                weight_decay=5e-4,
                device=DeviceName(device.type),
                precision=Precision(precision),
            )
            configs = [base.with_(lr=0.01 * 2**i, seed=i) for i in range(args.k)]
            on, off = Engine(configs), Engine(configs, measure_updates=False)
            with as_training(device):
                times = rounds(
                    {"on": engine_step(on), "off": engine_step(off)}, args.seconds, args.steps, sync
                )
                alone = meter_alone(on, 20, sync)
            params = on.net.params.flat.numel()
            print(f"width {width:3d} {precision}: {len(times['on'])} rounds, {params} parameters")
            for i, clock in enumerate(("wall", "CPU")):
                t_on = median([t[i] for t in times["on"]])
                t_off = median([t[i] for t in times["off"]])
                # Both ran back to back in each round: their ratio cancels slow load changes.
                ratios = [a[i] / b[i] for a, b in zip(times["on"], times["off"], strict=True)]
                print(
                    f"  {clock:4s} time: meter on {t_on:8.2f} ms/step  off {t_off:8.2f}  "
                    f"overhead: of the medians {100 * (t_on / t_off - 1):+5.1f} %, "
                    f"median of the rounds' {100 * (median(ratios) - 1):+5.1f} %"
                )
            print(f"  meter alone: {alone:.3f} ms wall = {100 * alone / t_off:.1f} % of a step")


if __name__ == "__main__":
    main()
