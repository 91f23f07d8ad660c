"""Seeded patient-level splits for datasets without an official split."""

from __future__ import annotations

import numpy as np
import pandas as pd


def patient_split(patient_ids: pd.Series, fractions: dict[str, float], seed: int) -> pd.Series:
    """Assign every patient (never an image) to train / val / test with a fixed seed.

    Patients are sorted before shuffling, so the split depends only on the set of ids and the
    seed, not on file order."""
    ids = pd.Series(patient_ids).astype(str)
    unique = np.array(sorted(ids.unique()))
    order = np.random.default_rng(seed).permutation(len(unique))
    n = len(unique)
    n_train = int(round(fractions["train"] * n))
    n_val = int(round(fractions["val"] * n))
    assign = np.empty(n, dtype=object)
    assign[order[:n_train]] = "train"
    assign[order[n_train : n_train + n_val]] = "val"
    assign[order[n_train + n_val :]] = "test"
    mapping = dict(zip(unique, assign))
    return ids.map(mapping)
