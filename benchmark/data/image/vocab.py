"""The canonical demographic vocabulary and the single age-binning rule.

sex: ``female`` / ``male``; race: ``Asian``, ``Black``, ``Hispanic``, ``White``, ``Other``;
unknown, declined or unparseable values become ``None`` (kept in overall metrics, left out of
that attribute's groups, and counted in the audit's data report).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

SEX = ("female", "male")
RACE = ("Asian", "Black", "Hispanic", "White", "Other")

_SEX_MAP = {"f": "female", "female": "female", "woman": "female", "w": "female",
            "m": "male", "male": "male", "man": "male"}
_RACE_UNKNOWN = ("unknown", "declined", "unable", "refused", "not specified", "not reported", "unavailable")


def canonical_sex(value) -> str | None:
    """'F', 'Female', 'female' ... -> 'female'; anything else (Unknown, blank) -> None."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return _SEX_MAP.get(str(value).strip().lower())


def canonical_race(value) -> str | None:
    """Free-text race categories (CheXpert PRIMARY_RACE, MIMIC-IV race) -> the canonical five.

    Hispanic/Latino is checked first ("WHITE - ... HISPANIC" is Hispanic), then "non-Hispanic"
    is stripped so "White, non-Hispanic" stays White."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    text = str(value).strip().lower()
    if not text or any(k in text for k in _RACE_UNKNOWN):
        return None
    cleaned = text.replace("non-hispanic", "").replace("non hispanic", "")
    if "hispanic" in cleaned or "latino" in cleaned or "latina" in cleaned:
        return "Hispanic"
    if cleaned.startswith("black") or "african" in cleaned:
        return "Black"
    if cleaned.startswith("asian"):
        return "Asian"
    if cleaned.startswith("white"):
        return "White"
    return "Other"


def age_labels(edges: list[float]) -> list[str]:
    """[0, 40, 60, 80] -> ['0-39', '40-59', '60-79', '80+'] (integer ages, left-closed bins)."""
    out = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        out.append(f"{lo:g}-{hi - 1:g}")
    out.append(f"{edges[-1]:g}+")
    return out


def age_group(ages, edges: list[float]) -> pd.Series:
    """The one binning rule used by every dataset: bins are [a, b), the last one open-ended.
    Ages below the first edge or missing become None."""
    ages = pd.to_numeric(pd.Series(ages), errors="coerce")
    bins = list(edges) + [np.inf]
    cut = pd.cut(ages, bins=bins, right=False, labels=age_labels(edges))
    return cut.astype(object).where(cut.notna(), None)
