"""Requests: one prompt per (variant, question), in the chosen prompt mode.

A request's ``key`` is a content hash of everything that determines the answer, so that the
cache and resume logic never depend on ordering, batch size or process count.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field

from .counterfactual import Variant
from .errors import FairbenchError
from .taskcard import PromptMode, TaskCard


@dataclass(frozen=True)
class Request:
    case_id: str
    question_id: str
    attributes: dict[str, str]
    prompt: str  # the user message, before any chat template
    options: list[str]
    method: str  # "choice" | "generate"
    max_new_tokens: int = 256
    temperature: float = 0.0
    seed: int = 0
    meta: dict[str, str] = field(default_factory=dict)

    def key(self, model_fingerprint: str) -> str:
        payload = {
            "model": model_fingerprint,
            "prompt": self.prompt,
            "options": self.options,
            "method": self.method,
            "max_new_tokens": self.max_new_tokens if self.method == "generate" else None,
            "temperature": self.temperature if self.method == "generate" else None,
            "seed": self.seed if self.method == "generate" and self.temperature > 0 else None,
        }
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()

    def as_dict(self) -> dict:
        return asdict(self)


def options_phrase(options: list[str]) -> str:
    return options[0] if len(options) == 1 else ", ".join(options[:-1]) + " or " + options[-1]


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
        from .errors import unknown

        raise unknown("prompt mode", mode_name, card.prompt_modes, where=f"task {card.name}")
    mode = card.prompt_modes[mode_name]
    examples = _examples_text(card, mode)
    requests = []
    for v in variants:
        for q in card.questions:
            try:
                question = q.text.format(**v.fields)
                prompt = mode.template.format(
                    context=v.fields.get("context", ""),
                    question=question,
                    options=options_phrase(q.options),
                    examples=examples,
                    **{k: val for k, val in v.fields.items() if k not in {"context", "question"}},
                )
            except KeyError as exc:
                raise FairbenchError(
                    f"task {card.name}: template of mode {mode_name} or question {q.id} uses "
                    f"{{{exc.args[0]}}}, which the loader does not provide."
                ) from None
            requests.append(
                Request(
                    case_id=v.case.case_id,
                    question_id=q.id,
                    attributes=v.attributes,
                    prompt=prompt.strip(),
                    options=list(q.options),
                    method=mode.method,
                    max_new_tokens=mode.max_new_tokens or max_new_tokens,
                    temperature=temperature,
                    seed=seed,
                    meta={"subset": v.case.subset, "reference": v.fields.get(q.reference_field or "", "")},
                )
            )
    return requests
