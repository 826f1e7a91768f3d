"""The training loop, read top to bottom: K runs that differ only in η, λ and seed, side by side.

One run is K = 1 of the same code. The K models are one network (l2bn.train.models: grouped
convolutions, one flat parameter buffer), so a step is one forward and one backward pass for
all of them and one optimizer update of a few elementwise kernels. Nothing is shared between
models but the kernels: each has its own initialization, data order and augmentation (its
seed), its own η, λ and optimizer state, and its own loss (the summed loss gives every model
exactly its own gradient). A model whose loss turns non-finite is frozen at once (its
parameters stop changing) and recorded as diverged at the end of that epoch; the others train
on untouched. Every step also measures, on the device, how far each layer's weights turned
and how their norm moved (l2bn.train.meter); each epoch's records (losses, errors, norms,
those update statistics) reach the host in one transfer. Nothing here prints or knows about
Optuna: each epoch (and, cheaply, each batch) is reported through callbacks, which may raise
to stop training.

Reproducibility: the same configs on the same device and software give the same result on a
CPU. On CUDA, cuDNN autotunes its convolution algorithms for the run (``cudnn.benchmark``,
switched on only around the loop and only unless deterministic algorithms were asked for) and
several of its kernels (and atomics-based reductions) are nondeterministic, so two runs agree to
float rounding, which chaotic training can amplify, not bitwise. For bitwise repeatability
call ``torch.use_deterministic_algorithms(True)`` (and set ``CUBLAS_WORKSPACE_CONFIG=:4096:8``)
before training: l2bn then leaves cuDNN's autotuner off. fp32 on CUDA is IEEE fp32: TF32
(which PyTorch lets cuDNN use by default) is on only for precision tf32, around the loop
(:func:`training_flags`). l2bn never touches the global RNG; every random draw comes from a
generator seeded with the run's seed.

The step graph (``graph``: TrainConfig.graph; auto is on for an image task on CUDA, off
elsewhere). A step is ~200 small kernels (forward, backward, optimizer, meter), and launching
them from Python costs more host time than a small network's GPU time. With ``graph`` on, the
whole step — the forward pass, ``autograd.grad`` into the flat gradient, the alive mask, the
optimizer (and normalized SGD's projection) and the update meter — is captured once as one CUDA
graph and replayed for every later step, one launch each. What makes that possible:

* No host number changes between steps: η's schedule factor and Adam's bias corrections are
  read on the device from tables indexed by a device step counter
  (FlatOptimizer.use_device_scalars); the host still computes η for the records.
* Fixed addresses: the batch is copied into static input tensors before each replay, the
  losses and errors come back in the graph's static outputs (valid until the next step), and
  the meter copies its Δw instead of swapping buffers (UpdateMeter.static). Every other
  buffer the step touches (parameters, gradient, optimizer state, BN statistics, ``alive``,
  the meter's sums) is persistent and updated in place.
* No host sync, as always: a non-finite loss freezes its model through ``alive`` on the device.
* Warm-up: the first GRAPH_WARMUP steps run eagerly (the same code) on the capture stream:
  cuDNN autotunes, cuBLAS makes its handles and the momentum buffer is created, none of which
  may happen during capture. The step after them is captured (capture runs nothing) and
  replayed. bf16 autocast runs with its cast cache off, as graphs require.

Evaluation, the epoch's records and the data pipeline stay eager, between replays. On a CPU,
``graph`` on runs the device-scalar step eagerly (a CPU has no graphs): that is how the tests
check it against the host-scalar path. Off, the default on a CPU, is the host-scalar step that
every recorded CPU result was computed with. On CUDA the captured step agrees with the eager
one to float rounding, not bitwise (a division by a host scalar there is a multiplication by
its reciprocal, a division by a device scalar is not). The tracking toy always runs eagerly:
its step draws noise and a target on the host.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch

from l2bn import __version__
from l2bn.errors import ConfigError
from l2bn.theory import THEORY
from l2bn.train.config import Graph, Precision, Schedule, TrainConfig, check_batchable
from l2bn.train.device import resolve_device, resolve_precision
from l2bn.train.meter import UpdateMeter
from l2bn.train.models import ConvNets, layer_norms
from l2bn.train.optim import SPECS, FlatOptimizer, project_to_unit_norm
from l2bn.train.records import EpochRecord, TrainResult, layer_records
from l2bn.train.tasks import make_task

EpochCallback = Callable[[EpochRecord], None]
ManyEpochCallback = Callable[[int, EpochRecord], None]  # (run index, its record)
BatchCallback = Callable[[int, int, int], None]  # (epoch, batch, batches per epoch), 1-based
Outputs = tuple[torch.Tensor, torch.Tensor]  # a step's (losses, errors), K each
# Eager steps before the step graph is captured (module docstring). PyTorch's own recipe and
# make_graphed_callables use 3: autotuning and lazy set-up are done after the first.
GRAPH_WARMUP = 3


class Engine:
    """K runs set up to train: task (data + network), precision, optimizer; and their step."""

    def __init__(
        self,
        configs: Sequence[TrainConfig],
        download: bool = False,
        measure_updates: bool = True,
        exact: bool = True,
    ) -> None:
        check_batchable(configs)  # first: a bad batch fails before any data is loaded
        self.configs = list(configs)
        self.k = len(self.configs)
        base = self.configs[0]
        self.device = resolve_device(base.device)
        self.task = make_task(self.configs, self.device, download)
        self.net = self.task.model
        if isinstance(self.net, ConvNets):  # exact: see ConvNets.exact
            self.net.exact = exact
        # bf16 autocast around the forward pass only: fp32 weights, gradients and optimizer
        # state; tf32 is fp32 with TF32 on (training_flags). The precision recorded is the
        # one used (the tracking toy: always fp32; tf32 without TF32 hardware: fp32).
        self.precision = (
            resolve_precision(base.precision, self.device) if self.task.bf16 else Precision.fp32
        )
        self.graph = use_graph(base.graph, self.device, self.task.graphable)
        self.autocast = torch.autocast(
            self.device.type,
            dtype=torch.bfloat16,
            enabled=self.precision is Precision.bf16,
            # A graph must not keep autocast's cast weights across replays (CUDA graphs docs).
            cache_enabled=False if self.graph else None,
        )
        self.spec = SPECS[base.optimizer]  # the update rule; η and λ below are per model
        self.optimizer = FlatOptimizer(
            self.spec,
            self.net.params,
            weight_decay=[c.weight_decay for c in self.configs],  # λ: coupled, adamw decoupled
            decay_all=base.decay_all,  # also γ, β, biases, WN gains (the paper: weights only)
            # The symmetry control: Adam's/RMSProp's ε ÷ S, as gradients scale by 1/S.
            eps_scales=[c.init_scale for c in self.configs] if base.scale_eps else None,
        )
        self.optimizer.set_lr([c.lr for c in self.configs])  # scaled by set_lr(epoch, step)
        self.scale_init([c.init_scale for c in self.configs])
        if self.spec.project:
            self.project()  # start on the sphere, as every later step ends
        self.alive = torch.ones(self.k, dtype=torch.bool, device=self.device)
        # Per-layer angular/radial update statistics (l2bn.train.meter); off only to time it.
        self.meter = UpdateMeter(self.net, static=self.graph) if measure_updates else None
        if self.graph:  # η's factor for every step of the run, as set_lr computes it
            spe, total = self.task.steps_per_epoch, base.epochs * self.task.steps_per_epoch
            self.optimizer.use_device_scalars(
                [base.lr_factor(t // spe, t % spe, spe) for t in range(total)]
            )
        self.captured: torch.cuda.CUDAGraph | None = None  # the step graph, once captured
        self.eager_steps = 0
        # The graph's (inputs, outputs): fixed tensors it reads and writes.
        self.static: tuple[tuple[torch.Tensor, ...], Outputs] | None = None
        self.stream = torch.cuda.Stream(self.device) if self.capturing else None

    @torch.no_grad()
    def scale_init(self, scales: Sequence[float]) -> None:
        """Multiply model m's scale-invariant weights by scales[m] (--init-scale): the nets
        compute the same function, only ‖w₀‖, and with it the early effective η, changes."""
        if all(s == 1.0 for s in scales):
            return
        column = torch.tensor(scales, dtype=self.net.params.flat.dtype, device=self.device)
        for layer in self.net.invariant:
            w = self.net.weights[layer]
            w.mul_(column.view(-1, *[1] * (w.dim() - 1)))

    def set_lr(self, epoch: int, step: int) -> list[float]:
        """Set and return each model's η at ``step`` of ``epoch`` (both 0-based) under the
        schedule (TrainConfig.lr_at). The K base rates went to the device once (__init__);
        this multiplies them by the schedule's factor: no host sync, no host-to-device copy.
        With the step graph it only computes η for the records: the step reads the factor from
        its device table (FlatOptimizer.use_device_scalars)."""
        factor = self.configs[0].lr_factor(epoch, step, self.task.steps_per_epoch)
        if not self.graph:  # with the graph η's factor is read on the device, per step
            self.optimizer.scale_lr(factor)
        return [c.lr * factor for c in self.configs]

    @property
    def capturing(self) -> bool:
        """Whether the step runs as a CUDA graph (``graph`` on, on CUDA)."""
        return self.graph and self.device.type == "cuda"

    def step(self, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """One training step of all K models: (losses K, errors K), left on the device. With
        the step graph they are its static outputs, overwritten by the next step."""
        if not self.capturing:
            return self._step(batch)
        assert self.stream is not None
        if self.captured is None and self.eager_steps < GRAPH_WARMUP:
            self.eager_steps += 1
            # On the capture stream, ordered both ways with the current one: its first use
            # (cuBLAS handles, workspaces) must not happen during capture.
            self.stream.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(self.stream):
                out = self._step(batch)
            torch.cuda.current_stream(self.device).wait_stream(self.stream)
            return out
        if self.static is None:
            # A graphable task's batch is a tuple of tensors; clone keeps shape, strides, layout.
            inputs = tuple(t.clone() for t in batch)
            self.captured = torch.cuda.CUDAGraph()
            # On the warm-up's stream: capture meets no first use (PyTorch's own recipe).
            with torch.cuda.graph(self.captured, stream=self.stream):
                outputs = self._step(inputs)
            self.static = inputs, outputs
        assert self.captured is not None
        inputs, outputs = self.static
        for static, fresh in zip(inputs, batch, strict=True):
            static.copy_(fresh)
        self.captured.replay()
        return outputs

    def _step(self, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
        with self.autocast:
            losses, wrong = self.task.losses(batch)
        self.net.params.backward(losses.sum())  # the sum: each model gets its own gradient
        self.alive &= torch.isfinite(losses.detach())  # a non-finite loss freezes its model
        if self.meter is not None:
            self.meter.snapshot()  # w before the step
        self.optimizer.step(self.alive)
        if self.spec.project:
            self.project()
        if self.meter is not None:
            self.meter.measure(self.alive)  # Δw of the whole step, projection included
        return losses.detach(), wrong

    def project(self) -> None:
        project_to_unit_norm(self.net.weights, self.net.invariant)

    def evaluate(self, split: str) -> tuple[torch.Tensor, torch.Tensor, int]:
        """(each model's summed error on the split, K on the device; its summed loss, K; the
        count to divide both by)."""
        with self.autocast:
            return self.task.evaluate(split)


def use_graph(graph: Graph, device: torch.device, graphable: bool) -> bool:
    """Whether a run's step uses the step graph (module docstring): auto, on CUDA for a task
    whose step can be captured; on, wherever that task can be (on a CPU it runs eagerly)."""
    if graph is Graph.on and not graphable:
        raise ConfigError(
            "graph on needs an image dataset: the tracking toy's step draws its noise and "
            "target on the host; use graph auto or off"
        )
    return graphable and (graph is Graph.on or (graph is Graph.auto and device.type == "cuda"))


def train(
    config: TrainConfig,
    on_epoch: EpochCallback | None = None,
    on_batch: BatchCallback | None = None,
    download: bool = False,
) -> TrainResult:
    """One run: :func:`train_many` with K = 1."""
    many = None if on_epoch is None else (lambda _m, record: on_epoch(record))
    return train_many([config], many, on_batch, download)[0]


def train_many(
    configs: Sequence[TrainConfig],
    on_epoch: ManyEpochCallback | None = None,
    on_batch: BatchCallback | None = None,
    download: bool = False,
    measure_updates: bool = True,
    exact: bool = True,
) -> list[TrainResult]:
    """Train K runs that differ only in η, λ and seed side by side; one result per config.

    ``on_epoch(m, record)`` follows every epoch of every run m still training, in run order;
    a run that diverged is reported once (chance-level errors) and then no more. Host syncs:
    one per epoch (every record at once), none per step. ``measure_updates=False`` leaves the
    update fields of the layer records NaN (benchmarks/bench_records.py times the difference).
    ``exact=False``: on the CPU the K models train as one grouped network (ConvNets.exact).
    """
    start = time.perf_counter()
    engine = Engine(configs, download, measure_updates, exact)
    k, task = engine.k, engine.task
    theory = THEORY[engine.configs[0].optimizer]
    power = theory.eff_lr_power  # η_eff = η / ‖w_unit‖^power
    chance = task.chance_error
    per_step_lr = engine.configs[0].schedule is Schedule.wsd  # step, constant: η per epoch
    histories: list[list[EpochRecord]] = [[] for _ in range(k)]
    diverged = [False] * k
    with training_flags(engine.device, engine.precision):
        for epoch in range(engine.configs[0].epochs):
            epoch_start = time.perf_counter()
            # η per model, in the optimizer's units (optim.py); the record keeps the epoch's mean.
            lr_sums = [0.0] * k
            # Sums stay on the device: one host transfer per epoch, not per step.
            loss_sum = torch.zeros(k, device=engine.device)
            wrong_sum = torch.zeros(k, device=engine.device)
            seen = 0
            for step, batch in enumerate(task.batches(epoch)):
                if step == 0 or per_step_lr:
                    lrs = engine.set_lr(epoch, step)
                lr_sums = [a + b for a, b in zip(lr_sums, lrs, strict=True)]
                losses, wrong = engine.step(batch)
                n = task.batch_size(batch)
                loss_sum += losses * n
                wrong_sum += wrong
                seen += n
                if on_batch is not None:
                    on_batch(epoch + 1, step + 1, task.steps_per_epoch)

            # One host transfer per epoch for every record: per model the train, validation
            # and loss sums; per layer and model the norms and the update sums (meter.py).
            # Means in double on the host.
            val_wrong, val_nll, n_val = engine.evaluate("val")
            norms = layer_norms(engine.net.weights).flatten()  # layers × K × (‖w‖, unit norm)
            updates = engine.meter.take() if engine.meter is not None else norms[:0]
            parts = (loss_sum, wrong_sum, val_wrong, val_nll, norms, updates)
            host = torch.cat([x.double() for x in parts]).tolist()
            train_loss_sums, train_wrong, val_wrong_sums, val_nll_sums = (
                host[i * k : (i + 1) * k] for i in range(4)
            )
            layer_norm_list = host[4 * k : 4 * k + norms.numel()]
            update_sums = host[4 * k + norms.numel() :] or None  # None: not measured
            seconds = time.perf_counter() - epoch_start
            lrs = [x / task.steps_per_epoch for x in lr_sums]
            for m in range(k):
                if diverged[m]:
                    continue  # reported once, at the epoch it diverged
                train_loss = train_loss_sums[m] / seen
                # A diverged net predicts nothing: chance level, a result rather than a crash.
                diverged[m] = not math.isfinite(train_loss)
                # θ_eq at the epoch's mean η for the scale-invariant layers (None where the
                # theory has no formula: adam, rmsprop, normalized-sgd).
                angle_eq = theory.angular_update(lrs[m], engine.configs[m].weight_decay)
                record = EpochRecord(
                    epoch=epoch + 1,
                    lr=lrs[m],
                    train_loss=train_loss,
                    train_error=chance if diverged[m] else train_wrong[m] / seen,
                    val_error=chance if diverged[m] else val_wrong_sums[m] / n_val,
                    val_loss=math.nan if diverged[m] else val_nll_sums[m] / n_val,
                    seconds=seconds,
                    layers=layer_records(
                        engine.net.weights,
                        layer_norm_list,
                        k,
                        m,
                        lrs[m],
                        power,
                        updates=update_sums,
                        angle_eq=angle_eq,
                        invariant=engine.net.invariant,
                    ),
                )
                histories[m].append(record)
                if on_epoch is not None:
                    on_epoch(m, record)
            if all(diverged):
                break
        test_wrong, test_nll, n_test = engine.evaluate("test")
        test = [x / n_test for x in torch.cat([test_wrong.double(), test_nll.double()]).tolist()]
        test_error, test_loss = test[:k], test[k:]
    seconds = time.perf_counter() - start
    return [
        TrainResult(
            config=c,
            history=tuple(histories[m]),
            val_error=histories[m][-1].val_error,
            test_error=chance if diverged[m] else test_error[m],
            val_loss=histories[m][-1].val_loss,
            test_loss=math.nan if diverged[m] else test_loss[m],
            train_loss=histories[m][-1].train_loss,
            diverged=diverged[m],
            steps_per_epoch=task.steps_per_epoch,
            seconds=seconds,
            device=str(engine.device),
            precision=engine.precision.value,
            graph=Graph.on.value if engine.graph else Graph.off.value,
            version=__version__,
        )
        for m, c in enumerate(engine.configs)
    ]


@contextlib.contextmanager
def training_flags(device: torch.device, precision: Precision) -> Iterator[None]:
    """The global backend flags a run trains under, set around the loop only and restored
    afterwards: cuDNN's autotuner, and TF32 exactly when the precision is tf32. On a CPU
    nothing is touched. Whatever times the training step (benchmarks/) should run under it."""
    with _cudnn_autotune(device), _tf32(device, precision is Precision.tf32):
        yield


@contextlib.contextmanager
def _tf32(device: torch.device, allowed: bool) -> Iterator[None]:
    """TF32 (fp32 inputs rounded to a 10-bit mantissa on tensor cores) in cuBLAS matmuls and
    cuDNN convolutions when ``allowed``, and off otherwise, on CUDA; restored afterwards.
    PyTorch's defaults (cuDNN on, cuBLAS off) would train a run recorded as fp32 in TF32.

    The ``allow_tf32`` flags, which torch 2.13 still honours (it maps them onto its newer
    ``fp32_precision`` settings). A CPU has no TF32: its runs stay bit for bit what they were.
    """
    if device.type != "cuda":
        yield
        return
    matmul, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
    before = (matmul.allow_tf32, cudnn.allow_tf32)
    matmul.allow_tf32 = cudnn.allow_tf32 = allowed
    try:
        yield
    finally:
        matmul.allow_tf32, cudnn.allow_tf32 = before


@contextlib.contextmanager
def _cudnn_autotune(device: torch.device) -> Iterator[None]:
    """cuDNN's autotuner around the loop only (fixed shapes: it pays), restored afterwards,
    and never when the user asked for deterministic algorithms.

    Not ``torch.backends.cudnn.flags(benchmark=True)``: that also resets every flag it is not
    given to its own default (cuDNN disabled, TF32 allowed) and its signature changes between
    the torch versions l2bn supports.
    """
    cudnn = torch.backends.cudnn
    wanted = not (cudnn.deterministic or torch.are_deterministic_algorithms_enabled())
    if device.type != "cuda" or not wanted:
        yield
        return
    before = cudnn.benchmark
    cudnn.benchmark = True
    try:
        yield
    finally:
        cudnn.benchmark = before
