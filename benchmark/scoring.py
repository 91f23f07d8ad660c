"""Scoring: a stored raw result -> an outcome. "invalid" is an outcome too, counted, never dropped.

- choice: option probabilities are the softmax of the option log-likelihoods over the option set.
- generate: the answer is parsed from the text; its probability vector is one-hot.
"""

from __future__ import annotations

import math
import re

from .taskcard import Question


def option_probabilities(logprobs: list) -> list[float] | None:
    """Normalise option log-likelihoods over the option set; None when any is not a finite number."""
    try:
        values = [float(x) for x in logprobs]
    except (TypeError, ValueError):
        return None
    if not values or not all(math.isfinite(v) for v in values):
        return None
    top = max(values)
    exps = [math.exp(v - top) for v in values]
    total = sum(exps)
    return [e / total for e in exps]


_FINAL = re.compile(r"(?:final answer|answer)\s*(?:is)?\s*[:\-]?\s*\**\s*([A-Za-z0-9]+)", re.IGNORECASE)


def parse_answer(text: str | None, options: list[str]) -> str | None:
    """Find the chosen option in free text. Prefers an explicit "Answer: X" (the last one, as
    chain-of-thought often restates); otherwise the first option word at the very start; otherwise
    the only option word mentioned anywhere. Ambiguous text is invalid (None)."""
    if not text or not text.strip():
        return None
    lowered = {o.lower(): o for o in options}
    finals = [m.group(1).lower() for m in _FINAL.finditer(text)]
    for word in reversed(finals):
        if word in lowered:
            return lowered[word]
    start = re.match(r"\W*([A-Za-z0-9]+)", text)
    if start and start.group(1).lower() in lowered:
        return lowered[start.group(1).lower()]
    mentioned = {lowered[w.lower()] for w in re.findall(r"[A-Za-z0-9]+", text) if w.lower() in lowered}
    if len(mentioned) == 1:
        return mentioned.pop()
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
        answer = parse_answer(row.get("raw_output"), options)
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
