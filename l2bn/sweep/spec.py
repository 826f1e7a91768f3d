"""What a sweep is: a TOML file naming optimizers and an η × λ × seed grid.

Schema (every key optional except that at least one ``[optimizers.<name>]`` table exists)::

    name = "cpu"                       # study names are "<name>/<optimizer>"; default: file stem
    lr = {min = 1e-3, max = 1, num = 7}  # η grid, log-spaced; or an explicit list [0.01, 0.1]
    weight_decay = [1e-2, 4e-2, 1.6e-1]  # λ grid, same two forms; every λ must be > 0
    lr_scale_exponent = 0.0            # k: with k ≠ 0 the lr grid lists η·λ^k, see below
    init_scale_exponent = 0.0          # e: the run at λ has S = init_scale·(λ/λ_ref)^-e
    reference_weight_decay = 1.0       # λ_ref: the λ where η and S are the listed values
    objective = "val_error"            # the trial's value: val_error or val_loss
    seeds = [0]                        # or a count: seeds = 3 means [0, 1, 2]
    independent_seeds = false          # true: every λ row gets seeds of its own (see below)
    epochs = 40                        # ... and any other TrainConfig field except
    batch_size = 32                    #     optimizer, lr, weight_decay and seed

    [optimizers.nesterov]              # one table per optimizer; may be empty
    [optimizers.adam]                  # and may override any key above except name
    lr = {min = 1e-4, max = 1e-1, num = 7}
    lr_scale_exponent = 0.5

``lr_scale_exponent`` (k) makes the η grid follow the predicted optimum η* ∝ λ^-k: the ``lr``
values are then values of η·(λ/λ_ref)^k, and the run at λ uses η = value·(λ/λ_ref)^-k (λ_ref =
``reference_weight_decay``, 1 by default: η = value·λ^-k). The grid stays a full rectangle in
(log η·λ^k, log λ), every trial stores the η it really used, and the analysis fits η* against λ
from those; k only decides where the cells lie, so a wrong k costs coverage (an optimum on the
grid's edge), never a biased fit.

``init_scale_exponent`` (e) ties the initial scale to λ the same way: the run at λ multiplies
its scale-invariant initial weights by S = init_scale·(λ/λ_ref)^-e (TrainConfig.init_scale;
the trial records it as its user attr ``init_scale``). With k and e on a symmetry map of the
optimizer (sweeps/symmetry.toml) every λ row is a rescaled copy of the row at λ_ref.

Every computed value is rounded to SIGNIFICANT_DIGITS, so that every node computes the same
float, except when the tie factor (λ/λ_ref)^-k (or ^-e) is an exact power of two: λ/λ_ref is
2^m exactly (math.frexp gives mantissa ½) and k·m is an integer. The product is then exact
IEEE arithmetic, the same on every node, and is kept unrounded, so that symmetric rows stay
exact rescalings (η·4^n rounded to 10 digits is not η·4^n).
"""

from __future__ import annotations

import json
import math
import tomllib
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from l2bn.errors import ConfigError
from l2bn.registration import Registration, parse_registration
from l2bn.train.config import Objective, OptimizerName, TrainConfig

GRID_KEYS = (
    "lr",
    "weight_decay",
    "lr_scale_exponent",
    "init_scale_exponent",
    "reference_weight_decay",
    "seeds",
    "independent_seeds",
    "extend_edges",
)
SETTING_KEYS = ("objective", "cpu_fusion")  # sweep settings: neither grid nor TrainConfig keys
CPU_FUSIONS = ("exact", "grouped")  # how a CPU worker trains fused points (ConvNets.exact)
SWEEP_ONLY_KEYS = ("name", "optimizers", "registration")
# The stored config's keys added after studies were first stored, with the value every study
# stored before them ran with (l2bn.sweep.study fills them in before comparing).
STORED_DEFAULTS: dict[str, Any] = {
    "init_scale_exponent": 0.0,
    "reference_weight_decay": 1.0,
    "objective": Objective.val_error.value,
    "cpu_fusion": "exact",
}
PER_RUN_FIELDS = ("optimizer", "lr", "weight_decay", "seed")  # set per trial, not per sweep
# Where a node keeps its data, what it trains on and how it launches a step (graph: the same
# numbers to float rounding): not part of the experiment, so two nodes that differ only in
# these join one study (they are left out of the study's ``config``).
LOCATION_FIELDS = ("data_dir", "device", "graph")
TRAIN_KEYS = tuple(f.name for f in fields(TrainConfig) if f.name not in PER_RUN_FIELDS)
SIGNIFICANT_DIGITS = 10  # grid values are rounded so that every node computes the same floats


@dataclass(frozen=True)
class Axis:
    """One log-spaced (or listed) axis of the grid."""

    values: tuple[float, ...]
    spec: Any  # what the file said, kept for the study's config attr

    @property
    def low(self) -> float:
        return min(self.values)

    @property
    def high(self) -> float:
        return max(self.values)


@dataclass(frozen=True, order=True)
class Point:
    """One grid point: one training run."""

    lr: float
    weight_decay: float
    seed: int

    def params(self) -> dict[str, float | int]:
        return {"lr": self.lr, "weight_decay": self.weight_decay, "seed": self.seed}


@dataclass(frozen=True)
class OptimizerSweep:
    """The resolved sweep for one optimizer: one Optuna study."""

    sweep: str  # the sweep's name
    optimizer: OptimizerName
    lr: Axis
    weight_decay: Axis
    lr_scale_exponent: float
    seeds: tuple[int, ...]
    train: dict[str, Any] = field(default_factory=dict)  # TrainConfig fields, as in TOML
    # False: every λ row runs the same seeds, so its cells share initial weights and batch
    # order with the other rows' (their errors are correlated across λ). True: row λ runs
    # seed s + span·row_key(λ) (span = max(seeds) + 1; row_key from λ's value, so adding a λ
    # row later leaves the others' seeds as they were): rows independent, which analyze
    # detects (no seed shared between rows) and resamples accordingly.
    independent_seeds: bool = False
    init_scale_exponent: float = 0.0  # e: S = init_scale·(λ/λ_ref)^-e at λ
    reference_weight_decay: float = 1.0  # λ_ref: the row whose η and S are the listed values
    objective: Objective = Objective.val_error  # the trial's value (and intermediate values)
    # The run's registered reading rule (the file's [registration] table), stored with the
    # study when it is made and never changed once a trial has run (l2bn.registration).
    registration: Registration | None = None
    # How a CPU worker trains the points it fuses (``--fuse`` ≥ 2): "exact", model by model,
    # each bit for bit a run alone; "grouped", one grouped network, ×1.65 at width 8 on a
    # 2-core CPU (docs/performance.md) but rounding by its partners. No effect at K = 1 or
    # on CUDA (always grouped).
    cpu_fusion: str = "exact"
    # Points added beyond a λ row's grid edge, once, when the row's best η lies on that edge
    # (0: none): the row's own η step continued, with its seeds (l2bn.sweep.edges).
    extend_edges: int = 0

    @property
    def study_name(self) -> str:
        return f"{self.sweep}/{self.optimizer.value}"

    def base_config(self) -> TrainConfig:
        return TrainConfig.from_dict({**self.train, "optimizer": self.optimizer.value})

    def config_for(self, point: Point) -> TrainConfig:
        base = self.base_config()
        return base.with_(
            lr=point.lr,
            weight_decay=point.weight_decay,
            seed=point.seed,
            init_scale=self.init_scale_for(point.weight_decay, base.init_scale),
        )

    def lr_for(self, value: float, weight_decay: float) -> float:
        """η of the λ row ``weight_decay`` for the lr grid value ``value``: value·(λ/λ_ref)^-k."""
        return tied(value, weight_decay / self.reference_weight_decay, self.lr_scale_exponent)

    def init_scale_for(self, weight_decay: float, init_scale: float | None = None) -> float:
        """S of the λ row ``weight_decay``: init_scale·(λ/λ_ref)^-e (init_scale: the file's)."""
        if init_scale is None:
            init_scale = self.base_config().init_scale
        ratio = weight_decay / self.reference_weight_decay
        return tied(init_scale, ratio, self.init_scale_exponent)

    def points(self) -> list[Point]:
        """Every (η, λ, seed) of the grid, in a fixed order: λ, then η, then seed."""
        out: list[Point] = []
        for wd in self.weight_decay.values:
            for base in self.lr.values:
                lr = self.lr_for(base, wd)
                out.extend(Point(lr, wd, seed) for seed in self.seeds_for(wd))
        return sorted(set(out), key=lambda p: (p.weight_decay, p.lr, p.seed))

    def seeds_for(self, weight_decay: float) -> tuple[int, ...]:
        """The seeds of the λ row ``weight_decay``."""
        if not self.independent_seeds:
            return self.seeds
        offset = (max(self.seeds) + 1) * row_key(weight_decay)
        return tuple(s + offset for s in self.seeds)

    def seed_range(self) -> tuple[int, int]:
        seeds = [s for wd in self.weight_decay.values for s in self.seeds_for(wd)]
        return min(seeds), max(seeds)

    def lr_range(self) -> tuple[float, float]:
        lrs = [p.lr for p in self.points()]
        return min(lrs), max(lrs)

    def to_dict(self) -> dict[str, Any]:
        """The resolved sweep (the study's ``config`` user attr, as JSON): everything that
        defines the experiment, so not the node-local LOCATION_FIELDS."""
        return {
            "sweep": self.sweep,
            "optimizer": self.optimizer.value,
            "lr": self.lr.spec,
            "weight_decay": self.weight_decay.spec,
            "lr_scale_exponent": self.lr_scale_exponent,
            "init_scale_exponent": self.init_scale_exponent,
            "reference_weight_decay": self.reference_weight_decay,
            # What the trials' values are: `l2bn analyze` defaults its metric to it.
            "objective": self.objective.value,
            "cpu_fusion": self.cpu_fusion,
            "seeds": list(self.seeds),
            # Written only when set: studies stored before the key existed stay the same.
            **({"independent_seeds": True} if self.independent_seeds else {}),
            **({"extend_edges": self.extend_edges} if self.extend_edges else {}),
            # The per-point fields (lr, weight_decay, seed) are the trial's params, not here.
            "train": {
                k: v
                for k, v in self.base_config().to_dict().items()
                if (k not in PER_RUN_FIELDS or k == "optimizer") and k not in LOCATION_FIELDS
            },
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)


@dataclass(frozen=True)
class Sweep:
    name: str
    optimizers: dict[OptimizerName, OptimizerSweep]

    def select(self, optimizers: list[str] | None) -> list[OptimizerSweep]:
        """The per-optimizer sweeps asked for (all of them when ``optimizers`` is empty)."""
        if not optimizers:
            return list(self.optimizers.values())
        out = []
        for name in optimizers:
            opt = _enum(OptimizerName, name, "optimizer", "")
            if opt not in self.optimizers:
                have = ", ".join(o.value for o in self.optimizers)
                raise ConfigError(f"sweep {self.name!r} has no optimizer {name!r}; it has: {have}")
            out.append(self.optimizers[opt])
        return out


def load_sweep(path: Path | str, overrides: dict[str, Any] | None = None) -> Sweep:
    """Read and validate a sweep file; ``overrides`` (from CLI flags) win over every table."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"sweep file {path} does not exist") from None
    except OSError as e:
        raise ConfigError(f"cannot read sweep file {path}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a text file (TOML must be UTF-8)") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None
    data.setdefault("name", path.stem)
    overrides = dict(overrides or {})
    if "name" in overrides:
        data["name"] = overrides.pop("name")
    return parse_sweep(data, source=str(path), overrides=overrides)


def parse_settings(items: Iterable[str]) -> dict[str, Any]:
    """``--set KEY=VALUE`` flags as a dict; VALUE is TOML (a bare word is taken as a string)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key or not value:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. --set epochs=5")
        try:
            parsed = tomllib.loads(f"v = {value}")
        except tomllib.TOMLDecodeError:
            try:  # dataset=synthetic rather than dataset='"synthetic"'
                parsed = tomllib.loads(f"v = {json.dumps(value)}")
            except tomllib.TOMLDecodeError as e:
                raise ConfigError(f"--set {item!r}: value is not TOML ({e})") from None
        out[key] = parsed["v"]
    return out


def sweep_from_cli(path: Path | None, optimizers: Sequence[str], settings: dict[str, Any]) -> Sweep:
    """A sweep file with ``settings`` on top, or, without a file, a sweep made of the settings
    alone for the given optimizers (``name`` defaults to "cli")."""
    if path is not None:
        return load_sweep(path, settings)
    if not optimizers:
        raise ConfigError("give a sweep file, or --optimizer with --set lr=… --set weight_decay=…")
    shared = {"name": "cli", **settings}
    data = {"name": shared.pop("name"), "optimizers": {o: {} for o in optimizers}}
    return parse_sweep(data, source="--set", overrides=shared)


def parse_sweep(
    data: dict[str, Any], source: str = "<sweep>", overrides: dict[str, Any] | None = None
) -> Sweep:
    where = f"{source}: "
    shared = dict(data)
    name = shared.pop("name", None)
    if not isinstance(name, str) or not name or "/" in name:
        raise ConfigError(f"{where}name must be a non-empty string without '/', got {name!r}")
    tables = shared.pop("optimizers", None)
    if not isinstance(tables, dict) or not tables:
        raise ConfigError(
            f"{where}no optimizers: add one table per optimizer, e.g. [optimizers.nesterov]"
        )
    registration = (
        parse_registration(shared.pop("registration"), where) if "registration" in shared else None
    )
    _check_keys(shared, where, "")
    if overrides:
        if "registration" in overrides:
            raise ConfigError("--set registration=…: the registration is the sweep file's")
        _check_keys(overrides, "--set: ", "")
    resolved: dict[OptimizerName, OptimizerSweep] = {}
    for opt_name, table in tables.items():
        section = f"[optimizers.{opt_name}] "
        opt = _enum(OptimizerName, opt_name, "optimizer", where)
        if not isinstance(table, dict):
            raise ConfigError(f"{where}optimizers.{opt_name} must be a table")
        _check_keys(table, where, section)
        merged = {**shared, **table, **(overrides or {})}
        resolved[opt] = replace(
            _resolve(name, opt, merged, where + section), registration=registration
        )
    return Sweep(name, resolved)


def _check_keys(table: dict[str, Any], where: str, section: str) -> None:
    known = set(GRID_KEYS) | set(SETTING_KEYS) | set(TRAIN_KEYS)
    for key in table:
        if key not in known:
            hint = (
                " (set per grid point by the sweep)"
                if key in PER_RUN_FIELDS
                else f"; known keys: {', '.join(sorted(known))}"
            )
            raise ConfigError(f"{where}{section}unknown key {key!r}{hint}")


def _resolve(name: str, opt: OptimizerName, d: dict[str, Any], where: str) -> OptimizerSweep:
    for key in ("lr", "weight_decay"):
        if key not in d:
            raise ConfigError(f"{where}missing {key} grid, e.g. {key} = {{min=1e-3, max=1, num=7}}")
    lr = _axis(d["lr"], "lr", where)
    wd = _axis(d["weight_decay"], "weight_decay", where)
    k = _exponent(d, "lr_scale_exponent", where)
    e = _exponent(d, "init_scale_exponent", where)
    ref = d.get("reference_weight_decay", STORED_DEFAULTS["reference_weight_decay"])
    if not (_is_number(ref) and math.isfinite(ref) and ref > 0):
        raise ConfigError(f"{where}reference_weight_decay must be a number > 0, got {ref!r}")
    objective = d.get("objective", STORED_DEFAULTS["objective"])
    if not isinstance(objective, str) or objective not in {o.value for o in Objective}:
        choices = ", ".join(o.value for o in Objective)
        raise ConfigError(f"{where}objective {objective!r} is not one of: {choices}")
    seeds = _seeds(d.get("seeds", [0]), where)
    independent = d.get("independent_seeds", False)
    if not isinstance(independent, bool):
        raise ConfigError(f"{where}independent_seeds must be true or false, got {independent!r}")
    keys = [row_key(x) for x in wd.values]
    if independent and len(set(keys)) < len(keys):
        raise ConfigError(
            f"{where}independent_seeds: two weight_decay values share a seed block; "
            f"change one of {list(wd.values)} slightly"
        )
    fusion = d.get("cpu_fusion", STORED_DEFAULTS["cpu_fusion"])
    if fusion not in CPU_FUSIONS:
        raise ConfigError(f"{where}cpu_fusion {fusion!r} is not one of: {', '.join(CPU_FUSIONS)}")
    extend = d.get("extend_edges", 0)
    if isinstance(extend, bool) or not isinstance(extend, int) or extend < 0:
        raise ConfigError(
            f"{where}extend_edges must be a whole number ≥ 0 (points added beyond a λ row's "
            f"grid edge when its best η lies there), got {extend!r}"
        )
    train = {key: d[key] for key in TRAIN_KEYS if key in d}
    sweep = OptimizerSweep(
        name, opt, lr, wd, k, seeds, train, independent, e, float(ref), Objective(objective),
        extend_edges=extend, cpu_fusion=fusion,
    )  # fmt: skip
    try:
        sweep.base_config()
        for p in sweep.points():  # every η·(λ/λ_ref)^-k and S must make a valid TrainConfig
            sweep.config_for(p)
    except ConfigError as e:
        raise ConfigError(f"{where}{e}") from None
    except TypeError as e:  # e.g. epochs = "ten" reaching a comparison
        raise ConfigError(f"{where}{e}") from None
    return sweep


def _exponent(d: dict[str, Any], key: str, where: str) -> float:
    value = d.get(key, 0.0)
    if not (_is_number(value) and math.isfinite(value)):
        raise ConfigError(f"{where}{key} must be a number, got {value!r}")
    return float(value)


def _axis(spec: Any, key: str, where: str) -> Axis:
    if isinstance(spec, list):
        if not spec or not all(_is_number(v) and v > 0 and math.isfinite(v) for v in spec):
            raise ConfigError(f"{where}{key} must list numbers > 0, got {spec!r}")
        values = tuple(sorted({canonical(float(v)) for v in spec}))
        return Axis(values, [float(v) for v in spec])
    if not isinstance(spec, dict):
        raise ConfigError(f"{where}{key} must be {{min=…, max=…, num=…}} or a list of numbers")
    unknown = sorted(set(spec) - {"min", "max", "num"})
    if unknown:
        raise ConfigError(f"{where}{key}: unknown key {unknown[0]!r} (known: min, max, num)")
    missing = [k for k in ("min", "max", "num") if k not in spec]
    if missing:
        raise ConfigError(f"{where}{key}: missing {', '.join(missing)}")
    lo, hi, num = spec["min"], spec["max"], spec["num"]
    if not (_is_number(lo) and _is_number(hi) and lo > 0 and math.isfinite(hi)):
        raise ConfigError(f"{where}{key}: min and max must be numbers > 0, got {lo!r}, {hi!r}")
    if lo >= hi:
        raise ConfigError(f"{where}{key}: min {lo} must be < max {hi}")
    if isinstance(num, bool) or not isinstance(num, int) or num < 2:
        raise ConfigError(f"{where}{key}: num must be an integer ≥ 2, got {num!r}")
    step = (math.log(hi) - math.log(lo)) / (num - 1)
    values = tuple(canonical(math.exp(math.log(lo) + i * step)) for i in range(num))
    return Axis(values, {"min": float(lo), "max": float(hi), "num": num})


def _seeds(spec: Any, where: str) -> tuple[int, ...]:
    if isinstance(spec, int) and not isinstance(spec, bool):
        if spec < 1:
            raise ConfigError(f"{where}seeds must be a count ≥ 1 or a list, got {spec}")
        return tuple(range(spec))
    if (
        isinstance(spec, list)
        and spec
        and all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in spec)
    ):
        return tuple(sorted(set(spec)))
    raise ConfigError(f"{where}seeds must be a count ≥ 1 or a list of integers ≥ 0, got {spec!r}")


def _enum(enum: type[OptimizerName], value: str, what: str, where: str) -> OptimizerName:
    try:
        return enum(value)
    except ValueError:
        choices = ", ".join(e.value for e in enum)
        raise ConfigError(f"{where}{what} {value!r} is not one of: {choices}") from None


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


ROW_KEYS = 1 << 16


def row_key(weight_decay: float) -> int:
    """A λ row's seed block, 1 … 2^16, from λ's value alone (crc32 of its canonical text)."""
    return 1 + zlib.crc32(f"{canonical(weight_decay):.10g}".encode()) % ROW_KEYS


def canonical(x: float) -> float:
    """Round to SIGNIFICANT_DIGITS: the same float on every node, and readable in tables."""
    return float(f"{x:.{SIGNIFICANT_DIGITS}g}")


def power_of_two(ratio: float, exponent: float) -> int | None:
    """n when ratio^-exponent is exactly 2^n (ratio = 2^m exactly, -exponent·m an integer),
    else None."""
    mantissa, exp2 = math.frexp(ratio)
    if mantissa != 0.5:
        return None
    n = -exponent * (exp2 - 1)
    return int(n) if n == int(n) and abs(n) < 1000 else None  # 2^±1000: still a normal float


def tied(value: float, ratio: float, exponent: float) -> float:
    """value·ratio^-exponent, the same float on every node: exact (unrounded) when the factor
    is an exact power of two, otherwise rounded to SIGNIFICANT_DIGITS (module docstring)."""
    if exponent == 0:
        return value
    n = power_of_two(ratio, exponent)
    if n is not None:
        return value * math.ldexp(1.0, n)  # exact IEEE arithmetic: no rounding needed
    try:
        factor = ratio ** (-exponent)
    except OverflowError:
        factor = math.inf  # refused by TrainConfig's check of the point, naming the setting
    return canonical(value * factor)
