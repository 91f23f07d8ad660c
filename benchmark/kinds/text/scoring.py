"""Scoring: a stored raw result -> an outcome. "invalid" is an outcome too, counted, never dropped;
``invalid_reason`` says why.

- choice: option probabilities are the softmax of the option log-likelihoods over the option set
  (option-text modes: of the declared length-normalised log-likelihoods, :func:`choice_probabilities`);
  scores that cannot tell the options apart (ties, impossible values, a wrong number of scores) make
  the row invalid (benchmark.kinds.options).
- generate: the answer is parsed from the text (:func:`parse_answer`); its probability vector is one-hot.
"""

from __future__ import annotations

import re

from ...cards.text import Question
from ..options import normalise_scores, score_options

# An explicit answer: "Answer:", "Final answer -", "**Answer**:", '"answer": ', "the answer is",
# "my answer would be". "Answer with Yes or No" (the prompt's instruction) is not one: a separator
# or "is"/"would be"/"will be" must follow.
_MARKER = re.compile(
    r"\b(?:final\s+)?answer\b(?:\s*\*\*)?[\"'”]?\s*(?:[:=\-–—]|\bis\b|\bwould\s+be\b|\bwill\s+be\b)",
    re.IGNORECASE,
)
_NEGATION = re.compile(r"^(?:not|never|neither|nor|cannot|without|\w+n't|\w+n’t)$")
# A word counts as the answer itself ("strict") when punctuation or the end of a line follows it.
_STRICT_AFTER = re.compile(r"\s*(?:[.,!?;:)\]\"'*`”’]|$)", re.MULTILINE)


def _sentences_end(text: str) -> int:
    """End of the first sentence: a newline, or . ! ? after a token of 2+ characters ("4." and "b."
    are option labels, not sentence ends)."""
    for m in re.finditer(r"\n|(?<=[^\W_][^\W_])[.!?](?=\s|$)", text):
        return m.start()
    return len(text)


def _negated(text: str, pos: int) -> bool:
    """A negation among the (up to 3) words before ``pos`` in the same clause."""
    clause = re.split(r"[,;:.!?\n()]", text[:pos])[-1]
    return any(_NEGATION.match(w) for w in re.findall(r"[\w'’]+", clause.lower())[-3:])


def _mentions(text: str, options: list[str], wordings: list[str], first_token: bool) -> list[tuple[int, str, bool, bool]]:
    """Every mention of an option in ``text``: (position, option, negated, strict).

    - A wording (longest first, each match consumed so "Strongly agree" is not also "Agree"); a
      wording of 2+ words is strict, a single word as below.
    - A label of 2+ characters ("Yes") as a whole word; strict when punctuation or a line end follows.
    - A one-character label ("a", "3") only in label form: "(a)", "a)", "[a]", "option a", "choice a"
      (strict); or, with ``first_token``, as the first token followed by ) . : - , or the end
      ("Answer: B", "Answer: 4. Agree"). "a" the article and "2 days" are never answers."""
    low = text.lower()
    found: list[tuple[int, str, bool, bool]] = []
    pairs = sorted(((w.lower().strip(" ."), o) for w, o in zip(wordings, options) if w and w.strip(" .")), key=lambda x: -len(x[0]))
    for w, o in pairs:
        for m in re.finditer(r"(?<![^\W_])" + re.escape(w) + r"(?![^\W_])", low):
            strict = " " in w or bool(_STRICT_AFTER.match(low, m.end()))
            found.append((m.start(), o, _negated(low, m.start()), strict))
        low = re.sub(r"(?<![^\W_])" + re.escape(w) + r"(?![^\W_])", lambda m: " " * len(m.group()), low)
    for o in options:
        label = o.lower().strip()
        if len(label) > 1:
            for m in re.finditer(r"(?<![^\W_])" + re.escape(label) + r"(?![^\W_])", low):
                found.append((m.start(), o, _negated(low, m.start()), bool(_STRICT_AFTER.match(low, m.end()))))
            continue
        form = (r"\(\s*" + re.escape(label) + r"\s*\)|\[\s*" + re.escape(label) + r"\s*\]|(?<![^\W_])" + re.escape(label)
                + r"\)|\b(?:option|choice)\s+" + re.escape(label) + r"(?![^\W_])")
        for m in re.finditer(form, low):
            found.append((m.start(), o, _negated(low, m.start()), True))
        if first_token:
            m = re.match(r"[\W_]*?(?<![^\W_])(" + re.escape(label) + r")(?=\s*(?:[().:\]\-–,]|$))", low)
            if m and not any(p == m.start(1) for p, *_ in found):
                found.append((m.start(1), o, False, True))
    return found


def _decide(mentions) -> str | None:
    """One option named, not negated: that option; anything else: None."""
    options = {o for _, o, _, _ in mentions}
    if len(options) == 1 and not any(neg for _, _, neg, _ in mentions):
        return options.pop()
    return None


def parse_answer(text: str | None, options: list[str], wordings: list[str] | None = None) -> str | None:
    """The option a free-text answer chose, or None (invalid) when it is not unambiguous.

    Rules, in order (README "Statistics", parsing):

    1. Explicit answer: the last "Answer:" / "Final answer:" / "The answer is" whose text (the rest of
       its line, or the next line when that is empty; its first sentence) names an option decides: it
       must name exactly one option, not negated ("Answer: Yes or No", the prompt's format line
       echoed back, and "The answer is not Yes" are invalid).
    2. A lone option at the very start, followed by punctuation or a line end, whose first sentence
       names no other option ("Yes. The patient..."; "Yes or no? ..." is invalid).
    3. Otherwise the text must name exactly one option anywhere, never negated, at least once as the
       answer itself (followed by punctuation or a line end, or a label form such as "(b)").

    One-character labels count only in label form ("(a)", "a)", "option a") or as the first token
    after an answer marker; wordings (``wordings``, e.g. Likert "Strongly agree") count like labels.
    Hedged text that still names one option ("Probably yes.") is that option."""
    if not text or not text.strip():
        return None
    wordings = list(wordings or [""] * len(options))
    wordings += [""] * (len(options) - len(wordings))
    # 1. explicit answers, last first
    for m in reversed(list(_MARKER.finditer(text))):
        rest = text[m.end():]
        line_end = rest.find("\n")
        content = rest if line_end < 0 else rest[:line_end]
        if not re.search(r"[^\W_]", content) and line_end >= 0:
            following = rest[line_end:].lstrip()
            content = following.split("\n", 1)[0]
        content = content.strip()
        content = content[:_sentences_end(content)]
        found = _mentions(content, options, wordings, first_token=True)
        if found:
            return _decide(found)
    # 2. a lone option at the start
    stripped = text.strip()
    first = stripped[:_sentences_end(stripped)]
    found = _mentions(first, options, wordings, first_token=True)
    lead = re.match(r"[\W_]*", first).end()
    at_start = [f for f in found if f[0] <= lead + 1 and f[3]]
    if at_start and _decide(found) is not None:
        return _decide(found)
    # 3. exactly one option anywhere
    found = _mentions(stripped, options, wordings, first_token=False)
    if found and any(strict for *_, strict in found):
        return _decide(found)
    return None


def choice_probabilities(row: dict) -> tuple[list[float] | None, str | None]:
    """(one probability per option, None) or (None, invalid reason) for a choice row.

    Labels mode: the softmax of the option log-likelihoods over the option set. Option-text mode
    (``meta.option_scoring``, see ``PromptMode.scoring``): the stored log-likelihoods are the sums over
    each option text's tokens; they are checked as they are (a sum above 0 is impossible), then divided
    by the declared length (:func:`benchmark.kinds.options.normalise_scores`), and the probabilities are
    the softmax of the normalised scores, so the highest is the chosen option. With ``none`` they are
    the model's probabilities over the option set; with ``chars``/``bytes`` a per-character (per-byte)
    ranking score, not a probability of the model."""
    texts = row["options"]
    probs, reason = score_options(row.get("option_logprobs") or [], texts)
    scoring = (row.get("meta") or {}).get("option_scoring")
    if probs is None or not scoring or scoring.get("normalization", "none") == "none":
        return probs, reason
    normalised = normalise_scores([float(x) for x in row["option_logprobs"]], texts, scoring["normalization"])
    return score_options(normalised, texts, log_likelihoods=False)


def score_row(row: dict, question: Question) -> dict:
    """Outcome fields for one stored request row. In option-text mode the row's ``options`` are the
    scored texts and ``meta.option_labels`` the labels the answer is reported in ("A".."E")."""
    options = (row.get("meta") or {}).get("option_labels") or row["options"]
    # A serving backend that could not read every option's log-probability generated an answer
    # instead and marked the row (extra.choice_fallback): it is parsed like a generate row.
    fallback = bool((row.get("extra") or {}).get("choice_fallback"))
    reason = None
    if row["method"] == "choice" and not fallback:
        probs, reason = choice_probabilities(row)
        answer = options[max(range(len(options)), key=lambda i: probs[i])] if probs else None
    else:
        answer = parse_answer(row.get("raw_output"), options, (row.get("meta") or {}).get("option_wordings"))
        probs = [1.0 if o == answer else 0.0 for o in options] if answer else None
        reason = None if answer else ("empty" if not (row.get("raw_output") or "").strip() else "unparseable")
    out: dict = {"valid": probs is not None, "answer": answer, "probs": probs}
    if probs is None:
        out.update(outcome=None, decision=None, invalid_reason=reason)
        return out
    if question.kind == "binary":
        p = probs[options.index(question.positive)]
        out.update(outcome=p, decision=answer == question.positive)
    elif question.kind == "ordinal":
        scores = question.scores or {}
        out.update(outcome=sum(p * scores[o] for p, o in zip(probs, options)), decision=answer)
    else:
        out.update(outcome=None, decision=answer)
    ref = str((row.get("meta") or {}).get("reference") or "").strip()
    if ref and ref.lower() not in {o.lower() for o in options}:
        # A reference answer that is no option can never be matched: it is not counted as wrong
        # (that would charge the model for the data), it is left out of accuracy and reported.
        out["correct"] = None
        out["reference_unknown"] = ref
        return out
    out["correct"] = (answer.lower() == ref.lower()) if ref else None
    return out
