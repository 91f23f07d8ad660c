"""Content hashes of files and directories, cached by (path, size, mtime) so a 100 MB model is read once."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from filelock import FileLock

from .paths import cache_dir


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    path = Path(path).resolve()
    stat = path.stat()
    memo_key = f"{path}|{stat.st_size}|{stat.st_mtime_ns}"
    memo = cache_dir() / "file_hashes.json"
    with FileLock(str(memo) + ".lock"):
        known = json.loads(memo.read_text()) if memo.exists() else {}
        if memo_key in known:
            return known[memo_key]
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    digest = h.hexdigest()
    with FileLock(str(memo) + ".lock"):
        known = json.loads(memo.read_text()) if memo.exists() else {}
        known[memo_key] = digest
        tmp = memo.with_suffix(".tmp")
        tmp.write_text(json.dumps(known))
        tmp.replace(memo)
    return digest


def sha256_tree(root: Path, patterns: tuple[str, ...] = ("*.json", "*.safetensors", "*.bin", "*.model", "*.gguf")) -> str:
    """Hash of the weight and config files of a model directory (names and contents)."""
    h = hashlib.sha256()
    files = sorted({p for pat in patterns for p in Path(root).glob(pat) if p.is_file()})
    for p in files:
        h.update(p.name.encode())
        h.update(sha256_file(p).encode())
    return h.hexdigest()


def sha256_files(paths: list[Path]) -> dict[str, str]:
    return {Path(p).name: sha256_file(Path(p)) for p in paths}
