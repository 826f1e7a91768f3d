"""Grouping: which studies ``l2bn analyze`` pools, and what a reader must know about it.

:func:`group_studies` pools studies whose training identities (every TrainConfig field but η,
λ, seed, data_dir and device; :mod:`l2bn.analysis.reading.studies`) are equal; studies of one
optimizer that differ in anything else (affine, head, width, epochs, batch size, LR drops …)
form separate groups, and :func:`grouping_warnings` says so. Each :class:`GroupData` is then
analyzed on its own (:func:`l2bn.analysis.pipeline.analyze_group`).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from l2bn.analysis.reading.records import StudyData, TrialRecord
from l2bn.analysis.results import LABEL_FIELDS, show_fields


@dataclass(frozen=True)
class GroupData:
    """Studies analyzed together: one training identity, pooled trials."""

    optimizer: str
    norm: str | None
    dataset: str | None
    studies: tuple[str, ...]
    trials: tuple[TrialRecord, ...]
    identity: Mapping[str, Any] = field(default_factory=dict)
    distinct: Mapping[str, Any] = field(default_factory=dict)  # see results.GroupReport.distinct
    # Each study's stored objective (StudyData.objective; None: not stored), study order.
    objectives: tuple[str | None, ...] = ()
    sources: tuple[str, ...] = ()  # where its studies were read (StudyData.source), in order


# --- grouping -----------------------------------------------------------------------------


def _identity(s: StudyData) -> Mapping[str, Any]:
    # A StudyData made by hand may lack one: then it is what it was before identities.
    return s.identity or {"optimizer": s.optimizer, "norm": s.norm, "dataset": s.dataset}


def group_studies(studies: Iterable[StudyData]) -> tuple[GroupData, ...]:
    """Pool studies with equal training identities, in first-seen order."""
    pools: dict[frozenset[tuple[str, Any]], list[StudyData]] = defaultdict(list)
    for s in studies:
        pools[frozenset(_identity(s).items())].append(s)
    identities = [_identity(members[0]) for members in pools.values()]
    distinct = _distinct(identities, exclude=LABEL_FIELDS)
    return tuple(
        GroupData(
            optimizer=members[0].optimizer,
            norm=members[0].norm,
            dataset=members[0].dataset,
            studies=tuple(s.name for s in members),
            trials=tuple(t for s in members for t in s.trials),
            identity=identity,
            distinct=d,
            objectives=tuple(s.objective for s in members),
            sources=tuple(dict.fromkeys(s.source for s in members if s.source)),
        )
        for members, identity, d in zip(pools.values(), identities, distinct, strict=True)
    )


def _distinct(
    identities: Sequence[Mapping[str, Any]], exclude: Sequence[str]
) -> list[dict[str, Any]]:
    """Per identity: its fields (not in ``exclude``) that differ among identities of the same
    label (the ``exclude`` fields' values: e.g. one optimizer, norm and data set; groups whose
    labels differ are told apart by them)."""
    by_label: dict[Any, list[Mapping[str, Any]]] = defaultdict(list)
    for ident in identities:
        by_label[tuple(ident.get(k) for k in exclude)].append(ident)
    out = []
    for ident in identities:
        peers = by_label[tuple(ident.get(k) for k in exclude)]
        keys = dict.fromkeys(k for p in peers for k in p)  # first-seen field order
        varying = [k for k in keys if k not in exclude and len({p.get(k) for p in peers}) > 1]
        # A field one peer does not know (None: an export records few) does not tell the
        # groups apart; the known values that differ do, unless there are none.
        known = [k for k in varying if len({p.get(k) for p in peers} - {None}) > 1]
        varying = known or varying
        out.append({k: ident.get(k) for k in varying})
    return out


def grouping_warnings(groups: Sequence[GroupData], studies: Sequence[StudyData]) -> list[str]:
    """What the grouping did that a reader must know: one optimizer's studies analyzed apart,
    and studies pooled on their attrs alone (no ``config`` attr to compare)."""
    notes: list[str] = []
    by_optimizer: dict[str, list[GroupData]] = defaultdict(list)
    for g in groups:
        by_optimizer[g.optimizer].append(g)
    for opt, gs in by_optimizer.items():
        if len(gs) < 2:
            continue
        differ = _distinct([g.identity for g in gs], exclude=("optimizer",))
        parts = "; ".join(
            f"{', '.join(g.studies)} ({show_fields(d)})" for g, d in zip(gs, differ, strict=True)
        )
        notes.append(
            f"{len(gs)} groups of {opt!r} studies with different training settings, analyzed "
            f"apart, not pooled: {parts}"
        )
    guessed = {s.name for s in studies if not s.has_config}
    for g in groups:
        blind = [n for n in g.studies if n in guessed]
        if len(g.studies) > 1 and blind:
            notes.append(
                f"pooled {', '.join(g.studies)} on their optimizer, norm, dataset, epochs and "
                f"width attrs alone: {', '.join(blind)} without a 'config' user attr (not "
                "written by `l2bn sweep`), so their other training settings are unknown"
            )
    return notes


__all__ = ["GroupData", "group_studies", "grouping_warnings"]
