"""A label budget: a seeded, stratified subsample of the labelled training split (``--label-fraction``).

Strata are (primary-endpoint label x primary attribute group): the card's ``primary()`` label (its
class for multiclass tasks; ``nan`` for a masked label) crossed with ``audit.primary_attribute``
(an intersection ``a*b`` joins both values; a missing value is the group ``unknown``). Stratum ``s``
of ``n_s`` rows keeps ``k_s = floor(f * n_s + 1/2)`` rows (round half up), so every stratum keeps its
share of the split and the label x group composition the model learns from is the full split's.

Nested by construction: stratum ``s``'s rows, sorted by id, are permuted once by a generator seeded
by ``(seed, SHA-256 of s)`` and the first ``k_s`` are kept. ``k_s`` grows with ``f``, so within a
seed the fraction-0.1 subsample is contained in the 0.25 one, and so on up to the whole split. A
curve over fractions then measures adding labels to the same images rather than redrawing them, and
paired comparisons between fractions of one seed share their smaller sample. Another seed draws
another permutation. Validation and test splits are never touched.
"""

from __future__ import annotations

import hashlib
import math

import numpy as np

from ...errors import FairbenchError
from ...spec import check_fraction
from .dataset import ImagingDataset


def strata(ds: ImagingDataset, card) -> np.ndarray:
    """``label=1|sex=female`` per row of ``ds``: the primary endpoint's label x the primary attribute's group."""
    t = ds.targets()
    if ds.label_type == "multiclass":
        labels = [str(card.labels[int(c)]) for c in t]
    else:
        col = t[:, list(card.labels).index(card.primary())]
        labels = ["nan" if v != v else str(int(v)) for v in col]
    attr = card.audit.primary_attribute
    parts = attr.split("*")
    groups = []
    for _, r in ds.frame[parts].iterrows():
        vals = [r[a] for a in parts]
        groups.append("unknown" if any(v is None or v != v for v in vals) else "&".join(str(v) for v in vals))
    return np.array([f"label={y}|{attr}={g}" for y, g in zip(labels, groups)], dtype=object)


def subsample(train: ImagingDataset, card, fraction: float, seed: int) -> tuple[ImagingDataset, dict]:
    """The stratified, seeded, nested subsample of ``train`` at ``fraction`` and its report
    (``fraction``, ``n_train_full``, ``n_train``, and per stratum ``n_full`` / ``n``).

    Raises FairbenchError when a stratum would be left empty (too small a fraction for it)."""
    f = check_fraction(fraction)
    names = strata(train, card)
    ids = train.frame["id"].astype(str).to_numpy()
    keep: list[int] = []
    report: dict[str, dict] = {}
    for s in sorted(set(names)):
        rows = np.flatnonzero(names == s)
        rows = rows[np.argsort(ids[rows], kind="stable")]  # by id: independent of the file's row order
        k = math.floor(f * len(rows) + 0.5)
        if k == 0:
            raise FairbenchError(
                f"task {card.name}: --label-fraction {f:g} leaves training stratum {s} empty ({len(rows)} image(s) in the "
                f"train split); use a fraction of at least {0.5 / len(rows):.3g} or a larger --limit."
            )
        h = int.from_bytes(hashlib.sha256(s.encode()).digest()[:8], "little")
        order = np.random.default_rng([int(seed), h]).permutation(len(rows))
        keep.extend(rows[order[:k]].tolist())
        report[s] = {"n_full": int(len(rows)), "n": int(k)}
    keep.sort()  # the split's own order: the training loop's shuffle, not this draw, orders batches
    frame = train.frame.iloc[keep].reset_index(drop=True)
    sub = ImagingDataset(frame, train.label_type, train.labels, train.reader, train.report, train.files)
    return sub, {"fraction": f, "seed": int(seed), "nested": True, "n_train_full": int(len(train)), "n_train": int(len(sub)),
                 "strata": report}
