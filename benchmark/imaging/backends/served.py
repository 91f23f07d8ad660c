"""``openai-vlm``: imaging tasks through the ``openai`` backend, for ``vllm serve`` of a VLM (or any
OpenAI-compatible endpoint that takes images). A models.yaml entry with ``backend: openai`` is
routed here for imaging tasks (``OpenAIBackend.imaging_backend``).

Each (image, question) is one /chat/completions request whose user message carries the image as a
base64 PNG data URL (``image_url`` content part) and the card's question. Choice scoring reads the
options' first-token log-probabilities from ``top_logprobs``; when an option is not among them the
request falls back to generation, and Φ (imaging/answers.py) reads the text. Retries, timeouts,
concurrency and the API key (from the environment only) are the openai backend's.
"""

from __future__ import annotations

import base64
import hashlib
import io

from ...backends.openai import OpenAIBackend
from ...requests import Request
from .asking import AskingBackend


def png_data_url(image) -> str:
    """A PIL image as a ``data:image/png;base64,...`` URL (lossless, so the model sees the pixels)."""
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


class ServedVLMBackend(AskingBackend):
    name = "openai-vlm"

    @classmethod
    def check(cls, spec) -> None:
        OpenAIBackend.check(spec)

    @classmethod
    def fingerprint(cls, spec) -> str:
        return hashlib.sha256(f"{cls.name}|{OpenAIBackend.fingerprint(spec)}".encode()).hexdigest()[:16]

    def __init__(self, spec, card, seed: int = 0, quiet: bool = True):
        super().__init__(spec, card, seed, quiet)
        self.client = OpenAIBackend(spec, seed=seed, quiet=quiet)
        self.batch_images = max(1, spec.max_concurrency)  # one request per image and label, run concurrently

    def _requests(self, prompts: list[str], options: list[str], method: str, max_new_tokens: int = 1) -> list[Request]:
        return [Request(case_id="", question_id="", attributes={}, prompt=p, options=options, method=method,
                        max_new_tokens=max_new_tokens, seed=self.seed) for p in prompts]

    @staticmethod
    def _answer(result) -> dict:
        out = {"extra": result.extra} if result.extra else {}
        if result.option_logprobs is not None:
            out["option_logprobs"] = result.option_logprobs
        else:
            out["raw_output"] = result.raw_output
        return out

    def choose(self, images: list, prompts: list[str], options: list[str]) -> list[dict]:
        urls = [(png_data_url(im),) for im in images]
        results = self.client.score_choices_with_images(self._requests(prompts, options, "choice"), urls)
        return [self._answer(r) for r in results]

    def generate(self, images: list, prompts: list[str], max_new_tokens: int) -> list[dict]:
        urls = [(png_data_url(im),) for im in images]
        results = self.client.generate_with_images(self._requests(prompts, list(self.card.vlm.options), "generate", max_new_tokens), urls)
        return [self._answer(r) for r in results]

    def describe(self) -> dict:
        return {**self.client.describe(), "backend": self.name, "images": "base64 PNG data URLs"}

    def close(self) -> None:
        self.client.close()
