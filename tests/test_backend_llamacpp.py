"""llamacpp backend on the embedded SmolLM2 GGUF: a request's scores do not depend on the order, the
batch or the neighbours it is scored with, multi-token options add up, and P(option) agrees with the hf backend within the stated
tolerance (README "Serving backends")."""

from __future__ import annotations

import json
import random

import pytest

pytestmark = pytest.mark.numerics  # model floats: rerun under the AVX2 emulation (Makefile NUMERICS_ENV)
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
    """Short prompts, one asked twice, one a prefix of another, and prompts of more than 64 tokens
    (llama.cpp's flash-attention tile) and of more than 256 (llama.cpp then reads 512 cells, where one
    query takes its split-KV kernel)."""
    ctx = "Patient {n} has severe pain after surgery. Would you offer opioids? Answer with Yes or No only."
    history = " The patient reports chronic back pain and earlier opioid use."
    texts = [ctx.format(n=n) for n in ("A", "B", "Carla", "A", "Dmitri")]
    texts += [ctx.format(n="A") + history * 12, ctx.format(n="B") + history * 12, ctx.format(n="A")[:-1],
              ctx.format(n="Eve") + history * 22]
    opts = ["Yes", "No", "Moderate pain relief"]  # the last is several tokens
    return [Request(f"c{i}", "q", {}, t, opts, "choice") for i, t in enumerate(texts)]


def test_scores_are_a_function_of_the_request_alone(backend):
    """Issue 22: the same request scored with all others, in three orders, in batches of 1, 2, 3 and all,
    and alone in another backend (3 streams, 2 threads) gets the same option log-probabilities, bit for
    bit (the issue asks 1e-4 nats; the order-dependent scorer differed by 0.071)."""
    from benchmark.backends.llamacpp import LlamaCppBackend

    reqs = _requests()
    lengths = [len(backend.encode_prompt(backend.render(r.prompt))) for r in reqs]
    assert max(lengths) > 256 and any(64 < n < 256 for n in lengths)
    assert len(backend.encode_option("Moderate pain relief")) > 1
    ref = [r.option_logprobs for r in backend.score_choices(reqs)]
    n = len(reqs)
    orders = [list(range(n)), list(reversed(range(n))), random.Random(0).sample(range(n), n)]
    seen = {}
    for order, sizes in zip(orders, ((1, n), (3,), (2, n))):
        for size in sizes:
            for k in range(0, n, size):
                part = order[k : k + size]
                for i, res in zip(part, backend.score_choices([reqs[i] for i in part])):
                    seen.setdefault(i, []).append(res.option_logprobs)
    spec = load_models().get("smollm2-135m-llamacpp").model_copy(deep=True)
    spec.extra.update({"n_seq": 3, "n_threads": 2})
    other = LlamaCppBackend(spec)
    try:
        for i, r in enumerate(reqs):
            seen[i].append(other.score_choices([r])[0].option_logprobs)
    finally:
        other.close()
    for i in range(n):
        worst = max(max(abs(a - b) for a, b in zip(got, ref[i])) for got in seen[i])
        assert all(got == ref[i] for got in seen[i]), f"request {i} ({lengths[i]} tokens): {worst:.3g} nats apart"
    assert ref[0] == ref[3]  # the same prompt twice
    assert ref[0] != pytest.approx(ref[2], abs=1e-3)
    assert all(x < 0 for row in ref for x in row)


def test_multi_token_option_is_the_sum_of_its_token_log_probabilities(backend):
    """log P(t0 t1 | p) = log P(t0 | p) + log P(t1 | p t0), each side scored as its own request."""
    scorer = backend._scorer()
    prompt = backend.encode_prompt(backend.render("Would you offer opioids? Answer briefly."))
    option = backend.encode_option("Moderate pain relief")
    whole = scorer.score([prompt], [[option]])[0][0]
    parts = scorer.score([prompt[: len(prompt)]], [[option[:1]]])[0][0]
    for t in range(1, len(option)):
        parts += scorer.score([prompt + option[:t]], [[option[t : t + 1]]])[0][0]
    assert whole == pytest.approx(parts, abs=1e-9)


def test_rendered_prompt_uses_the_chat_template(backend):
    res = backend.score_choices(_requests()[:1])[0]
    assert res.rendered_prompt.startswith("<|im_start|>system") and res.rendered_prompt.endswith("<|im_start|>assistant\n")


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
