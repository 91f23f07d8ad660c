"""openai backend with image inputs (served VLMs, e.g. `vllm serve` of LLaVA-Med): request building
(image_url content parts with base64 PNG data URLs) and response parsing, against a scripted local
server that reads the image it was sent."""

from __future__ import annotations

import base64
import io
import json
import math

import numpy as np
import pytest
from fake_openai import FakeServer

from benchmark.backends.openai import image_messages
from benchmark.config import ModelSpec
from benchmark.backends.openai import OpenAIBackend
from benchmark.kinds.image.kind import predict_images
from benchmark.kinds.image.kind import limit_dataset, load_dataset
from benchmark.requests import pil_image
from benchmark.cards import load_task


def _decode(url: str) -> np.ndarray:
    from PIL import Image

    head, data = url.split(",", 1)
    assert head == "data:image/png;base64"
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(data))).convert("RGB"))


def _p_yes(image: np.ndarray) -> float:
    """The scripted "model": brighter peak pixel -> more likely a lesion (synth lesions are bright blobs)."""
    return 1 / (1 + math.exp(-20 * (image.max() / 255 - 0.75)))


def _vlm_server(drop_no: bool = False, answer: str = "No, the lungs look normal."):
    def handler(path, payload, headers):
        assert path == "/v1/chat/completions"
        image = _decode(payload["messages"][-1]["content"][0]["image_url"]["url"])
        if payload.get("logprobs"):
            p = _p_yes(image)
            top = [{"token": "Yes", "logprob": math.log(p)}] + ([] if drop_no else [{"token": "No", "logprob": math.log1p(-p)}])
            return 200, {"choices": [{"logprobs": {"content": [{"token": "Yes", "logprob": math.log(p), "top_logprobs": top}]}}],
                         "usage": {"prompt_tokens": 600}}
        return 200, {"choices": [{"message": {"content": answer}}], "usage": {"prompt_tokens": 600}}
    return FakeServer(handler)


@pytest.fixture(scope="module")
def card():
    c = load_task("synth-xray")
    return c.model_copy(update={"loader_options": {**c.loader_options, "n": 60}})


def _spec(url, **kw):
    return ModelSpec(name="served-vlm", backend="openai", base_url=url, model="llava-med", max_concurrency=2, **kw)


def test_image_messages_put_images_before_the_text():
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Q?"}]
    out = image_messages(msgs, ["data:image/png;base64,AAAA"])
    assert out[0] == msgs[0] and msgs[1]["content"] == "Q?"  # the input is not modified
    assert out[1] == {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
                                                  {"type": "text", "text": "Q?"}]}


def test_choice_requests_carry_the_exact_image_and_scores_parse(card):
    ds = limit_dataset(load_dataset(card, None), 4).split("test")
    with _vlm_server() as srv:
        backend = OpenAIBackend(_spec(srv.base_url, system_prompt="You are a radiologist."), card)
        preds = predict_images(backend, ds)
        backend.close()
    assert len(srv.calls) == len(ds)  # one request per image and label
    sent = {}
    for _, payload in srv.calls:
        system, user = payload["messages"]
        assert system == {"role": "system", "content": "You are a radiologist."}
        assert [part["type"] for part in user["content"]] == ["image_url", "text"]
        assert user["content"][1]["text"] == card.vlm.question
        assert payload["max_tokens"] == 1 and payload["logprobs"] is True and payload["model"] == "llava-med"
        image = _decode(user["content"][0]["image_url"]["url"])
        sent[image.tobytes()] = image
    for i, pred in enumerate(preds):
        expected = np.asarray(pil_image(ds.read(i)))
        assert expected.tobytes() in sent  # lossless: the server saw exactly the dataset's pixels
        assert pred["valid"] and pred["probs"][0] == pytest.approx(_p_yes(expected), rel=1e-6)
        assert pred["vlm_answers"]["lesion"]["extra"]["first_tokens"] == ["Yes", "No"]


def test_missing_option_logprob_falls_back_to_generation_read_by_phi(card):
    ds = limit_dataset(load_dataset(card, None), 2).split("test")
    with _vlm_server(drop_no=True) as srv:
        preds = predict_images(OpenAIBackend(_spec(srv.base_url), card), ds)
    assert len(srv.calls) == 2 * len(ds)  # choice attempt + generation, both with the image
    assert all(p["content"][0]["type"] == "image_url" for _, c in srv.calls for p in [c["messages"][-1]])
    assert all(p["valid"] and p["probs"] == [0.0] and p["answers_read"] == {"lesion": "No"} for p in preds)
    assert all(p["vlm_answers"]["lesion"]["extra"]["choice_fallback"] == "generate" for p in preds)
    with _vlm_server(drop_no=True, answer="Hard to say.") as srv:
        preds = predict_images(OpenAIBackend(_spec(srv.base_url), card), ds)
    assert not any(p["valid"] for p in preds)  # unparseable: invalid, kept and counted


def test_generate_method_sends_max_new_tokens(card):
    gen = card.model_copy(update={"vlm": card.vlm.model_copy(update={"method": "generate", "max_new_tokens": 5})})
    ds = limit_dataset(load_dataset(gen, None), 2).split("test")
    with _vlm_server(answer="Yes.") as srv:
        preds = predict_images(OpenAIBackend(_spec(srv.base_url), gen), ds)
    assert all(c["max_tokens"] == 5 and "logprobs" not in c for _, c in srv.calls)
    assert [p["probs"] for p in preds] == [[1.0]] * len(ds) and json.loads(preds[0]["raw_output"]) == {"lesion": "Yes."}


def test_imaging_run_through_openai_backend(tmp_path, cli):
    import yaml

    tasks = tmp_path / "tasks"
    (tasks / "synth-mini").mkdir(parents=True)
    raw = yaml.safe_load(open(load_task("synth-xray").directory / "task.yaml"))
    raw.update({"name": "synth-mini"})
    raw["loader_options"]["n"] = 100
    raw["audit"].update({"n_boot": 100, "attributes": ["sex"], "min_group_size": 2})
    (tasks / "synth-mini" / "task.yaml").write_text(yaml.safe_dump(raw))
    out = tmp_path / "runs"
    with _vlm_server() as srv:
        models = tmp_path / "models.yaml"
        models.write_text(yaml.safe_dump({"models": {"served": {"backend": "openai", "base_url": srv.base_url, "model": "llava-med",
                                                                "max_concurrency": 4}}}))
        assert cli("run", "-m", "served", "-t", "synth-mini", "--models-file", str(models), "--tasks-dir", str(tasks),
                   "-o", str(out), "-q") == 0
    results = json.loads((next(out.iterdir()) / "results.json").read_text())
    assert results["n_invalid"] == 0 and results["n_requests"] == len(srv.calls) == 40  # val + test images
    assert results["metrics"]["auc"]["value"] > 0.6  # the images arrived intact: the pixel "model" finds lesions
