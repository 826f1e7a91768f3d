"""The fused grid engine: K grid points of one optimizer trained as one wide network.

A small ConvNet leaves a GPU mostly idle; K of them side by side do not (HFTA, arXiv
2102.02344). The K nets become one: convolutions with ``groups=K`` (model k's channels are
the k-th block of K·C), batch norm over K·C channels (so every model keeps its own batch
statistics and running averages), and the classifier as one batched matmul. Each model has
its own η, λ, seed (initialization, data order and augmentation), optimizer state and loss;
the summed loss gives every model exactly its own gradient. Nothing is global: a model whose
loss turns non-finite is frozen (its parameters stop changing) and recorded as diverged at the
end of that epoch, as the unfused loop would, while the others train on untouched.

All K models' parameters live in one flat buffer (``FusedConvNet.flat``), each parameter a
contiguous K×shape view of it, and autograd accumulates into a matching flat gradient: the
optimizer step (l2bn.train.functional_optim) is a few elementwise kernels for the whole grid.

With K = 1 this is the plain ConvNet step for step (tests/test_fused.py), and each fused model
produces the same :class:`~l2bn.records.TrainResult` as :func:`l2bn.train.train`.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch.nn import functional as F

from l2bn import __version__
from l2bn.errors import ConfigError
from l2bn.theory import THEORY
from l2bn.train import data as D
from l2bn.train.config import DatasetName, Head, Norm, Precision, TrainConfig
from l2bn.train.device import resolve_device, resolve_precision
from l2bn.train.functional_optim import FlatOptimizer
from l2bn.train.models import ConvNet, scale_invariant_layers, weight_tensors
from l2bn.train.norms import layer_record
from l2bn.train.optim import SPECS
from l2bn.train.records import EpochRecord, LayerRecord, TrainResult
from l2bn.train.tasks import ImageTask

FusedEpochCallback = Callable[[int, EpochRecord], None]  # (model index, its record)
BatchCallback = Callable[[int, int, int], None]  # (epoch, batch, batches per epoch), 1-based
PER_MODEL_FIELDS = ("lr", "weight_decay", "seed")
EVAL_IMAGES = 1024  # images × models per evaluation chunk (bounds activation memory)
BN_MOMENTUM, BN_EPS = 0.1, 1e-5  # nn.BatchNorm's defaults, as in ConvNet


def check_fusable(configs: Sequence[TrainConfig]) -> None:
    """Raise ConfigError unless these runs can share one fused net: image tasks that differ
    in η, λ and seed only."""
    if not configs:
        raise ConfigError("nothing to fuse: no runs given")
    base = configs[0]
    if base.dataset is DatasetName.tracking:
        raise ConfigError("the tracking toy is not fused; run it unfused (--fuse 1)")
    if not base.affine:  # the flat buffer and per-model BN/LN/WN kernels carry γ/β
        raise ConfigError("--no-affine (affine = false) runs unfused only: use --fuse 1")
    shared = base.with_(lr=1.0, weight_decay=0.0, seed=0)
    for c in configs[1:]:
        if c.with_(lr=1.0, weight_decay=0.0, seed=0) != shared:
            raise ConfigError("fused runs must differ only in lr, weight-decay and seed")


@dataclass(frozen=True)
class _Slot:
    offset: int  # of this parameter's K×shape block in the flat buffer
    shape: tuple[int, ...]  # one model's


class FusedConvNet:
    """K ConvNets (one architecture, K initializations) as one network.

    Parameters are keyed by their ConvNet names (``conv1.weight``, ``norm1.bias``, …) and
    have a leading model axis: ``params["conv1.weight"][k]`` is model k's conv1 weight.
    """

    def __init__(self, configs: Sequence[TrainConfig], device: torch.device) -> None:
        base = configs[0]
        self.k = len(configs)
        self.norm, self.head, self.width = base.norm, base.head, base.width
        nets = []
        for c in configs:
            # The same initialization as the unfused run: l2bn.tasks.make_task seeds, then builds.
            torch.manual_seed(c.seed)
            nets.append(ConvNet(c.width, c.norm, c.head))
        template = nets[0]
        named = dict(template.named_parameters())
        decayed_ids = {id(t) for t in weight_tensors(template).values()}
        self.slots: dict[str, _Slot] = {}
        offset = 0
        for name, p in named.items():
            self.slots[name] = _Slot(offset, tuple(p.shape))
            offset += self.k * p.numel()
        self.flat = torch.empty(offset, device=device)
        self.grad = torch.zeros(offset, device=device)
        self.model_of = torch.empty(offset, dtype=torch.long, device=device)
        self.decayed = torch.zeros(offset, device=device)
        self.decayed_all = torch.ones(offset, device=device)
        self.params: dict[str, torch.Tensor] = {}
        for name, slot in self.slots.items():
            n = math.prod(slot.shape)
            block = slice(slot.offset, slot.offset + self.k * n)
            view = self.flat[block].view(self.k, *slot.shape)
            with torch.no_grad():
                view.copy_(torch.stack([dict(net.named_parameters())[name] for net in nets]))
            view.requires_grad_()
            # Autograd adds into a gradient that already exists in place: into the flat buffer.
            view.grad = self.grad[block].view(self.k, *slot.shape)
            self.params[name] = view
            self.model_of[block] = torch.arange(self.k, device=device).repeat_interleave(n)
            if id(named[name]) in decayed_ids:
                self.decayed[block] = 1.0
        self.buffers: dict[str, torch.Tensor] = {
            name: torch.stack([dict(net.named_buffers())[name] for net in nets]).to(device)
            for name, _ in template.named_buffers()
            if not name.endswith("num_batches_tracked")  # unused: BN's momentum is fixed
        }
        # The recorded weight of each layer (conv1..conv4, fc), by parameter name.
        name_of = {id(p): name for name, p in named.items()}
        self.layer_weights = {
            layer: self.params[name_of[id(t)]] for layer, t in weight_tensors(template).items()
        }
        self.invariant = scale_invariant_layers(template)
        self.training = True

    # --- forward ------------------------------------------------------------------------

    def _conv_weight(self, i: int) -> torch.Tensor:
        if self.norm is Norm.wn:
            g = self.params[f"conv{i}.parametrizations.weight.original0"]
            v = self.params[f"conv{i}.parametrizations.weight.original1"]
            norm = torch.linalg.vector_norm(v.flatten(2), dim=2)
            w: torch.Tensor = v * (g / norm[..., None, None, None])  # torch._weight_norm
        else:
            w = self.params[f"conv{i}.weight"]
        return w.reshape(-1, *w.shape[2:])  # K·C_out × C_in × 3 × 3, model-major

    def _bn(self, x: torch.Tensor, prefix: str) -> torch.Tensor:
        return F.batch_norm(
            x,
            self.buffers[f"{prefix}.running_mean"].view(-1),  # views: updated in place
            self.buffers[f"{prefix}.running_var"].view(-1),
            self.params[f"{prefix}.weight"].reshape(-1),
            self.params[f"{prefix}.bias"].reshape(-1),
            self.training,
            BN_MOMENTUM,
            BN_EPS,
        )

    def _norm(self, x: torch.Tensor, i: int) -> torch.Tensor:
        if self.norm is Norm.bn:
            return self._bn(x, f"norm{i}")
        if self.norm is Norm.ln:
            b, kc, h, w = x.shape
            y = x.reshape(b, self.k, kc // self.k, h, w)
            y = F.layer_norm(y, y.shape[2:], eps=BN_EPS)
            gamma, beta = self.params[f"norm{i}.weight"], self.params[f"norm{i}.bias"]
            y = y * gamma[..., None, None] + beta[..., None, None]
            return y.reshape(b, kc, h, w)
        return x  # wn normalizes inside the conv; none has nothing

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """B × K·3 × H × W (model k's images in channels 3k..3k+2) → logits B × K × 10."""
        for i in range(1, 5):
            bias = self.params.get(f"conv{i}.bias")
            x = F.conv2d(
                x,
                self._conv_weight(i),
                None if bias is None else bias.reshape(-1),
                padding=1,
                groups=self.k,
            )
            x = self._norm(x, i)
            if i < 4:
                x = F.max_pool2d(x, 2)  # before ReLU, as in ConvNet: the same numbers
            x = torch.relu(x)
        feats = x.mean(dim=(2, 3)).view(x.shape[0], self.k, -1)  # B × K × 8c
        w = self.params["fc.weight"]  # K × 10 × 8c
        logits = torch.einsum("bkc,koc->bko", feats, w.to(feats.dtype))
        if "fc.bias" in self.params:
            logits = logits + self.params["fc.bias"].to(logits.dtype)
        if self.head is Head.bn:
            b = logits.shape[0]
            logits = self._bn(logits.reshape(b, -1), "fc_norm").view(b, self.k, -1)
        return logits

    # --- per-model views ----------------------------------------------------------------

    def state_dict(self, k: int) -> dict[str, torch.Tensor]:
        """Model k's parameters and BN statistics under ConvNet's names (a copy)."""
        out = {name: p[k].detach().clone() for name, p in self.params.items()}
        out.update({name: b[k].clone() for name, b in self.buffers.items()})
        return out

    @torch.no_grad()
    def project_to_unit_norm(self) -> None:
        """Normalized SGD: put every scale-invariant unit of every model back on the sphere
        (l2bn.optim.project_to_unit_norm, with a leading model axis)."""
        for layer, kind in self.invariant.items():
            w = self.layer_weights[layer]  # K × units × …
            norms = torch.linalg.vector_norm(w.flatten(2), dim=2)  # K × units
            if kind != "unit":
                norms = norms.mean(dim=1, keepdim=True)
            w.div_(norms.view(*norms.shape, *[1] * (w.dim() - 2)))

    @torch.no_grad()
    def layer_stats(self) -> torch.Tensor:
        """layers × K × (‖w‖, mean unit norm), on the device."""
        rows = []
        for w in self.layer_weights.values():
            wf = w.float()
            rows.append(
                torch.stack(
                    [
                        torch.linalg.vector_norm(wf.flatten(1), dim=1),
                        torch.linalg.vector_norm(wf.flatten(2), dim=2).mean(dim=1),
                    ],
                    dim=1,
                )
            )
        return torch.stack(rows)


class FusedTrainer:
    """Data, net, optimizer and schedule of K fused runs; :func:`train_fused` drives it."""

    def __init__(
        self,
        configs: Sequence[TrainConfig],
        device: torch.device | None = None,
        download: bool = False,
    ) -> None:
        check_fusable(configs)
        self.configs = list(configs)
        base = self.configs[0]
        self.k = len(self.configs)
        self.device = resolve_device(base.device) if device is None else device
        self.precision = resolve_precision(base.precision, self.device)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed shapes: pick the fastest kernels once
        data_dir = None if base.dataset is DatasetName.synthetic else base.resolved_data_dir()
        self.data = D.load_image_data(
            base.dataset.value, data_dir, base.val_fraction, str(self.device), download
        )
        if base.batch_size > len(self.data.train):
            raise ConfigError(
                f"batch-size {base.batch_size} exceeds the {len(self.data.train)} training "
                f"images; use a smaller --batch-size"
            )
        self.batch_size = base.batch_size
        self.steps_per_epoch = len(self.data.train) // base.batch_size
        self.net = FusedConvNet(self.configs, self.device)
        self.generators = [
            torch.Generator(device=self.device).manual_seed(c.seed) for c in self.configs
        ]
        spec = SPECS[base.optimizer]
        self.project = spec.project
        self.eff_lr_power = THEORY[base.optimizer].eff_lr_power
        wd = torch.tensor([c.weight_decay for c in self.configs], device=self.device)
        self.optimizer = FlatOptimizer(
            base.optimizer,
            self.net.flat,
            self.net.grad,
            self.net.model_of,
            self.net.decayed_all if base.decay_all else self.net.decayed,
            wd,
        )
        if self.project:
            self.net.project_to_unit_norm()  # start on the sphere, as every later step ends
        self.alive = torch.ones(self.k, dtype=torch.bool, device=self.device)
        # Normalization of K models' channels at once: the CIFAR statistics tiled K times.
        self.mean = self.data.mean.repeat(1, self.k, 1, 1)
        self.std = self.data.std.repeat(1, self.k, 1, 1)
        self.memory_format = torch.channels_last  # see l2bn.train.engine: fast on CPU and GPU
        bf16 = self.precision is Precision.bf16
        self.autocast: contextlib.AbstractContextManager[object] = (
            torch.autocast(self.device.type, dtype=torch.bfloat16)
            if bf16
            else contextlib.nullcontext()
        )

    def lrs(self, epoch: int) -> list[float]:
        return [c.lr_at(epoch) for c in self.configs]

    def start_epoch(self, epoch: int) -> None:
        self.optimizer.set_lr(torch.tensor(self.lrs(epoch), device=self.device))

    def batches(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(images B × K·3 × H × W, labels K × B) per step: each model its own permutation
        and augmentation, drawn from its own generator exactly as its unfused run would."""
        bs, n = self.batch_size, self.steps_per_epoch * self.batch_size
        epochs = [
            D.epoch_images(self.data.train, g, n, self.configs[0].augment) for g in self.generators
        ]
        x = torch.stack([e[0] for e in epochs])  # K × n × 3 × H × W, uint8
        y = torch.stack([e[1] for e in epochs])
        for i in range(self.steps_per_epoch):
            yield self._prepare(x[:, i * bs : (i + 1) * bs]), y[:, i * bs : (i + 1) * bs]

    def _prepare(self, x: torch.Tensor) -> torch.Tensor:
        """K × B × 3 × H × W uint8 → B × K·3 × H × W normalized float (l2bn.data.normalize)."""
        k, b, c, h, w = x.shape
        x = x.transpose(0, 1).reshape(b, k * c, h, w)  # uint8: the cheapest tensor to move
        x = (x.float() - self.mean) / self.std
        return x.contiguous(memory_format=self.memory_format)

    def step(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One training step of all K models: (losses K, wrong predictions K), on the device."""
        with self.autocast:
            logits = self.net(x)  # B × K × 10
        # Per-model mean cross-entropy; their sum gives each model exactly its own gradient.
        losses = F.cross_entropy(logits.float().transpose(1, 2), y.T, reduction="none").mean(0)
        wrong = (logits.argmax(2) != y.T).sum(0)
        self.net.grad.zero_()
        losses.sum().backward()
        self.alive &= torch.isfinite(losses.detach())  # a non-finite loss freezes its model
        self.optimizer.step(self.alive)
        if self.project:
            self.net.project_to_unit_norm()
        return losses.detach(), wrong

    @torch.no_grad()
    def evaluate(self, split: str) -> torch.Tensor:
        """Error rate of every model on ``"val"`` or ``"test"`` (K values, on the device)."""
        s: D.Split = getattr(self.data, split)
        self.net.training = False
        wrong = torch.zeros(self.k, dtype=torch.long, device=self.device)
        chunk = max(64, EVAL_IMAGES // self.k)
        for i in range(0, len(s), chunk):
            x = D.normalize(s.x[i : i + chunk], self.data, torch.float32)
            x = x.repeat(1, self.k, 1, 1).contiguous(memory_format=self.memory_format)
            with self.autocast:
                logits = self.net(x)
            wrong += (logits.argmax(2) != s.y[i : i + chunk, None]).sum(0)
        self.net.training = True
        return wrong / len(s)


def train_fused(
    configs: Sequence[TrainConfig],
    on_epoch: FusedEpochCallback | None = None,
    on_batch: BatchCallback | None = None,
    download: bool = False,
) -> list[TrainResult]:
    """Train every config at once; one result per config, as :func:`l2bn.train.train` gives.

    A model that diverges is recorded (chance-level errors) and stops reporting at the end
    of that epoch; the others go on. Host syncs: a few per epoch, none per step.
    """
    start = time.perf_counter()
    trainer = FusedTrainer(configs, download=download)
    k = trainer.k
    chance = ImageTask.chance_error
    histories: list[list[EpochRecord]] = [[] for _ in range(k)]
    diverged = [False] * k
    epochs = trainer.configs[0].epochs
    for epoch in range(epochs):
        epoch_start = time.perf_counter()
        trainer.start_epoch(epoch)
        lrs = trainer.lrs(epoch)
        loss_sum = torch.zeros(k, device=trainer.device)
        wrong_sum = torch.zeros(k, device=trainer.device)
        seen = 0
        for step, (x, y) in enumerate(trainer.batches(epoch)):
            losses, wrong = trainer.step(x, y)
            loss_sum += losses * y.shape[1]
            wrong_sum += wrong
            seen += y.shape[1]
            if on_batch is not None:
                on_batch(epoch + 1, step + 1, trainer.steps_per_epoch)
        val = trainer.evaluate("val")
        host = torch.cat([loss_sum / seen, wrong_sum / seen, val]).view(3, k).tolist()
        stats = trainer.net.layer_stats().cpu().tolist()  # layers × K × 2
        seconds = time.perf_counter() - epoch_start
        for m in range(k):
            if diverged[m]:
                continue
            train_loss = host[0][m]
            diverged[m] = not math.isfinite(train_loss)
            record = EpochRecord(
                epoch=epoch + 1,
                lr=lrs[m],
                train_loss=train_loss,
                train_error=chance if diverged[m] else host[1][m],
                val_error=chance if diverged[m] else host[2][m],
                seconds=seconds,
                layers=_layer_records(
                    trainer.net.layer_weights, stats, m, lrs[m], trainer.eff_lr_power
                ),
            )
            histories[m].append(record)
            if on_epoch is not None:
                on_epoch(m, record)
        if all(diverged):
            break
    test = trainer.evaluate("test").tolist()
    seconds = time.perf_counter() - start
    return [
        TrainResult(
            config=c,
            history=tuple(histories[m]),
            val_error=histories[m][-1].val_error,
            test_error=chance if diverged[m] else test[m],
            train_loss=histories[m][-1].train_loss,
            diverged=diverged[m],
            steps_per_epoch=trainer.steps_per_epoch,
            seconds=seconds,
            device=str(trainer.device),
            precision=trainer.precision.value,
            version=__version__,
        )
        for m, c in enumerate(trainer.configs)
    ]


def _layer_records(
    layers: dict[str, torch.Tensor],
    stats: list[list[list[float]]],
    m: int,
    lr: float,
    eff_lr_power: int,
) -> dict[str, LayerRecord]:
    """Model m's records, as l2bn.norms.layer_records computes them for an unfused run."""
    return {
        name: layer_record(per_model[m][0], per_model[m][1], lr, eff_lr_power)
        for name, per_model in zip(layers, stats, strict=True)
    }
