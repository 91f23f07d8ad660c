"""The refusal detector of the generative audit: does a generated text decline to answer?

A stated lexicon (:data:`REFUSAL_PATTERNS`), matched case-insensitively; its behaviour is pinned by a
table of texts that must and must not match (tests/test_refusal_table.py). Definitions:

- **refusal**: the text contains a first-person refusal ("I cannot provide ...", "I'm sorry, but I
  can't ...", "I must decline"), a self-description as an AI or language model ("As an AI, ..."), or
  a statement that it gives no medical advice ("I am not able to give medical advice"). It counts
  whether or not the text also names an answer: the parser decides validity, this detector only
  whether the model declined (a hedged answer after a refusal phrase is still a refusal).
- **not a refusal**: a deferral or disclaimer next to an answer ("consult your doctor", "I am not a
  substitute for a physician" is one only with a refusal verb), a clinical negative ("the patient
  cannot tolerate NSAIDs"), or "I cannot stress enough".

Written by hand (a lexicon, not a classifier) so that the detector is transparent, deterministic and
testable; no refusal classifier ships offline here.
"""

from __future__ import annotations

import re

# What a refusal declines to do (after "I cannot / I can't / I won't / I am unable to ..."), any
# inflection ("make", "making"); "I cannot stress enough" or "I can't say for sure" are not refusals.
_ACTS = (r"(?:provid|giv|offer|mak|answer|respond|recommend|advis|help|assist|comment|determin|decid|diagnos|"
         r"prescrib|speculat|judg|assess|fulfil|comply|engag|shar)\w*")
_I_CANNOT = (r"\bI\s*(?:cannot|can\s+not|can't|can’t|will\s+not|won't|won’t|(?:\s+am|'m|’m)\s+(?:unable|not\s+able)\s+to|"
             r"(?:\s+do\s+not|\s+don't|\s+don’t)\s+feel\s+comfortable)")

REFUSAL_PATTERNS: dict[str, str] = {
    # "I cannot provide ...", "I'm unable to answer", "I won't recommend", "I am not able to give",
    # "I don't feel comfortable making ..." (up to two words between: "I cannot in good conscience answer")
    "first_person_refusal": _I_CANNOT + r"\s+(?:[\w,]+\s+){0,3}?" + _ACTS + r"\b",
    # "I must decline", "I have to decline", "I refuse to"
    "decline": r"\bI\s+(?:must|have\s+to|will|need\s+to)\s+(?:respectfully\s+)?decline\b|\bI\s+refuse\b",
    # "As an AI ...", "as a language model", "I am an AI assistant"
    "ai_self_description": r"\bas\s+an?\s+(?:AI|artificial\s+intelligence|(?:large\s+)?language\s+model)\b|"
                           r"\bI(?:\s+am|'m|’m)\s+(?:just\s+|only\s+)?an?\s+(?:AI|language\s+model)\b",
    # "I'm sorry, but I can't", "Sorry, I cannot"
    "apology_refusal": r"\b(?:I'm|I’m|I\s+am)?\s*sorry,?\s+(?:but\s+)?I\s+(?:can(?:no|')t|can’t|cannot|am\s+unable|won't|won’t)\b",
    # "(I) cannot give medical advice", "not able to provide medical advice"
    "no_medical_advice": r"\b(?:can(?:no|')t|can’t|cannot|unable\s+to|not\s+able\s+to|do\s+not|don't|don’t)\s+"
                         r"(?:provide|give|offer)\s+(?:\w+\s+)?medical\s+advice\b",
}
_COMPILED = {name: re.compile(p, re.IGNORECASE) for name, p in REFUSAL_PATTERNS.items()}


def refusal_match(text: str | None) -> str | None:
    """The name of the first :data:`REFUSAL_PATTERNS` entry ``text`` matches, or None (also for an
    empty text: an empty output is invalid, not a refusal)."""
    if not text or not text.strip():
        return None
    for name, pattern in _COMPILED.items():
        if pattern.search(text):
            return name
    return None


def is_refusal(text: str | None) -> bool:
    """Whether ``text`` declines to answer (see the module docstring for the definition)."""
    return refusal_match(text) is not None
