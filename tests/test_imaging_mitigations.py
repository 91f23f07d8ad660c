"""Imaging mitigations: FairMed-VLM losses on hand-computable batches, balanced sampling, recipe
pieces (weights, FairTune masks, post-processing), one FairMed-VLM step on a tiny random LLaVA,
and a FairTune search on a tiny ViT."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from benchmark.data.cases import LoadReport
from benchmark.config import ModelSpec
from benchmark.cards.image import ImagingTaskCard
from benchmark.data.image.synth import load_synth_xray
from benchmark.backends.image.balanced import balanced_indices, strata_of
from benchmark.backends.image.losses import concept_infonce, cross_group_supcon, fairness_loss, moment_alignment
from benchmark.backends.image.recipe import Mask, group_label_weights, mask_predicate


# ----- losses on hand-computable batches -----

def test_concept_infonce_hand_value():
    z = torch.tensor([[2.0, 0.0]])  # normalised to (1, 0)
    concepts = torch.tensor([[1.0, 0.0], [0.0, 3.0]])
    loss = concept_infonce(z, concepts, torch.tensor([0]), tau=1.0)
    assert loss.item() == pytest.approx(-math.log(math.e / (math.e + 1.0)), abs=1e-6)
    per_row = concepts.flip(0)[None]  # (N, C, D) per-row candidates: the positive is now second
    assert concept_infonce(z, per_row, torch.tensor([1]), tau=1.0).item() == pytest.approx(loss.item(), abs=1e-6)


def test_supcon_hand_value_and_margin():
    # anchor 0 = (1,0); positive 1 = (cos 60, sin 60) same label, other group; negative 2 = (cos 30, sin 30)
    # other label (similarity 0.866 > 0.3: kept); negative 3 = (0,1)... similarity 0 < margin: dropped.
    a60, a30 = math.radians(60), math.radians(30)
    z = torch.tensor([[1.0, 0.0], [math.cos(a60), math.sin(a60)], [math.cos(a30), math.sin(a30)], [0.0, 1.0]])
    y = torch.tensor([1, 1, 0, 0])
    g = torch.tensor([0, 1, 0, 0])
    tau = 0.5
    got = cross_group_supcon(z, y, g, tau=tau, margin=0.3).item()
    s = z @ z.T
    # Anchors with a positive: 0 (pos 1) and 1 (pos 0). Anchors 2 and 3 are in the same group: skipped.
    def term(i, p):
        negs = [a for a in (2, 3) if s[i, a] > 0.3]
        num = math.exp(s[i, p] / tau)
        return -math.log(num / (num + sum(math.exp(s[i, a] / tau) for a in negs)))
    expected = (term(0, 1) + term(1, 0)) / 2
    assert got == pytest.approx(expected, abs=1e-5)
    # Raising the margin above every similarity removes all negatives: the loss is exactly 0.
    assert cross_group_supcon(z, y, g, tau=tau, margin=0.99).item() == pytest.approx(0.0, abs=1e-7)


def test_supcon_never_nan_without_positives_or_negatives():
    z = torch.randn(6, 4, requires_grad=True)
    # everyone in one group: no anchor has a cross-group positive
    loss = cross_group_supcon(z, torch.tensor([0, 0, 1, 1, 0, 1]), torch.zeros(6, dtype=torch.long))
    loss.backward()
    assert loss.item() == 0.0 and torch.isfinite(z.grad).all()
    # positives but no negatives at all (one label), unknown groups, a single row
    z2 = torch.randn(5, 4, requires_grad=True)
    l2 = cross_group_supcon(z2, torch.zeros(5, dtype=torch.long), torch.tensor([0, 1, -1, 1, 0]))
    l2.backward()
    assert torch.isfinite(l2) and torch.isfinite(z2.grad).all()
    z3 = torch.randn(1, 4, requires_grad=True)
    l3 = cross_group_supcon(z3, torch.tensor([1]), torch.tensor([0]))
    l3.backward()
    assert l3.item() == 0.0 and torch.isfinite(z3.grad).all()
    # identical embeddings (similarity 1 everywhere): still finite
    z4 = torch.ones(4, 3, requires_grad=True)
    l4 = cross_group_supcon(z4, torch.tensor([0, 0, 1, 1]), torch.tensor([0, 1, 0, 1]))
    l4.backward()
    assert torch.isfinite(l4) and torch.isfinite(z4.grad).all() and l4.item() > 0


def test_moment_alignment_hand_value():
    # label 1, attribute groups a/b with two rows each: means (1,0) and (0,1), covariances
    # diag(2,0) and diag(0,2) -> mean-distance 0.5 each, Frobenius distance 2 each.
    z = torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.0, 0.0], [0.0, 2.0], [5.0, 5.0]])
    y = torch.tensor([1, 1, 1, 1, 0])
    groups = torch.tensor([[0], [0], [1], [1], [0]])  # the label-0 row is a lone cell: skipped
    for lam in (0.0, 1.0, 0.5):
        got = moment_alignment(z, y, groups, lambda_sigma=lam).item()
        assert got == pytest.approx((0.5 + lam * 2.0), abs=1e-6)  # mean over the two cells
    # identical groups -> 0; unknown codes are ignored
    same = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0], [9.0, 9.0]])
    assert moment_alignment(same, torch.ones(5), torch.tensor([[0], [0], [1], [1], [-1]])).item() == pytest.approx(0.0, abs=1e-7)


def test_fairness_loss_combines_terms():
    torch.manual_seed(0)
    z = torch.randn(8, 3, requires_grad=True)
    y = torch.tensor([0, 0, 1, 1, 0, 0, 1, 1])
    strata = torch.tensor([0, 1, 0, 1, 1, 0, 1, 0])
    attrs = strata[:, None]
    total, parts = fairness_loss(z, y, strata, attrs, eta1=2.0, eta2=3.0, margin=-1.0)
    assert total.item() == pytest.approx(2.0 * parts["supcon"] + 3.0 * parts["dist"], rel=1e-5)
    off, p0 = fairness_loss(z, y, strata, attrs, eta1=0.0, eta2=1.0)
    assert p0["supcon"] == 0.0 and off.item() == pytest.approx(p0["dist"], rel=1e-6)


# ----- balanced sampling and recipe pieces -----

def test_balanced_indices_cap_and_duplicates():
    strata = np.array(["a"] * 10 + ["b"] * 4 + ["c"] * 2 + ["d"] * 8 + ["unknown"] * 3, dtype=object)
    idx, dup, info = balanced_indices(strata, seed=0, max_ratio=1.5)
    # median of (10, 4, 2, 8) = 6 -> target min(10, 1.5 * 6) = 9
    assert info["target"] == 9
    after = {s: int((strata[idx] == s).sum()) for s in "abcd"}
    assert after == {"a": 10, "b": 9, "c": 9, "d": 9}
    assert (strata[idx] == "unknown").sum() == 3  # kept, never oversampled
    assert dup.sum() == len(idx) - len(strata) and not dup[: len(strata)].any()
    assert np.array_equal(idx, balanced_indices(strata, seed=0)[0])  # seeded


def test_strata_names():
    import pandas as pd

    f = pd.DataFrame({"sex": ["female", None], "age_group": ["60-79", "40-59"]})
    assert list(strata_of(f)) == ["sex=female|age_group=60-79", "unknown"]


def test_group_label_weights_balance_cells():
    g = np.array([0, 0, 0, 1, 1, -1])
    y = np.array([1, 1, 0, 1, 0, 1.0])
    w = group_label_weights(g, y)
    # cells (0,1):2 rows, (0,0):1, (1,1):1, (1,0):1 -> each cell's total weight is equal
    cell = lambda gg, yy: w[(g == gg) & (y == yy)].sum()  # noqa: E731
    assert cell(0, 1) == pytest.approx(cell(0, 0)) == pytest.approx(cell(1, 1))
    assert w.mean() == pytest.approx(1.0)


def test_fairtune_mask_predicate_on_vit_names():
    mask = Mask(attention=[True, False], mlp=[False, True], norm=[False, False], other=False)
    f = mask_predicate(mask)
    for prefix in ("backbone.layers.{i}.", "backbone.encoder.layer.{i}."):
        assert f(prefix.format(i=0) + "attention.q_proj.weight" if "layers" in prefix else prefix.format(i=0) + "attention.attention.query.weight")
        assert not f(prefix.format(i=1) + "attention.o_proj.weight" if "layers" in prefix else prefix.format(i=1) + "attention.output.dense.weight")
        assert not f(prefix.format(i=0) + "layernorm_before.weight")
    assert f("backbone.layers.1.mlp.fc1.weight") and not f("backbone.layers.0.mlp.fc2.weight")
    assert f("backbone.encoder.layer.1.intermediate.dense.weight") and f("backbone.encoder.layer.1.output.dense.bias")
    assert f("head.weight") and not f("backbone.embeddings.patch_embeddings.projection.weight")


# ----- classifier recipes through the backend (tiny synth data) -----

def _tiny_card(n=160):
    return ImagingTaskCard(
        name="synth-tiny", kind="imaging", loader="synth_xray", label_type="binary", labels=["lesion"], image_size=16,
        split_fractions={"train": 0.5, "val": 0.25, "test": 0.25},
        loader_options={"n": n, "size": 16, "shortcut_strength": 1.0}, audit={"min_group_size": 5, "n_boot": 100},
    )


def _tiny_spec(recipe=None, name="vit-t"):
    extra = {"image_size": 16, "patch_size": 8, "hidden_size": 16, "num_layers": 2, "num_heads": 2, "channels": 1,
             "epochs": 1, "lr": 0.001, "batch_size": 32}
    if recipe is not None:
        extra["recipe"] = recipe
    return ModelSpec(name=name, backend="mitigated-classifier" if recipe is not None else "classifier", model="scratch", extra=extra)


def test_threshold_postprocess_fits_on_validation_and_sets_decisions(tmp_path):
    from benchmark.kinds.image.evaluate import endpoint_frame
    from benchmark.backends.image.recipe import MitigatedClassifierBackend
    from benchmark.kinds.image.kind import predict_images

    card = _tiny_card()
    ds = load_synth_xray(card, None, LoadReport())
    b = MitigatedClassifierBackend(_tiny_spec({"postprocess": {"constraint": "demographic_parity"}}), card, seed=0)
    rep = b.fit(ds.split("train"), ds.split("val"), tmp_path)
    assert rep["postprocess"]["fitted_on"] == "validation" and rep["postprocess"]["n_val"] == len(ds.split("val"))
    ev = ds.frame[ds.frame["split"] != "train"].reset_index(drop=True)
    from benchmark.data.image.dataset import ImagingDataset

    eval_ds = ImagingDataset(ev, ds.label_type, ds.labels, ds.reader)
    preds = predict_images(b, eval_ds)
    assert all(p["decisions"][0] in (0.0, 1.0) for p in preds)
    assert preds == predict_images(b, eval_ds)  # randomised decisions are keyed by (seed, image id)
    rows = [{**p, "id": r["id"], "patient_id": r["patient_id"], "split": r["split"], "sex": r["sex"], "age_group": r["age_group"],
             "race": None, "targets": [r["lesion"]]} for p, (_, r) in zip(preds, ev.iterrows())]
    df, info = endpoint_frame(rows, card)
    assert df["d:lesion"].tolist() == [p["decisions"][0] for p in preds]
    assert any("post-processing" in n for n in info["notes"])


def test_adversarial_reweighting_balanced_recipe_trains(tmp_path):
    from benchmark.backends.image.recipe import MitigatedClassifierBackend

    card = _tiny_card()
    ds = load_synth_xray(card, None, LoadReport())
    recipe = {"adversary": {"attribute": "sex"}, "sample_weight": "group_label", "balanced": True,
              "lora": {"r": 4, "alpha": 8}}
    b = MitigatedClassifierBackend(_tiny_spec(recipe), card, seed=0)
    rep = b.fit(ds.split("train"), ds.split("val"), tmp_path)
    assert rep["balanced"]["target"] > 0 and np.isfinite(rep["train_loss"]).all()
    names = [n for n, p in b.model.named_parameters() if p.requires_grad]
    assert any("lora_" in n for n in names) and not any(n.endswith("q_proj.base_layer.weight") for n in names)
    assert (tmp_path / "model" / "model.safetensors").is_file()


def test_mitigate_registers_recipe_models_and_rejects_text_base(tmp_path, monkeypatch):
    from benchmark.errors import FairbenchError
    from benchmark.mitigations.base import Context
    from benchmark.mitigations.fairmed_vlm import FairMedVLM, FairMedVLMConfig
    from benchmark.mitigations.base import ImagingTaskData

    card = _tiny_card()
    ds = load_synth_xray(card, None, LoadReport())
    data = ImagingTaskData(card, ds.split("train"), ds.split("val"))
    art = FairMedVLM().apply(_tiny_spec(), data, FairMedVLMConfig(), Context(tmp_path, 0, None))
    assert set(art.models) == {"fairmed-vlm", "fairmed-vlm-no-demo-prompts", "fairmed-vlm-no-fairness",
                               "fairmed-vlm-no-balanced", "fairmed-vlm-no-contrastive"}
    r = {k: v["extra"]["recipe"] for k, v in art.models.items()}
    assert r["fairmed-vlm"]["balanced"] and not r["fairmed-vlm-no-balanced"]["balanced"]
    assert r["fairmed-vlm-no-contrastive"]["fairmed"]["eta1"] == 0 and r["fairmed-vlm-no-fairness"]["fairmed"]["fairness"] is False
    assert r["fairmed-vlm"]["fairmed"]["lam"] == 0.1 and r["fairmed-vlm"]["lora"]["r"] == 32 and r["fairmed-vlm"]["lora"]["alpha"] == 64
    assert all(v["backend"] == "mitigated-classifier" for v in art.models.values())
    text = ModelSpec(name="llm", backend="hf", model="x")
    with pytest.raises(FairbenchError, match="classifier"):
        FairMedVLM().apply(text, data, FairMedVLMConfig(), Context(tmp_path, 0, None))


# ----- FairMed-VLM on a tiny random LLaVA -----

def test_fairmed_vlm_one_training_step_on_tiny_llava():
    from peft import get_peft_model
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    from benchmark.mitigations.fairmed_llava import VLMBatch, concept_embeddings, llava_lora_config, train_step
    from benchmark.backends.image.recipe import FairMed

    torch.manual_seed(0)
    vision = CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=16, patch_size=8)
    text = LlamaConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2, vocab_size=64)
    model = LlavaForConditionalGeneration(LlavaConfig(vision_config=vision, text_config=text, image_token_index=60))
    model = get_peft_model(model, llava_lora_config(r=32, alpha=64))
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("language_model" in n and "lora_" in n for n in trainable)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}

    n_img = (16 // 8) ** 2  # 4 image tokens (CLS dropped by the default feature strategy)
    B = 6
    prompt = [1] + [60] * n_img + [5, 6, 7]
    ids = torch.tensor([prompt + [10 + (i % 2), 2] for i in range(B)])
    labels = torch.full_like(ids, -100)
    labels[:, len(prompt):] = ids[:, len(prompt):]
    batch = VLMBatch(
        input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=torch.randn(B, 3, 16, 16), labels=labels,
        y=torch.tensor([i % 2 for i in range(B)]), strata=torch.tensor([0, 0, 1, 1, 2, 2]),
        attributes=torch.tensor([[0, 0], [0, 0], [1, 0], [1, 0], [0, 1], [0, 1]]),
    )
    concepts = concept_embeddings(model, torch.tensor([[20, 21, 22], [23, 24, 25]]), torch.ones(2, 3, dtype=torch.long))
    assert concepts.shape == (2, 16)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    parts = train_step(model, opt, batch, concepts, FairMed(margin=-1.0), stage2=True)
    assert all(math.isfinite(v) for v in parts.values()) and {"qa", "concept", "supcon", "dist"} <= set(parts)
    changed = {n for n, p in model.named_parameters() if not torch.equal(p.detach(), before[n])}
    assert changed and changed <= set(trainable)  # the vision tower and base weights stay frozen


# ----- FairTune on a tiny ViT -----

def test_fairtune_search_saves_mask_and_lr(tmp_path):
    from benchmark.mitigations.base import Context
    from benchmark.mitigations.fairtune import FairTune, FairTuneConfig
    from benchmark.mitigations.base import ImagingTaskData

    card = _tiny_card(n=200)
    ds = load_synth_xray(card, None, LoadReport())
    data = ImagingTaskData(card, ds.split("train"), ds.split("val"))
    cfg = FairTuneConfig(n_trials=3, search_epochs=1, lr_min=1e-3, lr_max=1e-2)
    art = FairTune().apply(_tiny_spec(), data, cfg, Context(tmp_path, 0, None))
    saved = json.loads((tmp_path / "fairtune.json").read_text())
    assert len(saved["trials"]) == 3 and saved["split"] == "validation" and saved["direction"] == "maximize"
    assert saved["best_value"] == max(t["value"] for t in saved["trials"])
    recipe = art.models["fairtune"]["extra"]["recipe"]
    assert 1e-3 <= recipe["lr"] <= 1e-2 and recipe["lr"] == saved["lr"]
    assert len(recipe["mask"]["attention"]) == len(recipe["mask"]["mlp"]) == len(recipe["mask"]["norm"]) == 2


# ----- the multi-seed leaderboard -----

def _fake_seeds(root, model, values):
    from benchmark.seeds import summarize
    from benchmark.store import dumps

    dirs, results = [], []
    for seed, (auc, dp) in enumerate(values):
        d = root / f"{model}__seed{seed}"
        d.mkdir(parents=True)
        r = {"schema_version": 2, "kind": "imaging-test", "run": {"model": model, "task": "synth-xray", "seed": seed, "base_model": None}, "n_test": 100,
             "metrics": {"accuracy": {"value": auc - 0.1}, "auc": {"value": auc}, "dp_gap": {"value": dp}, "eod": {"value": dp},
                         "worst_group_auc": {"value": auc - 0.05}}}
        (d / "results.json").write_text(dumps(r))
        dirs.append(d)
        results.append(r)
    out = root / f"{model}__seeds"
    out.mkdir()
    (out / "summary.json").write_text(dumps(summarize(results, dirs)))
    return out


def test_seeds_leaderboard_paired_against_reference(tmp_path, cli):
    erm = _fake_seeds(tmp_path, "erm", [(0.70, 0.30), (0.72, 0.28), (0.71, 0.33), (0.69, 0.31), (0.73, 0.29)])
    mit = _fake_seeds(tmp_path, "erm+fix", [(0.69, 0.10), (0.72, 0.09), (0.70, 0.14), (0.69, 0.12), (0.72, 0.08)])
    out = tmp_path / "lb" / "mitigation-imaging"
    assert cli("leaderboard", str(erm), str(mit), "-o", str(out)) == 2  # --reference is required
    assert cli("leaderboard", str(erm), str(mit), "-o", str(out), "--reference", "erm") == 0
    import pandas as pd
    from scipy import stats as sps

    df = pd.read_csv(out.with_suffix(".csv")).set_index("model")
    a = [0.10, 0.09, 0.14, 0.12, 0.08]
    b = [0.30, 0.28, 0.33, 0.31, 0.29]
    assert df.loc["erm+fix", "dp_gap"] == pytest.approx(np.mean(a), abs=1e-6)
    assert df.loc["erm+fix", "dp_gap_diff"] == pytest.approx(np.mean(a) - np.mean(b), abs=1e-6)
    assert df.loc["erm+fix", "dp_gap_p"] == pytest.approx(sps.ttest_rel(a, b).pvalue, rel=1e-4)
    assert df.loc["erm+fix", "dp_gap_p_holm"] >= df.loc["erm+fix", "dp_gap_p"]
    half = sps.t.ppf(0.975, 4) * np.std(a, ddof=1) / np.sqrt(5)
    assert df.loc["erm+fix", "dp_gap_ci_high"] == pytest.approx(np.mean(a) + half, abs=1e-5)
    md = out.with_suffix(".md").read_text()
    assert "`erm+fix`" in md and "tradeoff.png" in md and (tmp_path / "lb" / "mitigation-imaging.tradeoff.png").is_file()
