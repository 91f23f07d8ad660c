"""Balanced intersectional sampling (FairMed-VLM, paper 001 Sec. 4): strata sex x age group; minority
strata are oversampled with light augmentation (colour jitter, rotation <= 10 degrees).

The target size of every stratum is ``min(largest stratum, max_ratio x median stratum)``
(``max_ratio`` = 1.5, the paper's cap "up to at most 1.5x the median stratum size"); strata below
it are topped up with augmented duplicates, but a stratum grows to at most ``max_duplication`` x
its own size (default 1.3, the paper's "mild oversampling (<= 1.3x)" of minority cells, Sec. 3.5),
so a tiny stratum is not repeated many times over. Larger strata are kept whole (nothing is
dropped). Rows with an unknown sex or age group form their own stratum ``unknown`` and are kept.

How batches are balanced: the rebalanced index set is shuffled uniformly each epoch (the training
loop's seeded ``DataLoader(shuffle=True)``), so a mini-batch holds stratum ``s`` in expected share
``n_after(s) / N`` (reported as ``batch_share``). This approximates the paper's "uniform subgroup
representation per mini-batch" only in expectation and only as far as the caps allow: where the
duplication cap binds or a stratum is larger than the target, shares stay unequal (not forced).
"""

from __future__ import annotations

import hashlib
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset


def strata_of(frame, attributes=("sex", "age_group")) -> np.ndarray:
    """``sex=female|age_group=60-79`` per row (the canonical intersectional group name)."""
    out = []
    for _, r in frame[list(attributes)].iterrows():
        vals = [r[a] for a in attributes]
        known = all(v is not None and v == v for v in vals)
        out.append("|".join(f"{a}={v}" for a, v in zip(attributes, vals)) if known else "unknown")
    return np.array(out, dtype=object)


def balanced_indices(strata: np.ndarray, seed: int, max_ratio: float = 1.5,
                     max_duplication: float = 1.3) -> tuple[np.ndarray, np.ndarray, dict]:
    """Row indices of the rebalanced training set (originals first, then duplicates), a flag per
    index saying whether it is an oversampled duplicate (to augment), and a report: the target,
    per-stratum sizes before / after, whether the duplication cap bound, and each stratum's
    expected share of a mini-batch. ``strata``: (N,) names from :func:`strata_of`."""
    rng = np.random.default_rng(seed)
    names = sorted(set(strata) - {"unknown"})
    sizes = {s: int((strata == s).sum()) for s in names}
    if not sizes:
        idx = np.arange(len(strata))
        return idx, np.zeros(len(idx), bool), {}
    target = min(max(sizes.values()), math.floor(max_ratio * float(np.median(list(sizes.values())))))
    extra = []
    report = {}
    for s in names:
        rows = np.flatnonzero(strata == s)
        cap = math.floor(max_duplication * len(rows))
        need = max(min(target, cap) - len(rows), 0)
        if need:
            extra.append(rng.choice(rows, size=need, replace=need > len(rows)))
        report[s] = {"n": len(rows), "n_after": len(rows) + need, "capped": cap < target}
    dup = np.concatenate(extra) if extra else np.array([], dtype=int)
    idx = np.concatenate([np.arange(len(strata)), dup]).astype(int)
    flags = np.concatenate([np.zeros(len(strata), bool), np.ones(len(dup), bool)])
    n_unknown = int((strata == "unknown").sum())
    for s in names:
        report[s]["batch_share"] = round(report[s]["n_after"] / len(idx), 6)
    return idx, flags, {"target": int(target), "max_ratio": max_ratio, "max_duplication": max_duplication,
                        "strata": report, "n_unknown": n_unknown, "batching": "uniform shuffle of the rebalanced set"}


def augment(x: torch.Tensor, gen: torch.Generator, max_degrees: float = 10.0, jitter: float = 0.1) -> torch.Tensor:
    """Light augmentation of one normalised (C, H, W) image: brightness and contrast jitter of up to
    +-``jitter`` and a rotation of up to +-``max_degrees`` (border pixels replicated)."""
    u = torch.rand(3, generator=gen) * 2 - 1
    brightness, contrast, angle = 1 + jitter * u[0], 1 + jitter * u[1], math.radians(max_degrees) * u[2]
    mean = x.mean()
    x = (x - mean) * contrast + mean * brightness
    c, s = torch.cos(angle), torch.sin(angle)
    theta = torch.stack([torch.stack([c, -s, torch.zeros(())]), torch.stack([s, c, torch.zeros(())])])[None]
    grid = F.affine_grid(theta, [1, *x.shape], align_corners=False)
    return F.grid_sample(x[None], grid, padding_mode="border", align_corners=False)[0]


class BalancedView(Dataset):
    """A training view over ``base`` (items ``(x, target, i)``) in the rebalanced order; duplicates
    are augmented with a generator seeded by (seed, position), so an epoch is reproducible whatever
    the DataLoader order. Yields ``(x, target, position)``: index per-row arrays with ``order``."""

    def __init__(self, base: Dataset, order: np.ndarray, augmented: np.ndarray, seed: int):
        self.base, self.order, self.augmented, self.seed = base, order, augmented, seed

    def __len__(self) -> int:
        return len(self.order)

    def __getitem__(self, j: int):
        x, t, _ = self.base[int(self.order[j])]
        if self.augmented[j]:
            h = int.from_bytes(hashlib.sha256(f"{self.seed}|{j}".encode()).digest()[:8], "little")
            x = augment(x, torch.Generator().manual_seed(h))
        return x, t, j
