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
from seeds_fixtures import auc_dp_seeds as _fake_seeds


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
    idx, dup, info = balanced_indices(strata, seed=0, max_ratio=1.5, max_duplication=10)
    # median of (10, 4, 2, 8) = 6 -> target min(10, 1.5 * 6) = 9
    assert info["target"] == 9
    after = {s: int((strata[idx] == s).sum()) for s in "abcd"}
    assert after == {"a": 10, "b": 9, "c": 9, "d": 9}
    # The declared duplication cap (paper: mild oversampling <= 1.3x): a stratum grows to at most
    # floor(1.3 x its size), so the 2-row stratum is not repeated 4.5 times over.
    idx, dup, info = balanced_indices(strata, seed=0, max_ratio=1.5)
    after = {s: int((strata[idx] == s).sum()) for s in "abcd"}
    assert after == {"a": 10, "b": 5, "c": 2, "d": 9}
    assert info["max_duplication"] == 1.3 and info["strata"]["c"]["capped"] and not info["strata"]["d"]["capped"]
    # how batches are balanced: uniform shuffle, so the expected share of a batch is n_after / N
    assert info["strata"]["b"]["batch_share"] == pytest.approx(5 / len(idx), abs=1e-6) and len(idx) == 10 + 5 + 2 + 9 + 3
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


def test_adversarial_reweighting_balanced_recipe_trains(tmp_path, monkeypatch):
    import benchmark.backends.image.recipe as recipe_mod
    from benchmark.backends.image.recipe import MitigatedClassifierBackend, codes

    card = _tiny_card()
    ds = load_synth_xray(card, None, LoadReport())
    recipe = {"adversary": {"attribute": "sex"}, "sample_weight": "group_label", "balanced": True,
              "lora": {"r": 4, "alpha": 8}}
    seen = {}
    real = recipe_mod.train_classifier

    def spy(model, train, val, cfg, **kw):  # the real loop, with its inputs and the adversary kept for checks
        seen.update(kw)
        seen["extra_before"] = [p.detach().clone() for p in kw["extra_parameters"] or []]
        return real(model, train, val, cfg, **kw)

    monkeypatch.setattr(recipe_mod, "train_classifier", spy)
    b = MitigatedClassifierBackend(_tiny_spec(recipe), card, seed=0)
    train = ds.split("train")
    rep = b.fit(train, ds.split("val"), tmp_path)
    assert rep["balanced"]["target"] > 0 and np.isfinite(rep["train_loss"]).all()
    names = [n for n, p in b.model.named_parameters() if p.requires_grad]
    assert any("lora_" in n for n in names) and not any(n.endswith("q_proj.base_layer.weight") for n in names)
    assert (tmp_path / "model" / "model.safetensors").is_file()

    # The weights reach the loss: inverse (sex x lesion) frequency of the train split, in the balanced order.
    # synth-xray plants lesion rates 0.25 (female) vs 0.45 (male), so female positives are the rarest cell
    # and get the largest weight; uniform weights (reweighting dropped) fail this.
    w = np.asarray(seen["sample_weight"])
    g, cats = codes(train.frame["sex"])
    y = train.frame["lesion"].to_numpy(float)
    full = group_label_weights(g, y)
    assert len(w) >= len(full) and np.isin(np.round(w, 9), np.round(np.unique(full), 9)).all()  # rows of `full`, rebalanced
    f, m = cats.index("female"), cats.index("male")
    assert full[(g == f) & (y == 1)].mean() > full[(g == m) & (y == 0)].mean() * 1.5
    assert w.std() > 0.1
    # The adversary is trained: its head's parameters received gradient and moved (dropping the
    # adversary or its loss leaves them without gradient, and AdamW skips them).
    extra = seen["extra_parameters"]
    assert extra and seen["loss_hook"] is not None
    assert all(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in extra)
    assert all(not torch.equal(p.detach(), before) for p, before in zip(extra, seen["extra_before"]))


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


def _fairmed_spec(art, suffix, name="vit-t+fm"):
    """The registered derived model ``suffix`` as a ModelSpec (what `fairbench run` would load)."""
    return ModelSpec(name=name, model="scratch", **art.models[suffix])


def test_mitigate_trains_the_registered_fairmed_recipe(tmp_path):
    """The registered fairmed-vlm entry, trained for real: Stage 1 has no fairness terms, Stage 2
    has them, the checkpoint is a Stage-2 epoch, and the weights differ from the same recipe
    without its FairMed part (so the recipe was applied)."""
    from benchmark.backends.image.recipe import MitigatedClassifierBackend
    from benchmark.mitigations.base import Context, ImagingTaskData
    from benchmark.mitigations.fairmed_vlm import FairMedVLM, FairMedVLMConfig

    card = _tiny_card()
    ds = load_synth_xray(card, None, LoadReport())
    data = ImagingTaskData(card, ds.split("train"), ds.split("val"))
    cfg = FairMedVLMConfig(epochs=2, lora={"r": 4, "alpha": 8}, ablations=[])
    art = FairMedVLM().apply(_tiny_spec(), data, cfg, Context(tmp_path, 0, None))
    spec = _fairmed_spec(art, "fairmed-vlm")
    b = MitigatedClassifierBackend(spec, card, seed=0)
    rep = b.fit(ds.split("train"), ds.split("val"), tmp_path / "full")
    terms = rep["fairmed_terms"]
    assert terms["supcon"][0] is None and terms["dist"][0] is None  # Stage 1: regulariser off
    assert terms["supcon"][1] is not None and terms["dist"][1] > 0 and terms["concept"][0] > 0
    assert rep["selection"] == {"criterion": "stage2-val-loss", "eligible_epochs": [2, 2], "epoch": 2, "stage": 2}
    assert rep["balanced"]["target"] > 0 and any("lora_" in n for n, _ in b.model.named_parameters())
    plain = dict(spec.extra["recipe"], fairmed=None)
    erm = MitigatedClassifierBackend(spec.model_copy(update={"extra": {**spec.extra, "recipe": plain}}), card, seed=0)
    erm.fit(ds.split("train"), ds.split("val"), tmp_path / "plain")
    assert not torch.allclose(b.model.head.weight, erm.model.head.weight)


def test_fairmed_selection_is_restricted_to_stage2_epochs(tmp_path):
    """train_classifier with select_from=2 never returns epoch 1, even when epoch 1 has the lowest
    validation loss (here later epochs ascend the BCE on purpose)."""
    from benchmark.backends.image.classifier import build_classifier
    from benchmark.backends.image.inputs import TensorView
    from benchmark.backends.image.train import TrainConfig, base_loss, train_classifier

    card = _tiny_card()
    ds = load_synth_xray(card, None, LoadReport())
    spec = _tiny_spec()

    def fit(select_from):
        model, inputs = build_classifier(spec, card, 1)
        view = lambda d: TensorView(d, inputs["size"], inputs["channels"], inputs["mean"], inputs["std"])
        state = {"epoch": 0}
        # From epoch 2 on, ascend the task loss: validation loss gets worse after epoch 1.
        hook = lambda b: -20.0 * base_loss(b.logits, b.targets, False).mean() if state["epoch"] >= 1 else b.logits.sum() * 0
        progress = lambda e, tl, vl: state.update(epoch=e)
        cfg = TrainConfig(epochs=3, lr=1e-2, batch_size=32, select_from=select_from)
        return train_classifier(model, view(ds.split("train")), view(ds.split("val")), cfg, multiclass=False,
                                loss_hook=hook, progress=progress)

    rep = fit(select_from=2)
    assert rep.val_loss[0] < min(rep.val_loss[1:])  # epoch 1 would win on validation loss alone
    assert rep.best_epoch == 1 + int(np.argmin(rep.val_loss[1:])) + 1 >= 2
    assert fit(select_from=1).best_epoch == 1


def test_fairmed_demographic_prompt_is_an_input_token_in_training_only(tmp_path, monkeypatch):
    """Paper 001 Sec. 3.3: the demographic prefix is prepended to the model's input (one extra ViT
    token after [CLS]) during training only; the concept targets are the plain concept texts; the
    no-demo-prompts ablation adds no token."""
    import benchmark.backends.image.recipe as recipe_mod
    from benchmark.backends.image.recipe import MitigatedClassifierBackend

    card = _tiny_card()
    ds = load_synth_xray(card, None, LoadReport())
    embedded: list[str] = []
    real = recipe_mod.embed_texts

    def recording(texts, device="cpu"):
        embedded.extend(texts)
        return real(texts, device)

    monkeypatch.setattr(recipe_mod, "embed_texts", recording)

    def train(demographic_prompts):
        embedded.clear()
        recipe = {"method": "fairmed-vlm", "balanced": True, "epochs": 2,
                  "fairmed": {"demographic_prompts": demographic_prompts}}
        b = MitigatedClassifierBackend(_tiny_spec(recipe), card, seed=0)
        lengths = {True: set(), False: set()}
        layer = b.model.backbone.encoder.layer[0] if hasattr(b.model.backbone, "encoder") else b.model.backbone.layers[0]
        layer.register_forward_hook(lambda m, i, o: lengths[m.training].add(i[0].shape[1]))
        b.fit(ds.split("train"), ds.split("val"), tmp_path / str(demographic_prompts))
        b.probabilities([lambda i=i: ds.split("test").read(i) for i in range(4)])
        return lengths, list(embedded)

    n_tokens = 1 + (16 // 8) ** 2  # [CLS] + patches
    lengths, texts = train(True)
    assert lengths == {True: {n_tokens + 1}, False: {n_tokens}}  # prefix token in training, never at validation / inference
    prompts = [t for t in texts if t.startswith("Patient:")]
    assert any(t.startswith("Patient: Female, Age group: ") for t in prompts) and len(prompts) >= 2
    assert all(not t.startswith("Patient:") for t in recipe_mod.concept_texts(card))
    assert [t for t in texts if not t.startswith("Patient:")] == recipe_mod.concept_texts(card)  # plain concept targets
    lengths, texts = train(False)
    assert lengths == {True: {n_tokens}, False: {n_tokens}} and not any(t.startswith("Patient:") for t in texts)


def _flatten(d, prefix=""):
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def test_fairmed_ablations_differ_from_the_full_method_only_in_the_ablated_part(tmp_path):
    from benchmark.mitigations.base import Context, ImagingTaskData
    from benchmark.mitigations.fairmed_vlm import FairMedVLM, FairMedVLMConfig

    card = _tiny_card()
    ds = load_synth_xray(card, None, LoadReport())
    data = ImagingTaskData(card, ds.split("train"), ds.split("val"))
    art = FairMedVLM().apply(_tiny_spec(), data, FairMedVLMConfig(epochs=3), Context(tmp_path, 0, None))
    resolved = {k: _flatten(v["extra"]["recipe"]) for k, v in art.models.items()}  # after Recipe validation + defaults
    full = resolved.pop("fairmed-vlm")
    expected = {"fairmed-vlm-no-demo-prompts": {"fairmed.demographic_prompts"}, "fairmed-vlm-no-fairness": {"fairmed.fairness"},
                "fairmed-vlm-no-balanced": {"balanced"}, "fairmed-vlm-no-contrastive": {"fairmed.eta1"}}
    assert set(resolved) == set(expected)
    for name, r in resolved.items():
        assert set(r) == set(full), name
        diff = {k for k in full if k != "method" and r[k] != full[k]}
        assert diff == expected[name], name


# ----- FairMed-VLM on a tiny random LLaVA -----

def _supcon_reference(z, y, g, tau, margin):
    """Paper 001's L_supcon written out with loops (independent of losses.py): positives share the
    label and differ in group; negatives have another label and cosine similarity > margin; mean
    over anchors with a positive."""
    z = torch.nn.functional.normalize(z.double(), dim=-1)
    n, per_anchor = len(z), []
    for i in range(n):
        pos = [p for p in range(n) if p != i and y[p] == y[i] and g[p] != g[i]]
        if not pos:
            continue
        neg = [a for a in range(n) if y[a] != y[i] and float(z[i] @ z[a]) > margin]
        terms = []
        for p in pos:
            sp = math.exp(float(z[i] @ z[p]) / tau)
            terms.append(-math.log(sp / (sp + sum(math.exp(float(z[i] @ z[a]) / tau) for a in neg))))
        per_anchor.append(sum(terms) / len(terms))
    return sum(per_anchor) / len(per_anchor)


def test_fairmed_vlm_one_training_step_on_tiny_llava():
    from peft import get_peft_model
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    from benchmark.backends.image.recipe import FairMed
    from benchmark.mitigations.fairmed_llava import (
        VLMBatch,
        concept_embeddings,
        llava_lora_config,
        pooled_image_embedding,
        train_step,
    )

    torch.manual_seed(0)
    vision = CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=16, patch_size=8)
    text = LlamaConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2, vocab_size=64)
    model = LlavaForConditionalGeneration(LlavaConfig(vision_config=vision, text_config=text, image_token_index=60))
    model = get_peft_model(model, llava_lora_config(r=32, alpha=64))
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    # LoRA on the language model and on the projector; nothing in the vision tower
    assert trainable and all("lora_" in n and ("language_model" in n or "multi_modal_projector" in n) for n in trainable)
    assert any("multi_modal_projector" in n for n in trainable) and not any("vision_tower" in n for n in trainable)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}

    n_img = (16 // 8) ** 2  # 4 image tokens (CLS dropped by the default feature strategy)
    B = 6
    prompt = [1] + [60] * n_img + [5, 6, 7]
    ys = [0, 1, 1, 0, 1, 0]  # chosen so that some anchors' only hard negatives fall below the margin
    ids = torch.tensor([prompt + [10 + ys[i], 2] for i in range(B)])
    labels = torch.full_like(ids, -100)
    labels[:, len(prompt):] = ids[:, len(prompt):]
    batch = VLMBatch(
        input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=torch.randn(B, 3, 16, 16), labels=labels,
        y=torch.tensor(ys), strata=torch.tensor([0, 0, 1, 1, 2, 2]),
        attributes=torch.tensor([[0, 0], [0, 0], [1, 0], [1, 0], [0, 1], [0, 1]]),
    )
    concepts = concept_embeddings(model, torch.tensor([[20, 21, 22], [23, 24, 25]]), torch.ones(2, 3, dtype=torch.long))
    assert concepts.shape == (2, 16)
    fm = FairMed()  # the paper's margin 0.3, tau 0.07: the hard-negative filter is on
    model.train()
    with torch.no_grad():
        z, _ = pooled_image_embedding(model, batch)  # the representation the fairness terms act on
    zn = torch.nn.functional.normalize(z, dim=-1)
    cross = (zn @ zn.T)[batch.y[:, None] != batch.y[None, :]]
    assert (cross > fm.margin).any() and (cross <= fm.margin).any()  # the margin keeps some negatives, drops others
    y, g = batch.y.tolist(), batch.strata.tolist()
    filtered = _supcon_reference(z, y, g, fm.tau, fm.margin)
    unfiltered = _supcon_reference(z, y, g, fm.tau, -2.0)
    assert abs(filtered - unfiltered) > 1e-2  # so the check below fails if the filter were removed

    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    parts = train_step(model, opt, batch, concepts, fm, stage2=True)
    assert all(math.isfinite(v) for v in parts.values()) and {"qa", "concept", "supcon", "dist"} <= set(parts)
    assert parts["supcon"] == pytest.approx(filtered, rel=1e-4)  # on the pooled image embedding, margin applied
    assert parts["dist"] == pytest.approx(float(moment_alignment(zn, batch.y, batch.attributes)), rel=1e-4)
    changed = {n for n, p in model.named_parameters() if not torch.equal(p.detach(), before[n])}
    assert changed and changed <= set(trainable)  # the vision tower and base weights stay frozen
    assert any("multi_modal_projector" in n for n in changed)


# ----- FairTune on a tiny ViT -----

def test_fairtune_search_saves_mask_and_lr(tmp_path, monkeypatch):
    from safetensors.torch import load_file

    from benchmark.backends.image.recipe import MitigatedClassifierBackend
    from benchmark.mitigations.base import Context, ImagingTaskData
    from benchmark.mitigations.fairtune import FairTune, FairTuneConfig

    monkeypatch.setenv("FAIRBENCH_CACHE", str(tmp_path / "cache"))
    card = _tiny_card(n=200)
    ds = load_synth_xray(card, None, LoadReport())
    data = ImagingTaskData(card, ds.split("train"), ds.split("val"))
    cfg = FairTuneConfig(n_trials=3, search_epochs=1, pretrain={"n": 120, "epochs": 1, "split_seed": 7})
    for d in ("a", "b"):
        (tmp_path / d).mkdir()
    art = FairTune().apply(_tiny_spec(), data, cfg, Context(tmp_path / "a", 0, None))
    saved = json.loads((tmp_path / "a" / "fairtune.json").read_text())
    assert len(saved["trials"]) == 3 and saved["split"] == "validation" and saved["direction"] == "maximize"
    assert saved["best_value"] == max(t["value"] for t in saved["trials"])
    recipe = art.models["fairtune"]["extra"]["recipe"]
    assert 1e-5 <= recipe["lr"] <= 1e-3 and recipe["lr"] == saved["lr"]  # the official log-uniform range
    mask = recipe["mask"]
    assert len(mask["attention"]) == len(mask["mlp"]) == len(mask["norm"]) == 2 and mask == saved["mask"]
    # The search started from a pre-trained backbone, cached and recorded by path and SHA-256.
    init = recipe["init"]
    assert init["sha256"] == saved["pretrain"]["sha256"] and saved["pretrain"]["reused"] is False
    pre = load_file(init["backbone"])
    # The control: same weights and learning rate, every parameter trained.
    control = art.models["fairtune-fullft"]["extra"]["recipe"]
    assert control["init"] == init and control["lr"] == recipe["lr"] and "mask" not in control

    # The run trains with the mask: frozen backbone tensors stay bit-identical to the pre-trained ones,
    # the unfrozen ones move. Ignoring the mask (or the init) fails this.
    bits = mask["attention"] + mask["mlp"] + mask["norm"]
    assert any(bits) and not all(bits)  # this seeded search chose a genuine subset
    b = MitigatedClassifierBackend(_tiny_spec(recipe), _tiny_card(n=200), seed=1)
    b.fit(ds.split("train"), ds.split("val"), tmp_path / "run")
    from benchmark.backends.image.recipe import Mask, mask_predicate

    trainable = mask_predicate(Mask(**mask))
    tuned = b.model.backbone.state_dict()
    frozen = [k for k in pre if not trainable("backbone." + k)]
    moved = [k for k in pre if trainable("backbone." + k)]
    assert frozen and moved
    assert all(torch.equal(tuned[k], pre[k]) for k in frozen)
    assert all(not torch.equal(tuned[k], pre[k]) for k in moved)
    # A second search with the same pre-training settings reuses the cached backbone.
    FairTune().apply(_tiny_spec(), data, cfg.model_copy(update={"n_trials": 1}), Context(tmp_path / "b", 0, None))
    again = json.loads((tmp_path / "b" / "fairtune.json").read_text())["pretrain"]
    assert again["reused"] is True and again["sha256"] == init["sha256"]


def test_fairtune_init_checks_the_weights(tmp_path):
    from safetensors.torch import save_file

    from benchmark.backends.image.classifier import build_classifier
    from benchmark.backends.image.recipe import Init, load_init
    from benchmark.errors import FairbenchError

    model, _ = build_classifier(_tiny_spec(), _tiny_card(), 1)
    path = tmp_path / "w.safetensors"
    save_file({k: torch.zeros_like(v) for k, v in model.backbone.state_dict().items()}, str(path))
    with pytest.raises(FairbenchError, match="SHA-256"):
        load_init(model, Init(backbone=str(path), sha256="0" * 64))
    import hashlib

    load_init(model, Init(backbone=str(path), sha256=hashlib.sha256(path.read_bytes()).hexdigest()))
    assert all(float(v.abs().sum()) == 0 for v in model.backbone.state_dict().values())
    # The pretext images must not be the task's own: another generator seed, and no sex signal.
    from benchmark.data.image.synth import generate, pretext

    card = _tiny_card(n=60)
    with pytest.raises(FairbenchError, match="split_seed"):
        pretext(card, card.split_seed, 60)
    images, targets = pretext(card, 7, 60)
    task_images = generate(card)[1]
    assert images.shape == task_images.shape and not np.allclose(images, task_images)
    assert targets.shape == (60, 2) and np.isnan(targets[targets[:, 0] == 0, 1]).all()


# ----- the multi-seed leaderboard -----

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


# ----- the imaging board's cards -----

def test_synth_balanced_card_gives_a_perfect_classifier_no_dp_gap():
    """synth-xray plants lesion base rates 0.25 vs 0.45 by sex, so a perfect classifier's dp_gap is ~0.20
    there; synth-xray-balanced plants equal rates, so its dp_gap is ~0 and eod is 0 on both."""
    from benchmark.audits.group import gap_metrics
    from benchmark.backends.image.recipe import codes
    from benchmark.cards import load_task
    from benchmark.data.image.synth import generate

    gaps = {}
    for name in ("synth-xray", "synth-xray-balanced"):
        card = load_task(name)
        frame, _ = generate(card)
        y = frame["lesion"].to_numpy(float)
        g, _ = codes(frame["sex"])
        gaps[name] = gap_metrics(y, y, y, g, 2, 10, False)  # scores = decisions = the truth
    assert gaps["synth-xray"]["dp_gap"] == pytest.approx(0.20, abs=0.05)
    assert gaps["synth-xray-balanced"]["dp_gap"] == pytest.approx(0.0, abs=0.04)
    assert gaps["synth-xray"]["eod"] == gaps["synth-xray-balanced"]["eod"] == 0.0
    bal = load_task("synth-xray-balanced")
    assert bal.loader_options["lesion_contrast"] == load_task("synth-xray").loader_options["lesion_contrast"]


def test_erm_lora_control_uses_the_lora_methods_adapter(tmp_path, monkeypatch):
    """`erm-lora` is ERM through the very adapter the LoRA methods use: no fairness term, no balancing,
    no weights -- so a LoRA method's difference from it is its fairness machinery."""
    from benchmark.mitigations.base import Context, ImagingTaskData
    from benchmark.mitigations.baselines import ErmLora, ErmLoraConfig
    from benchmark.mitigations.fairmed_vlm import FairMedVLM, FairMedVLMConfig
    from benchmark.registry import names

    card = _tiny_card()
    ds = load_synth_xray(card, None, LoadReport())
    data = ImagingTaskData(card, ds.split("train"), ds.split("val"))
    (tmp_path / "c").mkdir()
    (tmp_path / "f").mkdir()
    control = ErmLora().apply(_tiny_spec(), data, ErmLoraConfig(), Context(tmp_path / "c", 0, None)).models["erm-lora"]["extra"]["recipe"]
    full = FairMedVLM().apply(_tiny_spec(), data, FairMedVLMConfig(), Context(tmp_path / "f", 0, None)).models["fairmed-vlm"]["extra"]["recipe"]
    assert control["lora"] == full["lora"] and control.get("epochs") == full.get("epochs") and control.get("lr") == full.get("lr")
    assert not control.get("balanced") and "fairmed" not in control and "adversary" not in control and "sample_weight" not in control
    assert "erm-lora" in names("mitigations") and "init" not in control  # the base's own init unless asked
    # With `pretrain`, it starts from the cached pretext backbone (as a LoRA method given the same weights would).
    import hashlib

    monkeypatch.setenv("FAIRBENCH_CACHE", str(tmp_path / "cache"))
    (tmp_path / "p").mkdir()
    cfg = ErmLoraConfig(pretrain={"n": 60, "epochs": 1, "split_seed": 7})
    pre = ErmLora().apply(_tiny_spec(), data, cfg, Context(tmp_path / "p", 0, None)).models["erm-lora"]["extra"]["recipe"]["init"]
    with open(pre["backbone"], "rb") as f:
        assert hashlib.sha256(f.read()).hexdigest() == pre["sha256"]
    # fairmed-vlm given the same `pretrain` starts from the very same cached bytes, in every ablation
    # (the like-for-like pairing of the board's LoRA rows).
    (tmp_path / "fp").mkdir()
    fm = FairMedVLM().apply(_tiny_spec(), data, FairMedVLMConfig(pretrain={"n": 60, "epochs": 1, "split_seed": 7}),
                            Context(tmp_path / "fp", 0, None)).models
    assert {m["extra"]["recipe"]["init"]["sha256"] for m in fm.values()} == {pre["sha256"]}
