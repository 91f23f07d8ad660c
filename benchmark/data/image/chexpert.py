"""CheXpert (Stanford AIMI): ``train.csv`` / ``valid.csv`` with ``Path, Sex, Age, Frontal/Lateral,
AP/PA`` and 14 findings coded 1 (positive), 0 (negative), -1 (uncertain), blank (not mentioned).

- Race comes from the separate demographics file (``CHEXPERT DEMO.xlsx`` or a CSV export with
  ``PATIENT, PRIMARY_RACE``), joined on the patient id in ``Path``; without it race is unavailable.
- Uncertain-label policy (``loader_options.uncertain``): ``zeros`` (U-Zeros, default), ``ones``
  (U-Ones) or ``ignore`` (masked out of loss and metrics). Blank is negative.
- Splits: the official ``valid.csv`` (radiologist-labelled) is the test set; ``train.csv`` is split
  into train / val by patient with the card's ``split_seed``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ...errors import FairbenchError
from ..cases import LoadReport
from .common import drop_missing_files, find_file, image_reader, read_table, skip_rows
from .dataset import finish
from .splits import patient_split
from .vocab import canonical_race, canonical_sex

FINDINGS = [
    "No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion", "Edema",
    "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion", "Pleural Other",
    "Fracture", "Support Devices",
]
_POLICY = {"zeros": 0.0, "ones": 1.0, "ignore": np.nan}


def uncertain_policy(card, dataset: str) -> str:
    """The card's policy for uncertain (-1) CheXpert-labeler findings, checked with its labels."""
    policy = str(card.loader_options.get("uncertain", "zeros"))
    if policy not in _POLICY:
        raise FairbenchError(f"task {card.name}: loader_options.uncertain {policy!r} must be zeros, ones or ignore.")
    bad = [l for l in card.labels if l not in FINDINGS]
    if bad:
        raise FairbenchError(f"task {card.name}: labels {bad} are not {dataset} findings ({', '.join(FINDINGS)}).")
    return policy


def map_findings(df: pd.DataFrame, card, policy: str, report: LoadReport, ids: str) -> pd.DataFrame:
    """Labeler codes 1 / 0 / -1 / blank -> floats; blank is negative, -1 follows the policy; other
    values skip the row (counted)."""
    for label in card.labels:
        raw = pd.to_numeric(df[label], errors="coerce")
        ok = df[label].isna() | raw.isin([1, 0, -1])
        df = skip_rows(df, ~ok, report, f"{label!r} is not 1, 0, -1 or blank", df[ids])
        df[label] = raw[ok].fillna(0.0).replace(-1.0, _POLICY[policy]).astype(float)
    return df


def _image_base(root: Path, first_path: str) -> Path:
    """``Path`` starts with the release folder (``CheXpert-v1.0-small/train/...``); the CSVs usually
    sit inside that folder, so the images resolve against its parent."""
    for base in (root, root.parent):
        if (base / first_path).is_file():
            return base
    return root.parent if Path(first_path).parts[0] == root.name else root


def load_chexpert(card, root: Path, report: LoadReport):
    policy = uncertain_policy(card, "CheXpert")
    cols = ["Path", "Sex", "Age", "Frontal/Lateral", *card.labels]
    train_path = find_file(root, ["train.csv"], card, "train.csv")
    valid_path = find_file(root, ["valid.csv"], card, "valid.csv")
    parts = []
    for path, split in ((train_path, "train"), (valid_path, "test")):
        df = read_table(path, cols, card, fix="Use the official CheXpert train.csv / valid.csv.")
        df["_official"] = split
        parts.append(df)
    df = pd.concat(parts, ignore_index=True)
    files = [train_path, valid_path]

    if card.loader_options.get("views", "frontal") == "frontal":
        df = df[df["Frontal/Lateral"].astype(str).str.lower() == "frontal"]
    df["patient_id"] = df["Path"].astype(str).str.extract(r"(patient\d+)", expand=False)
    df = skip_rows(df, df["patient_id"].isna(), report, "Path has no patientNNNNN component", df["Path"])

    df = map_findings(df, card, policy, report, "Path")
    if policy != "zeros":
        report.quirks.append(f"uncertain labels (-1) mapped by policy '{policy}'")

    base = _image_base(root, str(df["Path"].iloc[0])) if len(df) else root
    df["source"] = df["Path"].astype(str).map(lambda p: str(base / p))
    df = drop_missing_files(df, df["source"], report)

    demo_name = card.loader_options.get("demographics", "CHEXPERT DEMO.xlsx")
    names = [demo_name, "CHEXPERT DEMO.csv", "chexpert_demo.csv"]
    demo_path = find_file(root, names, card, "demographics", required=False) or find_file(root.parent, names, card, "demographics", required=False)
    if demo_path is not None:
        demo = read_table(demo_path, ["PATIENT", "PRIMARY_RACE"], card, fix="Use the CheXpert demographics file (CHEXPERT DEMO).")
        race = demo.drop_duplicates("PATIENT").set_index("PATIENT")["PRIMARY_RACE"].map(canonical_race)
        df["race"] = df["patient_id"].map(race)
        files.append(demo_path)
    else:
        df["race"] = None
        report.quirks.append("no CheXpert demographics file: race groups unavailable (sex and age come from the CSVs)")

    df["sex"] = df["Sex"].map(canonical_sex)
    df["age"] = pd.to_numeric(df["Age"], errors="coerce")
    df["id"] = df["Path"].astype(str)
    trainval = df["_official"] == "train"
    val_share = card.split_fractions["val"] / (card.split_fractions["train"] + card.split_fractions["val"])
    df["split"] = "test"
    df.loc[trainval, "split"] = patient_split(
        df.loc[trainval, "patient_id"], {"train": 1 - val_share, "val": val_share, "test": 0.0}, card.split_seed
    ).to_numpy()
    # A patient in both official files would leak; the official files are disjoint, so say so if not.
    overlap = set(df.loc[trainval, "patient_id"]) & set(df.loc[~trainval, "patient_id"])
    if overlap:
        df = skip_rows(df, trainval & df["patient_id"].isin(overlap), report, "patient also in valid.csv (leak)", df["Path"])
    keep = ["id", "patient_id", "split", "source", "sex", "age", "race", *card.labels]
    return finish(df[keep], card, image_reader(colour=False), report, files)
