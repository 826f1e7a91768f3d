"""Grid throughput: K grid points fused into one net (l2bn.train.fused) against one model at a time.

Both sides train the same K configs (same optimizer, different η, λ, seed) with the same
data pipeline; the unfused side steps the K plain models one after another, the fused side
steps all K at once. Timed in interleaved rounds in one process; reported as model-steps per
second and trial-epochs per second (training steps only: the per-epoch evaluation is the same
work on both sides and is left out), with the ratio fused ÷ unfused.

Usage: ``python benchmarks/bench_grid.py [--k 4] [--width 32] [--seconds 90] [--device cpu]``
On a GPU try ``--k 8 16 32 --precision bf16`` (every K is timed against the same unfused
baseline).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from l2bn.train import data as D
from l2bn.train.config import TrainConfig
from l2bn.train.device import resolve_device
from l2bn.train.fused import FusedTrainer
from l2bn.train.optim import build_optimizer
from l2bn.train.tasks import make_task

from common import endless, l2bn_step

SHARED = Path(__file__).resolve().parent.parent.parent / "shared" / "data"


def configs(base: TrainConfig, k: int) -> list[TrainConfig]:
    return [base.with_(lr=base.lr * 2**i, weight_decay=1e-4 * 3**i, seed=i) for i in range(k)]


def unfused_step(cfgs: list[TrainConfig], device: torch.device) -> Callable[[], None]:
    steps = []
    for c in cfgs:
        task = make_task(c, device, channels_last=True)
        steps.append(l2bn_step(task, build_optimizer(task.model, c), _bf16(c)))

    def step() -> None:
        for one in steps:  # one model at a time, as a sweep worker trains them
            one()

    return step


def fused_step(cfgs: list[TrainConfig], device: torch.device) -> Callable[[], None]:
    trainer = FusedTrainer(cfgs, device)
    trainer.start_epoch(0)

    it = endless(trainer.batches)

    def step() -> None:
        trainer.step(*next(it))

    return step


def _bf16(c: TrainConfig) -> bool:
    return c.precision.value == "bf16"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--k", type=int, nargs="+", default=[4])
    ap.add_argument("--width", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--optimizer", default="nesterov")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    ap.add_argument("--seconds", type=float, default=90)
    ap.add_argument("--steps", type=int, default=2, help="steps per variant per round")
    ap.add_argument("--data-dir", type=Path, default=Path(os.environ.get("L2BN_DATA", SHARED)))
    args = ap.parse_args()
    has_cifar = (args.data_dir / D.CIFAR10_FOLDER / D.TEST_FILE).is_file()
    base = TrainConfig(
        dataset="cifar10" if has_cifar else "synthetic",
        data_dir=args.data_dir if has_cifar else None,
        width=args.width,
        batch_size=args.batch_size,
        optimizer=args.optimizer,
        lr=0.01,
        device=args.device,
        precision=args.precision,
    )
    device = resolve_device(base.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    name = torch.cuda.get_device_name() if device.type == "cuda" else f"{os.cpu_count()}-core CPU"
    print(f"device: {name}, torch {torch.__version__}, {args.precision}, {base.dataset.value}")
    k_max = max(args.k)
    variants = {"unfused": (unfused_step(configs(base, k_max), device), k_max)}
    for k in args.k:
        variants[f"fused K={k}"] = (fused_step(configs(base, k), device), k)
    for step, _ in variants.values():
        step()
    sync()
    times: dict[str, list[float]] = {v: [] for v in variants}
    start = time.perf_counter()
    while time.perf_counter() - start < args.seconds:
        for v, (step, _) in variants.items():
            sync()
            t = time.perf_counter()
            for _ in range(args.steps):
                step()
            sync()
            times[v].append((time.perf_counter() - t) / args.steps)
    steps_per_epoch = make_task(base, device).steps_per_epoch
    base_rate = k_max / statistics.median(times["unfused"])
    print(
        f"width {args.width}, batch {args.batch_size}, {steps_per_epoch} steps/epoch, "
        f"{len(times['unfused'])} rounds"
    )
    for v, (_, k) in variants.items():
        rate = k / statistics.median(times[v])  # model-steps per second
        print(
            f"  {v:12s} {rate:8.2f} model-steps/s  {rate / steps_per_epoch:8.4f} trial-epochs/s"
            f"  x{rate / base_rate:.2f}"
        )


if __name__ == "__main__":
    main()
