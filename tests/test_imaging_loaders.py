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


def _ptbxl_card(rate=100):
    c = card("ptbxl")
    return c.model_copy(update={"signal": c.signal.model_copy(update={"sampling_rate": rate})})


def test_ptbxl(tmp_path):
    fx.ptbxl(tmp_path)
    ds = load_dataset(card("ptbxl"), tmp_path)
    f = ds.frame.set_index("id")
    skipped = " ".join(ds.report.skipped)
    assert "no diagnostic superclass" in skipped and "scp_codes is not" in skipped and "WFDB record" in skipped
    assert "8" not in f.index  # missing record
    assert f.loc["2", "MI"] == 1.0 and f.loc["2", "STTC"] == 1.0 and f.loc["2", "NORM"] == 0.0
    assert f.loc["4", "age"] == 90 and any("age 300" in q for q in ds.report.quirks)
    # PTB-XL Table 2 (Wagner et al. 2020): sex male 0, female 1
    assert f.loc["1", "sex"] == "male" and f.loc["2", "sex"] == "female"
    assert f.loc["1", "split"] == "train" and f.loc["17", "split"] == "val" and f.loc["19", "split"] == "test"
    x = ds.read(0)  # leads x samples in mV, at the declared 100 Hz for 10 s
    assert x.shape == (12, 1000) and x.dtype == np.float32


def _tiny_signal_backend(c, **extra):
    from benchmark.backends.image.classifier import ClassifierBackend
    from benchmark.config import ModelSpec

    spec = ModelSpec(name="ecg-test", backend="classifier", model="scratch", device="cpu",
                     extra={"hidden_size": 16, "num_layers": 1, "num_heads": 2, **extra})
    return ClassifierBackend(spec, c, seed=0)


@pytest.mark.parametrize("rate", [100, 500])
def test_ptbxl_waveform_reaches_the_model_at_full_rate(tmp_path, rate):
    """records100 (filename_lr) and records500 (filename_hr) arrive as (12, rate x 10 s): no resizing."""
    import torch

    fx.ptbxl(tmp_path, rates=(100, 500))
    c = _ptbxl_card(rate)
    ds = load_dataset(c, tmp_path)
    assert ds.frame["source"].str.contains(f"records{rate}/").all()
    backend = _tiny_signal_backend(c)
    seen = []
    backend.model.backbone.register_forward_pre_hook(lambda mod, args, kwargs: seen.append(kwargs["past_values"].shape), with_kwargs=True)
    x, _, _ = backend._view(ds.split("train"))[0]
    assert tuple(x.shape) == (12, 10 * rate)
    probs = backend.probabilities([lambda i=i: ds.read(i) for i in range(3)])
    assert probs.shape == (3, 5) and np.isfinite(probs).all()
    assert seen == [torch.Size([3, 10 * rate, 12])]  # PatchTST's (batch, time, channels)


def test_ptbxl_leads_are_not_mixed(tmp_path):
    """A wave planted in lead k changes input channel k only, and only lead k's feature block."""
    import torch

    from benchmark.backends.image.inputs import to_input

    fx.ptbxl(tmp_path)
    c = card("ptbxl")
    ds = load_dataset(c, tmp_path)
    backend = _tiny_signal_backend(c)
    view = backend._view(ds)
    row = int(np.flatnonzero(ds.frame["MI"].to_numpy() == 1)[0])  # carries the planted wave in fx.MI_LEAD
    raw = ds.read(row)
    clean = raw.copy()
    clean[fx.MI_LEAD] -= np.sin(2 * np.pi * 5 * np.arange(1000) / 100).astype(np.float32)
    with_wave, without = view[row][0], to_input(clean, **backend.inputs)
    changed = (with_wave - without).abs().amax(dim=1) > 1e-3
    assert changed.tolist() == [k == fx.MI_LEAD for k in range(12)]
    backend.model.eval()
    with torch.no_grad():
        f = backend.model.features(torch.stack([with_wave, without])).reshape(2, 12, -1)
    moved = (f[0] - f[1]).abs().amax(dim=1) > 1e-6
    assert moved.tolist() == [k == fx.MI_LEAD for k in range(12)]


def test_ptbxl_rate_and_card_errors(tmp_path):
    import wfdb

    fx.ptbxl(tmp_path)
    # record 1's filename_lr holds a 500 Hz record: a clear error, never a silent resample
    wfdb.wrsamp("00001_lr", fs=500, units=["mV"] * 12, sig_name=fx.LEADS, p_signal=np.zeros((5000, 12)),
                fmt=["16"] * 12, write_dir=str(tmp_path / "records100" / "00000"))
    ds = load_dataset(card("ptbxl"), tmp_path)
    with pytest.raises(FairbenchError, match=r"00001_lr.hea: sampled at 500.* signal.sampling_rate 100"):
        ds.read(int(np.flatnonzero(ds.frame["id"] == "1")[0]))
    with pytest.raises(FairbenchError, match="input_modality: signal"):
        load_dataset(card("ptbxl", input_modality="image", signal=None), tmp_path)
    with pytest.raises(FairbenchError, match="loader_options.sampling_rate"):
        load_dataset(card("ptbxl", loader_options={"sampling_rate": 100}), tmp_path)


def test_signal_task_refuses_image_only_backends():
    from benchmark.backends.image.clip import CLIPBackend
    from benchmark.config import ModelSpec
    from benchmark.kinds.image.kind import ImageKind

    spec = ModelSpec(name="clip", backend="clip", model="x", device="cpu")
    with pytest.raises(FairbenchError, match="12-channel waveform"):
        ImageKind(card("ptbxl")).check_backend(CLIPBackend, spec)
    with pytest.raises(FairbenchError, match="backbone: patchtst"):
        _tiny_signal_backend(card("ptbxl"), backbone="vit")


def test_signal_task_refuses_an_image_checkpoint(tmp_path):
    """from_pretrained on another architecture only warns; the backend must refuse, not train random weights."""
    from transformers import ViTConfig, ViTModel

    from benchmark.backends.image.classifier import build_classifier
    from benchmark.config import ModelSpec

    ViTModel(ViTConfig(image_size=16, patch_size=8, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                       intermediate_size=32)).save_pretrained(tmp_path)
    with pytest.raises(FairbenchError, match="is a vit checkpoint.*PatchTST"):
        build_classifier(ModelSpec(name="v", backend="classifier", model=str(tmp_path), device="cpu"), card("ptbxl"), 5)


def test_ptbxl_tiny_patchtst_learns_through_the_run_path(tmp_path, cli):
    """fairbench run on a synthetic PTB-XL: the model must find the MI wave planted in one lead."""
    import json

    import yaml

    (tmp_path / "data").mkdir()
    data = fx.ptbxl(tmp_path / "data", n=80)
    tasks = tmp_path / "tasks"
    (tasks / "ptbxl").mkdir(parents=True)
    c = yaml.safe_load((card("ptbxl").directory / "task.yaml").read_text())
    c["audit"].update({"n_boot": 100, "attributes": ["sex"], "min_group_size": 2})
    (tasks / "ptbxl" / "task.yaml").write_text(yaml.safe_dump(c))
    models = tmp_path / "models.yaml"
    models.write_text(yaml.safe_dump({"models": {"ecg-test": {"backend": "classifier", "model": "scratch", "extra": {
        "hidden_size": 16, "num_layers": 1, "num_heads": 2, "patch_seconds": 1.0, "epochs": 5, "lr": 0.01, "batch_size": 8}}}}))
    out = tmp_path / "runs"
    assert cli("run", "-m", "ecg-test", "-t", "ptbxl", "--models-file", str(models), "--tasks-dir", str(tasks),
               "--data-dir", str(data), "-o", str(out), "-q") == 0
    run_dir = next(out.iterdir())
    results = json.loads((run_dir / "results.json").read_text())
    meta = json.loads((run_dir / "model" / "meta.json").read_text())["report"]
    assert meta["val_loss"][meta["best_epoch"] - 1] < meta["val_loss"][0]
    assert results["metrics"]["auc"]["value"] > 0.9  # MI, the primary label, from its planted lead
    rows = [json.loads(line) for line in (run_dir / "requests.jsonl").read_text().splitlines()]
    assert {r["split"] for r in rows} == {"val", "test"} and all(r["method"] == "predict" for r in rows)


def test_ol3i(tmp_path):
    fx.ol3i(tmp_path)
    ds = load_dataset(card("ol3i"), tmp_path)
    f = ds.frame.set_index("id")
    assert len(ds) == 19 and any("no slice" in s for s in ds.report.skipped)
    assert set(ds.frame["split"]) == {"train", "val", "test"}
    assert f.loc["a000", "sex"] == "female" and f.loc["a001", "sex"] == "male" and f.loc["a002", "age"] == 47
    x = ds.read(0)
    # soft-tissue window (level 40, width 400 HU): air -> 0, soft tissue (40 HU) -> 0.5, bone -> 1
    assert x.shape == (32, 32) and x[0, 0] == 0.0 and x[16, 8] == pytest.approx(0.5) and x[16, 16] == 1.0


def test_ol3i_unknown_columns_name_what_the_file_has(tmp_path):
    """No guessed default: columns the card does not name stop the load with one line listing the file's columns."""
    fx.ol3i(tmp_path, sex_column="gender", age_column="age_at_scan")
    with pytest.raises(FairbenchError) as err:
        load_dataset(card("ol3i"), tmp_path)
    msg = str(err.value)
    assert "\n" not in msg and "gender" in msg and "age_at_scan" in msg and "loader_options.sex_column" in msg
    assert "loader_options.age_column" in msg
    unset = card("ol3i", loader_options={"horizon": "1y", "patient_column": "anon_id"})
    with pytest.raises(FairbenchError, match=r"sex_column unset.*age_column unset.*has columns anon_id"):
        load_dataset(unset, tmp_path)
    named = card("ol3i", loader_options={"sex_column": "gender", "age_column": "age_at_scan"})
    ds = load_dataset(named, tmp_path)
    assert set(ds.frame["sex"]) == {"female", "male"} and ds.frame["age"].between(45, 64).all()


def test_ol3i_numeric_sex_codes_are_not_guessed(tmp_path):
    fx.ol3i(tmp_path, sex_values=(0, 1))
    with pytest.raises(FairbenchError, match=r"'sex'.*holds 0, 1, not female/male"):
        load_dataset(card("ol3i"), tmp_path)


def test_ol3i_pixels_must_be_hounsfield_units(tmp_path):
    fx.ol3i(tmp_path, stored_offset=1024)  # raw CT numbers: air stored as 24
    with pytest.raises(FairbenchError, match=r"slice 'a000' spans 24\.\.1724 .*loader_options.hu_offset"):
        load_dataset(card("ol3i"), tmp_path)
    c = card("ol3i")
    ds = load_dataset(c.model_copy(update={"loader_options": {**c.loader_options, "hu_offset": -1024}}), tmp_path)
    x = ds.read(0)
    assert x[0, 0] == 0.0 and x[16, 8] == pytest.approx(0.5)


def test_missing_data_dir_is_a_clear_error():
    with pytest.raises(FairbenchError, match="--data-dir"):
        load_dataset(card("chexpert"), None)
