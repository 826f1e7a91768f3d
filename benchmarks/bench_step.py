"""Per-step training throughput: l2bn's engine at K = 1 against a naive PyTorch loop, in one
process.

Baseline (the PyTorch CIFAR tutorial's way, torchvision-free): a map-style Dataset over the
real CIFAR-10 subset with per-sample transforms in plain torch ops (4-px zero-pad + random
crop, random flip, to float, normalize), a DataLoader (shuffle, ``--loader-workers``
processes), and the paper's net written the usual way (conv → BN → ReLU → pool), fp32 NCHW,
``loss.item()`` logged every step.

Candidate: the step l2bn's loop runs (l2bn.train.engine.Engine.step, one run = K = 1 of the
K-model engine): uint8 data resident on the device, one permutation and augmentation per
epoch, channels_last input, the flat-buffer optimizer, the same optimizer settings.
Ablation ``l2bn-nchw``: the same step fed NCHW input, to separate layout from data pipeline.
Where the CPU has bf16 dot products (AVX512-BF16 or AMX; what ``--precision auto`` picks) or
with ``--bf16``, also ``l2bn bf16``: channels_last under bf16 autocast, fp32 weights.

With ``--k 1 16`` also ``l2bn K=16``: 16 runs (different η, λ, seed) fused into one engine
(l2bn.train.engine at K = 16, what ``l2bn sweep --fuse 16`` trains), in fp32 and, where bf16 is
fast, bf16; its ratio is per model-step, against the naive loop's one model per step.

On CUDA the l2bn variants above run eagerly (``graph = off``: every kernel launched from
Python), and beside each one ``… graph`` runs the same step as one CUDA graph (``graph = on``,
what training uses there by default; l2bn.train.engine). The line ``step graph ÷ eager``
gives, per K, the eager median over the graph's: the launch overhead the graph saves.

``--device cuda`` runs every variant on the GPU: the naive loop moves each batch from pinned
memory, l2bn keeps the data on the GPU. Each timed region is bracketed by
``torch.cuda.synchronize()``, and the steps run with cuDNN's autotuner as training runs them
(common.as_training; the naive loop gets it too, a stronger baseline than the tutorial's).

Variants are timed in interleaved rounds (the machine is shared: never compare numbers from
different runs), and the medians of ms/step are compared. Before timing, one batch's
gradients are checked to agree between NCHW and channels_last input (same weights).

Usage: ``python benchmarks/bench_step.py [--seconds 90] [--width 32] [--batch-size 128]
[--k 1 16] [--device cpu]``
"""

from __future__ import annotations

import argparse
import os
import platform
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from l2bn.train import data as D
from l2bn.train.config import TrainConfig
from l2bn.train.device import fast_bf16
from l2bn.train.engine import Engine

from common import (
    add_device,
    data_dir,
    device_line,
    device_of,
    endless,
    engine_step,
    has_cifar,
    interleaved,
    median,
)


class NaiveCifar(torch.utils.data.Dataset[tuple[torch.Tensor, int]]):
    """Per-sample transforms, as torchvision's RandomCrop(32, 4) + RandomHorizontalFlip +
    ToTensor + Normalize would do them."""

    def __init__(self, x: Any, y: Any) -> None:
        self.x, self.y = torch.from_numpy(x), y
        self.mean = torch.tensor(D.CIFAR10_MEAN).view(3, 1, 1)
        self.std = torch.tensor(D.CIFAR10_STD).view(3, 1, 1)

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        img = nn.functional.pad(self.x[i], (4, 4, 4, 4))
        dy, dx = (int(v) for v in torch.randint(0, 9, (2,)))
        img = img[:, dy : dy + 32, dx : dx + 32]
        if torch.rand(()) < 0.5:
            img = img.flip(2)
        img = img.float() / 255
        return (img - self.mean) / self.std, int(self.y[i])


def naive_net(width: int) -> nn.Module:
    layers: list[nn.Module] = []
    chans = [3, width, 2 * width, 4 * width, 8 * width]
    for i in range(4):
        layers += [nn.Conv2d(chans[i], chans[i + 1], 3, padding=1, bias=False)]
        layers += [nn.BatchNorm2d(chans[i + 1]), nn.ReLU()]
        if i < 3:
            layers.append(nn.MaxPool2d(2))
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8 * width, 10)]
    return nn.Sequential(*layers)


def naive_step(config: TrainConfig, workers: int, device: torch.device) -> Callable[[], float]:
    x, y, _, _ = D.load_cifar10(config.resolved_data_dir())
    cuda = device.type == "cuda"
    loader = torch.utils.data.DataLoader(
        NaiveCifar(x, y),
        batch_size=config.batch_size,
        shuffle=True,
        drop_last=True,
        num_workers=workers,
        persistent_workers=workers > 0,
        pin_memory=cuda,  # the usual GPU loop: page-locked batches, copied asynchronously
    )
    torch.manual_seed(config.seed)
    model = naive_net(config.width).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=0.9, nesterov=True)
    batches = endless(lambda _epoch: loader)  # the DataLoader reshuffles on every pass

    def step() -> float:
        xb, yb = next(batches)
        if cuda:
            xb, yb = xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)
        loss = nn.functional.cross_entropy(model(xb), yb)
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss.item()

    return step


def nchw(batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    return batch[0].contiguous(), batch[1]


def check_layouts_agree(config: TrainConfig, bf16: bool = False) -> float:
    """Largest relative gradient difference between NCHW fp32 input and channels_last input
    (in bf16 autocast with ``bf16``), same weights, same batch, through the engine's net."""
    engine = Engine([config])
    batch = next(iter(engine.task.batches(0)))
    grads = []
    for b, low in ((nchw(batch), False), (batch, bf16)):
        with torch.autocast(engine.device.type, dtype=torch.bfloat16, enabled=low):
            losses, _ = engine.task.losses(b)
        engine.net.params.backward(losses.sum())
        grads.append({n: g.clone() for n, g in engine.net.params.grads.items()})
    return max(float((grads[0][n] - g).norm() / g.norm()) for n, g in grads[1].items())


def fused(config: TrainConfig, k: int) -> list[TrainConfig]:
    """K runs of a sweep's grid that one engine trains side by side (η, λ and seed differ)."""
    return [config.with_(lr=config.lr * 2**i, weight_decay=1e-4 * 3**i, seed=i) for i in range(k)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--seconds", type=float, default=90, help="timing budget (interleaved)")
    ap.add_argument("--width", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--loader-workers", type=int, default=2, help="baseline DataLoader workers")
    ap.add_argument("--steps", type=int, default=3, help="steps per variant per round")
    ap.add_argument("--data-dir", type=Path, default=data_dir())
    ap.add_argument("--bf16", action="store_true", help="time bf16 even where it is emulated")
    ap.add_argument("--k", type=int, nargs="+", default=[1], help="models per l2bn step")
    add_device(ap)
    args = ap.parse_args()
    device = device_of(args.device)
    if not has_cifar(args.data_dir):
        print(f"skipped: no CIFAR-10 under {args.data_dir} (pass --data-dir or set L2BN_DATA)")
        return
    config = TrainConfig(
        dataset="cifar10",
        data_dir=args.data_dir,
        width=args.width,
        batch_size=args.batch_size,
        optimizer="nesterov",
        lr=0.05,
        device=device.type,
        precision="fp32",
    )
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"capability {torch.backends.cpu.get_cpu_capability()}{device_line(device)}"
    )
    print(f"NCHW vs channels_last gradients: max relative diff {check_layouts_agree(config):.2e}")
    # Eager unless named "graph": on CUDA, auto would capture the step (module docstring).
    config = config.with_(graph="off")
    graph = device.type == "cuda"  # a CPU has no graphs: graph on is the same step, eagerly
    bf16 = fast_bf16(device)
    variants: dict[str, Callable[[], Any]] = {
        "naive (DataLoader, NCHW)": naive_step(config, args.loader_workers, device),
    }
    models = {"naive (DataLoader, NCHW)": 1}
    if 1 in args.k:
        variants["l2bn-nchw"] = engine_step(Engine([config]), layout=nchw)
        variants["l2bn (channels_last)"] = engine_step(Engine([config]))
        if graph:
            variants["l2bn (channels_last) graph"] = engine_step(Engine([config.with_(graph="on")]))
    if bf16 or args.bf16:  # what --precision auto picks on this device, or asked for
        diff = check_layouts_agree(config, bf16=True)
        print(f"fp32 NCHW vs bf16 channels_last gradients: max relative diff {diff:.2e}")
        if 1 in args.k:
            variants["l2bn bf16 (channels_last)"] = engine_step(
                Engine([config.with_(precision="bf16")])
            )
    for k in sorted(set(args.k) - {1}):
        for precision in ["fp32"] + (["bf16"] if bf16 or args.bf16 else []):
            name = f"l2bn K={k} {precision}"
            variants[name] = engine_step(Engine(fused(config.with_(precision=precision), k)))
            models[name] = k
            if graph:
                runs = fused(config.with_(precision=precision, graph="on"), k)
                variants[f"{name} graph"] = engine_step(Engine(runs))
                models[f"{name} graph"] = k
    if device.type == "cuda":
        print(f"CUDA bf16: {'yes' if bf16 else 'no'}")
    else:
        print(f"CPU bf16 dot products (AVX512-BF16/AMX): {'yes' if bf16 else 'no'}")
    times = interleaved(variants, args.seconds, args.steps, device)
    base = median(times["naive (DataLoader, NCHW)"])
    rounds = len(times["naive (DataLoader, NCHW)"])
    print(f"width {args.width}, batch {args.batch_size}, {rounds} rounds")
    for name, ts in times.items():
        med, k = median(ts), models.get(name, 1)
        per_model = f"  ({med / k:.2f} ms per model-step)" if k > 1 else ""
        print(
            f"  {name:26s} median {med:7.1f} ms/step  min {min(ts):7.1f}  "
            f"x{base / (med / k):.2f}{per_model}"
        )
    pairs = {f"K={k} {p}": f"l2bn K={k} {p}" for k in set(args.k) - {1} for p in ("fp32", "bf16")}
    pairs["K=1 fp32"] = "l2bn (channels_last)"
    ratios = [
        f"{label} ×{median(times[eager]) / median(times[f'{eager} graph']):.2f}"
        for label, eager in sorted(pairs.items())
        if f"{eager} graph" in times
    ]
    if ratios:
        print(f"step graph ÷ eager (eager ms ÷ graph ms): {'; '.join(ratios)}")


if __name__ == "__main__":
    main()
