"""Shared shape of the question-asking imaging backends (``vlm`` in process, ``openai`` served):
one question per label and image, answered by choice scoring or generation, turned into a
prediction row by ``imaging/answers.py`` (Φ). Subclasses implement ``choose`` and ``generate``."""

from __future__ import annotations

import json
from abc import abstractmethod

from ..answers import questions, row_from_answers
from ..inputs import pil_image
from .base import ImagingBackend


class AskingBackend(ImagingBackend):
    batch_images = 8  # images per call to choose / generate

    @abstractmethod
    def choose(self, images: list, prompts: list[str], options: list[str]) -> list[dict]:
        """One answer per (image, prompt): ``option_logprobs`` (one per option, in order), or
        ``raw_output`` when the backend had to generate instead; optional ``extra``."""

    @abstractmethod
    def generate(self, images: list, prompts: list[str], max_new_tokens: int) -> list[dict]:
        """One answer per (image, prompt): ``raw_output`` (the text); optional ``extra``."""

    def predict(self, ds) -> list[dict]:
        vlm = self.card.vlm
        qs = questions(self.card)
        out = []
        for start in range(0, len(ds), self.batch_images):
            images = [pil_image(ds.read(i)) for i in range(start, min(start + self.batch_images, len(ds)))]
            pairs = [(im, q) for im in images for _, q in qs]
            ims, prompts = [p[0] for p in pairs], [p[1] for p in pairs]
            if vlm.method == "choice":
                answers = self.choose(ims, prompts, list(vlm.options))
            else:
                answers = self.generate(ims, prompts, vlm.max_new_tokens)
            for n in range(len(images)):
                per_label = {label: answers[n * len(qs) + j] for j, (label, _) in enumerate(qs)}
                row = row_from_answers(per_label, self.card)
                row["vlm_answers"] = per_label
                row["raw_output"] = json.dumps({k: v.get("raw_output") for k, v in per_label.items()}) if vlm.method == "generate" else None
                out.append(row)
        return out
