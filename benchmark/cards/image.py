"""Image task cards (``kind: imaging``): labels, demographics, age bins, splits and the question a VLM
is asked. Parsed from the same ``tasks/<name>/task.yaml`` files as text cards (:func:`benchmark.cards.read_card`)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from .base import AuditSpec, CardBase, _Strict, check_labels

ATTRIBUTES = ("sex", "age_group", "race")


class ClassPrompts(_Strict):
    """Text prompts for CLIP-style zero-shot scoring of one label (several templates are averaged)."""

    positive: list[str] = Field(min_length=1)
    negative: list[str] = Field(default_factory=list)  # binary labels need them; multiclass uses positive only


class VLMSpec(_Strict):
    """How a VLM is asked. ``{label}`` is replaced by the label's display name."""

    question: str = "Does this image show {label}? Answer Yes or No."
    options: list[str] = Field(default_factory=lambda: ["Yes", "No"], min_length=2)
    positive: str = "Yes"
    method: Literal["choice", "generate"] = "choice"
    max_new_tokens: int = Field(8, gt=0)
    # Answer normalisation (the paper's Φ): canonical option -> accepted spellings after lowercasing
    # and stripping punctuation. Each option always accepts its own name.
    synonyms: dict[str, list[str]] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _positive_is_option(self):
        # Options the answers are mapped to: the same rule as a text card's options (a repeated
        # option splits its probability; " Yes" is never the answer "Yes").
        check_labels("vlm.options", self.options)
        if self.positive not in self.options:
            raise ValueError(f"vlm.positive {self.positive!r} must be one of vlm.options {self.options}")
        unknown = [k for k in self.synonyms if k not in self.options]
        if unknown:
            raise ValueError(f"vlm.synonyms: {unknown} are not vlm.options {self.options}; key each list by its option")
        # A spelling accepted for two options would make the answer mean both (answers.vocabulary,
        # which also ignores punctuation, checks again when answers are read).
        owner: dict[str, str] = {}
        for option in self.options:
            for spelling in [option, *self.synonyms.get(option, [])]:
                if not spelling.strip():
                    raise ValueError(f"vlm.synonyms.{option}: an empty spelling")
                key = " ".join(spelling.casefold().split())
                if owner.setdefault(key, option) != option:
                    raise ValueError(f"vlm.synonyms: {spelling!r} is accepted for both {owner[key]!r} and {option!r}; keep it under one option")
        return self


class SignalSpec(_Strict):
    """A multichannel waveform input (e.g. a 12-lead ECG): the model receives (channels, T) with
    T = sampling_rate x seconds samples, never resampled or resized."""

    channels: int = Field(gt=0)  # leads, one row each
    sampling_rate: int = Field(gt=0)  # Hz
    seconds: float = Field(gt=0)  # record length

    @property
    def length(self) -> int:
        """Samples per channel, T."""
        return round(self.sampling_rate * self.seconds)


class ImagingAudit(AuditSpec):
    """Group-audit settings on top of the shared audit settings."""

    attributes: list[str] = Field(default_factory=lambda: ["sex", "age_group", "sex*age_group"])
    primary_attribute: str = "sex"  # the headline metrics use this grouping
    threshold: Literal["max_f1", "youden"] = "max_f1"  # binary / multilabel; multiclass uses argmax
    ece_bins: int = Field(15, ge=2)
    # The underdiagnosis gap: FPR of this label by group (a "No Finding" label). Without one, the
    # FNR of the primary endpoint (missed positives) by group, which is the same idea for one disease.
    no_finding_label: str | None = None

    @field_validator("attributes")
    @classmethod
    def _known(cls, v):
        seen: dict[tuple[str, ...], str] = {}
        for a in v:
            parts = a.split("*")
            for part in parts:
                if part not in ATTRIBUTES:
                    raise ValueError(f"unknown attribute {part!r}; use {', '.join(ATTRIBUTES)} or a*b intersections")
            if len(set(parts)) != len(parts):
                raise ValueError(f"{a!r} crosses an attribute with itself; list it once")
            # sex*age_group and age_group*sex are one grouping: audited twice, it would count twice
            # in the multiple-testing family.
            key = tuple(sorted(parts))
            if key in seen:
                raise ValueError(f"{a!r} repeats {seen[key]!r}; list each grouping once")
            seen[key] = a
        return v

    @model_validator(mode="after")
    def _primary_is_audited(self):
        # The headline (leaderboard row) reads the primary attribute's gaps: one that is not audited
        # would give a headline without any gap, and no error.
        if self.primary_attribute not in self.attributes:
            raise ValueError(f"primary_attribute {self.primary_attribute!r} is not one of the audited attributes "
                             f"{self.attributes}; add it to audit.attributes or choose one of them")
        return self


class ImagingTaskCard(CardBase):
    kind: Literal["imaging"]
    modality: str = "image"
    # binary: one label, sigmoid; multilabel: several independent labels; multiclass: one of classes.
    label_type: Literal["binary", "multilabel", "multiclass"]
    labels: list[str] = Field(min_length=1)  # binary/multilabel: label names; multiclass: class names
    # multiclass: classes whose summed probability is the audited binary endpoint ("positive")
    positive_classes: list[str] = Field(default_factory=list)
    endpoint_name: str = "positive"
    primary_label: str | None = None  # default: the first label
    # Left-closed bins [a, b): edges [0, 40, 60, 80] -> 0-39, 40-59, 60-79, 80+. Same rule everywhere.
    age_bins: list[float] = Field(default_factory=lambda: [0, 40, 60, 80], min_length=2)
    split_seed: int = 0  # patient-level splits where the dataset has none (fixed across run seeds)
    split_fractions: dict[str, float] = Field(default_factory=lambda: {"train": 0.7, "val": 0.1, "test": 0.2})
    image_size: int = Field(64, ge=8)
    # What the model is fed: a 2-D image (resized to image_size), or a multichannel waveform kept
    # at its declared rate (``signal``), which the classifier reads with a 1-D (PatchTST) backbone.
    input_modality: Literal["image", "signal"] = "image"
    signal: SignalSpec | None = None
    prompts: dict[str, ClassPrompts] = Field(default_factory=dict)
    vlm: VLMSpec = Field(default_factory=VLMSpec)
    label_display: dict[str, str] = Field(default_factory=dict)  # label -> words used in prompts
    audit: ImagingAudit = Field(default_factory=ImagingAudit)

    @model_validator(mode="after")
    def _consistent(self):
        check_labels("labels", self.labels)  # a label twice would be audited (and asked) twice
        check_labels("positive_classes", self.positive_classes)
        if self.label_type == "binary" and len(self.labels) != 1:
            raise ValueError("label_type binary needs exactly one label")
        if self.label_type == "multiclass":
            if len(self.labels) < 2:
                raise ValueError("label_type multiclass needs at least two classes in labels")
            bad = [c for c in self.positive_classes if c not in self.labels]
            if not self.positive_classes or bad:
                raise ValueError(f"multiclass needs positive_classes chosen from labels {self.labels}")
        if self.primary_label is not None and self.primary_label not in self.endpoints():
            raise ValueError(f"primary_label {self.primary_label!r} is not one of {self.endpoints()}")
        if sorted(self.age_bins) != list(self.age_bins) or len(set(self.age_bins)) != len(self.age_bins):
            raise ValueError("age_bins must be strictly increasing edges")
        if set(self.split_fractions) != {"train", "val", "test"} or abs(sum(self.split_fractions.values()) - 1) > 1e-6:
            raise ValueError("split_fractions needs train, val and test summing to 1")
        if (self.input_modality == "signal") != (self.signal is not None):
            raise ValueError("input_modality: signal needs a signal: {channels, sampling_rate, seconds} block, and only it")
        nf = self.audit.no_finding_label
        if nf is not None and nf not in self.endpoints():
            raise ValueError(f"audit.no_finding_label {nf!r} is not one of {self.endpoints()}")
        return self

    def endpoints(self) -> list[str]:
        """The binary endpoints the audit scores: each label, or the derived multiclass endpoint."""
        return [self.endpoint_name] if self.label_type == "multiclass" else list(self.labels)

    def outputs(self) -> tuple[list[str], list[str]]:
        """(the endpoints, the one mode ``image``), for listings."""
        return self.endpoints(), [f"image ({self.label_type})"]

    def primary(self) -> str:
        return self.primary_label or self.endpoints()[0]

    def display(self, label: str) -> str:
        return self.label_display.get(label, label.lower())
