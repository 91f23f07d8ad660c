"""Scoring: a stored raw result -> an outcome. "invalid" is an outcome too, counted, never dropped.

- choice: option probabilities are the softmax of the option log-likelihoods over the option set.
- generate: the answer is parsed from the text; its probability vector is one-hot.
"""

from __future__ import annotations

import re

from ...cards.text import Question
from ..options import option_probabilities

_FINAL = re.compile(r"(?:final answer|answer)\s*(?:is)?\s*[:\-]?\s*\**\s*([^\n]*)", re.IGNORECASE)


def _wording_hits(text: str, options: list[str], wordings: list[str]) -> set[str]:
    """Options whose wording occurs in ``text``; longest wordings first, each match consumed, so
    "Strongly Disagree" is not also read as "Disagree"."""
    text = text.lower()
    hits = set()
    for w, o in sorted(((w.lower().strip(" ."), o) for w, o in zip(wordings, options) if w), key=lambda x: -len(x[0])):
        pattern = r"(?<![a-z])" + re.escape(w) + r"(?![a-z])"
        if re.search(pattern, text):
            hits.add(o)
            text = re.sub(pattern, " ", text)
    return hits


def parse_answer(text: str | None, options: list[str], wordings: list[str] | None = None) -> str | None:
    """Find the chosen option in free text. Prefers an explicit "Answer: X" (the last one, as
    chain-of-thought often restates), X being an option label or its wording; otherwise the first
    option word at the very start; otherwise the only option (label or wording) mentioned anywhere.
    Ambiguous text is invalid (None)."""
    if not text or not text.strip():
        return None
    wordings = wordings or [""] * len(options)
    lowered = {o.lower(): o for o in options}
    for m in reversed(list(_FINAL.finditer(text))):
        rest = m.group(1)
        token = re.match(r"\W*([A-Za-z0-9]+)", rest)
        if token and token.group(1).lower() in lowered:
            return lowered[token.group(1).lower()]
        hits = _wording_hits(rest, options, wordings)
        if len(hits) == 1:
            return hits.pop()
    start = re.match(r"\W*([A-Za-z0-9]+)", text)
    if start and start.group(1).lower() in lowered:
        # "Yes or No?" echoes the question: the first sentence must not name another option.
        first = re.split(r"[.!?\n]", text.strip(), maxsplit=1)[0]
        named = {w.lower() for w in re.findall(r"[A-Za-z0-9]+", first) if w.lower() in lowered}
        if len(named) == 1:
            return lowered[start.group(1).lower()]
    mentioned = {lowered[w.lower()] for w in re.findall(r"[A-Za-z0-9]+", text) if w.lower() in lowered}
    if len(mentioned) == 1:
        return mentioned.pop()
    hits = _wording_hits(text, options, wordings)
    if len(hits) == 1 and not mentioned:
        return hits.pop()
    return None


def score_row(row: dict, question: Question) -> dict:
    """Outcome fields for one stored request row."""
    options = row["options"]
    # A serving backend that could not read every option's log-probability generated an answer
    # instead and marked the row (extra.choice_fallback): it is parsed like a generate row.
    fallback = bool((row.get("extra") or {}).get("choice_fallback"))
    if row["method"] == "choice" and not fallback:
        probs = option_probabilities(row.get("option_logprobs") or [])
        answer = options[max(range(len(options)), key=lambda i: probs[i])] if probs else None
    else:
        answer = parse_answer(row.get("raw_output"), options, (row.get("meta") or {}).get("option_wordings"))
        probs = [1.0 if o == answer else 0.0 for o in options] if answer else None
    out: dict = {"valid": probs is not None, "answer": answer, "probs": probs}
    if probs is None:
        out.update(outcome=None, decision=None)
        return out
    if question.kind == "binary":
        p = probs[options.index(question.positive)]
        out.update(outcome=p, decision=answer == question.positive)
    elif question.kind == "ordinal":
        scores = question.scores or {}
        out.update(outcome=sum(p * scores[o] for p, o in zip(probs, options)), decision=answer)
    else:
        out.update(outcome=None, decision=answer)
    ref = (row.get("meta") or {}).get("reference") or ""
    out["correct"] = (answer.lower() == ref.lower()) if ref else None
    return out
