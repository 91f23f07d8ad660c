"""The canonical imaging table that every loader returns, and how an input is read from it.

One row per image (or ECG record / CT slice): ``id``, ``patient_id``, ``split`` (train / val /
test), ``source`` (where the pixels are), ``sex``, ``age``, ``age_group``, ``race`` and the
labels: one column per label (1 / 0 / NaN = masked) for binary and multilabel tasks, or a
``class`` column (the class index) for multiclass tasks.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ...errors import FairbenchError
from ...registry import get
from ..cases import LoadReport
from .common import resolve_root
from .vocab import age_group

SPLITS = ("train", "val", "test")
REQUIRED = ("id", "patient_id", "split", "source", "sex", "age", "age_group", "race")


@dataclass
class ImagingDataset:
    frame: pd.DataFrame
    label_type: str
    labels: list[str]
    # Reads one row's input as float32: an image in [0, 1], (H, W) grey or (H, W, 3) colour; or, for
    # cards with input_modality: signal, a (channels, T) waveform in its physical unit.
    reader: Callable[[pd.Series], np.ndarray]
    report: LoadReport = field(default_factory=LoadReport)
    files: list[Path] = field(default_factory=list)

    def split(self, name: str) -> "ImagingDataset":
        sub = self.frame[self.frame["split"] == name].reset_index(drop=True)
        return ImagingDataset(sub, self.label_type, self.labels, self.reader, self.report, self.files)

    def __len__(self) -> int:
        return len(self.frame)

    def read(self, i: int) -> np.ndarray:
        return self.reader(self.frame.iloc[i])

    def targets(self) -> np.ndarray:
        """(n, L) float with NaN for masked labels, or (n,) int class indices for multiclass."""
        if self.label_type == "multiclass":
            return self.frame["class"].to_numpy(dtype=int)
        return self.frame[self.labels].to_numpy(dtype=float)


def finish(frame: pd.DataFrame, card, reader, report: LoadReport, files: list[Path]) -> ImagingDataset:
    """Shared last step of every loader: age bins from the card, column checks, split sanity."""
    frame = frame.copy()
    for col in ("race", "sex", "age"):
        if col not in frame:
            frame[col] = None
    frame["age"] = pd.to_numeric(frame["age"], errors="coerce")
    frame["age_group"] = age_group(frame["age"], card.age_bins).to_numpy()
    frame["id"] = frame["id"].astype(str)
    frame["patient_id"] = frame["patient_id"].astype(str)
    missing = [c for c in REQUIRED if c not in frame]
    if missing:  # a loader bug, not a user error
        raise RuntimeError(f"loader for {card.name} produced no column(s) {missing}")
    if frame["id"].duplicated().any():
        dup = frame.loc[frame["id"].duplicated(), "id"].iloc[0]
        raise FairbenchError(f"task {card.name}: image id {dup!r} appears twice in the data; ids must be unique.")
    for name in SPLITS:
        if not (frame["split"] == name).any():
            raise FairbenchError(
                f"task {card.name}: the data has no {name} images after loading "
                f"({len(report.skipped)} rows skipped). Check the files under --data-dir."
            )
    leaked = frame.groupby("patient_id")["split"].nunique()
    if (leaked > 1).any():
        raise FairbenchError(
            f"task {card.name}: patient {leaked[leaked > 1].index[0]!r} appears in more than one split; "
            "splits must be at patient level."
        )
    n_unknown = {c: int(frame[c].isna().sum()) for c in ("sex", "age_group", "race")}
    for c, n in n_unknown.items():
        if n and not (c == "race" and n == len(frame)):
            report.quirks.append(f"{n} images without a usable {c} (kept overall, left out of {c} groups)")
    return ImagingDataset(frame.reset_index(drop=True), card.label_type, list(card.labels), reader, report, files)


def load_dataset(card, data_dir: Path | None) -> ImagingDataset:
    """The card's loader on the official files under ``data_dir`` (synth-xray needs none)."""
    report = LoadReport()
    loader = get("loaders", card.loader)
    root = None if card.loader == "synth_xray" else resolve_root(card, data_dir)
    return loader(card, root, report)


def limit_dataset(ds: ImagingDataset, limit: int | None) -> ImagingDataset:
    """The first N images of each split, in file order (deterministic, no sampling)."""
    if limit is None:
        return ds
    frame = ds.frame.groupby("split", sort=False, group_keys=False).head(limit).reset_index(drop=True)
    return ImagingDataset(frame, ds.label_type, ds.labels, ds.reader, ds.report, ds.files)
