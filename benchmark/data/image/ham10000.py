"""HAM10000 (ViDIR / ISIC 2018 task 3): ``HAM10000_metadata[.csv]`` with
``lesion_id, image_id, dx, dx_type, age, sex, localization`` and the images ``<image_id>.jpg`` in
``HAM10000_images_part_1/`` and ``HAM10000_images_part_2/`` (or ``loader_options.image_dirs``).

Seven classes (akiec, bcc, bkl, df, mel, nv, vasc); the card's ``positive_classes`` define the
audited endpoint (malignant: mel, bcc, akiec). There is no patient id and no official split, so
images are split by **lesion** (several images show the same lesion) with the card's split_seed.
"""

from __future__ import annotations

from pathlib import Path

from ...errors import FairbenchError
from ..cases import LoadReport
from .common import drop_missing_files, find_file, image_reader, read_table, skip_rows
from .dataset import finish
from .splits import patient_split
from .vocab import canonical_sex

COLUMNS = ["lesion_id", "image_id", "dx", "dx_type", "age", "sex", "localization"]


def load_ham10000(card, root: Path, report: LoadReport):
    path = find_file(root, ["HAM10000_metadata.csv", "HAM10000_metadata", "HAM10000_metadata.tab"], card, "HAM10000_metadata")
    df = read_table(path, COLUMNS, card, sep=None, engine="python")
    classes = list(card.labels)
    unknown = ~df["dx"].isin(classes)
    df = skip_rows(df, unknown, report, f"dx not one of {classes}", df["image_id"])
    dirs = card.loader_options.get("image_dirs", ["HAM10000_images_part_1", "HAM10000_images_part_2", "images"])
    dirs = [root / d for d in dirs]
    if not any(d.is_dir() for d in dirs):
        raise FairbenchError(f"task {card.name}: no image folder under {root} (expected {', '.join(d.name for d in dirs)}).")

    def locate(image_id: str) -> str:
        for d in dirs:
            p = d / f"{image_id}.jpg"
            if p.is_file():
                return str(p)
        return str(dirs[0] / f"{image_id}.jpg")

    df["source"] = df["image_id"].astype(str).map(locate)
    df = drop_missing_files(df, df["source"], report)
    df["class"] = df["dx"].map({c: i for i, c in enumerate(classes)}).astype(int)
    df["id"] = df["image_id"].astype(str)
    df["patient_id"] = df["lesion_id"].astype(str)  # no patient id in HAM10000: the lesion is the unit
    df["split"] = patient_split(df["patient_id"], card.split_fractions, card.split_seed).to_numpy()
    df["sex"] = df["sex"].map(canonical_sex)
    df["race"] = None
    keep = ["id", "patient_id", "split", "source", "sex", "age", "race", "class"]
    return finish(df[keep], card, image_reader(colour=True), report, [path])
