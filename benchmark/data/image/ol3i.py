"""OL3I (Stanford AIMI, Opportunistic L3 Ischemic heart disease): ``clinical_data.csv`` (one row per
scan: ``anon_id``, ``label_1y``, ``set_1y``, ``label_5y``, ``set_5y`` and clinical variables) and
``l3_slices.h5`` (one 2-D L3 CT slice per ``anon_id``, in Hounsfield units).

- Label: ischemic heart disease within the horizon (``loader_options.horizon``: 1y default, or 5y),
  with the official split column of that horizon (train / val / test).
- Demographics: the sex and age columns are named by ``loader_options.sex_column`` (default
  ``sex``) and ``age_column`` (default ``age_at_scan``); the loader names them when absent.
- Slices are shown through a soft-tissue window (level 40, width 400 HU) scaled to [0, 1].
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


def _h5py():
    try:
        import h5py
    except ImportError:
        raise FairbenchError("OL3I slices are HDF5: pip install 'fairbench-med[vision]' (or pip install h5py).") from None
    return h5py


def load_ol3i(card, root: Path, report: LoadReport):
    h5py = _h5py()
    opts = card.loader_options
    horizon = str(opts.get("horizon", "1y"))
    if horizon not in ("1y", "5y"):
        raise FairbenchError(f"task {card.name}: loader_options.horizon must be 1y or 5y, got {horizon!r}.")
    sex_col, age_col = str(opts.get("sex_column", "sex")), str(opts.get("age_column", "age_at_scan"))
    pid_col = str(opts.get("patient_column", "anon_id"))
    clin_p = find_file(root, ["clinical_data.csv"], card, "clinical_data.csv")
    h5_p = find_file(root, ["l3_slices.h5"], card, "l3_slices.h5")
    df = read_table(
        clin_p, ["anon_id", f"label_{horizon}", f"set_{horizon}", sex_col, age_col, pid_col], card,
        fix="Use the official OL3I clinical_data.csv, or set loader_options.sex_column / age_column / patient_column.",
    )
    label = card.labels[0]
    y = pd.to_numeric(df[f"label_{horizon}"], errors="coerce")
    df = skip_rows(df, ~y.isin([0, 1]), report, f"label_{horizon} is not 0 or 1", df["anon_id"])
    df[label] = y[df.index].astype(float)
    df["split"] = df[f"set_{horizon}"].astype(str).str.strip().str.lower().map(_SPLIT)
    df = skip_rows(df, df["split"].isna(), report, f"set_{horizon} is not train/val/test", df["anon_id"])
    with h5py.File(h5_p, "r") as fh:
        keys = set(fh.keys())
    df = skip_rows(df, ~df["anon_id"].astype(str).isin(keys), report, "no slice in l3_slices.h5", df["anon_id"])
    df["sex"] = df[sex_col].map(canonical_sex)
    df["age"] = pd.to_numeric(df[age_col], errors="coerce")
    df["race"] = None
    df["id"] = df["anon_id"].astype(str)
    df["patient_id"] = df[pid_col].astype(str)
    df["source"] = df["id"]
    reader = _SliceReader(h5_p)
    keep = ["id", "patient_id", "split", "source", "sex", "age", "race", label]
    return finish(df[keep], card, reader, report, [clin_p, h5_p])


class _SliceReader:
    """Opens the HDF5 file once per process and reads slices by id."""

    def __init__(self, path: Path):
        self.path = path
        self._fh = None

    def __call__(self, row) -> np.ndarray:
        if self._fh is None:
            self._fh = _h5py().File(self.path, "r")
        hu = np.asarray(self._fh[str(row["source"])][()], dtype=np.float32)
        if hu.ndim == 3:
            hu = hu[..., 0] if hu.shape[-1] in (1, 3) else hu[0]
        return np.clip((hu - (40 - 200)) / 400.0, 0.0, 1.0)

    def __getstate__(self):
        return {"path": self.path, "_fh": None}
