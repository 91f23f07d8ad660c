"""VLM answers -> labels: the FairMed-VLM paper's answer normalisation Φ (string canonicalisation +
vocabulary mapping), and per-label answers -> one imaging prediction row.

A VLM is asked the card's ``vlm.question`` once per label (``{label}`` = the label's display name).
Each answer is stored as it came from the model (``vlm_answers`` in the row: option log-likelihoods
or generated text), and the probabilities are derived from it here, so ``fairbench score`` re-applies
a changed vocabulary without running the model.

- Choice scoring: P(label) = the softmax of the option log-likelihoods, at the positive option.
- Generation: Φ maps the text to an option; P(label) is 1 or 0. An answer Φ cannot map is invalid.
- Multiclass tasks ask one yes/no question per class; the class probabilities are the positive
  probabilities normalised over the classes (generation: the affirmed classes share the mass;
  no affirmed class is invalid).
A row is valid only when every label's answer is; invalid rows are counted, never dropped.
"""

from __future__ import annotations

import re
import unicodedata

from ...errors import FairbenchError
from ..options import option_probabilities

_NON_WORD = re.compile(r"[^\w]+")


def canonical(text: str | None) -> str:
    """Lower case, Unicode-normalised, punctuation turned into spaces, whitespace collapsed."""
    if not text:
        return ""
    text = unicodedata.normalize("NFKC", text).casefold()
    return " ".join(_NON_WORD.sub(" ", text).replace("_", " ").split())


def vocabulary(spec) -> dict[str, str]:
    """Canonical spelling -> option, from the options' own names and ``vlm.synonyms``."""
    vocab: dict[str, str] = {}
    for option in spec.options:
        for spelling in [option, *spec.synonyms.get(option, [])]:
            c = canonical(spelling)
            if not c:
                continue
            if vocab.get(c, option) != option:
                raise FairbenchError(
                    f"task card field vlm.synonyms: {spelling!r} maps to both {vocab[c]!r} and {option!r}; keep it under one option."
                )
            vocab[c] = option
    unknown = set(spec.synonyms) - set(spec.options)
    if unknown:
        raise FairbenchError(f"task card field vlm.synonyms: {sorted(unknown)} are not vlm.options {spec.options}.")
    return vocab


def normalise(text: str | None, spec) -> str | None:
    """Φ: the option an answer means, or None.

    1. the whole canonical answer is a vocabulary entry ("Yes.", "ABSENT");
    2. else the answer starts with one ("No, the lungs are clear" -> No; longest entry first);
    3. else exactly one option has entries among the answer's words ("I see a lesion" -> Yes).
    Answers naming several options anywhere but at the start ("there is no lesion") are ambiguous: None.
    """
    c = canonical(text)
    if not c:
        return None
    vocab = vocabulary(spec)
    if c in vocab:
        return vocab[c]
    for entry in sorted(vocab, key=len, reverse=True):
        if c.startswith(entry + " "):
            return vocab[entry]
    padded = f" {c} "
    found = {option for entry, option in vocab.items() if f" {entry} " in padded}
    return found.pop() if len(found) == 1 else None


def answer_probability(answer: dict, spec) -> tuple[float | None, str | None]:
    """(P(positive option), the option read) for one stored answer; (None, None) when invalid.
    ``answer`` holds ``option_logprobs`` (choice scoring) or ``raw_output`` (generation, or a
    serving backend's fallback when it could not read every option's log-probability)."""
    lps = answer.get("option_logprobs")
    if lps is not None:
        probs = option_probabilities(lps)
        if probs is None:
            return None, None
        k = spec.options.index(spec.positive)
        best = spec.options[max(range(len(probs)), key=probs.__getitem__)]
        return probs[k], best
    option = normalise(answer.get("raw_output"), spec)
    if option is None:
        return None, None
    return (1.0 if option == spec.positive else 0.0), option


def row_from_answers(answers: dict[str, dict], card) -> dict:
    """``probs`` (per label, or per class for multiclass), ``valid`` and the option read per label."""
    spec = card.vlm
    per, read = [], {}
    for label in card.labels:
        p, option = answer_probability(answers.get(label) or {}, spec)
        per.append(p)
        read[label] = option
    valid = all(p is not None for p in per)
    if valid and card.label_type == "multiclass":
        total = sum(per)
        valid = total > 0
        per = [p / total for p in per] if valid else per
    return {"probs": per if valid else None, "valid": valid, "answers_read": read}


def questions(card) -> list[tuple[str, str]]:
    """(label, question text) per label, from the card's ``vlm.question``."""
    try:
        return [(label, card.vlm.question.format(label=card.display(label))) for label in card.labels]
    except (KeyError, IndexError) as exc:
        raise FairbenchError(f"task {card.name}: field vlm.question may use only {{label}}, not {exc}.") from None
