"""Shared-prefix KV cache in the hf backend: exact against the unshared computation."""

import pytest
import torch

from benchmark.backends import hf
from benchmark.backends.hf import HFBackend, common_prefix_len
from benchmark.config import ModelSpec
from benchmark.requests import Request

EXAMPLES = " ".join(
    f"Example {i}: Patient B has pain after surgery. Would you offer opioids? Answer: {'Yes' if i % 2 else 'No'}."
    for i in range(6)
)
CASES = [
    "Patient D is 40 and has back pain.",
    "Patient D has a broken arm after a fall and severe pain in the arm that is getting worse.",
    "Pain.",
    "Patient D, a woman, has kidney stones; she vomited twice and ketorolac did not help her at all today.",
    "Patient D has cancer pain.",
]


def _requests(method="choice", options=("Yes", "No")):
    return [
        Request(case_id=str(i), question_id="q", attributes={}, prompt=f"{EXAMPLES}\n\nVignette: {c}\nAnswer:",
                options=list(options), method=method, max_new_tokens=6)
        for i, c in enumerate(CASES)
    ]


def _backend(tiny_llama_dir, batch_size="auto", share=True):
    b = HFBackend(ModelSpec(name="tiny", backend="hf", model=str(tiny_llama_dir), chat_template=True, batch_size=batch_size))
    b.share_prefix = share
    return b


def test_common_prefix_len():
    assert common_prefix_len([[1, 2, 3, 4], [1, 2, 3, 5], [1, 2, 9]]) == 2
    assert common_prefix_len([[1, 2, 3], [1, 2, 3]]) == 2  # leaves one token to score
    assert common_prefix_len([[7], [7, 8]]) == 0
    assert common_prefix_len([]) == 0


@pytest.mark.parametrize("batch_size", ["auto", 2])
def test_choice_scores_equal_unshared(tiny_llama_dir, batch_size):
    shared = _backend(tiny_llama_dir, batch_size)
    plain = _backend(tiny_llama_dir, batch_size, share=False)
    reqs = _requests()
    got = shared.score_choices(reqs)
    assert shared._prefix_memo is not None and len(shared._prefix_memo[0]) >= hf.MIN_SHARED_PREFIX  # the prefix ran once
    want = plain.score_choices(reqs)
    assert plain._prefix_memo is None
    for g, w in zip(got, want):
        assert g.n_prompt_tokens == w.n_prompt_tokens
        torch.testing.assert_close(torch.tensor(g.option_logprobs), torch.tensor(w.option_logprobs), atol=1e-5, rtol=0)
    # The memoised prefix is not modified by use: a second call gives the same numbers.
    again = shared.score_choices(reqs)
    assert [g.option_logprobs for g in again] == [g.option_logprobs for g in got]


def test_short_common_prefix_is_not_shared(tiny_llama_dir):
    b = _backend(tiny_llama_dir)
    reqs = [Request(case_id=str(i), question_id="q", attributes={}, prompt=c, options=["Yes", "No"], method="choice") for i, c in enumerate(CASES)]
    b.score_choices(reqs)
    assert b._prefix_memo is None


def test_generation_equal_unshared(tiny_llama_dir):
    shared = _backend(tiny_llama_dir)
    plain = _backend(tiny_llama_dir, share=False)
    reqs = _requests(method="generate")
    got = shared.generate(reqs)
    assert shared._prefix_memo is not None
    want = plain.generate(reqs)
    assert [g.raw_output for g in got] == [w.raw_output for w in want]
    assert all(g.raw_output for g in got)


def test_no_deprecated_cache_argument(tiny_llama_dir):
    """Scoring (shared prefix, multi-token options) and generation use transformers' supported cache
    argument: no FutureWarning and no `past_key_values` deprecation log (removal announced for 5.40)."""
    import logging
    import warnings

    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    hf_root = logging.getLogger("transformers")  # propagate=False: caplog would not see it
    old_level = hf_root.level
    hf_root.addHandler(handler)
    hf_root.setLevel(logging.WARNING)
    logging.Logger.warning_once.cache_clear()  # transformers logs the deprecation once per process
    b = _backend(tiny_llama_dir)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            b.score_choices(_requests())
            assert b._prefix_memo is not None  # the shared-prefix path ran
            b.score_choices(_requests(options=("Yes", "No", "Low High")))  # multi-token options
            b.generate(_requests(method="generate")[:2])
    finally:
        hf_root.removeHandler(handler)
        hf_root.setLevel(old_level)
    assert not [r.getMessage() for r in records if "deprecated" in r.getMessage()]
