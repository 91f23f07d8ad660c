"""Derived models (``<base>+<method>``) that mitigations register after training."""

from __future__ import annotations

from pathlib import Path

import yaml
from filelock import FileLock

from .paths import cache_dir


def derived_models_file() -> Path:
    return cache_dir() / "derived_models.yaml"


def register_derived(name: str, entry: dict) -> Path:
    """Add or replace one derived model entry; safe against concurrent writers."""
    path = derived_models_file()
    with FileLock(str(path) + ".lock"):
        data = yaml.safe_load(path.read_text()) if path.exists() else None
        data = data or {"models": {}}
        data["models"][name] = entry
        tmp = path.with_suffix(".tmp")
        tmp.write_text(yaml.safe_dump(data, sort_keys=True))
        tmp.replace(path)
    return path
