"""Deterministic sharding of a run's requests, and merging shard run directories.

A request belongs to shard ``i`` of ``n`` when its content-hash key, read as a number, is ``i-1``
modulo ``n``: the split depends on neither order, process count nor machine, and is balanced.
Shards that share one run directory (several processes, or several clients of one server farm)
write to the same request cache; the shard that completes the grid writes the results. Shards run
on separate machines are combined with ``fairbench merge`` (cache rows copied, never overwritten).
"""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path

from .errors import FairbenchError

_SHARD = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """``"2/4"`` -> (2, 4); 1-based."""
    if text is None:
        return None
    m = _SHARD.match(text)
    if not m or not 1 <= int(m.group(1)) <= int(m.group(2)):
        raise FairbenchError(f"--shard must be I/N with 1 <= I <= N (e.g. 2/4), got {text!r}.")
    return int(m.group(1)), int(m.group(2))


def in_shard(key: str, shard: tuple[int, int] | None) -> bool:
    if shard is None:
        return True
    i, n = shard
    return int(key[:16], 16) % n == i - 1


def merge_caches(dest: Path, sources: list[Path]) -> dict[str, int]:
    """Copy request-cache rows from shard run directories into ``dest`` (same run id expected).
    Rows already in ``dest`` are kept. Returns rows added per source. Every source is checked
    before anything is written: on any error a ``dest`` that did not exist is left absent."""
    import shutil

    from .store import RunStore

    dest = Path(dest)
    for src in sources:
        db = Path(src) / "cache.sqlite"
        if not db.is_file():
            raise FairbenchError(f"{src}: no cache.sqlite; pass run directories written by `fairbench run --shard`.")
        if Path(src).resolve() != dest.resolve() and Path(src).name != dest.name:
            raise FairbenchError(f"{src}: run id {Path(src).name} differs from {dest.name}; shards of one run share the run id.")
    created = not dest.exists()
    added = {}
    try:
        store = RunStore(dest)
    except BaseException:
        if created:
            shutil.rmtree(dest, ignore_errors=True)
        raise
    try:
        for src in sources:
            if Path(src).resolve() == dest.resolve():
                continue
            db = Path(src) / "cache.sqlite"
            before = store.cache.conn.execute("SELECT COUNT(*) FROM results").fetchone()[0]
            try:
                conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
                rows = conn.execute("SELECT key, payload FROM results").fetchall()
                conn.close()
            except sqlite3.DatabaseError as exc:
                raise FairbenchError(f"{db}: not a readable request cache ({exc}).") from None
            with store.cache.conn:
                store.cache.conn.executemany("INSERT OR IGNORE INTO results (key, payload) VALUES (?, ?)", rows)
            after = store.cache.conn.execute("SELECT COUNT(*) FROM results").fetchone()[0]
            added[str(src)] = after - before
    except BaseException:
        store.close()
        if created:
            shutil.rmtree(dest, ignore_errors=True)
        raise
    store.close()
    return added
