"""Answer parsing for generation modes (chain-of-thought), and scoring of ordinal/categorical rows."""

from __future__ import annotations

import pytest

from benchmark.kinds.text.scoring import parse_answer, score_row
from benchmark.cards import load_task

LIKERT = ["1", "2", "3", "4", "5"]
WORDS = ["Strongly Disagree", "Disagree", "Neutral", "Agree", "Strongly Agree"]


@pytest.mark.parametrize(
    "text, expected",
    [
        ("The pain is real.\nAnswer: 4. Agree", "4"),
        ("Answer: 2\nOn reflection...\nFinal answer: 5", "5"),  # the last explicit answer wins
        ("I would say strongly agree.", "5"),  # wording, longest match first
        ("Answer: Strongly disagree", "1"),
        ("Answer: disagree", "2"),
        ("3", "3"),
        ("Either 2 or 4 could apply.", None),  # ambiguous: invalid, never guessed
        ("", None),
    ],
)
def test_likert_parsing(text, expected):
    assert parse_answer(text, LIKERT, WORDS) == expected


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Step 1: pain is controlled. Answer: No.", "No"),
        ("**Answer:** Yes", "Yes"),
        ("Yes. The patient needs opioids.", "Yes"),
        ("Yes or no? Hard to say.", None),
        ("Answer: b) send home with Motrin", "b"),
    ],
)
def test_choice_parsing(text, expected):
    options = ["a", "b", "c", "d"] if expected == "b" else ["Yes", "No"]
    assert parse_answer(text, options) == expected


def _row(method, options, logprobs=None, raw=None, meta=None):
    return {"options": options, "method": method, "option_logprobs": logprobs, "raw_output": raw, "meta": meta or {}}


def test_likert_expected_value_and_distribution_inputs():
    q = load_task("triage").question("agreement")
    import math

    s = score_row(_row("choice", LIKERT, [math.log(p) for p in (0.1, 0.2, 0.4, 0.2, 0.1)]), q)
    assert s["valid"] and s["decision"] == "3" and s["outcome"] == pytest.approx(3.0)
    assert s["probs"] == pytest.approx([0.1, 0.2, 0.4, 0.2, 0.1])
    cot = score_row(_row("generate", LIKERT, raw="Reasoning.\nAnswer: Strongly agree", meta={"option_wordings": WORDS}), q)
    assert cot["decision"] == "5" and cot["outcome"] == 5.0


def test_unparseable_and_non_finite_rows_are_invalid_not_dropped():
    q = load_task("qpain").question("dose")
    assert score_row(_row("choice", ["Low", "High"], [-1.0, "nan"]), q)["valid"] is False
    bad = score_row(_row("generate", ["Low", "High"], raw="It depends on the patient."), q)
    assert bad["valid"] is False and bad["outcome"] is None
    ok = score_row(_row("generate", ["Low", "High"], raw="Answer: High", meta={"reference": "Low"}), q)
    assert ok["outcome"] == 1.0 and ok["correct"] is False
