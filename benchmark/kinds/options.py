"""Option probabilities from stored option log-likelihoods: the one normalisation every kind uses."""

from __future__ import annotations

import math


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
