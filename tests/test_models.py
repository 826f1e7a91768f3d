"""The paper's §3 identity: a normalized layer ignores the scale of its weights."""

from __future__ import annotations

import pytest
import torch

from l2bn.train.config import Head, Norm
from l2bn.train.models import ConvNet, scale_invariant_layers, weight_tensors


def _exact(model: ConvNet) -> ConvNet:
    """Normalizations divide by sqrt(var + eps): with eps > 0 the invariance is only approximate
    (to ~1e-6 here). eps → 0 makes the identity exact, which is what these tests check."""
    for m in model.modules():
        if hasattr(m, "eps"):
            m.eps = 1e-30  # torch refuses 0 in training mode; in float64 this is 0
    return model


def _forward_backward(
    model: ConvNet, x: torch.Tensor
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.zero_grad()
    out = model(x)
    # A loss that depends on every output, so every gradient is non-trivial.
    (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
    grads = {n: w.grad.clone() for n, w in weight_tensors(model).items() if w.grad is not None}
    return out.detach(), grads


@pytest.mark.parametrize("norm", [Norm.bn, Norm.wn, Norm.ln])
@pytest.mark.parametrize("layer", ["conv1", "conv3"])
def test_scaling_a_normalized_weight_changes_nothing_and_scales_its_gradient(
    norm: Norm, layer: str
) -> None:
    torch.manual_seed(0)
    model = _exact(ConvNet(width=4, norm=norm).double())
    x = torch.randn(8, 3, 32, 32, dtype=torch.float64)
    out0, grads0 = _forward_backward(model, x)

    alpha = 3.7
    with torch.no_grad():
        weight_tensors(model)[layer].mul_(alpha)
    out1, grads1 = _forward_backward(model, x)

    torch.testing.assert_close(out1, out0, rtol=1e-9, atol=1e-9)
    # ∇_{αw} L = ∇_w L / α for the scaled layer; the others are untouched.
    torch.testing.assert_close(grads1[layer], grads0[layer] / alpha, rtol=1e-6, atol=1e-12)
    other = "conv2"
    torch.testing.assert_close(grads1[other], grads0[other], rtol=1e-6, atol=1e-12)
    # And the gradient is orthogonal to the weight (no radial component).
    w = weight_tensors(model)[layer]
    assert abs(float((grads1[layer] * w.detach()).sum())) < 1e-8 * float(
        grads1[layer].norm() * w.detach().norm()
    )


def test_without_normalization_scale_matters() -> None:
    torch.manual_seed(0)
    model = ConvNet(width=4, norm=Norm.none).double()
    x = torch.randn(4, 3, 32, 32, dtype=torch.float64)
    out0, _ = _forward_backward(model, x)
    with torch.no_grad():
        model.conv1.weight.mul_(3.7)
    out1, _ = _forward_backward(model, x)
    assert not torch.allclose(out0, out1)


def test_bn_head_makes_the_classifier_scale_invariant_per_unit() -> None:
    torch.manual_seed(0)
    model = _exact(ConvNet(width=4, norm=Norm.bn, head=Head.bn).double())
    x = torch.randn(16, 3, 32, 32, dtype=torch.float64)
    out0, _ = _forward_backward(model, x)
    with torch.no_grad():
        model.fc.weight[3].mul_(5.0)  # one output unit only
    out1, _ = _forward_backward(model, x)
    torch.testing.assert_close(out1, out0, rtol=1e-9, atol=1e-9)
    assert model.fc.bias is None
    assert scale_invariant_layers(model) == {
        "conv1": "unit",
        "conv2": "unit",
        "conv3": "unit",
        "conv4": "unit",
        "fc": "unit",
    }


def test_layout_widths_and_biases() -> None:
    model = ConvNet(width=8, norm=Norm.bn)
    shapes = {n: tuple(w.shape) for n, w in weight_tensors(model).items()}
    assert shapes == {
        "conv1": (8, 3, 3, 3),
        "conv2": (16, 8, 3, 3),
        "conv3": (32, 16, 3, 3),
        "conv4": (64, 32, 3, 3),
        "fc": (10, 64),
    }
    assert all(getattr(model, f"conv{i}").bias is None for i in range(1, 5))
    assert ConvNet(width=8, norm=Norm.none).conv1.bias is not None
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize("norm", [Norm.bn, Norm.ln, Norm.wn])
def test_without_affine_every_trained_parameter_is_scale_invariant(norm: Norm) -> None:
    # --no-affine: γ/β (and WN's gain) are frozen, so scaling *every* trained tensor at once,
    # each by its own factor, leaves the function unchanged: nothing feels η directly.
    torch.manual_seed(0)
    model = _exact(ConvNet(width=4, norm=norm, head=Head.bn, affine=False).double())
    trained = [p for p in model.parameters() if p.requires_grad]
    assert {id(p) for p in trained} == {id(w) for w in weight_tensors(model).values()}
    x = torch.randn(16, 3, 32, 32, dtype=torch.float64)
    out0, _ = _forward_backward(model, x)
    with torch.no_grad():
        for i, p in enumerate(trained):
            p.mul_(0.3 + i)
    out1, _ = _forward_backward(model, x)
    torch.testing.assert_close(out1, out0, rtol=1e-9, atol=1e-9)

    # With the paper's learnable γ/β the same scaling of all parameters changes the output.
    torch.manual_seed(0)
    model = _exact(ConvNet(width=4, norm=norm, head=Head.bn).double())
    out0, _ = _forward_backward(model, x)
    with torch.no_grad():
        for i, p in enumerate(model.parameters()):
            p.mul_(0.3 + i)
    out1, _ = _forward_backward(model, x)
    assert not torch.allclose(out1, out0)
