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


def score_options(logprobs, options: list[str] | None = None) -> tuple[list[float] | None, str | None]:
    """(probabilities normalised over the option set, None) or (None, reason) when the scores are not
    usable. ``options`` enables the count check and the exclusivity check (skipped when an option is
    a prefix of another, whose continuation may then include it)."""
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
    if top > IMPOSSIBLE_SLACK:
        return None, "impossible"
    exclusive = options is None or not any(a != b and b.strip().startswith(a.strip()) for a in options for b in options)
    if exclusive and top + math.log(total) > IMPOSSIBLE_SLACK:
        return None, "impossible"
    if sum(v == top for v in values) > 1:
        return None, "tie"
    return [e / total for e in exps], None


def option_probabilities(logprobs: list, options: list[str] | None = None) -> list[float] | None:
    """Normalise option log-likelihoods over the option set; None when they cannot tell the options
    apart (see :func:`score_options`)."""
    return score_options(logprobs, options)[0]
