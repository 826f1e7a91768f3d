"""On a real GPU: fp32 is IEEE fp32 (TF32 off while training), tf32 is TF32, the record says
which, and precision auto picks bf16 only where the GPU has it natively; the step is one CUDA
graph by default and trains what the eager step trains; evaluation chunks fit their memory.
Skipped without CUDA (scripts/gpu_check.sh runs them on a GPU node)."""

from __future__ import annotations

import math
from collections.abc import Iterator

import pytest
import torch
import torch.nn.functional as F

import l2bn.train.device as device_mod
from l2bn.train.config import Precision, TrainConfig
from l2bn.train.engine import GRAPH_WARMUP, Engine, train, train_many, training_flags
from l2bn.train.records import TrainResult
from l2bn.train.tasks import ImageTask, eval_bytes_per_image

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


# --- the step graph (l2bn.train.engine) ------------------------------------------------------

GRAPHED = RUN.with_(epochs=3, schedule="wsd", decay_fraction=0.5, precision="fp32")


def _numbers(result: TrainResult) -> list[float]:
    """A run's losses, errors and per-layer norms, epoch by epoch."""
    out = []
    for e in result.history:
        out += [e.train_loss, e.train_error, e.val_loss, e.val_error]
        out += [x for rec in e.layers.values() for x in (rec.norm, rec.unit_norm)]
    return out


@pytest.mark.parametrize("optimizer", ["nesterov", "adam"])
def test_the_step_is_one_cuda_graph_by_default_and_agrees_with_eager(
    optimizer: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    configs = [GRAPHED.with_(optimizer=optimizer, lr=lr, seed=s) for s, lr in [(1, 0.01), (2, 0.1)]]
    engine = Engine(configs)
    assert engine.graph and engine.capturing  # graph auto, on CUDA
    replays = 0
    original = torch.cuda.CUDAGraph.replay

    def counted(self: torch.cuda.CUDAGraph) -> None:
        nonlocal replays
        replays += 1
        original(self)

    monkeypatch.setattr(torch.cuda.CUDAGraph, "replay", counted)
    graphed = train_many(configs)
    monkeypatch.undo()
    steps = GRAPHED.epochs * graphed[0].steps_per_epoch
    assert replays == steps - GRAPH_WARMUP  # every step after the warm-up is a replay
    eager = train_many([c.with_(graph="off") for c in configs])
    assert [r.graph for r in graphed] == ["on", "on"] and eager[0].graph == "off"
    for g, e in zip(graphed, eager, strict=True):
        # Float rounding (a device divisor against a host one, cuDNN's algorithm choice),
        # grown over a few dozen steps of training: far below any difference that matters.
        assert _numbers(g) == pytest.approx(_numbers(e), rel=1e-3, abs=1e-3)


def test_a_graphed_step_freezes_a_diverged_model_on_the_device() -> None:
    good = GRAPHED.with_(norm="none", optimizer="sgd", lr=0.05)
    results = train_many([good.with_(lr=1e6, seed=3), good])
    assert results[0].diverged and not results[1].diverged
    assert results[0].graph == "on"
    assert _numbers(results[1]) == pytest.approx(
        _numbers(train(good.with_(graph="off"))), rel=1e-3, abs=1e-3
    )


def test_bf16_autocast_captures_without_its_cast_cache() -> None:
    if not torch.cuda.is_bf16_supported(including_emulation=False):
        pytest.skip("no native bf16")
    result = train(GRAPHED.with_(precision="bf16"))
    assert result.graph == "on" and result.precision == "bf16"
    assert all(math.isfinite(x) for x in _numbers(result))


def test_evaluation_chunks_fit_the_memory_they_were_sized_for() -> None:
    # The activation estimate bounds what a chunk really allocates (K = 4, width 16).
    configs = [RUN.with_(width=16, seed=s) for s in range(4)]
    engine = Engine(configs)
    engine.evaluate("val")  # sizes the chunk, autotunes its shapes
    task = engine.task
    assert isinstance(task, ImageTask) and task.chunk is not None
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    engine.evaluate("val")
    peak = torch.cuda.max_memory_allocated() - before
    budget = min(task.chunk, len(task.data.val)) * 4 * eval_bytes_per_image(16, 32 * 32)
    print(f"evaluation chunk {task.chunk} images × 4 models: peak {peak / 1e6:.1f} MB")
    assert 0 < peak <= budget
