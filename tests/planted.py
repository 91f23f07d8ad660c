"""A test backend with a known, planted per-group bias (registered at run time, not packaged).

For every request it returns option log-likelihoods whose normalised probabilities are

    P(first option) = clip(base(case) + shift[group] + noise, 0.02, 0.98)

with ``base`` drawn per case, ``noise`` per request (both seeded from content, so the same
request always gets the same answer), and ``shift`` set per attribute value by the test.
The rest of the probability is spread evenly over the other options.
"""

from __future__ import annotations

import hashlib
import math

import numpy as np

from benchmark.backends.base import Backend
from benchmark.requests import Result

SHIFTS: dict[str, dict[str, float]] = {}  # attribute -> value -> shift of P(first option)
NOISE = {"case_sd": 0.15, "request_sd": 0.02}


def _rng(*parts) -> np.random.Generator:
    digest = hashlib.sha256("|".join(map(str, parts)).encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def planted_probability(case_id: str, question_id: str, attributes: dict[str, str]) -> float:
    base = 0.5 + NOISE["case_sd"] * _rng("case", case_id, question_id).standard_normal()
    shift = sum(SHIFTS.get(a, {}).get(v, 0.0) for a, v in attributes.items())
    noise = NOISE["request_sd"] * _rng("req", case_id, question_id, sorted(attributes.items())).standard_normal()
    return float(np.clip(base + shift + noise, 0.02, 0.98))


class PlantedBackend(Backend):
    name = "planted"

    @classmethod
    def fingerprint(cls, spec) -> str:
        return "planted:" + hashlib.sha256(repr(sorted((a, sorted(v.items())) for a, v in SHIFTS.items())).encode()).hexdigest()[:12]

    def score_choices(self, requests):
        out = []
        for r in requests:
            p = planted_probability(r.case_id, r.question_id, r.attributes)
            rest = (1 - p) / (len(r.options) - 1)
            out.append(Result(option_logprobs=[math.log(p)] + [math.log(rest)] * (len(r.options) - 1), rendered_prompt=r.prompt))
        return out

    def generate(self, requests):
        out = []
        for r in requests:
            p = planted_probability(r.case_id, r.question_id, r.attributes)
            answer = r.options[0] if _rng("gen", r.case_id, r.question_id, sorted(r.attributes.items())).random() < p else r.options[-1]
            out.append(Result(raw_output=f"Some reasoning.\nAnswer: {answer}", rendered_prompt=r.prompt))
        return out
