"""The optimizers of the paper: their hyperparameters as data, and one update on a flat buffer.

Conventions (the same as ``torch.optim``'s, term for term; tests/train/test_optim.py checks
each update against a hand computation and against ``torch.optim`` itself):

* η (``lr``) is in the optimizer's own units: a step of η·g for SGD, of ≈ η per element for
  RMSprop/Adam/AdamW.
* λ (``weight_decay``) is coupled L2, ``g ← g + λ·w``, for every optimizer but ``adamw``, whose
  decay is decoupled, ``w ← w·(1 − η·λ)``. It applies to conv/linear weights only (and to the
  direction v under weight norm); normalization γ/β, biases and WN gains are not decayed unless
  ``decay_all`` (the paper does not decay them).
* Every model of a batch of K keeps its own η, λ and optimizer state, and nothing is global:
  no shared grad scaler, clipping or NaN check that would couple the models.

The per-step scalars, η's schedule factor and Adam's bias corrections 1 − β₁ᵗ and
√(1 − β₂ᵗ), are host numbers by default (Python floats, the CPU's numeric path). A step
captured as a CUDA graph (l2bn.train.engine) cannot take new host numbers on replay, so
:meth:`FlatOptimizer.use_device_scalars` moves them onto the device: tables indexed by a step
counter that lives on the device. The tables hold the host's own numbers, rounded to the
parameters' dtype as a host scalar is, so only the kernels that take them can round
differently (on CUDA a division by a host scalar is a multiplication by its reciprocal).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch

from l2bn.theory import ADAM_BETA1, MOMENTUM
from l2bn.train.config import OptimizerName
from l2bn.train.models import FlatParams


@dataclass(frozen=True)
class OptimizerSpec:
    rule: Literal["sgd", "rmsprop", "adam"]
    momentum: float = 0.0  # heavy-ball coefficient (dampening 0; the first buffer is g)
    nesterov: bool = False
    alpha: float = 0.99  # RMSprop's ρ: decay of the squared-gradient average
    betas: tuple[float, float] = (ADAM_BETA1, 0.999)  # Adam's decay of the 1st and 2nd moments
    eps: float = 1e-8  # added to √v (torch.optim's default for RMSprop, Adam, AdamW)
    decoupled: bool = False  # AdamW: w ← w(1 − ηλ) instead of g ← g + λw
    project: bool = False  # rescale scale-invariant units to norm 1 after each step


# The constants the theory's predictions depend on (α, β₁) are l2bn.theory's, not copies.
SPECS: dict[OptimizerName, OptimizerSpec] = {
    OptimizerName.sgd: OptimizerSpec("sgd"),
    OptimizerName.momentum: OptimizerSpec("sgd", momentum=MOMENTUM),  # heavy ball
    OptimizerName.nesterov: OptimizerSpec("sgd", momentum=MOMENTUM, nesterov=True),
    OptimizerName.rmsprop: OptimizerSpec("rmsprop", alpha=0.9),  # ρ = 0.9 as in the paper
    OptimizerName.adam: OptimizerSpec("adam"),
    OptimizerName.adamw: OptimizerSpec("adam", decoupled=True),
    # Paper §5.5: plain SGD, then every scale-invariant unit is put back on the unit sphere.
    OptimizerName.normalized_sgd: OptimizerSpec("sgd", project=True),
}


class FlatOptimizer:
    """One optimizer for the K models whose trained parameters are ``params.flat``.

    ``weight_decay`` is one λ per model; ``decay_all`` decays every trained element, not just
    the conv/linear weights.
    """

    def __init__(
        self,
        spec: OptimizerSpec,
        params: FlatParams,
        weight_decay: Sequence[float],
        decay_all: bool = False,
        eps_scales: Sequence[float] | None = None,
    ) -> None:
        self.spec, self.params = spec, params
        flat = params.flat
        wd = torch.tensor(weight_decay, dtype=flat.dtype, device=flat.device).view(-1, 1)
        # K × P: λ of each element's model where it applies, else 0.
        self.wd = (wd * torch.ones_like(params.decayed)) if decay_all else wd * params.decayed
        self.lr = torch.zeros(params.k, 1, dtype=flat.dtype, device=flat.device)
        self.base_lr = self.lr  # what scale_lr multiplies: the column set_lr was given
        # ε added to √v: the spec's, or per model ε ÷ eps_scales[m] (TrainConfig.scale_eps).
        self.eps: float | torch.Tensor = (
            spec.eps
            if eps_scales is None
            else torch.tensor([spec.eps / x for x in eps_scales], dtype=flat.dtype)
            .view(-1, 1)
            .to(flat.device)
        )
        self.t = 0  # steps taken; the K models step together
        # use_device_scalars: the step count on the device, and per step t (0-based) η's
        # schedule factor and Adam's bias corrections for step t + 1 (None: host scalars).
        self.count: torch.Tensor | None = None
        self.tables: dict[str, torch.Tensor] = {}
        self.buf: torch.Tensor | None = None  # momentum
        self.exp_avg = torch.zeros_like(params.flat) if spec.rule == "adam" else None
        self.sq = torch.zeros_like(params.flat) if spec.rule != "sgd" else None

    def set_lr(self, lr: Sequence[float]) -> None:
        """η per model (a K × 1 column on the device): one host-to-device copy."""
        flat = self.params.flat
        self.base_lr = torch.tensor(lr, dtype=flat.dtype, device=flat.device).view(-1, 1)
        self.lr = self.base_lr

    def scale_lr(self, factor: float) -> None:
        """η = the column last given to :meth:`set_lr` × ``factor`` (a schedule's multiplier,
        the same for all K models): a kernel with a host scalar, no host-to-device copy, so a
        per-step schedule costs no transfer on CUDA."""
        self.lr = self.base_lr * factor

    def use_device_scalars(self, factors: Sequence[float]) -> None:
        """Take η's schedule factor at step t (0-based, counted over the whole run) from
        ``factors[t]`` and Adam's bias corrections from tables, both indexed on the device by a
        step counter that the step itself advances: a step with no host number in it, which a
        CUDA graph can replay. :meth:`scale_lr` is then unused. Past the tables' end (only a
        benchmark steps that far) the last entry is used."""
        flat = self.params.flat
        steps = range(1, len(factors) + 1)
        beta1, beta2 = self.spec.betas
        host = {"factor": list(factors)}
        if self.spec.rule == "adam":  # the very expressions step() evaluates on the host
            host["bc1"] = [1 - beta1**t for t in steps]
            host["bc2_sqrt"] = [math.sqrt(1 - beta2**t) for t in steps]
        # In the parameters' dtype: what a kernel makes of a host scalar (a float64 entry
        # would promote the K × 1 η column to float64).
        self.tables = {
            name: torch.tensor(values, dtype=flat.dtype, device=flat.device)
            for name, values in host.items()
        }
        self.count = torch.zeros(1, dtype=torch.long, device=flat.device)
        self.last = torch.tensor([len(factors) - 1], device=flat.device)

    @torch.no_grad()
    def step(self, alive: torch.Tensor) -> None:
        """One update of every model whose ``alive`` flag (K bools, on the device) is set.

        A model that is not alive keeps its parameters exactly: its gradient is zeroed (so its
        optimizer state stays finite, merely decaying) and its η is 0. No host sync. Five
        passes over the buffer for SGD with momentum, as torch.optim's foreach SGD.
        """
        s = self.spec
        self.t += 1
        p, g = self.params.flat, self.params.grad
        live = alive.view(-1, 1)
        g.masked_fill_(~live, 0.0)  # the gradient is overwritten by the next backward anyway
        # This step's entries of the device tables, each of shape (1,) (index_select: a 0-d
        # index tensor would be read back to the host).
        at = None if self.count is None else torch.minimum(self.count, self.last)
        lr = self.lr if at is None else self.base_lr * self.tables["factor"].index_select(0, at)
        lr = lr * live  # K × 1
        if s.rule == "sgd":
            d = torch.addcmul(g, self.wd, p)  # coupled L2: g + λw
            if s.momentum:
                if self.buf is None:
                    self.buf = d.clone()  # torch: the first buffer is the gradient itself
                else:
                    torch.add(d, self.buf, alpha=s.momentum, out=self.buf)  # α·buf + d
                d = d.add_(self.buf, alpha=s.momentum) if s.nesterov else self.buf
            p.addcmul_(lr, d, value=-1)
        elif s.rule == "rmsprop":
            assert self.sq is not None
            d = torch.addcmul(g, self.wd, p)
            self.sq.mul_(s.alpha).addcmul_(d, d, value=1 - s.alpha)
            p.addcmul_(lr, d.div_(self.sq.sqrt().add_(self.eps)), value=-1)
        else:
            assert self.exp_avg is not None and self.sq is not None
            beta1, beta2 = s.betas
            d = g if s.decoupled else torch.addcmul(g, self.wd, p)
            self.exp_avg.lerp_(d, 1 - beta1)
            self.sq.mul_(beta2).addcmul_(d, d, value=1 - beta2)
            bc1: float | torch.Tensor = 1 - beta1**self.t
            bc2_sqrt: float | torch.Tensor = math.sqrt(1 - beta2**self.t)
            if at is not None:
                bc1 = self.tables["bc1"].index_select(0, at)
                bc2_sqrt = self.tables["bc2_sqrt"].index_select(0, at)
            denom = self.sq.sqrt().div_(bc2_sqrt).add_(self.eps)
            if s.decoupled:  # w ← w(1 − ηλ) first, as torch.optim.AdamW
                p.mul_(1 - lr * self.wd)
            p.addcmul_(lr / bc1, torch.div(self.exp_avg, denom, out=denom), value=-1)
        if self.count is not None:
            self.count += 1


@torch.no_grad()
def project_to_unit_norm(weights: dict[str, torch.Tensor], invariant: dict[str, str]) -> None:
    """Normalized SGD: put every scale-invariant unit of every model back on the sphere. Per
    output unit, or, where only the whole tensor is invariant, with mean unit norm 1."""
    for layer, kind in invariant.items():
        w = weights[layer]  # K × units × …
        norms = torch.linalg.vector_norm(w.flatten(2), dim=2)  # K × units
        if kind != "unit":
            norms = norms.mean(dim=1, keepdim=True)
        w.div_(norms.view(*norms.shape, *[1] * (w.dim() - 2)))
