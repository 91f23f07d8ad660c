"""vLLM backend: request building and output parsing with vLLM-shaped objects (vLLM needs a GPU and
is not installed in CI), and a clear error when it is absent."""

from __future__ import annotations

import importlib.util
from types import SimpleNamespace

import pytest

from benchmark.backends.vllm import VLLMBackend, choice_prompts, engine_kwargs, sum_prompt_logprobs
from benchmark.config import ModelSpec
from benchmark.errors import FairbenchError


def test_engine_kwargs_carry_parallelism():
    spec = ModelSpec(name="v", backend="vllm", model="org/m", revision="abc", dtype="bfloat16",
                     tensor_parallel_size=4, pipeline_parallel_size=2, max_length=4096,
                     extra={"engine": {"gpu_memory_utilization": 0.8}})
    kw = engine_kwargs(spec, seed=3)
    assert kw["tensor_parallel_size"] == 4 and kw["pipeline_parallel_size"] == 2
    assert kw["model"] == "org/m" and kw["tokenizer"] == "org/m" and kw["revision"] == "abc"
    assert kw["max_model_len"] == 4096 and kw["seed"] == 3 and kw["gpu_memory_utilization"] == 0.8
    assert kw["trust_remote_code"] is False and kw["dtype"] == "bfloat16"


def test_choice_prompts_and_prompt_logprob_sum():
    ctx, opts = [5, 6, 7], [[11], [12, 13]]
    prompts = choice_prompts(ctx, opts)
    assert prompts == [[5, 6, 7, 11], [5, 6, 7, 12, 13]]
    lp = lambda x: SimpleNamespace(logprob=x)  # noqa: E731  vllm.sequence.Logprob shape
    out = [None, {6: lp(-1.0)}, {7: lp(-2.0), 1: lp(-0.1)}, {12: lp(-0.5), 11: lp(-0.2)}, {13: lp(-0.25)}]
    assert sum_prompt_logprobs(out, prompts[1], len(ctx)) == pytest.approx(-0.75)
    assert sum_prompt_logprobs(out[:4], prompts[0], len(ctx)) == pytest.approx(-0.2)
    with pytest.raises(FairbenchError, match="no entry for token 11"):
        sum_prompt_logprobs(out[:3] + [{12: lp(-0.5)}], prompts[0], len(ctx))
    with pytest.raises(FairbenchError, match="entries"):
        sum_prompt_logprobs(out, prompts[0], len(ctx))


def test_fingerprint_needs_no_vllm():
    a = VLLMBackend.fingerprint(ModelSpec(name="v", backend="vllm", model="org/m"))
    b = VLLMBackend.fingerprint(ModelSpec(name="v", backend="vllm", model="org/m", revision="r2"))
    assert a != b and len(a) == 16


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is installed here")
def test_clear_error_without_vllm():
    with pytest.raises(FairbenchError, match=r"needs vLLM.*fairbench-med\[vllm\]"):
        VLLMBackend(ModelSpec(name="v", backend="vllm", model="org/m"))
