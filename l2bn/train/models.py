"""The paper's "simple network with 4 convolutional layers", with a choice of normalization.

conv3×3(c) → norm → ReLU → pool → conv3×3(2c) → norm → ReLU → pool → conv3×3(4c) → norm → ReLU
→ pool → conv3×3(8c) → norm → ReLU → global average pool → linear classifier.

With ``norm`` ≠ none each conv is invariant to the scale of its weights (per output channel for
BN and WN), which is the whole point: weight decay then changes only the effective learning rate.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

from l2bn.train.config import Head, Norm

NUM_CLASSES = 10


class LayerNorm2d(nn.Module):
    """Layer norm over (C, H, W) of each sample, with a per-channel affine like BN's γ/β."""

    def __init__(self, channels: int, eps: float = 1e-5, affine: bool = True) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels)) if affine else None
        self.bias = nn.Parameter(torch.zeros(channels)) if affine else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.layer_norm(x, x.shape[1:], eps=self.eps)
        if self.weight is None or self.bias is None:
            return x
        return x * self.weight[:, None, None] + self.bias[:, None, None]


class ConvNet(nn.Module):
    def __init__(
        self,
        width: int = 32,
        norm: Norm = Norm.bn,
        head: Head = Head.linear,
        in_ch: int = 3,
        affine: bool = True,  # learnable γ/β and WN gains (TrainConfig.affine)
    ) -> None:
        super().__init__()
        norm, head = Norm(norm), Head(head)
        self.norm_kind = norm
        self.head_kind = head
        widths = [width, 2 * width, 4 * width, 8 * width]
        chans = [in_ch, *widths]
        for i in range(4):
            # A bias before a normalization is removed by it; keep one only without norm.
            conv: nn.Module = nn.Conv2d(
                chans[i], chans[i + 1], 3, padding=1, bias=norm is Norm.none
            )
            if norm is Norm.wn:
                conv = weight_norm(conv)  # w = g·v/‖v‖ per output channel
                gain = conv.parametrizations.weight.original0  # type: ignore[union-attr]
                gain.requires_grad_(affine)
            self.add_module(f"conv{i + 1}", conv)
            self.add_module(f"norm{i + 1}", _norm_layer(norm, chans[i + 1], affine))
        self.fc = nn.Linear(widths[-1], NUM_CLASSES, bias=head is Head.linear)
        # BN on the logits makes the classifier scale-invariant too (bias-free Linear + BN).
        self.fc_norm: nn.Module = (
            nn.BatchNorm1d(NUM_CLASSES, affine=affine) if head is Head.bn else nn.Identity()
        )
        self.pool = nn.MaxPool2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i in range(1, 5):
            x = getattr(self, f"norm{i}")(getattr(self, f"conv{i}")(x))
            # Max-pooling commutes with ReLU (both monotone), so pooling first gives the same
            # numbers and gradients while ReLU touches a quarter of the values (CPU: ~10 %).
            if i < 4:
                x = self.pool(x)
            x = torch.relu(x)
        x = x.mean(dim=(2, 3))
        out: torch.Tensor = self.fc_norm(self.fc(x))
        return out


def _norm_layer(norm: Norm, channels: int, affine: bool) -> nn.Module:
    if norm is Norm.bn:
        return nn.BatchNorm2d(channels, affine=affine)
    if norm is Norm.ln:
        return LayerNorm2d(channels, affine=affine)
    # Weight norm normalizes inside the conv; no activation normalization.
    return nn.Identity()


def weight_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every conv/linear weight whose norm l2bn records, by layer name, in forward order.

    For weight normalization that is the direction parameter v (``original1``): the layer is
    invariant to its scale, and weight decay acts on it; the magnitude g behaves like BN's γ.
    """
    out: dict[str, torch.Tensor] = {}
    for name, module in model.named_modules():
        if not isinstance(module, nn.Conv2d | nn.Linear):
            continue
        parametrizations = getattr(module, "parametrizations", None)
        if parametrizations is not None and "weight" in parametrizations:
            out[name] = parametrizations["weight"].original1
        else:
            out[name] = module.weight
    return out


def scale_invariant_layers(model: nn.Module) -> dict[str, str]:
    """Layers whose output does not change when their weights are scaled, and how.

    ``"unit"``: each output unit separately (BN and WN per channel, BN on the logits);
    ``"tensor"``: only the whole tensor at once (layer norm mixes all channels).
    Normalized SGD keeps exactly these at unit norm.
    """
    if not isinstance(model, ConvNet):
        # Any other model (the tracking toy) declares its own.
        declared: dict[str, str] = getattr(model, "scale_invariant", {})
        return declared
    out: dict[str, str] = {}
    if model.norm_kind is not Norm.none:
        kind = "tensor" if model.norm_kind is Norm.ln else "unit"
        out.update({f"conv{i}": kind for i in range(1, 5)})
    if model.head_kind is Head.bn:
        out["fc"] = "unit"
    return out
