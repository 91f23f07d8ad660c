"""The imaging backend protocol: optionally ``fit`` on the task's train/val split, then ``predict``
one row per image (probabilities over the task's outputs, a validity flag, the raw answer)."""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from pathlib import Path

from ...config import ModelSpec
from ...device import pick_device
from ..dataset import ImagingDataset


class ImagingBackend(ABC):
    name = "imaging"
    imaging = True  # the engine routes imaging tasks only to backends with this flag
    trains = False  # True: predictions depend on the run seed and the training data

    def __init__(self, spec: ModelSpec, card, seed: int = 0, quiet: bool = True):
        self.spec, self.card, self.seed, self.quiet = spec, card, seed, quiet
        self.device = pick_device(spec.device)

    @classmethod
    def fingerprint(cls, spec: ModelSpec) -> str:
        blob = json.dumps({"backend": cls.name, **spec.model_dump(mode="json")}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    @classmethod
    def check(cls, spec: ModelSpec) -> None:
        """Raise FairbenchError early when the spec cannot work."""

    def fit(self, train: ImagingDataset, val: ImagingDataset, workdir: Path) -> dict:
        """Zero-shot backends do nothing."""
        return {}

    @abstractmethod
    def predict(self, ds: ImagingDataset) -> list[dict]:
        """One dict per row, in order: ``probs`` (list of floats: per label for binary/multilabel,
        per class for multiclass), ``valid`` (bool), ``raw_output`` (str or None)."""

    def describe(self) -> dict:
        return {"backend": self.name, "device": str(self.device)}

    def close(self) -> None:  # noqa: B027
        pass

    def n_outputs(self) -> int:
        return len(self.card.labels)
