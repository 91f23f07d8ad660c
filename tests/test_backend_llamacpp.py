"""llamacpp backend on the embedded SmolLM2 GGUF: prefix-cache reuse and multi-token options give
the same numbers as fresh evaluation, and P(option) agrees with the hf backend within the stated
tolerance (README "Serving backends")."""

from __future__ import annotations

import json

import pytest
from llamacpp_support import require_llama_cpp

from benchmark.cli import main
from benchmark.config import load_models
from benchmark.requests import Request

# Measured on qpain-demo (bench/llamacpp_vs_hf.py): llama.cpp runs the Q4_1 weights as is, hf runs
# them de-quantised to float32, so the two differ by quantised-activation arithmetic only.
TOL_MEAN, TOL_MAX = 0.03, 0.10


@pytest.fixture(scope="module")
def backend():
    require_llama_cpp()
    from benchmark.backends.llamacpp import LlamaCppBackend

    b = LlamaCppBackend(load_models().get("smollm2-135m-llamacpp"))
    yield b
    b.close()


def _requests():
    ctx = "Patient {n} has severe pain after surgery. Would you offer opioids? Answer with Yes or No only."
    opts = ["Yes", "No", "Moderate pain relief"]  # the last is several tokens
    return [Request(f"c{i}", "q", {}, ctx.format(n=n), opts, "choice") for i, n in enumerate(["A", "B", "Carla", "A"])]


def test_prefix_reuse_and_multi_token_options_match_fresh_evaluation(backend):
    reqs = _requests()
    assert len(backend.encode_option("Moderate pain relief")) > 1
    batch = backend.score_choices(reqs)
    fresh = []
    for r in reversed(reqs):  # one at a time, other order, cache cleared first
        backend.llm.n_tokens = 0
        fresh.append(backend.score_choices([r])[0])
    fresh.reverse()
    for a, b in zip(batch, fresh):
        assert a.option_logprobs == pytest.approx(b.option_logprobs, abs=2e-3)
        assert all(x < 0 for x in a.option_logprobs)
    assert batch[0].option_logprobs == pytest.approx(batch[3].option_logprobs, abs=2e-3)  # same prompt twice
    assert batch[0].option_logprobs != pytest.approx(batch[2].option_logprobs, abs=1e-3)
    assert batch[0].rendered_prompt.startswith("<|im_start|>system") and batch[0].rendered_prompt.endswith("<|im_start|>assistant\n")


def test_greedy_generation_is_deterministic(backend):
    req = Request("c", "q", {}, "Is aspirin an opioid? Answer: Yes or No.", ["Yes", "No"], "generate", max_new_tokens=8)
    a = backend.generate([req])[0].raw_output
    b = backend.generate([req])[0].raw_output
    assert a == b and a.strip()


@pytest.mark.integration
def test_agrees_with_hf_backend(tmp_path):
    require_llama_cpp()
    out = {}
    for model in ("smollm2-135m", "smollm2-135m-llamacpp"):
        assert main(["run", "--model", model, "--limit", "3", "-o", str(tmp_path), "-q"]) == 0
        rows = [json.loads(x) for x in (tmp_path / f"{model}__qpain-demo__zero_shot__seed0__limit3" / "requests.jsonl").read_text().splitlines()]
        out[model] = {r["prompt"]: r for r in rows}
    hf, lc = out["smollm2-135m"], out["smollm2-135m-llamacpp"]
    assert hf.keys() == lc.keys() and len(hf) == 24
    deltas = []
    for prompt, row in hf.items():
        assert lc[prompt]["rendered_prompt"] == row["rendered_prompt"]
        deltas.append(abs(row["scored"]["probs"][0] - lc[prompt]["scored"]["probs"][0]))
    assert sum(deltas) / len(deltas) < TOL_MEAN and max(deltas) < TOL_MAX, (sum(deltas) / len(deltas), max(deltas))
