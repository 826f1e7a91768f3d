"""Where a run trains and in what precision: the device, bf16, fp32 or TF32, and the CPU's flags."""

from __future__ import annotations

import functools
from pathlib import Path

import torch

from l2bn.errors import ConfigError
from l2bn.train.config import DEVICE_ENV, DeviceName, Precision, node_device

# The oldest Linux NVIDIA driver that runs a CUDA major release's builds (NVIDIA's minor
# version compatibility table, docs.nvidia.com/deploy/cuda-compatibility). torch reports
# no GPU, rather than an error, on an older one.
MIN_DRIVER = {11: "450.80.02", 12: "525.60.13", 13: "580"}
# The CUDA major release of the Docker image's torch (PyPI's Linux x86_64 wheel; Dockerfile).
IMAGE_CUDA = 13


def resolve_device(name: DeviceName, assigned_gpu: str | None = None) -> torch.device:
    """The device to train on. auto: $L2BN_DEVICE when set (l2bn.train.config.node_device),
    else cuda when torch sees a GPU, else the CPU (a laptop). A GPU that was asked for and that
    torch cannot use is a ConfigError, never a quiet fall back to the CPU: asked for with
    ``cuda``, with $L2BN_DEVICE=cuda (the Docker image's default), or, under auto, by a sweep
    worker that the runner gave a GPU (``assigned_gpu``, its CUDA_VISIBLE_DEVICES entry)."""
    asked = node_device(name)
    if asked is DeviceName.cpu:
        return torch.device("cpu")
    if asked is DeviceName.cuda or assigned_gpu is not None:
        if not torch.cuda.is_available():
            if name is DeviceName.cuda:
                who = "device cuda was asked for"
            elif asked is DeviceName.cuda:
                who = f"{DEVICE_ENV}=cuda asks for a GPU (the Docker image sets it)"
            else:  # the GPU id is left out: every worker's line is the same, said once
                who = "the sweep gave its workers this node's GPUs"
            raise ConfigError(f"{who}, but {_no_gpu()}")
        return torch.device("cuda")
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _no_gpu() -> str:
    """Why torch sees no GPU, and what to do, in one line: the driver this torch needs."""
    built = torch.version.cuda
    if not built:
        return (
            f"no CUDA GPU is visible: torch {torch.__version__} is a CPU-only build; install "
            f"a CUDA build (the Docker image's is CUDA {IMAGE_CUDA}, which needs an NVIDIA "
            f"driver ≥ {MIN_DRIVER[IMAGE_CUDA]}), or train on the CPU: --device cpu "
            f"(l2bn sweep: --set device=cpu)"
        )
    major = int(built.split(".")[0])
    driver = MIN_DRIVER.get(major, "that CUDA release's minimum")
    return (
        f"no CUDA GPU is visible to torch {torch.__version__}, a CUDA {built} build: it needs "
        f"an NVIDIA driver ≥ {driver} and a GPU passed through (nvidia-smi shows both; "
        f"Docker: --gpus all), or train on the CPU: --device cpu "
        f"(l2bn sweep: --set device=cpu)"
    )


def fast_bf16(device: torch.device) -> bool:
    """Whether bf16 autocast pays here: GPUs with native bf16 (Ampere and later; older ones
    emulate it, slower than fp32), and CPUs with AMX or AVX512-BF16."""
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported(including_emulation=False))
    return bool(cpu_flags() & {"avx512_bf16", "amx_bf16"})


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags from /proc/cpuinfo (empty elsewhere). torch's own
    get_cpu_capability() stops at "AVX512" and cannot tell a CPU with bf16 dot products
    (where bf16 convolutions run ~1.5× faster) from one without (where they are emulated)."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="ascii", errors="replace")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return frozenset(value.split())
    return frozenset()


def has_tf32(device: torch.device) -> bool:
    """Whether TF32 exists here: CUDA GPUs of compute capability 8.0 (Ampere) and later."""
    return device.type == "cuda" and torch.cuda.get_device_capability(device) >= (8, 0)


def resolve_precision(precision: Precision, device: torch.device) -> Precision:
    """The precision a run trains in, and records. tf32 where there is no TF32 (a CPU, a GPU
    before Ampere) is plain fp32, and says so."""
    if precision is Precision.auto:
        return Precision.bf16 if fast_bf16(device) else Precision.fp32
    if precision is Precision.tf32 and not has_tf32(device):
        return Precision.fp32
    return precision
