"""EyePACS (Kaggle Diabetic Retinopathy Detection): ``trainLabels.csv`` (``image, level`` 0-4) and
``train/<image>.jpeg``.

The public labels carry **no demographics**. The loader requires a demographics table joined by
image id (``loader_options.demographics``, default ``eyepacs_demographics.csv``, columns
``image, sex, age`` and optionally ``race``), e.g. from an EyePACS data-use agreement, and stops
with a clear message when it is missing. The patient is the numeric prefix of the image id
(``10_left`` -> ``10``); there is no official labelled test split, so patients are split with
the card's split_seed.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ...errors import FairbenchError
from ..cases import LoadReport
from .common import drop_missing_files, find_file, image_reader, read_table, skip_rows
from .dataset import finish
from .splits import patient_split
from .vocab import canonical_race, canonical_sex


def load_eyepacs(card, root: Path, report: LoadReport):
    labels_p = find_file(root, ["trainLabels.csv", "trainLabels.csv.gz"], card, "trainLabels.csv")
    demo_name = str(card.loader_options.get("demographics", "eyepacs_demographics.csv"))
    demo_p = root / demo_name
    if not demo_p.is_file():
        raise FairbenchError(
            f"task {card.name}: EyePACS public labels have no demographics; fairbench needs a table {demo_p} "
            "with columns image, sex, age (race optional) joined by image id. Obtain it with the data "
            "(EyePACS data-use agreement) or set loader_options.demographics."
        )
    df = read_table(labels_p, ["image", "level"], card)
    demo = read_table(demo_p, ["image", "sex", "age"], card, fix="The demographics table needs columns image, sex, age.")
    level = pd.to_numeric(df["level"], errors="coerce")
    n_classes = len(card.labels)
    df = skip_rows(df, ~level.isin(range(n_classes)), report, f"level is not 0..{n_classes - 1}", df["image"])
    df["class"] = pd.to_numeric(df["level"]).astype(int)
    demo = demo.drop_duplicates("image").set_index("image")
    has_demo = df["image"].isin(demo.index)
    df = skip_rows(df, ~has_demo, report, "image not in the demographics table", df["image"])
    df["sex"] = df["image"].map(demo["sex"]).map(canonical_sex)
    df["age"] = df["image"].map(demo["age"])
    df["race"] = df["image"].map(demo["race"]).map(canonical_race) if "race" in demo else None
    img_dir = root / str(card.loader_options.get("image_dir", "train"))
    ext = str(card.loader_options.get("extension", ".jpeg"))
    df["source"] = df["image"].astype(str).map(lambda i: str(img_dir / f"{i}{ext}"))
    df = drop_missing_files(df, df["source"], report)
    df["id"] = df["image"].astype(str)
    df["patient_id"] = df["id"].str.split("_").str[0]
    df["split"] = patient_split(df["patient_id"], card.split_fractions, card.split_seed).to_numpy()
    keep = ["id", "patient_id", "split", "source", "sex", "age", "race", "class"]
    return finish(df[keep], card, image_reader(colour=True), report, [labels_p, demo_p])
