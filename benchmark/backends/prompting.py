"""Prompt semantics shared by the non-HF backends, so every backend scores the same text as ``hf``:

- chat models: the user message (plus the optional system prompt) goes through the model's own chat
  template with ``add_generation_prompt``; the option continuation is the bare option ("Yes"), and
  no special tokens are added on top of the rendered text (the template holds them);
- plain models: the prompt is used as is, the continuation is " " + option (after "Answer:"),
  and the tokenizer's own BOS rule applies;
- the score of an option is the sum of its continuation tokens' log-probabilities.
"""

from __future__ import annotations

from pathlib import Path

from ..config import ModelSpec
from ..errors import FairbenchError
from ..packages import resolve_pkg_path


def messages(spec: ModelSpec, prompt: str) -> list[dict]:
    out = []
    if spec.system_prompt:
        out.append({"role": "system", "content": spec.system_prompt})
    out.append({"role": "user", "content": prompt})
    return out


def continuation(option: str, use_chat: bool) -> str:
    return option if use_chat else " " + option


class ChatTemplate:
    """A Jinja chat template rendered exactly as ``tokenizer.apply_chat_template`` renders it
    (transformers' own sandboxed renderer), for backends that have no HF tokenizer object."""

    def __init__(self, template: str, special_tokens: dict[str, str]):
        self.template = template
        self.special_tokens = special_tokens

    def render(self, spec: ModelSpec, prompt: str) -> str:
        from transformers.utils.chat_template_utils import render_jinja_template

        rendered, _ = render_jinja_template(
            conversations=[messages(spec, prompt)], chat_template=self.template,
            add_generation_prompt=True, **self.special_tokens,
        )
        return rendered[0]


def resolve_path(value: str, spec_name: str, field: str) -> Path:
    """A local path, or ``pkg:PACKAGE/relative/path`` inside an installed package, or assembled
    once by it (:func:`benchmark.packages.resolve_pkg_path`)."""
    return resolve_pkg_path(value, spec_name, field)


def gguf_chat_template(path: Path, spec_name: str) -> ChatTemplate:
    """Read the chat template and special-token strings from a GGUF file's metadata."""
    from gguf import GGUFReader

    reader = GGUFReader(str(path))

    def field(key):
        f = reader.fields.get(key)
        return None if f is None else f.contents()

    template = field("tokenizer.chat_template")
    if not template:
        raise FairbenchError(f'model "{spec_name}": {path.name} has no tokenizer.chat_template; set chat_template: false.')
    tokens = field("tokenizer.ggml.tokens") or []
    special = {}
    for name in ("bos", "eos", "unknown", "padding"):
        idx = field(f"tokenizer.ggml.{name}_token_id")
        if idx is not None and 0 <= int(idx) < len(tokens):
            key = {"unknown": "unk_token", "padding": "pad_token"}.get(name, f"{name}_token")
            special[key] = tokens[int(idx)]
    return ChatTemplate(str(template), special)


def load_chat_template(source: str, spec_name: str) -> ChatTemplate:
    """``source`` is a GGUF file (local or ``pkg:``), or an HF tokenizer directory / hub id."""
    path = resolve_path(source, spec_name, "tokenizer")
    if path.suffix == ".gguf":
        if not path.is_file():
            raise FairbenchError(f'model "{spec_name}": field tokenizer: GGUF file {path} not found. Fix "tokenizer" in models.yaml.')
        return gguf_chat_template(path, spec_name)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(path) if path.exists() else source)
    if not tok.chat_template:
        raise FairbenchError(f'model "{spec_name}": tokenizer {source} has no chat template; set chat_template: false.')
    return ChatTemplate(tok.chat_template, {k: v for k, v in tok.special_tokens_map.items() if isinstance(v, str)})
