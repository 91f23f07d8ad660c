"""Text task cards (``kind: text``, the default): counterfactual attributes, questions, prompt modes.

A text task needs only a task card and data, no Python: the card names a registered loader,
the counterfactual attributes, the questions with their options, and the prompt of each mode.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from .base import AuditSpec, CardBase, _Strict, check_labels


class Attribute(_Strict):
    values: list[str] = Field(min_length=2)
    reference: str

    @model_validator(mode="after")
    def _reference_is_a_value(self):
        check_labels("values", self.values)
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

        seen: dict[frozenset, str] = {}
        for combo in itertools.product(*(self.attributes[a].values for a in self.names.key)):
            key = "|".join(combo)
            if not self.names.pools.get(key):
                raise ValueError(f"names.pools has no names for group {key!r}")
            # Two groups drawing from the same names: the name cannot tell them apart, so keying the
            # pools by that attribute only pretends to vary it (shared single names are fine).
            pool = frozenset(self.names.pools[key])
            if pool in seen:
                raise ValueError(f"names.pools: groups {seen[pool]!r} and {key!r} have the same names, so a name cannot "
                                 f"tell them apart; give each group its own names or remove the attribute from names.key")
            seen[pool] = key
        return self

    @model_validator(mode="after")
    def _check_pre_expanded(self):
        for attr, spec in self.pre_expanded.items():
            if attr not in self.attributes:
                raise ValueError(f"pre_expanded names unknown attribute {attr!r}")
            bad = sorted(set(spec.values.values()) - set(self.attributes[attr].values))
            if bad:
                raise ValueError(f"pre_expanded.{attr} maps to {bad}, not among values {self.attributes[attr].values}")
            # A value no raw value maps to can never occur: every case would lack it (and with the
            # reference, every delta against the reference would be undefined).
            unmapped = [v for v in self.attributes[attr].values if v not in spec.values.values()]
            if unmapped:
                raise ValueError(f"pre_expanded.{attr}.values maps no raw value to {unmapped}, so no row can have it")
        return self

    @model_validator(mode="after")
    def _check_substitutions(self):
        """Every substitution names declared attributes and covers every value (else a KeyError
        would surface in the middle of expansion)."""
        import string

        known = ", ".join(self.attributes)
        for placeholder, rule in self.substitutions.items():
            where = f"substitutions.{placeholder}"
            if isinstance(rule, str):
                try:
                    fields = [f for _, f, _, _ in string.Formatter().parse(rule) if f is not None]
                except ValueError as exc:
                    raise ValueError(f"{where}: {rule!r} is not a valid template ({exc})") from None
                for f in fields:
                    if f not in self.attributes:
                        raise ValueError(f"{where}: {{{f}}} is not a counterfactual attribute (known: {known})")
                continue
            if len(rule) != 1:
                raise ValueError(f"{where}: a lookup names exactly one attribute, e.g. {{gender: {{man: he, woman: she}}}}")
            (attr, table), = rule.items()
            if attr not in self.attributes:
                raise ValueError(f"{where}: {attr!r} is not a counterfactual attribute (known: {known})")
            missing = [v for v in self.attributes[attr].values if v not in table]
            if missing:
                raise ValueError(f"{where}: no text for {attr} value(s) {', '.join(missing)}")
            extra = [v for v in table if v not in self.attributes[attr].values]
            if extra:
                raise ValueError(f"{where}: {', '.join(extra)} not among the values of {attr} ({', '.join(self.attributes[attr].values)})")
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
    # Paired accuracy audit (per attribute: accuracy by group, paired difference against the reference
    # group with CI, McNemar / Cochran's Q on correctness). None: on for categorical questions with a
    # reference answer (no decision test speaks to them), off for binary/ordinal ones, whose decision
    # tests already join the multiple-testing family.
    paired_accuracy: bool | None = None

    @model_validator(mode="after")
    def _kind_fields(self):
        check_labels(f"question {self.id}: options", self.options)
        unknown = [k for k in self.option_labels if k not in self.options]
        if unknown and self.options:
            raise ValueError(f"question {self.id}: option_labels for {unknown}, which are not options {self.options}")
        if self.option_labels:
            check_labels(f"question {self.id}: option_labels", list(self.option_labels.values()))
        if self.options_field is None and len(self.options) < 2:
            raise ValueError(f"question {self.id}: needs at least 2 options, or options_field")
        if self.options_field is not None and self.kind != "categorical":
            raise ValueError(f"question {self.id}: options_field is only for categorical questions")
        if self.paired_accuracy and not self.reference_field:
            raise ValueError(f"question {self.id}: paired_accuracy needs reference_field (the correct answer)")
        if self.kind == "binary" and self.positive not in self.options:
            raise ValueError(f"question {self.id}: positive must be one of the options {self.options}")
        if self.kind == "ordinal" and (not self.scores or set(self.scores) != set(self.options)):
            raise ValueError(f"question {self.id}: ordinal questions need a score for every option")
        if self.kind == "ordinal" and len(set(self.scores.values())) < 2:
            raise ValueError(f"question {self.id}: ordinal scores must not all be equal (the outcome could not vary)")
        return self


class PromptMode(_Strict):
    method: Literal["choice", "generate"] = "choice"
    # Formatted with {context}, {question}, {options} (e.g. "Yes or No"), {option_list} (one
    # "label. wording" line per option), {examples} and any case field.
    template: str
    examples: str | None = None  # file in the task directory with worked examples
    max_new_tokens: int | None = Field(None, gt=0, le=131072)
    # What a choice mode scores as the continuation of the prompt: the option ``labels`` ("A", "Yes"),
    # or each option's ``option_text`` (its wording; the label where it has none), the cloze
    # formulation of lm-evaluation-harness (benchmark.kinds.options.normalise_scores).
    scoring: Literal["labels", "option_text"] = "labels"
    # option_text only, and then required: how option log-likelihoods are compared (lm-eval's
    # ``acc`` = none, ``acc_norm`` = chars; bytes = its byte-length definition).
    normalization: Literal["none", "chars", "bytes"] | None = None
    # generate only: seeded samples drawn per prompt (sample 0 is the audited answer; the others give
    # the noise floor of explanation drift, benchmark.audits.generative). Drawn only when the run
    # samples (temperature > 0): greedy decoding would repeat sample 0 exactly.
    samples: int = Field(1, ge=1, le=8)

    @field_validator("examples")
    @classmethod
    def _examples_inside(cls, v):
        if v is not None and (Path(v).is_absolute() or ".." in Path(v).parts):
            raise ValueError(f"{v!r}: the examples file must stay inside the task directory")
        return v

    @model_validator(mode="after")
    def _option_text_scoring(self):
        if self.scoring == "option_text" and self.method != "choice":
            raise ValueError("scoring: option_text scores option log-likelihoods; it needs method: choice")
        if self.scoring == "option_text" and self.normalization is None:
            raise ValueError("scoring: option_text needs normalization: none, chars or bytes (declared, so results say which)")
        if self.samples > 1 and self.method != "generate":
            raise ValueError("samples: more than 1 draws several generations per prompt; it needs method: generate")
        if self.scoring == "labels" and self.normalization is not None:
            raise ValueError("normalization applies only to scoring: option_text (labels are compared unnormalised)")
        return self


class TaskCard(CardBase):
    kind: Literal["text"] = "text"
    counterfactual: Counterfactual
    questions: list[Question] = Field(min_length=1)
    prompt_modes: dict[str, PromptMode]
    default_mode: str = "zero_shot"
    audit: AuditSpec = Field(default_factory=AuditSpec)

    @field_validator("questions")
    @classmethod
    def _question_ids_unique(cls, v):
        # A repeated id would ask the same question twice per variant and merge both into one audit.
        check_labels("id", [q.id for q in v])
        return v

    @model_validator(mode="after")
    def _mode_exists(self):
        if self.default_mode not in self.prompt_modes:
            raise ValueError(f"default_mode {self.default_mode!r} is not in prompt_modes")
        return self

    def outputs(self) -> tuple[list[str], list[str]]:
        """(what is asked, the prompt modes), for listings."""
        return [q.id for q in self.questions], list(self.prompt_modes)

    def audits_accuracy(self, qid: str) -> bool:
        """Whether the counterfactual audit compares the accuracy of paired variants for ``qid``."""
        q = self.question(qid)
        if q.paired_accuracy is not None:
            return q.paired_accuracy
        return q.kind == "categorical" and q.reference_field is not None

    def question(self, qid: str) -> Question:
        for q in self.questions:
            if q.id == qid:
                return q
        raise KeyError(qid)

