"""The one run path: RunSpec -> card -> kind -> requests -> execute (cache, shard, resume; ``fit``
first for backends that train) -> RunStore -> kind.evaluate (scores and audits) -> results.json.

Two request caches, both keyed by request content + the full model fingerprint: the run directory's
own ``cache.sqlite`` (resume, shards, ``merge``) and one cache shared by every run of the user
(``~/.cache/fairbench/requests/``, or ``--cache-dir``; ``fairbench cache info`` shows it), so that ``--limit 10`` after
``--limit 2``, another seed of a choice task or another grid cell computes only new requests."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from rich.progress import Progress

from .cards import load_task
from .config import ModelRegistry, ModelSpec, adhoc_model, load_models, validate_extra
from .errors import FairbenchError
from .hashing import sha256_files
from .kinds import kind_for
from .manifest import base_manifest
from .progress import request_progress
from .registry import get
from .requests import Request
from .seeding import seed_everything
from .shard import in_shard
from .spec import RunSpec
from .store import RequestCache, RunStore, shared_cache_path

# Requests per cache transaction: a kill loses at most one chunk of work.
CHUNK = int(os.environ.get("FAIRBENCH_TEST_CHUNK", "64"))


# The request bar (kept under this name: the CLI and the API build it before the grid runs).
make_progress = request_progress
_progress = make_progress  # historical name


class BackendPool:
    """Backends kept loaded across the runs of a grid: each model is loaded once. Backends that train
    or read the task card (image backends) are never shared."""

    def __init__(self):
        self._live: dict[tuple, object] = {}

    def get(self, key: tuple, make):
        if key not in self._live:
            self._live[key] = make()
        return self._live[key]

    def close(self) -> None:
        for backend in self._live.values():
            backend.close()
        self._live.clear()


def execute(requests: list[Request], keys: list[str], store: RunStore, make_backend, quiet: bool,
            fit=None, chunk: int | None = None, shared: RequestCache | None = None,
            progress: Progress | None = None, label: str = "scoring", close: bool = True,
            origin: tuple[str | None, str | None] = (None, None)) -> dict:
    """Run the requests whose keys are not cached yet. Rows found in ``shared`` are copied into the
    run's cache (``n_reused``); computed rows go to both, labelled with ``origin`` (model name,
    fingerprint) for ``fairbench cache info``. ``fit(backend)`` trains a backend that
    trains before its first request. Returns timing facts."""
    done = store.cache.keys()
    pending: dict[str, Request] = {}
    for req, key in zip(requests, keys):
        if key not in done and key not in pending:
            pending[key] = req
    timing = {"n_requests": len(requests), "n_cached": len(requests) - len(pending), "n_computed": 0, "n_reused": 0}
    if pending and shared is not None:
        hits = shared.get_many(list(pending))
        if hits:
            store.cache.put_many(hits)
            for key in hits:
                pending.pop(key)
            timing["n_reused"] = len(hits)
    timing["n_computed"] = len(pending)
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
    own = progress is None
    progress = progress or make_progress(quiet)
    bar = progress.add_task(label, total=len(items), rate="")
    if own:
        progress.start()
    # The backend's batch loops report finished requests (Backend.report_progress), so the bar moves
    # per batch inside a chunk; the chunk's end sets the exact count. Workers of the openai backend
    # report from their threads, hence the lock.
    state = {"done": 0, "ceiling": 0}
    lock = threading.Lock()

    def show(completed: int) -> None:
        rate = completed / max(time.perf_counter() - t0, 1e-9)
        progress.update(bar, completed=completed, rate=f"{rate:.1f} req/s")

    def advance(n_done: int) -> None:
        with lock:
            state["done"] = min(state["ceiling"], state["done"] + n_done)
            show(state["done"])

    backend.on_progress = advance
    try:
        for start in range(0, len(items), size):
            part = items[start : start + size]
            with lock:
                state["done"], state["ceiling"] = start, start + len(part)
            by_method: dict[str, list[tuple[str, Request]]] = {}
            for key, req in part:
                by_method.setdefault(req.method, []).append((key, req))
            rows = {}
            for method, group in by_method.items():
                results = backend.answer(method, [r for _, r in group])
                rows.update({key: res.as_dict() for (key, _), res in zip(group, results)})
            store.cache.put_many(rows, *origin)
            if shared is not None:
                shared.put_many(rows, *origin)
            with lock:
                state["done"] = start + len(part)
                show(state["done"])
    finally:
        backend.on_progress = None
        if own:
            progress.stop()
    timing["inference_seconds"] = round(time.perf_counter() - t0, 3)
    timing["backend"] = backend.describe()
    if close:
        backend.close()
    return timing


def stored(keys: list[str], store: RunStore) -> dict[str, dict]:
    cached = store.cache.get_many(set(keys))
    for key in keys:
        if key not in cached:
            raise FairbenchError(f"request {key[:12]} has no stored result; re-run the command to compute it.")
    return cached


@dataclass
class Plan:
    """What a RunSpec resolves to before any model is loaded: the request keys and the run directory."""

    spec: RunSpec
    card: object
    kind: object
    models: ModelRegistry
    model_spec: ModelSpec
    backend_cls: type
    fingerprint: str
    prep: object
    keys: list[str]
    run_dir: Path


def resolve_model(spec: RunSpec, models: ModelRegistry) -> tuple[RunSpec, ModelSpec]:
    """The model entry of ``spec`` (an ad-hoc ``--model BACKEND --model-args K=V,...`` entry is added
    to ``models``), with the spec's temperature resolved from the entry when not given."""
    if spec.model_args is not None:
        model_spec = adhoc_model(spec.model, spec.model_args)
        models.add(model_spec, Path("<--model-args>"))
        spec = dataclasses.replace(spec, model=model_spec.name, model_args=None)
    model_spec = models.get(spec.model)
    if spec.temperature is None:
        spec = dataclasses.replace(spec, temperature=model_spec.generation.temperature)
    return spec, model_spec


def plan(spec: RunSpec) -> Plan:
    """Resolve ``spec`` without running anything: card, kind, model entry, fingerprint, requests,
    their keys (content + full model fingerprint) and the run directory."""
    card = load_task(spec.task, spec.tasks_dir)
    kind = kind_for(card)
    kind.check_audits()
    seed_everything(spec.seed)
    models = load_models(spec.models_file)
    spec, model_spec = resolve_model(spec, models)
    backend_cls = get("backends", model_spec.backend)
    kind.check_backend(backend_cls, model_spec)
    validate_extra(model_spec)
    backend_cls.check(model_spec)
    fingerprint = backend_cls.fingerprint(model_spec)
    prep = kind.prepare(spec, model_spec, models, backend_cls)
    ident = fingerprint
    if backend_cls.trains:  # a trained model is its settings + the seed + what it was trained on
        ident = hashlib.sha256("|".join(map(str, [fingerprint, spec.seed, *prep.fit_identity])).encode()).hexdigest()[:16]
    keys = [r.key(ident) for r in prep.requests]
    run_dir = Path(spec.output_dir) / spec.run_id(prep.mode, prep.heldout)
    return Plan(spec, card, kind, models, model_spec, backend_cls, fingerprint, prep, keys, run_dir)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    if isinstance(exc, FairbenchError):
        return text
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def run(spec: RunSpec, quiet: bool = False, pool: BackendPool | None = None, progress: Progress | None = None) -> Path:
    """Run (or resume) one experiment; returns its run directory (see ``RunStore``).

    A run that fails after its directory exists leaves ``manifest.json`` with ``status: failed`` and
    the one-line ``error``; a rerun of the same command resumes from the stored requests."""
    t_start = time.time()
    p = plan(spec)
    spec, card, kind, model_spec, backend_cls, prep, keys = p.spec, p.card, p.kind, p.model_spec, p.backend_cls, p.prep, p.keys
    fingerprint, run_dir = p.fingerprint, p.run_dir
    store = RunStore(run_dir, spec.shard)
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
            "sample": spec.sample,
            "label_fraction": spec.label_fraction,
            "temperature": spec.temperature,
            "started_at": t_start,
        }
    )
    store.write_manifest(json.loads(json.dumps(manifest, default=str)))
    shared = None
    try:
        if spec.use_cache:
            shared = RequestCache(shared_cache_path(spec.cache_dir, spec.output_dir))
            manifest["request_cache"] = str(shared.path)
        mine = [(r, k) for r, k in zip(prep.requests, keys) if in_shard(k, spec.shard)]
        fit = (lambda backend: backend.fit(*prep.fit_data, run_dir)) if prep.fit_data else None

        def make_backend():
            build = lambda: backend_cls(model_spec, card, seed=spec.seed, quiet=quiet)  # noqa: E731
            if pool is None or backend_cls.trains or backend_cls.accepts_images:
                return build()
            return pool.get((model_spec.name, fingerprint), build)

        shareable = pool is not None and not backend_cls.trains and not backend_cls.accepts_images
        timing = execute([r for r, _ in mine], [k for _, k in mine], store, make_backend, quiet, fit=fit, chunk=prep.chunk,
                         shared=shared, progress=progress, label=f"{model_spec.name} · {card.name} · {prep.mode}",
                         close=not shareable, origin=(model_spec.name, fingerprint))
        if spec.shard is not None:
            missing = len(set(keys) - store.cache.keys())
            timing["shard"] = f"{spec.shard[0]}/{spec.shard[1]}"
            if missing:
                # Other shards have not finished: the shard that completes the grid writes the results.
                manifest.update({"status": "partial", "n_missing": missing, "timing": timing})
                store.write_manifest(json.loads(json.dumps(manifest, default=str)))
                return run_dir
        rows = kind.rows(prep.requests, keys, stored(keys, store))
        run_info = {
            "model": model_spec.name,
            "base_model": model_spec.base,
            "task": card.name,
            "kind": kind.name,
            "seed": spec.seed,
            "limit": spec.limit,
            "sample": spec.sample,
            **({"label_fraction": spec.label_fraction} if spec.label_fraction is not None else {}),
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
    except BaseException as exc:
        manifest.update({"status": "failed", "error": _one_line(exc), "failed_at": time.time()})
        try:
            store.write_manifest(json.loads(json.dumps(manifest, default=str)))
        except Exception:  # noqa: BLE001 - the directory itself may be gone; report the first error
            pass
        raise
    finally:
        store.close()
        if shared is not None:
            shared.close()
    return run_dir
