"""The benchmarks' shared timing: every one that trains takes --device and times a GPU as
training runs it (synchronized, cuDNN autotuned). Timings themselves are not tested here."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from types import ModuleType

import pytest
import torch
from conftest import REPO

FOLDER = REPO / "benchmarks"
BENCHMARKS = sorted(p.stem for p in FOLDER.glob("bench_*.py"))
# bench_analyze times `l2bn analyze` on a planted storage: it trains nothing, so no device.
TRAINING = [name for name in BENCHMARKS if name != "bench_analyze"]


@pytest.fixture
def bench(monkeypatch: pytest.MonkeyPatch) -> Callable[[str], ModuleType]:
    """Import a benchmark as its script would run (benchmarks/ first on sys.path, for
    ``common``), in this process: one torch import for all of them."""
    monkeypatch.syspath_prepend(str(FOLDER))
    return importlib.import_module


def _main(module: ModuleType, monkeypatch: pytest.MonkeyPatch, *args: str) -> int:
    monkeypatch.setattr("sys.argv", [f"{module.__name__}.py", *args])
    with pytest.raises(SystemExit) as exit_:
        module.main()
    return int(exit_.value.code or 0)


def test_the_benchmark_without_a_device_trains_nothing() -> None:
    assert len(TRAINING) == len(BENCHMARKS) - 1 >= 5
    source = (FOLDER / "bench_analyze.py").read_text()
    assert "l2bn.train" not in source and "import torch" not in source


@pytest.mark.parametrize("name", TRAINING)
def test_every_training_benchmark_takes_a_device(
    name: str,
    bench: Callable[[str], ModuleType],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    module = bench(name)
    assert _main(module, monkeypatch, "--help") == 0
    assert "--device {auto,cpu,cuda}" in capsys.readouterr().out
    if torch.cuda.is_available():
        return
    # No GPU for --device cuda: one line and exit 2, before anything is loaded or timed.
    assert _main(module, monkeypatch, "--device", "cuda") == 2
    out, err = capsys.readouterr()
    assert out == "" and len(err.strip().splitlines()) == 1 and "no CUDA GPU is visible" in err


def test_cpu_timing_needs_no_sync_and_leaves_cudnn_alone(
    bench: Callable[[str], ModuleType],
) -> None:
    common = bench("common")
    seen: list[bool] = []
    times = common.interleaved(
        {"a": lambda: seen.append(torch.backends.cudnn.benchmark)}, 0.01, 2, torch.device("cpu")
    )
    assert len(times["a"]) >= 1 and not any(seen)


def test_cuda_timing_is_synchronized_and_autotuned(
    bench: Callable[[str], ModuleType], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The CUDA path's logic, run on any machine: the device's synchronize is recorded instead
    # of called. Every timed region must start and end with one, and every step must run with
    # cuDNN's autotuner on, as train_many's loop does; afterwards the flag is as it was.
    common = bench("common")
    events: list[str] = []
    monkeypatch.setattr(common, "synchronizer", lambda _device: lambda: events.append("sync"))
    cudnn = torch.backends.cudnn

    def step(name: str) -> Callable[[], None]:
        return lambda: events.append(f"{name}:{cudnn.benchmark}")

    before = cudnn.benchmark
    cudnn.benchmark = False
    try:
        times = common.interleaved({"a": step("a"), "b": step("b")}, 0.05, 3, torch.device("cuda"))
        assert not cudnn.benchmark  # restored
    finally:
        cudnn.benchmark = before
    assert all(e in ("sync", "a:True", "b:True") for e in events), set(events)
    # Warm-up (2 steps each), a sync, then per round and variant: sync, 3 steps, sync.
    assert events[:5] == ["a:True", "a:True", "b:True", "b:True", "sync"]
    rounds = events[5:]
    assert len(rounds) == 5 * (len(times["a"]) + len(times["b"])) > 0
    for i in range(0, len(rounds), 5):
        block = rounds[i : i + 5]
        assert block[0] == block[4] == "sync" and len(set(block[1:4])) == 1, block
