"""Group audit, thresholds, synth-xray and the imaging run path."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from fairlearn.metrics import MetricFrame, demographic_parity_difference, equalized_odds_difference
from sklearn.metrics import roc_auc_score

from benchmark.audits.group import GroupAudit, ece, fast_auc, gap_metrics
from benchmark.kinds.image.evaluate import endpoint_frame
from benchmark.kinds.image.kind import predict_images
from benchmark.data.image.synth import generate
from benchmark.kinds.image.thresholds import tune_threshold
from benchmark.cards import load_task


def _frame(n=400, seed=0):
    rng = np.random.default_rng(seed)
    sex = rng.choice(["female", "male"], n)
    y = (rng.random(n) < np.where(sex == "female", 0.3, 0.5)).astype(float)
    p = np.clip(0.5 * y + rng.normal(0.25, 0.2, n) + 0.1 * (sex == "male"), 0, 1)
    d = (p >= 0.45).astype(float)
    age = rng.choice(["0-39", "40-59", "60-79"], n)
    return pd.DataFrame({"patient_id": [f"p{i // 2}" for i in range(n)], "sex": sex, "age_group": age, "race": None,
                         "valid": True, "y:lesion": y, "p:lesion": p, "d:lesion": d, "d05:lesion": (p >= 0.5).astype(float)})


def test_gaps_match_fairlearn_and_sklearn():
    df = _frame()
    y, p, d = df["y:lesion"].to_numpy(), df["p:lesion"].to_numpy(), df["d:lesion"].to_numpy()
    codes = (df["sex"] == "male").to_numpy().astype(int)
    g = gap_metrics(y, p, d, codes, 2, 15, False)
    assert g["dp_gap"] == pytest.approx(demographic_parity_difference(y, d, sensitive_features=df["sex"]))
    assert g["eod"] == pytest.approx(equalized_odds_difference(y, d, sensitive_features=df["sex"]))
    aucs = MetricFrame(metrics=roc_auc_score, y_true=y, y_pred=p, sensitive_features=df["sex"]).by_group
    assert g["auc_gap"] == pytest.approx(aucs.max() - aucs.min())
    assert g["worst_group_auc"] == pytest.approx(aucs.min())
    overall = roc_auc_score(y, p)
    assert g["es_auc"] == pytest.approx(overall / (1 + np.abs(overall - aucs).sum()))
    assert fast_auc(y, p) == pytest.approx(overall)
    assert ece(np.array([1.0, 0.0]), np.array([0.9, 0.1]), 10) == pytest.approx(0.1)


def test_group_audit_tables_cis_small_groups_and_tests():
    c = load_task("synth-xray")
    c = c.model_copy(update={"audit": c.audit.model_copy(update={"n_boot": 200, "min_group_size": 150})})
    out = GroupAudit(c, seed=0).run(_frame(), ["lesion"])
    ep = out["endpoints"]["lesion"]
    sex = ep["attributes"]["sex"]
    assert {g: v["n"] for g, v in sex["groups"].items()} == _frame()["sex"].value_counts().to_dict()
    for name in ("dp_gap", "eod", "auc_gap", "worst_group_auc", "es_auc", "ece_gap", "underdiag_gap", "dp_gap_at_0.5"):
        est = sex[name]
        assert est["ci_low"] <= est["value"] <= est["ci_high"] and est["n"] == 200  # n = patients (cluster bootstrap)
    assert sex["tests"][0]["test"] == "chi_square" and sex["tests"][0]["p_adjusted"] is not None
    inter = ep["attributes"]["sex*age_group"]
    assert all(v["small"] for v in inter["groups"].values())  # < 150 each: flagged, left out of gaps
    assert inter["dp_gap"]["value"] is None and any("fewer than 150" in w for w in out["warnings"])


def test_thresholds_come_from_validation_only():
    c = load_task("synth-xray")
    rng = np.random.default_rng(1)
    rows = []
    for i in range(200):
        split = "val" if i < 100 else "test"
        y = float(rng.random() < 0.4)
        rows.append({"id": str(i), "patient_id": str(i), "split": split, "sex": "female", "age_group": "0-39", "race": None,
                     "valid": True, "targets": [y], "probs": [float(np.clip(0.3 * y + rng.random() * 0.7, 0, 1))]})
    _, thr1 = endpoint_frame(rows, c)
    for r in rows[100:]:  # flip every test label: a test-tuned threshold would move
        r["targets"] = [1.0 - r["targets"][0]]
    _, thr2 = endpoint_frame(rows, c)
    assert thr1["thresholds"] == thr2["thresholds"]
    val = rows[:100]
    t, _ = tune_threshold(np.array([r["targets"][0] for r in val]), np.array([r["probs"][0] for r in val]))
    assert thr1["thresholds"]["lesion"] == pytest.approx(t, rel=1e-5)


def test_synth_xray_signal_and_shortcut():
    c = load_task("synth-xray")
    c = c.model_copy(update={"loader_options": {**c.loader_options, "n": 600}})
    frame, images = generate(c)
    female = (frame["sex"] == "female").to_numpy()
    y = frame["lesion"].to_numpy() == 1
    band = images[:, 44:50, 12:52].mean(axis=(1, 2))  # the lower-lung band region
    assert band[female].mean() - band[~female].mean() > 0.02
    no_cut = c.model_copy(update={"loader_options": {**c.loader_options, "n": 600, "shortcut_strength": 0.0}})
    _, images0 = generate(no_cut)
    band0 = images0[:, 44:50, 12:52].mean(axis=(1, 2))
    assert abs(band0[female].mean() - band0[~female].mean()) < 0.01
    # the lesion is a real signal: the brightest lung pixel is higher in positive images
    assert images.reshape(600, -1).max(1)[y].mean() > images.reshape(600, -1).max(1)[~y].mean()
    assert frame.loc[female, "lesion"].mean() < frame.loc[~female, "lesion"].mean()  # base rates by sex
    again, images2 = generate(c)
    assert np.array_equal(images, images2)  # seeded


@pytest.fixture()
def imaging_env(tmp_path):
    """A user models file with a very small classifier and a small synth-xray task copy."""
    import yaml

    models = tmp_path / "models.yaml"
    models.write_text(yaml.safe_dump({"models": {"vit-test": {"backend": "classifier", "model": "scratch", "extra": {
        "image_size": 32, "patch_size": 8, "hidden_size": 16, "num_layers": 1, "num_heads": 2, "channels": 1, "epochs": 2, "batch_size": 32}}}}))
    tasks = tmp_path / "tasks"
    (tasks / "synth-mini").mkdir(parents=True)
    card = yaml.safe_load(open(load_task("synth-xray").directory / "task.yaml"))
    card.update({"name": "synth-mini", "image_size": 32})
    card["loader_options"]["n"] = 160  # small on purpose: these tests check the run path, not model quality
    card["audit"].update({"n_boot": 100, "attributes": ["sex", "age_group"], "min_group_size": 5})
    (tasks / "synth-mini" / "task.yaml").write_text(yaml.safe_dump(card))
    return models, tasks


def test_imaging_run_rescore_and_text_backend_refusal(tmp_path, imaging_env, cli):
    models, tasks = imaging_env
    out = tmp_path / "runs"
    args = ["run", "-m", "vit-test", "-t", "synth-mini", "--models-file", str(models), "--tasks-dir", str(tasks), "-o", str(out), "-q"]
    assert cli(*args) == 0
    run_dir = next(out.iterdir())
    results = json.loads((run_dir / "results.json").read_text())
    assert results["schema_version"] >= 1 and results["kind"] == "imaging"
    for name in ("accuracy", "auc", "dp_gap", "eod", "auc_gap", "worst_group_auc", "es_auc", "ece_gap", "underdiag_gap"):
        assert set(results["metrics"][name]) >= {"value", "ci_low", "ci_high", "n"}
    rows = [json.loads(line) for line in (run_dir / "requests.jsonl").read_text().splitlines()]
    assert {r["split"] for r in rows} == {"val", "test"} and len(rows) == results["n_requests"]
    assert (run_dir / "model" / "model.safetensors").is_file()
    before = (run_dir / "results.json").read_bytes()
    assert cli("score", str(run_dir), "--tasks-dir", str(tasks), "-q") == 0
    assert (run_dir / "results.json").read_bytes() == before  # re-scoring reproduces the results
    assert cli(*args) == 0  # resume: everything cached, model reused
    assert json.loads((run_dir / "manifest.json").read_text())["timing"]["n_computed"] == 0
    # a text model on an imaging task is a one-line error, exit code 2
    assert cli("run", "-m", "smollm2-135m", "-t", "synth-mini", "--tasks-dir", str(tasks), "-o", str(out), "-q") == 2


@pytest.mark.integration
def test_seeds_summary(tmp_path, imaging_env, cli):
    models, tasks = imaging_env
    out = tmp_path / "runs"
    assert cli("run", "-m", "vit-test", "-t", "synth-mini", "--seeds", "3", "--models-file", str(models),
               "--tasks-dir", str(tasks), "-o", str(out), "-q") == 0
    summary = json.loads((out / "vit-test__synth-mini__seeds0-2" / "summary.json").read_text())
    assert summary["seeds"] == [0, 1, 2]
    auc = summary["metrics"]["auc"]
    assert auc["n_seeds"] == 3 and auc["ci_low"] <= auc["mean"] <= auc["ci_high"]
    targets = {t["target"] for t in summary["tests"]}
    assert "lesion/sex/auc: female vs male" in targets and "lesion/age_group/auc across groups" in targets
    assert all(t["paired"] for t in summary["tests"])


def test_clip_backend_zero_shot_on_tiny_random_clip(tmp_path):
    """A tiny random CLIP (weights + BPE tokenizer + image processor built here) scores synth images."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizerFast, PreTrainedTokenizerFast

    from benchmark.config import ModelSpec
    from benchmark.backends.image.clip import CLIPBackend
    from benchmark.kinds.image.kind import limit_dataset, load_dataset

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.train_from_iterator(["a chest x-ray with a lung lesion", "a normal chest x-ray radiograph clear lungs nodule"],
                            trainers.BpeTrainer(vocab_size=120, special_tokens=["<unk>", "<|startoftext|>", "<|endoftext|>"]))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<|startoftext|>",
                                   eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    torch.manual_seed(0)
    cfg = CLIPConfig(text_config={"vocab_size": len(fast), "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
                                  "num_attention_heads": 2, "max_position_embeddings": 32, "eos_token_id": fast.eos_token_id},
                     vision_config={"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                                    "image_size": 32, "patch_size": 8}, projection_dim=8)
    CLIPModel(cfg).save_pretrained(tmp_path)
    CLIPProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
                  tokenizer=fast).save_pretrained(tmp_path)
    card = load_task("synth-xray")
    card = card.model_copy(update={"loader_options": {**card.loader_options, "n": 60}})
    ds = limit_dataset(load_dataset(card, None), 5).split("test")
    backend = CLIPBackend(ModelSpec(name="tiny-clip", backend="clip", model=str(tmp_path), device="cpu"), card)
    preds = predict_images(backend, ds)
    assert len(preds) == len(ds) and all(0 < p["probs"][0] < 1 for p in preds)
