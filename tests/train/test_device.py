"""Where a run trains and in what precision: a GPU asked for is a GPU or an error, never the
CPU in silence; precision auto picks bf16 only where it is native; tf32 only where it exists."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from cli_run import run_cli

import l2bn.train.device as device_mod
from l2bn.errors import ConfigError
from l2bn.train.config import DEVICE_ENV, DeviceName, Precision

REPO = Path(__file__).resolve().parents[2]
TRAIN = ["train", "--dataset", "synthetic", "--width", "4", "--epochs", "1"]


@pytest.fixture(autouse=True)
def _no_device_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(DEVICE_ENV, raising=False)  # the Docker image, or a user, may set it


def _no_gpu(monkeypatch: pytest.MonkeyPatch, cuda: str | None = "13.0") -> None:
    """torch as on a GPU node whose driver is too old for it: a CUDA build that sees no GPU."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.version, "cuda", cuda)


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


@pytest.mark.parametrize(
    ("name", "env", "gpu", "who"),
    [
        (DeviceName.cuda, None, None, "device cuda was asked for, "),
        (DeviceName.auto, "cuda", None, "L2BN_DEVICE=cuda asks for a GPU (the Docker image"),
        (DeviceName.auto, " CUDA ", None, "L2BN_DEVICE=cuda asks for a GPU"),
        (DeviceName.auto, None, "0", "the sweep gave its workers this node's GPUs, "),
        (DeviceName.cuda, None, "0", "device cuda was asked for, "),
    ],
)
def test_a_gpu_asked_for_that_torch_cannot_use_is_an_error_naming_the_driver(
    monkeypatch: pytest.MonkeyPatch, name: DeviceName, env: str | None, gpu: str | None, who: str
) -> None:
    _no_gpu(monkeypatch)
    if env is not None:
        monkeypatch.setenv(DEVICE_ENV, env)
    with pytest.raises(ConfigError) as info:
        device_mod.resolve_device(name, assigned_gpu=gpu)
    message = str(info.value)
    assert message.startswith(who) and "\n" not in message
    assert "CUDA 13.0 build: it needs an NVIDIA driver ≥ 580" in message
    assert "--device cpu" in message  # the way out


@pytest.mark.parametrize(
    ("cuda", "driver"),
    [("12.8", "≥ 525.60.13"), ("11.8", "≥ 450.80.02"), ("14.0", "≥ that CUDA release's")],
)
def test_the_driver_named_is_the_one_torchs_cuda_needs(
    monkeypatch: pytest.MonkeyPatch, cuda: str, driver: str
) -> None:
    _no_gpu(monkeypatch, cuda)
    with pytest.raises(ConfigError, match=f"CUDA {cuda} build: it needs an NVIDIA driver {driver}"):
        device_mod.resolve_device(DeviceName.cuda)


def test_a_cpu_only_torch_is_told_to_install_a_cuda_build(monkeypatch: pytest.MonkeyPatch) -> None:
    _no_gpu(monkeypatch, cuda=None)
    with pytest.raises(ConfigError, match=r"is a CPU-only build; install a CUDA build .*≥ 580"):
        device_mod.resolve_device(DeviceName.cuda)


def test_auto_is_the_cpu_without_a_gpu_unless_one_was_asked_for(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _no_gpu(monkeypatch)
    cpu = torch.device("cpu")
    assert device_mod.resolve_device(DeviceName.auto) == cpu  # a laptop
    for env in ("", "auto", "cpu"):
        monkeypatch.setenv(DEVICE_ENV, env)
        assert device_mod.resolve_device(DeviceName.auto) == cpu
    monkeypatch.setenv(DEVICE_ENV, "cpu")  # the node says cpu: a runner's GPU does not apply
    assert device_mod.resolve_device(DeviceName.auto, assigned_gpu="0") == cpu
    monkeypatch.setenv(DEVICE_ENV, "cuda")  # the image's default yields to an explicit cpu
    assert device_mod.resolve_device(DeviceName.cpu) == cpu
    # With a usable GPU, auto and every request for one get it.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    cuda = torch.device("cuda")
    assert device_mod.resolve_device(DeviceName.auto) == cuda
    monkeypatch.delenv(DEVICE_ENV)
    assert device_mod.resolve_device(DeviceName.auto) == cuda
    assert device_mod.resolve_device(DeviceName.auto, assigned_gpu="MIG-1234") == cuda


def test_a_bad_device_variable_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(DEVICE_ENV, "gpu")
    with pytest.raises(ConfigError, match="L2BN_DEVICE='gpu' is not one of: auto, cpu, cuda"):
        device_mod.resolve_device(DeviceName.auto)
    assert device_mod.resolve_device(DeviceName.cpu) == torch.device("cpu")  # not consulted


@pytest.mark.parametrize(
    ("args", "env", "who"),
    [
        (["--device", "cuda"], None, "device cuda was asked for"),
        ([], "cuda", "L2BN_DEVICE=cuda asks for a GPU"),  # the Docker image's default
    ],
)
def test_the_cli_says_it_in_one_line_and_exits_2(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    args: list[str],
    env: str | None,
    who: str,
) -> None:
    _no_gpu(monkeypatch)
    if env is not None:
        monkeypatch.setenv(DEVICE_ENV, env)
    code, out, err = run_cli([*TRAIN, *args], capsys)
    assert code == 2, err
    (line,) = err.splitlines()
    assert line.startswith(f"l2bn: error: {who}") and "NVIDIA driver ≥ 580" in line
    assert "Traceback" not in err + out


def test_the_image_asks_for_cuda_and_the_docs_name_its_driver() -> None:
    dockerfile = (REPO / "Dockerfile").read_text(encoding="utf-8")
    assert f"(CUDA {device_mod.IMAGE_CUDA})" in dockerfile
    assert "L2BN_DEVICE=cuda" in dockerfile
    driver = f"NVIDIA driver ≥ {device_mod.MIN_DRIVER[device_mod.IMAGE_CUDA]}"
    assert driver in (REPO / "docs" / "deployment.md").read_text(encoding="utf-8")


@pytest.mark.parametrize(("native", "want"), [(True, Precision.bf16), (False, Precision.fp32)])
def test_auto_precision_on_cuda_picks_bf16_only_where_it_is_native(
    monkeypatch: pytest.MonkeyPatch, native: bool, want: Precision
) -> None:
    # Before Ampere torch emulates bf16 (is_bf16_supported() says True), slower than fp32.
    def supported(including_emulation: bool = True) -> bool:
        return native or including_emulation

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", supported)
    cuda = torch.device("cuda")  # a device object only: nothing runs on it
    assert device_mod.resolve_precision(Precision.auto, cuda) is want
    assert device_mod.resolve_precision(Precision.bf16, cuda) is Precision.bf16  # asked: kept


@pytest.mark.parametrize(
    ("capability", "want"), [((7, 0), Precision.fp32), ((8, 0), Precision.tf32)]
)
def test_tf32_is_kept_only_where_tf32_exists(
    monkeypatch: pytest.MonkeyPatch, capability: tuple[int, int], want: Precision
) -> None:
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    assert device_mod.resolve_precision(Precision.tf32, torch.device("cuda")) is want
    assert device_mod.resolve_precision(Precision.fp32, torch.device("cuda")) is Precision.fp32
    # A CPU has no TF32: tf32 there is fp32, and the record says so.
    assert device_mod.resolve_precision(Precision.tf32, torch.device("cpu")) is Precision.fp32
