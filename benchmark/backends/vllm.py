"""vLLM backend (in-process ``vllm.LLM``; extra ``vllm``, imported lazily). For GPUs: tensor and
pipeline parallel sizes come from models.yaml.

Choice scoring uses ``prompt_logprobs``, the standard recipe: the prompt is the context tokens
followed by the option's continuation tokens, with ``max_tokens=1, temperature=0``; the option's
score is the sum of the continuation positions' entries (the first entry is always None). Prompts are
rendered and tokenized with the model's HF tokenizer exactly as the HF backend does
(``prompting.py``). Not run in this project's CI (no GPU): the request building and output parsing
are unit-tested with vLLM-shaped objects.
"""

from __future__ import annotations

import time

from ..config import ModelSpec
from ..errors import FairbenchError
from ..requests import Request, Result
from . import prompting
from .base import Backend, common_settings, package_version, path_identity, settings_digest


def _import_vllm():
    try:
        import vllm
    except ImportError:
        raise FairbenchError(
            'backend "vllm" needs vLLM (a CUDA GPU): pip install "fairbench-med[vllm]". '
            "On a CPU use backend hf or llamacpp, or point backend openai at a running `vllm serve`."
        ) from None
    return vllm


def engine_kwargs(spec: ModelSpec, seed: int) -> dict:
    kwargs = {
        "model": spec.model,
        "tokenizer": spec.tokenizer or spec.model,
        "revision": spec.revision,
        "dtype": spec.dtype,
        "seed": seed,
        "trust_remote_code": spec.trust_remote_code,
        "tensor_parallel_size": spec.tensor_parallel_size,
        "pipeline_parallel_size": spec.pipeline_parallel_size,
    }
    if spec.max_length:
        kwargs["max_model_len"] = spec.max_length
    if spec.adapter:
        kwargs["enable_lora"] = True
    kwargs.update(spec.extra.get("engine", {}))  # e.g. gpu_memory_utilization, quantization
    return {k: v for k, v in kwargs.items() if v is not None}


def choice_prompts(context: list[int], options: list[list[int]]) -> list[list[int]]:
    """One prompt per option: context + option tokens."""
    return [context + o for o in options]


def sum_prompt_logprobs(prompt_logprobs: list, token_ids: list[int], n_context: int) -> float:
    """Sum the entries for positions ``n_context ..`` of a vLLM ``prompt_logprobs`` list (each entry a
    dict token_id -> Logprob with ``.logprob``; the first entry is None)."""
    if prompt_logprobs is None or len(prompt_logprobs) != len(token_ids):
        raise FairbenchError(
            f"vLLM output: prompt_logprobs has {None if prompt_logprobs is None else len(prompt_logprobs)} entries "
            f"for {len(token_ids)} prompt tokens."
        )
    if n_context < 1:
        raise FairbenchError("vLLM choice scoring needs a non-empty context (the first position has no log-probability).")
    total = 0.0
    for pos in range(n_context, len(token_ids)):
        entry = prompt_logprobs[pos]
        tok = token_ids[pos]
        if not entry or tok not in entry:
            raise FairbenchError(f"vLLM output: prompt_logprobs[{pos}] has no entry for token {tok}.")
        value = entry[tok]
        total += float(getattr(value, "logprob", value))
    return total


class VLLMBackend(Backend):
    name = "vllm"

    @classmethod
    def fingerprint(cls, spec: ModelSpec) -> str:
        settings = {
            "backend": cls.name,
            "weights": path_identity(spec.model, spec.revision),
            "adapter": path_identity(spec.adapter),
            "dtype": spec.dtype,
            "trust_remote_code": spec.trust_remote_code,
            "engine": spec.extra.get("engine", {}),
            "vllm": package_version("vllm"),
            **common_settings(spec),
        }
        return settings_digest(settings)

    def __init__(self, spec: ModelSpec, card=None, seed: int = 0, quiet: bool = True):
        super().__init__(spec, card, seed, quiet)
        vllm = _import_vllm()
        self._vllm = vllm
        t0 = time.perf_counter()
        self.llm = vllm.LLM(**engine_kwargs(spec, seed))
        self.load_seconds = time.perf_counter() - t0
        self.tokenizer = self.llm.get_tokenizer()
        has_template = bool(getattr(self.tokenizer, "chat_template", None))
        self.use_chat = has_template if spec.chat_template is None else spec.chat_template
        if self.use_chat and not has_template:
            raise FairbenchError(f'model "{spec.name}": chat_template is true but the tokenizer has none.')
        self.lora = None
        if spec.adapter:
            from vllm.lora.request import LoRARequest

            self.lora = LoRARequest("adapter", 1, spec.adapter)

    def describe(self) -> dict:
        return {"backend": self.name, "vllm_version": getattr(self._vllm, "__version__", "?"),
                "tensor_parallel_size": self.spec.tensor_parallel_size,
                "pipeline_parallel_size": self.spec.pipeline_parallel_size,
                "chat_template": self.use_chat, "load_seconds": round(self.load_seconds, 3)}

    def render(self, prompt: str) -> str:
        if not self.use_chat:
            return prompt
        return self.tokenizer.apply_chat_template(prompting.messages(self.spec, prompt), tokenize=False, add_generation_prompt=True)

    def _encode(self, text: str) -> list[int]:
        ids = self.tokenizer(text, add_special_tokens=not self.use_chat).input_ids
        if self.spec.max_length and len(ids) > self.spec.max_length:
            ids = ids[-self.spec.max_length :]
        return ids

    def _option_ids(self, option: str) -> list[int]:
        ids = self.tokenizer(prompting.continuation(option, self.use_chat), add_special_tokens=False).input_ids
        if not ids:
            raise FairbenchError(f"option {option!r} encodes to no tokens.")
        return ids

    def score_choices(self, requests: list[Request]) -> list[Result]:
        params = self._vllm.SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0)
        rendered = [self.render(r.prompt) for r in requests]
        contexts = [self._encode(t) for t in rendered]
        prompts, owners = [], []
        for i, r in enumerate(requests):
            for p in choice_prompts(contexts[i], [self._option_ids(o) for o in r.options]):
                prompts.append(p)
                owners.append(i)
        t0 = time.perf_counter()
        outputs = self.llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False, lora_request=self.lora)
        per = (time.perf_counter() - t0) / max(1, len(requests))
        scores: list[list[float]] = [[] for _ in requests]
        for p, i, out in zip(prompts, owners, outputs):
            scores[i].append(sum_prompt_logprobs(out.prompt_logprobs, p, len(contexts[i])))
        return [Result(scores[i], None, rendered[i], len(contexts[i]), per) for i in range(len(requests))]

    def generate(self, requests: list[Request]) -> list[Result]:
        rendered = [self.render(r.prompt) for r in requests]
        params = [
            self._vllm.SamplingParams(
                max_tokens=r.max_new_tokens, temperature=r.temperature,
                top_p=self.spec.generation.top_p if r.temperature > 0 else 1.0,
                seed=(int(r.key("seed")[:8], 16) ^ r.seed) if r.temperature > 0 else None,
            )
            for r in requests
        ]
        t0 = time.perf_counter()
        outputs = self.llm.generate([{"prompt_token_ids": self._encode(t)} for t in rendered], params, use_tqdm=False, lora_request=self.lora)
        per = (time.perf_counter() - t0) / max(1, len(requests))
        return [Result(None, o.outputs[0].text, t, len(o.prompt_token_ids), per) for o, t in zip(outputs, rendered)]
