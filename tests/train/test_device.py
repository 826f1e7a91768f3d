"""Where a run trains and in what precision."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import l2bn.train.device as device_mod
from l2bn.errors import ConfigError
from l2bn.train.config import DeviceName, Precision


@pytest.mark.parametrize(
    ("flags", "want"),
    [
        ({"avx2", "avx512f"}, Precision.fp32),  # AVX512 without bf16 dot products: emulated
        ({"avx512f", "avx512_bf16"}, Precision.bf16),
        ({"amx_tile", "amx_bf16"}, Precision.bf16),
        (set(), Precision.fp32),  # no /proc/cpuinfo (macOS, Windows)
    ],
)
def test_auto_precision_follows_the_cpus_bf16_flags(
    monkeypatch: pytest.MonkeyPatch, flags: set[str], want: Precision
) -> None:
    monkeypatch.setattr(device_mod, "cpu_flags", lambda: frozenset(flags))
    cpu = torch.device("cpu")
    assert device_mod.resolve_precision(Precision.auto, cpu) is want
    assert device_mod.resolve_precision(Precision.fp32, cpu) is Precision.fp32  # asked: kept


def test_cpu_flags_are_read_from_proc_cpuinfo() -> None:
    flags = device_mod.cpu_flags()
    if not Path("/proc/cpuinfo").exists():
        assert flags == frozenset()
    else:  # every x86-64 CPU has sse2, every aarch64 one has fp
        assert {"sse2", "fp"} & flags


def test_devices() -> None:
    assert device_mod.resolve_device(DeviceName.cpu) == torch.device("cpu")
    want = "cuda" if torch.cuda.is_available() else "cpu"
    assert device_mod.resolve_device(DeviceName.auto).type == want
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no CUDA GPU"):
            device_mod.resolve_device(DeviceName.cuda)
