"""check_batchable: which runs may train side by side as one network."""

from __future__ import annotations

from pathlib import Path

import pytest

from l2bn.errors import ConfigError
from l2bn.train.config import TrainConfig, check_batchable

BASE = TrainConfig(dataset="synthetic", width=4)


def test_runs_that_differ_in_lr_weight_decay_and_seed_only_are_batchable() -> None:
    check_batchable([BASE])
    check_batchable([BASE, BASE.with_(lr=1.0, weight_decay=0.5, seed=7), BASE])  # repeats too


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"width": 8}, "width"),
        ({"optimizer": "adam"}, "optimizer"),
        ({"affine": False}, "affine"),
        ({"dataset": "tracking"}, "dataset"),
        ({"epochs": 3, "precision": "bf16"}, "epochs, precision"),
        ({"lr_drops": ()}, "lr-drops"),
        ({"data_dir": Path("elsewhere")}, "data-dir"),
    ],
)
def test_any_other_difference_is_one_line_naming_it(change: dict[str, object], named: str) -> None:
    with pytest.raises(ConfigError) as info:
        check_batchable([BASE, BASE.with_(seed=1), BASE.with_(**change)])
    message = str(info.value)
    assert "\n" not in message
    assert f"run 3 differs from run 1 in {named}" in message
    assert "lr, weight-decay, seed and init-scale" in message


def test_no_runs_or_something_else_than_a_config_is_refused() -> None:
    with pytest.raises(ConfigError, match="empty"):
        check_batchable([])
    with pytest.raises(ConfigError, match="run 2 is a dict"):
        check_batchable([BASE, BASE.to_dict()])  # type: ignore[list-item]
