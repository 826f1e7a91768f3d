"""The networks trained: K copies of the paper's ConvNet, or of the tracking toy, as one.

The paper's "simple network with 4 convolutional layers", with a choice of normalization::

    conv3×3(c) → norm → ReLU → pool → conv3×3(2c) → norm → ReLU → pool → conv3×3(4c) → norm
    → ReLU → pool → conv3×3(8c) → norm → ReLU → global average pool → linear classifier

With ``norm`` ≠ none each conv is invariant to the scale of its weights (per output channel for
BN and WN, per whole tensor for LN), which is the whole point: weight decay then changes only
the effective learning rate.

K models of one architecture (K initializations) are one network (HFTA, arXiv 2102.02344):
convolutions with ``groups=K`` (model k's channels are the k-th block of K·C), batch norm over
K·C channels (every model keeps its own batch statistics and running averages), layer norm as a
group norm with K groups, and the classifier as one batched matmul. Nothing mixes models. With
K = 1 every one of these is the ordinary layer (``groups=1`` is a plain convolution), so a
single run is the same code, not a special case. On the CPU the forward pass takes the models
one at a time (:meth:`ConvNets.__call__` says why): a point's numbers never depend on its
partners there.

All trained parameters of the K models live in one flat buffer (:class:`FlatParams`); frozen
ones (``affine=False``: BN/LN γ = 1, β = 0, WN gains at their initial value) and BN's running
statistics are buffers beside it, never trained.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterable, Sequence
from typing import Protocol

import torch
from torch import nn
from torch.nn import functional as F

from l2bn.train.config import CONV_LAYERS, Head, Norm, scale_invariant_layers

NUM_CLASSES = 10
BN_MOMENTUM = 0.1  # nn.BatchNorm's defaults
NORM_EPS = 1e-5  # BN, LN: x̂ = (x − μ)/√(σ² + eps)


class FlatParams:
    """The trained parameters of K models in one K × P buffer, their gradient in another.

    Row k of ``flat`` holds model k's P trained numbers, so anything per model (η, λ, whether
    it is still alive) is a K × 1 column that broadcasts over its row: an optimizer step is a
    few elementwise kernels for every layer of every model, with no gather (l2bn.train.optim).
    ``views[name]`` is a K × shape leaf tensor (model k's parameter is ``views[name][k]``)
    aliasing the same columns of every row, ``grads[name]`` the same columns of ``grad``.
    ``decayed`` (1 × P) is 1.0 where λ applies (conv/linear weights). With K = 1 every view
    is contiguous: a plain parameter.
    """

    def __init__(
        self, stacked: dict[str, torch.Tensor], decayed: Iterable[str], device: torch.device
    ) -> None:
        decayed = set(decayed)
        first = next(iter(stacked.values()))
        self.k = first.shape[0]
        total = sum(t[0].numel() for t in stacked.values())
        self.flat = torch.empty(self.k, total, dtype=first.dtype, device=device)
        self.grad = torch.zeros_like(self.flat)
        decay = torch.zeros(1, total, dtype=first.dtype)
        self.views: dict[str, torch.Tensor] = {}
        self.grads: dict[str, torch.Tensor] = {}
        offset = 0
        for name, t in stacked.items():
            columns = slice(offset, offset + t[0].numel())
            view = self.flat[:, columns].view(t.shape)
            view.copy_(t)
            self.views[name] = view.requires_grad_()
            self.grads[name] = self.grad[:, columns].view(t.shape)
            decay[:, columns] = float(name in decayed)
            offset += t[0].numel()
        self.decayed = decay.to(device)

    def backward(self, loss: torch.Tensor) -> None:
        """∂loss/∂(every trained number) into ``grad``: one backward pass, one copy.

        Not ``loss.backward()`` into ``.grad`` attributes: for K > 1 the views are strided
        (a row per model), and autograd would warn on every accumulation into them.
        """
        names = list(self.views)
        grads = torch.autograd.grad(loss, [self.views[n] for n in names], allow_unused=True)
        for name, g in zip(names, grads, strict=True):
            if g is None:
                self.grads[name].zero_()
            else:
                self.grads[name].copy_(g)


class Net(Protocol):
    """What the loop needs of K models: their parameters and the layers it records."""

    params: FlatParams
    weights: dict[str, torch.Tensor]  # recorded layer → its K × … weight (a view of params)
    invariant: dict[str, str]  # scale-invariant layer → "unit" or "tensor"
    training: bool


def _stack(per_model: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return {name: torch.stack([m[name] for m in per_model]) for name in per_model[0]}


# --- the ConvNet ----------------------------------------------------------------------------


def _default_init(
    shape: tuple[int, ...], bias: bool, g: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """nn.Conv2d's and nn.Linear's reset_parameters, drawing from ``g``."""
    w = torch.empty(shape)
    nn.init.kaiming_uniform_(w, a=math.sqrt(5), generator=g)
    if not bias:
        return w, None
    bound = 1 / math.sqrt(math.prod(shape[1:]))  # 1/√fan_in
    return w, torch.empty(shape[0]).uniform_(-bound, bound, generator=g)


def init_convnet(
    seed: int, width: int, norm: Norm, head: Head, affine: bool
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """One model's initial (trained parameters, buffers), by nn.Module names.

    The same numbers as ``torch.manual_seed(seed)`` then building the nn.Module ConvNet of
    l2bn ≤ 0.1 (PyTorch's default Conv2d/Linear init, in layer order; results recorded
    before the one engine stay comparable), but drawn from a local generator: the global RNG
    is not touched.
    """
    g = torch.Generator().manual_seed(seed)
    params: dict[str, torch.Tensor] = {}
    buffers: dict[str, torch.Tensor] = {}
    chans = [3, width, 2 * width, 4 * width, 8 * width]
    for i in range(1, 5):
        # A bias before a normalization is removed by it; keep one only without norm.
        w, b = _default_init((chans[i], chans[i - 1], 3, 3), norm is Norm.none, g)
        if norm is Norm.wn:  # w = gain·v/‖v‖ per output channel, gain initialized to ‖w‖
            gain = torch.norm_except_dim(w, 2, 0)
            (params if affine else buffers)[f"conv{i}.parametrizations.weight.original0"] = gain
            params[f"conv{i}.parametrizations.weight.original1"] = w
        else:
            params[f"conv{i}.weight"] = w
        if b is not None:
            params[f"conv{i}.bias"] = b
        if norm in (Norm.bn, Norm.ln) and affine:
            params[f"norm{i}.weight"] = torch.ones(chans[i])
            params[f"norm{i}.bias"] = torch.zeros(chans[i])
        if norm is Norm.bn:
            buffers[f"norm{i}.running_mean"] = torch.zeros(chans[i])
            buffers[f"norm{i}.running_var"] = torch.ones(chans[i])
    w, b = _default_init((NUM_CLASSES, chans[4]), head is Head.linear, g)
    params["fc.weight"] = w
    if b is not None:
        params["fc.bias"] = b
    if head is Head.bn:  # BN on the logits makes the classifier scale-invariant too
        if affine:
            params["fc_norm.weight"] = torch.ones(NUM_CLASSES)
            params["fc_norm.bias"] = torch.zeros(NUM_CLASSES)
        buffers["fc_norm.running_mean"] = torch.zeros(NUM_CLASSES)
        buffers["fc_norm.running_var"] = torch.ones(NUM_CLASSES)
    return params, buffers


def recorded_weights(norm: Norm) -> dict[str, str]:
    """Layer → the parameter whose norm l2bn records and λ decays, in forward order.

    For weight normalization that is the direction v (``original1``): the layer is invariant
    to its scale and weight decay acts on it; the gain behaves like BN's γ.
    """
    conv = "parametrizations.weight.original1" if norm is Norm.wn else "weight"
    return {**{layer: f"{layer}.{conv}" for layer in CONV_LAYERS}, "fc": "fc.weight"}


class ConvNets:
    """K ConvNets (one architecture, seed k's initialization for model k) as one network."""

    def __init__(
        self,
        seeds: Sequence[int],
        width: int,
        norm: Norm,
        head: Head,
        affine: bool,
        device: torch.device,
        dtype: torch.dtype = torch.float32,  # of parameters and buffers (autocast is separate)
        eps_scales: Sequence[float] | None = None,  # per model: normalization ε × scale²
    ) -> None:
        inits = [init_convnet(s, width, norm, head, affine) for s in seeds]
        self.k, self.norm, self.head = len(seeds), norm, head
        names = recorded_weights(norm)
        params = {n: t.to(dtype) for n, t in _stack([p for p, _ in inits]).items()}
        self.params = FlatParams(params, names.values(), device)
        self.buffers = {n: t.to(device, dtype) for n, t in _stack([b for _, b in inits]).items()}
        self.weights = {layer: self.params.views[name] for layer, name in names.items()}
        self.invariant = scale_invariant_layers(norm, head)
        self.training = True
        # On the CPU, K > 1: model by model, bit for bit a run alone (True), or one grouped
        # network, faster at small widths but rounding by its partners (False; the sweep
        # file's cpu_fusion = "grouped"). CUDA always runs the grouped network.
        self.exact = True
        # norm((x − μ)/√(σ² + ε·S²)) = norm(x/S with ε): dividing the normalized layer's input
        # by S (exact for a power of two) is ε·S², per model, with one ε for the fused K.
        self.inv_scale = (
            None
            if eps_scales is None or all(x == 1.0 for x in eps_scales)
            else torch.tensor([1.0 / x for x in eps_scales], dtype=dtype, device=device)
        )

    def _unscale(self, x: torch.Tensor, models: slice) -> torch.Tensor:
        """x (B × n·C × …) with model m's channels ÷ S_m: the normalization's ε·S_m²."""
        if self.inv_scale is None:
            return x
        scales = self.inv_scale[models]
        per_channel = scales.repeat_interleave(x.shape[1] // scales.numel())
        return x * per_channel.view(1, -1, *[1] * (x.dim() - 2))

    def _get(self, name: str, models: slice) -> torch.Tensor | None:
        """A trained or frozen tensor of ``models``, their values side by side (None: the layer
        has none). Rows of the stacked tensors: in-place updates (running statistics) land in
        the buffers."""
        t = self.params.views.get(name, self.buffers.get(name))
        return None if t is None else t[models].reshape(-1, *t.shape[2:])

    def _conv_weight(self, i: int, models: slice) -> torch.Tensor:
        """n·C_out × C_in × 3 × 3, model-major."""
        if self.norm is Norm.wn:
            v = self._get(f"conv{i}.parametrizations.weight.original1", models)
            gain = self._get(f"conv{i}.parametrizations.weight.original0", models)
            assert v is not None and gain is not None
            return torch._weight_norm(v, gain, 0)  # what the WN parametrization computes
        w = self._get(f"conv{i}.weight", models)
        assert w is not None
        return w

    def _bn(self, x: torch.Tensor, prefix: str, models: slice) -> torch.Tensor:
        mean = self._get(f"{prefix}.running_mean", models)
        var = self._get(f"{prefix}.running_var", models)
        return F.batch_norm(
            self._unscale(x, models),
            mean,  # views of self.buffers: updated in place
            var,
            self._get(f"{prefix}.weight", models),  # None without affine: γ = 1, β = 0
            self._get(f"{prefix}.bias", models),
            self.training,
            BN_MOMENTUM,
            NORM_EPS,
        )

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """B × K·3 × H × W (model k's images in channels 3k…3k+2) → logits K × B × 10.

        On CUDA the K models run as one grouped network. On the CPU each model runs on its
        own, the very computation of K = 1, so that a point trains bit for bit alike whatever
        its partners: over the K models at once, oneDNN's grouped convolutions round unlike
        its plain ones, and batch norm's kernels vectorize across channels, so a model's
        rounding would depend on where its channels fall among its partners'. On the CPU
        fusing gained nothing measurable this way (benchmarks/bench_grid.py: ×1.02-1.03 at
        width 8), and K = 1 is its default."""
        if not self.exact:
            return self._forward(x, slice(0, self.k))
        return by_model(self.k, x.device, lambda models: self._forward(x, models))

    def _forward(self, x: torch.Tensor, models: slice) -> torch.Tensor:
        """The models ``models`` (a contiguous range of n) on their images → n × B × 10."""
        n = models.stop - models.start
        if n != self.k:
            x = x[:, 3 * models.start : 3 * models.stop]
        for i in range(1, 5):
            x = F.conv2d(
                x,
                self._conv_weight(i, models),
                self._get(f"conv{i}.bias", models),
                padding=1,
                groups=n,
            )
            if self.norm is Norm.bn:
                x = self._bn(x, f"norm{i}", models)
            elif self.norm is Norm.ln:  # over (C, H, W) of each sample and model
                gamma = self._get(f"norm{i}.weight", models)
                beta = self._get(f"norm{i}.bias", models)
                x = F.group_norm(self._unscale(x, models), n, gamma, beta, NORM_EPS)
            # Max-pooling commutes with ReLU (both monotone), so pooling first gives the same
            # numbers and gradients while ReLU touches a quarter of the values (CPU: ~10 %).
            if i < 4:
                x = F.max_pool2d(x, 2)
            x = torch.relu(x)
        b = x.shape[0]
        feats = x.mean(dim=(2, 3)).view(b, n, -1).transpose(0, 1)  # n × B × 8c
        w = self.params.views["fc.weight"][models].transpose(1, 2)  # n × 8c × 10
        bias = self.params.views.get("fc.bias")
        if bias is not None:
            bias = bias[models]
        logits = torch.bmm(feats, w) if bias is None else torch.baddbmm(bias[:, None], feats, w)
        if self.head is Head.bn:
            flat = logits.transpose(0, 1).reshape(b, n * NUM_CLASSES)
            logits = self._bn(flat, "fc_norm", models).view(b, n, -1).transpose(0, 1)
        return logits


# --- the tracking toy -----------------------------------------------------------------------


def init_tracking(seed: int, units: int, dim: int) -> torch.Tensor:
    """One toy's initial weight, as ``torch.manual_seed(seed)`` then l2bn ≤ 0.1's
    ``nn.Linear(dim, units)`` re-drawn from N(0, 1/dim) gave it, from a local generator."""
    g = torch.Generator().manual_seed(seed)
    w, _ = _default_init((units, dim), False, g)  # drawn and overwritten: keeps the stream
    return nn.init.normal_(w, std=1 / math.sqrt(dim), generator=g)  # unit norms ≈ 1


class TrackingNets:
    """K sets of U independent unit vectors u = w/‖w‖ in R^d: scale-invariant per unit."""

    def __init__(self, seeds: Sequence[int], units: int, dim: int, device: torch.device) -> None:
        w = torch.stack([init_tracking(s, units, dim) for s in seeds])
        self.params = FlatParams({"w.weight": w}, ["w.weight"], device)
        self.weights = {"w": self.params.views["w.weight"]}
        self.invariant = {"w": "unit"}
        self.training = True

    def __call__(self) -> torch.Tensor:
        """u: K × U × D."""
        return F.normalize(self.weights["w"], dim=2)


def by_model(
    k: int, device: torch.device, fn: Callable[[slice], torch.Tensor], dim: int = 0
) -> torch.Tensor:
    """``fn`` of all K models at once, or on the CPU model by model, concatenated along ``dim``:
    a CPU kernel's rounding (reduction order, vector body or scalar tail) follows the tensor's
    shape, and a model's numbers must not depend on its partners (ConvNets.__call__)."""
    if device.type == "cpu" and k > 1:
        return torch.cat([fn(slice(m, m + 1)) for m in range(k)], dim=dim)
    return fn(slice(0, k))


@torch.no_grad()
def layer_norms(weights: dict[str, torch.Tensor]) -> torch.Tensor:
    """layers × K × (‖w‖, mean unit norm) of K-stacked weights, on their device (on the CPU
    model by model: a reduction's order may follow the tensor's shape, and a model's numbers
    must not depend on its partners)."""

    def norms(w: torch.Tensor, models: slice) -> torch.Tensor:
        return torch.stack(
            [
                torch.linalg.vector_norm(w[models].flatten(1), dim=1),
                torch.linalg.vector_norm(w[models].flatten(2), dim=2).mean(dim=1),
            ],
            dim=1,
        )

    rows = []
    for w in weights.values():
        wf = w.float()
        rows.append(by_model(wf.shape[0], wf.device, functools.partial(norms, wf)))
    return torch.stack(rows)
