"""The step graph's CPU side (l2bn.train.engine, module docstring): the per-step scalars on the
device give the very numbers of the host-scalar path, the graph is off on a CPU unless asked
for, and evaluation's chunking on CUDA is sized to memory. The capture itself needs CUDA:
tests/train/test_cuda.py.

Bit for bit, not to a tolerance: the device tables hold the host's own numbers rounded to
float32 as a host scalar is, and on a CPU a kernel multiplies or divides by a one-element
tensor with the same IEEE operation as by a scalar. (On CUDA a division by a host scalar is a
multiplication by its reciprocal, so there the two paths agree to float rounding only.)"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from l2bn.errors import ConfigError
from l2bn.train.config import Graph, TrainConfig
from l2bn.train.engine import Engine, train, train_many, use_graph
from l2bn.train.models import FlatParams
from l2bn.train.optim import SPECS, FlatOptimizer
from l2bn.train.tasks import CPU_EVAL_CHUNK, EVAL_MAX_IMAGES, EVAL_MIN_CHUNK, eval_chunk

CPU, CUDA = torch.device("cpu"), torch.device("cuda")
STEPS = 300
# A wsd-like schedule: constant, then linearly down (every entry a fresh host number).
FACTORS = [1.0 if t < 200 else (STEPS - t) / (STEPS - 200 + 1) for t in range(STEPS)]
OPTIMIZERS = ["sgd", "momentum", "nesterov", "rmsprop", "adam", "adamw"]


def _params(k: int = 3) -> FlatParams:
    g = torch.Generator().manual_seed(0)
    w = torch.randn(k, 4, 6, generator=g)  # decayed
    gamma = torch.randn(k, 4, generator=g)  # not decayed
    return FlatParams({"w": w, "gamma": gamma}, ["w"], CPU)


def _optimizer(name: str, params: FlatParams) -> FlatOptimizer:
    opt = FlatOptimizer(SPECS[name], params, weight_decay=[1e-3, 1e-2, 0.1])  # type: ignore[index]
    opt.set_lr([0.05, 0.01, 0.002] if "adam" in name or name == "rmsprop" else [0.3, 0.1, 0.03])
    return opt


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_device_scalars_update_bit_for_bit_like_host_scalars(name: str) -> None:
    host_params, device_params = _params(), _params()
    host, device = _optimizer(name, host_params), _optimizer(name, device_params)
    device.use_device_scalars(FACTORS)
    g = torch.Generator().manual_seed(1)
    alive = torch.ones(3, dtype=torch.bool)
    for t in range(STEPS):
        grad = torch.randn(host_params.grad.shape, generator=g)
        host_params.grad.copy_(grad)
        device_params.grad.copy_(grad)
        if t == 150:
            alive[1] = False  # a frozen model: masked the same way on both paths
        host.scale_lr(FACTORS[t])  # the engine's host path: set_lr every step (wsd)
        host.step(alive)
        device.step(alive)
        assert torch.equal(device_params.flat, host_params.flat), t
    assert device.count is not None and device.count.tolist() == [STEPS]
    for state in ("buf", "exp_avg", "sq"):
        a, b = getattr(host, state), getattr(device, state)
        assert (a is None) == (b is None) and (a is None or torch.equal(a, b)), state
    # The schedule and bias corrections were felt: a constant factor moves the weights apart.
    constant_params = _params()
    constant = _optimizer(name, constant_params)
    constant.use_device_scalars([1.0] * STEPS)
    g = torch.Generator().manual_seed(1)
    for _ in range(STEPS):
        constant_params.grad.copy_(torch.randn(host_params.grad.shape, generator=g))
        constant.step(torch.ones(3, dtype=torch.bool))
    assert not torch.equal(constant_params.flat, host_params.flat)


def test_past_the_tables_end_the_last_factor_holds() -> None:
    # Only a benchmark steps past the run's last step: it keeps the last η.
    host_params, device_params = _params(), _params()
    host, device = _optimizer("sgd", host_params), _optimizer("sgd", device_params)
    device.use_device_scalars([1.0, 0.5])
    alive = torch.ones(3, dtype=torch.bool)
    for factor in (1.0, 0.5, 0.5, 0.5):
        host_params.grad.fill_(0.25)
        device_params.grad.fill_(0.25)
        host.scale_lr(factor)
        host.step(alive)
        device.step(alive)
        assert torch.equal(device_params.flat, host_params.flat)


def _record(result: Any) -> dict[str, Any]:
    """Every recorded number of a run but wall times and the graph fields."""
    d = result.to_dict()
    del d["seconds"], d["graph"], d["config"]["graph"]
    for epoch in d["history"]:
        del epoch["seconds"]
    return dict(d)


# 24 steps (η constant for 12, then falling), 512 validation images.
RUN = TrainConfig(
    dataset="synthetic", width=4, epochs=1, batch_size=64, val_fraction=0.25, schedule="wsd",
    decay_fraction=0.5, precision="fp32", weight_decay=0.01,
)  # fmt: skip


@pytest.mark.parametrize(
    "configs",
    [
        # The fast suite keeps the cheapest (no normalization); the optimizer-level tests above
        # cover every rule.
        pytest.param(
            [
                RUN.with_(optimizer="nesterov", lr=0.1, seed=1),
                RUN.with_(optimizer="nesterov", lr=0.3),
            ],
            marks=pytest.mark.slow,
            id="nesterov",
        ),
        pytest.param(
            [RUN.with_(optimizer="adam", lr=0.01, seed=1), RUN.with_(optimizer="adam", lr=0.003)],
            marks=pytest.mark.slow,
            id="adam",
        ),
        # A partner that overflows at once: frozen through alive, on the device, on both paths.
        pytest.param(
            [
                RUN.with_(norm="none", optimizer="sgd", lr=1e6),
                RUN.with_(norm="none", optimizer="sgd"),
            ],
            id="diverged",
        ),
    ],
)
def test_graph_on_a_cpu_trains_the_records_of_graph_off(configs: list[TrainConfig]) -> None:
    # The whole device-scalar step (η's table, Adam's tables, the meter's copied Δw, alive)
    # run eagerly on the CPU against the host-scalar step: every record, meter sums included.
    off = train_many(configs)
    on = train_many([c.with_(graph="on") for c in configs])
    assert [r.graph for r in off] == ["off"] * 2 and [r.graph for r in on] == ["on"] * 2
    assert [_record(r) for r in on] == [_record(r) for r in off]
    assert off[0].diverged == (configs[0].norm == "none")


def test_graph_is_off_on_a_cpu_unless_asked_for_and_on_on_cuda() -> None:
    assert not use_graph(Graph.auto, CPU, graphable=True)
    assert use_graph(Graph.auto, CUDA, graphable=True)
    assert use_graph(Graph.on, CPU, graphable=True)  # the same step, eagerly
    assert not use_graph(Graph.off, CUDA, graphable=True)
    assert not use_graph(Graph.auto, CUDA, graphable=False)  # the tracking toy
    with pytest.raises(ConfigError, match="tracking toy"):
        use_graph(Graph.on, CPU, graphable=False)
    result = train(TrainConfig(dataset="tracking", epochs=1))
    assert result.graph == "off" and result.to_dict()["config"]["graph"] == "auto"


def test_cuda_evaluation_chunks_follow_free_memory_between_a_floor_and_a_cap() -> None:
    per_image = 100_000
    for k in (1, 4, 16):
        # Plenty of memory: the cap, in images × models.
        assert eval_chunk(10**12, k, per_image) == EVAL_MAX_IMAGES // k
        # A quarter of the free memory, in whole images.
        assert eval_chunk(4 * 300 * k * per_image, k, per_image) == 300
        # Almost none: the floor.
        assert eval_chunk(10**6, k, per_image) == EVAL_MIN_CHUNK
    sizes = [eval_chunk(free, 4, per_image) for free in range(10**8, 10**10, 10**8)]
    assert sizes == sorted(sizes) and len(set(sizes)) > 10


@pytest.mark.parametrize("k", [1, 3])
def test_the_cpu_evaluates_in_chunks_of_128_images_whatever_k_and_memory(
    k: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The losses are summed chunk by chunk: the recorded CPU results were summed in 128s.
    def no_memory_query(*_: Any) -> tuple[int, int]:
        raise AssertionError("the CPU's chunk must not depend on memory")

    monkeypatch.setattr(torch.cuda, "mem_get_info", no_memory_query)
    engine = Engine([RUN.with_(seed=s) for s in range(k)])
    model, sizes = engine.task.model, []

    def forward(x: torch.Tensor) -> torch.Tensor:
        sizes.append(x.shape[0])
        return model(x)

    monkeypatch.setattr(engine.task, "model", forward)
    engine.evaluate("val")
    n = len(engine.task.data.val)  # type: ignore[attr-defined]
    assert n > 2 * CPU_EVAL_CHUNK and sum(sizes) == n
    assert sizes[:-1] == [CPU_EVAL_CHUNK] * (len(sizes) - 1)
