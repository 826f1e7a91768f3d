"""A registered reading rule, evaluated: each condition met, missed or undetermined, with the
numbers behind it.

The rule comes from the studies (their ``registration`` user attr, written by ``l2bn sweep``
from the sweep file's ``[registration]`` table, :mod:`l2bn.registration`) or from
``--registration FILE`` (a sweep file, for ``--from-csv`` exports, which carry no study attrs).
:func:`evaluate` reads the groups of one report: a condition names optimizers, and finds each
one's group; one optimizer in several groups (other training settings) cannot be read by a
condition that names it alone, and is undetermined, said so.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from l2bn.analysis.fitted import (
    FITS,
    IN_EQUILIBRIUM,
    MET,
    MISSED,
    OUT_OF_EQUILIBRIUM,
    RULE_UNDETERMINED,
    UNTESTED,
    Estimate,
    Outcome,
    RuleOutcome,
)
from l2bn.analysis.results import GroupReport
from l2bn.registration import (
    CI_DISJOINT,
    K_IN_RANGE,
    OPTIMA_IN_EQUILIBRIUM,
    ROWS_COLLAPSE,
    Condition,
    Registration,
)

UNDETERMINED = RULE_UNDETERMINED


def _k(e: Estimate) -> str:
    if not math.isfinite(e.value):
        return "k undetermined"
    if not e.determined:
        return f"k = {e.value:.2f} (no CI)"
    return f"k = {e.value:.2f} [{e.ci_low:.2f}, {e.ci_high:.2f}]"


def _group(groups: Sequence[GroupReport], name: str) -> tuple[GroupReport | None, str]:
    found = [g for g in groups if g.optimizer == name]
    if not found:
        return None, f"no {name} group in this analysis"
    if len(found) > 1:
        return None, f"{len(found)} {name} groups (other training settings): which one is ambiguous"
    return found[0], ""


def _judge(c: Condition, groups: Sequence[GroupReport], metric: str) -> Outcome:
    picked = [_group(groups, n) for n in c.optimizers]
    missing = [why for g, why in picked if g is None]
    if missing:
        return Outcome(c, UNDETERMINED, "; ".join(missing))
    gs = [g for g, _ in picked if g is not None]
    off = [g.optimizer for g in gs if g.metric != metric]
    if off:
        return Outcome(c, UNDETERMINED, f"{', '.join(off)} read by another metric than {metric}")
    g = gs[0]
    if c.kind == K_IN_RANGE:
        k = g.scaling.k
        if not math.isfinite(k.value):
            return Outcome(c, UNDETERMINED, _k(k))
        return Outcome(c, MET if c.low <= k.value <= c.high else MISSED, _k(k))
    if c.kind == CI_DISJOINT:
        a, b = (x.scaling.k for x in gs)
        numbers = f"{gs[0].optimizer} {_k(a)}, {gs[1].optimizer} {_k(b)}"
        if not (a.determined and b.determined):
            return Outcome(c, UNDETERMINED, numbers)
        gap = max(a.ci_low, b.ci_low) - min(a.ci_high, b.ci_high)
        word = "apart by" if gap > 0 else "overlapping by"
        return Outcome(c, MET if gap > 0 else MISSED, f"{numbers}: {word} {abs(gap):.2f}")
    if c.kind == ROWS_COLLAPSE:
        if g.collapse is None:
            return Outcome(c, UNDETERMINED, "no primary fit")
        rows = g.collapse.rows
        fits = sum(r.verdict == FITS for r in rows)
        untested = sum(r.verdict == UNTESTED for r in rows)
        numbers = f"{fits} of {len(rows)} rows follow one curve ({g.collapse.status})"
        if fits >= c.at_least:
            return Outcome(c, MET, numbers)
        if fits + untested >= c.at_least:
            return Outcome(c, UNDETERMINED, f"{numbers}; {untested} untested")
        return Outcome(c, MISSED, numbers)
    # optima in equilibrium
    judged = [o for o in g.optima if o.weight_decay > 0]
    out = [o for o in judged if o.equilibrium.verdict == OUT_OF_EQUILIBRIUM]
    n_in = sum(o.equilibrium.verdict == IN_EQUILIBRIUM for o in judged)
    numbers = f"{n_in} of {len(judged)} optimum cells in equilibrium"
    if out:
        names = "; ".join(f"λ={o.weight_decay:.3g} ({o.equilibrium.describe()})" for o in out)
        return Outcome(c, MISSED, f"{numbers}; out: {names}")
    return Outcome(c, MET if n_in == len(judged) and judged else UNDETERMINED, numbers)


def evaluate(registration: Registration, groups: Sequence[GroupReport], source: str) -> RuleOutcome:
    """Every condition of ``registration`` on the report's ``groups``."""
    return RuleOutcome(
        registration,
        source,
        tuple(_judge(c, groups, registration.metric) for c in registration.conditions),
    )


__all__ = ["OPTIMA_IN_EQUILIBRIUM", "evaluate"]
