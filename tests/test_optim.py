"""Each optimizer's update against a step computed by hand (NumPy, PyTorch's documented
formulas), and the parameter groups that decide what λ touches."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from l2bn.train.config import OptimizerName, TrainConfig
from l2bn.train.models import ConvNet
from l2bn.train.optim import build_optimizer, param_groups, project_to_unit_norm, projection_targets

LR, WD, EPS = 0.1, 0.05, 1e-8
G = np.array([[0.3, -1.2, 0.5], [2.0, 0.1, -0.7]])  # a fixed gradient, the same every step


class Tiny(nn.Module):
    """One decayed weight (a Linear) and one undecayed BN-like γ."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 2, bias=False)
        self.gamma = nn.Parameter(torch.tensor([1.0, -2.0]))
        with torch.no_grad():
            self.fc.weight.copy_(torch.tensor([[1.0, 2.0, -1.0], [0.5, -0.5, 3.0]]))


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
    model = Tiny().double()
    config = TrainConfig(optimizer=name, lr=LR, weight_decay=WD, dataset="synthetic")
    opt = build_optimizer(model, config)
    project = name == "normalized-sgd"
    targets = [(model.fc.weight, "unit")] if project else []
    w_ref = model.fc.weight.detach().numpy().copy()
    gamma0 = model.gamma.detach().clone()
    state: dict[str, Any] = {}
    for t in range(1, 4):
        opt.zero_grad()
        # loss = Σ G⊙W + Σ γ: gradient G for W, 1 for γ.
        ((model.fc.weight * torch.from_numpy(G)).sum() + model.gamma.sum()).backward()
        opt.step()
        if project:
            project_to_unit_norm(targets)
        w_ref = _reference(name)(w_ref, G, state, t)
        np.testing.assert_allclose(model.fc.weight.detach().numpy(), w_ref, rtol=1e-10, atol=1e-12)
    # γ is not decayed: for plain SGD its update is exactly −η per step (gradient 1).
    if name == "sgd":
        torch.testing.assert_close(model.gamma.detach(), gamma0 - 3 * LR)


def test_decay_touches_conv_and_linear_weights_only() -> None:
    model = ConvNet(width=4)
    decay, no_decay = param_groups(model, 0.1, decay_all=False)
    decayed = {id(p) for p in decay["params"]}
    names = {n for n, p in model.named_parameters() if id(p) in decayed}
    assert names == {"conv1.weight", "conv2.weight", "conv3.weight", "conv4.weight", "fc.weight"}
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    # γ/β of every BN and the classifier bias are in the zero-decay group.
    assert {n for n, p in model.named_parameters() if id(p) not in decayed} == {
        *(f"norm{i}.{k}" for i in range(1, 5) for k in ("weight", "bias")),
        "fc.bias",
    }
    everything, nothing = param_groups(model, 0.1, decay_all=True)
    assert len(everything["params"]) == len(list(model.parameters())) and not nothing["params"]


def test_weight_norm_decays_the_direction_not_the_magnitude() -> None:
    model = ConvNet(width=4, norm="wn")  # type: ignore[arg-type]
    decay, _ = param_groups(model, 0.1, decay_all=False)
    decayed = {id(p) for p in decay["params"]}
    names = {n for n, p in model.named_parameters() if id(p) in decayed}
    assert "conv1.parametrizations.weight.original1" in names  # v
    assert "conv1.parametrizations.weight.original0" not in names  # g


def test_normalized_sgd_keeps_every_scale_invariant_unit_at_norm_one() -> None:
    torch.manual_seed(0)
    model = ConvNet(width=4, head="bn")  # type: ignore[arg-type]
    targets = projection_targets(model)
    assert len(targets) == 5
    project_to_unit_norm(targets)
    for w, _ in targets:
        torch.testing.assert_close(
            torch.linalg.vector_norm(w.flatten(1), dim=1), torch.ones(w.shape[0])
        )


def test_sgd_with_decay_is_sgd_without_it_at_a_growing_rate() -> None:
    """Li & Arora (2019, thm 2.1): for a scale-invariant loss, SGD with decay λ at rate η follows
    the normalized trajectory of SGD without decay at rate η_t = η(1−ηλ)^(−2t−1), with w
    rescaled by (1−ηλ)^t. An exact identity, so any bug in decay or invariance breaks it."""
    torch.manual_seed(1)
    lr, wd, steps = 0.2, 0.05, 15
    a = torch.randn(6, 5, dtype=torch.float64)

    def loss(w: torch.Tensor) -> torch.Tensor:
        u = w / w.norm()  # scale-invariant
        return (u @ a).pow(3).sum()

    w0 = torch.randn(6, dtype=torch.float64)
    w1 = w0.clone().requires_grad_()
    opt1 = torch.optim.SGD([w1], lr=lr, weight_decay=wd)
    w2 = w0.clone().requires_grad_()
    opt2 = torch.optim.SGD([w2], lr=lr, weight_decay=0.0)
    for t in range(steps):
        for w, opt in ((w1, opt1), (w2, opt2)):
            opt.zero_grad()
            loss(w).backward()
        opt2.param_groups[0]["lr"] = lr * (1 - lr * wd) ** (-2 * t - 1)
        opt1.step()
        opt2.step()
        torch.testing.assert_close(
            w1.detach(), w2.detach() * (1 - lr * wd) ** (t + 1), rtol=1e-9, atol=1e-12
        )
