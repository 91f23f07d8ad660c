"""The backend protocol: two request types, each answered in the order given."""

from __future__ import annotations

import hashlib
import json
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field

from ..config import ModelSpec
from ..requests import Request


@dataclass
class Result:
    """What a backend returns for one request. Stored verbatim; scoring happens later."""

    option_logprobs: list[float] | None = None  # choice: log P(option | prompt), one per option
    raw_output: str | None = None  # generate: the text
    rendered_prompt: str = ""  # the exact text the model saw (after chat template)
    n_prompt_tokens: int = 0
    latency_s: float = 0.0
    extra: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        lps = None
        if self.option_logprobs is not None:
            # JSON has no NaN/inf; keep them visible as strings so scoring can count them invalid.
            lps = [x if math.isfinite(x) else str(x) for x in self.option_logprobs]
        return {
            "option_logprobs": lps,
            "raw_output": self.raw_output,
            "rendered_prompt": self.rendered_prompt,
            "n_prompt_tokens": self.n_prompt_tokens,
            "latency_s": round(self.latency_s, 6),
            "extra": self.extra,
        }


def settings_digest(settings: dict) -> str:
    """The fingerprint of a backend's weights and settings: 16 hex digits of their canonical JSON."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


class Backend(ABC):
    """Subclasses register under the ``fairbench.backends`` entry-point group."""

    name = "base"

    def __init__(self, spec: ModelSpec, seed: int = 0, quiet: bool = True):
        self.spec = spec
        self.seed = seed
        self.quiet = quiet

    @classmethod
    @abstractmethod
    def fingerprint(cls, spec: ModelSpec) -> str:
        """A cheap identity of the weights and settings, used in request keys and the manifest.
        Must not load the model."""

    @classmethod
    def check(cls, spec: ModelSpec) -> None:
        """Raise FairbenchError early when the spec cannot work (missing path ...)."""

    @abstractmethod
    def score_choices(self, requests: list[Request]) -> list[Result]: ...

    @abstractmethod
    def generate(self, requests: list[Request]) -> list[Result]: ...

    def describe(self) -> dict:
        return {"backend": self.name}

    def close(self) -> None:  # noqa: B027 - optional hook
        pass
