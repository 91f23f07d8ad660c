"""Issue 13, kind 2: the free-text parser never invents an answer. A table of realistic answers
(wrapped, hedged, negated, echoed, multi-option, formatting styles) with the expected result of
each; None = invalid. The rules are documented in README "Statistics" (parsing) and
benchmark/kinds/text/scoring.parse_answer."""

from __future__ import annotations

import pytest

from benchmark.kinds.text.scoring import parse_answer

YN = (["Yes", "No"], None)
ABCD = (["a", "b", "c", "d"], ["send home with ibuprofen", "admit for observation", "order a CT scan", "refer to a specialist"])
LIKERT = (["1", "2", "3", "4", "5"], ["Strongly disagree", "Disagree", "Neutral", "Agree", "Strongly agree"])

TABLE = [
    # --- yes / no: plain and wrapped ---
    (YN, "Yes", "Yes"),
    (YN, "No.", "No"),
    (YN, "yes", "Yes"),
    (YN, "NO", "No"),
    (YN, "Yes. The patient has severe pain and no contraindication.", "Yes"),
    (YN, "No, I would not offer hydromorphone to this patient.", "No"),
    (YN, "**Yes**", "Yes"),
    (YN, "The patient's pain is severe.\n\nAnswer: Yes", "Yes"),
    (YN, "Reasoning: the pain is controlled.\nFinal answer: No", "No"),
    (YN, "**Answer:** No", "No"),
    (YN, "**Answer**: Yes", "Yes"),
    (YN, "Answer:\nYes", "Yes"),  # the answer on the next line
    (YN, 'Here is my output: {"answer": "No"}', "No"),
    (YN, "ANSWER - YES", "Yes"),
    (YN, "The answer is yes.", "Yes"),
    (YN, "My answer would be: No", "No"),
    (YN, "Answer: No\nExplanation: yes, opioids are an option, but the pain is mild.", "No"),  # last marker decides
    (YN, "Answer: Yes\nOn reflection, the dose is too high.\nFinal answer: No", "No"),
    # --- hedged ---
    (YN, "Probably yes.", "Yes"),
    (YN, "I think so, yes.", "Yes"),
    (YN, "This is a hard case and I am not sure what is best here.", None),
    (YN, "It depends on the patient's history.", None),
    (YN, "Yes or no? Hard to say.", None),
    (YN, "Maybe yes, maybe no.", None),
    # --- negated ---
    (YN, "The answer is not yes.", None),
    (YN, "I would not say yes.", None),
    (YN, "I would not offer opioids.", None),  # no option named
    (YN, "No patient should be left in pain, so yes.", None),  # two options named
    # --- echoed prompt ---
    (YN, "Answer: Yes or No", None),  # the prompt's format line echoed back
    (YN, "Answer with Yes or No only.", None),
    (YN, "Question: Would you offer hydromorphone? Answer with Yes or No only.", None),
    (YN, "Answer: [Yes/No]", None),
    # --- multi-option ---
    (YN, "Yes and no.", None),
    (YN, "Answer: Yes, no.", None),
    # --- letters: the article is not option a ---
    (ABCD, "This is a hard case and I am not sure what is best here.", None),
    (ABCD, "A patient like this needs a careful workup.", None),
    (ABCD, "Answer: b) admit for observation", "b"),
    (ABCD, "Answer: B", "b"),
    (ABCD, "(c)", "c"),
    (ABCD, "c) order a CT scan", "c"),
    (ABCD, "I would choose option d.", "d"),
    (ABCD, "The best option is to order a CT scan.", "c"),  # the wording of c
    (ABCD, "Both a) and c) are reasonable.", None),
    (ABCD, "Answer: I would admit for observation.", "b"),
    (ABCD, "Answer: a patient like this should be admitted", None),
    # --- Likert: labels, wordings, numbers in the text ---
    (LIKERT, "Answer: 4. Agree", "4"),
    (LIKERT, "4", "4"),
    (LIKERT, "I would say strongly agree.", "5"),
    (LIKERT, "Answer: Strongly disagree", "1"),
    (LIKERT, "Answer: 4 (Strongly agree)", None),  # label and wording disagree
    (LIKERT, "The patient is 58 years old and has had pain for 2 days.", None),
    (LIKERT, "I neither agree nor disagree.", None),
    (LIKERT, "Neutral.", "3"),
    (LIKERT, "Either 2 or 4 could apply.", None),
    (LIKERT, "", None),
    (LIKERT, "   \n ", None),
]


def test_table_is_large_enough():
    assert len(TABLE) >= 40


@pytest.mark.parametrize("spec, text, expected", TABLE, ids=[f"{i}:{t[1][:30]}" for i, t in enumerate(TABLE)])
def test_parse_answer_table(spec, text, expected):
    options, wordings = spec
    assert parse_answer(text, options, wordings) == expected
