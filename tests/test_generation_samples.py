"""Seeded samples of a free-text prompt (prompt mode ``samples``) and the rationale the drift compares."""

from __future__ import annotations

import pytest

from benchmark.cards import load_task
from benchmark.cards.text import PromptMode
from benchmark.kinds.text.expand import expand
from benchmark.kinds.text.generation import rationale
from benchmark.kinds.text.prompts import build_requests, sample_seed
from benchmark.data.cases import LoadReport
from benchmark.data.text import load_cases
from benchmark.requests import Request


def _requests(temperature: float):
    card = load_task("qpain-demo")
    cases, report, _ = load_cases(card, None)
    cases = [c for c in cases if c.case_id == cases[0].case_id]
    return build_requests(card, expand(cases, card.counterfactual, 0, LoadReport()), "explain", 0, temperature=temperature)


def test_samples_get_their_own_seed_and_cache_key():
    reqs = _requests(0.7)
    assert len(reqs) == 2 * 8 and {r.sample for r in reqs} == {0, 1}
    by_variant = {}
    for r in reqs:
        by_variant.setdefault(tuple(r.attributes.items()), []).append(r)
    for pair in by_variant.values():
        a, b = sorted(pair, key=lambda r: r.sample)
        assert a.prompt == b.prompt and a.seed == 0 and b.seed == sample_seed(0, 1) != 0
        assert a.key("m") != b.key("m")
    # Sample 0 keeps the historical key (no "sample" field), so existing caches stay valid.
    a = next(r for r in reqs if r.sample == 0)
    legacy = Request(a.case_id, a.question_id, a.attributes, a.prompt, a.options, a.method, a.max_new_tokens,
                     a.temperature, a.seed, a.meta)
    assert a.key("m") == legacy.key("m")
    assert sample_seed(0, 1) != sample_seed(1, 0)  # sample 1 of seed 0 is not sample 0 of seed 1


def test_greedy_draws_one_sample():
    assert {r.sample for r in _requests(0.0)} == {0} and len(_requests(0.0)) == 8


def test_samples_need_a_generate_mode():
    with pytest.raises(ValueError, match="needs method: generate"):
        PromptMode(method="choice", template="{question}", samples=2)


@pytest.mark.parametrize("text,expected", [
    ("The pain is severe. Opioids are indicated.\nAnswer: Yes", "The pain is severe. Opioids are indicated."),
    ("Answer: No\nThe pain is mild; NSAIDs suffice.", "The pain is mild; NSAIDs suffice."),
    ("Answer: Yes. Because the fracture is acute.", "Because the fracture is acute."),
    ("**Answer**: Yes\nReason here.", "Reason here."),
    ("Step 1: assess. The answer is Yes.", "Step 1: assess."),
    ("Final answer: No", ""),
    ("No marker at all.", "No marker at all."),
    ("", ""),
])
def test_rationale_leaves_out_the_answer_statement(text, expected):
    assert rationale(text) == expected
