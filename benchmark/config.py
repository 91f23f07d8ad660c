"""The model registry: ``models.yaml`` schema, loading, and merging user files over the built-in one."""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator

from .errors import FairbenchError, unknown
from .paths import builtin_models_file
from .yamlio import parse_model, read_yaml, validation_message

MODELS_ENV = "FAIRBENCH_MODELS_FILE"


class GenerationDefaults(BaseModel):
    model_config = ConfigDict(extra="forbid")
    max_new_tokens: int = Field(256, gt=0, le=131072)
    temperature: float = Field(0.0, ge=0.0, allow_inf_nan=False)
    top_p: float = Field(1.0, gt=0.0, le=1.0, allow_inf_nan=False)


class ModelSpec(BaseModel):
    """One entry of ``models.yaml``. Backend-specific fields are ignored by other backends."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    name: str = ""
    backend: str
    description: str = ""
    # A hub id, a local directory, or ``pkg:<python package>`` for weights shipped in a package.
    model: str
    gguf_file: str | None = None
    revision: str | None = None
    tokenizer: str | None = None
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    device: str = "auto"
    chat_template: bool | None = None  # None: use it when the tokenizer has one
    system_prompt: str | None = None
    trust_remote_code: bool = False
    batch_size: int | Literal["auto"] = "auto"
    max_length: int | None = None
    generation: GenerationDefaults = Field(default_factory=GenerationDefaults)
    adapter: str | None = None  # LoRA adapter directory (derived models)
    base: str | None = None  # the base model of a derived model
    steering: str | None = None  # steering transform directory (derived models; hf backend)
    eval_cases: str | None = None  # held-out split file of a derived model (split.json)
    # Serving backends (openai / vllm).
    base_url: str | None = None
    api_key_env: str | None = None
    scoring_endpoint: Literal["completions", "chat"] | None = None
    max_concurrency: int = Field(8, gt=0)
    timeout_s: float = Field(120.0, gt=0, allow_inf_nan=False)
    tensor_parallel_size: int = Field(1, gt=0)
    pipeline_parallel_size: int = Field(1, gt=0)
    extra: dict[str, Any] = Field(default_factory=dict)

    @field_validator("batch_size")
    @classmethod
    def _positive_batch(cls, v):
        if isinstance(v, int) and not 0 < v <= 65536:
            raise ValueError("must be an integer from 1 to 65536, or 'auto'")
        return v

    def resolved_model_path(self) -> str:
        """The hub id or local path. ``pkg:NAME``: the installed package's directory, or the cache
        directory its ``assemble()`` wrote ``gguf_file`` into (once; :mod:`benchmark.packages`)."""
        if not self.model.startswith("pkg:"):
            return self.model
        from .packages import package_location

        return str(package_location(self.model[4:], self.gguf_file, self.name))


class ModelRegistry:
    def __init__(self, specs: dict[str, ModelSpec], sources: dict[str, Path]):
        self.specs = specs
        self.sources = sources

    def names(self) -> list[str]:
        return sorted(self.specs)

    def get(self, name: str) -> ModelSpec:
        if name not in self.specs:
            raise unknown("model", name, self.specs, where=", ".join(str(p) for p in self.files()))
        return self.specs[name]

    def files(self) -> list[Path]:
        return sorted(set(self.sources.values()))

    def add(self, spec: ModelSpec, source: Path) -> None:
        self.specs[spec.name] = spec
        self.sources[spec.name] = source


class _Extra(BaseModel):
    model_config = ConfigDict(extra="forbid")


class OpenAIExtra(_Extra):
    max_retries: int = Field(4, ge=0, le=100)
    backoff_s: float = Field(0.5, ge=0, le=3600, allow_inf_nan=False)
    top_logprobs: int = Field(20, ge=1, le=20)
    fallback_max_tokens: int = Field(32, gt=0, le=131072)


class LlamaCppExtra(_Extra):
    n_threads: int | None = Field(None, gt=0, le=1024)
    n_ctx: int | None = Field(None, gt=0)
    n_batch: int = Field(512, gt=0)
    verbose: bool = False


class VLLMExtra(_Extra):
    engine: dict[str, Any] = Field(default_factory=dict)


class HFExtra(_Extra):
    pass


class VLMExtra(_Extra):
    model_class: Literal["llava", "auto"] = "llava"
    prompt_template: str | None = None
    batch_images: int | None = Field(None, gt=0)


# The ``extra`` settings each built-in text backend reads (image backends take open-ended training
# settings, checked by the backend). A third-party backend declares its own with ``extra_model``.
EXTRA_MODELS: dict[str, type[BaseModel]] = {
    "hf": HFExtra, "openai": OpenAIExtra, "llamacpp": LlamaCppExtra, "vllm": VLLMExtra, "vlm": VLMExtra,
}


def validate_extra(spec: ModelSpec, path: Path | str | None = None, backend_cls=None) -> None:
    """Check ``spec.extra`` against its backend's declared settings (unknown keys, types, ranges):
    one line naming the file and field ``models.NAME.extra.KEY``, as for the rest of models.yaml."""
    schema = getattr(backend_cls, "extra_model", None) or EXTRA_MODELS.get(spec.backend)
    if schema is None:
        return
    from pydantic import ValidationError

    try:
        schema.model_validate(spec.extra)
    except ValidationError as exc:
        raise validation_message(Path(str(path or "models.yaml")), f"models.{spec.name}.extra", exc) from None


# --model BACKEND --model-args K=V,...: lm-evaluation-harness argument names -> models.yaml fields.
ADHOC_ALIASES = {"pretrained": "model", "model_path": "model", "peft": "adapter", "tokenizer_name": "tokenizer",
                 "max_gen_toks": "max_new_tokens", "tp": "tensor_parallel_size"}
_GENERATION = ("max_new_tokens", "temperature", "top_p")
_EXTRA_ARGS = {"openai": set(OpenAIExtra.model_fields), "llamacpp": set(LlamaCppExtra.model_fields)}


def parse_model_args(text: str) -> dict[str, str]:
    """``"pretrained=ID,dtype=bfloat16"`` -> {"pretrained": "ID", "dtype": "bfloat16"}."""
    out: dict[str, str] = {}
    for part in (p for p in text.split(",") if p.strip()):
        key, sep, value = part.partition("=")
        key = key.strip()
        if not sep or not key:
            raise FairbenchError(f"--model-args must be KEY=VALUE,... (e.g. pretrained=HF_ID,dtype=bfloat16), got {part!r}.")
        if key in out:
            raise FairbenchError(f"--model-args: {key} given twice.")
        out[key] = value.strip()
    return out


def adhoc_model(backend: str, model_args: str) -> ModelSpec:
    """A model entry from the command line, in the lm-evaluation-harness convention:
    ``hf``/``vllm``: ``pretrained=ID_OR_DIR``; ``llamacpp``: ``model_path=FILE.gguf``; ``openai``:
    ``base_url=URL,model=NAME``; any other models.yaml field by its name (``dtype=bfloat16``,
    ``revision=...``, ``tokenizer=...``, ``max_new_tokens=...``). Its stable name is
    ``BACKEND-<model basename>-<8 hex digits of the sorted arguments>``, and every argument is part
    of the model fingerprint like any models.yaml field."""
    args = parse_model_args(model_args)
    entry: dict[str, Any] = {"backend": backend}
    generation: dict[str, str] = {}
    extra: dict[str, Any] = {}
    for key, value in args.items():
        field = ADHOC_ALIASES.get(key, key)
        if backend == "openai" and key == "model":
            field = "model"
        if field in _GENERATION:
            generation[field] = value
        elif field in _EXTRA_ARGS.get(backend, ()):
            extra[field] = yaml_scalar(value)
        elif field in ("name", "extra", "generation") or field not in ModelSpec.model_fields:
            raise FairbenchError(f"--model-args: unknown argument {key!r} for backend {backend}. Use models.yaml field names "
                                 "(model/pretrained, gguf_file, revision, tokenizer, dtype, device, chat_template, ...).")
        else:
            entry[field] = yaml_scalar(value) if field not in ("model", "tokenizer", "revision", "system_prompt") else value
    if backend == "llamacpp" and "model" in entry and str(entry["model"]).endswith(".gguf") and "gguf_file" not in entry:
        gguf = Path(os.path.expanduser(str(entry["model"])))
        entry["model"], entry["gguf_file"] = str(gguf.parent), gguf.name
    if "model" not in entry:
        need = {"llamacpp": "model_path=FILE.gguf", "openai": "base_url=URL,model=NAME"}.get(backend, "pretrained=HF_ID_OR_DIR")
        raise FairbenchError(f"--model-args for backend {backend} needs {need}.")
    if generation:
        entry["generation"] = generation
    if extra:
        entry["extra"] = extra
    digest = hashlib.sha256(json.dumps({"backend": backend, **args}, sort_keys=True).encode()).hexdigest()[:8]
    stem = Path(str(entry.get("gguf_file") or entry["model"]).rstrip("/")).name.removesuffix(".gguf") or "model"
    stem = re.sub(r"[^A-Za-z0-9._-]", "-", stem)[:40]
    entry["name"] = f"{backend}-{stem}-{digest}"
    where = Path("--model-args")
    spec = parse_model(ModelSpec, entry, where, prefix="")
    validate_extra(spec, where)
    return spec


def yaml_scalar(value: str) -> Any:
    """A command-line value as YAML reads it (``true``, ``3``, ``0.5``), strings otherwise."""
    try:
        parsed = yaml.safe_load(value)
    except yaml.YAMLError:
        return value
    return parsed if isinstance(parsed, (bool, int, float)) or parsed is None else value


def _read_models_file(path: Path) -> dict[str, ModelSpec]:
    data = read_yaml(path)
    if data is None:
        return {}
    if not isinstance(data, dict) or not isinstance(data.get("models"), dict):
        raise FairbenchError(f"{path}: expected a top-level mapping 'models:' of name -> entry.")
    specs = {}
    for name, entry in data["models"].items():
        if not isinstance(entry, dict):
            raise FairbenchError(f"{path}: field models.{name}: expected a mapping of settings.")
        entry = {**entry, "name": str(name)}
        specs[str(name)] = parse_model(ModelSpec, entry, path, prefix=f"models.{name}")
        validate_extra(specs[str(name)], path)
    return specs


def load_models(models_file: Path | None = None) -> ModelRegistry:
    """Built-in ``models.yaml``, then the user's file (``--models-file`` or ``$FAIRBENCH_MODELS_FILE``)
    merged over it entry by entry, then derived models registered by mitigations."""
    specs: dict[str, ModelSpec] = {}
    sources: dict[str, Path] = {}
    files = [builtin_models_file()]
    user = models_file or (Path(os.environ[MODELS_ENV]) if os.environ.get(MODELS_ENV) else None)
    if user is not None:
        files.append(Path(user))
    for path in files:
        for name, spec in _read_models_file(path).items():
            specs[name] = spec
            sources[name] = path
    from .derived import derived_models_file  # late: derived models live in the cache

    derived = derived_models_file()
    if derived.exists():
        for name, spec in _read_models_file(derived).items():
            specs.setdefault(name, spec)
            sources.setdefault(name, derived)
    return ModelRegistry(specs, sources)
