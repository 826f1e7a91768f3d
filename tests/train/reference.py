"""Independent references for tests/train: the nets as plain nn.Modules (l2bn ≤ 0.1's
definitions, built the way its training loop built them) and torch.optim's optimizers.

The engine's K-stacked nets must equal these: the same initialization for the same seed, the
same forward pass, and, with torch.optim, the same updates.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

from l2bn.train.config import Head, Norm, OptimizerName, TrainConfig
from l2bn.train.models import ConvNets, recorded_weights

# torch.optim's own optimizers with the paper's settings, as l2bn ≤ 0.1 built them.
TORCH_OPTIM: dict[str, tuple[type[torch.optim.Optimizer], dict[str, Any]]] = {
    "sgd": (torch.optim.SGD, {}),
    "momentum": (torch.optim.SGD, {"momentum": 0.9}),
    "nesterov": (torch.optim.SGD, {"momentum": 0.9, "nesterov": True}),
    "rmsprop": (torch.optim.RMSprop, {"alpha": 0.9}),
    "adam": (torch.optim.Adam, {"betas": (0.9, 0.999)}),
    "adamw": (torch.optim.AdamW, {"betas": (0.9, 0.999)}),
    "normalized-sgd": (torch.optim.SGD, {}),
}


class LayerNorm2d(nn.Module):
    def __init__(self, channels: int, affine: bool) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels)) if affine else None
        self.bias = nn.Parameter(torch.zeros(channels)) if affine else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.layer_norm(x, x.shape[1:], eps=1e-5)
        if self.weight is None or self.bias is None:
            return x
        return x * self.weight[:, None, None] + self.bias[:, None, None]


class ConvNet(nn.Module):
    """The paper's net, one model, the usual way."""

    def __init__(self, width: int, norm: Norm, head: Head, affine: bool = True) -> None:
        super().__init__()
        norm, head = Norm(norm), Head(head)
        chans = [3, width, 2 * width, 4 * width, 8 * width]
        for i in range(4):
            conv: nn.Module = nn.Conv2d(
                chans[i], chans[i + 1], 3, padding=1, bias=norm is Norm.none
            )
            if norm is Norm.wn:
                conv = weight_norm(conv)
                conv.parametrizations.weight.original0.requires_grad_(affine)  # type: ignore[union-attr]
            self.add_module(f"conv{i + 1}", conv)
            layer: nn.Module = nn.Identity()
            if norm is Norm.bn:
                layer = nn.BatchNorm2d(chans[i + 1], affine=affine)
            elif norm is Norm.ln:
                layer = LayerNorm2d(chans[i + 1], affine)
            self.add_module(f"norm{i + 1}", layer)
        self.fc = nn.Linear(chans[4], 10, bias=head is Head.linear)
        self.fc_norm: nn.Module = (
            nn.BatchNorm1d(10, affine=affine) if head is Head.bn else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i in range(1, 5):
            x = torch.relu(getattr(self, f"norm{i}")(getattr(self, f"conv{i}")(x)))
            if i < 4:
                x = nn.functional.max_pool2d(x, 2)
        out: torch.Tensor = self.fc_norm(self.fc(x.mean(dim=(2, 3))))
        return out


def reference_net(config: TrainConfig) -> ConvNet:
    """Built as l2bn ≤ 0.1 built it: seed the global RNG, then construct (tests only)."""
    torch.manual_seed(config.seed)
    return ConvNet(config.width, config.norm, config.head, affine=config.affine)


def reference_tracking(seed: int, units: int = 16, dim: int = 32) -> torch.Tensor:
    torch.manual_seed(seed)
    w = nn.Linear(dim, units, bias=False)
    nn.init.normal_(w.weight, std=1 / math.sqrt(dim))
    return w.weight.detach()


def state_of(net: nn.Module) -> dict[str, torch.Tensor]:
    """Parameters and BN statistics by name (the names the K-stacked nets use)."""
    out = {n: p.detach() for n, p in net.named_parameters()}
    out.update({n: b for n, b in net.named_buffers() if not n.endswith("num_batches_tracked")})
    return out


def model_state(nets: ConvNets, k: int) -> dict[str, torch.Tensor]:
    """Model k's parameters and buffers from the K-stacked nets, by the same names."""
    out = {n: v[k].detach() for n, v in nets.params.views.items()}
    out.update({n: b[k] for n, b in nets.buffers.items()})
    return out


def load_model(nets: ConvNets, k: int, net: nn.Module) -> None:
    """Give model k of ``nets`` the reference net's exact parameters and statistics."""
    with torch.no_grad():
        for name, t in state_of(net).items():
            (nets.params.views.get(name, nets.buffers.get(name)))[k].copy_(t)  # type: ignore[index]


def projection_targets(net: ConvNet, config: TrainConfig) -> list[tuple[torch.Tensor, str]]:
    """Normalized SGD's scale-invariant weights of the reference net."""
    params = dict(net.named_parameters())
    names = recorded_weights(config.norm)
    kind = "tensor" if config.norm is Norm.ln else "unit"
    out = []
    if config.norm is not Norm.none:
        out += [(params[names[f"conv{i}"]], kind) for i in range(1, 5)]
    if config.head is Head.bn:
        out.append((params["fc.weight"], "unit"))
    return out


@torch.no_grad()
def project(targets: list[tuple[torch.Tensor, str]]) -> None:
    for w, kind in targets:
        norms = torch.linalg.vector_norm(w.flatten(1), dim=1)
        w.div_(norms.view(-1, *[1] * (w.dim() - 1)) if kind == "unit" else norms.mean())


def torch_optimizer(net: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """torch.optim's optimizer for the reference net: λ on conv/linear weights only."""
    cls, kwargs = TORCH_OPTIM[OptimizerName(config.optimizer).value]
    decayed = set(recorded_weights(config.norm).values())
    params = [(n, p) for n, p in net.named_parameters() if p.requires_grad]
    wd = config.weight_decay
    groups = [
        {"params": [p for n, p in params if config.decay_all or n in decayed], "weight_decay": wd},
        {"params": [p for n, p in params if not (config.decay_all or n in decayed)]},
    ]
    return cls(groups, lr=config.lr, weight_decay=0.0, **kwargs)
