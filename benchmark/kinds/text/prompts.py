"""Text requests: one prompt per (counterfactual variant, question), in the chosen prompt mode."""

from __future__ import annotations

import ast
import re

from ...cards.text import PromptMode, Question, TaskCard
from ...errors import FairbenchError
from ...requests import Request
from .expand import Variant

_LABELLED = re.compile(r"^\s*([A-Za-z0-9]{1,3})\s*[.)]\s*(.+?)\s*$", re.DOTALL)


def options_phrase(options: list[str]) -> str:
    return options[0] if len(options) == 1 else ", ".join(options[:-1]) + " or " + options[-1]


def question_options(q: Question, fields: dict[str, str], source: str = "") -> tuple[list[str], list[str]]:
    """(labels, wordings) of a question for one case. Labels are what is scored or parsed
    ("Yes", "3", "b"); wordings are listed in the prompt ("Neutral", "Admit for observation")."""
    if q.options_field is None:
        return list(q.options), [q.option_labels.get(o, "") for o in q.options]
    raw = fields.get(q.options_field, "")
    try:
        items = ast.literal_eval(raw) if raw.strip().startswith("[") else [x for x in raw.splitlines() if x.strip()]
    except (ValueError, SyntaxError):
        items = None
    parsed = [_LABELLED.match(str(x)) for x in items] if isinstance(items, (list, tuple)) else [None]
    if not items or any(m is None for m in parsed):
        raise FairbenchError(
            f"{source}: field {q.options_field} of question {q.id} must be a list of labelled options like "
            f"\"['a) ...', 'b) ...']\"; got {raw[:60]!r}. Fix the data or the question's options_field."
        )
    labels = [m.group(1) for m in parsed]
    if len(set(labels)) != len(labels) or len(labels) < 2:
        raise FairbenchError(f"{source}: options of question {q.id} need at least 2 distinct labels, got {labels}.")
    return labels, [m.group(2) for m in parsed]


def option_list(labels: list[str], wordings: list[str]) -> str:
    return "\n".join(f"{lab}. {w}" if w else lab for lab, w in zip(labels, wordings))


def option_texts(q: Question, labels: list[str], wordings: list[str], source: str, mode_name: str) -> list[str]:
    """The continuations an ``option_text`` mode scores: each option's wording, or its label where
    it has none ("Yes"). They must differ (ignoring case and surrounding space), else two options
    would get the same score."""
    texts = [(w or lab).strip() for lab, w in zip(labels, wordings)]
    lowered = [t.lower() for t in texts]
    dupes = sorted({t for t, low in zip(texts, lowered) if lowered.count(low) > 1})
    if dupes:
        raise FairbenchError(
            f"{source}: question {q.id} has option texts {', '.join(map(repr, dupes))} more than once; mode {mode_name} "
            f"(scoring: option_text) cannot tell them apart. Fix the data or use a mode that scores the labels."
        )
    return texts


def applies(q: Question, fields: dict[str, str]) -> bool:
    return all(fields.get(k) == v for k, v in q.applies_to.items())


def _examples_text(card: TaskCard, mode: PromptMode) -> str:
    if not mode.examples:
        return ""
    assert card.directory is not None
    path = card.directory / mode.examples
    if not path.is_file():
        raise FairbenchError(f"task {card.name}: prompt examples file {path} is missing.")
    return path.read_text(encoding="utf-8").strip()


def build_requests(
    card: TaskCard,
    variants: list[Variant],
    mode_name: str,
    seed: int,
    max_new_tokens: int = 256,
    temperature: float = 0.0,
) -> list[Request]:
    if mode_name not in card.prompt_modes:
        from ...errors import unknown

        raise unknown("prompt mode", mode_name, card.prompt_modes, where=f"task {card.name}")
    mode = card.prompt_modes[mode_name]
    examples = _examples_text(card, mode)
    requests = []
    for v in variants:
        for q in card.questions:
            if not applies(q, v.fields):
                continue
            labels, wordings = question_options(q, v.fields, v.case.source)
            try:
                question = q.text.format(**v.fields)
                prompt = mode.template.format(
                    context=v.fields.get("context", ""),
                    question=question,
                    options=options_phrase(labels),
                    option_list=option_list(labels, wordings),
                    examples=examples,
                    **{k: val for k, val in v.fields.items() if k not in {"context", "question", "options", "option_list", "examples"}},
                )
            except KeyError as exc:
                raise FairbenchError(
                    f"task {card.name}: template of mode {mode_name} or question {q.id} uses "
                    f"{{{exc.args[0]}}}, which the loader does not provide."
                ) from None
            scored, extra = labels, {}
            if mode.scoring == "option_text":
                scored = option_texts(q, labels, wordings, v.case.source, mode_name)
                extra = {"option_labels": labels, "option_scoring": {"scoring": "option_text", "normalization": mode.normalization}}
            requests.append(
                Request(
                    case_id=v.case.case_id,
                    question_id=q.id,
                    attributes=v.attributes,
                    prompt=prompt.strip(),
                    options=scored,
                    method=mode.method,
                    max_new_tokens=mode.max_new_tokens or max_new_tokens,
                    temperature=temperature,
                    seed=seed,
                    meta={
                        "subset": v.case.subset,
                        "reference": v.fields.get(q.reference_field or "", ""),
                        **({"option_wordings": wordings} if any(wordings) else {}),
                        **extra,
                    },
                )
            )
    return requests
