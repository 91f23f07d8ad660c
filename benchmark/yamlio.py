"""Safe YAML reading with errors that name the file, line and fix."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from .errors import FairbenchError


def read_yaml(path: Path) -> Any:
    if not path.is_file():
        raise FairbenchError(f"{path}: file not found. Check the path.")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise FairbenchError(f"{path}: not valid UTF-8 (byte {exc.start}). Save the file as UTF-8.") from None
    try:
        return yaml.safe_load(text)
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
