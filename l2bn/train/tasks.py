"""What is trained: the image classification task and the tracking toy, behind one interface.

The training loop (l2bn.train.engine) only sees a :class:`Task`: a model, batches, a loss, and an
error to report. Everything that differs between data sets lives here.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any, ClassVar, Protocol

import torch
from torch import nn

from l2bn.errors import ConfigError
from l2bn.train import data as D
from l2bn.train.config import DatasetName, TrainConfig
from l2bn.train.models import ConvNet


class Task(Protocol):
    model: nn.Module
    steps_per_epoch: int
    chance_error: float  # reported for a diverged run

    def batches(self, epoch: int) -> Iterator[Any]:
        """The epoch's batches, in order; nothing here may sync with the host."""
        ...

    def loss(self, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean loss to minimize, number of errors in the batch), both device scalars."""
        ...

    def batch_size(self, batch: Any) -> int: ...

    def evaluate(self, split: str) -> float:
        """Error rate on ``"val"`` or ``"test"``."""
        ...


class ImageTask:
    """CIFAR-10 (or the synthetic images) with the paper's ConvNet."""

    chance_error = 0.9

    def __init__(
        self,
        config: TrainConfig,
        device: torch.device,
        channels_last: bool,
        download: bool = False,
    ) -> None:
        data_dir = None if config.dataset is DatasetName.synthetic else config.resolved_data_dir()
        self.data = D.load_image_data(
            config.dataset.value, data_dir, config.val_fraction, str(device), download
        )
        if config.batch_size > len(self.data.train):
            raise ConfigError(
                f"batch-size {config.batch_size} exceeds the {len(self.data.train)} training "
                f"images; use a smaller --batch-size"
            )
        self.config = config
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.model: nn.Module = ConvNet(
            config.width, config.norm, config.head, affine=config.affine
        ).to(device)
        self.model.to(memory_format=self.memory_format)  # type: ignore[call-overload]
        # Drop the last partial batch: a fixed step count per epoch, and no tiny BN batches.
        self.steps_per_epoch = len(self.data.train) // config.batch_size
        self.generator = torch.Generator(device=device).manual_seed(config.seed)

    def batches(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        bs = self.config.batch_size
        x, y = D.epoch_images(
            self.data.train, self.generator, self.steps_per_epoch * bs, self.config.augment
        )
        for i in range(self.steps_per_epoch):
            yield self._prepare(x[i * bs : (i + 1) * bs]), y[i * bs : (i + 1) * bs]

    def _prepare(self, x: torch.Tensor) -> torch.Tensor:
        return D.normalize(x, self.data, torch.float32).contiguous(memory_format=self.memory_format)

    def loss(self, batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = batch
        logits = self.model(x)
        loss = nn.functional.cross_entropy(logits.float(), y)
        wrong = (logits.argmax(1) != y).sum()
        return loss, wrong

    def batch_size(self, batch: tuple[torch.Tensor, torch.Tensor]) -> int:
        return int(batch[1].shape[0])

    @torch.no_grad()
    def evaluate(self, split: str) -> float:
        s: D.Split = getattr(self.data, split)
        was_training = self.model.training
        self.model.eval()
        wrong = torch.zeros((), dtype=torch.long, device=s.y.device)
        for i in range(0, len(s), 1024):
            logits = self.model(self._prepare(s.x[i : i + 1024]))
            wrong += (logits.argmax(1) != s.y[i : i + 1024]).sum()
        self.model.train(was_training)
        return wrong.item() / len(s)


class TrackingModel(nn.Module):
    """U independent unit vectors u = w/‖w‖ in R^d: scale-invariant per unit by construction."""

    scale_invariant: ClassVar[dict[str, str]] = {"w": "unit"}

    def __init__(self, units: int, dim: int) -> None:
        super().__init__()
        self.w = nn.Linear(dim, units, bias=False)
        nn.init.normal_(self.w.weight, std=1 / math.sqrt(dim))  # unit norms ≈ 1

    def forward(self) -> torch.Tensor:
        u: torch.Tensor = nn.functional.normalize(self.w.weight, dim=1)
        return u


class TrackingTask:
    """A toy with a known optimum: follow a target that moves on the sphere, under noise.

    loss = Σ_units 1 − u·(a_t + σξ), with u = w/‖w‖, a_t turning at ω rad/step on a great
    circle and ξ ~ N(0, I). Its gradient is the noise and the pull towards a_t, projected
    orthogonal to w and scaled by 1/‖w‖, exactly like a BN layer's. Too small an effective
    learning rate lags behind the target; too large a one is dominated by the noise; the best
    one is a property of the angular update alone, so η* follows the theory's λ^-k exactly
    once ‖w‖ has settled (ηλ·T ≫ 1). The "error" is the noise-free 1 − u·a_t, averaged over
    each epoch's steps (chance level: 1, a random direction).
    """

    chance_error = 1.0
    UNITS = 16
    DIM = 32
    OMEGA = 5e-3  # rad/step: fast enough that the best η settles within ~300 steps
    SIGMA = 1.0
    STEPS_PER_EPOCH = 200
    TARGET_SEED = 1234  # the same targets for every run, whatever its seed

    def __init__(self, config: TrainConfig, device: torch.device) -> None:
        torch.manual_seed(config.seed)
        self.model: nn.Module = TrackingModel(self.UNITS, self.DIM).to(device)
        self.steps_per_epoch = self.STEPS_PER_EPOCH
        g = torch.Generator().manual_seed(self.TARGET_SEED)
        basis, _ = torch.linalg.qr(torch.randn(self.UNITS, self.DIM, 2, generator=g))
        self.e1, self.e2 = basis[..., 0].to(device), basis[..., 1].to(device)
        self.generator = torch.Generator(device=device).manual_seed(config.seed)
        self.step = 0
        self._error_sum = torch.zeros((), device=device)
        self._error_count = 0

    def target(self, step: int) -> torch.Tensor:
        angle = self.OMEGA * step
        a: torch.Tensor = math.cos(angle) * self.e1 + math.sin(angle) * self.e2
        return a

    def batches(self, epoch: int) -> Iterator[int]:
        self._error_sum.zero_()
        self._error_count = 0
        for _ in range(self.steps_per_epoch):
            yield self.step
            self.step += 1

    def loss(self, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        a = self.target(batch)
        noise = torch.randn(a.shape, device=a.device, generator=self.generator, dtype=a.dtype)
        u = self.model()
        loss = (1 - (u * (a + self.SIGMA * noise)).sum(1)).sum()
        error = (1 - (u.detach() * a).sum(1)).mean()
        self._error_sum += error
        self._error_count += 1
        return loss, error

    def batch_size(self, batch: int) -> int:
        return 1

    def evaluate(self, split: str) -> float:
        # The tracking error averaged over the last epoch: there is no held-out set, and one
        # step's error is too noisy to pick η* from.
        return float(self._error_sum.item()) / max(1, self._error_count)


def make_task(
    config: TrainConfig,
    device: torch.device,
    channels_last: bool = False,
    download: bool = False,
) -> Task:
    if config.dataset is DatasetName.tracking:
        return TrackingTask(config, device)
    torch.manual_seed(config.seed)  # model initialization
    return ImageTask(config, device, channels_last, download)
