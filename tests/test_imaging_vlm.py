"""The vlm backend (tiny random LLaVA built here) and answer normalisation Φ."""

from __future__ import annotations

import json

import pytest
import torch
from vlm_fixtures import build_tiny_llava

from benchmark.config import ModelSpec
from benchmark.errors import FairbenchError
from benchmark.kinds.image.answers import canonical, normalise, row_from_answers, vocabulary
from benchmark.backends.image.vlm import VLMBackend
from benchmark.kinds.image.kind import limit_dataset, load_dataset
from benchmark.kinds.image.evaluate import endpoint_frame, image_rows
from benchmark.requests import pil_image
from benchmark.kinds.image.kind import predict_images
from benchmark.cards import load_task


@pytest.fixture(scope="module")
def tiny_llava(tmp_path_factory):
    return build_tiny_llava(tmp_path_factory.mktemp("tiny-llava"))


@pytest.fixture(scope="module")
def card():
    c = load_task("synth-xray")
    return c.model_copy(update={"loader_options": {**c.loader_options, "n": 60}})


def _with_vlm(card, **update):
    return card.model_copy(update={"vlm": card.vlm.model_copy(update=update)})


def test_phi_canonicalises_and_maps_vocabulary(card):
    spec = card.vlm  # synonyms: Yes <- present, lesion, positive; No <- absent, normal, negative
    assert canonical("  YES!!\n") == "yes" and canonical("x-ray_film") == "x ray film"
    assert normalise("Yes.", spec) == "Yes" and normalise("ABSENT", spec) == "No"
    assert normalise("No, the lungs look normal.", spec) == "No"  # leading answer wins
    assert normalise("I can see a lesion in the left lung", spec) == "Yes"  # only one option's words
    assert normalise("There is no lesion", spec) is None  # names both options: ambiguous, invalid
    assert normalise("Maybe", spec) is None and normalise("", spec) is None and normalise(None, spec) is None
    assert normalise("Yesterday", spec) is None  # whole words only
    with pytest.raises(FairbenchError, match="vlm.synonyms"):
        vocabulary(_with_vlm(card, synonyms={"Yes": ["ok"], "No": ["OK!"]}).vlm)


def test_rows_from_answers_choice_generate_multiclass(card):
    row = row_from_answers({"lesion": {"option_logprobs": [-1.0, -2.0]}}, card)
    assert row["valid"] and row["probs"][0] == pytest.approx(1 / (1 + pow(2.718281828459045, -1.0)))
    assert row_from_answers({"lesion": {"raw_output": "No."}}, card)["probs"] == [0.0]
    bad = row_from_answers({"lesion": {"raw_output": "the image is blurry"}}, card)
    assert bad == {"probs": None, "valid": False, "answers_read": {"lesion": None}}
    assert not row_from_answers({"lesion": {"option_logprobs": ["nan", -1.0]}}, card)["valid"]
    mc = card.model_copy(update={"label_type": "multiclass", "labels": ["a", "b"], "positive_classes": ["b"]})
    # (issue 13: tied or impossible option scores are invalid, so class a gets distinct scores, P(yes) = 0.6)
    import math

    r = row_from_answers({"a": {"option_logprobs": [math.log(0.6), math.log(0.4)]}, "b": {"option_logprobs": [-10.0, 0.0]}}, mc)
    assert r["probs"][0] == pytest.approx(0.6 / (0.6 + 1 / (1 + pow(2.718281828459045, 10.0))))
    assert not row_from_answers({"a": {"raw_output": "no"}, "b": {"raw_output": "no"}}, mc)["valid"]  # no class affirmed


def test_rescoring_reapplies_phi_from_stored_answers(card):
    """Stored per-question answers (requests.jsonl of a generating VLM) -> image rows -> endpoints: the
    probabilities come from the answers through the card's current vocabulary."""
    rows = [{"id": str(i), "patient_id": str(i), "split": s, "sex": "female", "age_group": "0-39", "race": None,
             "targets": [1.0], "method": "generate", "question_id": "lesion", "raw_output": "present"}
            for i, s in enumerate(["val", "test"])]
    df, _ = endpoint_frame(image_rows(rows, card), card)
    assert df["valid"].all() and (df["p:lesion"] == 1.0).all()
    strict = _with_vlm(card, synonyms={})
    df, _ = endpoint_frame(image_rows(rows, strict), strict)
    assert not df["valid"].any()  # "present" is no longer in the vocabulary: invalid, counted


def _backend(path, card, **extra):
    return VLMBackend(ModelSpec(name="tiny-llava", backend="vlm", model=str(path), device="cpu", extra=extra), card)


def _direct_logprob(backend, image, prompt, option) -> float:
    """log P(option | image, prompt) from one uncached forward pass over prompt + option tokens."""
    batch = backend._inputs([image], [prompt])
    opt = backend._option_ids(option)
    ids = torch.cat([batch["input_ids"], torch.tensor([opt])], dim=1)
    with torch.no_grad():
        logits = backend.model(input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=batch["pixel_values"]).logits
    logp = torch.log_softmax(logits[0].float(), -1)
    n = batch["input_ids"].shape[1]
    return sum(float(logp[n - 1 + t, tok]) for t, tok in enumerate(opt))


def test_vlm_choice_scores_are_exact_option_loglikelihoods(tiny_llava, card):
    ds = limit_dataset(load_dataset(card, None), 3).split("test")
    images = [pil_image(ds.read(i)) for i in range(len(ds))]
    prompt = card.vlm.question
    backend = _backend(tiny_llava, card)
    assert all(len(backend._option_ids(o)) == 1 for o in ("Yes", "No"))
    got = backend.choose(images, [prompt] * len(images), ["Yes", "No"])  # batched, last position only
    multi = ["Present", "Absent"]
    assert all(len(backend._option_ids(o)) > 1 for o in multi)
    got_multi = backend.choose(images, [prompt] * len(images), multi)  # shared image+prompt KV cache
    for im, g, gm in zip(images, got, got_multi):
        assert g["option_logprobs"] == pytest.approx([_direct_logprob(backend, im, prompt, o) for o in ("Yes", "No")], abs=1e-4)
        assert gm["option_logprobs"] == pytest.approx([_direct_logprob(backend, im, prompt, o) for o in multi], abs=1e-4)
    # prompts of different lengths in one left-padded batch score as they do alone
    prompts = [prompt, "Lesion?", prompt + " Look carefully at both lungs."]
    mixed = backend.choose(images, prompts, ["Yes", "No"])
    for im, p, g in zip(images, prompts, mixed):
        assert g["option_logprobs"] == pytest.approx([_direct_logprob(backend, im, p, o) for o in ("Yes", "No")], abs=1e-4)
    # the image matters: different images, different scores
    assert len({round(g["option_logprobs"][0], 6) for g in got}) > 1
    preds = predict_images(backend, ds)
    assert [p["vlm_answers"]["lesion"] for p in preds] == got and all(p["valid"] for p in preds)


def test_vlm_generate_mode_reads_answers_with_phi(tiny_llava, card):
    gen_card = _with_vlm(card, method="generate", max_new_tokens=3)
    ds = limit_dataset(load_dataset(gen_card, None), 2).split("test")
    preds = predict_images(_backend(tiny_llava, gen_card), ds)
    for p in preds:
        text = p["vlm_answers"]["lesion"]["raw_output"]
        assert json.loads(p["raw_output"]) == {"lesion": text}
        assert p["valid"] == (normalise(text, gen_card.vlm) is not None)  # random weights: gibberish is invalid


def test_vlm_run_end_to_end_and_bad_spec(tmp_path, tiny_llava, cli):
    import yaml

    models = tmp_path / "models.yaml"
    models.write_text(yaml.safe_dump({"models": {
        "tiny-llava": {"backend": "vlm", "model": str(tiny_llava), "device": "cpu"},
        "bad-llava": {"backend": "vlm", "model": str(tmp_path / "missing"), "device": "cpu"},
    }}))
    tasks = tmp_path / "tasks"
    (tasks / "synth-mini").mkdir(parents=True)
    raw = yaml.safe_load(open(load_task("synth-xray").directory / "task.yaml"))
    raw.update({"name": "synth-mini"})
    raw["loader_options"]["n"] = 60
    raw["audit"].update({"n_boot": 100, "attributes": ["sex"], "min_group_size": 2})
    (tasks / "synth-mini" / "task.yaml").write_text(yaml.safe_dump(raw))
    out = tmp_path / "runs"
    args = ["-t", "synth-mini", "--models-file", str(models), "--tasks-dir", str(tasks), "-o", str(out), "-q"]
    assert cli("run", "-m", "tiny-llava", *args) == 0
    run_dir = next(out.iterdir())
    results = json.loads((run_dir / "results.json").read_text())
    assert results["n_invalid"] == 0 and results["metrics"]["auc"]["value"] is not None
    assert set(results["metrics"]["dp_gap"]) >= {"value", "ci_low", "ci_high"}
    rows = [json.loads(line) for line in (run_dir / "requests.jsonl").read_text().splitlines()]
    assert all(r["option_logprobs"] is not None and r["question_id"] == "lesion" for r in rows)  # one row per request
    before = (run_dir / "results.json").read_bytes()
    assert cli("score", str(run_dir), "--tasks-dir", str(tasks), "-q") == 0
    assert (run_dir / "results.json").read_bytes() == before
    assert cli("run", "-m", "bad-llava", *args) == 2  # one-line error, no traceback
    # an imaging model on a text task is a one-line error too
    assert cli("run", "-m", "tiny-llava", "-t", "qpain-demo", "--models-file", str(models), "-o", str(out), "-q") == 2


def test_fairmed_vlm_mitigates_a_llava_end_to_end(tmp_path, tiny_llava, cli):
    """`fairbench mitigate --method fairmed-vlm --model <LLaVA>`: LoRA on the language model and
    projector, fairness terms on the pooled image embedding, Stage-2 selection recorded, the
    adapter merged into a saved model that `fairbench run` audits like any vlm model."""
    import yaml
    from safetensors.torch import load_file

    models = tmp_path / "models.yaml"
    models.write_text(yaml.safe_dump({"models": {"tiny-llava": {"backend": "vlm", "model": str(tiny_llava), "device": "cpu"}}}))
    tasks = tmp_path / "tasks"
    (tasks / "synth-mini").mkdir(parents=True)
    raw = yaml.safe_load((load_task("synth-xray").directory / "task.yaml").read_text())
    raw.update({"name": "synth-mini"})
    raw["loader_options"]["n"] = 60
    raw["audit"].update({"n_boot": 100, "attributes": ["sex"], "min_group_size": 2})
    (tasks / "synth-mini" / "task.yaml").write_text(yaml.safe_dump(raw))
    config = tmp_path / "fairmed.yaml"
    config.write_text(yaml.safe_dump({"epochs": 2, "lr": 0.01, "vlm_batch_size": 8, "lora": {"r": 4, "alpha": 8},
                                      "ablations": []}))  # ablations share the loop; the classifier tests cover them
    out = tmp_path / "artifact"
    common = ["--models-file", str(models), "--tasks-dir", str(tasks), "-q"]
    assert cli("mitigate", "--method", "fairmed-vlm", "-m", "tiny-llava", "-t", "synth-mini", "--config", str(config),
               "-o", str(out), *common) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["derived_models"] == ["tiny-llava+fairmed-vlm"]
    art = manifest["artifact"]
    assert art["selection"]["fairmed-vlm"] == {"criterion": "stage2-val-loss", "eligible_epochs": [2, 2], "epoch": 2, "stage": 2}
    rep = art["training"]["fairmed-vlm"]["report"]
    assert rep["terms"]["supcon"][0] is None and rep["terms"]["dist"][1] is not None and rep["terms"]["concept"][0] > 0
    assert rep["demographic_prompts"] and rep["lora_targets"]
    # merged weights: the projector and the language model's attention moved; the vision tower and embeddings did not
    base_w, new_w = load_file(str(tiny_llava / "model.safetensors")), load_file(str(out / "fairmed-vlm" / "model.safetensors"))
    assert set(base_w) == set(new_w)  # a plain LLaVA checkpoint (LoRA merged, no adapter keys)
    moved = {k for k in base_w if not torch.equal(base_w[k], new_w[k])}
    assert any("multi_modal_projector" in k for k in moved) and any("q_proj" in k and "language_model" in k for k in moved)
    assert not any("vision_tower" in k or "embed_tokens" in k for k in moved)
    # audited by the ordinary run path
    runs = tmp_path / "runs"
    assert cli("run", "-m", "tiny-llava+fairmed-vlm", "-t", "synth-mini", "-o", str(runs), "--limit", "12", *common) == 0
    results = json.loads((next(runs.iterdir()) / "results.json").read_text())
    assert results["n_invalid"] == 0 and results["metrics"]["auc"]["value"] is not None


def test_fairmed_vlm_demographic_prompt_prefixes_the_training_question_only(tiny_llava, card):
    from benchmark.backends.image.recipe import FairMed
    from benchmark.mitigations.fairmed_llava import _Batcher

    ds = limit_dataset(load_dataset(card, None), 8).split("train")
    backend = _backend(tiny_llava, card)
    batcher = _Batcher(backend, card, ds, FairMed())
    rows = list(range(min(3, len(ds))))
    train = batcher.build(rows, [False] * len(rows), True, 0, rows)
    plain = batcher.build(rows, [False] * len(rows), False, 0, rows)
    decode = lambda b: [backend.tokenizer.decode(r[m.bool()]) for r, m in zip(b.input_ids, b.attention_mask)]
    for i, (t, p) in zip(rows, zip(decode(train), decode(plain))):
        sex = ds.frame["sex"].iloc[i].capitalize()
        assert f"Patient: {sex}, Age group: {ds.frame['age_group'].iloc[i]}. {card.vlm.question}" in t
        assert "Patient:" not in p and card.vlm.question in p
        assert t.endswith(("Yes", "No")) and p.endswith(("Yes", "No"))  # the answer follows the prompt
    assert torch.equal(train.labels[train.labels != -100], plain.labels[plain.labels != -100])
