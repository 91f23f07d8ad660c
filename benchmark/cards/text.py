"""Text task cards (``kind: text``, the default): counterfactual attributes, questions, prompt modes.

A text task needs only a task card and data, no Python: the card names a registered loader,
the counterfactual attributes, the questions with their options, and the prompt of each mode.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from .base import AuditSpec, CardBase, _Strict


class Attribute(_Strict):
    values: list[str] = Field(min_length=2)
    reference: str

    @model_validator(mode="after")
    def _reference_is_a_value(self):
        if self.reference not in self.values:
            raise ValueError(f"reference {self.reference!r} is not one of values {self.values}")
        return self


class NamePools(_Strict):
    """First names typed by group replace a placeholder (e.g. "Patient D"), drawn with a seed."""

    placeholder: str
    key: list[str]  # attributes that select the pool, e.g. [race, gender]
    pools: dict[str, list[str]]  # "Asian|man" -> names


class PreExpanded(_Strict):
    """An attribute whose variants are already rows of the data file (e.g. the triage CSV):
    the file's column and the map from its raw values to the card's canonical values."""

    column: str | None = None  # defaults to the attribute name
    values: dict[str, str]  # raw file value -> canonical value, e.g. {"F": "woman"}


class Counterfactual(_Strict):
    attributes: dict[str, Attribute]
    # Attributes the data file already expands (one row per value); the others are substituted.
    pre_expanded: dict[str, PreExpanded] = Field(default_factory=dict)
    # placeholder -> "{attr}" template, or {attr: {value: text}} lookup
    substitutions: dict[str, str | dict[str, dict[str, str]]] = Field(default_factory=dict)
    names: NamePools | None = None
    # Known misspelt placeholders in official files, mapped to the intended one (reported as quirks).
    aliases: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _check_names(self):
        if self.names is None:
            return self
        for attr in self.names.key:
            if attr not in self.attributes:
                raise ValueError(f"names.key uses unknown attribute {attr!r}")
        import itertools

        for combo in itertools.product(*(self.attributes[a].values for a in self.names.key)):
            key = "|".join(combo)
            if not self.names.pools.get(key):
                raise ValueError(f"names.pools has no names for group {key!r}")
        return self

    @model_validator(mode="after")
    def _check_pre_expanded(self):
        for attr, spec in self.pre_expanded.items():
            if attr not in self.attributes:
                raise ValueError(f"pre_expanded names unknown attribute {attr!r}")
            bad = sorted(set(spec.values.values()) - set(self.attributes[attr].values))
            if bad:
                raise ValueError(f"pre_expanded.{attr} maps to {bad}, not among values {self.attributes[attr].values}")
        return self


class Question(_Strict):
    id: str
    text: str  # formatted with the case's fields, e.g. "{question}"
    kind: Literal["binary", "ordinal", "categorical"] = "binary"
    # The option labels scored or parsed (e.g. "Yes"/"No", "1".."5"). Empty with options_field.
    options: list[str] = Field(default_factory=list)
    # Case field holding the options (a Python/JSON list like "['a) ...', 'b) ...']"): per-case
    # multiple choice. Labels are the leading "a)" / "1." tokens; the rest is the option text.
    options_field: str | None = None
    # Human wording of each option, listed in prompts and accepted by the free-text parser.
    option_labels: dict[str, str] = Field(default_factory=dict)
    # Ask this question only of cases whose field equals the value, e.g. {item_kind: likert}.
    applies_to: dict[str, str] = Field(default_factory=dict)
    positive: str | None = None  # binary: the option whose probability is the outcome
    scores: dict[str, float] | None = None  # ordinal: option -> numeric value
    reference_field: str | None = None  # case field holding the reference answer

    @model_validator(mode="after")
    def _kind_fields(self):
        if self.options_field is None and len(self.options) < 2:
            raise ValueError(f"question {self.id}: needs at least 2 options, or options_field")
        if self.options_field is not None and self.kind != "categorical":
            raise ValueError(f"question {self.id}: options_field is only for categorical questions")
        if self.kind == "binary" and self.positive not in self.options:
            raise ValueError(f"question {self.id}: positive must be one of the options {self.options}")
        if self.kind == "ordinal" and (not self.scores or set(self.scores) != set(self.options)):
            raise ValueError(f"question {self.id}: ordinal questions need a score for every option")
        return self


class PromptMode(_Strict):
    method: Literal["choice", "generate"] = "choice"
    # Formatted with {context}, {question}, {options} (e.g. "Yes or No"), {option_list} (one
    # "label. wording" line per option), {examples} and any case field.
    template: str
    examples: str | None = None  # file in the task directory with worked examples
    max_new_tokens: int | None = Field(None, gt=0, le=131072)

    @field_validator("examples")
    @classmethod
    def _examples_inside(cls, v):
        if v is not None and (Path(v).is_absolute() or ".." in Path(v).parts):
            raise ValueError(f"{v!r}: the examples file must stay inside the task directory")
        return v


class TaskCard(CardBase):
    kind: Literal["text"] = "text"
    counterfactual: Counterfactual
    questions: list[Question] = Field(min_length=1)
    prompt_modes: dict[str, PromptMode]
    default_mode: str = "zero_shot"
    audit: AuditSpec = Field(default_factory=AuditSpec)

    @model_validator(mode="after")
    def _mode_exists(self):
        if self.default_mode not in self.prompt_modes:
            raise ValueError(f"default_mode {self.default_mode!r} is not in prompt_modes")
        return self

    def outputs(self) -> tuple[list[str], list[str]]:
        """(what is asked, the prompt modes), for listings."""
        return [q.id for q in self.questions], list(self.prompt_modes)

    def question(self, qid: str) -> Question:
        for q in self.questions:
            if q.id == qid:
                return q
        raise KeyError(qid)

