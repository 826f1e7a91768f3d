"""The optimizers of the paper, as data: one table, one factory.

λ (``weight_decay``) follows PyTorch: coupled L2 (gradient += λ·w) for all but ``adamw``, whose
decay is decoupled (w ← w − η·λ·w). It applies to conv/linear weights only; normalization γ/β
and biases are not decayed unless ``decay_all`` (the paper does not decay them).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from l2bn.train.config import OptimizerName, TrainConfig
from l2bn.train.models import scale_invariant_layers, weight_tensors


@dataclass(frozen=True)
class OptimizerSpec:
    factory: Callable[..., torch.optim.Optimizer]
    kwargs: dict[str, Any] = field(default_factory=dict)
    project: bool = False  # rescale scale-invariant units to norm 1 after each step


SPECS: dict[OptimizerName, OptimizerSpec] = {
    OptimizerName.sgd: OptimizerSpec(torch.optim.SGD),
    OptimizerName.momentum: OptimizerSpec(torch.optim.SGD, {"momentum": 0.9}),  # heavy ball
    OptimizerName.nesterov: OptimizerSpec(torch.optim.SGD, {"momentum": 0.9, "nesterov": True}),
    # ρ = 0.9 as in the paper; PyTorch calls it alpha. eps = 1e-8 (PyTorch's default).
    OptimizerName.rmsprop: OptimizerSpec(torch.optim.RMSprop, {"alpha": 0.9}),
    OptimizerName.adam: OptimizerSpec(torch.optim.Adam, {"betas": (0.9, 0.999)}),
    OptimizerName.adamw: OptimizerSpec(torch.optim.AdamW, {"betas": (0.9, 0.999)}),
    # Paper §5.5: plain SGD, then every scale-invariant unit is put back on the unit sphere.
    OptimizerName.normalized_sgd: OptimizerSpec(torch.optim.SGD, project=True),
}


def param_groups(model: nn.Module, weight_decay: float, decay_all: bool) -> list[dict[str, Any]]:
    """Two groups: conv/linear weights get λ, everything else (γ, β, biases, WN's g) gets 0."""
    decayed_ids = {id(t) for t in weight_tensors(model).values()}
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for p in model.parameters():
        if not p.requires_grad:  # frozen (TrainConfig.affine = False): not trained at all
            continue
        (decay if decay_all or id(p) in decayed_ids else no_decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def build_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    spec = SPECS[config.optimizer]
    groups = param_groups(model, config.weight_decay, config.decay_all)
    return spec.factory(groups, lr=config.lr, **spec.kwargs)


@torch.no_grad()
def project_to_unit_norm(weights: Iterable[tuple[torch.Tensor, str]]) -> None:
    """Rescale each scale-invariant weight to unit norm: per output unit, or as a whole tensor
    with the mean unit norm set to 1 where only the whole tensor is scale-invariant."""
    for w, kind in weights:
        # Divide w itself: flatten(1) of a channels_last weight is a copy, not a view.
        norms = torch.linalg.vector_norm(w.flatten(1), dim=1)
        if kind == "unit":
            w.div_(norms.view(-1, *[1] * (w.dim() - 1)))
        else:
            w.div_(norms.mean())


def projection_targets(model: nn.Module) -> list[tuple[torch.Tensor, str]]:
    tensors = weight_tensors(model)
    return [(tensors[name], kind) for name, kind in scale_invariant_layers(model).items()]
