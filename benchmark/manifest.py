"""Provenance of a run: command, model and data hashes, package versions, git commit, seed, timings."""

from __future__ import annotations

import platform
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from . import SCHEMA_VERSION, __version__

PACKAGES = ["fairbench-med", "torch", "transformers", "accelerate", "gguf", "numpy", "scipy", "statsmodels",
            "pandas", "fairlearn", "pydantic", "peft", "trl", "vllm", "llama_cpp_python"]


def package_versions() -> dict[str, str | None]:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def git_commit() -> dict:
    root = Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return {"commit": None, "dirty": None}
    if sha.returncode != 0:
        return {"commit": None, "dirty": None}
    return {"commit": sha.stdout.strip(), "dirty": bool(dirty.stdout.strip())}


def base_manifest(argv: list[str]) -> dict:
    return {
        "schema_version": SCHEMA_VERSION,
        "fairbench_version": __version__,
        "command": argv,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "packages": package_versions(),
        "git": git_commit(),
    }
