"""What ``l2bn analyze`` is asked to do: :class:`AnalyzeConfig` and the choices of its options.

The settings are part of the report's JSON (``"settings"``, :meth:`AnalyzeConfig.to_dict`;
the whole shape is documented in :mod:`l2bn.analysis.results`). :class:`Metric` and
:class:`IntervalKind` are the choices of ``--metric`` and ``--interval``: the command line
lists them in ``--help`` and rejects others; :class:`AnalyzeConfig` checks them again for
library callers. Like the result types, nothing here imports optuna or SciPy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from l2bn.errors import ConfigError

# l2bn.sweep.storage.DEFAULT_STORAGE, spelled out: importing that module imports optuna, and
# nothing here needs it (tests/analysis/test_results.py checks that the two agree).
DEFAULT_STORAGE = "sqlite:///l2bn.db"


class Metric(StrEnum):
    """The objective whose optimum η* is located (``--metric``)."""

    val_error = "val_error"
    val_loss = "val_loss"  # needs studies that recorded it


class IntervalKind(StrEnum):
    """The interval of k (``--interval``): see :attr:`AnalyzeConfig.interval`."""

    jackknife = "jackknife"
    bootstrap = "bootstrap"


METRICS = tuple(m.value for m in Metric)  # ("val_error", "val_loss")
INTERVALS = tuple(i.value for i in IntervalKind)  # ("jackknife", "bootstrap")
DEFAULT_METRIC = Metric.val_error.value  # for studies that stored no objective (older l2bn)

# Equilibrium by measurement (l2bn.analysis.estimating.equilibrium): over the last
# EQUILIBRIUM_TAIL of
# the first LR phase (at least one epoch), a scale-invariant layer is at equilibrium when its
# mean θ² over θ_eq² (or, for Adam/RMSProp with coupled L2, its growth ÷ shrink balance) lies
# in EQUILIBRIUM_BAND. The band is symmetric in log (0.8 = 1/1.25): θ̄ within about ±11 % of
# θ_eq.
EQUILIBRIUM_BAND = (0.8, 1.25)
EQUILIBRIUM_TAIL = 0.2


@dataclass(frozen=True)
class AnalyzeConfig:
    """What ``l2bn analyze`` was asked to do."""

    storage: str = DEFAULT_STORAGE
    studies: tuple[str, ...] = ()  # empty: every study with user attr "optimizer"
    # The clock's threshold: where no cell of a group carries a measured verdict (older
    # studies), the norm fit takes the cells with c·η·λ·T ≥ this (c: relaxation_rate).
    equilibrium: float = 5.0
    # Intervals of k: "jackknife" (delete-one-seed, Student t; the calibrated default) or
    # "bootstrap" (cluster bootstrap over seeds, ``bootstrap`` resamples; under-covers with
    # few seeds, kept for comparison).
    interval: str = "jackknife"
    bootstrap: int = 1000
    seed: int = 0  # bootstrap RNG seed: same data, same CI
    confidence: float = 0.95
    # Verdict margin δ for k: "equivalent" when the CI lies inside theory ± δ. 0.1 in k moves
    # η* by a factor 10^0.2 ≈ 1.6 over two decades of λ, less than one step of the usual
    # half-decade η grid, and keeps the two theories (k = ½ and 1) far apart.
    margin: float = 0.1
    # The same for the norm exponent p (theories ¼, ⅓, ½ lie 0.08 apart: half of δ).
    norm_margin: float = 0.05
    # The objective whose optimum is located: val_error | val_loss; None (the default): each
    # group's stored objective when all its studies agree, else val_error (with a note).
    metric: str | None = None
    from_csv: Path | None = None  # read a ``--csv`` export instead of the storage
    more_csv: tuple[Path, ...] = ()  # more exports read with it (the parts of one run)
    # With from_csv: read the storage too, its studies beside the exports' (the CLI: --storage
    # given on the command line with --from-csv), e.g. a live sweep beside committed data.
    storage_too: bool = False
    # A sweep file whose [registration] table is the reading rule to judge (for --from-csv
    # exports, which carry no study attrs); None: the studies' own registration, if any.
    registration_path: Path | None = None
    k_bounds: tuple[float, float] = (-1.0, 2.5)  # the primary's scan of k (bounds: no estimate)
    json_path: Path | None = None
    csv_path: Path | None = None
    plots_dir: Path | None = None
    report_path: Path | None = (
        None  # the self-contained HTML page (l2bn.analysis.presenting.report)
    )
    equilibrium_band: tuple[float, float] = EQUILIBRIUM_BAND  # of ⟨θ²⟩/θ_eq², or the balance
    equilibrium_tail: float = EQUILIBRIUM_TAIL  # the share of phase 1 it is measured over

    def __post_init__(self) -> None:
        object.__setattr__(self, "studies", tuple(self.studies))
        object.__setattr__(self, "more_csv", tuple(Path(p) for p in self.more_csv))
        if self.more_csv and self.from_csv is None:
            raise ConfigError("more_csv needs from_csv: the first export")
        if self.storage_too and self.from_csv is None:
            raise ConfigError("storage_too needs from_csv: without exports the storage is read")
        object.__setattr__(self, "k_bounds", tuple(float(x) for x in self.k_bounds))
        object.__setattr__(self, "equilibrium_band", tuple(float(x) for x in self.equilibrium_band))
        for name in (
            "json_path",
            "csv_path",
            "plots_dir",
            "report_path",
            "from_csv",
            "registration_path",
        ):
            value = getattr(self, name)
            if value is not None and not isinstance(value, Path):
                object.__setattr__(self, name, Path(value))
        if not (math.isfinite(self.equilibrium) and self.equilibrium >= 0):
            raise ConfigError(f"equilibrium must be a number ≥ 0, got {self.equilibrium!r}")
        if self.bootstrap < 0:
            raise ConfigError(f"bootstrap must be ≥ 0, got {self.bootstrap}")
        for name in ("margin", "norm_margin"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ConfigError(f"{name.replace('_', '-')} must be a number ≥ 0, got {value!r}")
        if self.metric is not None and self.metric not in METRICS:
            raise ConfigError(f"metric must be one of {', '.join(METRICS)}, got {self.metric!r}")
        if self.interval not in INTERVALS:
            raise ConfigError(
                f"interval must be one of {', '.join(INTERVALS)}, got {self.interval!r}"
            )
        if not (0.5 <= self.confidence < 1.0):
            raise ConfigError(f"confidence must be in [0.5, 1), got {self.confidence}")
        lo, hi = self.k_bounds
        if not lo < hi:
            raise ConfigError(f"k-bounds must be increasing, got {self.k_bounds}")
        band = self.equilibrium_band
        if len(band) != 2 or not (0 < band[0] <= 1 <= band[1] < math.inf):
            raise ConfigError(
                f"equilibrium-band must be (low, high) with 0 < low ≤ 1 ≤ high, got {band}"
            )
        if not (0 < self.equilibrium_tail <= 1):
            raise ConfigError(f"equilibrium-tail must be in (0, 1], got {self.equilibrium_tail!r}")

    def to_dict(self) -> dict[str, Any]:
        # Here, not at the top: l2bn.sweep.storage imports optuna, which the fits must not.
        from l2bn.sweep.storage import redact

        return {
            "storage": redact(self.storage),
            "studies": list(self.studies),
            "equilibrium": self.equilibrium,
            "interval": self.interval,
            "bootstrap": self.bootstrap,
            "seed": self.seed,
            "confidence": self.confidence,
            "margin": self.margin,
            "norm_margin": self.norm_margin,
            "metric": self.metric,
            "from_csv": None if self.from_csv is None else str(self.from_csv),
            "more_csv": [str(p) for p in self.more_csv],
            "storage_too": self.storage_too,
            "registration_path": (
                None if self.registration_path is None else str(self.registration_path)
            ),
            "k_bounds": list(self.k_bounds),
            "equilibrium_band": list(self.equilibrium_band),
            "equilibrium_tail": self.equilibrium_tail,
        }


__all__ = [
    "DEFAULT_METRIC",
    "DEFAULT_STORAGE",
    "EQUILIBRIUM_BAND",
    "EQUILIBRIUM_TAIL",
    "INTERVALS",
    "METRICS",
    "AnalyzeConfig",
    "IntervalKind",
    "Metric",
]
