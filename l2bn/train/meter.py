"""How each layer's weights move per step: the angular, radial and tangential update, on the device.

For a scale-invariant unit (a row of a layer's weight; for layer norm the whole tensor of one
model) only the direction w/‖w‖ matters, so a step is best seen as a turn by an angle θ and a
radial change of ‖w‖. At equilibrium the decay's radial shrink balances the tangential growth
and the RMS angle per step is θ_eq = √(c·η·λ) (l2bn.theory). Per output unit and step, with
w the weights before the step, Δw = after − before (the whole step: optimizer and, for
normalized SGD, the projection) and g the loss gradient of the step::

    r    = (w·Δw)/‖w‖²                      signed relative radial change
    t²   = ‖Δw_⊥‖²/‖w‖²,  ‖Δw_⊥‖² = ‖Δw‖² − (w·Δw)²/‖w‖²        tangential part
    θ    = atan2(‖Δw_⊥‖, ‖w‖ + (w·Δw)/‖w‖)   the exact angle between w and w + Δw
    G̃²   = ‖g‖²·‖w‖²                        the gradient at unit weight scale
    q    = ‖Δw‖²/‖w‖² = r² + t²              growth, for the balance
    ℓ    = (Δw·Δw_prev)/‖w‖²                 the successive updates' product, with q beside
                                             it over the same steps (q_ℓ)

:class:`UpdateMeter` sums θ², r, t², G̃² and q over the steps of an epoch per unit, only over
steps where the model was alive (a frozen model does not move), and at the end of the epoch
over each layer's units. l2bn.train.records.update_fields turns the sums into the record's
means (``angle`` = RMS θ, ``radial`` = mean r, ``tangential`` = RMS t, ``grad_norm`` = RMS G̃,
``balance`` = mean q ÷ mean(−2r): 1 when ‖w‖ is stationary, since ‖w + Δw‖² = ‖w‖²(1 + 2r + q);
undefined, NaN, when mean r ≥ 0: then nothing shrinks).

Cost: per step one copy of the K × P buffer (the snapshot), one subtraction, four products
into a 5 × K × P buffer, one segment sum per recorded layer (a reshape: a layer's columns are
contiguous and unit-major) and a dozen kernels on the K × units sums. No host sync: the
epoch's sums join the engine's one transfer (benchmarks/bench_records.py measures the cost).
"""

from __future__ import annotations

import functools

import torch

from l2bn.train.models import Net, by_model

# The sums kept per (layer, model), in this order, then the count of (unit, step) pairs.
# "lag" and "lag_growth" count only steps whose model was alive at the step before too:
# lag ÷ lag_growth is the successive updates' correlation (l2bn.theory.momentum_ratio).
SUMS = ("theta_sq", "radial", "tangential_sq", "grad_sq", "growth", "lag", "lag_growth")
WIDTH = len(SUMS) + 1  # numbers per (layer, model) in the host transfer


class UpdateMeter:
    """Per-layer update statistics of K models, accumulated over an epoch on the device."""

    def __init__(self, net: Net, static: bool = False) -> None:
        self.params = net.params
        # static: every step reads and writes the same buffers (a CUDA graph replays fixed
        # addresses), so the step's Δw is copied into ``previous`` instead of swapped with it.
        self.static = static
        flat = self.params.flat
        k, p = flat.shape
        # Each recorded layer: its columns of the flat buffer and its number of units.
        self.layers: list[tuple[int, int, int]] = []  # (first column, columns, units)
        for name, w in net.weights.items():
            # A view of columns [start, start + n) of every row (l2bn.train.models.FlatParams).
            start, n = int(w.storage_offset() - flat.storage_offset()), w[0].numel()
            assert (k == 1 or w.stride(0) == p) and 0 <= start <= p - n and w[0].is_contiguous()
            units = 1 if net.invariant.get(name) == "tensor" else int(w.shape[1])
            self.layers.append((start, n, units))
        self.units = torch.tensor([u for _, _, u in self.layers], dtype=torch.float64)
        self.units = self.units.to(flat.device)
        total = sum(u for _, _, u in self.layers)
        self.before = torch.empty_like(flat)
        self.delta = torch.empty_like(flat)
        # The previous step's Δw (swapped with delta each step, not copied) and whether each
        # model was alive for it: a run's first step has no predecessor.
        self.previous = torch.zeros_like(flat)
        self.previous_alive = torch.zeros(k, dtype=torch.bool, device=flat.device)
        self.products = torch.empty(5, k, p, dtype=flat.dtype, device=flat.device)
        # Per unit, summed over the epoch's steps (double: thousands of small terms).
        self.sums = torch.zeros(len(SUMS), k, total, dtype=torch.float64, device=flat.device)
        self.steps = torch.zeros(k, dtype=torch.float64, device=flat.device)  # alive steps

    @torch.no_grad()
    def snapshot(self) -> None:
        """Before the optimizer step: keep w."""
        self.before.copy_(self.params.flat)

    @torch.no_grad()
    def measure(self, alive: torch.Tensor) -> None:
        """After the step: add this step's θ², r, t², G̃², q, ℓ, q_ℓ of every unit of every alive
        model."""
        w, dw, x = self.before, self.delta, self.products
        torch.sub(self.params.flat, w, out=dw)
        torch.mul(w, dw, out=x[0])
        torch.mul(w, w, out=x[1])
        torch.mul(dw, dw, out=x[2])
        torch.mul(self.params.grad, self.params.grad, out=x[3])
        torch.mul(dw, self.previous, out=x[4])
        # On the CPU model by model (models.by_model): atan2 and the sums round by shape.
        step = by_model(dw.shape[0], dw.device, lambda ms: self._step(x[:, ms], ms), dim=1)
        live = alive.view(1, -1, 1)
        # where, not a product: a frozen model's NaN weights must not poison the sums.
        self.sums += torch.where(live, step, 0.0)
        self.steps += alive
        if self.static:
            self.previous.copy_(dw)
        else:
            self.previous, self.delta = self.delta, self.previous  # this Δw is the next one's
        self.previous_alive.copy_(alive)

    def _step(self, x: torch.Tensor, models: slice) -> torch.Tensor:
        """SUMS × n × units: this step's terms per unit of the n models in ``x`` (the products,
        5 × n × P)."""
        # Per unit: a layer's columns are contiguous and unit-major, so a reshape and a sum.
        n_models = x.shape[1]
        per_unit = torch.cat(
            [x[:, :, s : s + n].view(5, n_models, u, n // u).sum(3) for s, n, u in self.layers],
            dim=2,
        ).double()
        wdw, ww, dwdw, gg, lag = per_unit.unbind(0)
        inv = ww.reciprocal()
        r = wdw * inv
        perp = (dwdw - wdw * r).clamp_min_(0.0)  # ‖Δw_⊥‖², ≥ 0 up to rounding
        theta = torch.atan2(perp.sqrt(), ww.sqrt() * (1.0 + r))  # ‖w‖ + (w·Δw)/‖w‖ = ‖w‖(1 + r)
        q = dwdw * inv
        paired = self.previous_alive[models].view(-1, 1)
        lagged = torch.where(paired, torch.stack([lag * inv, q]), 0.0)
        return torch.cat([torch.stack([theta.square_(), r, perp * inv, gg * ww, q]), lagged])

    @torch.no_grad()
    def take(self) -> torch.Tensor:
        """The epoch's sums per layer, layers × K × (θ², r, t², G̃², q, ℓ, q_ℓ, unit-steps),
        flattened (double, on the device, to join the engine's one transfer); then start a new
        epoch."""
        per_layer = []
        first = 0
        k = self.sums.shape[1]
        for _, _, u in self.layers:
            part = self.sums[:, :, first : first + u]
            per_layer.append(by_model(k, part.device, functools.partial(_unit_sums, part), dim=1))
            first += u  # SUMS × K each
        sums = torch.stack(per_layer)  # layers × SUMS × K
        count = self.units.view(-1, 1) * self.steps.view(1, -1)  # layers × K
        out = torch.cat([sums, count.unsqueeze(1)], dim=1).transpose(1, 2).flatten()
        self.sums.zero_()
        self.steps.zero_()
        return out


def _unit_sums(part: torch.Tensor, models: slice) -> torch.Tensor:
    """SUMS × n: the sums of ``models``' units in ``part`` (SUMS × K × units)."""
    return part[:, models].sum(2)
