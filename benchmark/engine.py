"""The one run path: RunSpec -> card -> kind -> requests -> execute (cache, shard, resume; ``fit``
first for backends that train) -> RunStore -> kind.evaluate (scores and audits) -> results.json."""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from .cards import load_task
from .config import load_models
from .errors import FairbenchError
from .hashing import sha256_files
from .kinds import kind_for
from .manifest import base_manifest
from .registry import get
from .requests import Request
from .seeding import seed_everything
from .shard import in_shard
from .spec import RunSpec
from .store import RunStore

# Requests per cache transaction: a kill loses at most one chunk of work.
CHUNK = int(os.environ.get("FAIRBENCH_TEST_CHUNK", "64"))


def _progress(quiet: bool) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]} req/s"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        disable=quiet,
        transient=False,
    )


def execute(requests: list[Request], keys: list[str], store: RunStore, make_backend, quiet: bool,
            fit=None, chunk: int | None = None) -> dict:
    """Run the requests whose keys are not cached yet. ``fit(backend)`` trains a backend that trains
    before its first request. Returns timing facts."""
    done = store.cache.keys()
    pending: dict[str, Request] = {}
    for req, key in zip(requests, keys):
        if key not in done and key not in pending:
            pending[key] = req
    timing = {"n_requests": len(requests), "n_cached": len(requests) - len(pending), "n_computed": len(pending)}
    if not pending:
        return timing
    backend = make_backend()
    if fit is not None and backend.trains:
        t0 = time.perf_counter()
        timing["training"] = fit(backend)
        timing["train_seconds"] = round(time.perf_counter() - t0, 3)
    items = list(pending.items())
    size = chunk or CHUNK
    t0 = time.perf_counter()
    with _progress(quiet) as progress:
        bar = progress.add_task("scoring", total=len(items), rate="-")
        for start in range(0, len(items), size):
            part = items[start : start + size]
            by_method: dict[str, list[tuple[str, Request]]] = {}
            for key, req in part:
                by_method.setdefault(req.method, []).append((key, req))
            rows = {}
            for method, group in by_method.items():
                results = backend.answer(method, [r for _, r in group])
                rows.update({key: res.as_dict() for (key, _), res in zip(group, results)})
            store.cache.put_many(rows)
            elapsed = time.perf_counter() - t0
            completed = start + len(part)
            progress.update(bar, completed=completed, rate=f"{completed / max(elapsed, 1e-9):.1f}")
    timing["inference_seconds"] = round(time.perf_counter() - t0, 3)
    timing["backend"] = backend.describe()
    backend.close()
    return timing


def stored(keys: list[str], store: RunStore) -> dict[str, dict]:
    cached = store.cache.get_many(set(keys))
    for key in keys:
        if key not in cached:
            raise FairbenchError(f"request {key[:12]} has no stored result; re-run the command to compute it.")
    return cached


def run(spec: RunSpec, quiet: bool = False) -> Path:
    """Run (or resume) one experiment; returns its run directory (see ``RunStore``)."""
    if spec.limit is not None and spec.limit < 1:
        raise FairbenchError(f"--limit must be a positive number of cases, got {spec.limit}.")
    t_start = time.time()
    card = load_task(spec.task, spec.tasks_dir)
    kind = kind_for(card)
    kind.check_audits()
    seed_everything(spec.seed)
    models = load_models(spec.models_file)
    model_spec = models.get(spec.model)
    backend_cls = get("backends", model_spec.backend)
    kind.check_backend(backend_cls, model_spec)
    backend_cls.check(model_spec)
    fingerprint = backend_cls.fingerprint(model_spec)
    prep = kind.prepare(spec, model_spec, models, backend_cls)
    ident = fingerprint
    if backend_cls.trains:  # a trained model is its settings + the seed + what it was trained on
        ident = hashlib.sha256("|".join(map(str, [fingerprint, spec.seed, *prep.fit_identity])).encode()).hexdigest()[:16]
    keys = [r.key(ident) for r in prep.requests]

    run_dir = Path(spec.output_dir) / spec.run_id(prep.mode, prep.heldout)
    store = RunStore(run_dir)
    manifest = base_manifest(spec.argv)
    manifest.update(
        {
            "run_id": run_dir.name,
            "status": "running",
            "kind": kind.name,
            "model": {"name": model_spec.name, "fingerprint": fingerprint, "spec": model_spec.model_dump(mode="json", exclude={"extra"}),
                      "extra": model_spec.extra},
            "task": {"name": card.name, "card_sha256": sha256_files([card.directory / "task.yaml"])["task.yaml"]},
            "data": {"files": sha256_files(prep.files), **prep.manifest_data},
            "prompt_mode": prep.mode,
            "seed": spec.seed,
            "limit": spec.limit,
            "started_at": t_start,
        }
    )
    store.write_manifest(json.loads(json.dumps(manifest, default=str)))

    mine = [(r, k) for r, k in zip(prep.requests, keys) if in_shard(k, spec.shard)]
    fit = (lambda backend: backend.fit(*prep.fit_data, run_dir)) if prep.fit_data else None
    timing = execute([r for r, _ in mine], [k for _, k in mine], store,
                     lambda: backend_cls(model_spec, card, seed=spec.seed, quiet=quiet), quiet, fit=fit, chunk=prep.chunk)
    if spec.shard is not None:
        missing = len(set(keys) - store.cache.keys())
        timing["shard"] = f"{spec.shard[0]}/{spec.shard[1]}"
        if missing:
            # Other shards have not finished: the shard that completes the grid writes the results.
            manifest.update({"status": "partial", "n_missing": missing, "timing": timing})
            store.write_manifest(json.loads(json.dumps(manifest, default=str)))
            store.cache.close()
            return run_dir
    rows = kind.rows(prep.requests, keys, stored(keys, store))
    run_info = {
        "model": model_spec.name,
        "base_model": model_spec.base,
        "task": card.name,
        "kind": kind.name,
        "seed": spec.seed,
        "limit": spec.limit,
        "model_fingerprint": fingerprint,
        **prep.run_info,
    }
    scored, results = kind.evaluate(rows, spec.seed, run_info, prep.data_report)
    store.write_requests(scored)
    store.write_results(results)
    manifest.update({"status": "complete", "finished_at": time.time(), "timing": timing, "wall_seconds": round(time.time() - t_start, 3)})
    if store.repairs:  # damaged cache rows / requests.jsonl lines found and repaired (store.py)
        manifest["repairs"] = store.repairs
    store.write_manifest(json.loads(json.dumps(manifest, default=str)))
    store.cache.close()
    return run_dir
