"""MIMIC-CXR-JPG 2.x (PhysioNet) joined with MIMIC-IV for demographics.

Files under the data root: ``mimic-cxr-2.0.0-metadata.csv[.gz]`` (dicom_id, subject_id, study_id,
ViewPosition, StudyDate), ``mimic-cxr-2.0.0-chexpert.csv[.gz]`` (subject_id, study_id, 14 findings
coded 1 / 0 / -1 / blank), ``mimic-cxr-2.0.0-split.csv[.gz]`` (dicom_id, study_id, subject_id,
split = train / validate / test) and images at ``files/pXX/p<subject>/s<study>/<dicom>.jpg``.
MIMIC-IV ``patients.csv[.gz]`` (subject_id, gender, anchor_age, anchor_year) and
``admissions.csv[.gz]`` (subject_id, race; ``ethnicity`` in v1) sit in ``loader_options.mimic_iv_dir``
(default ``mimiciv/hosp`` under the root).

- Age at the study = anchor_age + (study year - anchor_year): MIMIC shifts dates consistently
  per patient, so the difference of shifted years is the real elapsed time.
- Race: the most frequent known race over the subject's admissions (ties: earliest admission).
- The official split file is used as is (it is at patient level); images are never re-split.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..cases import LoadReport
from .chexpert import map_findings, uncertain_policy
from .common import drop_missing_files, find_file, image_reader, read_table, skip_rows
from .dataset import finish
from .vocab import canonical_race, canonical_sex

_SPLIT = {"train": "train", "validate": "val", "test": "test"}


def _gz(stem: str) -> list[str]:
    return [f"{stem}.csv", f"{stem}.csv.gz"]


def _subject_race(adm: pd.DataFrame, column: str) -> pd.Series:
    adm = adm.copy()
    adm["_race"] = adm[column].map(canonical_race)
    if "admittime" in adm:
        adm = adm.sort_values("admittime", kind="stable")
    adm = adm.dropna(subset=["_race"])
    if adm.empty:
        return pd.Series(dtype=object)
    counts = adm.groupby(["subject_id", "_race"], sort=False).size().rename("n").reset_index()
    counts["first"] = counts.groupby("subject_id").cumcount()
    counts = counts.sort_values(["subject_id", "n", "first"], ascending=[True, False, True])
    return counts.drop_duplicates("subject_id").set_index("subject_id")["_race"]


def load_mimic_cxr(card, root: Path, report: LoadReport):
    policy = uncertain_policy(card, "MIMIC-CXR CheXpert")
    meta_p = find_file(root, _gz("mimic-cxr-2.0.0-metadata"), card, "metadata file")
    lab_p = find_file(root, _gz("mimic-cxr-2.0.0-chexpert"), card, "CheXpert label file")
    split_p = find_file(root, _gz("mimic-cxr-2.0.0-split"), card, "official split file")
    iv = root / str(card.loader_options.get("mimic_iv_dir", "mimiciv/hosp"))
    pat_p = find_file(iv, _gz("patients"), card, "MIMIC-IV patients file (set loader_options.mimic_iv_dir)")
    adm_p = find_file(iv, _gz("admissions"), card, "MIMIC-IV admissions file (set loader_options.mimic_iv_dir)")

    meta = read_table(meta_p, ["dicom_id", "subject_id", "study_id", "ViewPosition", "StudyDate"], card)
    labels = read_table(lab_p, ["subject_id", "study_id", *card.labels], card)
    split = read_table(split_p, ["dicom_id", "subject_id", "study_id", "split"], card)
    patients = read_table(pat_p, ["subject_id", "gender", "anchor_age", "anchor_year"], card)
    adm_head = pd.read_csv(adm_p, nrows=0).columns
    race_col = "race" if "race" in adm_head else "ethnicity"
    adm = read_table(adm_p, ["subject_id", race_col], card, fix="Use MIMIC-IV hosp/admissions (race or ethnicity column).")

    df = meta.merge(split[["dicom_id", "split"]], on="dicom_id", how="left")
    df = skip_rows(df, df["split"].isna(), report, "dicom_id not in the official split file", df["dicom_id"])
    df["split"] = df["split"].map(_SPLIT)
    df = skip_rows(df, df["split"].isna(), report, "split value is not train/validate/test", df["dicom_id"])
    views = card.loader_options.get("views", ["PA", "AP"])
    if views:
        df = df[df["ViewPosition"].isin(list(views))]
    df = df.merge(labels, on=["subject_id", "study_id"], how="left", indicator=True)
    df = skip_rows(df, df["_merge"] != "both", report, "study has no CheXpert labels", df["dicom_id"])
    df = map_findings(df, card, policy, report, "dicom_id")

    pat = patients.drop_duplicates("subject_id").set_index("subject_id")
    df["sex"] = df["subject_id"].map(pat["gender"]).map(canonical_sex)
    study_year = pd.to_numeric(df["StudyDate"], errors="coerce") // 10000
    df["age"] = df["subject_id"].map(pat["anchor_age"]) + (study_year - df["subject_id"].map(pat["anchor_year"]))
    n_nopat = int((~df["subject_id"].isin(pat.index)).sum())
    if n_nopat:
        report.quirks.append(f"{n_nopat} images of subjects missing from MIMIC-IV patients (sex and age unknown)")
    df["race"] = df["subject_id"].map(_subject_race(adm, race_col))

    sub = df["subject_id"].astype(int).astype(str)
    df["source"] = [
        str(root / "files" / f"p{s[:2]}" / f"p{s}" / f"s{st}" / f"{d}.jpg")
        for s, st, d in zip(sub, df["study_id"].astype(int), df["dicom_id"])
    ]
    df = drop_missing_files(df, df["source"], report)
    df["id"] = df["dicom_id"].astype(str)
    df["patient_id"] = df["subject_id"].astype(str)
    keep = ["id", "patient_id", "split", "source", "sex", "age", "race", *card.labels]
    return finish(df[keep], card, image_reader(colour=False), report, [meta_p, lab_p, split_p, pat_p, adm_p])
