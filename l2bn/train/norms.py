"""Per-layer weight norms and the effective learning rate they imply."""

from __future__ import annotations

import torch

from l2bn.train.records import LayerRecord


@torch.no_grad()
def layer_records(
    weights: dict[str, torch.Tensor], lr: float, eff_lr_power: int
) -> dict[str, LayerRecord]:
    """‖w‖, mean unit norm and η_eff = η / unit_norm^eff_lr_power for each weight.

    Everything is computed on the device and moved to the host in one transfer.
    """
    if not weights:
        return {}
    stats = torch.stack(
        [
            torch.stack(
                [
                    torch.linalg.vector_norm(w.float()),
                    torch.linalg.vector_norm(w.float().flatten(1), dim=1).mean(),
                ]
            )
            for w in weights.values()
        ]
    ).cpu()
    return {
        name: layer_record(norm, unit_norm, lr, eff_lr_power)
        for name, (norm, unit_norm) in zip(weights, stats.tolist(), strict=True)
    }


def layer_record(norm: float, unit_norm: float, lr: float, eff_lr_power: int) -> LayerRecord:
    """One layer's record from its norms: the single place where η_eff is defined."""
    scale = unit_norm**eff_lr_power
    return LayerRecord(
        norm=norm, unit_norm=unit_norm, eff_lr=lr / scale if scale > 0 else float("inf")
    )
