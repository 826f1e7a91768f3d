"""Per-layer norms of K models computed on the device, turned into each model's records, and
the records' JSON shape (records.py's docstring)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from l2bn.train.config import Head, Norm, TrainConfig
from l2bn.train.models import ConvNets, layer_norms
from l2bn.train.records import EpochRecord, LayerRecord, TrainResult, layer_records


@pytest.mark.parametrize("power", [0, 1, 2])
def test_records_match_torch_norms_and_eff_lr_follows(power: int) -> None:
    nets = ConvNets([0, 1, 2], 4, Norm.bn, Head.linear, True, torch.device("cpu"))
    lr = 0.3
    norms = layer_norms(nets.weights)
    assert norms.shape == (5, 3, 2)
    flat = norms.flatten().tolist()  # as one host transfer gives them
    for m in range(3):
        records = layer_records(nets.weights, flat, 3, m, lr, power)
        assert list(records) == ["conv1", "conv2", "conv3", "conv4", "fc"]
        for name, w in nets.weights.items():
            rec = records[name]
            wm = w[m].detach()  # an independent computation, model by model
            assert rec.norm == pytest.approx(float(torch.linalg.vector_norm(wm)), rel=1e-6)
            units = torch.stack([torch.linalg.vector_norm(wm[i]) for i in range(wm.shape[0])])
            assert rec.unit_norm == pytest.approx(float(units.mean()), rel=1e-6)
            assert rec.eff_lr == pytest.approx(lr / rec.unit_norm**power, rel=1e-12)


def test_the_json_shape_is_the_documented_one() -> None:
    layer = LayerRecord(norm=4.1, unit_norm=0.73, eff_lr=float("inf"))
    epoch = EpochRecord(1, 0.1, float("nan"), 0.9, 0.9, 3.2, {"conv1": layer})
    d = epoch.to_dict()
    assert list(d) == [
        "epoch", "lr", "train_loss", "train_error", "val_error", "seconds", "layers"
    ]  # fmt: skip
    assert d["train_loss"] is None and d["layers"]["conv1"] == {
        "norm": 4.1, "unit_norm": 0.73, "eff_lr": None
    }  # fmt: skip
    back = EpochRecord.from_dict(json.loads(json.dumps(d, allow_nan=False)))
    assert back.layers["conv1"].norm == 4.1 and back.epoch == 1
    result = TrainResult(
        TrainConfig(), (epoch,), 0.9, 0.9, float("inf"), True, 10, 1.0, "cpu", "fp32", "0"
    )
    assert set(result.to_dict()) == {
        "l2bn_version", "config", "device", "precision", "steps_per_epoch", "val_error",
        "test_error", "train_loss", "diverged", "seconds", "history",
    }  # fmt: skip
    json.dumps(result.to_dict(), allow_nan=False)


def test_records_and_config_import_without_torch() -> None:
    # The sweep's parent process reads records and checks batches without importing torch.
    code = (
        "import sys, l2bn.train.records, l2bn.train.config; "
        "assert 'torch' not in sys.modules, 'torch was imported'"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
