"""The flat optimizer: each update against a step computed by hand (NumPy, PyTorch's
documented formulas) and against torch.optim itself, per-model η and λ, the alive mask, what
λ touches, and normalized SGD's projection."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from reference import TORCH_OPTIM

from l2bn.train.config import Head, Norm, OptimizerName
from l2bn.train.models import ConvNets, FlatParams, recorded_weights
from l2bn.train.optim import SPECS, FlatOptimizer, project_to_unit_norm

LR, WD, EPS = 0.1, 0.05, 1e-8
G = np.array([[0.3, -1.2, 0.5], [2.0, 0.1, -0.7]])  # a fixed gradient, the same every step
W0 = [[1.0, 2.0, -1.0], [0.5, -0.5, 3.0]]
CPU = torch.device("cpu")


def _tiny(k: int = 1) -> FlatParams:
    """K copies of one decayed weight (a Linear's) and one undecayed BN-like γ, in float64."""
    w = torch.tensor([W0] * k, dtype=torch.float64)
    gamma = torch.tensor([[1.0, -2.0]] * k, dtype=torch.float64)
    return FlatParams({"fc.weight": w, "gamma": gamma}, ["fc.weight"], CPU)


def _reference(name: str) -> Callable[[np.ndarray, np.ndarray, dict[str, Any], int], np.ndarray]:
    """w_{t+1} from w_t and gradient g, by the textbook formula, with state kept in a dict."""

    def sgd(w: np.ndarray, g: np.ndarray, s: dict[str, Any], t: int) -> np.ndarray:
        return w - LR * (g + WD * w)

    def momentum(w: np.ndarray, g: np.ndarray, s: dict[str, Any], t: int) -> np.ndarray:
        d = g + WD * w
        s["b"] = d if t == 1 else 0.9 * s["b"] + d
        return w - LR * s["b"]

    def nesterov(w: np.ndarray, g: np.ndarray, s: dict[str, Any], t: int) -> np.ndarray:
        d = g + WD * w
        s["b"] = d if t == 1 else 0.9 * s["b"] + d
        return w - LR * (d + 0.9 * s["b"])

    def rmsprop(w: np.ndarray, g: np.ndarray, s: dict[str, Any], t: int) -> np.ndarray:
        d = g + WD * w
        s["v"] = 0.9 * s.get("v", 0.0) + 0.1 * d**2
        return w - LR * d / (np.sqrt(s["v"]) + EPS)

    def adam_like(decoupled: bool) -> Callable[..., np.ndarray]:
        def step(w: np.ndarray, g: np.ndarray, s: dict[str, Any], t: int) -> np.ndarray:
            if decoupled:
                w = w * (1 - LR * WD)
                d = g
            else:
                d = g + WD * w
            s["m"] = 0.9 * s.get("m", 0.0) + 0.1 * d
            s["v"] = 0.999 * s.get("v", 0.0) + 0.001 * d**2
            m_hat, v_hat = s["m"] / (1 - 0.9**t), s["v"] / (1 - 0.999**t)
            return w - LR * m_hat / (np.sqrt(v_hat) + EPS)

        return step

    def normalized_sgd(w: np.ndarray, g: np.ndarray, s: dict[str, Any], t: int) -> np.ndarray:
        w = w - LR * (g + WD * w)
        return w / np.linalg.norm(w, axis=1, keepdims=True)

    return {
        "sgd": sgd,
        "momentum": momentum,
        "nesterov": nesterov,
        "rmsprop": rmsprop,
        "adam": adam_like(decoupled=False),
        "adamw": adam_like(decoupled=True),
        "normalized-sgd": normalized_sgd,
    }[name]


@pytest.mark.parametrize("name", [o.value for o in OptimizerName])
def test_three_steps_match_the_hand_computed_update(name: str) -> None:
    params = _tiny()
    spec = SPECS[OptimizerName(name)]
    opt = FlatOptimizer(spec, params, [WD])
    opt.set_lr([LR])
    w, gamma = params.views["fc.weight"], params.views["gamma"]
    w_ref, gamma0 = np.array(W0), gamma.detach().clone()
    state: dict[str, Any] = {}
    for t in range(1, 4):
        # loss = Σ G⊙W + Σ γ: gradient G for W, 1 for γ.
        params.backward((w[0] * torch.from_numpy(G)).sum() + gamma.sum())
        opt.step(torch.tensor([True]))
        if spec.project:
            project_to_unit_norm({"fc": w}, {"fc": "unit"})
        w_ref = _reference(name)(w_ref, G, state, t)
        np.testing.assert_allclose(w[0].detach().numpy(), w_ref, rtol=1e-10, atol=1e-12)
    # γ is not decayed: for plain SGD its update is exactly −η per step (gradient 1).
    if name == "sgd":
        torch.testing.assert_close(gamma.detach(), gamma0 - 3 * LR)


@pytest.mark.parametrize("decay_all", [False, True])
@pytest.mark.parametrize("name", [o.value for o in OptimizerName])
def test_each_model_follows_torch_optim_with_its_own_lr_and_decay(
    name: str, decay_all: bool
) -> None:
    # Three models, three (η, λ): each must follow torch.optim run alone with its own, under
    # gradients that differ per model and per step.
    lrs, wds = [0.1, 0.01, 0.3], [0.05, 0.0, 0.5]
    params = _tiny(3)
    spec = SPECS[OptimizerName(name)]
    opt = FlatOptimizer(spec, params, wds, decay_all=decay_all)
    opt.set_lr(lrs)
    cls, kwargs = TORCH_OPTIM[name]
    refs = []
    for k in range(3):
        w = torch.nn.Parameter(params.views["fc.weight"][k].detach().clone())
        gamma = torch.nn.Parameter(params.views["gamma"][k].detach().clone())
        groups = [
            {"params": [w], "weight_decay": wds[k]},
            {"params": [gamma], "weight_decay": wds[k] if decay_all else 0.0},
        ]
        refs.append((w, gamma, cls(groups, lr=lrs[k], **kwargs)))
    g = torch.Generator().manual_seed(0)
    for _ in range(4):
        grad = torch.randn(params.grad.shape, dtype=torch.float64, generator=g)
        params.grad.copy_(grad)
        opt.step(torch.ones(3, dtype=torch.bool))
        if spec.project:
            project_to_unit_norm({"fc": params.views["fc.weight"]}, {"fc": "unit"})
        for k, (w, gamma, ref) in enumerate(refs):
            w.grad = params.grads["fc.weight"][k].clone()
            gamma.grad = params.grads["gamma"][k].clone()
            ref.step()
            if spec.project:
                with torch.no_grad():
                    w.div_(torch.linalg.vector_norm(w, dim=1, keepdim=True))
            torch.testing.assert_close(params.views["fc.weight"][k], w, rtol=1e-12, atol=1e-14)
            torch.testing.assert_close(params.views["gamma"][k], gamma, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("name", [o.value for o in OptimizerName])
def test_a_model_that_is_not_alive_keeps_its_parameters_exactly(name: str) -> None:
    params = _tiny(2)
    opt = FlatOptimizer(SPECS[OptimizerName(name)], params, [WD, WD])
    opt.set_lr([LR, LR])
    before = params.flat.clone()
    params.grad[0] = float("nan")  # a diverged model's gradients
    params.grad[1] = 0.5
    opt.step(torch.tensor([False, True]))
    assert torch.equal(params.flat[0], before[0])
    assert not torch.equal(params.flat[1], before[1])
    assert bool(torch.isfinite(params.flat).all())


def test_decay_touches_conv_and_linear_weights_only() -> None:
    nets = ConvNets([0, 1], 4, Norm.bn, Head.linear, True, CPU)
    decayed = {n for n, v in nets.params.views.items() if _all(nets.params, v, 1.0)}
    assert decayed == {"conv1.weight", "conv2.weight", "conv3.weight", "conv4.weight", "fc.weight"}
    # γ/β of every BN and the classifier bias get no decay, unless decay_all.
    opt = FlatOptimizer(SPECS[OptimizerName.sgd], nets.params, [0.1, 0.2])
    for name, v in nets.params.views.items():
        want = [0.1, 0.2] if name in decayed else [0.0, 0.0]
        got = [_block(nets.params, v, opt.wd)[k].unique().tolist() for k in range(2)]
        assert got == [[w] for w in torch.tensor(want).tolist()], name
    everything = FlatOptimizer(SPECS[OptimizerName.sgd], nets.params, [0.1, 0.2], decay_all=True)
    assert (everything.wd > 0).all()


def test_weight_norm_decays_the_direction_not_the_gain() -> None:
    nets = ConvNets([0], 4, Norm.wn, Head.linear, True, CPU)
    views = nets.params.views
    assert _all(nets.params, views["conv1.parametrizations.weight.original1"], 1.0)  # v
    assert _all(nets.params, views["conv1.parametrizations.weight.original0"], 0.0)  # gain
    assert recorded_weights(Norm.wn)["conv1"] == "conv1.parametrizations.weight.original1"


def _block(params: FlatParams, view: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """``values`` (rows × P, one column per trained number) over ``view``'s columns."""
    offset = view.storage_offset() - params.flat.storage_offset()
    return values[:, offset : offset + view[0].numel()]


def _all(params: FlatParams, view: torch.Tensor, value: float) -> bool:
    return bool((_block(params, view, params.decayed) == value).all())


@pytest.mark.parametrize("norm", [Norm.bn, Norm.ln])
def test_normalized_sgd_keeps_every_scale_invariant_unit_at_norm_one(norm: Norm) -> None:
    nets = ConvNets([0, 1], 4, norm, Head.bn, True, CPU)
    assert len(nets.invariant) == 5
    project_to_unit_norm(nets.weights, nets.invariant)
    for layer, kind in nets.invariant.items():
        units = torch.linalg.vector_norm(nets.weights[layer].detach().flatten(2), dim=2)
        if kind == "unit":
            torch.testing.assert_close(units, torch.ones_like(units))
        else:  # layer norm: the whole tensor is invariant, its mean unit norm is set to 1
            torch.testing.assert_close(units.mean(1), torch.ones(2))
            assert units.std() > 0


def test_sgd_with_decay_is_sgd_without_it_at_a_growing_rate() -> None:
    """Li & Arora (2019, thm 2.1): for a scale-invariant loss, SGD with decay λ at rate η follows
    the normalized trajectory of SGD without decay at rate η_t = η(1−ηλ)^(−2t−1), with w
    rescaled by (1−ηλ)^t. An exact identity, so any bug in decay or invariance breaks it.
    Model 0 decays at a fixed η, model 1 does not decay at the growing η_t: one flat optimizer."""
    torch.manual_seed(1)
    lr, wd, steps = 0.2, 0.05, 15
    a = torch.randn(6, 5, dtype=torch.float64)
    w0 = torch.randn(6, dtype=torch.float64)
    params = FlatParams({"w": torch.stack([w0, w0])}, ["w"], CPU)
    opt = FlatOptimizer(SPECS[OptimizerName.sgd], params, [wd, 0.0])
    w = params.views["w"]
    for t in range(steps):
        u = w / w.norm(dim=1, keepdim=True)  # scale-invariant
        params.backward((u @ a).pow(3).sum())
        opt.set_lr([lr, lr * (1 - lr * wd) ** (-2 * t - 1)])
        opt.step(torch.ones(2, dtype=torch.bool))
        torch.testing.assert_close(
            w[0].detach(), w[1].detach() * (1 - lr * wd) ** (t + 1), rtol=1e-9, atol=1e-12
        )
