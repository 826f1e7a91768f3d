"""The K-stacked nets: today's initialization from a local generator, the reference forward
pass, models that do not see each other, and the paper's §3 identity (a normalized layer
ignores the scale of its weights)."""

from __future__ import annotations

import itertools

import pytest
import torch
from reference import model_state, reference_net, reference_tracking, state_of

import l2bn.train.models as M
from l2bn.train.config import Head, Norm, TrainConfig, scale_invariant_layers
from l2bn.train.models import ConvNets, TrackingNets

CPU = torch.device("cpu")
ARCHS = [
    (norm, head, affine)
    for norm, head, affine in itertools.product(Norm, Head, (True, False))
    if affine or norm is not Norm.none or head is Head.bn  # affine=False changes nothing there
]


def _nets(
    k: int, norm: Norm, head: Head = Head.linear, affine: bool = True, **kw: object
) -> ConvNets:
    return ConvNets(list(range(k)), 4, norm, head, affine, CPU, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize(("norm", "head", "affine"), ARCHS)
def test_each_model_starts_as_todays_construction_with_its_seed(
    norm: Norm, head: Head, affine: bool
) -> None:
    seeds = [5, 0, 5]  # repeated seeds give repeated models
    state = torch.random.get_rng_state()
    nets = ConvNets(seeds, 4, norm, head, affine, CPU)
    assert torch.equal(torch.random.get_rng_state(), state)  # the global RNG is not touched
    for k, seed in enumerate(seeds):
        config = TrainConfig(width=4, norm=norm, head=head, affine=affine, seed=seed)
        want = state_of(reference_net(config))
        got = model_state(nets, k)
        assert set(got) == set(want)
        for name, t in want.items():
            assert torch.equal(got[name], t), name


def test_the_tracking_toy_starts_as_today() -> None:
    state = torch.random.get_rng_state()
    nets = TrackingNets([3, 1], 16, 32, CPU)
    assert torch.equal(torch.random.get_rng_state(), state)
    for k, seed in enumerate([3, 1]):
        torch.testing.assert_close(
            nets.weights["w"][k].detach(), reference_tracking(seed), rtol=0, atol=0
        )


@pytest.mark.parametrize(("norm", "head", "affine"), ARCHS)
def test_the_forward_pass_is_the_reference_nets_for_every_model(
    norm: Norm, head: Head, affine: bool
) -> None:
    # Model k of K sees only its own channels: its logits are its reference net's.
    nets = _nets(3, norm, head, affine, dtype=torch.float64)
    refs = [
        reference_net(TrainConfig(width=4, norm=norm, head=head, affine=affine, seed=k)).double()
        for k in range(3)
    ]
    x = torch.randn(8, 9, 32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    for training in (True, False):  # batch statistics (and their running averages), then those
        nets.training = training
        logits = nets(x)
        assert logits.shape == (3, 8, 10)
        for k, ref in enumerate(refs):
            want = ref.train(training)(x[:, 3 * k : 3 * k + 3])
            torch.testing.assert_close(logits[k], want, rtol=1e-9, atol=1e-9)
            for name, t in state_of(ref).items():
                torch.testing.assert_close(model_state(nets, k)[name], t, rtol=1e-12, atol=1e-12)


def test_one_model_does_not_feel_another() -> None:
    nets = _nets(3, Norm.none, dtype=torch.float64)
    x = torch.randn(4, 9, 32, 32, dtype=torch.float64)
    before = nets(x).detach()
    with torch.no_grad():
        nets.weights["conv2"][1].mul_(3.0)  # model 1 only, and without normalization it shows
    after = nets(x).detach()
    assert not torch.allclose(after[1], before[1])
    torch.testing.assert_close(after[[0, 2]], before[[0, 2]], rtol=0, atol=0)


def test_layout_widths_biases_and_what_is_trained() -> None:
    nets = ConvNets([0], 8, Norm.bn, Head.linear, True, CPU)
    shapes = {n: tuple(w.shape) for n, w in nets.weights.items()}
    assert shapes == {
        "conv1": (1, 8, 3, 3, 3),
        "conv2": (1, 16, 8, 3, 3),
        "conv3": (1, 32, 16, 3, 3),
        "conv4": (1, 64, 32, 3, 3),
        "fc": (1, 10, 64),
    }
    assert set(nets.params.views) == {
        *(f"conv{i}.weight" for i in range(1, 5)),
        *(f"norm{i}.{p}" for i in range(1, 5) for p in ("weight", "bias")),
        "fc.weight",
        "fc.bias",
    }
    assert "conv1.bias" in _nets(1, Norm.none).params.views  # a bias only without a norm
    assert nets(torch.randn(2, 3, 32, 32)).shape == (1, 2, 10)
    # Every view aliases the flat buffer, and its gradient the flat gradient.
    for name, v in nets.params.views.items():
        assert v.untyped_storage().data_ptr() == nets.params.flat.untyped_storage().data_ptr()
        g = nets.params.grads[name]
        assert g.untyped_storage().data_ptr() == nets.params.grad.untyped_storage().data_ptr()
        assert g.storage_offset() == v.storage_offset() and g.shape == v.shape
    assert nets.params.flat.numel() == sum(v.numel() for v in nets.params.views.values())
    # Model k's parameters are row k of the flat buffer, at the same columns for every k.
    three = _nets(3, Norm.bn)
    for name, v in three.params.views.items():
        offset = v.storage_offset()
        for k in range(3):
            assert v[k].storage_offset() == offset + k * three.params.flat.shape[1], name


@pytest.mark.parametrize("norm", [Norm.bn, Norm.ln, Norm.wn])
def test_without_affine_only_the_weights_are_trained(norm: Norm) -> None:
    for k in (1, 3):
        nets = _nets(k, norm, Head.bn, affine=False)
        # γ/β are not there at all (1 and 0), WN gains are frozen buffers: no trained element
        # and so no optimizer state for them.
        assert set(nets.params.views) == set(M.recorded_weights(norm).values())
        assert bool((nets.params.decayed == 1).all())
        if norm is Norm.wn:
            gain = nets.buffers["conv1.parametrizations.weight.original0"]
            assert gain.shape == (k, 4, 1, 1, 1) and not gain.requires_grad


def test_scale_invariant_layers_follow_norm_and_head() -> None:
    assert scale_invariant_layers(Norm.bn, Head.bn) == {
        "conv1": "unit", "conv2": "unit", "conv3": "unit", "conv4": "unit", "fc": "unit"
    }  # fmt: skip
    assert scale_invariant_layers(Norm.ln, Head.linear) == {
        f"conv{i}": "tensor" for i in range(1, 5)
    }
    assert scale_invariant_layers(Norm.none, Head.linear) == {}


# --- the paper's §3 identity ------------------------------------------------------------


@pytest.fixture
def exact(monkeypatch: pytest.MonkeyPatch) -> None:
    """Normalizations divide by sqrt(var + eps): with eps > 0 the invariance is only
    approximate (to ~1e-6 here). eps → 0 makes the identity exact, which these tests check."""
    monkeypatch.setattr(M, "NORM_EPS", 1e-30)  # torch refuses 0; in float64 this is 0


def _forward_backward(
    nets: ConvNets, x: torch.Tensor
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    out = nets(x)
    # A loss that depends on every output, so every gradient is non-trivial.
    weights = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)
    nets.params.backward((out * weights).sum())
    names = M.recorded_weights(nets.norm)
    return out.detach(), {layer: nets.params.grads[names[layer]].clone() for layer in nets.weights}


@pytest.mark.usefixtures("exact")
@pytest.mark.parametrize("norm", [Norm.bn, Norm.wn, Norm.ln])
@pytest.mark.parametrize("layer", ["conv1", "conv3"])
@pytest.mark.parametrize("k", [1, 3])
def test_scaling_a_normalized_weight_changes_nothing_and_scales_its_gradient(
    norm: Norm, layer: str, k: int
) -> None:
    nets = _nets(k, norm, dtype=torch.float64)
    x = torch.randn(8, 3 * k, 32, 32, dtype=torch.float64)
    out0, grads0 = _forward_backward(nets, x)

    alpha, m = 3.7, k - 1  # scale the last model's layer
    with torch.no_grad():
        nets.weights[layer][m].mul_(alpha)
    out1, grads1 = _forward_backward(nets, x)

    torch.testing.assert_close(out1, out0, rtol=1e-9, atol=1e-9)
    # ∇_{αw} L = ∇_w L / α for the scaled layer; the others are untouched.
    torch.testing.assert_close(grads1[layer][m], grads0[layer][m] / alpha, rtol=1e-6, atol=1e-12)
    torch.testing.assert_close(grads1["conv2"], grads0["conv2"], rtol=1e-6, atol=1e-12)
    # And the gradient is orthogonal to the weight (no radial component).
    w, gw = nets.weights[layer][m].detach(), grads1[layer][m]
    assert abs(float((gw * w).sum())) < 1e-8 * float(gw.norm() * w.norm())


def test_without_normalization_scale_matters() -> None:
    nets = _nets(1, Norm.none, dtype=torch.float64)
    x = torch.randn(4, 3, 32, 32, dtype=torch.float64)
    out0, _ = _forward_backward(nets, x)
    with torch.no_grad():
        nets.weights["conv1"].mul_(3.7)
    out1, _ = _forward_backward(nets, x)
    assert not torch.allclose(out0, out1)


@pytest.mark.usefixtures("exact")
def test_bn_head_makes_the_classifier_scale_invariant_per_unit() -> None:
    nets = _nets(2, Norm.bn, Head.bn, dtype=torch.float64)
    x = torch.randn(16, 6, 32, 32, dtype=torch.float64)
    out0, _ = _forward_backward(nets, x)
    with torch.no_grad():
        nets.weights["fc"][1, 3].mul_(5.0)  # one output unit of one model only
    out1, _ = _forward_backward(nets, x)
    torch.testing.assert_close(out1, out0, rtol=1e-9, atol=1e-9)
    assert "fc.bias" not in nets.params.views


@pytest.mark.usefixtures("exact")
@pytest.mark.parametrize("norm", [Norm.bn, Norm.ln, Norm.wn])
@pytest.mark.parametrize("k", [1, 3])
def test_without_affine_every_trained_parameter_is_scale_invariant(norm: Norm, k: int) -> None:
    # --no-affine: γ/β (and WN's gain) are frozen, so scaling *every* trained tensor at once,
    # each by its own factor, leaves the function unchanged: nothing feels η directly.
    nets = _nets(k, norm, Head.bn, affine=False, dtype=torch.float64)
    x = torch.randn(16, 3 * k, 32, 32, dtype=torch.float64)
    out0, _ = _forward_backward(nets, x)
    with torch.no_grad():
        for i, p in enumerate(nets.params.views.values()):
            p.mul_(torch.linspace(0.3, 2.0, k, dtype=p.dtype).view(-1, *[1] * (p.dim() - 1)) + i)
    out1, _ = _forward_backward(nets, x)
    torch.testing.assert_close(out1, out0, rtol=1e-9, atol=1e-9)

    # With the paper's learnable γ/β the same scaling of all parameters changes the output.
    nets = _nets(k, norm, Head.bn, dtype=torch.float64)
    out0, _ = _forward_backward(nets, x)
    with torch.no_grad():
        for i, p in enumerate(nets.params.views.values()):
            p.mul_(0.3 + i)
    out1, _ = _forward_backward(nets, x)
    assert not torch.allclose(out1, out0)
