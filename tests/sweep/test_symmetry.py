"""sweeps/symmetry.toml: along each optimizer's scale symmetry every λ row is an exact
rescaled copy of the row at λ_ref (same seeds, η and S multiplied by exact powers of two),
and every point of an optimizer can train fused with the others."""

from __future__ import annotations

import itertools
import math
from decimal import Decimal

import pytest

from l2bn.sweep.spec import OptimizerSweep, load_sweep
from l2bn.train.config import DeviceName, Head, Norm, Precision, Schedule, check_batchable

from .helpers import REPO

# optimizer → (k, e, how the symmetry α maps η and λ): (αw₀, α^p·η, λ/α^q) as (p, q).
MAPS = {
    "nesterov": (1.0, 0.5, (2, 2)),  # SGD family: (αw₀, α²η, λ/α²)
    "adam": (0.5, 0.5, (1, 2)),  # Adam, coupled L2: (αw₀, αη, λ/α²)
    "adamw": (1.0, 1.0, (1, 1)),  # AdamW, decoupled: (αw₀, αη, λ/α)
}


def sweeps() -> dict[str, OptimizerSweep]:
    chosen = load_sweep(REPO / "sweeps" / "symmetry.toml").select(None)
    return {s.optimizer.value: s for s in chosen}


def exact_power_of_two(x: float) -> int:
    mantissa, exponent = math.frexp(x)
    assert mantissa == 0.5, f"{x!r} is not an exact power of two"
    return exponent - 1


def test_the_setting_is_the_exactly_scale_invariant_one() -> None:
    got = sweeps()
    assert set(got) == set(MAPS)
    for s in got.values():
        c = s.base_config()
        # Every trained weight scale-invariant (no γ/β, BN on the logits), fp32 (bf16 would
        # round w·α differently from α·w's products), η constant (no schedule to shift).
        assert (c.affine, c.head, c.norm) == (False, Head.bn, Norm.bn)
        assert (c.precision, c.schedule, c.augment) == (Precision.fp32, Schedule.constant, True)
        # The CPU even on a GPU node (or in the image, whose auto means cuda): CUDA's kernels
        # are not bitwise repeatable, and the control checks bits.
        assert c.device is DeviceName.cpu
        assert c.width == 8 and c.batch_size == 128 and c.dataset.value == "cifar10"
        assert not s.independent_seeds and len(s.seeds) >= 2


@pytest.mark.parametrize("optimizer", sorted(MAPS))
def test_every_lambda_row_is_an_exact_rescaling_of_the_reference_row(optimizer: str) -> None:
    s = sweeps()[optimizer]
    k, e, (p, q) = MAPS[optimizer]
    assert (s.lr_scale_exponent, s.init_scale_exponent) == (k, e)
    ref = s.reference_weight_decay
    assert ref in s.weight_decay.values and ref == s.weight_decay.high
    # The η grid at λ_ref: 6 to 8 short decimals, each twice the one before.
    base = sorted(s.lr.values)
    assert 6 <= len(base) <= 8
    assert all(b / a == 2.0 for a, b in itertools.pairwise(base))
    assert all(len(Decimal(repr(v)).as_tuple().digits) <= 5 for v in base)

    points = s.points()
    by_row: dict[float, list[tuple[float, int]]] = {}
    for point in points:
        by_row.setdefault(point.weight_decay, []).append((point.lr, point.seed))
    assert len(by_row) >= 3
    reference = sorted(by_row[ref])
    assert [lr for lr, _ in reference[:: len(s.seeds)]] == base  # η = the listed values
    s_ref = s.init_scale_for(ref)
    assert s_ref == s.base_config().init_scale

    for wd, row in by_row.items():
        # α from the initial scales; the map then fixes η's and λ's ratios, exactly.
        scale = s.init_scale_for(wd)
        alpha = scale / s_ref
        n = exact_power_of_two(alpha)
        assert n >= 0 and wd * alpha**q == ref
        assert exact_power_of_two(ref / wd) == q * n
        assert sorted(row) == sorted((lr * alpha**p, seed) for lr, seed in reference)
        # The configs a worker trains: the same seeds, η and S scaled exactly, all fusable.
        configs = sorted(
            (s.config_for(point) for point in points if point.weight_decay == wd),
            key=lambda c: (c.lr, c.seed),
        )
        assert {c.init_scale for c in configs} == {scale}
        assert [(c.lr, c.seed) for c in configs] == sorted(row)
    check_batchable([s.config_for(point) for point in points])
