"""On a real GPU: fp32 is IEEE fp32 (TF32 off while training), tf32 is TF32, the record says
which, and precision auto picks bf16 only where the GPU has it natively. Skipped without CUDA
(scripts/gpu_check.sh runs them on a GPU node)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
import torch.nn.functional as F

import l2bn.train.device as device_mod
from l2bn.train.config import Precision, TrainConfig
from l2bn.train.engine import train, training_flags

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]

RUN = TrainConfig(
    dataset="synthetic",  # type: ignore[arg-type]
    width=4,
    epochs=1,
    batch_size=128,
    lr_drops=(),
    val_fraction=0.75,
    device="cuda",  # type: ignore[arg-type]
)


def _flags() -> tuple[bool, bool]:
    return torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32


def _tf32_hardware() -> bool:
    return torch.cuda.get_device_capability() >= (8, 0)


@pytest.fixture(autouse=True)
def _restore_flags() -> Iterator[None]:
    before = _flags()
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


@pytest.mark.parametrize("precision", ["fp32", "tf32"])
def test_the_flags_while_training_and_the_record_follow_the_precision(precision: str) -> None:
    want = precision == "tf32" and _tf32_hardware()
    for start in (False, True):  # whatever the flags were before, and restored after
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = start
        seen: list[tuple[bool, bool]] = []
        result = train(
            RUN.with_(precision=precision), on_batch=lambda *_, s=seen: s.append(_flags())
        )
        assert seen and set(seen) == {(want, want)}
        assert _flags() == (start, start)
        assert result.device.startswith("cuda")
        assert result.precision == ("tf32" if want else "fp32")


def _relative_errors() -> tuple[float, float]:
    """A matmul's (cuBLAS) and a convolution's (cuDNN) error against float64."""
    g = torch.Generator(device="cuda").manual_seed(0)
    a = torch.randn(512, 512, device="cuda", generator=g)
    b = torch.randn(512, 512, device="cuda", generator=g)
    x = torch.randn(8, 64, 32, 32, device="cuda", generator=g)
    w = torch.randn(64, 64, 3, 3, device="cuda", generator=g)
    exact_mm = a.double() @ b.double()
    exact_conv = F.conv2d(x.double(), w.double(), padding=1)
    mm = ((a @ b).double() - exact_mm).norm() / exact_mm.norm()
    conv = (F.conv2d(x, w, padding=1).double() - exact_conv).norm() / exact_conv.norm()
    return float(mm), float(conv)


def test_fp32_computes_in_fp32_and_tf32_in_tf32() -> None:
    # What the flags do to the kernels: fp32 errs by ~1e-6 (Winograd or FFT convolutions a
    # little more), TF32's inputs rounded to 10 bits by ~3e-4. cuDNN may pick a non-TF32
    # convolution even where TF32 is allowed, so only the matmul is held to TF32.
    cuda = torch.device("cuda")
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    with training_flags(cuda, Precision.fp32):
        assert max(_relative_errors()) < 5e-5
    if not _tf32_hardware():
        pytest.skip("no TF32 before compute capability 8.0")
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    with training_flags(cuda, Precision.tf32):
        mm, _ = _relative_errors()
    assert mm > 1e-4


def test_auto_precision_is_bf16_only_where_this_gpu_has_it_natively() -> None:
    native = torch.cuda.is_bf16_supported(including_emulation=False)
    want = Precision.bf16 if native else Precision.fp32
    assert device_mod.resolve_precision(Precision.auto, torch.device("cuda")) is want
    assert train(RUN.with_(precision="auto")).precision == want.value
