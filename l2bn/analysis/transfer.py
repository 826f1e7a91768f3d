"""``l2bn transfer``: carry a tuned (η, λ) to another λ (or another η) along η* ∝ λ^-k.

With BatchNorm, λ only sets the effective learning rate, so the best η for one λ gives the best
η for every other:

    η₂ = η₁ · (λ₁ / λ₂)^k          (--to-weight-decay λ₂)
    λ₂ = λ₁ · (η₁ / η₂)^(1/k)      (--to-lr η₂; undefined for k = 0, normalized SGD)

k comes from the theory (:data:`l2bn.theory.THEORY`, no uncertainty) or from a fitted group of
a previous analysis (:func:`fitted_k`: the ``k`` entry of an ``l2bn analyze --json`` report, or
of a study analyzed now); the band is the answer at the two ends of k's CI. A fitted k is only
measured over the λ values its fit used: a transfer from or to a λ outside that range is
flagged ``extrapolated``.

Everything here but :func:`run_transfer` is pure: :func:`transfer` takes numbers and a
:class:`KSource` and returns a frozen :class:`Transfer`; bad input is a
:class:`~l2bn.errors.ConfigError` or :class:`~l2bn.errors.AnalysisError` whose message names
the option and the fix. :func:`run_transfer` is what ``l2bn transfer`` calls with its
:class:`TransferConfig`: it finds k (:func:`choose_k`: the theory's, a report file's, or a
storage's analyzed now) and transfers with it. Neither optuna nor SciPy is imported (the
analysis of a storage imports them when it runs).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from l2bn.errors import AnalysisError, ConfigError
from l2bn.files import finite_or_none
from l2bn.theory import THEORY

# Relative slack when comparing a λ with the ends of the fitted range: grid values come back
# from a database or JSON as floats.
_RANGE_RTOL = 1e-9


@dataclass(frozen=True)
class KSource:
    """The exponent k of η* ∝ λ^-k to transfer with, and where it came from."""

    optimizer: str
    k: float
    ci_low: float  # = k for the theory
    ci_high: float
    confidence: float | None  # None for the theory (exact)
    source: str  # "theory", or "fit of <studies> (<label>)"
    # The λ range the fit used (None for the theory): beyond it the transfer extrapolates.
    lambda_range: tuple[float, float] | None = None

    @property
    def is_theory(self) -> bool:
        return self.confidence is None

    def to_dict(self) -> dict[str, Any]:
        return {
            "optimizer": self.optimizer,
            "value": self.k,
            "ci_low": self.ci_low,
            "ci_high": self.ci_high,
            "confidence": self.confidence,
            "source": self.source,
            "lambda_range": None if self.lambda_range is None else list(self.lambda_range),
        }


@dataclass(frozen=True)
class Transfer:
    """The transferred hyperparameter with its band from k's CI."""

    optimizer: str
    lr: float  # the tuned η₁
    weight_decay: float  # the tuned λ₁
    target: str  # what was computed: "lr" (for a new λ) or "weight_decay" (for a new η)
    given: float  # the new λ₂ (target "lr") or the new η₂ (target "weight_decay")
    estimate: float  # η₂ or λ₂ at k
    low: float  # the band's ends over k's CI (0 and inf when unbounded)
    high: float
    k: KSource
    extrapolated: bool  # λ₁ or λ₂ outside the λ range a fitted k was measured on
    warnings: tuple[str, ...] = ()

    @property
    def new_lr(self) -> float:
        return self.estimate if self.target == "lr" else self.given

    @property
    def new_weight_decay(self) -> float:
        return self.estimate if self.target == "weight_decay" else self.given

    def to_dict(self) -> dict[str, Any]:
        return {
            "optimizer": self.optimizer,
            "from": {"lr": self.lr, "weight_decay": self.weight_decay},
            "to": {"lr": self.new_lr, "weight_decay": self.new_weight_decay},
            "target": self.target,
            "estimate": self.estimate,
            "low": finite_or_none(self.low),  # null: unbounded
            "high": finite_or_none(self.high),
            "k": self.k.to_dict(),
            "extrapolated": self.extrapolated,
            "warnings": list(self.warnings),
        }


# --- where k comes from -------------------------------------------------------------------


def theory_k(optimizer: str) -> KSource:
    """The theory's k for ``optimizer`` (exact: the band is a point)."""
    theory = THEORY.get(str(optimizer))
    if theory is None:
        raise ConfigError(
            f"unknown optimizer {optimizer!r} for --optimizer; one of {', '.join(THEORY)}"
        )
    return KSource(str(optimizer), theory.k, theory.k, theory.k, None, "theory")


def fitted_k(
    report: Mapping[str, Any],
    optimizer: str | None = None,
    study: str | None = None,
    origin: str = "analysis",
) -> KSource:
    """k of one group of an analysis report in its JSON form
    (:meth:`~l2bn.analysis.results.AnalysisReport.to_dict`, as ``l2bn analyze --json`` writes).

    The group is the one with ``optimizer`` (when given) holding ``study`` (when given); it
    must be exactly one, and its k determined (finite, with a finite CI). ``origin`` names the
    report in messages (a file name, a redacted storage URL).
    """
    groups = report.get("groups") if isinstance(report, Mapping) else None
    if not isinstance(groups, list) or not all(isinstance(g, Mapping) for g in groups):
        raise ConfigError(
            f"{origin} is not an `l2bn analyze --json` report (no list of groups); "
            "write one with `l2bn analyze --json FILE`"
        )
    chosen = [
        g
        for g in groups
        if (optimizer is None or g.get("optimizer") == optimizer)
        and (study is None or study in (g.get("studies") or ()))
    ]
    if not chosen:
        wanted = " and ".join(
            x
            for x in (
                None if optimizer is None else f"optimizer {optimizer!r}",
                None if study is None else f"study {study!r}",
            )
            if x
        )
        raise AnalysisError(
            f"no analyzed group with {wanted or 'any data'} in {origin}; groups there: "
            f"{_list_groups(groups)}"
        )
    if len(chosen) > 1:
        raise AnalysisError(
            f"{len(chosen)} analyzed groups match in {origin}: {_list_groups(chosen)}; "
            "pick one with --study NAME (and --optimizer)"
        )
    group = chosen[0]
    name = _group_name(group)
    fit = _sub(group, "k")
    est = _sub(fit, "estimate")
    value, low, high = (_number(est.get(key)) for key in ("value", "ci_low", "ci_high"))
    if not all(math.isfinite(x) for x in (value, low, high)):
        raise AnalysisError(
            f"k of {name} in {origin} is undetermined ({fit.get('n_lambda', '?')} λ value(s) "
            "with an interior η*, or no finite CI); sweep more λ values, or drop "
            "--storage/--from-json to use the theory's k"
        )
    used = [
        wd
        for o in group.get("optima") or ()
        if isinstance(o, Mapping) and o.get("used") and (wd := _number(o.get("weight_decay"))) > 0
    ]
    confidence = _number(est.get("confidence"))
    return KSource(
        optimizer=str(group.get("optimizer")),
        k=value,
        ci_low=min(low, high),
        ci_high=max(low, high),
        confidence=confidence if math.isfinite(confidence) else 0.95,
        source=f"fit of {name} in {origin}",
        lambda_range=(min(used), max(used)) if used else None,
    )


def _group_name(group: Mapping[str, Any]) -> str:
    studies = ", ".join(str(s) for s in group.get("studies") or ()) or "?"
    return f"{studies} ({group.get('optimizer')})"


def _list_groups(groups: Sequence[Mapping[str, Any]]) -> str:
    return "; ".join(_group_name(g) for g in groups) or "none"


def _sub(d: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = d.get(key)
    return value if isinstance(value, Mapping) else {}


def _number(x: Any) -> float:
    if isinstance(x, bool) or not isinstance(x, int | float):
        return math.nan
    return float(x)


# --- the transfer -------------------------------------------------------------------------


def _positive(value: float | None, option: str, why: str = "") -> float:
    if value is None:
        return math.nan
    x = _number(value)
    if not (math.isfinite(x) and x > 0):
        raise ConfigError(f"{option} must be a finite number > 0{why}, got {value!r}")
    return x


def transfer(
    lr: float,
    weight_decay: float,
    k: KSource,
    *,
    to_weight_decay: float | None = None,
    to_lr: float | None = None,
) -> Transfer:
    """η for ``to_weight_decay`` (or λ for ``to_lr``) from the tuned pair (``lr``,
    ``weight_decay``), along η* ∝ λ^-k; the band at the ends of k's CI."""
    if (to_weight_decay is None) == (to_lr is None):
        raise ConfigError(
            "give exactly one of --to-weight-decay (the η for another λ) and --to-lr "
            "(the λ for another η)"
        )
    lam0 = " (η* ∝ λ^-k is undefined at λ = 0)"
    eta1 = _positive(lr, "--lr")
    lam1 = _positive(weight_decay, "--weight-decay", lam0)
    warnings: list[str] = []
    if to_weight_decay is not None:
        lam2 = _positive(to_weight_decay, "--to-weight-decay", lam0)
        ratio = lam1 / lam2

        def eta_at(kk: float) -> float:
            return float(eta1 * ratio**kk)

        target, given, estimate = "lr", lam2, eta_at(k.k)
        low, high = sorted((eta_at(k.ci_low), eta_at(k.ci_high)))  # monotonic in k
        new_lambda = lam2
    else:
        eta2 = _positive(to_lr, "--to-lr")
        if k.k == 0:
            raise ConfigError(
                f"k = 0 for {k.optimizer} ({k.source}): η* does not depend on λ, so no λ "
                "gives another η; use --to-weight-decay instead"
            )
        ratio = eta1 / eta2

        def lam_at(kk: float) -> float:
            return float(lam1 * ratio ** (1.0 / kk))

        target, given, estimate = "weight_decay", eta2, lam_at(k.k)
        if k.ci_low <= 0.0 <= k.ci_high and ratio != 1.0:
            # 1/k runs through ±∞ inside the CI: every λ is within the band.
            low, high = 0.0, math.inf
            warnings.append(
                f"k's {_ci_text(k)} includes 0: any λ is compatible with the fit, the band "
                "is unbounded"
            )
        else:
            low, high = sorted((lam_at(k.ci_low), lam_at(k.ci_high)))
        new_lambda = estimate
    extrapolated = False
    if k.lambda_range is not None:
        lo, hi = k.lambda_range
        outside = [
            x
            for x in (lam1, new_lambda)
            if x < lo * (1 - _RANGE_RTOL) or x > hi * (1 + _RANGE_RTOL)
        ]
        if outside:
            extrapolated = True
            warnings.append(
                f"extrapolating: λ = {', '.join(f'{x:.3g}' for x in outside)} lies outside "
                f"the λ range [{lo:.3g}, {hi:.3g}] the fitted k was measured on"
            )
    return Transfer(
        optimizer=k.optimizer,
        lr=eta1,
        weight_decay=lam1,
        target=target,
        given=given,
        estimate=estimate,
        low=low,
        high=high,
        k=k,
        extrapolated=extrapolated,
        warnings=tuple(warnings),
    )


# --- the command: k from where the options say, then the transfer -------------------------


@dataclass(frozen=True)
class TransferConfig:
    """What ``l2bn transfer`` was asked: the tuned pair, the new λ or η, and where k comes from
    (``storage`` or ``from_json``: a fitted k, with ``study`` picking its group; neither: the
    theory's k of ``optimizer``). Options that cannot go together are a ConfigError here."""

    lr: float
    weight_decay: float
    to_weight_decay: float | None = None
    to_lr: float | None = None
    optimizer: str | None = None
    storage: str | None = None
    study: str | None = None
    from_json: Path | None = None

    def __post_init__(self) -> None:
        if self.storage is not None and self.from_json is not None:
            raise ConfigError("give one of --storage and --from-json, not both")
        if self.study is not None and self.storage is None and self.from_json is None:
            raise ConfigError(
                "--study needs --storage or --from-json (the theory's k has no study)"
            )


def choose_k(cfg: TransferConfig) -> KSource:
    """The k that ``cfg`` asks for: fitted on ``storage`` (its studies analyzed now), read from
    the ``from_json`` report, or the theory's for ``optimizer``."""
    if cfg.storage is not None:
        from l2bn.analysis.pipeline import AnalyzeConfig, analyze
        from l2bn.sweep.storage import redact

        studies = (cfg.study,) if cfg.study is not None else ()
        report = analyze(AnalyzeConfig(storage=cfg.storage, studies=studies)).to_dict()
        return fitted_k(report, cfg.optimizer, cfg.study, origin=redact(cfg.storage))
    if cfg.from_json is not None:
        report = read_report(cfg.from_json)
        return fitted_k(report, cfg.optimizer, cfg.study, origin=str(cfg.from_json))
    if cfg.optimizer is None:
        raise ConfigError(
            "--optimizer is needed for the theory's k (or give --storage/--from-json for a "
            "fitted one)"
        )
    return theory_k(cfg.optimizer)


def read_report(path: Path) -> Any:
    """An ``l2bn analyze --json`` report file, parsed (:func:`fitted_k` checks its shape)."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(
            f"--from-json {path}: no such file; write one with `l2bn analyze --json {path}`"
        ) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"--from-json {path}: cannot read it as JSON ({e})") from None


def run_transfer(cfg: TransferConfig) -> Transfer:
    """``l2bn transfer``: :func:`choose_k`, then :func:`transfer` with it."""
    k = choose_k(cfg)
    return transfer(
        cfg.lr, cfg.weight_decay, k, to_weight_decay=cfg.to_weight_decay, to_lr=cfg.to_lr
    )


def _ci_text(k: KSource) -> str:
    level = f"{k.confidence:.0%} CI" if k.confidence is not None else "CI"
    return f"{level} [{k.ci_low:.3g}, {k.ci_high:.3g}]"


__all__ = [
    "KSource",
    "Transfer",
    "TransferConfig",
    "choose_k",
    "fitted_k",
    "read_report",
    "run_transfer",
    "theory_k",
    "transfer",
]
