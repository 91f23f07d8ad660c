"""Option probabilities from stored option log-likelihoods: the one normalisation every kind uses.

Scores that cannot tell the options apart make the row invalid (counted, never guessed), with a
reason (:data:`REASONS`):

- ``count``: the number of scores is not the number of options;
- ``non_finite``: a score is missing, NaN or infinite;
- ``impossible``: a log-likelihood above 0 (a probability above 1), or options whose probabilities
  sum above 1 although none is a prefix of another (mutually exclusive continuations cannot);
  a server that returns 0.0 for every echoed token gives both;
- ``tie``: the highest score is shared by several options, so no option is chosen.
"""

from __future__ import annotations

import math

# Log-space slack for "impossible": float32/float16 log-softmax rounding stays far below it, while
# an echoing server (every option log-likelihood 0, the sum of probabilities = the number of options)
# is far above it.
IMPOSSIBLE_SLACK = 0.01
REASONS = ("count", "non_finite", "impossible", "tie")


def score_options(logprobs, options: list[str] | None = None, log_likelihoods: bool = True) -> tuple[list[float] | None, str | None]:
    """(probabilities normalised over the option set, None) or (None, reason) when the scores are not
    usable. ``options`` enables the count check and the exclusivity check (skipped when an option is
    a prefix of another, whose continuation may then include it). ``log_likelihoods=False``: the
    scores are length-normalised (:func:`normalise_scores`), not log-probabilities, so the
    "impossible" checks do not apply to them."""
    try:
        values = [float(x) for x in logprobs]
    except (TypeError, ValueError):
        return None, "non_finite"
    if options is not None and len(values) != len(options):
        return None, "count"
    if not values:
        return None, "count"
    if not all(math.isfinite(v) for v in values):
        return None, "non_finite"
    top = max(values)
    exps = [math.exp(v - top) for v in values]
    total = sum(exps)
    if log_likelihoods and top > IMPOSSIBLE_SLACK:
        return None, "impossible"
    exclusive = options is None or not any(a != b and b.strip().startswith(a.strip()) for a in options for b in options)
    if log_likelihoods and exclusive and top + math.log(total) > IMPOSSIBLE_SLACK:
        return None, "impossible"
    if sum(v == top for v in values) > 1:
        return None, "tie"
    return [e / total for e in exps], None


def option_probabilities(logprobs: list, options: list[str] | None = None) -> list[float] | None:
    """Normalise option log-likelihoods over the option set; None when they cannot tell the options
    apart (see :func:`score_options`)."""
    return score_options(logprobs, options)[0]


# Option-text scoring (the cloze formulation): each option's text is the continuation, and the
# declared normalisation decides how the summed log-likelihoods are compared.
NORMALIZATIONS = {
    "none": "sum of the option's token log-probabilities (lm-evaluation-harness `acc`)",
    "chars": "sum of log-probabilities / characters of the option text (lm-evaluation-harness `acc_norm`)",
    "bytes": "sum of log-probabilities / UTF-8 bytes of the option text (byte-length normalisation, Gao 2021)",
}


def option_length(text: str, normalization: str) -> int:
    """The length an option's log-likelihood is divided by: 1 (``none``), ``len(text)`` in code
    points (``chars``) or ``len(text.encode("utf-8"))`` (``bytes``). ``text`` is the option without
    the " " that separates it from the prompt, as in lm-evaluation-harness."""
    if normalization == "none":
        return 1
    if normalization == "chars":
        return len(text)
    if normalization == "bytes":
        return len(text.encode("utf-8"))
    raise ValueError(f"unknown normalization {normalization!r} (known: {', '.join(NORMALIZATIONS)})")


def normalise_scores(logprobs: list[float], texts: list[str], normalization: str) -> list[float]:
    """Option log-likelihoods divided by each option's length, for ranking options of different
    lengths (shape: one score per option, in order; units: nats per option / character / byte).

    Definitions (lm-evaluation-harness, ``lm_eval/api/task.py``, ``MultipleChoiceTask``): ``acc``
    takes ``argmax(lls)``; ``acc_norm`` takes ``argmax(lls / completion_len)`` with
    ``completion_len = [float(len(c)) for c in choices]``, the character length of each choice string
    without the target delimiter (``chars`` here). EleutherAI's note "Multiple Choice Normalization in
    LM Evaluation" (L. Gao, 2021) defines it as byte-length normalisation, the sum of the bytes the
    continuation's tokens represent (``bytes`` here: the UTF-8 bytes of the option text, equal to
    ``chars`` for ASCII text). Token-length normalisation is not offered: it depends on the tokenizer,
    so models with different tokenizers would not be compared on the same scale (the same note).

    Raises ValueError for an empty option text or an unknown normalisation."""
    if len(logprobs) != len(texts):
        raise ValueError(f"{len(logprobs)} scores for {len(texts)} options")
    lengths = [option_length(t, normalization) for t in texts]
    if any(n <= 0 for n in lengths):
        raise ValueError(f"an option text is empty: {texts!r}")
    return [float(lp) / n for lp, n in zip(logprobs, lengths)]
