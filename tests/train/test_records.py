"""Per-layer norms of K models computed on the device, turned into each model's records, and
the records' JSON shape (records.py's docstring)."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys

import pytest
import torch

from l2bn.train import records
from l2bn.train.config import Head, Norm, TrainConfig
from l2bn.train.models import ConvNets, layer_norms
from l2bn.train.records import (
    UPDATE_SUMS,
    EpochRecord,
    LayerRecord,
    TrainResult,
    layer_records,
    update_fields,
)


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


LAYER_KEYS = [
    "norm", "unit_norm", "eff_lr",
    "angle", "angle_eq", "radial", "tangential", "grad_norm", "balance", "update_corr",
]  # fmt: skip
EPOCH_KEYS = [
    "epoch", "lr", "train_loss", "train_error", "val_error", "val_loss", "seconds", "layers"
]  # fmt: skip


def test_the_json_shape_is_the_documented_one() -> None:
    layer = LayerRecord(norm=4.1, unit_norm=0.73, eff_lr=float("inf"), angle=0.03, balance=0.98)
    epoch = EpochRecord(1, 0.1, float("nan"), 0.9, 0.9, 3.2, {"conv1": layer}, val_loss=2.1)
    d = epoch.to_dict()
    assert list(d) == EPOCH_KEYS
    assert d["train_loss"] is None and d["val_loss"] == 2.1
    assert d["layers"]["conv1"] == {
        "norm": 4.1, "unit_norm": 0.73, "eff_lr": None, "angle": 0.03, "angle_eq": None,
        "radial": None, "tangential": None, "grad_norm": None, "balance": 0.98,
        "update_corr": None,
    }  # fmt: skip
    back = EpochRecord.from_dict(json.loads(json.dumps(d, allow_nan=False)))
    assert back.layers["conv1"].norm == 4.1 and back.epoch == 1 and back.val_loss == 2.1
    assert back.layers["conv1"].angle == 0.03 and math.isnan(back.layers["conv1"].radial)
    assert back.to_dict() == d  # the round trip is exact
    result = TrainResult(
        TrainConfig(), (epoch,), 0.9, 0.9, float("inf"), True, 10, 1.0, "cpu", "fp32", "0",
        val_loss=2.1,
    )  # fmt: skip
    assert set(result.to_dict()) == {
        "l2bn_version", "config", "device", "precision", "graph", "steps_per_epoch", "val_error",
        "val_loss", "test_error", "test_loss", "train_loss", "diverged", "seconds", "history",
    }  # fmt: skip
    assert result.to_dict()["val_loss"] == 2.1 and result.to_dict()["test_loss"] is None
    json.dumps(result.to_dict(), allow_nan=False)


def test_the_docstring_example_has_exactly_the_keys_written() -> None:
    doc = records.__doc__ or ""
    example = doc[doc.index('{"epoch"') : doc.index("...}}") + 5]
    keys = re.findall(r'"(\w+)":', example)
    assert keys == [*EPOCH_KEYS, "conv1", *LAYER_KEYS]


def test_records_without_the_newer_keys_still_load() -> None:
    # Written before val_loss and the update fields existed (and a key from the future).
    old = {
        "epoch": 3, "lr": 0.1, "train_loss": 1.5, "train_error": 0.5, "val_error": 0.6,
        "seconds": 1.0, "layers": {"conv1": {"norm": 2.0, "unit_norm": 0.5, "eff_lr": None,
                                             "later": 1.0}},
    }  # fmt: skip
    e = EpochRecord.from_dict(old)
    assert e.epoch == 3 and math.isnan(e.val_loss)
    rec = e.layers["conv1"]
    assert rec.norm == 2.0 and math.isnan(rec.eff_lr)
    for f in ("angle", "angle_eq", "radial", "tangential", "grad_norm", "balance", "update_corr"):
        assert math.isnan(getattr(rec, f))
    d = e.to_dict()
    assert d["val_loss"] is None and d["layers"]["conv1"]["angle"] is None


def test_update_fields_from_the_sums() -> None:
    # Two units over three steps, by hand: θ² sums, r, t², G̃², q, the successive products ℓ
    # and q over the 2 steps with a predecessor, and the unit-step count.
    sums = [6 * 0.01**2, 6 * -0.002, 6 * 0.0001, 6 * 4.0, 6 * 0.002, 4 * 0.0013, 4 * 0.002, 6]
    f = update_fields(sums)
    assert f["angle"] == pytest.approx(0.01) and f["tangential"] == pytest.approx(0.01)
    assert f["radial"] == pytest.approx(-0.002) and f["grad_norm"] == pytest.approx(2.0)
    assert f["balance"] == pytest.approx(0.002 / 0.004)
    assert f["update_corr"] == pytest.approx(0.65)
    growing = update_fields([1.0, 0.5, 1.0, 1.0, 1.0, 0.0, 0.0, 2])  # r > 0: nothing shrinks
    assert math.isnan(growing["balance"]) and growing["radial"] == 0.25
    assert math.isnan(growing["update_corr"])  # one step each: no successive pair
    assert update_fields([0.0] * 8) == {}  # nothing counted


def test_layer_records_read_each_models_update_sums_and_theta_eq() -> None:
    # layers × K × (‖w‖, unit norm) and layers × K × UPDATE_SUMS, K = 2, as one transfer.
    layers = ["a", "b"]
    norms = [1.0, 0.5, 2.0, 1.0, 3.0, 1.5, 4.0, 2.0]
    updates = []
    for i in range(2):
        for m in range(2):
            x = 10 * i + m + 1  # layer i, model m
            updates += [x**2, -x / 100, x**2, x**2, x / 100, x / 200, x / 100, 1]
    assert len(updates) == 2 * 2 * UPDATE_SUMS
    for m in range(2):
        recs = layer_records(layers, norms, 2, m, 0.1, 2, updates, 0.05, invariant={"b"})
        for i, name in enumerate(layers):
            x = 10 * i + m + 1
            assert recs[name].norm == norms[2 * (2 * i + m)]
            assert recs[name].angle == pytest.approx(x) and recs[name].radial == -x / 100
            assert recs[name].balance == pytest.approx(0.5)
        assert math.isnan(recs["a"].angle_eq) and recs["b"].angle_eq == 0.05
    plain = layer_records(layers, norms, 2, 0, 0.1, 2)  # not measured: NaN
    assert math.isnan(plain["a"].angle) and math.isnan(plain["b"].angle_eq)


def test_records_and_config_import_without_torch() -> None:
    # The sweep's parent process reads records and checks batches without importing torch.
    code = (
        "import sys, l2bn.train.records, l2bn.train.config; "
        "assert 'torch' not in sys.modules, 'torch was imported'"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
