"""The kind protocol: what differs between text and image tasks on the one run path.

The engine (:mod:`benchmark.engine`) does caching, sharding, resume, storage and provenance once;
a kind supplies the rest: how the card's data becomes requests (:meth:`Kind.prepare`), how stored
results become rows (:meth:`Kind.rows`) and how rows are scored and audited (:meth:`Kind.evaluate`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from .. import SCHEMA_VERSION
from ..errors import FairbenchError
from ..registry import get
from ..requests import Request


@dataclass
class Prepared:
    """A kind's instances, turned into requests for one run."""

    requests: list[Request]
    mode: str  # the prompt mode (text) or "image": part of the run id
    run_info: dict  # instance counts and split facts recorded in results.json["run"]
    files: list[Path]  # data files whose SHA-256 goes into the manifest
    data_report: dict  # quirks handled and rows skipped while loading
    manifest_data: dict = field(default_factory=dict)  # extra facts for manifest.json["data"]
    fit_data: tuple | None = None  # (train, val) for backends that train
    fit_identity: list[str] = field(default_factory=list)  # what the training saw (in request keys)
    heldout: str | None = None  # digest of a held-out case list (part of the run id)
    chunk: int | None = None  # requests per cache transaction, when the kind needs its own


@dataclass
class AuditData:
    """What audits receive. ``rows``: one row per request with ``case_id``, ``question_id``,
    ``variant``, one column per attribute, ``valid``, ``outcome``, ``decision``, ``correct``
    (counterfactual variants of a case share ``case_id``). ``instances``: one row per evaluated
    instance with the resampling unit ``patient_id``, attribute columns, ``valid`` and per endpoint
    ``e``: ``y:e``, ``p:e``, ``d:e``, ``d05:e``. A kind fills what it has; ``None`` otherwise."""

    rows: pd.DataFrame | None = None
    instances: pd.DataFrame | None = None
    endpoints: list[str] = field(default_factory=list)
    attributes: list[str] | None = None  # groupings of ``instances`` (``a*b`` = intersection); None: the card's
    decision_rule: str | None = None  # how ``d:e`` was decided, for the audit's definitions
    # Free-text runs: every generated row, extra samples included (``rows`` holds sample 0 only), with
    # ``sample``, ``text``, ``rationale``, ``invalid_reason`` and ``embedding`` (benchmark.kinds.text.generation).
    generations: pd.DataFrame | None = None


class Kind(ABC):
    name: str = "base"
    default_audits: tuple[str, ...] = ()
    provides: tuple[str, ...] = ()  # the AuditData fields this kind fills

    def __init__(self, card):
        self.card = card

    @abstractmethod
    def check_backend(self, backend_cls, model_spec) -> None:
        """Raise FairbenchError (one line) when the model's backend cannot answer this kind."""

    @abstractmethod
    def prepare(self, spec, model_spec, models, backend_cls) -> Prepared: ...

    @abstractmethod
    def rows(self, requests: list[Request], keys: list[str], cached: dict[str, dict]) -> list[dict]:
        """The stored row of each request: its instance facts and the backend's raw result."""

    @abstractmethod
    def evaluate(self, rows: list[dict], seed: int, run_info: dict, data_report: dict) -> tuple[list[dict], dict]:
        """Stored rows -> (rows with their scores, ``results.json``). No model is needed, so
        ``fairbench score`` re-applies a changed parser or metric to stored outputs."""

    def audits(self) -> list[str]:
        return list(self.card.audits or self.default_audits)

    def check_audits(self) -> None:
        """Before any model runs: every audit the card names exists and can be fed by this kind."""
        for name in self.audits():
            missing = [need for need in getattr(get("audits", name), "needs", ()) if need not in self.provides]
            if missing:
                raise FairbenchError(
                    f"task {self.card.name}: audit {name} needs {', '.join(missing)}, which {self.name} tasks do not "
                    f"provide; remove it from the card's audits."
                )

    def run_audits(self, data: AuditData, seed: int, names: list[str] | None = None) -> dict[str, dict]:
        """Each audit the card names (or ``names``), found in the ``fairbench.audits`` registry. An audit
        class that ``extends`` another (class attribute, e.g. ``generative`` extends ``counterfactual``)
        returns the extended audit's result (same schema, one test family) plus its own section, the
        field named after it: the first is stored under the extended audit's name, the section under its own."""
        self.check_audits()
        out: dict[str, dict] = {}
        for name in names or self.audits():
            cls = get("audits", name)
            result = cls(self.card, seed=seed).audit(data)
            extends = getattr(cls, "extends", None)
            if extends:
                out[name] = result.pop(name)
                out[extends] = result
            else:
                out[name] = result
        return out

    def envelope(self, run_info: dict, metrics: dict, audits: dict, data_report: dict, **extra) -> dict:
        """The one results schema (``schema_version`` 2): the same top-level fields for every kind."""
        return {"schema_version": SCHEMA_VERSION, "kind": self.name, "run": run_info, "metrics": metrics,
                "audits": audits, "data_report": data_report, **extra}
