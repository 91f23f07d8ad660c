"""The one backend protocol, for text and image models alike.

Three request methods (:mod:`benchmark.requests`), each answered in the order given:
``score_choices`` (log P(option | prompt)), ``generate`` (free text) and ``predict`` (one probability
per output, for image classifiers and zero-shot image scorers). A backend declares which it answers
in ``methods`` and whether it reads image content parts (``accepts_images``); a VLM is an ordinary
choice/generate backend that accepts images. Backends that train (``trains``) get ``fit`` on the
task's training data before they predict. Subclasses register under ``fairbench.backends``.
"""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from pathlib import Path

from ..config import ModelSpec
from ..errors import FairbenchError
from ..requests import Request, Result


def settings_digest(settings: dict) -> str:
    """The fingerprint of a backend's weights and settings: 16 hex digits of their canonical JSON."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


class Backend(ABC):
    """Subclasses register under the ``fairbench.backends`` entry-point group."""

    name = "base"
    methods: frozenset[str] = frozenset({"choice", "generate"})
    accepts_images = False  # reads ImagePart content of requests (VLMs, image classifiers)
    trains = False  # True: ``fit`` runs first; outputs depend on the run seed and the training data

    def __init__(self, spec: ModelSpec, card=None, seed: int = 0, quiet: bool = True):
        self.spec = spec
        self.seed = seed
        self.quiet = quiet
        self.card = card  # the task card; image backends read labels, sizes and prompts from it

    @classmethod
    @abstractmethod
    def fingerprint(cls, spec: ModelSpec) -> str:
        """A cheap identity of the weights and settings, used in request keys and the manifest.
        Must not load the model."""

    @classmethod
    def check(cls, spec: ModelSpec) -> None:
        """Raise FairbenchError early when the spec cannot work (missing path ...)."""

    def fit(self, train, val, workdir: Path) -> dict:
        """Train on the task's training split, selecting on validation (only when ``trains``).
        ``train`` / ``val``: :class:`benchmark.data.image.dataset.ImagingDataset`. Returns a report."""
        return {}

    def _unsupported(self, method: str):
        raise FairbenchError(f'model "{self.spec.name}": backend {self.name} does not answer {method} requests.')

    def score_choices(self, requests: list[Request]) -> list[Result]:
        """One Result per request with ``option_logprobs`` (one per option, in order)."""
        self._unsupported("choice")

    def generate(self, requests: list[Request]) -> list[Result]:
        """One Result per request with ``raw_output``."""
        self._unsupported("generate")

    def predict(self, requests: list[Request]) -> list[Result]:
        """One Result per request with ``probs`` (one per request option: per label for binary and
        multilabel tasks, per class for multiclass) and optionally ``decisions``."""
        self._unsupported("predict")

    def answer(self, method: str, requests: list[Request]) -> list[Result]:
        """Dispatch a batch of same-method requests."""
        if method == "choice":
            return self.score_choices(requests)
        if method == "generate":
            return self.generate(requests)
        if method == "predict":
            return self.predict(requests)
        raise ValueError(f"unknown request method {method!r}")

    def describe(self) -> dict:
        return {"backend": self.name}

    def close(self) -> None:  # noqa: B027 - optional hook
        pass


def spec_digest(backend_name: str, spec: ModelSpec) -> str:
    """Fingerprint of a backend whose identity is its whole model entry (image backends)."""
    blob = json.dumps({"backend": backend_name, **spec.model_dump(mode="json")}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
