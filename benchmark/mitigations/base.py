"""The mitigation plugin API. A mitigation never scores itself: ``apply`` fits or trains on the
mitigation cases and returns a :class:`ModelArtifact`; the runner registers the derived model(s),
which go through the same ``fairbench run`` path as any model.

Third-party mitigations register a :class:`Mitigation` subclass under the ``fairbench.mitigations``
entry-point group, exactly as the built-ins do.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from ..cards.text import TaskCard
from ..config import ModelRegistry, ModelSpec
from ..data.cases import Case, LoadReport


class MitigationConfig(BaseModel):
    """Base of every method's config (``--config FILE`` is validated against it; unknown keys fail)."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())


@dataclass
class TaskData:
    """The mitigation side of the split: only these cases may be used to fit or train."""

    card: TaskCard
    cases: list[Case]
    report: LoadReport
    files: list[Path]
    prompt_mode: str


@dataclass
class ImagingTaskData:
    """The mitigation side of an imaging task: train and validation only (never test)."""

    card: object
    train: object  # ImagingDataset
    val: object
    files: list[Path] = field(default_factory=list)


@dataclass
class Context:
    out_dir: Path  # the artifact directory (exists, empty)
    seed: int
    models: ModelRegistry  # e.g. to look up a teacher model
    quiet: bool = True


@dataclass
class ModelArtifact:
    """What ``apply`` produced. ``models`` maps each derived model name's *suffix* (the part after
    ``<base>+``) to the fields that differ from the base entry, e.g. ``{"simpo-distill": {"adapter":
    "<dir>"}}``. ``manifest`` holds the method's inputs, hyperparameters, data hashes and timings."""

    directory: Path
    models: dict[str, dict]
    manifest: dict = field(default_factory=dict)
    descriptions: dict[str, str] = field(default_factory=dict)  # suffix -> what the derived model's description adds (e.g. the teacher)


class Mitigation(ABC):
    name: str = "base"
    Config: type[MitigationConfig] = MitigationConfig
    kinds: tuple[str, ...] = ("text",)  # the task kinds it applies to (``text`` -> TaskData, ``imaging`` -> ImagingTaskData)
    # Under ``accelerate launch`` / ``torchrun``: True when every process must run ``apply`` (it trains
    # through an accelerate-based trainer); False: only the main process runs it, the others wait.
    distributed: bool = False

    def artifact_name(self, config: MitigationConfig) -> str:
        """The method part of the default artifact directory ``<base>+<name>__<task>__seed<S>``: the
        method's name, unless its config changes the derived model's name (simpo-distill's two
        forms), so that two configurations of one method never overwrite each other's files."""
        return self.name

    def check(self, base: ModelSpec, card, config: MitigationConfig, prompt_mode: str | None) -> None:
        """Refuse bad input (FairbenchError) before the artifact directory is touched, so a mistake
        never wipes an earlier artifact. ``prompt_mode``: the mitigate run's mode (text tasks; None for
        imaging). Default: nothing to check."""

    @abstractmethod
    def apply(self, base: ModelSpec, data: TaskData, config: MitigationConfig, ctx: Context) -> ModelArtifact:
        """Fit or train on ``data`` (the mitigation cases, or the train/val images) and write the
        artifact under ``ctx.out_dir``."""
