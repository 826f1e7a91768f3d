"""Registration as data: a sweep file's ``[registration]`` table, the reading rule of its run.

A registered run states before its first trial how it will be read: the primary estimator and
metric, the targets, and the conditions of its reading rule. ``l2bn sweep`` stores the table
with each study when the study is made (user attr ``registration``) and refuses to change it
once the study has trials; ``l2bn analyze`` evaluates every condition, met, missed or
undetermined, with the numbers behind it (:mod:`l2bn.analysis.registered`).

The table::

    [registration]
    primary = "collapse"          # the estimator the rule reads (analyze v3's primary)
    metric = "val_error"          # the metric it reads
    edge_extension = "…"          # optional: free text, the registered edge-extension rule
    conditions = [
      # k's point estimate in [low, high]
      { kind = "k_in_range", optimizer = "nesterov", range = [0.9, 1.1] },
      # the 95 % CIs of two optimizers' k do not overlap
      { kind = "ci_disjoint", optimizers = ["adam", "nesterov"] },
      # at least n λ rows pass the lack-of-collapse test
      { kind = "rows_collapse", optimizer = "nesterov", at_least = 3 },
      # every λ's optimum cell in equilibrium (stationarity); the outcome names those that
      # are not
      { kind = "optima_in_equilibrium", optimizer = "nesterov" },
    ]

Nothing here imports optuna, SciPy or torch.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from l2bn.errors import ConfigError

PRIMARIES = ("collapse",)  # the estimators a registration may name as its primary
METRICS = ("val_error", "val_loss")
K_IN_RANGE = "k_in_range"
CI_DISJOINT = "ci_disjoint"
ROWS_COLLAPSE = "rows_collapse"
OPTIMA_IN_EQUILIBRIUM = "optima_in_equilibrium"
KINDS = (K_IN_RANGE, CI_DISJOINT, ROWS_COLLAPSE, OPTIMA_IN_EQUILIBRIUM)
_KEYS = {
    K_IN_RANGE: {"kind", "optimizer", "range"},
    CI_DISJOINT: {"kind", "optimizers"},
    ROWS_COLLAPSE: {"kind", "optimizer", "at_least"},
    OPTIMA_IN_EQUILIBRIUM: {"kind", "optimizer"},
}
TABLE_KEYS = {"primary", "metric", "conditions", "edge_extension"}


@dataclass(frozen=True)
class Condition:
    """One condition of the reading rule (see the module docstring)."""

    kind: str
    optimizers: tuple[str, ...]  # one, or two for ci_disjoint
    low: float = math.nan  # k_in_range
    high: float = math.nan
    at_least: int = 0  # rows_collapse

    def describe(self) -> str:
        """The condition in words."""
        if self.kind == K_IN_RANGE:
            return f"{self.optimizers[0]}'s k in [{self.low:g}, {self.high:g}]"
        if self.kind == CI_DISJOINT:
            a, b = self.optimizers
            return f"{a}'s 95 % CI disjoint from {b}'s"
        if self.kind == ROWS_COLLAPSE:
            return f"{self.optimizers[0]}: at least {self.at_least} λ rows follow one curve"
        return f"{self.optimizers[0]}: every optimum cell in equilibrium"

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"kind": self.kind}
        if self.kind == CI_DISJOINT:
            d["optimizers"] = list(self.optimizers)
        else:
            d["optimizer"] = self.optimizers[0]
        if self.kind == K_IN_RANGE:
            d["range"] = [self.low, self.high]
        if self.kind == ROWS_COLLAPSE:
            d["at_least"] = self.at_least
        return d


@dataclass(frozen=True)
class Registration:
    """A run's registered reading rule."""

    primary: str = "collapse"
    metric: str = "val_error"
    conditions: tuple[Condition, ...] = ()
    edge_extension: str | None = None

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "primary": self.primary,
            "metric": self.metric,
            "conditions": [c.to_dict() for c in self.conditions],
        }
        if self.edge_extension is not None:
            d["edge_extension"] = self.edge_extension
        return d

    def to_json(self) -> str:
        """The stored form (study user attr ``registration``): canonical, so equal rules are
        equal strings."""
        return json.dumps(self.to_dict(), sort_keys=True)


def parse_registration(table: Any, where: str = "") -> Registration:
    """A ``[registration]`` table (or its stored JSON's dict) as a :class:`Registration`;
    :class:`~l2bn.errors.ConfigError` naming what is wrong."""
    at = f"{where}[registration] "
    if not isinstance(table, dict):
        raise ConfigError(f"{at}must be a table")
    unknown = sorted(set(table) - TABLE_KEYS)
    if unknown:
        raise ConfigError(
            f"{at}unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(TABLE_KEYS))}"
        )
    primary = table.get("primary", "collapse")
    if primary not in PRIMARIES:
        raise ConfigError(f"{at}primary must be one of {', '.join(PRIMARIES)}, got {primary!r}")
    metric = table.get("metric", "val_error")
    if metric not in METRICS:
        raise ConfigError(f"{at}metric must be one of {', '.join(METRICS)}, got {metric!r}")
    raw = table.get("conditions", [])
    if not isinstance(raw, list):
        raise ConfigError(f"{at}conditions must be a list of tables")
    extension = table.get("edge_extension")
    if extension is not None and not isinstance(extension, str):
        raise ConfigError(f"{at}edge_extension must be a string (the rule, in words)")
    return Registration(
        primary, metric, tuple(_condition(c, f"{at}conditions[{i}]") for i, c in enumerate(raw)),
        extension,
    )  # fmt: skip


def _condition(c: Any, at: str) -> Condition:
    if not isinstance(c, dict):
        raise ConfigError(f'{at} must be a table, e.g. {{ kind = "k_in_range", … }}')
    kind = c.get("kind")
    if kind not in KINDS:
        raise ConfigError(f"{at}: kind must be one of {', '.join(KINDS)}, got {kind!r}")
    keys = set(c)
    if keys != _KEYS[kind]:
        want = ", ".join(sorted(_KEYS[kind]))
        raise ConfigError(f"{at}: a {kind} condition has exactly the keys {want}")
    if kind == CI_DISJOINT:
        names = c["optimizers"]
        if not (isinstance(names, list) and len(names) == 2 and all(_name(n) for n in names)):
            raise ConfigError(f"{at}: optimizers must be two optimizer names")
        if names[0] == names[1]:
            raise ConfigError(f"{at}: optimizers must be two different optimizers")
        return Condition(kind, (names[0], names[1]))
    name = c["optimizer"]
    if not _name(name):
        raise ConfigError(f"{at}: optimizer must be an optimizer's name, got {name!r}")
    if kind == K_IN_RANGE:
        r = c["range"]
        if not (isinstance(r, list) and len(r) == 2 and all(_number(x) for x in r) and r[0] < r[1]):
            raise ConfigError(f"{at}: range must be [low, high] with low < high")
        return Condition(kind, (name,), float(r[0]), float(r[1]))
    if kind == ROWS_COLLAPSE:
        n = c["at_least"]
        if not (isinstance(n, int) and not isinstance(n, bool) and n >= 2):
            raise ConfigError(f"{at}: at_least must be an integer ≥ 2")
        return Condition(kind, (name,), at_least=n)
    return Condition(kind, (name,))


def _name(x: Any) -> bool:
    from l2bn.theory import THEORY  # the optimizer names the CLI knows

    return isinstance(x, str) and x in THEORY


def _number(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def stored_registration(raw: Any) -> Registration | None:
    """A study's stored ``registration`` user attr, read back; None when absent or not one."""
    if not isinstance(raw, str):
        return None
    try:
        return parse_registration(json.loads(raw))
    except (json.JSONDecodeError, ConfigError):
        return None


def load_registration(path: Path) -> Registration:
    """The ``[registration]`` table of a sweep file; ConfigError naming what is missing."""
    import tomllib

    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"--registration {path}: no such file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"--registration {path}: cannot read it ({e})") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"--registration {path}: not valid TOML: {e}") from None
    if "registration" not in data:
        raise ConfigError(f"--registration {path}: the file has no [registration] table")
    return parse_registration(data["registration"], f"{path}: ")


def optimizers_named(r: Registration) -> Sequence[str]:
    return sorted({o for c in r.conditions for o in c.optimizers})


__all__ = [
    "CI_DISJOINT",
    "KINDS",
    "K_IN_RANGE",
    "OPTIMA_IN_EQUILIBRIUM",
    "ROWS_COLLAPSE",
    "Condition",
    "Registration",
    "load_registration",
    "optimizers_named",
    "parse_registration",
    "stored_registration",
]
