"""What one training run is: a frozen, validated :class:`TrainConfig`.

Conventions used everywhere in l2bn:

* ``lr`` is η, the optimizer's learning rate, in the optimizer's own units.
* ``weight_decay`` is λ in PyTorch's convention: the gradient gets ``+ λ·w`` (coupled L2) for
  every optimizer except ``adamw``, where PyTorch decays ``w ← w − η·λ·w`` (decoupled).
  The paper writes the penalty as ``λ_paper·‖w‖²``, whose gradient is ``2·λ_paper·w``: so
  ``weight_decay = 2·λ_paper``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields, replace
from enum import Enum, StrEnum
from pathlib import Path
from typing import Any

from l2bn.errors import ConfigError


class OptimizerName(StrEnum):
    sgd = "sgd"
    momentum = "momentum"
    nesterov = "nesterov"
    rmsprop = "rmsprop"
    adam = "adam"
    adamw = "adamw"
    normalized_sgd = "normalized-sgd"


class Norm(StrEnum):
    bn = "bn"  # BatchNorm2d after every conv
    wn = "wn"  # weight normalization (torch.nn.utils.parametrizations.weight_norm)
    ln = "ln"  # layer norm over (C, H, W) of each sample
    none = "none"


class Head(StrEnum):
    linear = "linear"  # Linear(8c → classes) with bias: feels η alone, not scale-invariant
    bn = "bn"  # bias-free Linear + BatchNorm1d on the logits: every weight is scale-invariant


CONV_LAYERS = ("conv1", "conv2", "conv3", "conv4")  # the ConvNet's layers, in forward order


def scale_invariant_layers(norm: Norm, head: Head) -> dict[str, str]:
    """The ConvNet's layers whose output does not change when their weights are scaled, and how.

    ``"unit"``: each output unit separately (BN and WN per channel, BN on the logits);
    ``"tensor"``: only the whole tensor at once (layer norm mixes all channels). Normalized SGD
    keeps exactly these at unit norm; ``init_scale`` multiplies exactly these. Here, torch-free,
    so that the models (l2bn.train.models) and the analysis
    (l2bn.analysis.estimating.equilibrium) share
    one rule.
    """
    out: dict[str, str] = {}
    if norm is not Norm.none:
        kind = "tensor" if norm is Norm.ln else "unit"
        out.update(dict.fromkeys(CONV_LAYERS, kind))
    if head is Head.bn:
        out["fc"] = "unit"
    return out


class Schedule(StrEnum):
    step = "step"  # η ÷ 10 at each fraction in lr_drops (the paper's)
    wsd = "wsd"  # warmup-free stable-then-decay: η constant, then linear to 0 over decay_fraction
    constant = "constant"  # η throughout


class Objective(StrEnum):
    """The validation metric that picks η* (a sweep's trial value, analyze's default)."""

    val_error = "val_error"  # share of misclassified validation images
    val_loss = "val_loss"  # mean cross-entropy (NLL) on the validation images: continuous


class DatasetName(StrEnum):
    cifar10 = "cifar10"  # the official python-batches folder
    synthetic = "synthetic"  # seeded class templates + noise, in memory, for fast tests
    tracking = "tracking"  # scale-invariant toy with a known optimum (see l2bn.train.tasks)


class DeviceName(StrEnum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


class Precision(StrEnum):
    auto = "auto"  # bf16 autocast + channels_last where the hardware has native bf16, else fp32
    fp32 = "fp32"  # IEEE fp32, on CUDA too: TF32 off (PyTorch's default lets cuDNN use it)
    tf32 = "tf32"  # fp32, with TF32 tensor-core matmuls and convolutions on CUDA (Ampere+)
    bf16 = "bf16"


class Graph(StrEnum):
    """How a training step is launched (l2bn.train.engine: the step graph)."""

    auto = "auto"  # on for an image task on CUDA, else off
    # The per-step scalars (η's schedule factor, Adam's bias corrections) on the device and
    # the whole step captured as one CUDA graph; on a CPU the same step runs eagerly.
    on = "on"
    off = "off"  # host scalars, every kernel launched from Python: the CPU's numeric path


DATA_ENV = "L2BN_DATA"
# What ``device = auto`` means on this node when set (auto, cpu or cuda). The Docker image sets
# cuda: on a GPU node whose driver torch cannot use, a run then stops at once instead of
# training on the CPU for days.
DEVICE_ENV = "L2BN_DEVICE"
DEFAULT_LR_DROPS: tuple[float, ...] = (0.5, 0.8)  # the paper: ÷10 after epochs 50 and 80 of 100


@dataclass(frozen=True)
class TrainConfig:
    """One experiment. Defaults are the paper's setting (van Laarhoven 2017, §5)."""

    optimizer: OptimizerName = OptimizerName.nesterov
    lr: float = 0.01  # η, initial learning rate (÷10 at each fraction in lr_drops)
    weight_decay: float = 5e-4  # λ, PyTorch weight_decay (coupled; decoupled for adamw)
    epochs: int = 100
    batch_size: int = 128
    width: int = 32  # c: the four convs have widths c, 2c, 4c, 8c
    norm: Norm = Norm.bn
    head: Head = Head.linear
    dataset: DatasetName = DatasetName.cifar10
    data_dir: Path | None = None  # None: $L2BN_DATA, then ./data
    val_fraction: float = 0.1  # carved deterministically from the training set
    augment: bool = True  # translation by ≤ 4 px (zero padding) and horizontal flip
    # How η moves over training (the phase before η first changes is "phase 1", where
    # equilibrium is reached and measured). step: ÷10 at each of lr_drops (fractions of the
    # epochs); wsd: constant, then linear to 0 over the last decay_fraction of the steps;
    # constant: never changes (lr_drops and decay_fraction are then unused).
    schedule: Schedule = Schedule.step
    lr_drops: tuple[float, ...] = DEFAULT_LR_DROPS  # step: fractions of training where η ÷= 10
    decay_fraction: float = 0.15  # wsd: share of all steps over which η falls linearly to 0
    # S: every scale-invariant weight (l2bn.train.models.scale_invariant_layers) is multiplied
    # by S after the default initialization. It changes nothing the network computes, only
    # ‖w₀‖ and so the effective learning rate until equilibrium forgets it.
    init_scale: float = 1.0
    # The symmetry control (sweeps/symmetry.toml): BN's and LN's ε × S², Adam's and RMSProp's
    # ε ÷ S, with S = init_scale. The only constants that break the maps of l2bn.theory
    # ((αw₀, α²η, λ/α²) and kin) are these ε; moved with the map, two runs related by it are
    # exact copies up to w → αw (bitwise for α a power of two). Off: PyTorch's ε (the paper).
    scale_eps: bool = False
    decay_all: bool = False  # also decay normalization γ/β and biases (the paper does not)
    # Learnable normalization γ/β (BN, LN, the logit BN) and WN gains, as in the paper. False
    # freezes them (γ = 1, β = 0, g at its initial value): every trained parameter is then
    # scale-invariant (with a norm and head "bn"), the theory's exact assumption. γ/β learn at
    # η itself, not at the effective rate, so they are the part of the net λ does not scale.
    affine: bool = True
    device: DeviceName = DeviceName.auto
    precision: Precision = Precision.auto
    # How the step is launched (Graph): numbers agree with off to float rounding, not bitwise.
    graph: Graph = Graph.auto
    seed: int = 0

    def __post_init__(self) -> None:
        # Accept plain strings for the enum fields (from TOML, JSON, Optuna attrs).
        for f, enum in _ENUM_FIELDS.items():
            value = getattr(self, f)
            if not isinstance(value, enum):
                try:
                    object.__setattr__(self, f, enum(value))
                except ValueError:
                    choices = ", ".join(e.value for e in enum)
                    raise ConfigError(
                        f"{f.replace('_', '-')} {value!r} is not one of: {choices}"
                    ) from None
        if self.data_dir is not None and not isinstance(self.data_dir, Path):
            object.__setattr__(self, "data_dir", Path(self.data_dir))
        object.__setattr__(self, "lr_drops", parse_lr_drops(self.lr_drops))
        self._validate()

    def _validate(self) -> None:
        _positive_finite("lr", self.lr)
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ConfigError(
                f"weight-decay must be a finite number ≥ 0, got {self.weight_decay!r}"
            )
        for name in ("epochs", "batch_size", "width"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name.replace('_', '-')} must be an integer ≥ 1, got {value!r}")
        if not (0.0 < self.val_fraction < 1.0):
            raise ConfigError(f"val-fraction must be in (0, 1), got {self.val_fraction!r}")
        if any(not (0.0 < x < 1.0) for x in self.lr_drops) or list(self.lr_drops) != sorted(
            self.lr_drops
        ):
            raise ConfigError(
                f"lr-drops must be increasing fractions in (0, 1), got {list(self.lr_drops)}"
            )
        _positive_finite("init-scale", self.init_scale)
        if not (0.0 < self.decay_fraction <= 1.0):
            raise ConfigError(
                f"decay-fraction must be in (0, 1], got {self.decay_fraction!r} (wsd: the share "
                f"of steps over which η falls to 0)"
            )
        if self.seed < 0:
            raise ConfigError(f"seed must be ≥ 0, got {self.seed}")

    # --- derived values -------------------------------------------------------------------

    def resolved_data_dir(self) -> Path:
        """Where the CIFAR-10 folder is looked for: --data-dir, then $L2BN_DATA, then ./data."""
        if self.data_dir is not None:
            return self.data_dir
        env = os.environ.get(DATA_ENV)
        return Path(env) if env else Path("data")

    def lr_at(self, epoch: int, step: int = 0, steps_per_epoch: int = 1) -> float:
        """η at ``step`` (0-based) of ``epoch`` (0-based): η × :meth:`lr_factor`."""
        return self.lr * self.lr_factor(epoch, step, steps_per_epoch)

    def lr_factor(self, epoch: int, step: int = 0, steps_per_epoch: int = 1) -> float:
        """The schedule's multiplier of η at ``step`` (0-based) of ``epoch`` (0-based); it does
        not depend on η, so the K models of a batch share it.

        step: 0.1 per drop epoch passed (the same for every step of an epoch); wsd: 1 until
        step T₀ (:meth:`decay_start`), then (T − t)/(T − T₀ + 1) at global step t < T, so η
        falls linearly to 0 just after the last step; constant: 1.
        """
        if self.schedule is Schedule.step:
            drops = sum(1 for x in self.lr_drops if epoch >= round(x * self.epochs))
            return 0.1**drops
        if self.schedule is Schedule.constant:
            return 1.0
        total = self.epochs * steps_per_epoch
        start = self.decay_start(steps_per_epoch)
        t = epoch * steps_per_epoch + step
        return 1.0 if t < start else (total - t) / (total - start + 1)

    def decay_start(self, steps_per_epoch: int) -> int:
        """wsd: the first step (0-based, global) at which η is below its initial value."""
        total = self.epochs * steps_per_epoch
        return min(total - 1, round((1.0 - self.decay_fraction) * total))

    def phase1_epochs(self, steps_per_epoch: int = 1) -> int:
        """Epochs trained wholly at the initial η (phase 1): where equilibrium is reached."""
        if self.schedule is Schedule.constant or (
            self.schedule is Schedule.step and not self.lr_drops
        ):
            return self.epochs
        if self.schedule is Schedule.step:
            return max(1, round(self.lr_drops[0] * self.epochs))
        return max(1, self.decay_start(steps_per_epoch) // steps_per_epoch)

    def with_(self, **changes: Any) -> TrainConfig:
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for f in _ENUM_FIELDS:
            d[f] = getattr(self, f).value
        d["data_dir"] = None if self.data_dir is None else str(self.data_dir)
        d["lr_drops"] = list(self.lr_drops)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(
                f"unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
            )
        return cls(**d)


# What may differ between runs trained together (a sweep ties init_scale to λ per point).
BATCHABLE = ("lr", "weight_decay", "seed", "init_scale")


def check_batchable(configs: Sequence[TrainConfig]) -> None:
    """Raise ConfigError unless these runs can be trained side by side as one network
    (l2bn.train.engine.train_many): at least one, and differing only in lr, weight_decay,
    seed and init_scale. Torch-free: the sweep's parent process calls it."""
    if len(configs) == 0:
        raise ConfigError("no runs to train: the list of configs is empty")
    base = configs[0]
    for i, c in enumerate(configs):
        if not isinstance(c, TrainConfig):
            raise ConfigError(f"run {i + 1} is a {type(c).__name__}, not a TrainConfig")
        differ = [
            f.name.replace("_", "-")
            for f in fields(TrainConfig)
            if f.name not in BATCHABLE and getattr(c, f.name) != getattr(base, f.name)
        ]
        if differ:
            raise ConfigError(
                f"runs trained together may differ only in lr, weight-decay, seed and "
                f"init-scale; run {i + 1} differs from run 1 in {', '.join(differ)}"
            )


_ENUM_FIELDS: dict[str, type[Enum]] = {
    "optimizer": OptimizerName,
    "norm": Norm,
    "head": Head,
    "dataset": DatasetName,
    "schedule": Schedule,
    "device": DeviceName,
    "precision": Precision,
    "graph": Graph,
}


def node_device(name: DeviceName) -> DeviceName:
    """The device a run asks for on this node: ``name``, except that auto defers to
    $L2BN_DEVICE when that is set. Torch-free: the sweep's parent calls it, to leave the GPUs
    alone for a CPU sweep and to refuse a bad value before anything is written."""
    if name is not DeviceName.auto:
        return name
    value = os.environ.get(DEVICE_ENV, "").strip()
    try:
        return DeviceName(value.lower()) if value else DeviceName.auto
    except ValueError:
        choices = ", ".join(e.value for e in DeviceName)
        raise ConfigError(f"{DEVICE_ENV}={value!r} is not one of: {choices}") from None


def _positive_finite(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{name} must be a number, got {value!r}")
    if not (math.isfinite(value) and value > 0):
        raise ConfigError(f"{name} must be a finite number > 0, got {value!r}")


def parse_lr_drops(value: Any) -> tuple[float, ...]:
    """lr_drops from any of its spellings: a list of numbers (TOML, JSON), or the CLI's text
    "0.5,0.8", where "none" (or "") means no drop."""
    if isinstance(value, str):
        text = value.strip().lower()
        parts: list[Any] = [] if text in ("", "none") else text.split(",")
    elif isinstance(value, list | tuple):
        parts = list(value)
    else:
        parts = [value]  # refused below: a lone number is not a list
    if not isinstance(value, str | list | tuple) or any(isinstance(x, bool) for x in parts):
        parts = ["?"]
    try:
        return tuple(float(x) for x in parts)
    except (TypeError, ValueError):
        raise ConfigError(
            f"lr-drops {value!r} must be fractions in (0, 1): a list such as [0.5, 0.8], "
            f"the text '0.5,0.8', or 'none'"
        ) from None
