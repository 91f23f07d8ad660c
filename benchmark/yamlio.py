"""Safe YAML reading with errors that name the file, line and fix."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from .errors import FairbenchError


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key repeated in one mapping. PyYAML keeps the last one
    silently, so a repeated attribute, prompt mode or model entry would vanish without a word; a few
    lines here rather than a second YAML library (ruamel.yaml) for this one check."""

    def construct_mapping(self, node, deep=False):
        seen: dict = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.setdefault(key, key_node.start_mark.line)
            except TypeError:  # an unhashable key: let the base class report it
                continue
            if first != key_node.start_mark.line:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} repeated (first at line {first + 1}); keep one", key_node.start_mark)
        return super().construct_mapping(node, deep=deep)


def read_yaml(path: Path) -> Any:
    if not path.is_file():
        raise FairbenchError(f"{path}: file not found. Check the path.")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise FairbenchError(f"{path}: not valid UTF-8 (byte {exc.start}). Save the file as UTF-8.") from None
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise FairbenchError(f"{path}: malformed YAML{where}: {problem}. Fix the syntax.") from None


def validation_message(path: Path, prefix: str, exc: ValidationError) -> FairbenchError:
    """Turn the first pydantic error into one line: file, dotted field, problem."""
    # A misspelt field gives "unknown field" and "field required": name the unknown one first.
    err = sorted(exc.errors(), key=lambda e: e["type"] != "extra_forbidden")[0]
    field = ".".join(str(p) for p in (prefix, *err["loc"]) if p != "")
    extra = f" ({len(exc.errors()) - 1} more)" if len(exc.errors()) > 1 else ""
    msg = err["msg"]
    if err["type"] == "extra_forbidden":
        msg = "unknown field; remove it or check its spelling"
    return FairbenchError(f"{path}: field {field}: {msg}{extra}.")


def parse_model(model: type[BaseModel], data: Any, path: Path, prefix: str = "") -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise validation_message(path, prefix, exc) from None
