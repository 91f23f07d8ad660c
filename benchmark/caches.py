"""What fairbench keeps between runs, where, and how big: ``fairbench cache info`` and ``cache clear``.

Modelled on ``pip cache info`` / ``pip cache purge`` (location and size) and huggingface-cli's
``scan-cache`` / ``delete-cache`` (one row per cached model, cleared per model). The request cache is
the one whose rows can silently stand in for computation, so it is shown per model fingerprint; the
other caches (converted GGUF weights, packaged model files, downloaded data, mitigation artifacts)
are listed with their size and path.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from .paths import cache_dir as user_cache_dir
from .store import RequestCache, request_cache_location

# Sub-directories of the user cache (paths.cache_dir) and what they hold.
OTHER_CACHES = {
    "converted": "GGUF files de-quantised once for the hf backend (safetensors)",
    "packages": "model files assembled from PyPI packages (Gemma chunks)",
    "data": "official task data fetched by `fairbench data download`",
    "mitigations": "mitigation artifacts (adapters, steering transforms, heads)",
    "fairtune-pretrain": "FairTune's pretrained image encoders",
    "derived_models.yaml": "derived models registered by `fairbench mitigate`",
    "file_hashes.json": "SHA-256 memo of model and data files (by size and mtime)",
}


def tree_size(path: Path) -> int:
    """Bytes of a file, or of every file under a directory (0 when missing); links not followed."""
    if path.is_file():
        return path.stat().st_size
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:  # removed while walking
                pass
    return total


@dataclass
class CacheInfo:
    """``path``: the request cache file; ``chosen_by``: ``--cache-dir``, ``$FAIRBENCH_REQUEST_CACHE`` or
    ``default``; ``exists``; ``bytes`` on disk (with sqlite's -wal/-shm files); ``rows``; ``models``:
    one dict per (model, fingerprint) with ``rows`` and ``bytes`` (RequestCache.usage); ``root``: the
    user cache directory; ``others``: (name, path, bytes, what) of its other caches that exist."""

    path: Path
    chosen_by: str
    exists: bool
    bytes: int = 0
    rows: int = 0
    models: list[dict] = field(default_factory=list)
    root: Path | None = None
    others: list[tuple[str, Path, int, str]] = field(default_factory=list)


def _db_bytes(path: Path) -> int:
    return sum(tree_size(Path(str(path) + suffix)) for suffix in ("", "-wal", "-shm"))


def info(cache_dir: Path | None = None) -> CacheInfo:
    """The request cache (``--cache-dir`` or its default) and the other caches; opens nothing that
    does not exist (a missing request cache is reported, not created)."""
    path, chosen_by = request_cache_location(cache_dir)
    out = CacheInfo(path, chosen_by, path.is_file())
    if out.exists:
        cache = RequestCache(path)
        try:
            out.models = cache.usage()
        finally:
            cache.close()
        out.rows = sum(m["rows"] for m in out.models)
        out.bytes = _db_bytes(path)
    out.root = user_cache_dir()
    for name, what in OTHER_CACHES.items():
        p = out.root / name
        if p.exists():
            out.others.append((name, p, tree_size(p), what))
    return out


def clear(cache_dir: Path | None = None, model: str | None = None) -> tuple[Path, int, int]:
    """Delete the request cache's rows (all, or those of ``model``: a models.yaml name or a
    fingerprint prefix). Returns (path, rows deleted, bytes freed on disk)."""
    path, _ = request_cache_location(cache_dir)
    if not path.is_file():
        return path, 0, 0
    before = _db_bytes(path)
    cache = RequestCache(path)
    try:
        n = cache.clear(model)
    finally:
        cache.close()
    return path, n, max(0, before - _db_bytes(path))
