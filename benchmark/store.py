"""RunStore: one directory per run with ``manifest.json``, ``requests.jsonl`` and ``results.json``.

Finished requests go to a sqlite cache (``cache.sqlite``) keyed by content hash, one transaction
per batch, so a run killed at any point (even SIGKILL) resumes without recomputing or duplicating.
``requests.jsonl`` and ``results.json`` are written whole through a temporary file and rename.

Damage is detected and repaired with a warning (also listed in ``RunStore.repairs``):
- a cache row whose payload is not a result (truncated, edited) is deleted and recomputed;
- a cache file that is not a readable sqlite database is moved aside (``cache.sqlite.corrupt``) and
  refilled from the valid rows of ``requests.jsonl``, so only the rest is recomputed;
- a truncated or corrupt line in ``requests.jsonl`` is reported; the run rewrites the file whole.

One process at a time works on a run directory (``.run.lock``; each shard of a sharded run has its
own lock, ``.run.shard-I-of-N.lock``, since shards of one run share the directory on purpose). A
second process stops with one line before it touches the manifest, the cache or the outputs.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
from collections.abc import Iterable
from pathlib import Path

from . import SCHEMA_VERSION
from .paths import cache_dir as user_cache_dir
from .errors import FairbenchError, storage_error

log = logging.getLogger(__name__)
# The fields every backend Result stores (requests.Result.as_dict); a cache payload must hold all of them.
RESULT_FIELDS = ("option_logprobs", "raw_output", "rendered_prompt", "n_prompt_tokens", "latency_s", "extra")


def _has_fields(value) -> bool:
    return isinstance(value, dict) and all(k in value for k in RESULT_FIELDS)


def read_results(run_dir: Path) -> dict:
    """``run_dir/results.json`` in the current results schema; one-line errors otherwise (a missing
    or damaged file, or one written by another schema version: ``fairbench score`` rewrites it)."""
    path = Path(run_dir) / "results.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FairbenchError(f"{path} not found: {run_dir} is not a finished fairbench run directory.") from None
    except json.JSONDecodeError as exc:
        raise FairbenchError(f"{path}: not valid JSON ({exc.msg}); re-run `fairbench score {run_dir}`.") from None
    version = data.get("schema_version") if isinstance(data, dict) else None
    if version != SCHEMA_VERSION:
        raise FairbenchError(f"{path}: results schema {version}, this fairbench reads schema {SCHEMA_VERSION}; "
                             f"re-score the run with `fairbench score {run_dir}` (no model needed).")
    return data


def write_atomic(path: Path, text: str) -> None:
    """Write ``path`` whole (temporary file + rename). Disk full, read-only, permission and vanished
    directories raise :class:`benchmark.errors.StorageError` (one line, exit code 3)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        tmp.replace(path)
    except OSError as exc:
        try:
            tmp.unlink()
        except OSError:
            pass
        err = storage_error(path, exc)
        if err is None:
            raise
        raise err from None


def dumps(obj) -> str:
    """Canonical JSON: sorted keys, fixed indent, so identical inputs give identical bytes."""
    return json.dumps(obj, sort_keys=True, indent=2, ensure_ascii=False, allow_nan=False) + "\n"


def _is_result(payload: str) -> bool:
    try:
        value = json.loads(payload)
    except (json.JSONDecodeError, TypeError):
        return False
    return _has_fields(value)


class RequestCache:
    """Finished results by request key in one sqlite file (WAL; several processes may share it).
    Environment failures (disk full, read-only, permission, vanished directory) raise
    :class:`benchmark.errors.StorageError` naming the file."""

    def __init__(self, path: Path):
        self.path = path
        self.repairs: list[str] = []
        self.reset = False  # True when the file was unreadable and started afresh
        try:
            self._open()
        except sqlite3.OperationalError as exc:
            self._close_quietly()
            self._raise_storage(exc)
        except sqlite3.DatabaseError as exc:
            self._close_quietly()
            aside = path.with_name(path.name + ".corrupt")
            for suffix in ("", "-wal", "-shm"):
                src = Path(str(path) + suffix)
                if src.exists():
                    src.replace(Path(str(aside) + suffix))
            self._warn(f"{path}: not a readable cache ({exc}); moved to {aside.name} and started afresh")
            self.reset = True
            self._open()

    def _open(self) -> None:
        self.conn = sqlite3.connect(str(self.path), timeout=60)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=NORMAL")
        self.conn.execute("CREATE TABLE IF NOT EXISTS results (key TEXT PRIMARY KEY, payload TEXT NOT NULL)")
        # Which model wrote a row (for `fairbench cache info` / `cache clear --model`): keys are hashes,
        # so the origin is stored beside them. Files written before these columns get them, empty.
        have = {row[1] for row in self.conn.execute("PRAGMA table_info(results)")}
        for column in ("model", "fingerprint"):
            if column not in have:
                self.conn.execute(f"ALTER TABLE results ADD COLUMN {column} TEXT")
        self.conn.commit()
        check = self.conn.execute("PRAGMA quick_check").fetchone()[0]
        if check != "ok":
            raise sqlite3.DatabaseError(f"integrity check: {check}")

    def _raise_storage(self, exc: Exception):
        err = storage_error(self.path, exc)
        if err is None:
            raise exc
        raise err from None

    def _close_quietly(self) -> None:
        try:
            self.conn.close()
        except (AttributeError, sqlite3.Error):
            pass

    def _warn(self, message: str) -> None:
        self.repairs.append(message)
        log.warning("warning: %s", message)

    def keys(self) -> set[str]:
        """Keys of the valid results. Rows whose payload is damaged are deleted (and so recomputed)."""
        try:
            return self._keys()
        except sqlite3.OperationalError as exc:
            self._raise_storage(exc)

    def _keys(self) -> set[str]:
        good, bad = set(), []
        for key, payload in self.conn.execute("SELECT key, payload FROM results"):
            (good.add(key) if _is_result(payload) else bad.append(key))
        if bad:
            with self.conn:
                self.conn.executemany("DELETE FROM results WHERE key = ?", [(k,) for k in bad])
            self._warn(f"{self.path}: {len(bad)} damaged cached result(s) removed; they will be recomputed")
        return good

    def get_many(self, keys: Iterable[str]) -> dict[str, dict]:
        try:
            return self._get_many(keys)
        except sqlite3.OperationalError as exc:
            self._raise_storage(exc)

    def _get_many(self, keys: Iterable[str]) -> dict[str, dict]:
        out: dict[str, dict] = {}
        keys = list(keys)
        for start in range(0, len(keys), 500):
            chunk = keys[start : start + 500]
            marks = ",".join("?" * len(chunk))
            for key, payload in self.conn.execute(f"SELECT key, payload FROM results WHERE key IN ({marks})", chunk):
                if _is_result(payload):  # a damaged row is recomputed rather than trusted
                    out[key] = json.loads(payload)
        return out

    def put_many(self, rows: dict[str, dict], model: str | None = None, fingerprint: str | None = None) -> None:
        """Store ``rows`` (key -> result dict) in one transaction; ``model`` / ``fingerprint`` name
        the model that computed them (shown by :meth:`usage`, matched by :meth:`clear`)."""
        try:
            with self.conn:  # one transaction: all of a batch or none of it
                self.conn.executemany(
                    "INSERT OR REPLACE INTO results (key, payload, model, fingerprint) VALUES (?, ?, ?, ?)",
                    [(k, json.dumps(v, sort_keys=True), model, fingerprint) for k, v in rows.items()],
                )
        except sqlite3.OperationalError as exc:
            self._raise_storage(exc)

    def usage(self) -> list[dict]:
        """One dict per (model, fingerprint) with ``rows`` and ``bytes`` (payload size), largest
        first; ``model`` and ``fingerprint`` are ``None`` for rows written before fairbench recorded
        them (or copied from a run directory)."""
        try:
            cur = self.conn.execute("SELECT model, fingerprint, COUNT(*), SUM(LENGTH(payload)) FROM results "
                                    "GROUP BY model, fingerprint ORDER BY COUNT(*) DESC, model, fingerprint")
            return [{"model": m, "fingerprint": f, "rows": n, "bytes": b or 0} for m, f, n, b in cur]
        except sqlite3.OperationalError as exc:
            self._raise_storage(exc)

    def clear(self, model: str | None = None) -> int:
        """Delete every row, or those of ``model`` (a models.yaml name, or a fingerprint or a prefix
        of one, at least 6 hex digits); returns the number deleted. The file shrinks (VACUUM)."""
        try:
            with self.conn:
                if model is None:
                    n = self.conn.execute("DELETE FROM results").rowcount
                else:
                    prefix = model if len(model) >= 6 else "\0"  # a short string never matches a fingerprint
                    n = self.conn.execute("DELETE FROM results WHERE model = ? OR substr(fingerprint, 1, ?) = ?",
                                          (model, len(prefix), prefix)).rowcount
            self.conn.execute("VACUUM")
            return n
        except sqlite3.OperationalError as exc:
            self._raise_storage(exc)

    def close(self) -> None:
        self._close_quietly()


def request_cache_location(cache_dir: Path | None = None) -> tuple[Path, str]:
    """Where the shared request cache file is, and what chose it (``--cache-dir``,
    ``$FAIRBENCH_REQUEST_CACHE``, or ``default``: the user cache ``~/.cache/fairbench/requests/``,
    under ``$FAIRBENCH_CACHE`` / ``$XDG_CACHE_HOME`` when set). Creates nothing."""
    if cache_dir is not None:
        return Path(cache_dir) / "requests.sqlite", "--cache-dir"
    if os.environ.get("FAIRBENCH_REQUEST_CACHE"):
        return Path(os.environ["FAIRBENCH_REQUEST_CACHE"]) / "requests.sqlite", "$FAIRBENCH_REQUEST_CACHE"
    return user_cache_dir() / "requests" / "requests.sqlite", "default"


def shared_cache_path(cache_dir: Path | None, output_dir: Path | None = None) -> Path:
    """The request cache shared by every run of this user (``~/.cache/fairbench/requests/requests.sqlite``,
    under ``$FAIRBENCH_CACHE``), or ``CACHE_DIR/requests.sqlite`` with ``--cache-dir`` /
    ``$FAIRBENCH_REQUEST_CACHE``; its directory is created. Keys are request content + the full model
    fingerprint, so any run may reuse any other run's rows; the output directory holds only run
    directories (so deleting it does not empty this cache: ``fairbench cache clear`` does)."""
    path, _ = request_cache_location(cache_dir)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        err = storage_error(path.parent, exc)
        if err is None:
            raise
        raise err from None
    return path


def _hold(path: Path):
    """Take the lock file ``path`` without waiting (filelock: an OS lock, released when the process dies,
    so a killed run never leaves a stale lock behind)."""
    from filelock import FileLock, Timeout

    lock = FileLock(str(path), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise FairbenchError(
            f"{path.parent}: another fairbench process is working on this run directory (lock {path.name}). "
            "Wait for it to finish, or stop it and rerun the same command: finished requests are kept."
        ) from None
    return lock


class RunStore:
    def __init__(self, run_dir: Path, shard: tuple[int, int] | None = None):
        """Open (create) ``run_dir`` for one process; ``shard`` = (index, count) of a sharded run.

        Raises FairbenchError (exit 2) when the directory is not writable or another process holds it."""
        self.dir = run_dir
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
            probe = run_dir / ".write-test"
            probe.write_text("ok")
            probe.unlink()
        except OSError as exc:
            # Found before any work: a usage error (exit 2). Failures later in the run exit 3.
            raise FairbenchError(
                f"output directory {run_dir.parent} is not writable ({exc.strerror}). Choose another --output-dir."
            ) from None
        self._lock = _hold(run_dir / (".run.lock" if shard is None else f".run.shard-{shard[0]}-of-{shard[1]}.lock"))
        try:
            self.cache = RequestCache(run_dir / "cache.sqlite")
            self._check_requests()
        except BaseException:
            self._lock.release()
            raise

    def close(self) -> None:
        """Close the request cache and release the directory for other processes."""
        try:
            self.cache.close()
        finally:
            self._lock.release()

    @property
    def repairs(self) -> list[str]:
        return self.cache.repairs

    def _check_requests(self) -> None:
        """Validate an existing requests.jsonl; refill a reset cache from its valid rows."""
        if not self.requests_path.is_file():
            return
        good, bad = {}, []
        with open(self.requests_path, encoding="utf-8", errors="replace") as fh:
            for n, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    bad.append(n)
                    continue
                if isinstance(row, dict) and isinstance(row.get("key"), str) and all(k in row for k in RESULT_FIELDS):
                    good[row["key"]] = {k: row[k] for k in RESULT_FIELDS}
                elif isinstance(row, dict) and isinstance(row.get("key"), str) and _has_fields(row):
                    good[row["key"]] = row  # an imaging prediction row
                else:
                    bad.append(n)
        if bad:
            self.cache._warn(f"{self.requests_path}: line(s) {', '.join(map(str, bad[:5]))}{' ...' if len(bad) > 5 else ''} "
                             "truncated or corrupt; the file is rewritten when the run finishes")
        if self.cache.reset and good:
            self.cache.put_many(good)
            self.cache._warn(f"{self.cache.path}: {len(good)} result(s) restored from {self.requests_path.name}")

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
