"""Where built-in files, user overrides and caches live."""

from __future__ import annotations

import os
from pathlib import Path

_PKG = Path(__file__).resolve().parent


def _bundled(name: str) -> Path:
    # A wheel carries models.yaml and tasks/ under benchmark/_bundled; an editable install
    # reads them from the repository root.
    inside = _PKG / "_bundled" / name
    return inside if inside.exists() else _PKG.parent / name


def builtin_models_file() -> Path:
    return _bundled("models.yaml")


def builtin_tasks_dir() -> Path:
    return _bundled("tasks")


def cache_dir() -> Path:
    root = os.environ.get("FAIRBENCH_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "fairbench"
    )
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path
