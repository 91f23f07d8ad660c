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
from benchmark.kinds.image.evaluate import endpoint_frame
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
    rows = [{"id": str(i), "patient_id": str(i), "split": s, "sex": "female", "age_group": "0-39", "race": None,
             "targets": [1.0], "probs": [0.123], "valid": True, "vlm_answers": {"lesion": {"raw_output": "present"}}}
            for i, s in enumerate(["val", "test"])]
    df, _ = endpoint_frame(rows, card)
    assert df["valid"].all() and (df["p:lesion"] == 1.0).all()  # from the answer, not the stale stored probs
    strict = _with_vlm(card, synonyms={})
    df, _ = endpoint_frame(rows, strict)
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
