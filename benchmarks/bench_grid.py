"""Grid throughput: K grid points as one net (l2bn.train.engine at K) against K runs of one.

Both sides train the same K configs (same optimizer, different η, λ, seed) with the same
engine and data pipeline; the unfused side steps K engines of K = 1 one after another (as a
sweep worker trains points one at a time), the fused side one engine of K. Timed in
interleaved rounds in one process; reported as model-steps per second and trial-epochs per
second (training steps only: the per-epoch evaluation is the same work on both sides and is
left out), with the ratio fused ÷ unfused.

On a CPU each K is timed twice: the exact fused path (model by model, each bit for bit a run
alone: the default) and the grouped network (the sweep file's ``cpu_fusion = "grouped"``).

Usage: ``python benchmarks/bench_grid.py [--k 4] [--width 32] [--seconds 90] [--device cpu]``
On a GPU try ``--device cuda --k 8 16 32 --precision bf16`` (every K is timed against the same
unfused baseline): each timed region is bracketed by ``torch.cuda.synchronize()`` and the steps
run with cuDNN's autotuner, as training does (common.as_training).
"""

from __future__ import annotations

import argparse
import os
import statistics
from collections.abc import Callable
from pathlib import Path

import torch

from l2bn.train.config import TrainConfig
from l2bn.train.engine import Engine

from common import add_device, data_dir, device_of, engine_step, has_cifar, interleaved


def configs(base: TrainConfig, k: int) -> list[TrainConfig]:
    return [base.with_(lr=base.lr * 2**i, weight_decay=1e-4 * 3**i, seed=i) for i in range(k)]


def unfused_step(cfgs: list[TrainConfig]) -> Callable[[], None]:
    steps = [engine_step(Engine([c])) for c in cfgs]

    def step() -> None:
        for one in steps:  # one model at a time
            one()

    return step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--k", type=int, nargs="+", default=[4])
    ap.add_argument("--width", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--optimizer", default="nesterov")
    add_device(ap)
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    ap.add_argument("--seconds", type=float, default=90)
    ap.add_argument("--steps", type=int, default=2, help="steps per variant per round")
    ap.add_argument("--data-dir", type=Path, default=data_dir())
    ap.add_argument("--threads", type=int, default=None, help="torch threads (a sweep worker: 1)")
    args = ap.parse_args()
    device = device_of(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    cifar = has_cifar(args.data_dir)
    base = TrainConfig(
        dataset="cifar10" if cifar else "synthetic",
        data_dir=args.data_dir if cifar else None,
        width=args.width,
        batch_size=args.batch_size,
        optimizer=args.optimizer,
        lr=0.01,
        device=device.type,
        precision=args.precision,
    )
    name = torch.cuda.get_device_name() if device.type == "cuda" else f"{os.cpu_count()}-core CPU"
    print(
        f"device: {name}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"{args.precision}, {base.dataset.value}"
    )
    k_max = max(args.k)
    variants: dict[str, tuple[Callable[[], None], int]] = {
        "unfused": (unfused_step(configs(base, k_max)), k_max)
    }
    for k in args.k:
        variants[f"fused K={k}"] = (engine_step(Engine(configs(base, k))), k)
        if device.type == "cpu":  # the grouped network a CPU sweep takes with cpu_fusion
            variants[f"grouped K={k}"] = (engine_step(Engine(configs(base, k), exact=False)), k)
    times = interleaved({v: s for v, (s, _) in variants.items()}, args.seconds, args.steps, device)
    steps_per_epoch = Engine([base]).task.steps_per_epoch
    base_rate = k_max / statistics.median(times["unfused"]) * 1e3
    print(
        f"width {args.width}, batch {args.batch_size}, {steps_per_epoch} steps/epoch, "
        f"{len(times['unfused'])} rounds"
    )
    for v, (_, k) in variants.items():
        rate = k / statistics.median(times[v]) * 1e3  # model-steps per second
        print(
            f"  {v:14s} {rate:8.2f} model-steps/s  {rate / steps_per_epoch:8.4f} trial-epochs/s"
            f"  x{rate / base_rate:.2f}"
        )


if __name__ == "__main__":
    main()
