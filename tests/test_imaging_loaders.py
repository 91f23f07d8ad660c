"""Every official imaging loader on a tiny fixture in its schema: columns, splits, demographics,
bad rows and missing files (clear error or counted skip)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import imaging_fixtures as fx
from benchmark.errors import FairbenchError
from benchmark.kinds.image.kind import load_dataset
from benchmark.data.image.vocab import age_group, canonical_race, canonical_sex
from benchmark.cards import load_task


def card(name, **update):
    c = load_task(name)
    return c.model_copy(update=update) if update else c


def _no_patient_leak(ds):
    assert (ds.frame.groupby("patient_id")["split"].nunique() == 1).all()
    assert set(ds.frame["split"]) == {"train", "val", "test"}


def test_vocabulary_and_one_age_rule():
    assert canonical_sex("F") == canonical_sex("Female") == "female" and canonical_sex("Unknown") is None
    assert canonical_race("White, non-Hispanic") == "White"
    assert canonical_race("HISPANIC/LATINO - PUERTO RICAN") == "Hispanic"
    assert canonical_race("BLACK/AFRICAN AMERICAN") == "Black" and canonical_race("ASIAN - CHINESE") == "Asian"
    assert canonical_race("PATIENT DECLINED TO ANSWER") is None and canonical_race("Native Hawaiian") == "Other"
    # left-closed bins: 60 is in 60-79 everywhere (the >60 vs >=60 mistake cannot happen)
    assert list(age_group([39, 40, 59.5, 60, 80, 95, None, 5], [0, 40, 60, 80])) == [
        "0-39", "40-59", "40-59", "60-79", "80+", "80+", None, "0-39"]


def test_chexpert(tmp_path):
    fx.chexpert(tmp_path)
    ds = load_dataset(card("chexpert"), tmp_path)
    f = ds.frame
    assert len(f) == 14  # frontal views only: 10 train + 4 valid patients
    assert set(f.loc[f["split"] == "test", "patient_id"]) == {f"patient{64541 + p:05d}" for p in range(4)}
    _no_patient_leak(ds)
    row = f[f["patient_id"] == "patient00003"].iloc[0]  # p=2: Pleural Effusion -1 -> U-Zeros 0
    assert row["Pleural Effusion"] == 0.0 and row["sex"] == "male" and row["race"] == "Asian" and row["age_group"] == "40-59"
    assert f.loc[f["patient_id"] == "patient00001", "race"].iloc[0] == "White"
    assert f.loc[f["patient_id"] == "patient00004", "race"].iloc[0] == "Hispanic"
    assert ds.read(0).shape == (12, 12)
    ones = load_dataset(card("chexpert", loader_options={"uncertain": "ones"}), tmp_path).frame
    assert ones.loc[ones["patient_id"] == "patient00003", "Pleural Effusion"].iloc[0] == 1.0
    ign = load_dataset(card("chexpert", loader_options={"uncertain": "ignore"}), tmp_path).frame
    assert np.isnan(ign.loc[ign["patient_id"] == "patient00003", "Pleural Effusion"].iloc[0])


def test_chexpert_bad_rows_missing_images_and_columns(tmp_path):
    fx.chexpert(tmp_path)
    base = tmp_path / "CheXpert-v1.0-small"
    train = pd.read_csv(base / "train.csv")
    train.loc[0, "Pleural Effusion"] = 2  # not a CheXpert code
    train.to_csv(base / "train.csv", index=False)
    (tmp_path / train.loc[2, "Path"]).unlink()  # a missing image
    ds = load_dataset(card("chexpert"), tmp_path)
    skipped = " ".join(ds.report.skipped)
    assert "not 1, 0, -1 or blank" in skipped and "image file missing" in skipped
    assert len(ds.frame) == 12
    train.drop(columns=["Sex"]).to_csv(base / "train.csv", index=False)
    with pytest.raises(FairbenchError, match=r"train\.csv: missing column\(s\) Sex"):
        load_dataset(card("chexpert"), tmp_path)


def test_chexpert_without_demographics_file_has_no_race(tmp_path):
    fx.chexpert(tmp_path, with_demo=False)
    ds = load_dataset(card("chexpert"), tmp_path)
    assert ds.frame["race"].isna().all()
    assert any("demographics" in q for q in ds.report.quirks)


def test_mimic_cxr(tmp_path):
    fx.mimic(tmp_path)
    ds = load_dataset(card("mimic-cxr"), tmp_path)
    f = ds.frame.set_index("id")
    assert len(f) == 10 and "lat" not in f.index
    assert any("not in the official split" in s for s in ds.report.skipped)
    assert f.loc["d000", "split"] == "train" and f.loc["d006", "split"] == "val" and f.loc["d009", "split"] == "test"
    # age = anchor_age + (study year 2180 - anchor_year 2175)
    assert f.loc["d003", "age"] == 53 + 5 and f.loc["d003", "sex"] == "female"
    assert f.loc["d003", "race"] == "Black" and f.loc["d000", "race"] == "White"  # UNKNOWN admissions ignored
    assert f.loc["d000", "No Finding"] == 1.0 and f.loc["d001", "Edema"] == 0.0
    _no_patient_leak(ds)


def test_mimic_cxr_missing_mimic_iv_is_a_clear_error(tmp_path):
    fx.mimic(tmp_path)
    (tmp_path / "mimiciv" / "hosp" / "patients.csv.gz").unlink()
    with pytest.raises(FairbenchError, match="MIMIC-IV patients"):
        load_dataset(card("mimic-cxr"), tmp_path)


def test_ham10000_split_by_lesion(tmp_path):
    fx.ham10000(tmp_path)
    meta = pd.read_csv(tmp_path / "HAM10000_metadata.csv")
    meta.loc[len(meta)] = {"lesion_id": "HAM_x", "image_id": "ISIC_bad", "dx": "zzz", "dx_type": "histo", "age": 50, "sex": "male", "localization": "back"}
    meta.to_csv(tmp_path / "HAM10000_metadata.csv", index=False)
    (tmp_path / "HAM10000_images_part_2" / "ISIC_000000.jpg").unlink()
    ds = load_dataset(card("ham10000", split_fractions={"train": 0.5, "val": 0.25, "test": 0.25}), tmp_path)
    f = ds.frame
    assert (f.groupby("patient_id")["split"].nunique() == 1).all()  # both images of a lesion together
    assert any("dx not one of" in s for s in ds.report.skipped) and any("image file missing" in s for s in ds.report.skipped)
    assert set(f["sex"].dropna()) == {"male", "female"} and f["sex"].isna().any()
    assert f["class"].between(0, 6).all() and ds.read(0).shape == (12, 12, 3)


def test_eyepacs_requires_demographics(tmp_path):
    fx.eyepacs(tmp_path, demographics=False)
    with pytest.raises(FairbenchError, match="no demographics"):
        load_dataset(card("eyepacs"), tmp_path)


def test_eyepacs_with_demographics(tmp_path):
    fx.eyepacs(tmp_path)
    ds = load_dataset(card("eyepacs"), tmp_path)
    f = ds.frame
    assert len(f) == 30
    assert (f.groupby("patient_id")["split"].nunique() == 1).all()  # both eyes of a patient together
    assert f.loc[f["id"] == "11_left", "sex"].iloc[0] == "female"


def test_ptbxl(tmp_path):
    fx.ptbxl(tmp_path)
    ds = load_dataset(card("ptbxl"), tmp_path)
    f = ds.frame.set_index("id")
    skipped = " ".join(ds.report.skipped)
    assert "no diagnostic superclass" in skipped and "scp_codes is not" in skipped and "WFDB record" in skipped
    assert "8" not in f.index  # missing record
    assert f.loc["2", "MI"] == 1.0 and f.loc["2", "STTC"] == 1.0 and f.loc["2", "NORM"] == 0.0
    assert f.loc["4", "age"] == 90 and any("age 300" in q for q in ds.report.quirks)
    assert f.loc["1", "sex"] == "male" and f.loc["2", "sex"] == "female"
    assert f.loc["1", "split"] == "train" and f.loc["17", "split"] == "val" and f.loc["19", "split"] == "test"
    x = ds.read(0)
    assert x.shape == (12, 100) and 0 <= x.min() and x.max() <= 1


def test_ol3i(tmp_path):
    fx.ol3i(tmp_path)
    ds = load_dataset(card("ol3i"), tmp_path)
    assert len(ds) == 19 and any("no slice" in s for s in ds.report.skipped)
    assert set(ds.frame["split"]) == {"train", "val", "test"}
    x = ds.read(0)
    assert x.shape == (16, 16) and 0 <= x.min() <= x.max() <= 1


def test_ol3i_names_missing_demographic_column(tmp_path):
    fx.ol3i(tmp_path, sex_column="gender")
    with pytest.raises(FairbenchError, match=r"missing column\(s\) sex.*sex_column"):
        load_dataset(card("ol3i"), tmp_path)


def test_missing_data_dir_is_a_clear_error():
    with pytest.raises(FairbenchError, match="--data-dir"):
        load_dataset(card("chexpert"), None)
