"""openai backend: response parsing, retries and errors against a scripted local server, and a
full `fairbench run` through it (concurrency bound, key never written)."""

from __future__ import annotations

import json
import math
import re
import socket

import pytest
from fake_openai import FakeServer, completions_echo, fake_logprob

from benchmark.backends.openai import Client, MalformedResponse, OpenAIBackend, continuation_logprob, endpoint_for, first_token_logprobs
from benchmark.cli import main
from benchmark.config import ModelSpec
from benchmark.errors import FairbenchError
from benchmark.requests import Request


def _echo(tokens, lps, n_gen=1):
    return {"choices": [{"logprobs": {"tokens": tokens, "token_logprobs": lps}}], "usage": {"completion_tokens": n_gen, "prompt_tokens": len(tokens) - n_gen}}


def test_continuation_sum_single_and_multi_token():
    r = _echo(["<|im_start|>", "user", "\nHi", " Answer", ":", " Yes", "!"], [None, -1, -2, -3, -4, -0.5, -9])
    assert continuation_logprob(r, " Yes") == (-0.5, False)
    r = _echo(["Answer", ":", " Mod", "erate", "\n"], [None, -1, -0.25, -0.5, -7])
    assert continuation_logprob(r, " Moderate") == (-0.75, False)
    # no generated token at all (EOS omitted): usage.completion_tokens = 0
    assert continuation_logprob(_echo(["A", ":", " No"], [None, -1, -2], n_gen=0), " No") == (-2, False)


def test_continuation_boundary_merge_is_marked():
    r = _echo(["Answer", ":Yes", "."], [None, -1.5, -3])
    assert continuation_logprob(r, "Yes") == (-1.5, True)


@pytest.mark.parametrize(
    "mutate, field",
    [
        (lambda r: r["choices"][0]["logprobs"]["token_logprobs"].__setitem__(2, "-0.5x"), "token_logprobs.2"),
        (lambda r: r["choices"][0]["logprobs"]["token_logprobs"].__setitem__(2, 0.7), "token_logprobs.2"),
        (lambda r: r["choices"][0]["logprobs"]["token_logprobs"].__setitem__(2, None), "token_logprobs.2"),
        (lambda r: r.pop("usage"), "usage.completion_tokens"),
        (lambda r: r["choices"][0].pop("logprobs"), "choices.0.logprobs.tokens"),
        (lambda r: r["choices"][0]["logprobs"]["tokens"].__setitem__(2, " No"), "choices.0.logprobs.tokens"),
    ],
)
def test_malformed_completion_names_the_field(mutate, field):
    r = _echo(["Answer", ":", " Yes", "!"], [None, -1, -0.5, -2])
    mutate(r)
    with pytest.raises(MalformedResponse, match=field.replace(".", r"\.")):
        continuation_logprob(r, " Yes")


ASIAN_MAN = re.compile(r"\b(Hiroshi|Wei|Minh|Jun|Sanjay)\b")


def _chat(top):
    return {"choices": [{"logprobs": {"content": [{"token": top[0][0], "logprob": top[0][1], "top_logprobs": [{"token": t, "logprob": lp} for t, lp in top]}]}}]}


def test_first_token_exact_prefix_and_missing():
    r = _chat([("Yes", -0.1), ("No", -2.5), ("Mod", -4.0), ("Yes", -6.0)])
    scores, matched = first_token_logprobs(r, ["Yes", "No", "Moderate", "Low"])
    assert scores[0] == pytest.approx(math.log(math.exp(-0.1) + math.exp(-6.0)))  # same text, two ids: summed
    assert scores[1:3] == [-2.5, -4.0] and scores[3] is None
    assert matched == ["Yes", "No", "Mod", None]
    bad = _chat([("Yes", "high")])
    with pytest.raises(MalformedResponse, match=r"top_logprobs\.0\.logprob"):
        first_token_logprobs(bad, ["Yes"])


def test_default_endpoint():
    assert endpoint_for(ModelSpec(name="a", backend="openai", model="m", chat_template=False)) == "completions"
    assert endpoint_for(ModelSpec(name="a", backend="openai", model="m", tokenizer="t.gguf")) == "completions"
    assert endpoint_for(ModelSpec(name="a", backend="openai", model="m")) == "chat"
    assert endpoint_for(ModelSpec(name="a", backend="openai", model="m", scoring_endpoint="chat", tokenizer="t")) == "chat"


# ---------- HTTP behaviour against a real local socket ----------
def test_retries_429_and_5xx_then_succeeds():
    script = iter([(429, {"error": "slow down"}), (503, "<html>busy</html>"), (200, {"ok": 1})])
    with FakeServer(lambda p, b, h: next(script)) as srv:
        client = Client(srv.base_url, None, timeout_s=5, max_retries=3, backoff_s=0.01)
        assert client.post("completions", {}) == {"ok": 1}
        assert client.n_retries == 2 and len(srv.calls) == 3


def test_retries_are_bounded():
    with FakeServer(lambda p, b, h: (500, "oops")) as srv:
        client = Client(srv.base_url, None, timeout_s=5, max_retries=2, backoff_s=0.01)
        with pytest.raises(FairbenchError, match="gave up after 3 attempts .HTTP 500"):
            client.post("completions", {})
        assert len(srv.calls) == 3


def test_connection_refused_is_retried_then_clear_error():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again below: nothing listens there
    client = Client(f"http://127.0.0.1:{port}/v1", None, timeout_s=2, max_retries=1, backoff_s=0.01)
    with pytest.raises(FairbenchError, match="gave up after 2 attempts .connection error.*Is the server running"):
        client.post("completions", {})


def test_timeout_is_retried():
    with FakeServer(lambda p, b, h: (200, {"ok": 1}), delay_s=0.5) as srv:
        client = Client(srv.base_url, None, timeout_s=0.1, max_retries=1, backoff_s=0.01)
        with pytest.raises(FairbenchError, match="timed out"):
            client.post("completions", {})
        assert len(srv.calls) == 2


def test_4xx_is_not_retried_and_key_is_redacted():
    key = "sk-test-SECRET-123"
    # A careless server echoing the credentials back in its error body.
    with FakeServer(lambda p, b, h: (401, {"error": f"bad key {h.get('Authorization')}"})) as srv:
        client = Client(srv.base_url, key, timeout_s=5, max_retries=3, backoff_s=0.01)
        with pytest.raises(FairbenchError) as err:
            client.post("completions", {})
        assert len(srv.calls) == 1
        assert "HTTP 401" in str(err.value) and key not in str(err.value) and "***" in str(err.value)


def test_garbage_body_is_a_clear_error():
    with FakeServer(lambda p, b, h: (200, "<<<not json")) as srv:
        client = Client(srv.base_url, None, timeout_s=5, max_retries=0, backoff_s=0.01)
        with pytest.raises(MalformedResponse, match="not JSON"):
            client.post("completions", {})


def test_missing_key_env_is_a_one_line_error(monkeypatch):
    monkeypatch.delenv("FAIRBENCH_NO_SUCH_KEY", raising=False)
    spec = ModelSpec(name="srv", backend="openai", model="m", base_url="http://127.0.0.1:1/v1", api_key_env="FAIRBENCH_NO_SUCH_KEY")
    with pytest.raises(FairbenchError, match="FAIRBENCH_NO_SUCH_KEY"):
        OpenAIBackend.fingerprint(spec)


# ---------- end to end through `fairbench run` ----------
def _models_file(tmp_path, url, **fields):
    lines = [f"  fake:", "    backend: openai", "    model: fake-model", f"    base_url: {url}"]
    lines += [f"    {k}: {json.dumps(v)}" for k, v in fields.items()]
    path = tmp_path / "models.yaml"
    path.write_text("models:\n" + "\n".join(lines) + "\n")
    return path


def test_run_through_completions_endpoint(tmp_path, monkeypatch):
    key = "sk-e2e-SECRET-xyz"
    monkeypatch.setenv("FAKE_OPENAI_KEY", key)
    seen_auth = set()

    def handler(path, payload, headers):
        seen_auth.add(headers.get("Authorization"))
        assert path == "/v1/completions" and payload["echo"] is True and payload["model"] == "fake-model"
        return 200, completions_echo(payload)

    with FakeServer(handler, delay_s=0.02) as srv:
        models = _models_file(tmp_path, srv.base_url, chat_template=False, api_key_env="FAKE_OPENAI_KEY", max_concurrency=3)
        code = main(["run", "--model", "fake", "--limit", "2", "-o", str(tmp_path / "runs"), "--models-file", str(models), "-q"])
        assert code == 0
        assert 1 < srv.max_inflight <= 3
    assert seen_auth == {f"Bearer {key}"}
    run_dir = tmp_path / "runs" / "fake__qpain-demo__zero_shot__seed0__limit2"
    rows = [json.loads(x) for x in (run_dir / "requests.jsonl").read_text().splitlines()]
    assert len(rows) == 16 and len(srv.calls) == 32  # one request per option
    for r in rows:
        assert r["option_logprobs"] == [pytest.approx(fake_logprob(" Yes")), pytest.approx(fake_logprob(" No"))]
        assert r["scored"]["valid"]
    for f in run_dir.iterdir():
        if f.is_file() and f.suffix != ".sqlite":
            assert key not in f.read_text(errors="ignore"), f.name
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["model"]["spec"]["api_key_env"] == "FAKE_OPENAI_KEY"


def test_chat_endpoint_falls_back_to_generation_and_marks_rows(tmp_path):
    def handler(path, payload, headers):
        assert path == "/v1/chat/completions"
        if payload.get("logprobs"):
            assert payload["max_tokens"] == 1 and payload["top_logprobs"] == 5
            prompt = payload["messages"][-1]["content"]
            # Prompts naming an Asian man lack "No" among the top tokens.
            top = [("Yes", -0.4), ("Sure", -1.6)] + ([] if ASIAN_MAN.search(prompt) else [("No", -1.2)])
            return 200, _chat(top)
        return 200, {"choices": [{"message": {"role": "assistant", "content": "No, not indicated."}}], "usage": {"prompt_tokens": 9}}

    with FakeServer(handler) as srv:
        models = _models_file(tmp_path, srv.base_url, scoring_endpoint="chat", extra={"top_logprobs": 5})
        assert main(["run", "--model", "fake", "--limit", "2", "-o", str(tmp_path / "runs"), "--models-file", str(models), "-q"]) == 0
    rows = [json.loads(x) for x in (tmp_path / "runs" / "fake__qpain-demo__zero_shot__seed0__limit2" / "requests.jsonl").read_text().splitlines()]
    fallback = [r for r in rows if r["extra"].get("choice_fallback")]
    direct = [r for r in rows if not r["extra"].get("choice_fallback")]
    assert fallback and direct
    for r in fallback:
        assert ASIAN_MAN.search(r["prompt"]) and r["option_logprobs"] is None
        assert r["scored"]["valid"] and r["scored"]["answer"] == "No" and r["scored"]["probs"] == [0.0, 1.0]
    for r in direct:
        assert r["option_logprobs"] == [-0.4, -1.2] and r["extra"]["first_tokens"] == ["Yes", "No"]


def test_garbage_server_fails_the_run_with_one_line(tmp_path, capsys):
    with FakeServer(lambda p, b, h: (200, {"choices": [{"text": "hi"}]})) as srv:
        models = _models_file(tmp_path, srv.base_url, chat_template=False)
        code = main(["run", "--model", "fake", "--limit", "1", "-o", str(tmp_path / "runs"), "--models-file", str(models), "-q"])
    err = capsys.readouterr().err
    assert code == 2 and "choices.0.logprobs.tokens is missing" in err and "Traceback" not in err
    assert not (tmp_path / "runs" / "fake__qpain-demo__zero_shot__seed0__limit1" / "requests.jsonl").exists()


def test_generation_payload_has_seed_and_temperature(tmp_path):
    spec = ModelSpec(name="g", backend="openai", model="m", chat_template=False, base_url="http://x/v1")
    with FakeServer(lambda p, b, h: (200, {"choices": [{"text": " Answer: Yes"}], "usage": {"prompt_tokens": 3}})) as srv:
        spec.base_url = srv.base_url
        backend = OpenAIBackend(spec, seed=7)
        req = Request("c1", "q", {}, "Prompt", ["Yes", "No"], "generate", max_new_tokens=12, temperature=0.7, seed=7)
        other = Request("c1", "q", {}, "Other prompt", ["Yes", "No"], "generate", max_new_tokens=12, temperature=0.7, seed=7)
        [res, _] = backend.generate([req, other])
        backend.close()
    (path, payload), (_, payload2) = sorted(srv.calls, key=lambda c: c[1]["prompt"] != "Prompt")
    # The request's own seed (content x run seed): variants of one run do not share a sampler stream.
    assert payload["seed"] == req.sampling_seed() != payload2["seed"] == other.sampling_seed()
    assert path == "/v1/completions" and payload["temperature"] == 0.7
    assert payload["max_tokens"] == 12 and payload["top_p"] == 1.0 and res.raw_output == " Answer: Yes"
