"""The request/result format every backend receives and returns, for every kind of task.

A :class:`Request` is one question to a model: a text prompt, optional image content parts, the
options to score and the method (``choice``: log P(option | prompt); ``generate``: free text;
``predict``: one probability per output of a trained or zero-shot image model). Its ``key`` is a
content hash of everything that determines the answer, so cache and resume never depend on
ordering, batch size or process count. A :class:`Result` is stored verbatim; scoring happens later.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field

METHODS = ("choice", "generate", "predict")


def pil_image(array):
    """float [0, 1] array, (H, W) or (H, W, 3) -> RGB PIL image (8 bits per channel)."""
    import numpy as np
    from PIL import Image

    arr = (np.clip(array, 0, 1) * 255).astype(np.uint8)
    return Image.fromarray(arr, mode="L" if arr.ndim == 2 else "RGB").convert("RGB")


@dataclass(frozen=True)
class ImagePart:
    """An image inside a request (the way chat APIs carry images as content parts).

    ``key`` identifies the pixels in cache keys (dataset, split and image id); ``load()`` reads them
    lazily as float32 in [0, 1], shape (H, W) grey or (H, W, 3) colour, so a large dataset never
    sits in memory."""

    key: str
    load: Callable[[], object] = field(compare=False, repr=False)

    def pil(self):
        """The image as an RGB PIL image (for image processors and PNG encoding)."""
        return pil_image(self.load())

    def png_data_url(self) -> str:
        """A lossless ``data:image/png;base64,...`` URL (the OpenAI vision content format)."""
        import base64
        import io

        buf = io.BytesIO()
        self.pil().save(buf, format="PNG")
        return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


@dataclass(frozen=True)
class Request:
    case_id: str  # the instance: a text case (all its variants share it) or an image id
    question_id: str  # text: the card's question; image: the label a VLM is asked about ("" for predict)
    attributes: dict[str, str]  # demographics of this variant / image
    prompt: str  # the user message, before any chat template ("" for predict)
    options: list[str]  # choice/generate: option labels; predict: the model's outputs (labels or classes)
    method: str  # "choice" | "generate" | "predict"
    max_new_tokens: int = 256
    temperature: float = 0.0
    seed: int = 0
    meta: dict = field(default_factory=dict)
    images: tuple[ImagePart, ...] = ()
    # generate: which seeded sample of the same prompt this is (0 = the audited answer; 1.. = the extra
    # samples of a mode with ``samples: n``, e.g. the noise floor of explanation drift). Its seed is
    # derived (prompts.sample_seed), and the key names it, so two samples are never one cache row.
    sample: int = 0

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
        if self.images:  # text-only keys keep their historical form, so text caches stay valid
            payload["images"] = [p.key for p in self.images]
        if self.sample:  # sample 0 keeps the historical key
            payload["sample"] = self.sample
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()

    def sampling_seed(self) -> int:
        """A 31-bit sampler seed for a backend that takes one (llama.cpp, an OpenAI-compatible server):
        derived from the request's content and ``seed``, so every variant and sample draws its own
        stream and a sample does not depend on which other requests a run sends, or in what order."""
        return (int(self.key("seed")[:8], 16) ^ self.seed) & 0x7FFFFFFF

    def as_dict(self) -> dict:
        out = {
            "case_id": self.case_id, "question_id": self.question_id, "attributes": dict(self.attributes),
            "prompt": self.prompt, "options": list(self.options), "method": self.method,
            "max_new_tokens": self.max_new_tokens, "temperature": self.temperature, "seed": self.seed,
            "meta": dict(self.meta),
        }
        if self.sample:
            out["sample"] = self.sample
        if self.images:
            out["images"] = [p.key for p in self.images]
        return out


@dataclass
class Result:
    """What a backend returns for one request. Stored verbatim; scoring happens later."""

    option_logprobs: list[float] | None = None  # choice: log P(option | prompt), one per option
    raw_output: str | None = None  # generate: the text
    rendered_prompt: str = ""  # the exact text the model saw (after chat template)
    n_prompt_tokens: int = 0
    latency_s: float = 0.0
    extra: dict = field(default_factory=dict)
    probs: list[float] | None = None  # predict: P(output), one per request option
    decisions: list[float | None] | None = None  # predict: the backend's own 0/1 decisions (post-processing)

    def as_dict(self) -> dict:
        lps = None
        if self.option_logprobs is not None:
            # JSON has no NaN/inf; keep them visible as strings so scoring can count them invalid.
            lps = [x if math.isfinite(x) else str(x) for x in self.option_logprobs]
        out = {
            "option_logprobs": lps,
            "raw_output": self.raw_output,
            "rendered_prompt": self.rendered_prompt,
            "n_prompt_tokens": self.n_prompt_tokens,
            "latency_s": round(self.latency_s, 6),
            "extra": self.extra,
        }
        if self.probs is not None:
            out["probs"] = [x if math.isfinite(x) else str(x) for x in self.probs]
        if self.decisions is not None:
            out["decisions"] = self.decisions
        return out
