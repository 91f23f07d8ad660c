"""The unit a loader produces: one clinical case, with placeholders still in its text."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Case:
    case_id: str  # stable across runs; counterfactual variants keep it
    fields: dict[str, str]  # e.g. context (the vignette), question, reference answers
    source: str = ""  # file (and row) it came from
    subset: str = ""  # e.g. the Q-Pain file (acute_cancer ...)
    # Pre-expanded data only: this row's raw demographic values (file column -> value), mapped to
    # canonical values by the card's counterfactual.pre_expanded. Rows of one case share case_id.
    attributes: dict[str, str] = field(default_factory=dict)


@dataclass
class LoadReport:
    """Quirks of the data that were handled, and rows that were skipped, with reasons."""

    quirks: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def first_cases(cases: list[Case], n: int) -> list[Case]:
    """The rows of the first ``n`` distinct case ids (pre-expanded data has several rows per case)."""
    keep: set[str] = set()
    out = []
    for c in cases:
        if c.case_id not in keep and len(keep) >= n:
            continue
        keep.add(c.case_id)
        out.append(c)
    return out


def sample_cases(cases: list[Case], n: int, seed: int) -> list[Case]:
    """The rows of ``n`` distinct case ids drawn at random without replacement, seeded by ``seed``
    (numpy ``default_rng(seed).choice`` over the case ids in file order), kept in file order. The same
    data, ``n`` and seed give the same subset for every model; ``n`` >= the number of cases keeps all."""
    import numpy as np

    ids = list(dict.fromkeys(c.case_id for c in cases))
    if n >= len(ids):
        return list(cases)
    keep = {ids[i] for i in np.random.default_rng(seed).choice(len(ids), size=n, replace=False)}
    return [c for c in cases if c.case_id in keep]
