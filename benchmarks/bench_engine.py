"""Which K-model engine: l2bn's grouped convolutions against PyTorch's own model ensembling.

Both sides train K copies (seeds 0…K−1, different η and λ) of the paper's ConvNet (BN, linear
head) on the same batches (l2bn.train.tasks: per-model permutation and augmentation), and both
update their parameters with the same optimizer, l2bn's flat functional one
(l2bn.train.optim.FlatOptimizer, Nesterov momentum, per-model η and λ, the alive mask): only
the forward and backward passes differ.

* grouped: l2bn.train.engine.Engine.step, the loop's own step: K models as one net, convolutions
  with groups=K, BN over K·C channels, a batched-matmul classifier, one flat parameter buffer.
* vmap: an ordinary nn.Module ConvNet (defined here, not in l2bn), K of them stacked with
  ``torch.func.stack_module_state`` and run with ``torch.func.vmap`` over
  ``torch.func.functional_call``; the stacked parameters are views of a flat buffer (l2bn's
  FlatParams) so the same optimizer steps them, and gradients come from one ``backward`` of
  the summed per-model losses, as on the grouped side.

Timed in interleaved rounds in one process at K = 1 and K = 4, fp32 and bf16 autocast; prints
ms/step and the ratio vmap ÷ grouped (> 1: grouped is faster). Before timing, both sides'
logits are checked to agree from the same weights. What vmap cannot do here is said in the
output (BN running statistics, weight normalization's parametrization).

On ``--device cuda`` each timed region is bracketed by ``torch.cuda.synchronize()`` and both
sides run with cuDNN's autotuner, as training does (common.as_training).

Usage: ``python benchmarks/bench_engine.py [--seconds 60] [--width 32] [--batch-size 128]
[--device cpu]``
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.func import functional_call, stack_module_state, vmap
from torch.nn import functional as F
from torch.nn.utils.parametrizations import weight_norm

from l2bn.train.config import Norm, TrainConfig
from l2bn.train.engine import Engine
from l2bn.train.models import FlatParams
from l2bn.train.optim import SPECS, FlatOptimizer

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


class ConvNet(nn.Module):
    """The paper's net as one would write it for one model (conv → BN → pool → ReLU)."""

    def __init__(self, width: int, norm: Norm = Norm.bn) -> None:
        super().__init__()
        chans = [3, width, 2 * width, 4 * width, 8 * width]
        layers: list[nn.Module] = []
        for i in range(4):
            conv: nn.Module = nn.Conv2d(chans[i], chans[i + 1], 3, padding=1, bias=False)
            if norm is Norm.wn:
                conv = weight_norm(conv)
            layers.append(conv)
            layers.append(nn.BatchNorm2d(chans[i + 1]) if norm is Norm.bn else nn.Identity())
        self.layers = nn.ModuleList(layers)
        self.fc = nn.Linear(chans[4], 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i in range(4):
            x = self.layers[2 * i + 1](self.layers[2 * i](x))
            if i < 3:
                x = F.max_pool2d(x, 2)
            x = torch.relu(x)
        out: torch.Tensor = self.fc(x.mean(dim=(2, 3)))
        return out


class VmapEnsemble:
    """K nn.Module ConvNets run with torch.func.vmap, stepped by l2bn's flat optimizer."""

    def __init__(self, configs: list[TrainConfig], device: torch.device, norm: Norm) -> None:
        models = []
        for c in configs:
            torch.manual_seed(c.seed)  # the same initialization as l2bn's for this seed
            models.append(ConvNet(c.width, norm).to(device))
        params, buffers = stack_module_state(models)  # type: ignore[arg-type]
        self.params = FlatParams(
            {n: p.detach() for n, p in params.items()},
            [n for n in params if n.endswith("weight") and params[n].dim() > 2],  # conv, fc
            device,
        )
        self.buffers = {n: b for n, b in buffers.items() if not n.endswith("num_batches_tracked")}
        self.base = copy.deepcopy(models[0]).to("meta")
        self.k = len(configs)

        def one(p: dict[str, torch.Tensor], b: dict[str, torch.Tensor], x: torch.Tensor) -> Any:
            return functional_call(self.base, (p, b), (x,))

        self.forward = vmap(one, in_dims=(0, 0, 0))

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """B × K·3 × H × W (as l2bn's tasks give it) → K × B × 10.

        The input is first copied to vmap's natural layout, K × B × 3 × H × W with each
        model's images channels_last (timed with the step): measured 1.6× faster per vmap step
        at K = 4 than a strided view of l2bn's layout, and the fairest start for vmap.
        """
        b, _, h, w = x.shape
        xk = x.view(b, self.k, 3, h, w).permute(1, 0, 3, 4, 2).contiguous().permute(0, 1, 4, 2, 3)
        out: torch.Tensor = self.forward(self.params.views, self.buffers, xk)
        return out


def vmap_step(
    configs: list[TrainConfig], engine: Engine, norm: Norm = Norm.bn
) -> tuple[Callable[[], None], VmapEnsemble]:
    device = engine.device
    ens = VmapEnsemble(configs, device, norm)
    opt = FlatOptimizer(SPECS[configs[0].optimizer], ens.params, [c.weight_decay for c in configs])
    opt.set_lr([c.lr for c in configs])
    alive = torch.ones(len(configs), dtype=torch.bool, device=device)
    it = endless(engine.task.batches)  # the same data pipeline as the grouped side
    autocast = engine.autocast

    def step() -> None:
        nonlocal alive
        x, y = next(it)
        with autocast:
            logits = ens.logits(x)
        losses = F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), reduction="none")
        losses = losses.view(len(configs), -1).mean(1)
        ens.params.backward(losses.sum())
        alive &= torch.isfinite(losses.detach())
        opt.step(alive)

    return step, ens


def agreement(configs: list[TrainConfig]) -> float:
    """Max |logit difference| between the two sides from the same weights and batch (fp32)."""
    engine = Engine([c.with_(precision="fp32") for c in configs])
    _, ens = vmap_step(configs, engine)
    with torch.no_grad():  # the grouped side gets the nn.Modules' exact weights
        for i in range(1, 5):
            engine.net.params.views[f"conv{i}.weight"].copy_(
                ens.params.views[f"layers.{2 * i - 2}.weight"]
            )
        engine.net.params.views["fc.weight"].copy_(ens.params.views["fc.weight"])
        engine.net.params.views["fc.bias"].copy_(ens.params.views["fc.bias"])
    x, _ = next(iter(engine.task.batches(0)))
    with torch.no_grad():
        return float((engine.net(x) - ens.logits(x)).abs().max())


def can_vmap(what: str, run: Callable[[], None]) -> str:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            run()
        except Exception as e:  # report, do not fail: this is what the benchmark is for
            return f"{what}: NO ({type(e).__name__}: {str(e).splitlines()[0][:150]})"
    slow = [str(w.message).split(".")[0] for w in caught if "batching rule" in str(w.message)]
    return f"{what}: yes" + (f", but slowly ({slow[0]})" if slow else "")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--seconds", type=float, default=60, help="timing budget per precision")
    ap.add_argument("--width", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--k", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--steps", type=int, default=2, help="steps per variant per round")
    add_device(ap)
    args = ap.parse_args()
    device = device_of(args.device)
    folder = data_dir()
    cifar = has_cifar(folder)
    base = TrainConfig(
        dataset="cifar10" if cifar else "synthetic",
        data_dir=folder if cifar else None,
        width=args.width,
        batch_size=args.batch_size,
        optimizer="nesterov",
        lr=0.01,
        device=device.type,
    )
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {device}, "
        f"data {base.dataset.value}, width {args.width}, batch {args.batch_size}"
        f"{device_line(device)}"
    )
    print("optimizer: l2bn's flat Nesterov (FlatOptimizer) on both sides; data: l2bn's tasks")

    def configs(k: int, precision: str) -> list[TrainConfig]:
        return [
            base.with_(lr=0.01 * 2**i, weight_decay=1e-4 * 3**i, seed=i, precision=precision)
            for i in range(k)
        ]

    print(f"logits agree from the same weights: max |Δ| = {agreement(configs(2, 'fp32')):.1e}")
    # What vmap can and cannot do with this net.
    two = configs(2, "fp32")
    eng = Engine(two)
    bn_step, ens = vmap_step(two, eng)
    before = ens.buffers["layers.1.running_mean"].clone()
    print(can_vmap("vmap: BN in training mode, batched running stats", bn_step))
    moved = not torch.equal(before, ens.buffers["layers.1.running_mean"])
    print(f"vmap: BN running stats updated in place per model: {'yes' if moved else 'NO'}")
    wn_engine = Engine([c.with_(norm="wn") for c in two])
    print(can_vmap("vmap: weight-norm parametrization", vmap_step(two, wn_engine, Norm.wn)[0]))
    for precision in ("fp32", "bf16"):
        variants: dict[str, Callable[[], None]] = {}
        for k in args.k:
            cfgs = configs(k, precision)
            variants[f"grouped K={k}"] = engine_step(Engine(cfgs))
            variants[f"vmap    K={k}"] = vmap_step(cfgs, Engine(cfgs))[0]
        times = interleaved(variants, args.seconds, args.steps, device)
        print(f"{precision}: {len(next(iter(times.values())))} rounds")
        for k in args.k:
            g, v = median(times[f"grouped K={k}"]), median(times[f"vmap    K={k}"])
            print(
                f"  K={k}: grouped {g:7.1f} ms/step  vmap {v:7.1f} ms/step  "
                f"vmap ÷ grouped x{v / g:.2f}"
            )


if __name__ == "__main__":
    main()
