"""Tiny fixtures in each imaging dataset's official schema, written by the tests themselves."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pandas as pd


def png(path: Path, value: int = 128, colour: bool = False, size: int = 12) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.full((size, size, 3) if colour else (size, size), value, dtype=np.uint8)
    Image.fromarray(arr).save(path, format="JPEG" if path.suffix in (".jpg", ".jpeg") else "PNG")


CHEX_LABELS = ["No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion", "Edema",
               "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion", "Pleural Other",
               "Fracture", "Support Devices"]


def chexpert(root: Path, n_train_patients: int = 10, with_demo: bool = True) -> Path:
    base = root / "CheXpert-v1.0-small"
    rows = {"train": [], "valid": []}
    for split, n in (("train", n_train_patients), ("valid", 4)):
        for p in range(n):
            pid = p + 1 if split == "train" else 64541 + p
            for view in (1, 2):
                rel = f"CheXpert-v1.0-small/{split}/patient{pid:05d}/study1/view{view}_{'frontal' if view == 1 else 'lateral'}.jpg"
                png(root / rel)
                row = {"Path": rel, "Sex": "Female" if p % 2 else "Male", "Age": 30 + 10 * p,
                       "Frontal/Lateral": "Frontal" if view == 1 else "Lateral", "AP/PA": "AP"}
                row.update({c: "" for c in CHEX_LABELS})
                row["Pleural Effusion"] = [1, 0, -1, ""][p % 4]
                row["No Finding"] = 1 if p % 4 == 1 else ""
                rows[split].append(row)
    for split in rows:
        pd.DataFrame(rows[split]).to_csv(base / f"{split}.csv", index=False)
    if with_demo:
        demo = pd.DataFrame({"PATIENT": [f"patient{p + 1:05d}" for p in range(n_train_patients)] + [f"patient{64541 + p:05d}" for p in range(4)],
                             "GENDER": "Female", "AGE_AT_CXR": 50,
                             "PRIMARY_RACE": ["White, non-Hispanic", "Black or African American", "Asian", "Other, Hispanic", "Unknown"] * 2 + ["White"] * 4,
                             "ETHNICITY": "Non-Hispanic/Non-Latino"})
        demo.to_csv(base / "CHEXPERT DEMO.csv", index=False)
    return root


def _gz_csv(df: pd.DataFrame, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt") as fh:
        df.to_csv(fh, index=False)


def mimic(root: Path) -> Path:
    meta, lab, split, pats, adms = [], [], [], [], []
    splits = ["train"] * 6 + ["validate"] * 2 + ["test"] * 2
    for i in range(10):
        sid, st, dic = 10000000 + i, 50000000 + i, f"d{i:03d}"
        meta.append({"dicom_id": dic, "subject_id": sid, "study_id": st, "ViewPosition": "PA", "StudyDate": 21800101 + i, "StudyTime": 1.0})
        lab.append({"subject_id": sid, "study_id": st, "No Finding": 1.0 if i % 3 == 0 else None, "Cardiomegaly": None,
                    "Edema": -1.0 if i == 1 else None, "Consolidation": None, "Atelectasis": None, "Pleural Effusion": float(i % 2)})
        split.append({"dicom_id": dic, "study_id": st, "subject_id": sid, "split": splits[i]})
        pats.append({"subject_id": sid, "gender": "F" if i % 2 else "M", "anchor_age": 50 + i, "anchor_year": 2175, "anchor_year_group": "2008 - 2010", "dod": None})
        adms.append({"subject_id": sid, "hadm_id": 1, "admittime": "2175-01-01", "race": "BLACK/AFRICAN AMERICAN" if i % 2 else "WHITE"})
        adms.append({"subject_id": sid, "hadm_id": 2, "admittime": "2176-01-01", "race": "UNKNOWN"})
        png(root / "files" / f"p{str(sid)[:2]}" / f"p{sid}" / f"s{st}" / f"{dic}.jpg")
    # a lateral view (filtered out) and an image missing from the split file (skipped, counted)
    meta.append({"dicom_id": "lat", "subject_id": 10000000, "study_id": 50000000, "ViewPosition": "LATERAL", "StudyDate": 21800101, "StudyTime": 1.0})
    meta.append({"dicom_id": "nosplit", "subject_id": 10000000, "study_id": 50000000, "ViewPosition": "PA", "StudyDate": 21800101, "StudyTime": 1.0})
    _gz_csv(pd.DataFrame(meta), root / "mimic-cxr-2.0.0-metadata.csv.gz")
    _gz_csv(pd.DataFrame(lab), root / "mimic-cxr-2.0.0-chexpert.csv.gz")
    _gz_csv(pd.DataFrame(split), root / "mimic-cxr-2.0.0-split.csv.gz")
    _gz_csv(pd.DataFrame(pats), root / "mimiciv" / "hosp" / "patients.csv.gz")
    _gz_csv(pd.DataFrame(adms), root / "mimiciv" / "hosp" / "admissions.csv.gz")
    return root


def ham10000(root: Path, n_lesions: int = 20) -> Path:
    dx = ["akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"]
    rows = []
    for l in range(n_lesions):
        for k in range(2 if l % 3 == 0 else 1):  # some lesions have two images
            iid = f"ISIC_{l:05d}{k}"
            rows.append({"lesion_id": f"HAM_{l:07d}", "image_id": iid, "dx": dx[l % 7], "dx_type": "histo",
                         "age": float(20 + 3 * l) if l != 5 else None, "sex": ["male", "female", "unknown"][l % 3], "localization": "back"})
            png(root / ("HAM10000_images_part_1" if l % 2 else "HAM10000_images_part_2") / f"{iid}.jpg", colour=True)
    pd.DataFrame(rows).to_csv(root / "HAM10000_metadata.csv", index=False)
    return root


def eyepacs(root: Path, n_patients: int = 15, demographics: bool = True) -> Path:
    rows, demo = [], []
    for p in range(n_patients):
        for eye in ("left", "right"):
            img = f"{p + 10}_{eye}"
            rows.append({"image": img, "level": (p + (eye == "right")) % 5})
            demo.append({"image": img, "sex": "F" if p % 2 else "M", "age": 35 + 3 * p})
            png(root / "train" / f"{img}.jpeg", colour=True)
    pd.DataFrame(rows).to_csv(root / "trainLabels.csv", index=False)
    if demographics:
        pd.DataFrame(demo).to_csv(root / "eyepacs_demographics.csv", index=False)
    return root


# The fixture plants a 5 Hz wave in one lead per diagnostic superclass a record has (a learnable,
# lead-specific signal); MI's is lead II.
SUPERCLASS_LEAD = {"NORM": 0, "MI": 1, "STTC": 2, "CD": 3, "HYP": 4}
MI_LEAD = SUPERCLASS_LEAD["MI"]


def ptbxl(root: Path, n: int = 30, rates: tuple[int, ...] = (100,)) -> Path:
    """PTB-XL's layout (Wagner et al. 2020, Table 2): 10 s, 12-lead WFDB records under records100/
    (filename_lr, 12 x 1000) and, with 500 in ``rates``, records500/ (filename_hr, 12 x 5000).
    Each superclass of a record adds a 5 Hz wave to its own lead (``SUPERCLASS_LEAD``), so a model
    can learn every label and a lead's wave is visible in that lead only."""
    import wfdb

    statements = pd.DataFrame(
        {"description": ["normal", "inferior MI", "ST changes", "LBBB", "LVH", "sinus rhythm"],
         "diagnostic": [1, 1, 1, 1, 1, None], "diagnostic_class": ["NORM", "MI", "STTC", "CD", "HYP", None]},
        index=["NORM", "IMI", "NDT", "CLBBB", "LVH", "SR"],
    )
    statements.to_csv(root / "scp_statements.csv")
    codes = ["{'NORM': 100.0, 'SR': 0.0}", "{'IMI': 50.0, 'NDT': 100.0}", "{'CLBBB': 100.0}", "{'LVH': 80.0}", "{'SR': 0.0}", "not a dict"]
    rows = []
    rng = np.random.default_rng(0)
    for i in range(n):
        ecg_id = i + 1
        code = codes[i % 4] if 16 <= i < 20 else codes[i % 6]
        rel = {rate: f"records{rate}/00000/{ecg_id:05d}_{'lr' if rate == 100 else 'hr'}" for rate in (100, 500)}
        for rate in rates:
            folder = root / f"records{rate}" / "00000"
            folder.mkdir(parents=True, exist_ok=True)
            if i == 7:  # record 8 is missing on disk: skipped and counted
                continue
            t = np.arange(10 * rate) / rate
            sig = rng.normal(0, 0.2, (10 * rate, 12))
            for scp, superclass in (("NORM", "NORM"), ("IMI", "MI"), ("NDT", "STTC"), ("CLBBB", "CD"), ("LVH", "HYP")):
                if f"'{scp}'" in code:
                    sig[:, SUPERCLASS_LEAD[superclass]] += np.sin(2 * np.pi * 5 * t)
            wfdb.wrsamp(Path(rel[rate]).name, fs=rate, units=["mV"] * 12, sig_name=LEADS,
                        p_signal=sig, fmt=["16"] * 12, write_dir=str(folder))
        rows.append({"ecg_id": ecg_id, "patient_id": float(1000 + i // 2), "age": 300.0 if i == 3 else 40.0 + i % 50, "sex": i % 2,
                     "scp_codes": code, "strat_fold": 1 + (i // 2) % 10, "filename_lr": rel[100], "filename_hr": rel[500]})
    pd.DataFrame(rows).to_csv(root / "ptbxl_database.csv", index=False)
    return root


LEADS = ["I", "II", "III", "AVR", "AVL", "AVF", "V1", "V2", "V3", "V4", "V5", "V6"]


def ol3i(root: Path, sex_column: str = "sex", age_column: str = "age", sex_values=("female", "male"), stored_offset: int = 0) -> Path:
    """OL3I's files: clinical_data.csv (anon_id, label_/set_ 1y and 5y, demographics under the given
    column names) and l3_slices.h5 with one int16 slice per anon_id: air (-1000 HU) around a
    soft-tissue disc (40 HU) and a bone spot (700 HU), stored as HU + ``stored_offset``."""
    import h5py

    sets = ["train"] * 12 + ["val"] * 4 + ["test"] * 4
    df = pd.DataFrame({"anon_id": [f"a{i:03d}" for i in range(20)], "label_1y": [int(i % 3 == 0) for i in range(20)],
                       "set_1y": sets, "label_5y": 0, "set_5y": sets, sex_column: list(sex_values) * 10,
                       age_column: [45 + i for i in range(20)], "bmi": 25.0})
    df.to_csv(root / "clinical_data.csv", index=False)
    yy, xx = np.mgrid[:32, :32]
    hu = np.full((32, 32), -1000, dtype=np.int16)
    hu[(yy - 16) ** 2 + (xx - 16) ** 2 < 144] = 40
    hu[16:18, 16:18] = 700
    with h5py.File(root / "l3_slices.h5", "w") as fh:
        for i in range(19):  # a019 has no slice: skipped and counted
            fh.create_dataset(f"a{i:03d}", data=(hu + stored_offset).astype(np.int16))
    return root
