"""OpenAI-compatible serving backend: ``vllm serve``, llama.cpp's server, TGI, or any such endpoint.

Choice scoring, per model (``scoring_endpoint`` in models.yaml):
- ``completions`` (exact): POST /completions with prompt = rendered prompt + option continuation,
  ``echo`` + ``logprobs``; the option's score is the sum of its continuation tokens' log-probabilities,
  as in the HF backend. Chat models need ``tokenizer`` (a GGUF file or HF tokenizer) so the chat
  template is rendered here, exactly as the HF backend renders it.
- ``chat``: POST /chat/completions with ``logprobs`` + ``top_logprobs`` and one output token; an
  option's score is the log-probability of its first token. When an option's first token is not
  among the top log-probabilities, the request falls back to generation + answer parsing, and the
  row is marked (``extra.choice_fallback``).
Default: ``completions`` when the prompt can be rendered here (plain model, or ``tokenizer`` set),
else ``chat``.

Requests run concurrently (``max_concurrency``), each with a timeout (``timeout_s``); connection
errors, timeouts, 429 and 5xx are retried with exponential backoff (``extra.max_retries``, default 4;
``extra.backoff_s``, default 0.5). Any other 4xx is a one-line error. A response missing a field, or
with a non-number where a log-probability belongs, is an error naming the field: nothing half-parsed
is stored. The API key is read from the environment variable named by ``api_key_env`` and never
appears in logs, manifests or error messages.
"""

from __future__ import annotations

import json
import math
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx

from ..config import ModelSpec
from ..errors import FairbenchError
from ..requests import Request, Result
from . import prompting
from .base import Backend, common_settings, settings_digest

RETRY_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}


class MalformedResponse(FairbenchError):
    pass


def endpoint_for(spec: ModelSpec) -> str:
    if spec.scoring_endpoint:
        return spec.scoring_endpoint
    return "completions" if (spec.chat_template is False or spec.tokenizer) else "chat"


def _get(obj, path: str):
    """Follow a dotted path such as ``choices.0.logprobs.tokens``; a missing step raises
    MalformedResponse naming the field."""
    cur = obj
    for step in path.split("."):
        try:
            cur = cur[int(step)] if step.isdigit() else cur[step]
        except (KeyError, IndexError, TypeError, ValueError):
            raise MalformedResponse(f"malformed response: field {path} is missing (at {step!r}).") from None
    return cur


def _logprob(value, field: str) -> float:
    """A log-probability from a response: a real number <= 0 (tiny positive rounding allowed)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value) or value > 1e-4:
        raise MalformedResponse(f"malformed response: field {field} is {value!r}, not a log-probability.")
    return float(min(value, 0.0))


def _logsumexp(values: list[float]) -> float:
    top = max(values)
    if top == -math.inf:
        return top
    return top + math.log(sum(math.exp(v - top) for v in values))


# ---------- pure parsing (unit-tested without a server) ----------
def continuation_logprob(response: dict, continuation: str) -> tuple[float, bool]:
    """Sum of the log-probabilities of the echoed continuation tokens of a /completions response.

    The prompt part of ``logprobs.tokens`` is everything but the last ``usage.completion_tokens``
    entries. The continuation tokens are found by joining token strings backwards from the prompt's
    end until they spell the continuation; character offsets are not used, because servers differ in
    how they count special tokens. Returns (sum, merged), ``merged`` when a token straddles the
    prompt/continuation boundary (it is then included)."""
    tokens = _get(response, "choices.0.logprobs.tokens")
    lps = _get(response, "choices.0.logprobs.token_logprobs")
    n_gen = _get(response, "usage.completion_tokens")
    if not isinstance(tokens, list) or not isinstance(lps, list) or len(tokens) != len(lps):
        raise MalformedResponse("malformed response: fields choices.0.logprobs.tokens and token_logprobs must be lists of equal length.")
    if isinstance(n_gen, bool) or not isinstance(n_gen, int) or not 0 <= n_gen <= len(tokens):
        raise MalformedResponse(f"malformed response: field usage.completion_tokens is {n_gen!r}.")
    end = len(tokens) - n_gen
    text, total = "", 0.0
    for j in range(end - 1, -1, -1):
        if not isinstance(tokens[j], str):
            raise MalformedResponse(f"malformed response: field choices.0.logprobs.tokens.{j} is not a string.")
        if lps[j] is None:
            raise MalformedResponse(f"malformed response: field choices.0.logprobs.token_logprobs.{j} is null inside the option.")
        total += _logprob(lps[j], f"choices.0.logprobs.token_logprobs.{j}")
        text = tokens[j] + text
        if text == continuation:
            return total, False
        if len(text) >= len(continuation):
            if text.endswith(continuation):
                return total, True
            break
    raise MalformedResponse(
        f"malformed response: the echoed tokens (choices.0.logprobs.tokens) do not end with the option {continuation!r}; "
        "does the server support echo with logprobs?"
    )


def first_token_logprobs(response: dict, options: list[str]) -> tuple[list[float | None], list[str | None]]:
    """Log-probability of each option's first token from a /chat/completions response's
    ``top_logprobs``: the entries whose token equals the option (summed), else the longest entry that
    is a prefix of the option. None where no entry matches."""
    top = _get(response, "choices.0.logprobs.content.0.top_logprobs")
    if not isinstance(top, list) or not top:
        raise MalformedResponse("malformed response: field choices.0.logprobs.content.0.top_logprobs is empty or not a list.")
    entries = []
    for k, item in enumerate(top):
        tok = _get(item, "token")
        if not isinstance(tok, str):
            raise MalformedResponse(f"malformed response: field choices.0.logprobs.content.0.top_logprobs.{k}.token is not a string.")
        entries.append((tok, _logprob(_get(item, "logprob"), f"choices.0.logprobs.content.0.top_logprobs.{k}.logprob")))
    scores, matched = [], []
    for option in options:
        exact = [lp for tok, lp in entries if tok == option]
        if exact:
            scores.append(_logsumexp(exact))
            matched.append(option)
            continue
        prefixes = [(tok, lp) for tok, lp in entries if tok and option.startswith(tok)]
        if prefixes:
            tok, lp = max(prefixes, key=lambda e: (len(e[0]), e[1]))
            scores.append(lp)
            matched.append(tok)
        else:
            scores.append(None)
            matched.append(None)
    return scores, matched


def image_messages(messages: list[dict], data_urls: list[str]) -> list[dict]:
    """The last (user) message with the images as ``image_url`` content parts before the text: the
    OpenAI vision format, which ``vllm serve`` of a VLM accepts (images as base64 data URLs)."""
    last = messages[-1]
    parts = [{"type": "image_url", "image_url": {"url": url}} for url in data_urls]
    return [*messages[:-1], {"role": last["role"], "content": [*parts, {"type": "text", "text": last["content"]}]}]


def _urls(r: Request) -> tuple[str, ...]:
    """The request's image content parts as data URLs (encoded in the worker thread that sends them)."""
    return tuple(p.png_data_url() for p in r.images)


def generated_text(response: dict, endpoint: str) -> str:
    path = "choices.0.text" if endpoint == "completions" else "choices.0.message.content"
    text = _get(response, path)
    if text is None and endpoint == "chat":
        return ""
    if not isinstance(text, str):
        raise MalformedResponse(f"malformed response: field {path} is not a string.")
    return text


# ---------- HTTP with bounded retries ----------
class Client:
    """POST JSON with a timeout and bounded exponential-backoff retries. Hand-written (a dozen
    lines) because httpx retries only connection setup, and the retry policy must cover 429/5xx."""

    def __init__(self, base_url: str, api_key: str | None, timeout_s: float, max_retries: int, backoff_s: float):
        self.base_url = base_url.rstrip("/")
        self._key = api_key
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.http = httpx.Client(timeout=timeout_s, headers=headers)
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.n_retries = 0
        self._lock = threading.Lock()

    def redact(self, text: str) -> str:
        return text.replace(self._key, "***") if self._key else text

    def post(self, path: str, payload: dict) -> dict:
        url = f"{self.base_url}/{path}"
        last = ""
        for attempt in range(self.max_retries + 1):
            if attempt:
                with self._lock:
                    self.n_retries += 1
                time.sleep(min(self.backoff_s * 2 ** (attempt - 1), 30.0))
            try:
                resp = self.http.post(url, json=payload)
            except httpx.TimeoutException:
                last = "timed out"
                continue
            except httpx.TransportError as exc:
                last = f"connection error ({type(exc).__name__})"
                continue
            if resp.status_code in RETRY_STATUS:
                last = f"HTTP {resp.status_code}"
                continue
            if resp.status_code >= 400:
                body = self.redact(resp.text.strip().replace("\n", " "))[:300]
                raise FairbenchError(
                    f"{url}: HTTP {resp.status_code}: {body}. Check base_url, model, api_key_env and the server's options in models.yaml."
                )
            try:
                data = resp.json()
            except ValueError:
                raise MalformedResponse(f"{url}: malformed response: the body is not JSON ({self.redact(resp.text[:80])!r}).") from None
            if not isinstance(data, dict):
                raise MalformedResponse(f"{url}: malformed response: the body is not a JSON object.")
            return data
        raise FairbenchError(f"{url}: gave up after {self.max_retries + 1} attempts ({last}). Is the server running?")

    def close(self) -> None:
        self.http.close()


class OpenAIBackend(Backend):
    name = "openai"
    # Image content parts are sent as base64 PNG data URLs on the chat endpoint (a served VLM,
    # e.g. `vllm serve` of LLaVA); whether the served model reads them is the server's business.
    accepts_images = True

    @classmethod
    def check(cls, spec: ModelSpec) -> None:
        if not spec.base_url:
            raise FairbenchError(f'model "{spec.name}": backend openai needs base_url (e.g. http://127.0.0.1:8000/v1) in models.yaml.')
        if not spec.base_url.startswith(("http://", "https://")):
            raise FairbenchError(f'model "{spec.name}": field base_url must start with http:// or https://, got {spec.base_url!r}.')
        if spec.api_key_env and not os.environ.get(spec.api_key_env):
            raise FairbenchError(f'model "{spec.name}": environment variable {spec.api_key_env} (api_key_env) is not set. Export the API key in it.')
        if endpoint_for(spec) == "completions" and spec.chat_template and not spec.tokenizer:
            raise FairbenchError(
                f'model "{spec.name}": scoring_endpoint completions with chat_template true needs tokenizer '
                "(a .gguf file or HF tokenizer) to render the chat template; or use scoring_endpoint: chat."
            )

    @classmethod
    def fingerprint(cls, spec: ModelSpec) -> str:
        cls.check(spec)
        settings = {
            "backend": cls.name,
            "base_url": spec.base_url.rstrip("/"),
            "model": spec.model,
            "revision": spec.revision,
            "endpoint": endpoint_for(spec),
            "top_logprobs": spec.extra.get("top_logprobs", 20),
            "fallback_max_tokens": spec.extra.get("fallback_max_tokens", 32),
            "sampling_seed": "per-request",  # rows sampled with the run's seed for every request are not reused
            **common_settings(spec),
        }
        return settings_digest(settings)

    @classmethod
    def scores_continuations(cls, spec: ModelSpec) -> bool:
        # The chat endpoint reads only an option's first token (module docstring).
        return endpoint_for(spec) == "completions"

    def __init__(self, spec: ModelSpec, card=None, seed: int = 0, quiet: bool = True):
        super().__init__(spec, card, seed, quiet)
        self.check(spec)
        extra = spec.extra
        self.endpoint = endpoint_for(spec)
        self.top_logprobs = int(extra.get("top_logprobs", 20))
        self.fallback_max_tokens = int(extra.get("fallback_max_tokens", 32))
        key = os.environ.get(spec.api_key_env) if spec.api_key_env else None
        self.client = Client(
            spec.base_url, key, spec.timeout_s, int(extra.get("max_retries", 4)), float(extra.get("backoff_s", 0.5))
        )
        # Completions on a chat model: the chat template is rendered here, as the HF backend does.
        self.use_chat = self.endpoint == "chat" or bool(spec.chat_template if spec.chat_template is not None else spec.tokenizer)
        self.template = None
        if self.endpoint == "completions" and self.use_chat:
            self.template = prompting.load_chat_template(spec.tokenizer, spec.name)

    def describe(self) -> dict:
        return {
            "backend": self.name,
            "base_url": self.client.redact(self.spec.base_url),
            "model": self.spec.model,
            "endpoint": self.endpoint,
            "chat_template": self.use_chat,
            "max_concurrency": self.spec.max_concurrency,
            "retries": self.client.n_retries,
        }

    def _parallel(self, fn, items: list) -> list:
        def one(x):
            result = fn(x)
            self.report_progress(1)  # per completed request, in completion order
            return result

        if len(items) <= 1 or self.spec.max_concurrency == 1:
            return [one(x) for x in items]
        pool = ThreadPoolExecutor(max_workers=self.spec.max_concurrency)
        futures = [pool.submit(one, x) for x in items]
        try:
            return [f.result() for f in futures]
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def _render(self, prompt: str) -> str:
        return self.template.render(self.spec, prompt) if self.template else prompt

    # ---------- choice scoring ----------
    def score_choices(self, requests: list[Request]) -> list[Result]:
        if any(r.images for r in requests):  # images go on the chat endpoint only
            return self._parallel(lambda r: self._score_chat(r, _urls(r)), requests)
        fn = self._score_completions if self.endpoint == "completions" else self._score_chat
        return self._parallel(fn, requests)

    def _score_completions(self, r: Request) -> Result:
        context = self._render(r.prompt)
        t0 = time.perf_counter()
        scores, merged, n_prompt = [], [], 0
        for option in r.options:
            cont = prompting.continuation(option, self.use_chat)
            payload = {"model": self.spec.model, "prompt": context + cont, "max_tokens": 1, "temperature": 0.0,
                       "echo": True, "logprobs": 1, "seed": r.seed}
            resp = self.client.post("completions", payload)
            lp, m = continuation_logprob(resp, cont)
            scores.append(lp)
            merged.append(m)
            n_prompt = max(n_prompt, int(_get(resp, "usage.prompt_tokens") or 0))
        extra = {"endpoint": "completions"}
        if any(merged):
            extra["boundary_merged"] = merged
        return Result(scores, None, context, n_prompt, time.perf_counter() - t0, extra)

    def _chat_payload(self, r: Request, images: tuple[str, ...] = (), **kw) -> dict:
        messages = prompting.messages(self.spec, r.prompt)
        if images:
            messages = image_messages(messages, list(images))
        return {"model": self.spec.model, "messages": messages, "seed": r.seed, **kw}

    def _score_chat(self, r: Request, images: tuple[str, ...] = ()) -> Result:
        t0 = time.perf_counter()
        rendered = json.dumps(prompting.messages(self.spec, r.prompt), ensure_ascii=False)
        resp = self.client.post(
            "chat/completions",
            self._chat_payload(r, images, max_tokens=1, temperature=0.0, logprobs=True, top_logprobs=self.top_logprobs),
        )
        scores, matched = first_token_logprobs(resp, r.options)
        n_prompt = int((resp.get("usage") or {}).get("prompt_tokens") or 0)
        if all(s is not None for s in scores):
            extra = {"endpoint": "chat", "first_tokens": matched}
            return Result(scores, None, rendered, n_prompt, time.perf_counter() - t0, extra)
        # Some option's first token is not among the top log-probabilities: generate and parse.
        missing = [o for o, s in zip(r.options, scores) if s is None]
        gen = self.client.post("chat/completions", self._chat_payload(r, images, max_tokens=self.fallback_max_tokens, temperature=0.0))
        extra = {"endpoint": "chat", "choice_fallback": "generate",
                 "reason": f"first token of {missing} not among top {self.top_logprobs} log-probabilities"}
        return Result(None, generated_text(gen, "chat"), rendered, n_prompt, time.perf_counter() - t0, extra)

    # ---------- generation ----------
    def generate(self, requests: list[Request]) -> list[Result]:
        return self._parallel(lambda r: self._generate_one(r, _urls(r)), requests)

    def _generate_one(self, r: Request, images: tuple[str, ...] = ()) -> Result:
        # The request's own seed, not the run's: one seed for every variant would couple their samples on
        # a seeded server (vLLM, llama.cpp) and push explanation drift below its noise floor.
        sampling = {"max_tokens": r.max_new_tokens, "temperature": r.temperature, "seed": r.sampling_seed()}
        if r.temperature > 0:
            sampling["top_p"] = self.spec.generation.top_p
        t0 = time.perf_counter()
        if self.endpoint == "completions" and not images:
            rendered = self._render(r.prompt)
            resp = self.client.post("completions", {"model": self.spec.model, "prompt": rendered, **sampling})
        else:
            rendered = json.dumps(prompting.messages(self.spec, r.prompt), ensure_ascii=False)
            resp = self.client.post("chat/completions", self._chat_payload(r, images, **sampling))
        text = generated_text(resp, "chat" if images else self.endpoint)
        n_prompt = int((resp.get("usage") or {}).get("prompt_tokens") or 0)
        return Result(None, text, rendered, n_prompt, time.perf_counter() - t0, {"endpoint": "chat" if images else self.endpoint})

    def close(self) -> None:
        self.client.close()
