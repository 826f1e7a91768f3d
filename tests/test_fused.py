"""The fused grid engine against the plain loop: the same updates, per-model data and
independence, and one result per model in the same shape as train()'s."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from optuna.trial import TrialState

from l2bn.errors import ConfigError
from l2bn.sweep.spec import load_sweep
from l2bn.sweep.storage import open_storage
from l2bn.sweep.study import point_of, prepare_study
from l2bn.sweep.worker import WorkerSpec, run_worker
from l2bn.train.config import OptimizerName, TrainConfig
from l2bn.train.engine import train
from l2bn.train.fused import FusedTrainer, check_fusable, train_fused
from l2bn.train.optim import SPECS, build_optimizer, project_to_unit_norm, projection_targets
from l2bn.train.tasks import ImageTask, make_task

CPU = torch.device("cpu")
BASE = TrainConfig(
    dataset="synthetic",
    width=4,
    epochs=1,
    batch_size=128,
    lr_drops=(),
    weight_decay=0.01,
    precision="fp32",  # the equivalences are fp32 ones; bf16 would add rounding noise
)
LR = {"sgd": 0.1, "momentum": 0.1, "nesterov": 0.1, "normalized-sgd": 0.5}  # others: 1e-2
STEPS = 3


class Plain:
    """The unfused run of ``config``, stepped by hand the way l2bn.train.engine does."""

    def __init__(self, config: TrainConfig) -> None:
        task = make_task(config, CPU, channels_last=True)
        assert isinstance(task, ImageTask)
        self.task, self.config = task, config
        self.opt = build_optimizer(task.model, config)
        for g in self.opt.param_groups:
            g["lr"] = config.lr_at(0)
        self.targets = projection_targets(task.model) if SPECS[config.optimizer].project else []
        if self.targets:
            project_to_unit_norm(self.targets)

    def step(self, batch: tuple[torch.Tensor, torch.Tensor]) -> None:
        loss, _ = self.task.loss(batch)
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()
        if self.targets:
            project_to_unit_norm(self.targets)

    def state(self) -> dict[str, torch.Tensor]:
        return {n: p.detach() for n, p in self.task.model.named_parameters()}


def _sync(trainer: FusedTrainer, k: int, plain: Plain) -> None:
    """Give fused model k the plain model's exact parameters and BN statistics.

    A 1e-8 difference (einsum vs addmm in the classifier) can grow chaotically over many
    steps of a width-4 net; re-syncing makes each comparison one step, from the same start.
    """
    with torch.no_grad():
        for n, p in plain.task.model.named_parameters():
            trainer.net.params[n][k].copy_(p)
        for n, b in plain.task.model.named_buffers():
            if n in trainer.net.buffers:
                trainer.net.buffers[n][k].copy_(b)


def _assert_same(trainer: FusedTrainer, k: int, plain: Plain) -> None:
    """Equal to float tolerance, tensor by tensor: ‖fused − plain‖ ≤ 1e-4·‖plain‖.

    Relative to the whole tensor, not per element: Adam's m/√v turns a 1e-9 gradient's
    rounding into an O(η) change of that one element, legitimately.
    """
    fused = trainer.net.state_dict(k)
    for n, p in plain.state().items():
        err = torch.linalg.vector_norm(fused[n] - p).item()
        assert err <= 1e-4 * torch.linalg.vector_norm(p).item() + 1e-6, (n, err)


@pytest.mark.parametrize("norm", ["bn", "ln", "wn", "none"])
@pytest.mark.parametrize("name", [o.value for o in OptimizerName])
def test_k1_matches_the_plain_step_for_step(name: str, norm: str) -> None:
    head = "bn" if name == "normalized-sgd" else "linear"
    config = BASE.with_(optimizer=name, lr=LR.get(name, 1e-2), norm=norm, head=head)
    plain = Plain(config)
    trainer = FusedTrainer([config], CPU)
    trainer.start_epoch(0)
    _assert_same(trainer, 0, plain)  # the same initialization
    for i, (batch, (x, y)) in enumerate(
        zip(plain.task.batches(0), trainer.batches(0), strict=True)
    ):
        if i == STEPS:
            break
        torch.testing.assert_close(y[0], batch[1], rtol=0, atol=0)  # the same data order
        torch.testing.assert_close(x, batch[0], rtol=0, atol=0)  # and augmentation
        plain.step(batch)
        trainer.step(x, y)
        _assert_same(trainer, 0, plain)
        _sync(trainer, 0, plain)


def test_two_identical_copies_match_two_separate_runs() -> None:
    config = BASE.with_(optimizer="nesterov", lr=0.1)
    plains = [Plain(config), Plain(config)]
    trainer = FusedTrainer([config, config], CPU)
    trainer.start_epoch(0)
    batches = zip(
        plains[0].task.batches(0), plains[1].task.batches(0), trainer.batches(0), strict=True
    )
    for i, (b0, b1, (x, y)) in enumerate(batches):
        if i == STEPS:
            break
        plains[0].step(b0)
        plains[1].step(b1)
        trainer.step(x, y)
        for k in (0, 1):
            _assert_same(trainer, k, plains[k])
            _sync(trainer, k, plains[k])


def test_each_model_has_its_own_seed_data_and_hyperparameters() -> None:
    configs = [BASE.with_(seed=0, lr=0.1), BASE.with_(seed=1, lr=0.01, weight_decay=0.1)]
    trainer = FusedTrainer(configs, CPU)
    trainer.start_epoch(0)
    plains = [Plain(c) for c in configs]
    (x, y), b0, b1 = (
        next(trainer.batches(0)),
        next(plains[0].task.batches(0)),
        next(plains[1].task.batches(0)),
    )
    assert torch.equal(y[0], b0[1]) and torch.equal(y[1], b1[1])
    assert not torch.equal(y[0], y[1])
    torch.testing.assert_close(x[:, :3], b0[0], rtol=0, atol=0)
    torch.testing.assert_close(x[:, 3:], b1[0], rtol=0, atol=0)
    trainer.step(x, y)
    plains[0].step(b0)
    plains[1].step(b1)
    for k in (0, 1):
        _assert_same(trainer, k, plains[k])


def test_a_diverged_model_is_frozen_and_leaves_the_others_as_unfused() -> None:
    # Without normalization a huge rate overflows within a few steps (test_train does the same).
    good = BASE.with_(norm="none", optimizer="sgd", lr=0.05)
    bad = good.with_(lr=1e6, seed=3)
    plain = Plain(good)
    trainer = FusedTrainer([bad, good], CPU)
    trainer.start_epoch(0)
    frozen: dict[str, torch.Tensor] | None = None
    for i, (batch, (x, y)) in enumerate(
        zip(plain.task.batches(0), trainer.batches(0), strict=True)
    ):
        if i == 3 * STEPS:
            break
        plain.step(batch)
        trainer.step(x, y)
        _assert_same(trainer, 1, plain)
        _sync(trainer, 1, plain)
        if frozen is not None:
            for n, p in trainer.net.state_dict(0).items():
                if "running" not in n:
                    assert (
                        torch.equal(p, frozen[n])
                        or torch.isnan(p).all() == torch.isnan(frozen[n]).all()
                    ), n
        if not bool(trainer.alive[0]) and frozen is None:
            frozen = trainer.net.state_dict(0)
    assert frozen is not None, "the huge rate should have diverged"
    assert bool(trainer.alive[1])


@pytest.mark.slow
def test_train_fused_records_each_model_like_train() -> None:
    good = BASE.with_(norm="none", optimizer="sgd", lr=0.05, epochs=2)
    results = train_fused([good.with_(lr=1e6), good])
    bad_result, ok = results
    assert bad_result.diverged and len(bad_result.history) == 1
    assert bad_result.val_error == bad_result.test_error == 0.9
    assert not ok.diverged and [e.epoch for e in ok.history] == [1, 2]
    unfused = train(good)
    assert unfused.to_dict().keys() == ok.to_dict().keys()
    for mine, theirs in zip(ok.history, unfused.history, strict=True):
        assert (
            list(mine.layers) == list(theirs.layers) == ["conv1", "conv2", "conv3", "conv4", "fc"]
        )
        assert mine.train_loss == pytest.approx(theirs.train_loss, rel=1e-3)
        for name in mine.layers:
            assert mine.layers[name].norm == pytest.approx(theirs.layers[name].norm, rel=1e-3)
    assert ok.test_error == pytest.approx(unfused.test_error, abs=0.05)


@pytest.mark.slow
def test_on_epoch_reports_each_model_and_may_stop() -> None:
    seen: list[tuple[int, int]] = []
    configs = [BASE.with_(epochs=2, lr=0.1), BASE.with_(epochs=2, lr=0.01)]
    train_fused(configs, on_epoch=lambda k, r: seen.append((k, r.epoch)))
    assert seen == [(0, 1), (1, 1), (0, 2), (1, 2)]

    class Stop(Exception):
        pass

    def stop(k: int, record: object) -> None:
        raise Stop

    with pytest.raises(Stop):
        train_fused(configs, on_epoch=stop)


def test_only_runs_that_differ_in_lr_wd_seed_fuse() -> None:
    check_fusable([BASE, BASE.with_(lr=1.0, weight_decay=0.5, seed=7)])
    with pytest.raises(ConfigError):
        check_fusable([BASE, BASE.with_(width=8)])
    with pytest.raises(ConfigError):
        check_fusable([TrainConfig(dataset="tracking")])
    with pytest.raises(ConfigError, match="--fuse 1"):
        check_fusable([BASE.with_(affine=False)])


@pytest.mark.slow
def test_a_fused_sweep_completes_each_point_once_as_its_own_trial(tmp_path: Path) -> None:
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
