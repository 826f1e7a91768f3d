"""What is trained: the image task and the tracking toy, each for K models side by side.

The loop (l2bn.train.engine) only sees a :class:`Task`: a network of K models, batches, a loss
per model, and an error per model to report. Everything that differs between data sets lives
here. Each model draws its data order, augmentation and noise from its own generator seeded
with its run's seed, exactly as a run of its own would: model k of K equals a K = 1 run.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any, Protocol

import torch
from torch.nn import functional as F

from l2bn.errors import ConfigError
from l2bn.train import data as D
from l2bn.train.config import DatasetName, TrainConfig
from l2bn.train.models import ConvNets, Net, TrackingNets

# On the CPU the chunk is a fixed number of images whatever K: the losses are summed chunk by
# chunk, and a chunk that shrank with K would sum a point's losses in another order.
CPU_EVAL_CHUNK = 128
# On CUDA a chunk holds as many images × models as a share of the free device memory allows
# (eval_chunk), between a floor and a cap: fewer, larger chunks keep the GPU busy.
EVAL_MEMORY_SHARE = 0.25  # of the free memory: other workers may share the GPU
EVAL_MAX_IMAGES = 8192  # images × models: 8× the old fixed chunk; launch costs are gone by then
EVAL_MIN_CHUNK = 64  # images


def eval_chunk(free_bytes: int, k: int, bytes_per_image: int) -> int:
    """Images per evaluation chunk on CUDA for K models, each image costing
    ``bytes_per_image`` of activations per model, with ``free_bytes`` of device memory free."""
    fits = int(EVAL_MEMORY_SHARE * free_bytes) // (k * bytes_per_image)
    return max(EVAL_MIN_CHUNK, min(EVAL_MAX_IMAGES // k, fits))


def eval_bytes_per_image(width: int, pixels: int) -> int:
    """Peak activation bytes of one image through one model in evaluation (no autograd),
    twice over for the allocator's rounding and cuDNN's workspace: while the first (widest)
    layer runs, the fp32 input (3 channels), its convolution's output and the normalization's
    output (``width`` channels each) are alive; every later layer is at most as large."""
    return 2 * 4 * pixels * (3 + 2 * width)


class Task(Protocol):
    @property
    def model(self) -> Net: ...

    steps_per_epoch: int
    chance_error: float  # reported for a diverged run
    bf16: bool  # whether bf16 autocast may be used (the tracking toy: never)
    # Whether the step can be one CUDA graph (engine.py): batches are tuples of device tensors
    # of fixed shapes and losses() keeps no host state.
    graphable: bool

    def batches(self, epoch: int) -> Iterator[Any]:
        """The epoch's batches, in order; nothing here may sync with the host."""
        ...

    def losses(self, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean loss of each model, K; its errors in the batch, K), on the device."""
        ...

    def batch_size(self, batch: Any) -> int: ...

    def evaluate(self, split: str) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Each model's error and loss on ``"val"`` or ``"test"``: (errors summed over the N
        items, K values on the device; losses summed likewise, K; N). The caller divides on
        the host, in double precision."""
        ...


class ImageTask:
    """CIFAR-10 (or the synthetic images) with the paper's ConvNet."""

    chance_error = 0.9
    bf16 = True
    graphable = True

    def __init__(
        self, configs: Sequence[TrainConfig], device: torch.device, download: bool = False
    ) -> None:
        base = configs[0]
        data_dir = None if base.dataset is DatasetName.synthetic else base.resolved_data_dir()
        self.data = D.load_image_data(
            base.dataset.value, data_dir, base.val_fraction, str(device), download
        )
        if base.batch_size > len(self.data.train):
            raise ConfigError(
                f"batch-size {base.batch_size} exceeds the {len(self.data.train)} training "
                f"images; use a smaller --batch-size"
            )
        self.k = len(configs)
        self.per_batch, self.augment = base.batch_size, base.augment
        self.width = base.width
        self.chunk: int | None = None  # images per evaluation chunk on CUDA (_cuda_chunk)
        # Drop the last partial batch: a fixed step count per epoch, and no tiny BN batches.
        self.steps_per_epoch = len(self.data.train) // base.batch_size
        self.model = ConvNets(
            [c.seed for c in configs],
            base.width,
            base.norm,
            base.head,
            base.affine,
            device,
            eps_scales=[c.init_scale for c in configs] if base.scale_eps else None,
        )
        self.generators = [torch.Generator(device=device).manual_seed(c.seed) for c in configs]
        # Normalization of K models' channels at once: the CIFAR statistics tiled K times.
        self.mean = self.data.mean.repeat(1, self.k, 1, 1)
        self.std = self.data.std.repeat(1, self.k, 1, 1)

    def batches(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(images B × K·3 × H × W, labels K × B) per step, each model's own permutation and
        augmentation drawn once per epoch (l2bn.train.data.epoch_images)."""
        bs, n = self.per_batch, self.steps_per_epoch * self.per_batch
        # Filled model by model: one model's epoch at a time exists beside the K × n tensors,
        # where stacking a list of K epochs would hold both through the whole epoch.
        train = self.data.train
        x = train.x.new_empty((self.k, n, *train.x.shape[1:]))  # K × n × 3 × H × W, uint8
        y = train.y.new_empty((self.k, n))
        for m, g in enumerate(self.generators):
            x[m], y[m] = D.epoch_images(train, g, n, self.augment)
        for i in range(self.steps_per_epoch):
            yield self._prepare(x[:, i * bs : (i + 1) * bs]), y[:, i * bs : (i + 1) * bs]

    def _prepare(self, x: torch.Tensor) -> torch.Tensor:
        """K × B × 3 × H × W uint8 → B × K·3 × H × W normalized float, channels_last.

        channels_last (NHWC) in every precision: bf16 kernels need it, and on a 2-core AVX2
        CPU fp32 NCHW was measured 2-3× slower per step (oneDNN reorders every conv's input).
        Layout first, on uint8: the cheapest tensor to move.
        """
        k, b, c, h, w = x.shape
        x = x.transpose(0, 1).reshape(b, k * c, h, w).contiguous(memory_format=torch.channels_last)
        return (x.float() - self.mean) / self.std

    def losses(self, batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = batch
        logits = self.model(x)  # K × B × 10
        # Per-model mean cross-entropy; their sum gives each model exactly its own gradient.
        ce = F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), reduction="none")
        wrong = (logits.argmax(2) != y).sum(1)
        return ce.view(self.k, -1).mean(1), wrong

    def batch_size(self, batch: tuple[torch.Tensor, torch.Tensor]) -> int:
        return int(batch[1].shape[1])

    def _cuda_chunk(self) -> int:
        """eval_chunk for this device, fixed at the first evaluation (after the first epoch has
        allocated what training needs): every later one sums in the same chunks and cuDNN
        autotunes their shapes once."""
        if self.chunk is None:
            free, _ = torch.cuda.mem_get_info(self.data.val.y.device)
            per_image = eval_bytes_per_image(self.width, self.data.train.x[0, 0].numel())
            self.chunk = eval_chunk(free, self.k, per_image)
        return self.chunk

    @torch.no_grad()
    def evaluate(self, split: str) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Misclassified images and summed cross-entropy (NLL, nats) per model."""
        s: D.Split = getattr(self.data, split)
        self.model.training = False  # BN: the running statistics
        wrong = torch.zeros(self.k, dtype=torch.long, device=s.y.device)
        nll = torch.zeros(self.k, device=s.y.device)
        chunk = self._cuda_chunk() if s.y.is_cuda else CPU_EVAL_CHUNK
        for i in range(0, len(s), chunk):
            xs, ys = s.x[i : i + chunk], s.y[i : i + chunk]
            logits = self.model(self._prepare(xs.expand(self.k, *xs.shape)))  # K × B × 10
            wrong += (logits.argmax(2) != ys).sum(1)
            targets = ys.expand(self.k, -1).flatten()
            ce = F.cross_entropy(logits.float().flatten(0, 1), targets, reduction="none")
            nll += ce.view(self.k, -1).sum(1)
        self.model.training = True
        return wrong, nll, len(s)


class TrackingTask:
    """A toy with a known optimum: follow a target that moves on the sphere, under noise.

    loss = Σ_units 1 − u·(a_t + σξ), with u = w/‖w‖, a_t turning at ω rad/step on a great
    circle and ξ ~ N(0, I). Its gradient is the noise and the pull towards a_t, projected
    orthogonal to w and scaled by 1/‖w‖, exactly like a BN layer's. Too small an effective
    learning rate lags behind the target; too large a one is dominated by the noise; the best
    one is a property of the angular update alone, so η* follows the theory's λ^-k exactly
    once ‖w‖ has settled (ηλ·T ≫ 1). The "error" is the noise-free 1 − u·a_t, averaged over
    each epoch's steps (chance level: 1, a random direction).

    The K models share the targets (a fixed seed) and draw their own noise (their run's seed).
    Always fp32: the toy is tiny, and bf16 would only add noise to a noise study.
    """

    chance_error = 1.0
    bf16 = False
    graphable = False  # the target is computed and the noise drawn on the host, per step
    UNITS = 16
    DIM = 32
    OMEGA = 5e-3  # rad/step: fast enough that the best η settles within ~300 steps
    SIGMA = 1.0
    STEPS_PER_EPOCH = 200
    TARGET_SEED = 1234  # the same targets for every run, whatever its seed

    def __init__(self, configs: Sequence[TrainConfig], device: torch.device) -> None:
        self.k = len(configs)
        self.model = TrackingNets([c.seed for c in configs], self.UNITS, self.DIM, device)
        self.steps_per_epoch = self.STEPS_PER_EPOCH
        g = torch.Generator().manual_seed(self.TARGET_SEED)
        basis, _ = torch.linalg.qr(torch.randn(self.UNITS, self.DIM, 2, generator=g))
        self.e1, self.e2 = basis[..., 0].to(device), basis[..., 1].to(device)
        self.generators = [torch.Generator(device=device).manual_seed(c.seed) for c in configs]
        self.step = 0
        self._error_sum = torch.zeros(self.k, device=device)
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

    def losses(self, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        a = self.target(batch)  # U × D
        noise = torch.stack(  # one draw per model and step, as a run of its own draws it
            [torch.randn(a.shape, device=a.device, generator=g) for g in self.generators]
        )
        u = self.model()  # K × U × D
        losses = (1 - (u * (a + self.SIGMA * noise)).sum(2)).sum(1)
        error = (1 - (u.detach() * a).sum(2)).mean(1)
        self._error_sum += error
        self._error_count += 1
        return losses, error

    def batch_size(self, batch: int) -> int:
        return 1

    def evaluate(self, split: str) -> tuple[torch.Tensor, torch.Tensor, int]:
        # The tracking error averaged over the last epoch: there is no held-out set, and one
        # step's error is too noisy to pick η* from. The noise-free loss per unit, 1 − u·a_t,
        # is that error itself: the loss reported is the error.
        return self._error_sum, self._error_sum, max(1, self._error_count)


def make_task(configs: Sequence[TrainConfig], device: torch.device, download: bool = False) -> Task:
    """The task of K configs that differ only in η, λ and seed (config.check_batchable)."""
    if configs[0].dataset is DatasetName.tracking:
        return TrackingTask(configs, device)
    return ImageTask(configs, device, download)
