"""HF backend on the tiny Llama: batched, left-padded choice scoring equals the unbatched truth."""

import math

import pytest
import torch

from benchmark.backends.hf import HFBackend
from benchmark.config import ModelSpec
from benchmark.requests import Request


@pytest.fixture(scope="module")
def backend(tiny_llama_dir):
    return HFBackend(ModelSpec(name="tiny", backend="hf", model=str(tiny_llama_dir), chat_template=True, batch_size=3))


def _req(prompt, options=("Yes", "No"), method="choice"):
    return Request(case_id="c", question_id="q", attributes={}, prompt=prompt, options=list(options), method=method)


def _truth(backend, prompt, option):
    """log P(option | prompt) from one unpadded forward over prompt+option."""
    ctx = backend._encode_prompt(backend.render(prompt))
    cont = backend._encode_option(option)
    ids = torch.tensor([ctx + cont])
    with torch.no_grad():
        logp = torch.log_softmax(backend.model(input_ids=ids).logits[0].float(), -1)
    return sum(float(logp[len(ctx) - 1 + i, t]) for i, t in enumerate(cont))


def test_single_token_batched_matches_unbatched(backend):
    prompts = ["short", "a somewhat longer prompt about pain", "mid length prompt here", "x", "Patient with severe pain in the hip"]
    reqs = [_req(p) for p in prompts]
    assert all(len(backend._encode_option(o)) == 1 for o in ("Yes", "No"))
    results = backend.score_choices(reqs)
    for p, res in zip(prompts, results):
        for o, lp in zip(("Yes", "No"), res.option_logprobs):
            assert math.isclose(lp, _truth(backend, p, o), abs_tol=1e-4)


def test_multi_token_options_match_full_sequence(backend):
    options = ["Low dose", "High dose please", "No"]
    assert any(len(backend._encode_option(o)) > 1 for o in options)
    res = backend.score_choices([_req("Which dose?", options)])[0]
    for o, lp in zip(options, res.option_logprobs):
        assert math.isclose(lp, _truth(backend, "Which dose?", o), abs_tol=1e-4)


def test_results_keep_request_order(backend):
    prompts = ["b" * n for n in (1, 30, 5, 12)]
    a = backend.score_choices([_req(p) for p in prompts])
    b = [backend.score_choices([_req(p)])[0] for p in prompts]
    for x, y in zip(a, b):
        assert x.rendered_prompt == y.rendered_prompt
        assert all(math.isclose(u, v, abs_tol=1e-4) for u, v in zip(x.option_logprobs, y.option_logprobs))


def test_plain_prompt_uses_leading_space(tiny_llama_dir):
    plain = HFBackend(ModelSpec(name="p", backend="hf", model=str(tiny_llama_dir), chat_template=False))
    assert plain.render("Q") == "Q" and plain.continuation("Yes") == " Yes"


def test_greedy_generation_is_deterministic(backend):
    r = Request(case_id="c", question_id="q", attributes={}, prompt="Answer:", options=["Yes", "No"], method="generate", max_new_tokens=5)
    a, b = backend.generate([r])[0], backend.generate([r])[0]
    assert a.raw_output == b.raw_output and a.raw_output is not None


def test_fingerprint_changes_with_settings(tiny_llama_dir):
    a = ModelSpec(name="a", backend="hf", model=str(tiny_llama_dir))
    b = ModelSpec(name="b", backend="hf", model=str(tiny_llama_dir), chat_template=False)
    assert HFBackend.fingerprint(a) != HFBackend.fingerprint(b)
