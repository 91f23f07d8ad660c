"""OL3I (Stanford AIMI, Opportunistic L3 Ischemic heart disease; Zambrano Chaves et al., "Opportunistic
assessment of ischemic heart disease risk using abdominopelvic computed tomography and medical record
data", medRxiv 2021, doi:10.1101/2021.01.23.21250197): ``clinical_data.csv`` (one row per scan: ``anon_id``, ``label_1y``, ``set_1y``,
``label_5y``, ``set_5y`` and clinical variables) and ``l3_slices.h5`` (one 2-D L3 CT slice per
``anon_id``).

- Label: ischemic heart disease within the horizon (``loader_options.horizon``: 1y default, or 5y),
  with the official split column of that horizon (train / val / test).
- Demographics: the dataset's published description that we could check names neither the sex nor
  the age column, so the loader has **no default**: the card names them (``loader_options.sex_column``
  / ``age_column``). A named column that is absent, or no names at all, stops the load with one line
  listing the columns the file has. Sex values must read as female / male (``vocab.canonical_sex``);
  a numeric code is an error, never guessed.
- Pixels: read as CT numbers in Hounsfield units plus ``loader_options.hu_offset`` (default 0; e.g.
  -1024 for raw stored values). The unit is not documented either, so the loader checks it: every
  abdominal L3 slice has air around the body (about -1000 HU); slices whose lowest value is above
  -500 HU after the offset stop the load with their range. Shown through a soft-tissue window
  (level 40, width 400 HU) scaled to [0, 1].
- The patient id is ``loader_options.patient_column`` (default ``anon_id``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ...errors import FairbenchError
from ..cases import LoadReport
from .common import find_file, read_table, skip_rows
from .dataset import finish
from .vocab import canonical_sex

_SPLIT = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}
AIR_MAX_HU = -500.0  # air is about -1000 HU; fat, the lowest body tissue, is above -200 HU
N_CHECKED = 5  # slices whose intensity unit is checked at load time


def _h5py():
    try:
        import h5py
    except ImportError:
        raise FairbenchError("OL3I slices are HDF5: pip install 'fairbench-med[vision]' (or pip install h5py).") from None
    return h5py


def _columns(card, clin_p: Path, found: list[str]) -> tuple[str, str]:
    """The card's sex and age column names, checked against the file; a one-line error otherwise."""
    opts = card.loader_options
    names = {"sex_column": opts.get("sex_column"), "age_column": opts.get("age_column")}
    bad = {field: col for field, col in names.items() if not col or col not in found}
    if bad:
        said = ", ".join(f"loader_options.{f} = {c!r}" if c else f"loader_options.{f} unset" for f, c in bad.items())
        raise FairbenchError(
            f"{clin_p}: cannot tell the sex and age columns ({said}); the file has columns {', '.join(map(str, found))}. "
            f"Set loader_options.sex_column and loader_options.age_column in tasks/{card.name}/task.yaml to the right ones."
        )
    return str(names["sex_column"]), str(names["age_column"])


def _slice(fh, key: str, offset: float) -> np.ndarray:
    hu = np.asarray(fh[key][()], dtype=np.float32)
    if hu.ndim == 3:
        hu = hu[..., 0] if hu.shape[-1] in (1, 3) else hu[0]
    return hu + offset


def _check_hounsfield(fh, keys: list[str], offset: float, h5_p: Path) -> None:
    for key in keys[:N_CHECKED]:
        hu = _slice(fh, key, offset)
        if float(hu.min()) > AIR_MAX_HU:
            raise FairbenchError(
                f"{h5_p}: slice {key!r} spans {hu.min():.0f}..{hu.max():.0f} after hu_offset {offset:g}, with no air "
                f"(about -1000 HU), so it is not in Hounsfield units. Set loader_options.hu_offset (e.g. -1024 for raw CT numbers)."
            )


def load_ol3i(card, root: Path, report: LoadReport):
    h5py = _h5py()
    opts = card.loader_options
    horizon = str(opts.get("horizon", "1y"))
    if horizon not in ("1y", "5y"):
        raise FairbenchError(f"task {card.name}: loader_options.horizon must be 1y or 5y, got {horizon!r}.")
    pid_col = str(opts.get("patient_column", "anon_id"))
    offset = float(opts.get("hu_offset", 0))
    clin_p = find_file(root, ["clinical_data.csv"], card, "clinical_data.csv")
    h5_p = find_file(root, ["l3_slices.h5"], card, "l3_slices.h5")
    df = read_table(
        clin_p, ["anon_id", f"label_{horizon}", f"set_{horizon}", pid_col], card,
        fix="Use the official OL3I clinical_data.csv, or set loader_options.patient_column.",
    )
    sex_col, age_col = _columns(card, clin_p, list(df.columns))
    label = card.labels[0]
    y = pd.to_numeric(df[f"label_{horizon}"], errors="coerce")
    df = skip_rows(df, ~y.isin([0, 1]), report, f"label_{horizon} is not 0 or 1", df["anon_id"])
    df[label] = y[df.index].astype(float)
    df["split"] = df[f"set_{horizon}"].astype(str).str.strip().str.lower().map(_SPLIT)
    df = skip_rows(df, df["split"].isna(), report, f"set_{horizon} is not train/val/test", df["anon_id"])
    with h5py.File(h5_p, "r") as fh:
        keys = set(fh.keys())
        present = [k for k in df["anon_id"].astype(str) if k in keys]
        _check_hounsfield(fh, present, offset, h5_p)
    df = skip_rows(df, ~df["anon_id"].astype(str).isin(keys), report, "no slice in l3_slices.h5", df["anon_id"])

    raw_sex = df[sex_col]
    sex = raw_sex.map(canonical_sex)
    if raw_sex.notna().any() and sex.isna().all():
        seen = sorted(map(str, raw_sex.dropna().unique()))[:6]
        raise FairbenchError(
            f"{clin_p}: column {sex_col!r} (loader_options.sex_column) holds {', '.join(seen)}, not female/male; "
            "no code is documented, so none is guessed. Point sex_column at a female/male column or recode the file."
        )
    age = pd.to_numeric(df[age_col], errors="coerce")
    if df[age_col].notna().any() and age.isna().all():
        raise FairbenchError(f"{clin_p}: column {age_col!r} (loader_options.age_column) holds no numbers. Point age_column at the age in years.")
    df["sex"], df["age"] = sex, age
    df["race"] = None
    df["id"] = df["anon_id"].astype(str)
    df["patient_id"] = df[pid_col].astype(str)
    df["source"] = df["id"]
    reader = _SliceReader(h5_p, offset)
    keep = ["id", "patient_id", "split", "source", "sex", "age", "race", label]
    return finish(df[keep], card, reader, report, [clin_p, h5_p])


class _SliceReader:
    """Opens the HDF5 file once per process and reads slices by id: (H, W) float32 in [0, 1]."""

    def __init__(self, path: Path, offset: float = 0.0):
        self.path, self.offset = path, offset
        self._fh = None

    def __call__(self, row) -> np.ndarray:
        if self._fh is None:
            self._fh = _h5py().File(self.path, "r")
        hu = _slice(self._fh, str(row["source"]), self.offset)
        return np.clip((hu - (40 - 200)) / 400.0, 0.0, 1.0)  # soft-tissue window: level 40, width 400 HU

    def __getstate__(self):
        return {"path": self.path, "offset": self.offset, "_fh": None}
