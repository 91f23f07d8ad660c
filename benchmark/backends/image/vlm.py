"""``vlm``: HF LLaVA-family models (e.g. LLaVA-Med in HF Llava format): a choice/generate backend
whose requests carry one image content part each (an image task asks the card's question per label).

Loading: ``LlavaForConditionalGeneration`` + ``AutoProcessor`` from a local directory or hub id
(``extra.model_class: auto`` uses ``AutoModelForImageTextToText`` for other image-text families).
The prompt is the processor's chat template with an image and the question; without one,
``extra.prompt_template`` (default ``"USER: <image>\\n{question} ASSISTANT:"``).

Choice scoring reads log P(option | image, prompt), as the text ``hf`` backend does:
- single-token options: one batched forward pass over (image, question) pairs, last position only;
- multi-token options: the image + prompt run once, its KV cache is repeated for the options, and
  the continuations are scored in one batched pass.
Generation is greedy (the request's ``max_new_tokens``); Φ (kinds/image/answers.py) maps the text
to an option.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import torch

from ...device import pick_device, pick_dtype
from ...errors import FairbenchError
from ...hashing import sha256_tree
from ...requests import Request, Result
from .. import prompting
from ..base import Backend, settings_digest
from ..continuations import score_options_after_context

DEFAULT_TEMPLATE = "USER: <image>\n{question} ASSISTANT:"
EXTRA = {"model_class", "prompt_template", "batch_images"}


def _is_local(model: str) -> bool:
    return model.startswith((".", "/", "~")) or os.path.exists(os.path.expanduser(model))


class VLMBackend(Backend):
    name = "vlm"
    accepts_images = True

    @classmethod
    def check(cls, spec) -> None:
        unknown = set(spec.extra) - EXTRA
        if unknown:
            raise FairbenchError(f'model "{spec.name}": unknown extra setting(s) {sorted(unknown)} for the vlm backend; known: {sorted(EXTRA)}.')
        if spec.extra.get("model_class", "llava") not in ("llava", "auto"):
            raise FairbenchError(f'model "{spec.name}": extra.model_class must be llava or auto.')
        if _is_local(spec.model) and not Path(os.path.expanduser(spec.model)).is_dir():
            raise FairbenchError(f'model "{spec.name}": model path {spec.model} does not exist. Fix "model" in models.yaml.')
        template = spec.extra.get("prompt_template", DEFAULT_TEMPLATE)
        if "{question}" not in template:
            raise FairbenchError(f'model "{spec.name}": extra.prompt_template must contain {{question}}.')

    @classmethod
    def fingerprint(cls, spec) -> str:
        cls.check(spec)
        path = os.path.expanduser(spec.model)
        weights = "dir:" + sha256_tree(Path(path)) if _is_local(spec.model) else f"hub:{spec.model}@{spec.revision or 'main'}"
        settings = {"backend": cls.name, "weights": weights, "dtype": spec.dtype, "chat_template": spec.chat_template,
                    "system_prompt": spec.system_prompt, "extra": {k: v for k, v in spec.extra.items() if k != "batch_images"}}
        return settings_digest(settings)

    def __init__(self, spec, card=None, seed: int = 0, quiet: bool = True):
        super().__init__(spec, card, seed, quiet)
        self.device = pick_device(spec.device)
        self.check(spec)
        from transformers import (
            AutoModelForImageTextToText,
            AutoProcessor,
            LlavaForConditionalGeneration,
        )

        cls = AutoModelForImageTextToText if spec.extra.get("model_class") == "auto" else LlavaForConditionalGeneration
        source = os.path.expanduser(spec.model)
        common = {"trust_remote_code": spec.trust_remote_code}
        if spec.revision and not _is_local(spec.model):
            common["revision"] = spec.revision
        self.dtype = pick_dtype(spec.dtype, self.device)
        t0 = time.perf_counter()
        try:
            self.processor = AutoProcessor.from_pretrained(source, **common)
            self.model = cls.from_pretrained(source, dtype=self.dtype, **common)
        except OSError as exc:
            raise FairbenchError(f'model "{spec.name}": cannot load a VLM from {spec.model!r} ({str(exc).splitlines()[0]}).') from None
        self.model.to(self.device).eval()
        self.load_seconds = time.perf_counter() - t0
        self.tokenizer = self.processor.tokenizer
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.tokenizer.padding_side = "left"
        has_template = bool(getattr(self.processor, "chat_template", None))
        self.use_chat = has_template if spec.chat_template is None else bool(spec.chat_template)
        if self.use_chat and not has_template:
            raise FairbenchError(f'model "{spec.name}": chat_template is true but the processor has none; set extra.prompt_template instead.')
        self.template = spec.extra.get("prompt_template", DEFAULT_TEMPLATE)
        self.batch_images = int(spec.extra.get("batch_images", 8 if self.device.type == "cuda" else 4))

    def describe(self) -> dict:
        return {"backend": self.name, "device": str(self.device), "dtype": str(self.dtype).removeprefix("torch."), "chat_template": self.use_chat,
                "load_seconds": round(self.load_seconds, 3)}

    # ---------- prompts ----------
    def render(self, question: str) -> str:
        if not self.use_chat:
            return self.template.format(question=question)
        messages = []
        if self.spec.system_prompt:
            messages.append({"role": "system", "content": [{"type": "text", "text": self.spec.system_prompt}]})
        messages.append({"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]})
        return self.processor.apply_chat_template(messages, add_generation_prompt=True)

    def _inputs(self, images: list, prompts: list[str]) -> dict:
        texts = [self.render(p) for p in prompts]
        # A rendered chat template holds its special tokens; a plain template gets the tokenizer's BOS rule.
        batch = self.processor(images=images, text=texts, padding=True, return_tensors="pt", add_special_tokens=not self.use_chat)
        batch = {k: v.to(self.device) for k, v in batch.items()}
        if "pixel_values" in batch:
            batch["pixel_values"] = batch["pixel_values"].to(self.dtype)
        return batch

    def _option_ids(self, option: str) -> list[int]:
        ids = self.tokenizer(prompting.continuation(option, self.use_chat), add_special_tokens=False).input_ids
        if not ids:
            raise FairbenchError(f'model "{self.spec.name}": option {option!r} encodes to no tokens.')
        return ids

    # ---------- the protocol: one image per request, batched by ``batch_images`` ----------
    def _batches(self, requests: list[Request]):
        for r in requests:
            if len(r.images) != 1:
                raise FairbenchError(f'model "{self.spec.name}": the vlm backend needs exactly one image per request, got {len(r.images)}.')
        for start in range(0, len(requests), self.batch_images):
            batch = requests[start:start + self.batch_images]
            yield batch, [r.images[0].pil() for r in batch], [r.prompt for r in batch]

    def score_choices(self, requests: list[Request]) -> list[Result]:
        out = []
        for batch, images, prompts in self._batches(requests):
            by_options: dict[tuple, list[int]] = {}
            for i, r in enumerate(batch):
                by_options.setdefault(tuple(r.options), []).append(i)
            answers: list = [None] * len(batch)
            for options, idx in by_options.items():
                got = self.choose([images[i] for i in idx], [prompts[i] for i in idx], list(options))
                for i, a in zip(idx, got):
                    answers[i] = a
            out.extend(Result(option_logprobs=a["option_logprobs"], rendered_prompt=self.render(r.prompt)) for a, r in zip(answers, batch))
            self.report_progress(len(batch))
        return out

    def generate(self, requests: list[Request]) -> list[Result]:
        out = []
        for batch, images, prompts in self._batches(requests):
            # One greedy pass per batch at the batch's longest budget (an image task gives every request the same one).
            texts = self.generate_texts(images, prompts, max(r.max_new_tokens for r in batch))
            out.extend(Result(raw_output=t, rendered_prompt=self.render(r.prompt)) for t, r in zip(texts, batch))
            self.report_progress(len(batch))
        return out

    # ---------- choice scoring ----------
    @torch.inference_mode()
    def choose(self, images: list, prompts: list[str], options: list[str]) -> list[dict]:
        option_ids = [self._option_ids(o) for o in options]
        if all(len(o) == 1 for o in option_ids):
            batch = self._inputs(images, prompts)
            # Left padding: positions count real tokens only, so a padded row scores as it would alone.
            positions = (batch["attention_mask"].cumsum(-1) - 1).clamp(min=0)
            out = self.model(**batch, position_ids=positions, logits_to_keep=1, use_cache=False)
            logp = torch.log_softmax(out.logits[:, -1, :].float(), dim=-1).cpu()
            return [{"option_logprobs": [float(logp[i, o[0]]) for o in option_ids]} for i in range(len(prompts))]
        return [{"option_logprobs": self._score_multi(im, p, option_ids)} for im, p in zip(images, prompts)]

    @torch.inference_mode()
    def _score_multi(self, image, prompt: str, options: list[list[int]]) -> list[float]:
        batch = self._inputs([image], [prompt])
        out = self.model(**batch, use_cache=True, logits_to_keep=1)
        return score_options_after_context(self.model, out, batch["attention_mask"], options, self.tokenizer.pad_token_id)

    # ---------- generation ----------
    @torch.inference_mode()
    def generate_texts(self, images: list, prompts: list[str], max_new_tokens: int) -> list[str]:
        batch = self._inputs(images, prompts)
        out = self.model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=self.tokenizer.pad_token_id)
        new = out[:, batch["input_ids"].shape[1]:]
        return [self.tokenizer.decode(row, skip_special_tokens=True) for row in new]
