"""torch.optim's update rules on one flat buffer that holds the parameters of K models.

The fused engine (l2bn.train.fused) keeps all K models' parameters in one 1-D tensor, so an
optimizer step is a handful of elementwise kernels however many layers and models there are.
Each element knows its model (``model_of``), which gives it that model's η and λ: every model
keeps its own learning rate, weight decay and optimizer state, and nothing is global (no
shared grad scaler, clipping or NaN check that would couple the models).

The formulas are PyTorch's, term for term (tests/test_optim.py checks them by hand):
SGD (dampening 0, optional heavy-ball or Nesterov momentum), RMSprop (not centered, no
momentum), Adam (coupled L2) and AdamW (decoupled ``w ← w(1 − ηλ)``), each with its
``torch.optim`` default eps.
"""

from __future__ import annotations

import math

import torch

from l2bn.train.config import OptimizerName
from l2bn.train.optim import SPECS


class FlatOptimizer:
    """One optimizer for K models whose parameters are the elements of ``params``.

    ``grad`` is the buffer autograd accumulates into (same shape), ``model_of`` the model
    index of each element, ``decayed`` which elements get λ (conv/linear weights),
    ``weight_decay`` one λ per model.
    """

    def __init__(
        self,
        name: OptimizerName,
        params: torch.Tensor,
        grad: torch.Tensor,
        model_of: torch.Tensor,
        decayed: torch.Tensor,
        weight_decay: torch.Tensor,
    ) -> None:
        spec = SPECS[name]
        self.kind = spec.factory
        if self.kind not in (
            torch.optim.SGD,
            torch.optim.RMSprop,
            torch.optim.Adam,
            torch.optim.AdamW,
        ):
            raise NotImplementedError(f"no fused update for {self.kind.__name__}")
        kw = spec.kwargs
        self.momentum = float(kw.get("momentum", 0.0))
        self.nesterov = bool(kw.get("nesterov", False))
        self.alpha = float(kw.get("alpha", 0.99))  # RMSprop's ρ
        betas = kw.get("betas", (0.9, 0.999))
        self.beta1, self.beta2 = float(betas[0]), float(betas[1])
        self.eps = 1e-8
        self.params, self.grad, self.model_of = params, grad, model_of
        self.wd = weight_decay[model_of] * decayed  # per element: λ of its model, or 0
        self.lr = torch.zeros_like(params)
        self.t = 0  # steps taken; every model of a fused group steps together
        self.buf: torch.Tensor | None = None  # momentum
        self.exp_avg = (
            torch.zeros_like(params) if self.kind in (torch.optim.Adam, torch.optim.AdamW) else None
        )
        self.sq = torch.zeros_like(params) if self.kind is not torch.optim.SGD else None

    def set_lr(self, lr: torch.Tensor) -> None:
        """η per model (K values, on the device): once per epoch, one gather."""
        self.lr = lr[self.model_of]

    @torch.no_grad()
    def step(self, alive: torch.Tensor) -> None:
        """One update of every model whose ``alive`` flag (K bools, on the device) is set.

        A model that is not alive keeps its parameters exactly (its state may go on changing
        from non-finite gradients; it is never used again). No host sync.
        """
        self.t += 1
        p, g, lr, wd = self.params, self.grad, self.lr, self.wd
        if self.kind is torch.optim.SGD:
            d = torch.addcmul(g, wd, p)  # coupled L2: g + λw
            if self.momentum:
                if self.buf is None:
                    self.buf = d.clone()  # torch: the first buffer is the gradient itself
                else:
                    self.buf.mul_(self.momentum).add_(d)
                d = d.add(self.buf, alpha=self.momentum) if self.nesterov else self.buf
            new = p - lr * d
        elif self.kind is torch.optim.RMSprop:
            assert self.sq is not None
            d = torch.addcmul(g, wd, p)
            self.sq.mul_(self.alpha).addcmul_(d, d, value=1 - self.alpha)
            new = p - lr * d / self.sq.sqrt().add_(self.eps)
        else:
            assert self.exp_avg is not None and self.sq is not None
            decoupled = self.kind is torch.optim.AdamW
            base = p * (1 - lr * wd) if decoupled else p
            d = g if decoupled else torch.addcmul(g, wd, p)
            self.exp_avg.lerp_(d, 1 - self.beta1)
            self.sq.mul_(self.beta2).addcmul_(d, d, value=1 - self.beta2)
            bc1 = 1 - self.beta1**self.t
            bc2_sqrt = math.sqrt(1 - self.beta2**self.t)
            denom = (self.sq.sqrt() / bc2_sqrt).add_(self.eps)
            new = base - (lr / bc1) * self.exp_avg / denom
        p.copy_(torch.where(alive[self.model_of], new, p))
