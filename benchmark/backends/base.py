"""The one backend protocol, for text and image models alike.

Three request methods (:mod:`benchmark.requests`), each answered in the order given:
``score_choices`` (log P(option | prompt)), ``generate`` (free text) and ``predict`` (one probability
per output, for image classifiers and zero-shot image scorers). A backend declares which it answers
in ``methods`` and whether it reads image content parts (``accepts_images``); a VLM is an ordinary
choice/generate backend that accepts images. Backends that train (``trains``) get ``fit`` on the
task's training data before they predict. Subclasses register under ``fairbench.backends``.
"""

from __future__ import annotations

import hashlib
import json
import os
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path

from ..config import ModelSpec
from ..errors import FairbenchError
from ..hashing import sha256_file, sha256_tree
from ..requests import Request, Result


# Every file of a model or tokenizer directory that can change an output: weights, configs, tokenizer
# vocabularies and merges, chat templates saved apart (chat_template.jinja), remote code.
MODEL_FILES = ("*.json", "*.safetensors", "*.bin", "*.model", "*.gguf", "*.txt", "*.jinja", "*.py", "*.tiktoken")


def _local(path: str) -> bool:
    return path.startswith(("/", "./", "../", "~")) or Path(os.path.expanduser(path)).exists()


def path_identity(path: str | None, revision: str | None = None) -> str | None:
    """Content identity of a model, tokenizer, adapter or steering location: ``pkg:PACKAGE[/FILE]``
    and local files or directories by SHA-256 (:data:`MODEL_FILES`), hub ids by ``id@revision``."""
    if not path:
        return None
    if path.startswith("pkg:"):
        from ..packages import resolve_pkg_path

        try:
            path = str(resolve_pkg_path(path, "?", "path"))
        except FairbenchError:
            return f"pkg:{path[4:]}(missing)"
    local = Path(os.path.expanduser(path))
    if local.is_file():
        return "file:" + sha256_file(local)
    if local.is_dir():
        return "dir:" + sha256_tree(local, MODEL_FILES)
    if _local(path):
        return f"missing:{path}"
    return f"hub:{path}@{revision or 'main'}"


def gguf_path(spec: ModelSpec) -> Path | None:
    """The GGUF file of a model entry (``model`` directory + ``gguf_file``), or None."""
    if not spec.gguf_file:
        return None
    return Path(os.path.expanduser(spec.resolved_model_path())) / spec.gguf_file


def package_version(name: str) -> str | None:
    """The installed version of a backend's engine (its outputs may change between releases)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


def common_settings(spec: ModelSpec) -> dict:
    """The model-entry fields that change outputs on every text backend: the prompt as rendered
    (tokenizer, chat template, system prompt, max length) and the sampling settings not carried by
    the request key (``top_p``; ``max_new_tokens`` and ``temperature`` are in every generate key)."""
    return {
        "tokenizer": path_identity(spec.tokenizer, spec.revision),
        "chat_template": spec.chat_template,
        "system_prompt": spec.system_prompt,
        "max_length": spec.max_length,
        "top_p": spec.generation.top_p,
    }


def settings_digest(settings: dict) -> str:
    """The fingerprint of a backend's weights and settings: 16 hex digits of their canonical JSON."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


class Backend(ABC):
    """Subclasses register under the ``fairbench.backends`` entry-point group."""

    name = "base"
    methods: frozenset[str] = frozenset({"choice", "generate"})
    accepts_images = False  # reads ImagePart content of requests (VLMs, image classifiers)
    trains = False  # True: ``fit`` runs first; outputs depend on the run seed and the training data
    # Set by the engine around each call: receives the number of requests just answered. Backends
    # call ``report_progress`` from their own batch loops, so progress moves within a call without
    # changing how requests are batched (a different batching changes float outputs).
    on_progress: Callable[[int], None] | None = None

    def __init__(self, spec: ModelSpec, card=None, seed: int = 0, quiet: bool = True):
        self.spec = spec
        self.seed = seed
        self.quiet = quiet
        self.card = card  # the task card; image backends read labels, sizes and prompts from it

    @classmethod
    @abstractmethod
    def fingerprint(cls, spec: ModelSpec) -> str:
        """A cheap identity of the weights and settings, used in request keys and the manifest.
        Must not load the model."""

    @classmethod
    def check(cls, spec: ModelSpec) -> None:
        """Raise FairbenchError early when the spec cannot work (missing path ...)."""

    @classmethod
    def scores_continuations(cls, spec: ModelSpec) -> bool:
        """Whether ``score_choices`` returns, for an option of several tokens, the exact sum of the
        log-probabilities of all its tokens (needed by option-text scoring); False for backends that
        read only an option's first token."""
        return "choice" in cls.methods

    def fit(self, train, val, workdir: Path) -> dict:
        """Train on the task's training split, selecting on validation (only when ``trains``).
        ``train`` / ``val``: :class:`benchmark.data.image.dataset.ImagingDataset`. Returns a report."""
        return {}

    def _unsupported(self, method: str):
        raise FairbenchError(f'model "{self.spec.name}": backend {self.name} does not answer {method} requests.')

    def score_choices(self, requests: list[Request]) -> list[Result]:
        """One Result per request with ``option_logprobs`` (one per option, in order)."""
        self._unsupported("choice")

    def generate(self, requests: list[Request]) -> list[Result]:
        """One Result per request with ``raw_output``."""
        self._unsupported("generate")

    def predict(self, requests: list[Request]) -> list[Result]:
        """One Result per request with ``probs`` (one per request option: per label for binary and
        multilabel tasks, per class for multiclass) and optionally ``decisions``."""
        self._unsupported("predict")

    def report_progress(self, n_done: int) -> None:
        """``n_done`` more requests of the current call are answered (call after each batch; may be
        called from worker threads)."""
        if self.on_progress is not None and n_done > 0:
            self.on_progress(n_done)

    def answer(self, method: str, requests: list[Request]) -> list[Result]:
        """Dispatch a batch of same-method requests."""
        if method == "choice":
            return self.score_choices(requests)
        if method == "generate":
            return self.generate(requests)
        if method == "predict":
            return self.predict(requests)
        raise ValueError(f"unknown request method {method!r}")

    def describe(self) -> dict:
        return {"backend": self.name}

    def close(self) -> None:  # noqa: B027 - optional hook
        pass


def spec_digest(backend_name: str, spec: ModelSpec) -> str:
    """Fingerprint of a backend whose identity is its whole model entry (image backends)."""
    blob = json.dumps({"backend": backend_name, **spec.model_dump(mode="json")}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
