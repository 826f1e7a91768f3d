from __future__ import annotations

import pytest
import torch

from l2bn.train.models import ConvNet, weight_tensors
from l2bn.train.norms import layer_records


@pytest.mark.parametrize("power", [0, 1, 2])
def test_records_match_torch_norms_and_eff_lr_follows(power: int) -> None:
    torch.manual_seed(0)
    weights = weight_tensors(ConvNet(width=4))
    lr = 0.3
    records = layer_records(weights, lr, power)
    assert list(records) == ["conv1", "conv2", "conv3", "conv4", "fc"]
    for name, w in weights.items():
        rec = records[name]
        w = w.detach()  # an independent computation, outside autograd
        assert rec.norm == pytest.approx(float(torch.linalg.vector_norm(w)), rel=1e-6)
        units = torch.stack([torch.linalg.vector_norm(w[i]) for i in range(w.shape[0])])
        assert rec.unit_norm == pytest.approx(float(units.mean()), rel=1e-6)
        assert rec.eff_lr == pytest.approx(lr / rec.unit_norm**power, rel=1e-12)
