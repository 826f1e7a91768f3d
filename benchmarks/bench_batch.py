"""Images per second of a training step at each batch size: what a CPU sweep should use.

The headline run (issue "the headline on real CIFAR-10") picks its batch size for throughput on
the machine that runs it: a sweep runs 2 workers × 1 thread on 2 cores, so each variant here is
timed with one torch thread. Every variant is the loop's own step (l2bn.train.engine.Engine.step,
update records on) on the real CIFAR-10 subset when it is there, else on the synthetic images of
the same shape, in the theory's exact setting (BN, ``affine=False``, BN head, Nesterov),
timed in interleaved rounds in one process (never compare numbers from different runs). Prints
ms/step, images/s and the ratio of images/s against the largest batch (the baseline, measured
in the same run) for each width and precision.

``--device cuda`` times the same steps on the GPU (each timed region bracketed by
``torch.cuda.synchronize()``, cuDNN's autotuner on as in training: common.as_training).

Usage: ``python benchmarks/bench_batch.py [--batches 32 64 128] [--widths 8 16] [--seconds 20]
[--precisions fp32 bf16] [--device cpu]``
"""

from __future__ import annotations

import argparse
import platform

import torch

from l2bn.train.config import Precision, TrainConfig
from l2bn.train.device import fast_bf16
from l2bn.train.engine import Engine

from common import (
    add_device,
    data_dir,
    device_line,
    device_of,
    engine_step,
    has_cifar,
    interleaved,
    median,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[32, 64, 128])
    parser.add_argument("--widths", type=int, nargs="+", default=[8, 16])
    parser.add_argument("--precisions", nargs="+", default=None, help="default: fp32 (+ bf16)")
    parser.add_argument("--seconds", type=float, default=20.0, help="per width and precision")
    add_device(parser)
    args = parser.parse_args()
    device = device_of(args.device)
    torch.set_num_threads(1)
    real = has_cifar(data_dir())
    precisions = args.precisions or (["fp32", "bf16"] if fast_bf16(device) else ["fp32"])
    print(
        f"{platform.processor() or platform.machine()}, torch {torch.__version__}, 1 thread, "
        f"{'real CIFAR-10 subset' if real else 'synthetic images'}{device_line(device)}"
    )
    for width in args.widths:
        for precision in precisions:
            variants = {}
            for b in args.batches:
                config = TrainConfig(
                    dataset="cifar10" if real else "synthetic",  # type: ignore[arg-type]
                    data_dir=data_dir() / "cifar-10-batches-py" if real else None,
                    width=width,
                    batch_size=b,
                    affine=False,
                    head="bn",  # type: ignore[arg-type]
                    precision=Precision(precision),
                    device=device.type,  # type: ignore[arg-type]
                    lr_drops=(),
                )
                variants[b] = engine_step(Engine([config]))
            # about the same images per round for every batch size
            times = interleaved(
                {b: _repeat(step, max(1, max(args.batches) // b)) for b, step in variants.items()},
                args.seconds,
                1,
                device,
            )
            base = max(args.batches)
            rate = {b: b * max(1, base // b) / (median(times[b]) / 1e3) for b in args.batches}
            print(f"\nwidth {width}, {precision}")
            print(f"{'batch':>6} {'ms/step':>9} {'images/s':>9} {'÷ batch ' + str(base):>12}")
            for b in args.batches:
                ms = median(times[b]) / max(1, base // b)
                print(f"{b:>6} {ms:>9.2f} {rate[b]:>9.0f} {rate[b] / rate[base]:>12.2f}")


def _repeat(step, n):  # type: ignore[no-untyped-def]
    def run() -> None:
        for _ in range(n):
            step()

    return run


if __name__ == "__main__":
    main()
