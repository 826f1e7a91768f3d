"""The one loop: K = 1 is today's plain run (nn.Module + torch.optim, step for step), K runs
side by side are K runs of their own, every option works at any K, and the loop's contracts
(determinism, callbacks, schedule, divergence, records, precision, the global RNG)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from reference import (
    load_model,
    model_state,
    project,
    projection_targets,
    reference_net,
    state_of,
    torch_optimizer,
)

import l2bn.train.device as device_mod
from l2bn.errors import ConfigError
from l2bn.train.config import OptimizerName, Precision, TrainConfig
from l2bn.train.engine import Engine, _cudnn_autotune, train, train_many, training_flags
from l2bn.train.models import ConvNets
from l2bn.train.records import EpochRecord

FAST = TrainConfig(dataset="synthetic", width=4, epochs=2, batch_size=128, lr=0.05)
QUICK = FAST.with_(val_fraction=0.75)  # a quarter of the images: 4 steps per epoch
# One epoch of the tiny net on a quarter of the synthetic images (2 steps): for checks that
# every option runs, at any K.
TINY = FAST.with_(epochs=1, batch_size=256, lr_drops=(), val_fraction=0.75)
STEP = TrainConfig(  # for step-by-step equivalences: fp32 (bf16 would add rounding noise)
    dataset="synthetic", width=4, epochs=1, batch_size=128, lr_drops=(), weight_decay=0.01,
    precision="fp32",
)  # fmt: skip
LR = {"sgd": 0.1, "momentum": 0.1, "nesterov": 0.1, "normalized-sgd": 0.5}  # others: 1e-2
STEPS = 3


# --- K = 1 is the plain run, and model k of K is a run of its own -----------------------


class Plain:
    """A run of ``config`` the usual way: an nn.Module and torch.optim (tests/train/reference)."""

    def __init__(self, config: TrainConfig) -> None:
        self.config = config
        self.net = reference_net(config).to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        self.opt = torch_optimizer(self.net, config)
        self.targets = projection_targets(self.net, config) if _projects(config) else []
        if self.targets:
            project(self.targets)

    def step(self, x: torch.Tensor, y: torch.Tensor) -> None:
        loss = torch.nn.functional.cross_entropy(self.net(x), y)
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()
        if self.targets:
            project(self.targets)


def _projects(config: TrainConfig) -> bool:
    return config.optimizer is OptimizerName.normalized_sgd


def _assert_same(nets: ConvNets, k: int, plain: Plain) -> None:
    """Equal to float tolerance, tensor by tensor: ‖engine − plain‖ ≤ 1e-4·‖plain‖.

    Relative to the whole tensor, not per element: Adam's m/√v turns a 1e-9 gradient's
    rounding into an O(η) change of that one element, legitimately. After each comparison the
    engine's model gets the plain model's exact state again: a 1e-8 difference (baddbmm vs
    addmm in the classifier) can grow chaotically over many steps of a width-4 net, so each
    comparison is one step from the same start.
    """
    mine = model_state(nets, k)
    for name, p in state_of(plain.net).items():
        err = torch.linalg.vector_norm(mine[name] - p).item()
        assert err <= 1e-4 * torch.linalg.vector_norm(p).item() + 1e-6, (name, err)
    load_model(nets, k, plain.net)


@pytest.mark.parametrize("norm", ["bn", "ln", "wn", "none"])
@pytest.mark.parametrize("name", [o.value for o in OptimizerName])
def test_k1_matches_the_plain_step_for_step(name: str, norm: str) -> None:
    head = "bn" if name == "normalized-sgd" else "linear"
    config = STEP.with_(optimizer=name, lr=LR.get(name, 1e-2), norm=norm, head=head)
    plain = Plain(config)
    engine = Engine([config])
    engine.set_lr(0, 0)
    _assert_same(engine.net, 0, plain)  # the same initialization (and projection)
    for _, (x, y) in zip(range(STEPS), engine.task.batches(0), strict=False):
        plain.step(x, y[0])
        engine.step((x, y))
        _assert_same(engine.net, 0, plain)


@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("name", ["nesterov", "adamw"])
def test_k_models_are_k_runs_of_their_own(name: str, affine: bool) -> None:
    # K = 4 with four different (η, λ, seed), two of them the same run, against 4 plain runs.
    base = STEP.with_(optimizer=name, head="bn", norm="wn", affine=affine)
    lrs = [0.1, 0.02, 0.1, 0.05] if name == "nesterov" else [1e-2, 3e-3, 1e-2, 1e-3]
    configs = [
        base.with_(lr=lr, weight_decay=wd, seed=seed)
        for lr, wd, seed in zip(lrs, [0.01, 0.1, 0.01, 0.0], [0, 1, 0, 2], strict=True)
    ]
    engine = Engine(configs)
    engine.set_lr(0, 0)
    plains = [Plain(c) for c in configs]
    for k, plain in enumerate(plains):
        _assert_same(engine.net, k, plain)
    for _, (x, y) in zip(range(STEPS), engine.task.batches(0), strict=False):
        engine.step((x, y))
        for k, plain in enumerate(plains):
            plain.step(x[:, 3 * k : 3 * k + 3], y[k])
            _assert_same(engine.net, k, plain)
    assert model_state(engine.net, 0).keys() == model_state(engine.net, 3).keys()


@pytest.mark.parametrize("exact", [True, False], ids=["exact", "grouped"])
@pytest.mark.parametrize(("name", "norm"), [("momentum", "ln"), ("adam", "ln"), ("nesterov", "bn")])
def test_k4_equals_four_k1_engines(name: str, norm: str, exact: bool) -> None:
    # The same engine at K = 4 and four times at K = 1: row k of the flat buffer is model k;
    # to float rounding on the grouped network (cpu_fusion = "grouped"), bit for bit on the
    # exact path (the default; test_a_point_trains_bit_for_bit_alike_whatever_its_partners).
    base = STEP.with_(optimizer=name, lr=LR.get(name, 1e-2), norm=norm, head="bn")
    configs = [base.with_(lr=base.lr * (1 + k), weight_decay=0.01 * k, seed=k) for k in range(4)]
    four, ones = Engine(configs, exact=exact), [Engine([c]) for c in configs]
    for e in (four, *ones):
        e.set_lr(0, 0)
    for k, one in enumerate(ones):
        assert torch.equal(four.net.params.flat[k], one.net.params.flat[0])  # the same init
    batches = zip(four.task.batches(0), *(one.task.batches(0) for one in ones), strict=True)
    for _, (b4, *b1) in zip(range(STEPS), batches, strict=False):
        four.step(b4)
        for k, (one, b) in enumerate(zip(ones, b1, strict=True)):
            assert torch.equal(b4[0][:, 3 * k : 3 * k + 3], b[0]) and torch.equal(b4[1][k], b[1][0])
            one.step(b)
            mine, theirs = four.net.params.flat[k], one.net.params.flat[0]
            assert float((mine - theirs).norm()) <= 1e-5 * float(theirs.norm()), k
            assert torch.equal(mine, theirs) or not exact, k
            with torch.no_grad():
                mine.copy_(theirs)  # the next step from the same start (see _assert_same)


def test_a_diverged_model_is_frozen_and_leaves_the_others_as_plain_runs() -> None:
    # Without normalization a huge rate overflows within a few steps.
    good = STEP.with_(norm="none", optimizer="sgd", lr=0.05)
    bad = good.with_(lr=1e6, seed=3)
    plain = Plain(good)
    engine = Engine([bad, good])
    engine.set_lr(0, 0)
    frozen: dict[str, torch.Tensor] | None = None
    for _, (x, y) in zip(range(3 * STEPS), engine.task.batches(0), strict=False):
        plain.step(x[:, 3:], y[1])
        engine.step((x, y))
        _assert_same(engine.net, 1, plain)
        now = {n: v[0].detach().clone() for n, v in engine.net.params.views.items()}
        if frozen is not None:
            for n, p in now.items():
                assert torch.equal(p, frozen[n]), n
        if not bool(engine.alive[0]) and frozen is None:
            frozen = now
    assert frozen is not None, "the huge rate should have diverged"
    assert bool(engine.alive[1])


@pytest.mark.slow
def test_train_many_records_each_model_like_train() -> None:
    good = STEP.with_(norm="none", optimizer="sgd", lr=0.05, epochs=2)
    seen: list[tuple[int, int]] = []
    results = train_many(
        [good.with_(lr=1e6), good], on_epoch=lambda m, r: seen.append((m, r.epoch))
    )
    assert seen == [(0, 1), (1, 1), (1, 2)]  # the diverged run: reported once
    bad_result, ok = results
    assert bad_result.diverged and len(bad_result.history) == 1
    assert bad_result.val_error == bad_result.test_error == 0.9
    assert not ok.diverged and [e.epoch for e in ok.history] == [1, 2]
    alone = train(good)
    assert alone.to_dict().keys() == ok.to_dict().keys()
    for mine, theirs in zip(ok.history, alone.history, strict=True):
        assert (
            list(mine.layers) == list(theirs.layers) == ["conv1", "conv2", "conv3", "conv4", "fc"]
        )
        assert mine.train_loss == pytest.approx(theirs.train_loss, rel=1e-3)
        for name in mine.layers:
            assert mine.layers[name].norm == pytest.approx(theirs.layers[name].norm, rel=1e-3)
    assert ok.test_error == pytest.approx(alone.test_error, abs=0.05)


# --- every option, at K = 1 and K = 3 -------------------------------------------------

OPTIONS: list[dict[str, Any]] = [
    {"norm": "wn"},
    {"norm": "ln"},
    {"norm": "none", "lr": 0.01},
    {"head": "bn"},
    {"affine": False, "head": "bn"},
    {"affine": False, "norm": "wn"},
    {"affine": False, "norm": "ln"},
    {"decay_all": True},
    {"precision": "fp32"},
    {"precision": "bf16"},
    {"augment": False},
    *({"optimizer": o.value, "lr": LR.get(o.value, 1e-3)} for o in OptimizerName),
]


@pytest.mark.parametrize("k", [1, 3])
@pytest.mark.parametrize(
    "option", OPTIONS, ids=lambda o: ",".join(f"{a}={b}" for a, b in o.items()) or "default"
)
def test_every_option_trains_at_any_k(option: dict[str, Any], k: int) -> None:
    base = TINY.with_(**option)
    configs = [base.with_(lr=base.lr * (1 + m), weight_decay=1e-3 * m, seed=m) for m in range(k)]
    epochs: list[tuple[int, EpochRecord]] = []
    results = train_many(configs, on_epoch=lambda m, r: epochs.append((m, r)))
    assert [m for m, _ in epochs] == list(range(k))
    for m, (c, r) in enumerate(zip(configs, results, strict=True)):
        assert r.config == c and not r.diverged
        (record,) = r.history
        assert record.lr == c.lr and math.isfinite(record.train_loss)
        assert 0 <= r.test_error <= 1 and 0 <= record.val_error <= 1
        assert list(record.layers) == ["conv1", "conv2", "conv3", "conv4", "fc"]
        assert all(math.isfinite(x.norm) and x.norm > 0 for x in record.layers.values())
        if c.optimizer is OptimizerName.normalized_sgd:  # projected: on the sphere
            for layer in ("conv1", "conv4"):
                assert record.layers[layer].unit_norm == pytest.approx(1.0, abs=1e-5)
        want = "fp32" if c.precision is Precision.fp32 else "bf16"
        if c.precision is Precision.auto:
            want = device_mod.resolve_precision(Precision.auto, torch.device("cpu")).value
        assert r.precision == want
        json.dumps(r.to_dict(), allow_nan=False)
        assert epochs[m][1] is record


def _numbers(r: Any) -> list[Any]:
    """A result's numbers, wall-clock seconds left out."""
    return [
        r.val_error, r.test_error, r.val_loss, r.test_loss, r.train_loss,
        [{**e.to_dict(), "seconds": None} for e in r.history],
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("optimizer", "head", "norm"),
    [("nesterov", "bn", "bn"), ("nesterov", "linear", "bn"), ("adam", "bn", "bn"),
     ("adamw", "linear", "ln"), ("sgd", "bn", "wn")],
)  # fmt: skip
def test_a_point_trains_bit_for_bit_alike_whatever_its_partners(
    optimizer: str, head: str, norm: str
) -> None:
    # The same point alone and fused with 1, 2 or 3 others gives the same bits on the CPU,
    # records included. It did not: oneDNN's grouped convolutions round unlike its plain ones,
    # and BN over K·C channels rounded a model's channels by where they fell among its
    # partners' (the logits' BN over K·10 already at K = 2 against 3).
    lr = 0.05 if optimizer in ("nesterov", "sgd") else 3e-3
    base = STEP.with_(optimizer=optimizer, lr=lr, head=head, norm=norm, affine=False, epochs=2,
                      batch_size=128, val_fraction=0.75, init_scale=0.5)  # fmt: skip
    others = [base.with_(lr=lr * (1 + m), weight_decay=0.001 * m, seed=7 + m) for m in range(3)]
    alone = train_many([base])[0]
    assert alone.config == base and len(alone.history) == 2
    for k in (2, 3, 4):
        fused = train_many([*others[: k - 2], base, *others[k - 2 :]][:k])
        mine = next(r for r in fused if r.config == base)
        assert _numbers(mine) == _numbers(alone), k


def test_real_cifar10_fused_and_alone_agree_bit_for_bit(cifar_dir: Path) -> None:
    # The case: real images, width 8, the headline's setting, two epochs.
    base = TINY.with_(dataset="cifar10", data_dir=cifar_dir, val_fraction=0.9, width=8,
                      optimizer="nesterov", lr=0.05, weight_decay=0.01, head="bn",
                      affine=False, precision="fp32", epochs=2, batch_size=128)  # fmt: skip
    partner = base.with_(lr=0.1, seed=3)
    alone = train_many([base])[0]
    for configs in ([base, partner], [partner, base, partner.with_(seed=4)]):
        mine = next(r for r in train_many(configs) if r.config == base)
        assert _numbers(mine) == _numbers(alone)


@pytest.mark.parametrize("k", [1, 3])
def test_real_cifar10_trains_at_any_k(cifar_dir: Path, k: int) -> None:
    # A tenth of the real subset's training images (517: two steps of 256), one epoch.
    base = TINY.with_(dataset="cifar10", data_dir=cifar_dir, val_fraction=0.9)
    configs = [base.with_(lr=0.05 * (1 + m), seed=m) for m in range(k)]
    results = train_many(configs)
    assert [r.config for r in results] == configs
    for r in results:
        assert r.steps_per_epoch == 517 // 256 and not r.diverged
        assert math.isfinite(r.train_loss) and 0 <= r.test_error <= 1


def test_without_affine_the_trained_buffer_is_the_weights_and_they_stay_invariant() -> None:
    for k in (1, 3):
        configs = [
            TINY.with_(affine=False, head="bn", optimizer="adam", lr=3e-3, seed=m) for m in range(k)
        ]
        engine = Engine(configs)
        views = engine.net.params.views
        assert all("norm" not in n and "original0" not in n for n in views)  # no γ, β, gain
        assert engine.net.params.flat.numel() == sum(w.numel() for w in engine.net.weights.values())
        assert engine.optimizer.exp_avg is not None
        assert engine.optimizer.exp_avg.numel() == engine.net.params.flat.numel()  # its state
        assert set(engine.net.invariant) == set(engine.net.weights)  # everything trained
        engine.set_lr(0, 0)
        batch = next(iter(engine.task.batches(0)))
        engine.step(batch)
        # Every trained tensor is scale-invariant: scaling all of them leaves the losses be.
        before, _ = engine.task.losses(batch)
        with torch.no_grad():
            for i, w in enumerate(engine.net.weights.values()):
                w.mul_(2.0 + i)
        after, _ = engine.task.losses(batch)
        # To BN's eps (1e-5 against each channel's variance), which scaling changes.
        torch.testing.assert_close(after, before, rtol=1e-3, atol=1e-5)


def test_tracking_side_by_side_equals_tracking_runs_of_their_own() -> None:
    base = TrainConfig(dataset="tracking", optimizer="momentum", epochs=2, lr_drops=(0.5,))
    configs = [
        base.with_(lr=0.1, weight_decay=0.01, seed=0),
        base.with_(lr=0.3, weight_decay=0.001, seed=1),
        base.with_(lr=0.1, weight_decay=0.01, seed=0),
    ]
    together = train_many(configs)
    for c, r in zip(configs, together, strict=True):
        alone = train(c)
        assert r.precision == alone.precision == "fp32"
        for a, b in zip(r.history, alone.history, strict=True):
            assert a.lr == b.lr
            assert a.train_loss == pytest.approx(b.train_loss, rel=1e-5)
            assert a.val_error == pytest.approx(b.val_error, rel=1e-5)
            assert a.layers["w"].norm == pytest.approx(b.layers["w"].norm, rel=1e-5)
    assert together[0].history[-1].layers == together[2].history[-1].layers
    assert together[0].val_error != together[1].val_error


# --- contracts of the loop --------------------------------------------------------------


def test_same_seed_same_result_and_another_seed_differs() -> None:
    a, b = train(QUICK), train(QUICK)
    assert [e.to_dict() | {"seconds": 0} for e in a.history] == [
        e.to_dict() | {"seconds": 0} for e in b.history
    ]
    assert a.test_error == b.test_error
    c = train(QUICK.with_(seed=1))
    assert c.history[-1].train_loss != a.history[-1].train_loss


@pytest.mark.parametrize("dataset", ["synthetic", "tracking"])
def test_the_global_rng_and_cudnn_flags_are_left_alone(dataset: str) -> None:
    torch.manual_seed(123)
    state = torch.random.get_rng_state()
    benchmark = torch.backends.cudnn.benchmark
    base = TINY.with_(dataset=dataset, optimizer="sgd", lr=0.1)
    train_many([base, base.with_(seed=1)])
    assert torch.equal(torch.random.get_rng_state(), state)
    assert torch.backends.cudnn.benchmark == benchmark


def test_cudnn_autotuning_is_scoped_and_yields_to_determinism() -> None:
    cudnn = torch.backends.cudnn
    before = cudnn.benchmark
    cuda = torch.device("cuda")  # a device object only: nothing runs on it
    try:
        cudnn.benchmark = False
        with _cudnn_autotune(cuda):
            assert cudnn.benchmark
        assert not cudnn.benchmark
        with _cudnn_autotune(torch.device("cpu")):
            assert not cudnn.benchmark
        torch.use_deterministic_algorithms(True)
        with _cudnn_autotune(cuda):
            assert not cudnn.benchmark  # deterministic algorithms asked for: no autotuner
    finally:
        torch.use_deterministic_algorithms(False)
        cudnn.benchmark = before


def _tf32_flags() -> tuple[bool, bool]:
    return torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32


@pytest.mark.parametrize(("precision", "want"), [("fp32", False), ("bf16", False), ("tf32", True)])
def test_tf32_is_on_exactly_for_tf32_on_cuda_and_restored(precision: str, want: bool) -> None:
    # PyTorch lets cuDNN use TF32 by default (cuBLAS not): a run recorded as fp32 was TF32.
    cuda = torch.device("cuda")  # a device object only: nothing runs on it
    before = _tf32_flags()
    try:
        for start in (False, True):
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = start
            with training_flags(cuda, Precision(precision)):
                assert _tf32_flags() == (want, want)
            assert _tf32_flags() == (start, start)
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


def test_a_cpu_run_touches_no_tf32_flag_and_tf32_there_is_fp32_bit_for_bit() -> None:
    before = _tf32_flags()
    seen: list[tuple[bool, bool]] = []
    try:
        # Flags no default has: a CPU run must leave whatever it finds.
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = True, False
        fp32 = train(STEP, on_batch=lambda *_: seen.append(_tf32_flags()))
        tf32 = train(STEP.with_(precision="tf32"), on_batch=lambda *_: seen.append(_tf32_flags()))
        assert _tf32_flags() == (True, False)
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before
    assert seen and set(seen) == {(True, False)}
    assert (fp32.precision, tf32.precision) == ("fp32", "fp32")  # a CPU has no TF32
    assert _numbers(tf32) == _numbers(fp32)


def test_the_precision_recorded_is_the_one_used(monkeypatch: pytest.MonkeyPatch) -> None:
    # Defect 3: on bf16 hardware the tracking toy said "bf16" while training in fp32.
    monkeypatch.setattr(device_mod, "cpu_flags", lambda: frozenset({"amx_tile", "amx_bf16"}))
    tracking = TrainConfig(dataset="tracking", optimizer="sgd", epochs=1, precision="auto")
    assert Engine([tracking]).precision is Precision.fp32
    assert train(tracking).precision == "fp32"
    image = TINY.with_(precision="auto")
    engine = Engine([image])
    assert engine.precision is Precision.bf16
    x, _ = next(iter(engine.task.batches(0)))
    with engine.autocast:
        assert engine.net(x).dtype is torch.bfloat16  # bf16 is what it trains in
    assert train(image).precision == "bf16"


def test_batches_are_checked_before_anything_is_loaded(tmp_path: Path) -> None:
    missing = TrainConfig(dataset="cifar10", data_dir=tmp_path, width=4)
    with pytest.raises(ConfigError, match="differs from run 1 in width"):
        train_many([missing, missing.with_(width=8)])  # not a DataError: nothing was read


def test_reports_every_epoch_with_the_scheduled_lr() -> None:
    seen: list[EpochRecord] = []
    batches: list[tuple[int, int, int]] = []
    config = QUICK.with_(epochs=10, lr=0.1, batch_size=256)
    result = train(config, on_epoch=seen.append, on_batch=lambda *a: batches.append(a))
    assert [e.epoch for e in seen] == list(range(1, 11))
    # ÷10 after 50 % and 80 % of the epochs, as the paper (50 and 80 of 100).
    assert [e.lr for e in seen] == pytest.approx([0.1] * 5 + [0.01] * 3 + [0.001] * 2)
    assert len(batches) == 10 * result.steps_per_epoch
    assert batches[-1] == (10, result.steps_per_epoch, result.steps_per_epoch)
    assert list(seen[0].layers) == ["conv1", "conv2", "conv3", "conv4", "fc"]


def test_a_callback_can_stop_training() -> None:
    class Stop(Exception):
        pass

    def stop(record: EpochRecord) -> None:
        raise Stop

    with pytest.raises(Stop):
        train(FAST, on_epoch=stop)
    with pytest.raises(Stop):
        train_many([FAST, FAST.with_(seed=1)], on_batch=lambda *_: stop(None))  # type: ignore[arg-type]


def test_divergence_is_a_result_with_chance_errors() -> None:
    # Without normalization a huge rate overflows to inf/NaN within the first epoch.
    result = train(FAST.with_(norm="none", lr=1e6, epochs=5))
    assert result.diverged
    assert len(result.history) == 1  # stopped at once
    assert result.val_error == result.test_error == 0.9
    record = result.to_dict()
    assert record["diverged"] is True and record["train_loss"] is None
    json.dumps(record, allow_nan=False)  # strict JSON: no NaN or Infinity


def test_normalized_sgd_keeps_units_on_the_sphere_during_training() -> None:
    result = train(FAST.with_(optimizer="normalized-sgd", lr=0.5, head="bn"))
    for rec in result.history[-1].layers.values():
        assert rec.unit_norm == pytest.approx(1.0, abs=1e-5)
        assert rec.eff_lr == pytest.approx(result.history[-1].lr)


def test_weight_decay_shrinks_norms_at_a_fixed_direction_loss() -> None:
    # With BN, λ only sets ‖w‖: more decay, smaller norms (the paper's mechanism). Both in
    # one batch of two: the same data, the same seed, only λ differs.
    small, large = train_many(
        [
            FAST.with_(weight_decay=0.0, epochs=3, lr_drops=()),
            FAST.with_(weight_decay=0.5, epochs=3, lr_drops=()),
        ]
    )
    for name in ("conv1", "conv2", "conv3", "conv4"):
        assert large.history[-1].layers[name].norm < 0.8 * small.history[-1].layers[name].norm


@pytest.mark.parametrize(
    ("norm", "head", "affine"), [("bn", "linear", True), ("bn", "bn", False), ("wn", "bn", False)]
)
def test_the_synthetic_task_is_learned(norm: str, head: str, affine: bool) -> None:
    # Without affine only the (scale-invariant) weights train, and it still learns.
    config = FAST.with_(optimizer="adam", lr=3e-3, epochs=3, width=8, norm=norm, head=head)
    result = train(config.with_(affine=affine))
    assert result.test_error < 0.5  # chance is 0.9


def test_the_tracking_toy_tracks() -> None:
    # Near the optimum of sweeps/tracking.toml (ηλ ≈ 3.4e-3 for SGD), where it settles at ≈ 0.16.
    config = TrainConfig(
        dataset="tracking", optimizer="sgd", lr=0.34, weight_decay=0.01, epochs=4, lr_drops=()
    )
    result = train(config)
    assert list(result.history[0].layers) == ["w"]
    assert result.val_error < 0.25  # a random direction scores 1
    assert math.isfinite(result.history[-1].layers["w"].norm)


def test_learns_on_real_cifar10_images(cifar_dir: Path) -> None:
    config = TrainConfig(
        dataset="cifar10",
        data_dir=cifar_dir,
        optimizer="adam",
        lr=2e-3,
        weight_decay=5e-4,
        epochs=3,
        width=8,
        batch_size=64,
    )
    result = train(config)
    assert result.steps_per_epoch == 4653 // 64  # 5170 minus a 10 % validation split
    assert result.test_error < 0.75  # chance is 0.9


@pytest.mark.slow
def test_a_batched_sweep_completes_each_point_once_as_its_own_trial(tmp_path: Path) -> None:
    from optuna.trial import TrialState

    from l2bn.sweep.spec import load_sweep
    from l2bn.sweep.storage import open_storage
    from l2bn.sweep.study import point_of, prepare_study
    from l2bn.sweep.worker import WorkerSpec, run_worker

    sweep_file = tmp_path / "s.toml"
    sweep_file.write_text(
        'name = "f"\ndataset = "synthetic"\nepochs = 1\nwidth = 4\nlr = [0.01, 0.1, 1.0]\n'
        "weight_decay = [1e-4, 1e-2]\nseeds = [0]\n[optimizers.sgd]\n"
    )
    (sweep,) = load_sweep(sweep_file, {}).select([])
    spec = WorkerSpec(f"sqlite:///{tmp_path / 'f.db'}", sweep.study_name, sweep, fuse=4)
    study = prepare_study(open_storage(spec.storage), sweep)
    assert run_worker(spec).trials == 6  # a round of 4, then a round of 2
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    assert sorted(point_of(t) for t in complete) == sorted(sweep.points())  # type: ignore[type-var]
    for t in complete:
        assert set(t.user_attrs) >= {"history", "test_error", "diverged", "steps_per_epoch"}
        assert t.user_attrs["device"] == "cpu" and t.user_attrs["precision"] in ("fp32", "bf16")
        assert list(t.intermediate_values) == [1] and len(t.user_attrs["history"]) == 1
    others = study.get_trials(states=(TrialState.RUNNING, TrialState.WAITING, TrialState.FAIL))
    assert not others


# --- the validation loss, the schedule's recorded η --------------------------------------


def test_val_loss_is_the_cross_entropy_of_a_fresh_forward_pass() -> None:
    # After two steps (BN's running statistics moved), each model's summed NLL on the split
    # against the plain nn.Module with the same weights, in eval mode, on the whole split.
    from l2bn.train import data as D

    configs = [STEP, STEP.with_(seed=1, lr=0.01, weight_decay=0.1)]
    engine = Engine(configs)
    engine.set_lr(0, 0)
    for _, batch in zip(range(2), engine.task.batches(0), strict=False):
        engine.step(batch)
    task = engine.task
    for split in ("val", "test"):
        wrong, nll, n = engine.evaluate(split)
        s = getattr(task.data, split)  # type: ignore[attr-defined]
        assert n == len(s)
        for k, c in enumerate(configs):
            net = reference_net(c)
            with torch.no_grad():  # the engine's trained model k, into the plain module
                theirs = state_of(net)
                for name, t in model_state(engine.net, k).items():
                    theirs[name].copy_(t)
            net.eval()
            with torch.no_grad():
                logits = net(D.normalize(s.x, task.data, torch.float32)).double()  # type: ignore[attr-defined]
            want = -logits.log_softmax(1).gather(1, s.y.view(-1, 1)).sum()
            assert float(nll[k]) == pytest.approx(float(want), rel=1e-4)
            assert int(wrong[k]) == int((logits.argmax(1) != s.y).sum())


def test_the_records_carry_the_validation_and_test_loss() -> None:
    result = train(QUICK)
    losses = [e.val_loss for e in result.history]
    assert all(0 < x < 10 for x in losses)  # nats; chance is ln 10 ≈ 2.3
    assert result.val_loss == losses[-1] and 0 < result.test_loss < 10
    d = result.to_dict()
    assert d["val_loss"] == result.val_loss and d["test_loss"] == result.test_loss
    assert d["history"][0]["val_loss"] == losses[0]
    # The tracking toy: its loss is its noise-free error.
    toy = train(TrainConfig(dataset="tracking", optimizer="sgd", lr=0.34, epochs=2))
    assert [e.val_loss for e in toy.history] == [e.val_error for e in toy.history]
    assert toy.val_loss == toy.val_error and toy.test_loss == toy.test_error
    # Diverged: no loss to report.
    bad = train(FAST.with_(norm="none", lr=1e6, epochs=2))
    assert bad.diverged and math.isnan(bad.val_loss) and math.isnan(bad.test_loss)
    d = bad.to_dict()
    assert d["val_loss"] is None and d["test_loss"] is None
    assert d["history"][-1]["val_loss"] is None


def test_wsd_records_each_epochs_mean_lr_and_the_steps_feel_it() -> None:
    # 4 epochs of 200 steps, η constant, then linear to 0 over the last 30 % of the steps;
    # computed by hand: decay from step 560 = 0.7·800, η·(800 − t)/(800 − 560 + 1).
    lr, wd = 0.3, 0.01
    config = TrainConfig(
        dataset="tracking", optimizer="sgd", lr=lr, weight_decay=wd, epochs=4,
        schedule="wsd", decay_fraction=0.3,
    )  # fmt: skip
    per_step = [lr if t < 560 else lr * (800 - t) / 241 for t in range(800)]
    want = [sum(per_step[200 * e : 200 * (e + 1)]) / 200 for e in range(4)]
    result = train(config)
    got = [e.lr for e in result.history]
    assert got == pytest.approx(want, rel=1e-12)
    assert got[0] == pytest.approx(lr) and got[2] < got[1] and got[3] < got[2]
    for e, rec in zip(result.history, got, strict=True):
        w = e.layers["w"]
        assert w.angle_eq == pytest.approx(math.sqrt(2 * rec * wd), rel=1e-12)  # θ_eq at mean η
        # Plain SGD on the sphere: r = −ηλ each step, so the mean r is −λ·(the mean η):
        # the optimizer used each step's η, not the epoch's first.
        assert w.radial == pytest.approx(-wd * rec, rel=1e-4)


def test_set_lr_scales_the_base_rates_and_never_compounds() -> None:
    # The K base rates go to the device once; each call multiplies them by the schedule's
    # factor afresh (a decayed η is not decayed again), in any order of (epoch, step).
    configs = [
        TrainConfig(dataset="tracking", optimizer="sgd", lr=lr, epochs=4, schedule="wsd",
                    decay_fraction=0.5)
        for lr in (0.3, 0.1)
    ]  # fmt: skip
    engine = Engine(configs)
    n = engine.task.steps_per_epoch
    for epoch, step in [(3, n - 1), (3, n - 1), (0, 0), (2, n // 2), (3, 0)]:
        lrs = engine.set_lr(epoch, step)
        want = [c.lr_at(epoch, step, n) for c in configs]
        assert lrs == pytest.approx(want, rel=1e-15)
        assert engine.optimizer.lr.flatten().tolist() == pytest.approx(want, rel=1e-6)
    assert engine.set_lr(0, 0) == [0.3, 0.1]  # phase 1: exactly the base rates
    assert engine.set_lr(3, n - 1)[0] == pytest.approx(0.3 / (2 * n + 1))  # the last step
