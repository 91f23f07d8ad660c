"""RunStore: one directory per run with ``manifest.json``, ``requests.jsonl`` and ``results.json``.

Finished requests go to a sqlite cache (``cache.sqlite``) keyed by content hash, one transaction
per batch, so a run killed at any point (even SIGKILL) resumes without recomputing or duplicating.
``requests.jsonl`` and ``results.json`` are written whole through a temporary file and rename.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Iterable
from pathlib import Path

from .errors import FairbenchError


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    tmp.replace(path)


def dumps(obj) -> str:
    """Canonical JSON: sorted keys, fixed indent, so identical inputs give identical bytes."""
    return json.dumps(obj, sort_keys=True, indent=2, ensure_ascii=False, allow_nan=False) + "\n"


class RequestCache:
    def __init__(self, path: Path):
        self.path = path
        self.conn = sqlite3.connect(str(path), timeout=60)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=NORMAL")
        self.conn.execute("CREATE TABLE IF NOT EXISTS results (key TEXT PRIMARY KEY, payload TEXT NOT NULL)")
        self.conn.commit()

    def keys(self) -> set[str]:
        return {row[0] for row in self.conn.execute("SELECT key FROM results")}

    def get_many(self, keys: Iterable[str]) -> dict[str, dict]:
        out: dict[str, dict] = {}
        keys = list(keys)
        for start in range(0, len(keys), 500):
            chunk = keys[start : start + 500]
            marks = ",".join("?" * len(chunk))
            for key, payload in self.conn.execute(f"SELECT key, payload FROM results WHERE key IN ({marks})", chunk):
                try:
                    out[key] = json.loads(payload)
                except json.JSONDecodeError:
                    continue  # a corrupt row is recomputed rather than trusted
        return out

    def put_many(self, rows: dict[str, dict]) -> None:
        with self.conn:  # one transaction: all of a batch or none of it
            self.conn.executemany(
                "INSERT OR REPLACE INTO results (key, payload) VALUES (?, ?)",
                [(k, json.dumps(v, sort_keys=True)) for k, v in rows.items()],
            )

    def close(self) -> None:
        self.conn.close()


class RunStore:
    def __init__(self, run_dir: Path):
        self.dir = run_dir
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
            probe = run_dir / ".write-test"
            probe.write_text("ok")
            probe.unlink()
        except OSError as exc:
            raise FairbenchError(
                f"output directory {run_dir.parent} is not writable ({exc.strerror}). Choose another --output-dir."
            ) from None
        self.cache = RequestCache(run_dir / "cache.sqlite")

    @property
    def manifest_path(self) -> Path:
        return self.dir / "manifest.json"

    @property
    def requests_path(self) -> Path:
        return self.dir / "requests.jsonl"

    @property
    def results_path(self) -> Path:
        return self.dir / "results.json"

    def write_manifest(self, manifest: dict) -> None:
        write_atomic(self.manifest_path, dumps(manifest))

    def write_requests(self, rows: list[dict]) -> None:
        text = "".join(json.dumps(r, sort_keys=True, ensure_ascii=False) + "\n" for r in rows)
        write_atomic(self.requests_path, text)

    def write_results(self, results: dict) -> None:
        write_atomic(self.results_path, dumps(results))


def read_requests(run_dir: Path) -> list[dict]:
    path = run_dir / "requests.jsonl"
    if not path.is_file():
        raise FairbenchError(f"{path} not found: {run_dir} is not a finished fairbench run directory.")
    rows = []
    with open(path, encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                raise FairbenchError(f"{path}: line {n} is not valid JSON (truncated?). Re-run the command to repair it.") from None
    return rows
